"""`wattlens once --json` carries everything the exposition carries: every series of every wattlens family,
rendered from the same Snapshot, is found in the JSON document with the same value. Two families describe
the HTTP side, not the tick, and are the only ones left out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, REPO, CgroupFixture, ProcTree, RaplTree, make_config
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from exporter.engine import Engine
from exporter.exposition import EndpointStats, Renderer
from exporter.snapshot_json import snapshot_document
from exporter.workloads.pod_watch import PodMeta, PodWatch

# Not in the JSON: they describe serving HTTP (the render before this one, scrapes served, connections
# refused, the TLS certificate), which `once` does not do.
NOT_IN_JSON = {"wattlens_render_duration_seconds", "wattlens_scrapes_total", "wattlens_http_rejections_total",
               "wattlens_tls_certificate_expiry_timestamp_seconds"}
GPU_FAMILIES = {f.full_name for f in metrics.CATALOGUE if "gpu" in f.name}
MODULE_FAMILIES = {metrics.NODE_MODULE_JOULES.full_name, metrics.NODE_MODULE_WATTS.full_name}
SWITCHES = {metrics.METER_SWITCHES.full_name}  # after a runtime hand-over only (tests/test_meter_select.py)
# Samples only where HTTP is served: the certificate (with TLS), connections refused.
HTTP_ONLY = {metrics.TLS_CERT_EXPIRY.full_name, metrics.HTTP_REJECTIONS.full_name}
# A BMC's reading age: hwmon's ACPI meter is read in the tick itself.
BMC_ONLY = {metrics.NODE_PLATFORM_READING_AGE.full_name}
OTLP_ONLY = {f.full_name for f in metrics.CATALOGUE if f.name.startswith("otlp_")}
# With an intensity API only (tests/test_carbon.py compares it with the JSON).
API_ONLY = {metrics.GRID_CARBON_INTENSITY_AGE.full_name}

POD_UID = "0000000a-0000-4000-8000-00000000000a"
POD = f"kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice"
CONTAINER = f"{POD}/cri-containerd-{'c1' * 32}.scope"
DOCKER = f"system.slice/docker-{'d0' * 32}.scope"
SERVICE = "system.slice/nginx.service"
VM = "machine.slice/machine-qemu\\x2d1\\x2dubuntu22.scope"
USER = "user.slice/user-1000.slice"
JOB = "system.slice/slurmstepd.scope/job_42"


def series(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of every wattlens sample, parsed by prometheus-client's own parser."""
    return [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("wattlens_")]


def _one(entries: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [e for e in entries if all(e.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, entries)
    return found[0]


def _workload(doc: dict[str, Any], kind: str, labels: dict[str, str]) -> dict[str, Any]:
    return _one(doc["workloads"], kind=kind, labels=labels)


def _cpu_labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k not in ("node", "zone", "source", "gpu", "gpu_uuid")}


def _gpu(doc: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    gpu = _one(doc["gpus"], gpu=labels["gpu"], gpu_uuid=labels["gpu_uuid"])
    assert labels.get("gpu_model", gpu["gpu_model"]) == gpu["gpu_model"]
    return gpu


def _zone(doc: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    zone = _one(doc["zones"], **{k: labels[k] for k in ("zone", "socket", "die", "source")})
    assert labels.get("method", zone["method"]) == zone["method"]
    return zone


def _module(doc: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    zone = _one(doc["zones"], zone="module", socket=labels["socket"], source=labels["source"])
    assert labels.get("method", zone["method"]) == zone["method"]
    return zone


def _platform(doc: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    zone = _one(doc["zones"], zone="platform", source=labels["source"], device=labels["device"])
    assert labels.get("method", zone["method"]) == zone["method"]
    return zone


def _containment(doc: dict[str, Any], labels: dict[str, str]) -> float:
    place = _one(doc["containment"], zone=labels["zone"], source=labels["source"])
    assert (labels["role"], labels["parent"], labels["top_level"]) == (
        place["role"], place["parent"], str(place["top_level"]).lower())
    return 1.0


def _domain(doc: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    domain = _one(doc["domains"], zone=labels["zone"], source=labels["source"])
    assert labels.get("method", domain["idle_method"]) == domain["idle_method"]
    return domain


def _process(doc: dict[str, Any], labels: dict[str, str]) -> float:
    if labels["comm"] == "other" and labels["pid"] == "":
        return float(_one(doc["processes_other"], zone=labels["zone"], source=labels["source"])["joules"])
    process = _one(doc["processes"], pid=int(labels["pid"]), comm=labels["comm"],
                   container_id=labels["container_id"], unit=labels["unit"])
    return float(_one(process["cpu"], zone=labels["zone"], source=labels["source"])["joules"])


def _pod_labels(doc: dict[str, Any], labels: dict[str, str]) -> float:
    pod = _one(doc["kubernetes"]["pods"], uid=labels["uid"])
    assert {k: pod[k] for k in ("namespace", "pod", "owner_kind", "owner_name")} == {
        k: labels[k] for k in ("namespace", "pod", "owner_kind", "owner_name")}
    assert {f"label_{k}": v for k, v in pod["labels"].items()} == {k: v for k, v in labels.items()
                                                                     if k.startswith("label_")}
    return 1.0


def _info(section: dict[str, Any], labels: dict[str, str], **extra: Any) -> float:
    expected = {k: str(v) for k, v in {**section, **extra}.items()}
    assert {k: v for k, v in labels.items() if k != "node"} == expected
    return 1.0


def _gpu_info(doc: dict[str, Any], labels: dict[str, str]) -> float:
    gpu = _gpu(doc, labels)
    assert (labels["driver"], labels["mig"], labels["partition"]) == (gpu["driver"], str(gpu["mig"]).lower(),
                                                                 gpu["partition"])
    return 1.0


def _workload_cpu(kind: str) -> Callable[[dict[str, Any], dict[str, str]], float]:
    def value(doc: dict[str, Any], labels: dict[str, str]) -> float:
        cpu = _workload(doc, kind, _cpu_labels(labels))["cpu"]
        return float(_one(cpu, zone=labels["zone"], source=labels["source"])["joules"])
    return value


def _workload_gpu(kind: str) -> Callable[[dict[str, Any], dict[str, str]], float]:
    def value(doc: dict[str, Any], labels: dict[str, str]) -> float:
        gpu = _workload(doc, kind, _cpu_labels(labels))["gpu"]
        return float(_one(gpu, gpu=labels["gpu"], gpu_uuid=labels["gpu_uuid"])["joules"])
    return value


def _workload_carbon(kind: str, which: str) -> Callable[[dict[str, Any], dict[str, str]], float]:
    def value(doc: dict[str, Any], labels: dict[str, str]) -> float:
        if which == "operational":
            assert labels["kind"] == doc["carbon"]["kind"]
        names = {k: v for k, v in labels.items() if k not in ("node", "kind")}
        return float(_workload(doc, kind, names)[f"{which}_carbon_grams"])
    return value


def _intensity(doc: dict[str, Any], labels: dict[str, str]) -> float:
    assert (labels["source"], labels["kind"]) == (doc["carbon"]["source"], doc["carbon"]["kind"])
    return float(doc["carbon_intensity_grams_per_kwh"])


def _node_carbon(which: str) -> Callable[[dict[str, Any], dict[str, str]], float]:
    def value(doc: dict[str, Any], labels: dict[str, str]) -> float:
        if which == "operational":
            assert labels["kind"] == doc["carbon"]["kind"]
        return float(_one(doc["carbon"][which], domain=labels["domain"])[f"{labels['part']}_grams"])
    return value


def _pod_watts(doc: dict[str, Any], labels: dict[str, str]) -> float:
    cpu = _workload(doc, "pod", _cpu_labels(labels))["cpu"]
    return float(_one(cpu, zone=labels["zone"], source=labels["source"])["watts"])


FOLD_FAMILIES = {"wattlens_workloads_folded", "wattlens_workload_folds_total", "wattlens_workload_unfolds_total"}
# Where each sample of the exposition is in the document: sample name → (document, labels) → value.
LOOKUP: dict[str, Callable[[dict[str, Any], dict[str, str]], float]] = {
    "wattlens_node_cpu_joules_total": lambda d, lb: _zone(d, lb)["joules"],
    "wattlens_node_cpu_watts": lambda d, lb: _zone(d, lb)["watts"],
    "wattlens_node_cpu_energy_wraps_total": lambda d, lb: _zone(d, lb)["wraps"],
    "wattlens_node_cpu_energy_resets_total": lambda d, lb: _zone(d, lb)["resets"],
    "wattlens_node_module_joules_total": lambda d, lb: _module(d, lb)["joules"],
    "wattlens_node_module_watts": lambda d, lb: _module(d, lb)["watts"],
    "wattlens_node_platform_joules_total": lambda d, lb: _platform(d, lb)["joules"],
    "wattlens_node_platform_watts": lambda d, lb: _platform(d, lb)["watts"],
    "wattlens_node_platform_reading_age_seconds": lambda d, lb: _platform(d, lb)["reading_age_seconds"],
    "wattlens_node_rest_joules_total": lambda d, lb: d["node_energy"]["rest_of_node_joules"],
    "wattlens_node_joules_total": lambda d, lb: d["node_energy"]["joules"],
    "wattlens_node_zone_info": _containment,
    "wattlens_meter_switches_total": lambda d, lb: d["meter_switches"],
    "wattlens_node_cpu_idle_joules_total": lambda d, lb: _domain(d, lb)["idle_joules"],
    "wattlens_node_cpu_active_joules_total": lambda d, lb: _domain(d, lb)["active_joules"],
    "wattlens_node_cpu_idle_baseline_watts": lambda d, lb: _domain(d, lb)["idle_watts"],
    **{fam.full_name: _workload_cpu(kind) for kind, fam in metrics.WORKLOAD_FAMILIES.items()},
    **{fam.full_name: _workload_gpu(kind) for kind, fam in metrics.WORKLOAD_GPU_FAMILIES.items()},
    "wattlens_pod_cpu_watts": _pod_watts,
    "wattlens_unattributed_cpu_joules_total": lambda d, lb: _one(d["unattributed"], zone=lb["zone"],
                                                                  source=lb["source"])["joules"],
    "wattlens_process_cpu_joules_total": _process,
    "wattlens_workloads": lambda d, lb: d["workload_counts"][lb["kind"]],
    "wattlens_series_budget": lambda d, lb: d["series_budget"]["max_series"],
    "wattlens_workload_series": lambda d, lb: d["series_budget"]["series"],
    "wattlens_workloads_folded": lambda d, lb: d["series_budget"]["folded"][lb["kind"]],
    "wattlens_workload_folds_total": lambda d, lb: d["series_budget"]["folds"][lb["kind"]],
    "wattlens_workload_unfolds_total": lambda d, lb: d["series_budget"]["unfolds"][lb["kind"]],
    "wattlens_workload_series_dropped_total": lambda d, lb: d["series_budget"]["dropped"],
    "wattlens_cgroup_read_errors_total": lambda d, lb: d["cgroups"]["read_errors"],
    "wattlens_cgroup_walks_truncated_total": lambda d, lb: d["cgroups"]["walks_truncated"],
    "wattlens_cgroup_full_walks_total": lambda d, lb: d["cgroups"]["full_walks"],
    "wattlens_fd_budget": lambda d, lb: d["fds"]["budget"],
    "wattlens_fds_held": lambda d, lb: d["fds"]["held"],
    "wattlens_fd_degraded": lambda d, lb: float(d["fds"]["degraded"][lb["reader"]]),
    "wattlens_node_gpu_joules_total": lambda d, lb: _one([_gpu(d, lb)], method=lb["method"])["joules"],
    "wattlens_node_gpu_scope_watts": lambda d, lb: _one(_gpu(d, lb)["scopes"], scope=lb["scope"])["watts"],
    "wattlens_node_gpu_scope_joules_total": lambda d, lb: _one(_gpu(d, lb)["scopes"], scope=lb["scope"])["joules"],
    "wattlens_node_gpu_instance_active_joules_total": lambda d, lb: _one(
        _gpu(d, lb)["instances"], gpu_instance=lb["gpu_instance"], mig_profile=lb["mig_profile"],
        mig_uuid=lb["mig_uuid"])["active_joules"],
    "wattlens_node_gpu_watts": lambda d, lb: _gpu(d, lb)["watts"],
    "wattlens_node_gpu_idle_joules_total": lambda d, lb: _gpu(d, lb)["idle_joules"],
    "wattlens_node_gpu_active_joules_total": lambda d, lb: _gpu(d, lb)["active_joules"],
    "wattlens_node_gpu_idle_baseline_watts": lambda d, lb: _one([_gpu(d, lb)], idle_method=lb["method"])[
        "idle_watts"],
    "wattlens_node_gpu_energy_resets_total": lambda d, lb: _gpu(d, lb)["resets"],
    "wattlens_node_gpu_info": _gpu_info,
    "wattlens_gpu_attribution_ticks_total": lambda d, lb: _gpu(d, lb)["attribution_ticks"][lb["split"]],
    "wattlens_unattributed_gpu_joules_total": lambda d, lb: _gpu(d, lb)["unattributed_joules"],
    "wattlens_pod_labels": _pod_labels,
    "wattlens_pod_watch_requests_total": lambda d, lb: d["kubernetes"]["requests"][lb["verb"]],
    "wattlens_pod_watch_errors_total": lambda d, lb: d["kubernetes"]["errors"],
    "wattlens_grid_carbon_intensity_grams_per_kwh": _intensity,
    "wattlens_grid_carbon_intensity_age_seconds": lambda d, lb: _one([d["carbon"]], source=lb["source"])[
        "age_seconds"],
    "wattlens_node_operational_carbon_grams_total": _node_carbon("operational"),
    "wattlens_node_embodied_carbon_grams_total": _node_carbon("embodied"),
    **{fam.full_name: _workload_carbon(kind, "operational")
       for kind, fam in metrics.WORKLOAD_OPERATIONAL_CARBON.items()},
    **{fam.full_name: _workload_carbon(kind, "embodied") for kind, fam in metrics.WORKLOAD_EMBODIED_CARBON.items()},
    "wattlens_source_up": lambda d, lb: float(_one(d["sources"], source=lb["source"], device=lb["device"])["up"]),
    "wattlens_source_errors_total": lambda d, lb: _one(d["source_errors"], source=lb["source"],
                                                       device=lb["device"])["count"],
    "wattlens_build_info": lambda d, lb: _info(d["build"], lb),
    "wattlens_node_info": lambda d, lb: _info(d["host"], lb, meter=d["meter"]),
    "wattlens_ticks_total": lambda d, lb: d["ticks"]["total"],
    "wattlens_ticks_skipped_total": lambda d, lb: d["ticks"]["skipped"],
    "wattlens_tick_duration_seconds": lambda d, lb: d["ticks"]["duration_seconds"],
    "wattlens_tick_cpu_seconds_total": lambda d, lb: d["ticks"]["cpu_seconds_total"],
    "wattlens_last_tick_timestamp_seconds": lambda d, lb: d["ticks"]["last_timestamp_seconds"],
}


def compare(text: str, doc: dict[str, Any]) -> set[str]:
    """Every wattlens sample of `text` has its value in `doc`; returns the families seen."""
    doc = json.loads(json.dumps(doc))  # what a reader of the JSON gets
    seen = set()
    for name, labels, value in series(text):
        family = next(f.full_name for f in metrics.CATALOGUE if name in (f.full_name, f.full_name + "_info"))
        seen.add(family)
        if family in NOT_IN_JSON:
            continue
        assert labels["node"] == doc["node"], name
        assert name in LOOKUP, f"{name} has no place in the JSON document"
        assert LOOKUP[name](doc, labels) == pytest.approx(value, rel=1e-12, abs=0), (name, labels)
    return seen


def _fake_process(proc: ProcTree, pid: int, comm: str, cgroup: str, cpu_ticks: int) -> None:
    directory = proc.root / str(pid)
    directory.mkdir(exist_ok=True)
    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(cpu_ticks), "0", "0", "0", "20", "0", "1",
              "0", "100", "0"]
    (directory / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (directory / "cgroup").write_text(f"0::/{cgroup}\n")


def test_the_json_carries_every_series_of_the_exposition(tmp_path: Path) -> None:
    rapl = RaplTree.copy("intel-2socket-server", tmp_path)
    # and an ACPI power meter: the platform, the rest of the node
    shutil.copytree(FIXTURES / "hwmon-acpi-power-meter-info", rapl.root, symlinks=True, dirs_exist_ok=True)
    proc = ProcTree(tmp_path / "proc")
    cgroups = CgroupFixture(tmp_path / "cgroup")
    for path in (CONTAINER, DOCKER, SERVICE, VM, USER, JOB):
        cgroups.add(path)
    (tmp_path / "carbon").write_text("250\n")  # then unreadable: the last value stays, an error is counted
    processes = {301: ("postgres", CONTAINER), 302: ("nginx", SERVICE), 303: ("kworker", "")}
    config = make_config(sys_path=rapl.root, proc_path=proc.root, cgroup_root=cgroups.root, meters="rapl,hwmon",
                         kubelet_log_path=tmp_path / "nolog", process_metrics="true", process_top_n="2",
                         carbon_intensity_file=tmp_path / "carbon", pod_labels="app,team", idle_watts="package=1",
                         node_name="j1", gpus="false")
    engine = Engine.start(config)
    engine.pod_watch = PodWatch(node_name="j1", pods={POD_UID: PodMeta(
        "shop", "db-0", POD_UID, (("app", "db"),), "StatefulSet", "db", (("c1" * 32, "postgres"),))},
        lists=1, watches=3, errors=2, synced=True, up=True)
    for pid, (comm, cgroup) in processes.items():
        _fake_process(proc, pid, comm, cgroup, 0)
    engine.tick(0.0)
    for i, path in enumerate((CONTAINER, DOCKER, SERVICE, VM, USER, JOB)):
        cgroups.burn(path, 100_000 * (i + 1))
    for pid, (comm, cgroup) in processes.items():
        _fake_process(proc, pid, comm, cgroup, 10 * pid - 3000)
    proc.advance_usec(2_000_000, 8_000_000)
    (tmp_path / "carbon").write_text("a lot\n")
    for zone, microjoules in (("intel-rapl:0", 40_000_000), ("intel-rapl:0:0", 9_000_000),
                              ("intel-rapl:1", 30_000_000), ("intel-rapl:1:0", 7_000_000)):
        rapl.advance(zone, microjoules)
    snapshot = engine.tick(5.0)
    engine.close()
    text = Renderer().render(snapshot, EndpointStats(scrapes={("text", "identity"): 4})).text.decode()
    seen = compare(text, snapshot_document(snapshot))
    kinds = {w["kind"] for w in snapshot_document(snapshot)["workloads"]}
    assert kinds == {"pod", "container", "service", "vm", "user", "job"}
    assert {lb["user_id"] for name, lb, _ in series(text) if name == "wattlens_user_cpu_joules_total"} == {"1000"}
    # Nor the series budget's per-kind families before anything folded (tests/test_budget.py has them), nor the
    # OTLP push's (it runs in the daemon only: tests/test_otlp.py).
    unexported = GPU_FAMILIES | MODULE_FAMILIES | HTTP_ONLY | FOLD_FAMILIES | OTLP_ONLY | API_ONLY
    assert seen == {f.full_name for f in metrics.CATALOGUE} - unexported - BMC_ONLY - SWITCHES  # next tests: GPUs
    assert snapshot.carbon_intensity == 250.0 and snapshot.errors


def test_the_json_carries_every_gpu_series(tmp_path: Path) -> None:
    from nvml_stub.stub import build_stub
    from test_gpu import CGROUPS, GpuNode, two_gpus

    node = GpuNode(tmp_path, build_stub(tmp_path / "nvml"))
    cgroups = CgroupFixture(Path(node.flags["cgroup_root"]))  # the node's tree, plus a user and a VM
    for pid, path in ((108, USER), (107, VM)):
        cgroups.add(path)
        (node.proc.root / str(pid)).mkdir()
        (node.proc.root / str(pid) / "cgroup").write_text(f"0::/{path}\n")
    state = two_gpus().set_device(0, memory_power_mw=48_700)  # a power scope
    state.set_device(1, mig=True, gpm=True).gpu_instance(1, 7, "1g.10gb").gpm(1, ts=10**9, gi=7)  # MIG by GPM
    for pid in (*CGROUPS, 108, 107):
        state.process(0, pid, mem=1 << 30)
    node.step(0.0, state)
    state.gpm(1, ts=6 * 10**9, gr=10**9, gi=7)
    state.set_device(0, energy_mj=11_000_000).set_device(1, energy_mj=20_500_000)
    for pid, sm in ((101, 30), (102, 10), (103, 20), (104, 15), (105, 10), (106, 10), (107, 5), (108, 5)):
        state.sample(0, pid, ts=2_000_000, sm=sm)
    node.step(5.0, state)
    tick = node.run(render=True, document=True, gpu_idle_watts="50")[-1]
    seen = compare(tick["text"], tick["document"])
    assert seen >= GPU_FAMILIES
    kinds = {w["kind"] for w in tick["document"]["workloads"] if w["gpu"]}
    assert kinds == {"pod", "container", "service", "user", "vm", "job"}


def test_once_json_on_the_command_line(tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-2socket-server", tmp_path)
    cgroups = CgroupFixture(tmp_path / "cgroup")
    cgroups.add(SERVICE)
    result = subprocess.run([sys.executable, "-m", "exporter", "once", "--json", "--sys", str(tree.root),
                             "--cgroup-root", str(cgroups.root), "--wait", "0.2", "--node-name", "j"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["schema"], doc["node"], doc["meter"], doc["ready"]) == (1, "j", "rapl", True)
    assert {z["device"] for z in doc["zones"]} == {"intel-rapl:0", "intel-rapl:0:0", "intel-rapl:1",
                                                   "intel-rapl:1:0"}
    assert doc["ticks"]["total"] == 2
    assert {"workloads", "gpus", "processes", "sources", "kubernetes", "carbon_intensity_grams_per_kwh"} <= set(doc)


def test_the_json_carries_the_superchip_module(tmp_path: Path) -> None:
    tree = tmp_path / "gh200"
    shutil.copytree(FIXTURES / "hwmon-gh200", tree, symlinks=True)
    proc = ProcTree(tmp_path / "proc")
    engine = Engine.start(make_config(sys_path=tree, proc_path=proc.root, workloads="false", gpus="false",
                                      node_name="gh"))
    engine.tick(0.0)
    proc.advance(10, 90)
    snapshot = engine.tick(5.0)
    engine.close()
    text = Renderer().render(snapshot).text.decode()
    seen = compare(text, snapshot_document(snapshot))
    assert seen >= MODULE_FAMILIES
    assert snapshot_document(snapshot)["node_energy"]["joules"] == 612.0 * 5
