"""The metric catalogue: every family wattlens exports, in one place (names, types, help, labels).

The exposition builds families from these definitions and the README's metric table is checked against
them by the test suite, so the documentation cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "wattlens_"


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # without the prefix; counters end in _total
    kind: Literal["counter", "gauge", "info"]
    help: str
    labels: tuple[str, ...]
    prefix: str = PREFIX

    @property
    def full_name(self) -> str:
        return self.prefix + self.name


ZONE_LABELS = ("zone", "socket", "die", "source")

NODE_CPU_JOULES = Family(
    "node_cpu_joules_total",
    "counter",
    "Energy of one CPU energy zone (package, core, uncore, dram, psys; hwmon: grace, cpu, sysio, io) since wattlens "
    "started: the hardware's counter (method energy_counter) or its power integrated (power_integration). Zones "
    "overlap (psys contains package, package contains core, grace contains cpu and sysio): add only top-level zones "
    '(wattlens_node_zone_info{top_level="true"}).',
    ("node", *ZONE_LABELS, "method"),
)
NODE_CPU_WATTS = Family(
    "node_cpu_watts", "gauge", "Mean power of one CPU energy zone over the last tick.", ("node", *ZONE_LABELS)
)
NODE_CPU_IDLE_JOULES = Family(
    "node_cpu_idle_joules_total",
    "counter",
    "Idle share of a zone's energy (all sockets), by the configured idle policy.",
    ("node", "zone", "source"),
)
NODE_CPU_ACTIVE_JOULES = Family(
    "node_cpu_active_joules_total",
    "counter",
    "Active (non-idle) share of a zone's energy (all sockets).",
    ("node", "zone", "source"),
)
NODE_CPU_IDLE_WATTS = Family(
    "node_cpu_idle_baseline_watts",
    "gauge",
    "Idle power used for a zone in the last tick and how it was obtained "
    "(configured, model, learned, or ratio when derived from the idle share of CPU time).",
    ("node", "zone", "source", "method"),
)
COUNTER_WRAPS = Family(
    "node_cpu_energy_wraps_total",
    "counter",
    "Hardware energy counter wraparounds seen and corrected.",
    ("node", *ZONE_LABELS),
)
COUNTER_RESETS = Family(
    "node_cpu_energy_resets_total",
    "counter",
    "Hardware energy counter decreases or jumps no wrap explains (driver reload, hotplug); they add no energy.",
    ("node", *ZONE_LABELS),
)
NODE_MODULE_JOULES = Family(
    "node_module_joules_total",
    "counter",
    "Energy of a superchip module (GH200: Grace + GPU + memory, the hwmon Module meter) since wattlens started. It "
    "contains the socket's Grace zones and its GPU's counter: never add them to it.",
    ("node", "socket", "source", "method"),
)
NODE_MODULE_WATTS = Family(
    "node_module_watts", "gauge", "A superchip module's power over the last tick.", ("node", "socket", "source")
)
NODE_PLATFORM_JOULES = Family(
    "node_platform_joules_total",
    "counter",
    "Energy of the whole node as its platform meter measures it (an ACPI power meter through hwmon, or the BMC "
    "through Redfish; typically PSU input) since wattlens started. It contains every other domain.",
    ("node", "source", "device", "method"),
)
NODE_PLATFORM_WATTS = Family(
    "node_platform_watts",
    "gauge",
    "The node's power as its platform meter reports it (its own reading, or its energy over the last tick).",
    ("node", "source", "device"),
)
NODE_PLATFORM_READING_AGE = Family(
    "node_platform_reading_age_seconds",
    "gauge",
    "How old the platform reading a tick used was (a BMC is read in the background; past a limit it is down).",
    ("node", "source", "device"),
)
NODE_REST_JOULES = Family(
    "node_rest_joules_total",
    "counter",
    "The rest of the node: platform energy the top-level domains (CPU zones, modules, GPUs) do not explain (fans, "
    "disks, NICs, PSU loss, ...), never negative; at node level only, attributed to no workload.",
    ("node",),
)
NODE_JOULES = Family(
    "node_joules_total",
    "counter",
    "The node's total energy: the platform meter's where there is one (while it reads), else the sum of the "
    "top-level domains (CPU zones, modules, GPUs). The one figure to show as the node's energy.",
    ("node",),
)
NODE_ZONE_INFO = Family(
    "node_zone",
    "info",
    "Every measured zone, its role (cpu, module, platform, accelerator), the zone directly around it (parent) and "
    'whether it is top-level: top_level="true" zones add up without double counting (docs/domains.md).',
    ("node", "zone", "source", "role", "parent", "top_level"),
)
METER_SWITCHES = Family(
    "meter_switches_total",
    "counter",
    "Times the meter of the node's CPU energy was handed over at runtime (to the next in `meters` after its zones "
    "were down for meter_failover_after, or back); series carry the new meter's source. Present once a hand-over "
    "has happened.",
    ("node",),
)
SOURCE_UP = Family(
    "source_up",
    "gauge",
    "1 when a source (meter zone, /proc) was read in the last tick; 0 when it failed or the meter is "
    "unavailable (device is empty then).",
    ("node", "source", "device"),
)
SOURCE_ERRORS = Family(
    "source_errors_total", "counter", "Failed reads of a source since start.", ("node", "source", "device")
)
BUILD_INFO = Family("build", "info", "wattlens build.", ("node", "version", "python_version"))
NODE_INFO = Family(
    "node",
    "info",
    "The node wattlens measures and the meter in use.",
    ("node", "cpu_model", "cpus", "sockets", "kernel", "cgroup_version", "meter"),
)
TICKS = Family("ticks_total", "counter", "Ticks completed.", ("node",))
TICKS_SKIPPED = Family(
    "ticks_skipped_total", "counter", "Tick slots skipped because a tick overran its interval.", ("node",)
)
TICK_DURATION = Family(
    "tick_duration_seconds", "gauge", "Wall time of the last tick (read, account, snapshot).", ("node",)
)
TICK_CPU = Family("tick_cpu_seconds_total", "counter", "CPU time spent in ticks.", ("node",))
LAST_TICK = Family("last_tick_timestamp_seconds", "gauge", "Unix time at the end of the last tick.", ("node",))
SCRAPES = Family(
    "scrapes_total",
    "counter",
    "Metric scrapes served, by format and encoding (counted up to the last tick).",
    ("node", "format", "encoding"),
)
HTTP_REJECTIONS = Family(
    "http_rejections_total",
    "counter",
    "Connections the endpoint ended or requests it refused to protect itself, by reason: evicted_idle (room for "
    "a new connection), evicted_share (an address holding more than its share), evicted_reserve, "
    "evicted_health, evicted_handshake, handshake_failed, handshake_timeout, plain_http_on_tls, "
    "request_timeout, idle_timeout, write_timeout, busy (only health served), peer_limit, auth_queue_full, "
    "accept_error, shutdown (counted up to the last tick).",
    ("node", "reason"),
)
TLS_CERT_EXPIRY = Family(
    "tls_certificate_expiry_timestamp_seconds",
    "gauge",
    "Unix time at which the TLS certificate being served expires (web_config_file with tls_server_config).",
    ("node",),
)
OTLP_PUSHES = Family(
    "otlp_pushes_total",
    "counter",
    "OTLP pushes (otlp_endpoint) by result: success, or failure (the receiver unreachable or refusing; the push is "
    "retried with backoff while it is queued).",
    ("node", "result"),
)
OTLP_DROPPED = Family(
    "otlp_pushes_dropped_total",
    "counter",
    "OTLP pushes dropped unsent: otlp_queue pushes were already waiting for the receiver (with cumulative "
    "temporality the next push carries the totals; with delta, what the next push sends grows accordingly).",
    ("node",),
)
OTLP_POINTS = Family("otlp_points_total", "counter", "OTLP data points delivered.", ("node",))
OTLP_QUEUED = Family("otlp_queue_length", "gauge", "OTLP pushes waiting to be sent.", ("node",))
OTLP_DURATION = Family(
    "otlp_push_duration_seconds",
    "gauge",
    "Wall time of the last OTLP push (building the request, sending it, the exporter's retries).",
    ("node",),
)
OTLP_LAST_SUCCESS = Family(
    "otlp_last_success_timestamp_seconds", "gauge", "Unix time of the last delivered OTLP push.", ("node",)
)
RENDER_DURATION = Family(
    "render_duration_seconds",
    "gauge",
    "Wall time spent rendering the previous tick's exposition, every variant scraped (0 if nobody scraped it).",
    ("node",),
)

WORKLOAD_HELP = (
    "CPU energy attributed to the {what} by its cgroup's CPU time, since wattlens first saw it; kept for "
    "workload_ttl after it ends."
)
POD_CPU_JOULES = Family(
    "pod_cpu_joules_total",
    "counter",
    WORKLOAD_HELP.format(what="pod (its containers, pause and exited ones)"),
    ("node", "namespace", "pod", "uid", "zone", "source"),
)
CONTAINER_CPU_JOULES = Family(
    "container_cpu_joules_total",
    "counter",
    WORKLOAD_HELP.format(what="container")
    + " A container inside another workload (its pod, a user's session, a service, a system container) is part "
    'of that one\'s energy too: parent_kind names its kind; parent_kind="" is a top-level container. uid is the '
    "UID of its pod (empty outside pods), so containers of pods whose names are not known yet still join.",
    ("node", "namespace", "pod", "uid", "container", "container_id", "runtime", "parent_kind", "zone", "source"),
)
SERVICE_CPU_JOULES = Family(
    "service_cpu_joules_total",
    "counter",
    WORKLOAD_HELP.format(what="systemd service"),
    ("node", "unit", "zone", "source"),
)
VM_CPU_JOULES = Family(
    "vm_cpu_joules_total",
    "counter",
    WORKLOAD_HELP.format(what="virtual machine"),
    ("node", "vm", "vm_id", "hypervisor", "zone", "source"),
)
JOB_CPU_JOULES = Family(
    "job_cpu_joules_total",
    "counter",
    WORKLOAD_HELP.format(what="batch job (Slurm; its steps and tasks)"),
    ("node", "job_id", "user_id", "scheduler", "zone", "source"),
)
USER_CPU_JOULES = Family(
    "user_cpu_joules_total",
    "counter",
    WORKLOAD_HELP.format(what="user's sessions (user-UID.slice); user_id is the Unix user id"),
    ("node", "user_id", "zone", "source"),
)
UNATTRIBUTED_CPU_JOULES = Family(
    "unattributed_cpu_joules_total",
    "counter",
    "Active CPU energy no workload accounts for: kernel threads, interrupts, processes outside workload cgroups. "
    'Per zone: node = idle + unattributed + pods + top-level containers (parent_kind="") + services + VMs + '
    "users + jobs.",
    ("node", "zone", "source"),
)
POD_CPU_WATTS = Family(
    "pod_cpu_watts",
    "gauge",
    "A pod's CPU power over the last tick.",
    ("node", "namespace", "pod", "uid", "zone", "source"),
)
PROCESS_CPU_JOULES = Family(
    "process_cpu_joules_total",
    "counter",
    "Opt-in (process_metrics): CPU energy of the top process_top_n processes by energy, each from when it got "
    'its series; comm="other" holds every other process\'s. Processes that end between ticks are missed: '
    "workload series, from cgroups, are the complete view.",
    ("node", "pid", "comm", "container_id", "unit", "zone", "source"),
)
GPU_LABELS = ("node", "gpu", "gpu_uuid", "gpu_model")
NODE_GPU_JOULES = Family(
    "node_gpu_joules_total",
    "counter",
    "Energy of one GPU since wattlens started: its energy counter (method energy_counter) or its power "
    "integrated over each tick (method power_integration, GPUs before Volta).",
    (*GPU_LABELS, "method"),
)
NODE_GPU_WATTS = Family("node_gpu_watts", "gauge", "A GPU's mean power over the last tick.", GPU_LABELS)
NODE_GPU_IDLE_JOULES = Family(
    "node_gpu_idle_joules_total",
    "counter",
    "Idle share of a GPU's energy (configured or learned idle watts).",
    GPU_LABELS,
)
NODE_GPU_ACTIVE_JOULES = Family(
    "node_gpu_active_joules_total",
    "counter",
    "Active share of a GPU's energy; idle + active = the GPU's.",
    GPU_LABELS,
)
NODE_GPU_IDLE_WATTS = Family(
    "node_gpu_idle_baseline_watts",
    "gauge",
    "Idle power used for a GPU in the last tick and how it was obtained: configured, unused (median power of "
    "intervals nobody used it), regression (intercept at 0 % load, for a GPU that is never unused).",
    (*GPU_LABELS, "method"),
)
NODE_GPU_RESETS = Family(
    "node_gpu_energy_resets_total",
    "counter",
    "GPU energy counter decreases (driver reload, GPU reset); they add no energy.",
    GPU_LABELS,
)
NODE_GPU_INFO = Family(
    "node_gpu",
    "info",
    'A GPU and its driver. mig="true": split among GPU instances by GPM activity (or by GPU memory where GPM is '
    "missing, an estimate), then among each instance's processes by memory. partition: an AMD GPU's compute/memory "
    "partition mode (e.g. CPX/NPS4).",
    ("node", "gpu", "gpu_uuid", "gpu_model", "driver", "mig", "partition"),
)
NODE_GPU_SCOPE_WATTS = Family(
    "node_gpu_scope_watts",
    "gauge",
    "Power of a scope the GPU's driver reports beside the GPU's own: memory (a part of the GPU's power, never "
    "to be added to it) or module (GH200/GB200: around it, Grace included).",
    (*GPU_LABELS, "scope"),
)
NODE_GPU_SCOPE_JOULES = Family(
    "node_gpu_scope_joules_total",
    "counter",
    "The same scopes' power integrated over each tick: a breakdown of (memory) or an envelope around (module) "
    "node_gpu_joules_total, never added to it.",
    (*GPU_LABELS, "scope"),
)
NODE_GPU_INSTANCE_ACTIVE_JOULES = Family(
    "node_gpu_instance_active_joules_total",
    "counter",
    "A MIG GPU instance's share of its GPU's active energy (by GPM activity, or GPU memory without GPM: see "
    "gpu_attribution_ticks_total); the instances of a GPU sum to its active energy while it is partitioned.",
    ("node", "gpu", "gpu_uuid", "gpu_instance", "mig_profile", "mig_uuid"),
)
GPU_ATTRIBUTION_TICKS = Family(
    "gpu_attribution_ticks_total",
    "counter",
    "Ticks by how a GPU's active energy was split: sm_util (NVML utilisation samples), equal (running "
    "processes, no samples), mig_gpm (MIG instances by GPM activity), mig_memory (MIG by GPU memory, an "
    "estimate), engine_gfx, cu_occupancy, vram (AMD: engine time, compute units occupied, VRAM), tail (no "
    "users: the ramp-down of the last users'), none (no users: unattributed).",
    ("node", "gpu", "gpu_uuid", "split"),
)
UNATTRIBUTED_GPU_JOULES = Family(
    "unattributed_gpu_joules_total",
    "counter",
    "Active GPU energy no workload accounts for (no users, or users outside workload cgroups). Per GPU: "
    "node = idle + unattributed + Σ top-level workloads.",
    ("node", "gpu", "gpu_uuid"),
)
GPU_WORKLOAD_HELP = "GPU energy attributed to the {what} by its processes' SM utilisation on that GPU."
WORKLOAD_GPU_FAMILIES: dict[str, Family] = {
    "pod": Family(
        "pod_gpu_joules_total",
        "counter",
        GPU_WORKLOAD_HELP.format(what="pod"),
        ("node", "namespace", "pod", "uid", "gpu", "gpu_uuid"),
    ),
    "container": Family(
        "container_gpu_joules_total",
        "counter",
        GPU_WORKLOAD_HELP.format(what="container") + " uid and parent_kind as on wattlens_container_cpu_joules_total.",
        ("node", "namespace", "pod", "uid", "container", "container_id", "runtime", "parent_kind", "gpu", "gpu_uuid"),
    ),
    "service": Family(
        "service_gpu_joules_total",
        "counter",
        GPU_WORKLOAD_HELP.format(what="systemd service"),
        ("node", "unit", "gpu", "gpu_uuid"),
    ),
    "vm": Family(
        "vm_gpu_joules_total",
        "counter",
        GPU_WORKLOAD_HELP.format(what="virtual machine"),
        ("node", "vm", "vm_id", "hypervisor", "gpu", "gpu_uuid"),
    ),
    "user": Family(
        "user_gpu_joules_total",
        "counter",
        GPU_WORKLOAD_HELP.format(what="user's sessions"),
        ("node", "user_id", "gpu", "gpu_uuid"),
    ),
    "job": Family(
        "job_gpu_joules_total",
        "counter",
        GPU_WORKLOAD_HELP.format(what="batch job"),
        ("node", "job_id", "user_id", "scheduler", "gpu", "gpu_uuid"),
    ),
}
POD_LABELS = Family(
    "pod_labels",
    "gauge",
    "With kubernetes_api: each pod's owner and its allow-listed labels (pod_labels setting) as label_<key>, "
    "value 1; join on uid (like kube_pod_labels).",
    ("node", "namespace", "pod", "uid", "owner_kind", "owner_name"),
)
POD_WATCH_REQUESTS = Family(
    "pod_watch_requests_total",
    "counter",
    "API server requests of the pod watch: list (only at start and after a 410 Gone) and watch.",
    ("node", "verb"),
)
POD_WATCH_ERRORS = Family(
    "pod_watch_errors_total", "counter", "Failed pod-watch requests (retried with backoff).", ("node",)
)
GRID_CARBON_INTENSITY = Family(
    "grid_carbon_intensity_grams_per_kwh",
    "gauge",
    "Carbon intensity of the grid powering this node in force for the last tick, gCO2e per kWh (carbon_intensity, "
    "carbon_intensity_file or the carbon.provider API; through an outage the last good value); grams CO2e = joules "
    "/ 3.6e6 * this. kind: average or marginal.",
    ("node", "source", "kind"),
)
GRID_CARBON_INTENSITY_AGE = Family(
    "grid_carbon_intensity_age_seconds",
    "gauge",
    "Seconds since the intensity API last confirmed the value in force (it grows through an outage).",
    ("node", "source"),
)
CARBON_PARTS = "part is idle, unattributed or workloads (Σ top-level workloads); the parts add up to the domain's grams"
NODE_OPERATIONAL_CARBON = Family(
    "node_operational_carbon_grams_total",
    "counter",
    "Operational carbon of a domain's energy (a CPU zone that no other contains, or gpu:<uuid>), each tick's joules "
    "at the intensity in force during it, gCO2e; " + CARBON_PARTS + ". kind: average or marginal intensity.",
    ("node", "domain", "part", "kind"),
)
NODE_EMBODIED_CARBON = Family(
    "node_embodied_carbon_grams_total",
    "counter",
    "Estimate: embodied carbon of the host (domain host) and each GPU (gpu:<uuid>) amortised over its lifetime "
    "(carbon.host_embodied_kg, carbon.gpu_embodied_kg, carbon.lifetime), gCO2e; " + CARBON_PARTS + ".",
    ("node", "domain", "part"),
)
OPERATIONAL_HELP = (
    "Operational carbon of the {what}: its CPU and GPU energy at the grid intensity in force during each tick, "
    "gCO2e (kind: average or marginal); kept for workload_ttl after it ends."
)
EMBODIED_HELP = (
    "Estimate: the {what}'s share of the host's embodied carbon (by CPU time over the node's capacity) and of "
    "the GPUs' (as their energy is split), gCO2e; kept for workload_ttl after it ends."
)
WORKLOADS = Family(
    "workloads",
    "gauge",
    "Workloads with series exported, by kind (a rollup of the series budget counts as one).",
    ("node", "kind"),
)
SERIES_BUDGET = Family(
    "series_budget",
    "gauge",
    "max_series: the most workload series exported (0: no budget). Past nine tenths of it the weakest workloads "
    'fold into rollups: series of the same families named "(folded)" (pod="(folded)", uid=""; a pod rollup keeps '
    "the namespace, a container rollup the namespace and parent_kind).",
    ("node",),
)
WORKLOAD_SERIES = Family(
    "workload_series",
    "gauge",
    "Workload series exported in the last tick (workload joules, pod watts, pod labels; rollups and series frozen "
    "after folding included).",
    ("node",),
)
WORKLOADS_FOLDED = Family(
    "workloads_folded",
    "gauge",
    "Workloads folded into rollups by the series budget in the last tick, by kind (their energy is in the rollups).",
    ("node", "kind"),
)
WORKLOAD_FOLDS = Family(
    "workload_folds_total",
    "counter",
    "Times a workload with a series of its own was folded into a rollup (its series stays, frozen, for workload_ttl).",
    ("node", "kind"),
)
WORKLOAD_UNFOLDS = Family(
    "workload_unfolds_total",
    "counter",
    "Times a folded workload got a series of its own (it continues from its last value).",
    ("node", "kind"),
)
WORKLOAD_SERIES_DROPPED = Family(
    "workload_series_dropped_total",
    "counter",
    "Workload series removed at once, without lingering, to stay within max_series (frozen series, or the weakest "
    "open workloads when the others grew).",
    ("node",),
)
CGROUP_READ_ERRORS = Family(
    "cgroup_read_errors_total", "counter", "cgroup CPU files that could not be parsed.", ("node",)
)
CGROUP_WALKS_TRUNCATED = Family(
    "cgroup_walks_truncated_total",
    "counter",
    "cgroup listings cut short by the directory limit or a delegated subtree's cap (the rest counts as the "
    "workload above it).",
    ("node",),
)
CGROUP_FULL_WALKS = Family(
    "cgroup_full_walks_total",
    "counter",
    "Full listings of the cgroup tree: the first, the periodic safety net, after an inotify queue overflow, and "
    "every tick where inotify is unavailable (otherwise only directories inotify reports as changed are read).",
    ("node",),
)
FD_BUDGET = Family(
    "fd_budget",
    "gauge",
    "File descriptors wattlens may hold across ticks: the open-files limit less a reserve for HTTP connections "
    "and the rest.",
    ("node",),
)
FDS_HELD = Family("fds_held", "gauge", "File descriptors held across ticks (cgroup and process files).", ("node",))
FD_DEGRADED = Family(
    "fd_degraded",
    "gauge",
    "1 once a reader was refused held fds by the budget: cgroup files are then opened, read and closed each tick, "
    "processes beyond the budget get no series.",
    ("node", "reader"),
)
WORKLOAD_FAMILIES: dict[str, Family] = {
    "pod": POD_CPU_JOULES,
    "container": CONTAINER_CPU_JOULES,
    "service": SERVICE_CPU_JOULES,
    "vm": VM_CPU_JOULES,
    "user": USER_CPU_JOULES,
    "job": JOB_CPU_JOULES,
}
_WORKLOAD_NAMES = {"pod": "pod (its containers' included)",
                   "container": 'top-level container (parent_kind="": one inside a pod is in the pod\'s)',
                   "service": "systemd service", "vm": "virtual machine",
                   "user": "user's sessions", "job": "batch job"}  # fmt: skip
# A workload's carbon families: its joules family's labels without zone and source (grams span every domain).
WORKLOAD_OPERATIONAL_CARBON: dict[str, Family] = {
    kind: Family(
        f"{kind}_operational_carbon_grams_total",
        "counter",
        OPERATIONAL_HELP.format(what=_WORKLOAD_NAMES[kind]),
        (*fam.labels[:-2], "kind"),
    )
    for kind, fam in WORKLOAD_FAMILIES.items()
}
WORKLOAD_EMBODIED_CARBON: dict[str, Family] = {
    kind: Family(
        f"{kind}_embodied_carbon_grams_total",
        "counter",
        EMBODIED_HELP.format(what=_WORKLOAD_NAMES[kind]),
        fam.labels[:-2],
    )
    for kind, fam in WORKLOAD_FAMILIES.items()
}

CATALOGUE: tuple[Family, ...] = (
    NODE_CPU_JOULES,
    NODE_CPU_WATTS,
    NODE_CPU_IDLE_JOULES,
    NODE_CPU_ACTIVE_JOULES,
    NODE_CPU_IDLE_WATTS,
    COUNTER_WRAPS,
    COUNTER_RESETS,
    NODE_MODULE_JOULES,
    NODE_MODULE_WATTS,
    NODE_PLATFORM_JOULES,
    NODE_PLATFORM_WATTS,
    NODE_PLATFORM_READING_AGE,
    NODE_REST_JOULES,
    NODE_JOULES,
    NODE_ZONE_INFO,
    METER_SWITCHES,
    *WORKLOAD_FAMILIES.values(),
    UNATTRIBUTED_CPU_JOULES,
    POD_CPU_WATTS,
    PROCESS_CPU_JOULES,
    NODE_GPU_JOULES,
    NODE_GPU_WATTS,
    NODE_GPU_IDLE_JOULES,
    NODE_GPU_ACTIVE_JOULES,
    NODE_GPU_IDLE_WATTS,
    NODE_GPU_RESETS,
    NODE_GPU_INFO,
    NODE_GPU_SCOPE_WATTS,
    NODE_GPU_SCOPE_JOULES,
    NODE_GPU_INSTANCE_ACTIVE_JOULES,
    GPU_ATTRIBUTION_TICKS,
    UNATTRIBUTED_GPU_JOULES,
    *WORKLOAD_GPU_FAMILIES.values(),
    POD_LABELS,
    POD_WATCH_REQUESTS,
    POD_WATCH_ERRORS,
    GRID_CARBON_INTENSITY,
    GRID_CARBON_INTENSITY_AGE,
    NODE_OPERATIONAL_CARBON,
    NODE_EMBODIED_CARBON,
    *WORKLOAD_OPERATIONAL_CARBON.values(),
    *WORKLOAD_EMBODIED_CARBON.values(),
    SOURCE_UP,
    SOURCE_ERRORS,
    WORKLOADS,
    SERIES_BUDGET,
    WORKLOAD_SERIES,
    WORKLOADS_FOLDED,
    WORKLOAD_FOLDS,
    WORKLOAD_UNFOLDS,
    WORKLOAD_SERIES_DROPPED,
    CGROUP_READ_ERRORS,
    CGROUP_WALKS_TRUNCATED,
    CGROUP_FULL_WALKS,
    FD_BUDGET,
    FDS_HELD,
    FD_DEGRADED,
    BUILD_INFO,
    NODE_INFO,
    TICKS,
    TICKS_SKIPPED,
    TICK_DURATION,
    TICK_CPU,
    LAST_TICK,
    SCRAPES,
    HTTP_REJECTIONS,
    TLS_CERT_EXPIRY,
    RENDER_DURATION,
    OTLP_PUSHES,
    OTLP_DROPPED,
    OTLP_POINTS,
    OTLP_QUEUED,
    OTLP_DURATION,
    OTLP_LAST_SUCCESS,
)
# The standard process and Python families every Prometheus client library exports (names and help as
# prometheus-client has them), after wattlens' own.
STANDARD: tuple[Family, ...] = (
    Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", (), ""),
    Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", (), ""),
    Family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", (), ""),
    Family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", (), ""),
    Family("process_open_fds", "gauge", "Number of open file descriptors.", (), ""),
    Family("process_max_fds", "gauge", "Maximum number of open file descriptors.", (), ""),
    Family(
        "python_info",
        "gauge",
        "Python platform information",
        ("version", "implementation", "major", "minor", "patchlevel"),
        "",
    ),
)
# Families that appear only when their source is there: GPUs present, or process_metrics on.
CONDITIONAL: frozenset[str] = frozenset(
    f.full_name
    for f in (
        PROCESS_CPU_JOULES,
        GRID_CARBON_INTENSITY,
        GRID_CARBON_INTENSITY_AGE,
        NODE_OPERATIONAL_CARBON,
        NODE_EMBODIED_CARBON,
        *WORKLOAD_OPERATIONAL_CARBON.values(),
        *WORKLOAD_EMBODIED_CARBON.values(),
        NODE_MODULE_JOULES,
        NODE_MODULE_WATTS,
        NODE_PLATFORM_JOULES,
        NODE_PLATFORM_WATTS,
        NODE_PLATFORM_READING_AGE,
        NODE_REST_JOULES,
        METER_SWITCHES,
        TLS_CERT_EXPIRY,
        OTLP_PUSHES,
        OTLP_DROPPED,
        OTLP_POINTS,
        OTLP_QUEUED,
        OTLP_DURATION,
        OTLP_LAST_SUCCESS,
        POD_LABELS,
        POD_WATCH_REQUESTS,
        POD_WATCH_ERRORS,
        NODE_GPU_JOULES,
        NODE_GPU_WATTS,
        NODE_GPU_IDLE_JOULES,
        NODE_GPU_ACTIVE_JOULES,
        NODE_GPU_IDLE_WATTS,
        NODE_GPU_RESETS,
        NODE_GPU_INFO,
        NODE_GPU_SCOPE_WATTS,
        NODE_GPU_SCOPE_JOULES,
        NODE_GPU_INSTANCE_ACTIVE_JOULES,
        GPU_ATTRIBUTION_TICKS,
        UNATTRIBUTED_GPU_JOULES,
        *WORKLOAD_GPU_FAMILIES.values(),
    )
)


def reference_markdown() -> str:
    """docs/metrics.md, generated from this catalogue (`python -m exporter.metrics > docs/metrics.md`)."""
    lines = [
        "# Metric reference",
        "",
        "Generated from `exporter/metrics.py` by `python -m exporter.metrics > docs/metrics.md`; the test suite",
        "fails when this file and the code disagree. Families marked *conditional* appear only when their",
        "source is there (GPUs, `process_metrics`, `kubernetes_api`, a carbon intensity, a module or platform meter,",
        "`otlp_endpoint`).",
        "",
        "| metric | type | labels | conditional | help |",
        "|---|---|---|---|---|",
    ]
    for family in CATALOGUE:
        name = family.full_name + ("_info" if family.kind == "info" else "")
        kind = "gauge (info)" if family.kind == "info" else family.kind
        labels = ", ".join(f"`{label}`" for label in family.labels)
        conditional = "yes" if family.full_name in CONDITIONAL else ""
        lines.append(f"| `{name}` | {kind} | {labels} | {conditional} | {family.help.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
