"""The series budget (pure, no I/O): a tick's workload series in, at most `max_series` of them out, the long tail
folded into rollups so that every total stays exact.

A 2-socket node exports 10 workload series per pod (a pod's joules and watts and its three containers' joules,
for package and dram): 10,000 at 1,000 pods. The budget keeps the workloads that draw the most power ("open",
their own series) and folds the rest: a pod into the rollup of its namespace (`namespace=<its namespace>`,
`pod="(folded)"`, `uid=""`), its containers into the container rollup of that namespace (`parent_kind="pod"`),
every other kind into one rollup per kind (containers: per parent_kind). A rollup's name label is "(folded)" and
its other identity labels are empty (exporter/workloads/labels.py). A top-level workload folds with its children
(a pod with its containers). When a new namespace rollup would not fit, its pods go to the kind's
`namespace=""` rollup ("other").

Exactness. Every exported value is a sum of per-tick shares (a state's `last_uj` is exactly what its `energy_uj`
gained in this tick): an open workload's series grows by its own share, a rollup by the shares of the workloads
folded into it during that tick. So in every tick the exported series grow, together, by exactly what the
workloads gained: node = idle + unattributed + Σ exported top-level series holds for every increment, nothing is
counted twice and no series goes back.
- A workload never folded exports its energy since wattlens first saw it, as without a budget.
- A workload that folds keeps its series, frozen, for `linger_s` (every Prometheus replica then scrapes its final
  value); frozen series count against the budget.
- A workload that opens again continues its own series from where it stopped (the rollup holds what it used
  while folded); it remembers that value as long as it exists. A rollup nothing folds into for `linger_s` stops
  being exported; its total is remembered for a day (DORMANT_S), so one that comes back continues.

Hysteresis. Folding starts when the series would pass 90 % of the budget: the other 10 % (HEADROOM) is kept for
rollups and frozen series. A folded workload opens when there is room; when there is not, it takes the place of
the weakest open workload only if it draws more than FACTOR times that one's power (an exponentially weighted
mean, time constant TAU_S) and its series fit next to the frozen ones, so membership changes slowly. While the
budget is exceeded, a new workload waits one tick before it may open (its first share tells its power).
Should the series still exceed the budget (open workloads grew new zones or containers), frozen series go first,
oldest first, then the weakest open workloads fold without lingering (counted in `dropped`).

Cost. Deciding (ranking every workload, routing the folded ones to their rollups, checking the series) is done
only when something it depends on changed: a workload came or went, one came in the last tick (it may open now),
a frozen series' or an unfed rollup's time ran out, a folded workload grew a zone, or the series would pass the
budget; else every RANK_S. In between, a tick replays the last decision (`_Plan`): one pass adding the folded
workloads' shares into their rollups and the open ones' series, with the same exact sums. Recent power is
measured from the energy gained between two decisions (its mean power over that span), so it needs no work in
the ticks between.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from exporter.snapshot import BudgetStats, Labels
from exporter.workloads.labels import rollup_group, rollup_labels

Energy = tuple[tuple[str, int], ...]  # (domain, µJ): zone names and gpu:<uuid>
LEVELS = ("node", "pods", "containers", "processes")
HEADROOM = 0.10
FACTOR = 2.0
TAU_S = 300.0
MIN_SERIES = 100  # below this the rollups alone may not fit
RANK_S = 60.0  # the longest a decision is kept while nothing it depends on changed (a fraction of TAU_S)
# An unexported rollup's total is remembered this long (and for at most this many rollups), so that a rollup that
# comes back continues its counter: one reborn from zero soon after would look to Prometheus like a continuation.
DORMANT_S = 86400.0
MAX_DORMANT = 4096
GPU_PREFIX = "gpu:"
CARBON_PREFIX = "carbon:"  # a workload's grams, carried like a domain (exporter/workloads/tracker.py)
NO_WATTS = (GPU_PREFIX, CARBON_PREFIX)  # domains without a pod watts series


class WorkloadSeries(Protocol):
    """What the budget reads of a workload's exported state (exporter.snapshot.WorkloadState)."""

    @property
    def kind(self) -> str: ...
    @property
    def labels(self) -> Labels: ...
    @property
    def energy_uj(self) -> Energy: ...
    @property
    def last_uj(self) -> Energy: ...


S = TypeVar("S", bound=WorkloadSeries)
RollupKey = tuple[str, str, str]  # kind, namespace, parent_kind


@dataclass(slots=True)
class _Member:
    kind: str
    open: bool
    score: float  # recent power, W
    mark: int  # its total energy (µJ, every domain) when the score was last updated
    marked_at: float
    own: dict[str, int] | None = None  # its series' values once it has folded (None: its energy is its series)
    fresh: bool = True  # seen in this tick for the first time


@dataclass(slots=True)
class _Unit:
    """A top-level workload and its children: they fold and open together."""

    cost: int = 0
    score: float = 0.0
    alive: bool = False  # the top-level workload had a share in this tick (it has not ended)
    open: bool = False
    fresh: bool = False
    members: list[int] = field(default_factory=list)  # indexes into the tick's states


@dataclass(slots=True)
class _Rollup:
    labels: Labels
    energy: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)  # this tick's shares, for watts
    fed_at: float = 0.0  # when a folded workload last fed it


@dataclass(slots=True)
class _Tick(Generic[S]):
    """One tick's input and what the budget made of it."""

    now: float
    states: Sequence[S]
    keys: Sequence[str]
    parents: Sequence[str]
    members: list[_Member] = field(default_factory=list)
    units: dict[str, _Unit] = field(default_factory=dict)
    routes: dict[int, RollupKey] = field(default_factory=dict)  # state index → the rollup it folds into


@dataclass(slots=True)
class _Frozen:
    state: WorkloadSeries
    until: float
    cost: int


@dataclass(slots=True)
class _Feed:
    """A rollup and the states folded into it, with each one's number of domains when the decision was made."""

    kind: str
    rollup: _Rollup
    indexes: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Plan:
    """The last decision, for the ticks that keep it: what each state index does, while the keys are the same."""

    keys: Sequence[str]
    parents: Sequence[str]
    until: float  # decide again from this time on
    opened: list[tuple[int, _Member | None]]  # open states in order; the member where its series is rebased
    feeds: list[_Feed]
    folded: tuple[tuple[str, int], ...]  # folded workloads by kind


class SeriesBudget(Generic[S]):
    """Applies the budget, tick by tick. `make` builds an exported state from (kind, labels, energy, last);
    `pod_extra` is the series a pod has besides its energy and watts (1 where wattlens_pod_labels is exported);
    `level` leaves out children ("pods") or every workload ("node")."""

    def __init__(
        self,
        max_series: int,
        make: Callable[[str, Labels, Energy, Energy], S],
        linger_s: float,
        level: str = "containers",
        pod_extra: int = 0,
    ) -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}")
        self.max_series = max_series
        self.make = make
        self.linger_s = linger_s
        self.children = level in ("containers", "processes")
        self.workloads = level != "node"
        self.pod_extra = pod_extra
        self.open_limit = max_series - max(1, math.ceil(max_series * HEADROOM))
        self._members: dict[str, _Member] = {}
        self._rebased = 0  # members whose series is not their energy (member.own is set)
        self._rollups: dict[RollupKey, _Rollup] = {}  # exported
        self._dormant: dict[RollupKey, _Rollup] = {}  # unfed for linger_s: not exported, total kept
        self._frozen: dict[str, _Frozen] = {}
        self._last_now: float | None = None
        self._last_keys: Sequence[str] = ()  # exported in the last tick, while the budget was not needed
        self._folds: dict[str, int] = {}
        self._unfolds: dict[str, int] = {}
        self._dropped = 0
        self._plan: _Plan | None = None  # the last decision, while it holds
        self.decisions = 0  # ticks that decided (the others replayed the last decision)
        self.stats = BudgetStats(max_series, 0)

    def cost(self, state: WorkloadSeries) -> int:
        """The series a workload exports: one per domain, a pod's watts per CPU zone in this tick, pod_extra."""
        if state.kind != "pod":
            return len(state.energy_uj)
        watts = sum(1 for domain, _ in state.last_uj if not domain.startswith(NO_WATTS))
        return len(state.energy_uj) + watts + self.pod_extra

    def apply(self, now: float, states: Sequence[S], keys: Sequence[str], parents: Sequence[str]) -> tuple[S, ...]:
        """This tick's exported workload states. `keys[i]` is states[i]'s identity, `parents[i]` the key of its
        top-level workload ("" for a top-level one). Call once per tick, with `now` growing."""
        dt = now - self._last_now if self._last_now is not None else 0.0
        self._last_now = now
        if not self.workloads:
            self.stats = BudgetStats(self.max_series, 0)
            return ()
        if not self.children:
            chosen = [i for i, parent in enumerate(parents) if not parent]
            states, keys, parents = [states[i] for i in chosen], [keys[i] for i in chosen], [""] * len(chosen)
        plan = self._plan
        if (
            plan is not None
            and now < plan.until
            and (keys is plan.keys or keys == plan.keys)
            and (parents is plan.parents or parents == plan.parents)
        ):
            replayed = self._replay(now, states, plan)
            if replayed is not None:
                return replayed
        self._plan = None
        costs = [self.cost(s) for s in states]
        total = sum(costs)
        if self.max_series <= 0 or (
            not self._members and not self._rollups and not self._frozen and total <= self.open_limit
        ):
            self._last_keys = keys
            self.stats = BudgetStats(
                self.max_series, total, (), self._counts(self._folds), self._counts(self._unfolds), self._dropped
            )
            return tuple(states)
        self.decisions += 1
        tick = _Tick(now, states, keys, parents)
        tick.members = self._track(now, dt, states, keys)
        tick.units = self._units(states, keys, parents, costs, tick.members)
        return self._fold(tick)

    # --- folding ---------------------------------------------------------------------------------

    def _fold(self, tick: _Tick[S]) -> tuple[S, ...]:
        now, states, keys, members, units = tick.now, tick.states, tick.keys, tick.members, tick.units
        for key in [k for k, f in self._frozen.items() if f.until <= now]:
            del self._frozen[key]
        self._decide(units)
        for unit in units.values():  # the decisions take effect: folded series freeze, opened ones continue
            for i in unit.members:
                if unit.open:
                    self._open(members[i], keys[i])
                else:
                    self._close(members[i], states[i], keys[i], now, linger=True)
        tick.routes = self._route(states, units)
        # Within the budget, always: frozen series go first (oldest first), then the weakest open units, at once.
        weakest_first = sorted((u for u in units.values() if u.open), key=lambda u: u.score)
        while self._total(weakest_first, states, tick.routes) > self.max_series:
            if self._frozen:
                del self._frozen[min(self._frozen, key=lambda k: self._frozen[k].until)]
                self._dropped += 1
            elif weakest_first:
                unit = weakest_first.pop(0)
                unit.open = False
                for i in unit.members:
                    self._close(members[i], states[i], keys[i], now, linger=False)
                tick.routes = self._route(states, units)
            else:
                break  # the rollups alone are more than the budget (max_series below their floor)
        return self._emit(tick)

    def _track(self, now: float, dt: float, states: Sequence[S], keys: Sequence[str]) -> list[_Member]:
        """Every state's member, its recent power updated: an exponentially weighted mean (TAU_S) of its mean power
        since the last decision (a new one: in its first tick). Members that left the ledger are forgotten."""
        known = self._members
        starting = not known  # the budget was not needed in the last tick: its workloads all had series
        previous = set(self._last_keys) if starting else set()
        self._last_keys = ()
        scale = 1e-6 / dt if dt > 0 else 0.0
        alphas: dict[float, float] = {}  # by span: mostly one, the time since the last decision
        members = []
        for state, key in zip(states, keys, strict=True):
            energy = sum(v for d, v in state.energy_uj if not d.startswith(CARBON_PREFIX))
            member = known.get(key)
            if member is None:
                opened = key in previous
                watts = sum(v for d, v in state.last_uj if not d.startswith(CARBON_PREFIX)) * scale
                member = known[key] = _Member(state.kind, opened, watts, energy, now, fresh=not opened)
            else:
                span = now - member.marked_at
                if span > 0:
                    alpha = alphas.get(span)
                    if alpha is None:
                        alpha = alphas[span] = 1.0 - math.exp(-span / TAU_S)
                    watts = max(0, energy - member.mark) * 1e-6 / span
                    member.score += (watts - member.score) * alpha
                    member.mark, member.marked_at = energy, now
                member.fresh = False
            members.append(member)
        present = set(keys)
        if len(known) > len(present):
            for key in [k for k in known if k not in present]:
                if known.pop(key).own is not None:
                    self._rebased -= 1
        return members

    @staticmethod
    def _units(
        states: Sequence[S], keys: Sequence[str], parents: Sequence[str], costs: list[int], members: list[_Member]
    ) -> dict[str, _Unit]:
        index = {key: i for i, key in enumerate(keys)}
        units: dict[str, _Unit] = {}
        for i, parent in enumerate(parents):
            top = parent if parent in index else keys[i]  # a child whose top-level workload is gone: on its own
            unit = units.get(top)
            if unit is None:
                head = members[index[top]]
                unit = units[top] = _Unit(
                    score=head.score, alive=bool(states[index[top]].last_uj), open=head.open, fresh=head.fresh
                )
            unit.cost += costs[i]
            unit.members.append(i)
        return units

    def _decide(self, units: dict[str, _Unit]) -> None:
        """Which units are open in this tick: folded ones open where there is room, or displace a weaker open one
        where they draw FACTOR times its power and their series fit beside its frozen ones."""
        rollups = sum(len(r.energy) for r in self._rollups.values())
        used = rollups + sum(f.cost for f in self._frozen.values())
        open_cost = sum(u.cost for u in units.values() if u.open)
        used += open_cost
        candidates = sorted((u for u in units.values() if not u.open and not u.fresh), key=lambda u: -u.score)
        victims = sorted((u for u in units.values() if u.open and u.alive), key=lambda u: u.score)
        for candidate in candidates:
            if open_cost + candidate.cost <= self.open_limit and used + candidate.cost <= self.max_series:
                candidate.open = True
                open_cost += candidate.cost
                used += candidate.cost
                continue
            if not victims or candidate.score <= FACTOR * victims[0].score:
                break  # the strongest folded unit left displaces nobody: nor will the weaker ones
            victim = victims[0]
            if used + candidate.cost > self.max_series or open_cost - victim.cost + candidate.cost > self.open_limit:
                continue
            victims.pop(0)
            victim.open, candidate.open = False, True
            open_cost += candidate.cost - victim.cost
            used += candidate.cost  # the victim's series stay, frozen

    def _open(self, member: _Member, key: str) -> None:
        if member.open:
            return
        member.open = True
        if member.fresh and member.own is None:
            return  # new, and open from its first tick: its energy is its series
        self._unfolds[member.kind] = self._unfolds.get(member.kind, 0) + 1
        self._frozen.pop(key, None)  # its frozen series continues
        self._rebase(member, {})

    def _close(self, member: _Member, state: S, key: str, now: float, linger: bool) -> None:
        """Fold a member. An open one's series stops at its value before this tick's share: frozen for linger_s,
        or, to stay within the budget, dropped at once."""
        if not member.open:
            self._rebase(member, {})  # folded from its first tick: no series of its own yet
            return
        member.open = False
        self._folds[member.kind] = self._folds.get(member.kind, 0) + 1
        if member.own is None:
            own = dict(state.energy_uj)
            for domain, microjoules in state.last_uj:
                own[domain] -= microjoules
            self._rebase(member, own)
        assert member.own is not None
        if linger:
            frozen = self.make(state.kind, state.labels, tuple(member.own.items()), ())
            self._frozen[key] = _Frozen(frozen, now + self.linger_s, self.cost(frozen))
        else:
            self._dropped += 1

    def _rebase(self, member: _Member, own: dict[str, int]) -> None:
        if member.own is None:
            member.own = own
            self._rebased += 1

    def _route(self, states: Sequence[S], units: dict[str, _Unit]) -> dict[int, RollupKey]:
        """The rollup of every folded member; a new namespace rollup only where its series fit."""
        routes: dict[int, RollupKey] = {}
        used = sum(u.cost for u in units.values() if u.open) + sum(f.cost for f in self._frozen.values())
        used += sum(len(r.energy) for r in self._rollups.values())
        for unit in units.values():
            if unit.open:
                continue
            for i in unit.members:
                state = states[i]
                namespace, parent_kind = rollup_group(state.kind, state.labels)
                key = (state.kind, namespace, parent_kind)
                if key not in self._rollups and namespace and key not in self._dormant:
                    cost = self.cost(state)
                    if used + cost > self.max_series:
                        key = (state.kind, "", parent_kind)  # no room for its namespace: the kind's "other"
                    else:
                        used += cost
                if key not in self._rollups:
                    dormant = self._dormant.pop(key, None)
                    self._rollups[key] = dormant if dormant is not None else _Rollup(rollup_labels(*key))
                routes[i] = key
        return routes

    def _total(self, open_units: list[_Unit], states: Sequence[S], routes: dict[int, RollupKey]) -> int:
        """Every series of this tick: open units, frozen series, rollups once this tick's folded shares are in."""
        domains: dict[RollupKey, set[str]] = {key: set(r.energy) for key, r in self._rollups.items()}
        watts: dict[RollupKey, set[str]] = {}
        for i, key in routes.items():
            state = states[i]
            domains[key].update(domain for domain, _ in state.energy_uj)
            if state.kind == "pod":
                watts.setdefault(key, set()).update(d for d, _ in state.last_uj if not d.startswith(NO_WATTS))
        total = sum(u.cost for u in open_units) + sum(f.cost for f in self._frozen.values())
        return total + sum(map(len, domains.values())) + sum(map(len, watts.values()))

    def _emit(self, tick: _Tick[S]) -> tuple[S, ...]:
        """This tick's shares into open series and rollups, the states to export, and the plan that replays this
        decision in the next ticks."""
        now = tick.now
        plan = self._planned(tick)
        shares = self._shares(tick.states, plan)
        assert shares is not None  # the plan was made from these states
        out, open_series = self._commit(now, tick.states, plan, shares)
        for key, rollup in list(self._rollups.items()):
            if rollup.fed_at + self.linger_s < now:  # unfed for a while: its series goes, its total stays known
                self._dormant[key] = self._rollups.pop(key)
        if self._dormant:
            recent = sorted(self._dormant.items(), key=lambda item: -item[1].fed_at)[:MAX_DORMANT]
            self._dormant = {key: r for key, r in recent if now - r.fed_at <= DORMANT_S}
        exported = self._finish(out, open_series, plan.folded)
        if not plan.feeds and not self._frozen and not self._rebased and not self._rollups:
            self._members.clear()  # nothing folded any more: back to the budget-free path
            self._last_keys = tick.keys
            return exported
        for frozen in self._frozen.values():  # it stops being exported
            plan.until = min(plan.until, frozen.until)
        fed = {id(feed.rollup) for feed in plan.feeds}
        for rollup in self._rollups.values():  # unfed: it goes dormant
            if id(rollup) not in fed:
                plan.until = min(plan.until, rollup.fed_at + self.linger_s)
        self._plan = plan
        return exported

    # --- between decisions -------------------------------------------------------------------------

    def _planned(self, tick: _Tick[S]) -> _Plan:
        """The decision just taken, as index lists to replay while it holds; every domain of a folded state becomes
        a series of its rollup."""
        now, states, routes = tick.now, tick.states, tick.routes
        opened: list[tuple[int, _Member | None]] = []
        feeds: dict[RollupKey, _Feed] = {}
        folded: dict[str, int] = {}
        until = now + RANK_S
        for i, member in enumerate(tick.members):
            if member.open:
                opened.append((i, member if member.own is not None else None))
                continue
            if member.fresh:
                until = now  # folded in its first tick: it may open in the next one
            folded[member.kind] = folded.get(member.kind, 0) + 1
            key = routes[i]
            feed = feeds.get(key)
            if feed is None:
                feed = feeds[key] = _Feed(key[0], self._rollups[key])
            energy = states[i].energy_uj
            feed.indexes.append(i)
            feed.widths.append(len(energy))
            for domain, _ in energy:
                feed.rollup.energy.setdefault(domain, 0)
        return _Plan(tick.keys, tick.parents, until, opened, list(feeds.values()), self._counts(folded))

    def _replay(self, now: float, states: Sequence[S], plan: _Plan) -> tuple[S, ...] | None:
        """This tick's states as the last decision has them: the same open workloads and routes, this tick's shares
        added as a decision adds them. None (and nothing changed) where the decision no longer holds: a folded
        workload has a new zone, or the series would pass the budget."""
        shares = self._shares(states, plan)
        if shares is None:
            return None
        total = sum(self.cost(states[i]) for i, _ in plan.opened) + sum(f.cost for f in self._frozen.values())
        total += sum(len(r.energy) for r in self._rollups.values())
        for feed, last in zip(plan.feeds, shares, strict=True):
            if feed.kind == "pod":  # its watts, as _total counts them
                total += sum(1 for domain in last if not domain.startswith(NO_WATTS))
        if total > self.max_series:
            return None
        out, open_series = self._commit(now, states, plan, shares)
        return self._finish(out, open_series, plan.folded)

    def _commit(
        self, now: float, states: Sequence[S], plan: _Plan, shares: list[dict[str, int]]
    ) -> tuple[list[S], int]:
        """This tick's shares into the rollups and the open series; the open states to export and their series."""
        for rollup in self._rollups.values():
            rollup.last = {}
        for feed, last in zip(plan.feeds, shares, strict=True):
            rollup = feed.rollup
            energy = rollup.energy
            for domain, microjoules in last.items():
                energy[domain] += microjoules
            rollup.last, rollup.fed_at = last, now
        out: list[S] = []
        series = 0
        for i, member in plan.opened:
            state = states[i]
            own = member.own if member is not None else None
            if own is not None:
                for domain, microjoules in state.last_uj:
                    own[domain] = own.get(domain, 0) + microjoules
                for domain, _ in state.energy_uj:
                    own.setdefault(domain, 0)
                state = self.make(state.kind, state.labels, tuple(own.items()), state.last_uj)
            out.append(state)
            series += self.cost(state)
        return out, series

    def _finish(self, out: list[S], open_series: int, folded: tuple[tuple[str, int], ...]) -> tuple[S, ...]:
        """The frozen series and the rollups after the open states; the stats."""
        series = open_series + sum(f.cost for f in self._frozen.values())
        out.extend(f.state for f in self._frozen.values())  # type: ignore[misc]  # made by self.make: an S
        for key, rollup in self._rollups.items():
            made = self.make(key[0], rollup.labels, tuple(rollup.energy.items()), tuple(rollup.last.items()))
            out.append(made)
            series += self.cost(made)
        self.stats = BudgetStats(
            self.max_series,
            series,
            folded,
            self._counts(self._folds),
            self._counts(self._unfolds),
            self._dropped,
        )
        return tuple(out)

    @staticmethod
    def _shares(states: Sequence[S], plan: _Plan) -> list[dict[str, int]] | None:
        """Per rollup of the plan, this tick's shares of the states folded into it (domains in the order `_emit`
        meets them); None where a folded state has a domain its rollup has not."""
        shares: list[dict[str, int]] = []
        for feed in plan.feeds:
            last: dict[str, int] = {}
            for i, width in zip(feed.indexes, feed.widths, strict=True):
                state = states[i]
                if len(state.energy_uj) != width:
                    return None  # a new zone: a series more for its rollup, perhaps
                for domain, microjoules in state.last_uj:
                    last[domain] = last.get(domain, 0) + microjoules
            if not last.keys() <= feed.rollup.energy.keys():
                return None
            shares.append(last)
        return shares

    @staticmethod
    def _counts(by_kind: dict[str, int]) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(by_kind.items()))
