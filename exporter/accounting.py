"""One accounting path for every energy domain: counter → delta (wrap/reset) → idle split → attribution → ledgers.

A *domain* (exporter/zones.py) is a zone name (its counters summed over sockets and dies), an accelerator
(`gpu:<uuid>`), a superchip module or the platform. Per domain and tick, exactly:

    ΔE = idle + unattributed + Σ top-level workloads                 (cpu and accelerator roles)

Domains differ only in their `Weights`: the cgroup CPU time of the tick's workload tree (with the node's busy
time as the whole), or the accelerator users' weights; an accelerator's idle is learned from the intervals nobody
used it, a CPU zone's from every interval (with Kepler's ratio split until enough are seen). Module and platform
domains stay at node level: only their joules are kept. The *rest of the node* is the platform less the
top-level domains (never negative), and the *node total* is the platform where measured, else the sum of the
top-level domains. Pure: the caller reads the hardware and does the I/O; this module only logs transitions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from exporter.attribution import IdleSplit, Usage, ZoneShares, attribute, split_by_baseline, split_by_ratio
from exporter.carbon.embodied import gpu_embodied_kg
from exporter.carbon.ledger import CarbonLedger, Rate, intensity_mg
from exporter.counters import MICRO, CounterTrack, StepKind
from exporter.gpu_accounting import AcceleratorIdle, GpuWeights, Owner, Tail, by_owner, instance_shares
from exporter.idle import IdleBaseline
from exporter.ledger import Ledger, WorkloadLedger
from exporter.meters.base import AcceleratorSample, CounterSample, ZoneId
from exporter.snapshot import AcceleratorState, DomainState, InstanceState, NodeEnergy, ZoneInfo, ZoneState
from exporter.zones import Place, Role, contains, parent_of, role_of, top_level

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Hashable)
__all__ = ["Accounting", "Owner", "Weights", "domain_key"]


@dataclass(frozen=True, slots=True)
class Weights(Generic[P]):
    """How a domain's energy is split this tick: the whole (`total`: the node's busy CPU µs, or the sum of an
    accelerator's user weights), the top-level workloads' shares of it with their children, and what the idle
    split needs: the CPU's (idle, all) ticks for the ratio split, and whether anyone used the domain at all."""

    total: int
    workloads: Sequence[Usage[P]]
    idle_share: tuple[int, int] | None = None
    used: bool = True


@dataclass(slots=True)
class _Domain:
    """The running state of one domain."""

    key: str
    role: Role
    source: str
    baseline: IdleBaseline
    idle_uj: int = 0
    active_uj: int = 0
    unattributed_uj: int = 0
    idle_watts: float | None = None
    idle_method: str = "none"
    splits: dict[str, int] = field(default_factory=dict)  # accelerators: ticks by how users were weighted
    gpu_idle: AcceleratorIdle | None = None  # accelerators: the idle estimate
    tail: Tail = field(default_factory=Tail)  # accelerators: the last users, for the ramp-down
    instances: dict[tuple[str, str, str], int] = field(default_factory=dict)  # partitions' active µJ


@dataclass(slots=True)
class _Counter:
    """One physical counter: its delta tracking, its joules since start, and what its last reading said."""

    zone: ZoneId
    place: Place
    domain: str  # its domain's key: the zone name, or gpu:<uuid>
    role: Role
    limit_w: float  # the most watts it can draw: larger steps are resets
    track: CounterTrack = field(default_factory=CounterTrack)
    top_level: bool = False  # set with the containment (the node's total adds it)
    joules_uj: int = 0
    method: str = ""
    read: float = 0.0  # the tick it was last read in
    age_s: float | None = None
    watts: float | None = None


Deltas = list[tuple[_Counter, "int | None"]]  # this tick's delta of every counter read (None: down or new)


def domain_key(zone: ZoneId) -> str:
    """The ledger key of a counter's domain: its zone name, or `gpu:<uuid>` for an accelerator."""
    return f"gpu:{zone.device}" if zone.zone == "gpu" else zone.zone


class Accounting:
    """Every counter, domain and workload ledger of the node, advanced one tick at a time."""

    def __init__(self, config: Config, workloads: WorkloadLedger[Any], known_idle: Callable[[], dict[str, float]]):
        self.config = config
        self.workloads = workloads
        self.known_idle = known_idle  # idle watts per zone the CPU meter knows for certain (the model)
        self._counters: dict[ZoneId, _Counter] = {}
        self._domains: dict[str, _Domain] = {}
        self._accelerators: dict[str, AcceleratorSample] = {}  # last sample per uuid (identity, method, users)
        self.errors: Ledger[tuple[str, str]] = Ledger()
        # How the measured places nest: computed again only when a counter comes or goes.
        self._containment: tuple[list[Place], dict[Place, Place | None], tuple[ZoneInfo, ...]] | None = None
        self._ordered: list[_Counter] = []  # node counters in zone order, with the containment
        self._node_total_uj = 0
        self._platform_common_uj = 0
        self._parts_common_uj = 0
        self._rest_uj: int | None = None
        # Carbon (exporter/carbon/ledger.py): this tick's intensity (mg/kWh) and length, the CPU domains whose
        # operational grams count (top-level among CPU zones; accelerators always), embodied rates.
        self.carbon = CarbonLedger(workloads)
        self._mg: int | None = None
        self._dt_us = 0
        self._counted: frozenset[str] = frozenset()
        embodied = config.carbon
        self._host_rate = Rate.of(embodied.host_embodied_kg, embodied.lifetime) if embodied.embodied else None
        self._gpu_rates: dict[str, Rate] = {}

    # --- counters -------------------------------------------------------------------------------------------

    def _counter(self, zone: ZoneId, place: Place) -> _Counter:
        role = role_of(zone.zone)
        limit = self.config.max_platform_watts if role in ("module", "platform") else self.config.max_zone_watts
        counter = self._counters[zone] = _Counter(zone, place, domain_key(zone), role, limit)
        self._containment = None
        return counter

    def _step(
        self, sample: CounterSample, now: float, dt: float | None, place: Place | None = None
    ) -> tuple[_Counter, int | None]:
        """Fold one counter reading into its total; the delta, or None if the counter is down or re-baselined."""
        zone = sample.zone
        counter = self._counters.get(zone)
        if counter is None:
            counter = self._counter(zone, place or Place(zone.zone, zone.socket))
        counter.method, counter.read, counter.watts = sample.method, now, sample.watts
        counter.age_s = None if sample.read_at is None else max(0.0, now - sample.read_at)
        track = counter.track
        if sample.energy_uj is None:
            self.errors.add((zone.source, zone.device), 1)
            if track.failed(sample.error):
                what = f"{zone.source} {zone.device} ({zone.zone})"
                log.warning("%s is down: %s; retrying with backoff", what, sample.error)
            return counter, None
        step, came_back = track.observe(sample.energy_uj, sample.max_range_uj, dt, counter.limit_w)
        if came_back:
            log.info("%s %s (%s) is back", zone.source, zone.device, zone.zone)
        if step.kind is StepKind.RESET:
            log.warning(
                "%s %s (%s) counter reset (no plausible wrap); adding nothing for this tick",
                zone.source,
                zone.device,
                zone.zone,
            )
        counter.joules_uj += step.delta_uj
        if step.kind is StepKind.FIRST:
            return counter, (0 if dt is None else None)  # a re-baselined counter has no delta this tick
        return counter, step.delta_uj

    # --- the tick -------------------------------------------------------------------------------------------

    def tick(
        self,
        now: float,
        dt: float | None,
        *,
        node: Sequence[CounterSample],
        cpu: Weights[str],
        accelerators: Sequence[AcceleratorSample] = (),
        owner: Owner | None = None,
        processes: Weights[P] | None = None,
        intensity: float | None = None,
    ) -> dict[P, dict[str, int]]:
        """Account one tick: node counters split by `cpu` weights, accelerators by their users (through `owner`),
        module and platform at node level; the carbon of each split at `intensity` (gCO2e/kWh, None: unknown)
        and the hardware's embodied carbon. Returns the per-process view (`processes` weights) by CPU domain."""
        deltas: Deltas = [self._step(sample, now, dt) for sample in node]
        accel_deltas: list[tuple[AcceleratorSample, int | None]] = []
        for accel in accelerators:
            self._accelerators[accel.device.uuid] = accel
            place = Place("gpu", str(accel.device.index), accel.device.scope)
            sample = CounterSample(_accelerator_zone(accel), accel.energy_uj, 0, accel.error, accel.method)
            counter, delta = self._step(sample, now, dt, place)
            deltas.append((counter, delta))
            accel_deltas.append((accel, delta))
        if len(deltas) < len(self._counters):  # a counter not read this tick may be one that has gone
            self._forget(now)
        by_process: dict[P, dict[str, int]] = {}
        if dt is None or dt <= 0:
            return by_process
        self._mg = None if intensity is None else intensity_mg(intensity)
        self._dt_us = round(dt * 1_000_000)
        self._structure()
        spread = self.config.idle_attribution == "cpu"
        for key, (delta, complete, counter) in self._by_domain(deltas).items():
            source = counter.zone.source
            if counter.role == "cpu":
                split = self._split(key, source, delta, complete=complete, weights=cpu, now=now, dt=dt)
                if processes is not None:
                    for process, microjoules in self._view(delta, split, processes, spread).items():
                        by_process.setdefault(process, {})[key] = microjoules
            else:
                self._domain(key, counter.role, source)
        for accel, delta in accel_deltas:
            shares = None
            if delta is not None and owner is not None:
                inside = self._inside(accel, deltas) if accel.device.scope else 0
                shares = self._split_accelerator(accel, delta - inside, owner, now, dt)
            if self._host_rate is not None:  # a GPU that was not read this tick ages all the same: idle
                used, top = (shares[0], shares[1].workloads) if shares else (None, ())
                key = f"gpu:{accel.device.uuid}"
                self.carbon.add_embodied_like(key, self._gpu_rate(accel), self._dt_us, used, top)
        if self._host_rate is not None:
            self.carbon.add_embodied_by_cpu(
                "host",
                self._host_rate,
                self._dt_us,
                busy_us=cpu.total,
                top=cpu.workloads,
                idle_share=cpu.idle_share,
                spread_idle=spread,
            )
        self._node_energy(deltas)
        return by_process

    def _gpu_rate(self, accel: AcceleratorSample) -> Rate:
        rate = self._gpu_rates.get(accel.device.uuid)
        if rate is None:
            carbon = self.config.carbon
            kg = gpu_embodied_kg(accel.device.model, carbon.gpu_embodied_kg, carbon.gpu_default_embodied_kg)
            rate = self._gpu_rates[accel.device.uuid] = Rate.of(kg, carbon.gpu_lifetime or carbon.lifetime)
        return rate

    def _forget(self, now: float) -> None:
        """Counters not read for `workload_ttl` (a meter handed over at runtime) leave, like an ended workload."""
        ttl = self.config.workload_ttl
        gone = [zone for zone, counter in self._counters.items() if now - counter.read > ttl]
        for zone in gone:
            del self._counters[zone]
            self._containment = None

    def _domain(self, key: str, role: Role, source: str) -> _Domain:
        domain = self._domains.get(key)
        if domain is None:
            baseline = IdleBaseline(self.config.idle_window, self.config.idle_quantile)
            domain = self._domains[key] = _Domain(key, role, source, baseline)
        domain.source = source  # a failover hands the zone to another meter
        return domain

    def _split(
        self, key: str, source: str, delta: int, *, complete: bool, weights: Weights[str], now: float, dt: float
    ) -> IdleSplit:
        """A CPU domain: idle by baseline (configured, known or learned) or by ratio, then the split by CPU time."""
        domain = self._domain(key, "cpu", source)
        watts, method = self._cpu_idle_watts(key, domain)
        if self.config.idle_policy == "baseline" and watts is not None:
            split = split_by_baseline(delta, dt, watts)
        else:
            split = _ratio(delta, weights.idle_share)
            watts, method = split.idle_uj / MICRO / dt, "ratio"
        self._apportion(domain, delta, split, weights)
        domain.idle_watts, domain.idle_method = watts, method
        if complete:
            domain.baseline.observe(now, delta / MICRO, dt)
        return split

    def _cpu_idle_watts(self, key: str, domain: _Domain) -> tuple[float | None, str]:
        if key in self.config.idle_watts:
            return self.config.idle_watts[key], "configured"
        known = self.known_idle()
        if key in known:
            return known[key], "model"
        return domain.baseline.watts(), "learned"

    def _split_accelerator(
        self, accel: AcceleratorSample, delta: int, owner: Owner, now: float, dt: float
    ) -> tuple[ZoneShares[str], Weights[str] | GpuWeights]:
        """An accelerator: idle configured or estimated (gpu_accounting.py), then the split by its users (or, in
        its tail, by the users of its last used tick); partitions get their shares of the active energy."""
        device = accel.device
        domain = self._domain(f"gpu:{device.uuid}", "accelerator", _accelerator_zone(accel).source)
        if domain.gpu_idle is None:
            domain.gpu_idle = AcceleratorIdle(self.config.idle_window)
        if self.config.gpu_idle_watts is not None:
            domain.idle_watts, domain.idle_method = self.config.gpu_idle_watts, "configured"
        else:
            domain.idle_watts, domain.idle_method = domain.gpu_idle.estimate()
        own = by_owner(accel, owner)
        weights = domain.tail.weights_for(own, now, dt, self.config.gpu_tail)
        domain.gpu_idle.observe(now, delta / MICRO, dt, weights.used, accel.utilization)  # tails never teach idle
        idle = min(delta, int((domain.idle_watts or 0.0) * dt * MICRO))
        shares = self._apportion(domain, delta, IdleSplit(idle, delta - idle), weights)
        split = accel.split if own.used or not weights.used else "tail"
        domain.splits[split] = domain.splits.get(split, 0) + 1
        for instance, share in zip(accel.instances, instance_shares(delta - idle, accel.instances), strict=True):
            key = (instance.instance, instance.profile, instance.uuid)
            domain.instances[key] = domain.instances.get(key, 0) + share
        return shares, weights

    def _apportion(
        self, domain: _Domain, delta: int, split: IdleSplit, weights: Weights[str] | GpuWeights
    ) -> ZoneShares[str]:
        spread = self.config.idle_attribution == "cpu"
        shares = attribute(delta, split.idle_uj, weights.total, weights.workloads, spread_idle=spread)
        domain.idle_uj += split.idle_uj
        domain.active_uj += split.active_uj
        domain.unattributed_uj += shares.unattributed_uj
        self.workloads.add_all(domain.key, shares.workloads)
        if self._mg is not None and (domain.role == "accelerator" or domain.key in self._counted):
            self.carbon.add_operational(domain.key, delta, self._mg, shares, weights.workloads)
        return shares

    @staticmethod
    def _view(delta: int, split: IdleSplit, processes: Weights[P], spread: bool) -> dict[P, int]:
        """The same split over processes instead of workloads: a separate view of the same energy."""
        return attribute(delta, split.idle_uj, processes.total, processes.workloads, spread_idle=spread).workloads

    # --- containment: rest of node and node total ------------------------------------------------------------

    def _structure(self) -> tuple[list[Place], dict[Place, Place | None], tuple[ZoneInfo, ...]]:
        if self._containment is None:
            self._ordered = [c for zone, c in sorted(self._counters.items()) if zone.zone != "gpu"]
            sources = {c.place: c.zone.source for c in self._counters.values()}
            measured = sorted(sources)
            top = top_level(measured)
            parents = {p: parent_of(p, measured) for p in measured}
            by_zone: dict[tuple[str, str], ZoneInfo] = {}
            for p in measured:  # per zone name: the first socket's parent; top-level if any socket's is
                known = by_zone.get((p.zone, sources[p]))
                parent = known.parent if known else (parents[p] or Place("")).zone
                level = (known is not None and known.top_level) or p in top
                by_zone[(p.zone, sources[p])] = ZoneInfo(p.zone, sources[p], role_of(p.zone), parent, level)
            info = tuple(by_zone.values())
            for counter in self._counters.values():
                counter.top_level = counter.place in top
            # Operational grams count once: CPU zones that no other CPU zone contains (psys, else package and
            # dram; grace), plus every accelerator (a module-scope GPU's users get its counter less Grace).
            self._counted = frozenset(p.zone for p in top_level(p for p in measured if role_of(p.zone) == "cpu"))
            self._containment = (top, parents, info)
        return self._containment

    @staticmethod
    def _by_domain(deltas: Deltas) -> dict[str, list[Any]]:
        """Node domains' deltas: key → [Σ delta of its counters, whether every one had one, one of them]."""
        domains: dict[str, list[Any]] = {}
        for counter, delta in deltas:
            if counter.role == "accelerator":
                continue
            acc = domains.get(counter.domain)
            if acc is None:
                domains[counter.domain] = [delta or 0, delta is not None, counter]
            else:
                acc[0] += delta or 0
                acc[1] = acc[1] and delta is not None
        return domains

    @staticmethod
    def _by_place(deltas: Deltas) -> dict[Place, int | None]:
        """This tick's delta per place (None when one of its counters had none)."""
        places: dict[Place, int | None] = {}
        for counter, delta in deltas:
            known = places.get(counter.place, 0)
            places[counter.place] = None if delta is None or known is None else known + delta
        return places

    def _inside(self, accel: AcceleratorSample, deltas: Deltas) -> int:
        """The CPU energy a module-scope accelerator's counter also counts this tick (GH200: its Grace socket),
        taken out before its split so no workload gets Grace's energy twice."""
        places = self._by_place(deltas)
        place = Place("gpu", str(accel.device.index), accel.device.scope)
        inner = [p for p in places if role_of(p.zone) == "cpu" and contains(place, p)]
        outermost = [p for p in inner if not any(contains(o, p) for o in inner)]
        return min(sum(places[p] or 0 for p in outermost), places.get(place) or 0)

    def _node_energy(self, deltas: Deltas) -> None:
        """The node's total (the platform while it reads, else the top-level domains) and the rest of the node:
        kept as max(previous, Σ platform − Σ top-level) over the ticks every one of them was read in."""
        self._structure()
        platform: int | None = None
        parts, counted, complete = 0, 0, True
        for counter, delta in deltas:
            if counter.role == "platform":
                platform = delta
            elif counter.top_level:
                parts += delta or 0
                counted += 1
                complete = complete and delta is not None
        if platform is None:
            self._node_total_uj += parts
            return
        self._node_total_uj += platform
        if complete and counted:
            self._platform_common_uj += platform
            self._parts_common_uj += parts
            rest = max(0, self._platform_common_uj - self._parts_common_uj)
            self._rest_uj = max(self._rest_uj or 0, rest)

    # --- what gets exported ---------------------------------------------------------------------------------

    def zones(self) -> tuple[ZoneState, ...]:
        """Every node counter (accelerators have their own states)."""
        self._structure()
        return tuple(
            ZoneState(
                zone=c.zone,
                joules_uj=c.joules_uj,
                watts=c.watts if c.watts is not None and c.track.up else c.track.watts,
                up=c.track.up,
                wraps=c.track.wraps,
                resets=c.track.resets,
                method=c.method,
                reading_age_s=c.age_s,
            )
            for c in self._ordered
        )

    def zone_info(self) -> tuple[ZoneInfo, ...]:
        return self._structure()[2]

    def domains(self) -> tuple[DomainState, ...]:
        return tuple(
            DomainState(d.key, d.role, d.source, d.idle_uj, d.active_uj, d.unattributed_uj, d.idle_watts, d.idle_method)
            for key, d in sorted(self._domains.items())
            if d.role == "cpu"
        )

    def accelerator_states(self) -> tuple[AcceleratorState, ...]:
        states = []
        for uuid, accel in self._accelerators.items():
            zone = _accelerator_zone(accel)
            counter = self._counters.get(zone)
            if counter is None:
                continue
            track = counter.track
            domain = self._domains.get(f"gpu:{uuid}")
            states.append(
                AcceleratorState(
                    device=accel.device,
                    source=zone.source,
                    method=accel.method,
                    joules_uj=counter.joules_uj,
                    idle_uj=domain.idle_uj if domain else 0,
                    active_uj=domain.active_uj if domain else 0,
                    unattributed_uj=domain.unattributed_uj if domain else 0,
                    watts=track.watts,
                    idle_watts=domain.idle_watts if domain else None,
                    idle_method=domain.idle_method if domain else "none",
                    up=track.up,
                    resets=track.resets,
                    partitioned=accel.partitioned,
                    splits=tuple(sorted(domain.splits.items())) if domain else (),
                    scopes=accel.scopes,
                    instances=tuple(InstanceState(*k, v) for k, v in sorted(domain.instances.items()))
                    if domain
                    else (),
                )
            )
        return tuple(states)

    def node_energy(self) -> NodeEnergy:
        return NodeEnergy(total_uj=self._node_total_uj, rest_uj=self._rest_uj)


def _accelerator_zone(accel: AcceleratorSample) -> ZoneId:
    return ZoneId("gpu", "", "", accel.device.source, accel.device.uuid)


def _ratio(delta: int, idle_share: tuple[int, int] | None) -> IdleSplit:
    if idle_share is None:
        return split_by_ratio(delta, 0, 0)
    return split_by_ratio(delta, *idle_share)


def _instances(domain: _Domain | None) -> tuple[InstanceState, ...]:
    if domain is None:
        return ()
    return tuple(InstanceState(gi, profile, uuid, uj) for (gi, profile, uuid), uj in sorted(domain.instances.items()))
