"""How wattlens' metrics are named in OTLP: the one table both the push and docs/otel.md are made from.

Where the OpenTelemetry semantic conventions have a metric (the hardware group, development status:
`hw.energy`, `hw.power`) the push uses it; everything the conventions do not cover (idle and active shares, a
workload's share of energy, wattlens' own health) is `wattlens.*`. Node identity is in the resource (`host.name`,
`k8s.node.name`, `k8s.cluster.name`, `service.instance.id` = the node name); workload identity in data-point
attributes, because one node reports many workloads. Attributes with empty values are left out (a name the node
does not know), and the series budget's rollups carry `wattlens.rollup=true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exporter import metrics as m

SCOPE = "wattlens"
ROLLUP = "wattlens.rollup"


@dataclass(frozen=True, slots=True)
class OtlpMetric:
    name: str
    kind: Literal["sum", "gauge"]  # sums are monotonic counters
    unit: str
    description: str
    families: tuple[m.Family, ...]  # the Prometheus families it carries
    semconv: bool = False  # named by the OpenTelemetry semantic conventions


HW_ENERGY = OtlpMetric(
    "hw.energy",
    "sum",
    "J",
    "Energy consumed by the component: CPU zones, superchip modules (hw.type module) and GPUs. Zones overlap (psys "
    "contains package, package contains core and uncore, a module its Grace zones and GPU): hw.parent names the "
    "counter a core or uncore zone is part of; wattlens.node.energy is the node's total.",
    (m.NODE_CPU_JOULES, m.NODE_MODULE_JOULES, m.NODE_GPU_JOULES),
    semconv=True,
)
HW_POWER = OtlpMetric(
    "hw.power",
    "gauge",
    "W",
    "Instantaneous power of the component: the mean over wattlens' last tick (prefer hw.energy).",
    (m.NODE_CPU_WATTS, m.NODE_MODULE_WATTS, m.NODE_GPU_WATTS),
    semconv=True,
)
HOST_ENERGY = OtlpMetric(
    "hw.host.energy",
    "sum",
    "J",
    "Energy of the entire physical host, as its platform meter (ACPI power meter, BMC) measures it; absent "
    "without one (the conventions reserve it for the whole host).",
    (m.NODE_PLATFORM_JOULES,),
    semconv=True,
)
HOST_POWER = OtlpMetric(
    "hw.host.power",
    "gauge",
    "W",
    "Power of the entire physical host, as its platform meter reports it (prefer hw.host.energy).",
    (m.NODE_PLATFORM_WATTS,),
    semconv=True,
)
NODE_ENERGY = OtlpMetric(
    "wattlens.node.energy",
    "sum",
    "J",
    "The node's total energy: the platform meter's where there is one, else the sum of the top-level domains.",
    (m.NODE_JOULES,),
)
REST = OtlpMetric(
    "wattlens.node.rest.energy",
    "sum",
    "J",
    "Platform energy the top-level domains do not explain (fans, disks, NICs, PSU loss), never negative.",
    (m.NODE_REST_JOULES,),
)
IDLE = OtlpMetric(
    "wattlens.hw.energy.idle",
    "sum",
    "J",
    "Idle share of a domain's energy (a CPU zone, all sockets; a GPU). idle + active = the domain's energy.",
    (m.NODE_CPU_IDLE_JOULES, m.NODE_GPU_IDLE_JOULES),
)
ACTIVE = OtlpMetric(
    "wattlens.hw.energy.active",
    "sum",
    "J",
    "Active share of a domain's energy: unattributed + the top-level workloads'.",
    (m.NODE_CPU_ACTIVE_JOULES, m.NODE_GPU_ACTIVE_JOULES),
)
UNATTRIBUTED = OtlpMetric(
    "wattlens.unattributed.energy",
    "sum",
    "J",
    "Active energy no workload accounts for. Per domain: energy = idle + unattributed + Σ top-level workloads "
    "(pods, containers without wattlens.parent_kind, services, VMs, users, jobs).",
    (m.UNATTRIBUTED_CPU_JOULES, m.UNATTRIBUTED_GPU_JOULES),
)
WORKLOADS: dict[str, OtlpMetric] = {
    kind: OtlpMetric(
        f"wattlens.{kind}.energy",
        "sum",
        "J",
        f"Energy attributed to the {what}, per domain (hw.type and hw.name of a CPU zone, or hw.id of a GPU).",
        (m.WORKLOAD_FAMILIES[kind], m.WORKLOAD_GPU_FAMILIES[kind]),
    )
    for kind, what in (
        ("pod", "pod"),
        ("container", "container (inside another workload where wattlens.parent_kind is set)"),
        ("service", "systemd service"),
        ("vm", "virtual machine"),
        ("user", "user's sessions"),
        ("job", "batch job"),
    )
}
PROCESS = OtlpMetric(
    "wattlens.process.energy",
    "sum",
    "J",
    "CPU energy of the top processes (series_level processes); the rollup holds every other process's.",
    (m.PROCESS_CPU_JOULES,),
)
CARBON = OtlpMetric(
    "wattlens.grid.carbon_intensity",
    "gauge",
    "g/kWh",
    "Carbon intensity of the node's grid, gCO2e per kWh.",
    (m.GRID_CARBON_INTENSITY,),
)
NODE_OPERATIONAL_CARBON = OtlpMetric(
    "wattlens.node.carbon.operational",
    "sum",
    "g",
    "Operational carbon of a domain's energy (hw.type/hw.name of a CPU zone no other contains, or hw.id of a GPU), "
    "gCO2e at the intensity in force each tick; wattlens.carbon.part idle, unattributed or workloads adds up to the "
    "domain's grams; wattlens.carbon.kind average or marginal.",
    (m.NODE_OPERATIONAL_CARBON,),
)
NODE_EMBODIED_CARBON = OtlpMetric(
    "wattlens.node.carbon.embodied",
    "sum",
    "g",
    "Estimate: embodied carbon of the host (hw.type host) and each GPU (hw.id), amortised over its lifetime, gCO2e; "
    "wattlens.carbon.part as above.",
    (m.NODE_EMBODIED_CARBON,),
)
WORKLOAD_CARBON: dict[tuple[str, str], OtlpMetric] = {
    (kind, part): OtlpMetric(
        f"wattlens.{kind}.carbon.{part}",
        "sum",
        "g",
        f"{part.capitalize()} carbon of a top-level {kind}, gCO2e (docs/carbon.md)"
        + ("; wattlens.carbon.kind average or marginal." if part == "operational" else ", an estimate."),
        ((m.WORKLOAD_OPERATIONAL_CARBON if part == "operational" else m.WORKLOAD_EMBODIED_CARBON)[kind],),
    )
    for kind in ("pod", "container", "service", "vm", "user", "job")
    for part in ("operational", "embodied")
}
SOURCE_UP = OtlpMetric(
    "wattlens.source.up",
    "gauge",
    "1",
    "1 when a source was read in the last tick, else 0.",
    (m.SOURCE_UP,),
)
TICKS = OtlpMetric("wattlens.ticks", "sum", "{tick}", "Ticks completed.", (m.TICKS,))
FOLDED = OtlpMetric(
    "wattlens.workloads.folded",
    "gauge",
    "{workload}",
    "Workloads the series budget folded into rollups, by wattlens.workload.kind.",
    (m.WORKLOADS_FOLDED,),
)
DROPPED = OtlpMetric(
    "wattlens.otlp.pushes.dropped",
    "sum",
    "{push}",
    "Pushes dropped because the queue was full while the receiver was unreachable (delivered with the next push).",
    (),
)
METRICS: tuple[OtlpMetric, ...] = (
    HW_ENERGY,
    HW_POWER,
    HOST_ENERGY,
    HOST_POWER,
    NODE_ENERGY,
    REST,
    IDLE,
    ACTIVE,
    UNATTRIBUTED,
    *WORKLOADS.values(),
    PROCESS,
    CARBON,
    NODE_OPERATIONAL_CARBON,
    NODE_EMBODIED_CARBON,
    *WORKLOAD_CARBON.values(),
    SOURCE_UP,
    TICKS,
    FOLDED,
    DROPPED,
)
# Pull-side families with no OTLP counterpart, and why.
PULL_ONLY: dict[str, str] = {
    m.POD_CPU_WATTS.full_name: "derive power from wattlens.pod.energy",
    m.NODE_CPU_IDLE_WATTS.full_name: "a property of the idle split, on /metrics",
    m.NODE_GPU_IDLE_WATTS.full_name: "as above",
    m.COUNTER_WRAPS.full_name: "counter health, on /metrics",
    m.COUNTER_RESETS.full_name: "as above",
    m.NODE_GPU_RESETS.full_name: "as above",
    m.NODE_GPU_INFO.full_name: "hw.name carries the model; the driver is on /metrics",
    m.GPU_ATTRIBUTION_TICKS.full_name: "attribution diagnostics, on /metrics",
    m.POD_LABELS.full_name: "pod labels belong in the receiver's k8sattributes-style enrichment",
    m.POD_WATCH_REQUESTS.full_name: "exporter self-metrics stay on /metrics",
    m.POD_WATCH_ERRORS.full_name: "as above",
    m.NODE_ZONE_INFO.full_name: "how the zones nest (docs/domains.md), on /metrics",
    m.NODE_GPU_SCOPE_WATTS.full_name: "a breakdown of (memory) or envelope around (module) hw.energy of a GPU, "
    "never to be added to it; on /metrics",
    m.NODE_GPU_SCOPE_JOULES.full_name: "as above",
    m.GRID_CARBON_INTENSITY_AGE.full_name: "the intensity source's health, on /metrics",
    m.NODE_GPU_INSTANCE_ACTIVE_JOULES.full_name: "MIG instances' shares of a GPU's active energy (their workloads "
    "are pushed); on /metrics",
    **{
        f.full_name: "the exporter's own health, on /metrics"
        for f in (
            m.SOURCE_ERRORS,
            m.BUILD_INFO,
            m.NODE_INFO,
            m.TICKS_SKIPPED,
            m.TICK_DURATION,
            m.TICK_CPU,
            m.LAST_TICK,
            m.SCRAPES,
            m.HTTP_REJECTIONS,
            m.TLS_CERT_EXPIRY,
            m.RENDER_DURATION,
            m.NODE_PLATFORM_READING_AGE,
            m.METER_SWITCHES,
            m.WORKLOADS,
            m.SERIES_BUDGET,
            m.WORKLOAD_SERIES,
            m.WORKLOAD_FOLDS,
            m.WORKLOAD_UNFOLDS,
            m.WORKLOAD_SERIES_DROPPED,
            m.CGROUP_READ_ERRORS,
            m.CGROUP_WALKS_TRUNCATED,
            m.CGROUP_FULL_WALKS,
            m.FD_BUDGET,
            m.FDS_HELD,
            m.FD_DEGRADED,
            m.OTLP_PUSHES,
            m.OTLP_POINTS,
            m.OTLP_QUEUED,
            m.OTLP_DURATION,
            m.OTLP_LAST_SUCCESS,
        )
    },
    m.OTLP_DROPPED.full_name: "pushed as wattlens.otlp.pushes.dropped",
}

# Workload label → attribute, per kind (exporter/workloads/labels.py order). A container inside a pod names
# itself with k8s.container.name, any other with container.name.
WORKLOAD_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "pod": ("k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid"),
    "container": (
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.pod.uid",
        "container.name",
        "container.id",
        "container.runtime.name",
        "wattlens.parent_kind",
    ),
    "service": ("wattlens.systemd.unit",),
    "vm": ("wattlens.vm.name", "wattlens.vm.id", "wattlens.vm.hypervisor"),
    "user": ("user.id",),
    "job": ("wattlens.job.id", "user.id", "wattlens.job.scheduler"),
}
POD_CONTAINER_NAME = "k8s.container.name"
# Resource attributes (besides otlp_resource_attributes): service.name, service.version, service.instance.id
# (the node name, so a restarted daemon continues its series), host.name, k8s.node.name (in Kubernetes, or with
# cluster_name set), k8s.cluster.name (cluster_name).
RESOURCE = ("service.name", "service.version", "service.instance.id", "host.name", "k8s.node.name", "k8s.cluster.name")


def hw_type(zone: str) -> str:
    """hw.type of an energy zone: dram is memory, a superchip module "module", every other CPU-role zone (package,
    core, uncore, psys, Grace rails...) cpu."""
    if zone == "dram":
        return "memory"
    return "module" if zone == "module" else "cpu"


def hw_parent(zone: str, device: str) -> str:
    """The counter a zone's energy is part of: a core or uncore powercap subzone's package (intel-rapl:0:1 →
    intel-rapl:0); "" for the rest (dram is not inside package; psys is a separate domain)."""
    if zone in ("core", "uncore") and device.count(":") >= 2:
        return device.rsplit(":", 1)[0]
    return ""


def reference_markdown() -> str:
    """The mapping table of docs/otel.md (`python -m exporter.otlp.mapping`)."""
    lines = [
        "| OTLP metric | kind | unit | semantic conventions | Prometheus families | description |",
        "|---|---|---|---|---|---|",
    ]
    for metric in METRICS:
        families = ", ".join(f"`{f.full_name}`" for f in metric.families) or "(the push's own)"
        kind = "counter (monotonic sum)" if metric.kind == "sum" else "gauge"
        semconv = "yes (development)" if metric.semconv else ""
        lines.append(f"| `{metric.name}` | {kind} | `{metric.unit}` | {semconv} | {families} | {metric.description} |")
    lines += ["", "| workload kind | attributes (in the order of the Prometheus labels) |", "|---|---|"]
    for kind, names in WORKLOAD_ATTRIBUTES.items():
        lines.append(f"| {kind} | {', '.join(f'`{n}`' for n in names)} |")
    lines += ["", "| Prometheus family | not pushed, because |", "|---|---|"]
    lines += [f"| `{name}` | {why} |" for name, why in PULL_ONLY.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
