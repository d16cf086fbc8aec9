"""wattlens through a real Prometheus (Debian's 2.42) with the shipped rules and dashboard, scraped the way the
Prometheus Operator scrapes the Helm chart's ServiceMonitor.

One bounded run, everything on 127.0.0.1: the real daemon reads a near-wrap RAPL fixture that a driver thread
advances across max_energy_range_uj, and real cgroups (laid out as a node's: two systemd services, a Kubernetes
pod the API names, a pod nobody names, a standalone Docker container and a rootless Podman container of a user)
holding real CPU-burning processes; one service ends mid-run. The pod's process is also the
only user of a GPU of the stub libnvidia-ml (tests/nvml_stub), its name and owner come from a fake API server
(kubernetes_api), a tiny exporter serves its vLLM token counters (namespace/pod are scrape-target labels, as a
PodMonitor sets them), a fake kube-state-metrics serves kube_pod_info/kube_pod_container_info for the pod, and
the grid carbon intensity is configured. wattlens' scrape job is the one the Operator generates for the chart's
ServiceMonitor (tests/operator_scrape.py), its target carrying the meta labels Kubernetes discovery gives an
exporter pod. Prometheus scrapes every second, evaluates deploy/prometheus/*.yaml every second, and the test
checks through the HTTP API:

- no wattlens series carries a label of the exporter pod: each one's labels are exactly what wattlens exported
  plus job="wattlens" and instance=<node>;
- kube-state-metrics joins work on uid, on (namespace, pod) and on (uid, container);
- through the recording rules, idle + unattributed + workloads = node power within 0.1 % (and the old
  pod="" selector would not have passed);

- increase() of the node's package joules = idle + unattributed + Σ top-level workloads, over one range;
- resets() is 0 for every joule counter across the counter wrap (which is checked to have happened);
- the ended service's series are still exported at the end (workload_ttl 60 s);
- every recording rule returns data, every rule evaluates without error and no alert is active;
- every panel query of deploy/grafana/wattlens-dashboard.json returns data, for one node and namespace and
  for "All".

The pod's cgroup path as the daemon must see it (relative to the cgroup root it is given) differs from the
path in the real /proc/<pid>/cgroup (which starts at the machine's cgroup2 mount), so the daemon gets a
/proc of its own: stat and cpuinfo link to the real ones, and <pid>/cgroup of the GPU process says what a
host /proc would say on a node whose cgroup root is the test's directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_apiserver import FakeApiServer, pod
from helpers import REPO, Daemon, RaplTree, cgroup2_mount, require, tool
from nvml_stub.stub import StubState, build_stub, stub_env
from operator_scrape import scrape_config, target_group

DASHBOARD = REPO / "deploy" / "grafana" / "wattlens-dashboard.json"
DOCS = [REPO / "docs" / "promql.md", REPO / "docs" / "llm-energy.md"]
RULE_FILES = [REPO / "deploy" / "prometheus" / "wattlens-rules.yaml",
              REPO / "deploy" / "prometheus" / "wattlens-alerts.yaml"]

NODE = "e2e-node"
NAMESPACE, POD = "llm", "vllm-0"
POD_UID = "0000000a-0000-4000-8000-00000000000a"
CONTAINER_ID = "ab" * 32
POD_CGROUP = f"kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER_ID}.scope"
SERVICES = {"busy.service": 0.3, "ended.service": 0.2}  # duty cycles of their burners
POD_DUTY = 0.2
# Containers of every kind, 0.1 of a CPU each: one of a pod whose name nobody gives wattlens (no log directory,
# not in the API), a standalone Docker container, and a rootless Podman container inside a user's slice.
UNNAMED_UID = "0000000b-0000-4000-8000-00000000000b"
CONTAINERS = {
    "unnamed-pod": f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UNNAMED_UID.replace('-', '_')}"
                   f".slice/cri-containerd-{'cd' * 32}.scope",
    "standalone": f"system.slice/docker-{'ef' * 32}.scope",
    "rootless": f"user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{'12' * 32}.scope",
}
# The exporter pod, as Kubernetes discovery would describe it: none of these may end up on a wattlens series.
EXPORTER_NAMESPACE, EXPORTER_POD = "energy-e2e", "wattlens-x7k2p"
CHART = REPO / "deploy" / "helm" / "wattlens"
GPU_WATTS, GPU_IDLE_WATTS = 300.0, 100.0  # the pod, the GPU's only user, gets the 200 W above idle
GENERATION_TOKENS_PER_S, PROMPT_TOKENS_PER_S = 50.0, 200.0  # → 200 / 50 = 4 J per generated token
CARBON = 420.0
TOLERANCE_J = 1e-6  # one µJ: wattlens' unit (see the invariant check)

BURNER = """
import sys, time
duty = float(sys.argv[1])
end = time.monotonic() + 300  # bounded even if the test is killed before it can stop it
while time.monotonic() < end:
    start = time.monotonic()
    while time.monotonic() - start < 0.1 * duty:
        pass
    time.sleep(0.1 * (1 - duty))
"""


# ---- the dashboard's queries ---------------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels", []))  # a collapsed row keeps its panels inside
        else:
            yield panel


def dashboard_queries(node: str, namespace: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, with the dashboard's template variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel["targets"]:
            expr = target["expr"].replace("${node}", node).replace("$node", node)
            expr = expr.replace("${namespace}", namespace).replace("$namespace", namespace)
            queries.append((panel["title"], expr))
    return queries


def doc_queries() -> list[tuple[str, str]]:
    """(doc, PromQL) of every query in the docs' ```promql blocks (queries separated by blank lines)."""
    queries = []
    for doc in DOCS:
        for block in re.findall(r"^```promql\n(.*?)^```", doc.read_text(), flags=re.MULTILINE | re.DOTALL):
            queries += [(doc.name, query) for query in re.split(r"\n\s*\n", block) if query.strip()]
    return queries


def _record_names() -> set[str]:
    document = yaml.safe_load(RULE_FILES[0].read_text())
    return {rule["record"] for group in document["groups"] for rule in group["rules"]}


def test_the_docs_have_queries_to_check() -> None:
    queries = doc_queries()
    assert len([q for doc, q in queries if doc == "promql.md"]) >= 30
    assert len([q for doc, q in queries if doc == "llm-energy.md"]) >= 5


def test_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("node", "namespace"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"]["uid"] == "${datasource}"
    panels = list(_panels(dashboard["panels"]))
    rows = [p for p in dashboard["panels"] if p.get("type") == "row"]
    ids = [p["id"] for p in panels + rows]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " ".join(p["title"] for p in panels).lower()
    for subject in ("zone and source", "namespaces", "pods", "services", "gpu power per pod", "carbon", "token"):
        assert subject in titles, subject
    records = _record_names()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            # Recording rules the panel reads must exist in the shipped rule file.
            used = set(re.findall(r"(?<![:\w])[a-z_]+:[a-z_]+:[a-z0-9_]+(?![:\w])", target["expr"]))
            assert used <= records, (panel["title"], used - records)
            assert "$__" not in target["expr"], "keep panel queries free of Grafana-only macros"


# ---- the end-to-end run --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """/usr/bin/prometheus on loopback with a temporary TSDB; its HTTP API."""

    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]]) -> None:
        binary = shutil.which("prometheus")
        assert binary is not None
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in RULE_FILES],
            "scrape_configs": scrape_configs,
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        checked = subprocess.run([tool("promtool", "apt-get install prometheus"), "check", "config",
                                  str(workdir / "prometheus.yml")], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        log = workdir / "prometheus.log"
        for _attempt in range(3):  # the free port can be taken between probing and binding
            self.port = _free_port()
            with open(log, "ab") as output:
                # timeout(1) bounds its life even if the test is killed; it passes our SIGTERM on to it.
                self.process = subprocess.Popen(
                    ["timeout", "--kill-after=10", "300", binary, f"--config.file={workdir / 'prometheus.yml'}",
                     f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                     "--log.level=warn"],
                    stdout=output, stderr=output, cwd=workdir)
            if self._ready(timeout=30):
                return
            self.stop()
        raise AssertionError("prometheus did not start:\n" + log.read_text(errors="replace")[-3000:])

    def _ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:  # 400/422: a bad query; say which and why
            raise AssertionError(f"{params}: {exc.code} {exc.read().decode(errors='replace')}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return list(data["result"])

    def value(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def values(self, expr: str, at: float | None = None) -> dict[str, float]:
        """{'label=value,...': value} (without __name__) for a query that returns several series."""
        return {",".join(f"{k}={v}" for k, v in sorted(row["metric"].items()) if k != "__name__"):
                float(row["value"][1]) for row in self.query(expr, at)}

    def scrape_time(self) -> float:
        """Timestamp (s, ms precision) of the latest scrape of wattlens Prometheus has stored."""
        return self.value('timestamp(wattlens_ticks_total{job="wattlens"})')

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class Hardware(threading.Thread):
    """Drives the fixture's RAPL counters (package, dram) and the stub GPU's energy counter in real time.

    The package counter starts 400 J below max_energy_range_uj and runs at 20 W until wrap_in() is called,
    then at whatever power makes it pass the maximum (and restart from 0, as RAPL does) that many seconds
    later."""

    def __init__(self, rapl: RaplTree, state: StubState, state_path: Path, gpu_pid: int) -> None:
        super().__init__(daemon=True)
        self.rapl, self.state, self.state_path, self.gpu_pid = rapl, state, state_path, gpu_pid
        self.package_watts = 20.0
        self.max_range = rapl.max_range("intel-rapl:0")
        rapl.set("intel-rapl:0", self.max_range - 400_000_000)
        self.stop = threading.Event()
        self.gpu_mj = 5_000_000
        self._lock = threading.Lock()

    def wrap_in(self, seconds: float) -> None:
        with self._lock:
            self.package_watts = (self.max_range - self.rapl.energy("intel-rapl:0")) / 1e6 / seconds

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop.wait(0.05):
            now = time.monotonic()
            dt, last = now - last, now
            with self._lock:
                package = self.rapl.energy("intel-rapl:0") + round(self.package_watts * dt * 1e6)
                self.rapl.set("intel-rapl:0", package % self.max_range)
            self.rapl.advance("intel-rapl:0:0", round(5.0 * dt * 1e6))  # dram: 5 W
            self.gpu_mj += round(GPU_WATTS * dt * 1e3)
            self.state.set_device(0, energy_mj=self.gpu_mj).clear_samples()
            self.state.sample(0, self.gpu_pid, ts=time.time_ns() // 1000, sm=80).write(self.state_path)


class TextExporter:
    """A /metrics endpoint serving what `body()` returns (a fake kube-state-metrics, vLLM)."""

    def __init__(self, body: Any) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                data = body().encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # Prometheus gave up on this scrape (its timeout) or is stopping
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def kube_state_metrics() -> TextExporter:
    """What kube-state-metrics says about the pod: kube_pod_info and kube_pod_container_info (label names as in
    its docs/metrics/workload/pod-metrics.md), joined with wattlens' series by the dashboards of users."""
    text = (
        "# HELP kube_pod_info Information about pod.\n# TYPE kube_pod_info gauge\n"
        f'kube_pod_info{{namespace="{NAMESPACE}",pod="{POD}",uid="{POD_UID}",host_ip="10.0.0.9",pod_ip="10.1.0.5",'
        f'node="{NODE}",created_by_kind="StatefulSet",created_by_name="vllm",priority_class="",'
        'host_network="false"} 1\n'
        "# HELP kube_pod_container_info Information about a container in a pod.\n"
        "# TYPE kube_pod_container_info gauge\n"
        f'kube_pod_container_info{{namespace="{NAMESPACE}",pod="{POD}",uid="{POD_UID}",container="vllm",'
        f'image="vllm/vllm-openai:v0.9.0",image_id="",container_id="containerd://{CONTAINER_ID}"}} 1\n'
    )
    return TextExporter(lambda: text)


def vllm_exporter() -> TextExporter:
    """vLLM's token counters at constant rates since start (what one vLLM pod's /metrics says)."""
    start = time.monotonic()

    def body() -> str:
        elapsed = time.monotonic() - start
        labels = 'engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"'
        return (
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{{{labels}}} {int(GENERATION_TOKENS_PER_S * elapsed)}\n"
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{{{labels}}} {int(PROMPT_TOKENS_PER_S * elapsed)}\n"
        )

    return TextExporter(body)


def chart_objects() -> dict[str, dict[str, Any]]:
    """The Helm chart's ServiceMonitor, Service and DaemonSet as a kube-prometheus-stack user installs them
    (release label set), scraped every second for the test."""
    helm = tool("helm", "bash .ci/tools.sh (helm from npm)")
    out = subprocess.run([helm, "template", "wattlens", str(CHART), "--namespace", EXPORTER_NAMESPACE,
                          "--set", "kubePrometheusStack.release=kube-prometheus-stack",
                          "--set", "serviceMonitor.interval=1s,serviceMonitor.scrapeTimeout=1s"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {d["kind"]: d for d in yaml.safe_load_all(out.stdout) if d}


@dataclass
class Node:
    root: Path  # the cgroup root the daemon walks
    processes: dict[str, subprocess.Popen[bytes]]


def _start_in(cgroup: Path, duty: float) -> subprocess.Popen[bytes]:
    procs = cgroup / "cgroup.procs"

    def enter() -> None:  # in the child before exec: in its cgroup from its first instruction
        procs.write_text(str(os.getpid()))

    return subprocess.Popen([sys.executable, "-c", BURNER, str(duty)], preexec_fn=enter)  # noqa: PLW1509


def _rmdir(directory: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            directory.rmdir()
            return
        except OSError:  # EBUSY until the killed task is gone from the cgroup
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def node() -> Iterator[Node]:
    require(os.geteuid() == 0, "creating cgroups needs root (CI runs as root)")
    tool("prometheus", "apt-get install -y --no-install-recommends prometheus")
    root = cgroup2_mount() / f"wattlens-e2e-{os.getpid()}"
    cgroups = {unit: root / "system.slice" / unit for unit in SERVICES}
    cgroups["pod"] = root / POD_CGROUP
    cgroups.update({name: root / path for name, path in CONTAINERS.items()})
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for path in cgroups.values():
            path.mkdir(parents=True)
        for unit, duty in SERVICES.items():
            processes[unit] = _start_in(cgroups[unit], duty)
        processes["pod"] = _start_in(cgroups["pod"], POD_DUTY)
        for name in CONTAINERS:
            processes[name] = _start_in(cgroups[name], 0.1)
        yield Node(root, processes)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        if root.exists():
            for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir(directory)
            _rmdir(root)


def _wait_for(condition: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _total(prom: Prometheus, expr: str, at: float) -> float:
    """Sum of a query's values; 0 when it returns nothing (no workloads of that kind)."""
    return sum(float(row["value"][1]) for row in prom.query(expr, at))


@pytest.mark.slow
def test_prometheus_end_to_end(node: Node, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    started = time.monotonic()
    rapl = RaplTree.copy("near-wrap", tmp_path)
    # The server also has an ACPI power meter (hwmon): the platform, the rest of the node and the node's total.
    shutil.copytree(REPO / "fixtures" / "sysfs" / "hwmon-acpi-power-meter-info", rapl.root, symlinks=True,
                    dirs_exist_ok=True)
    (rapl.root / "expected.yaml").unlink()
    gpu_pid = node.processes["pod"].pid
    proc = tmp_path / "proc"
    (proc / str(gpu_pid)).mkdir(parents=True)
    (proc / "stat").symlink_to("/proc/stat")
    (proc / "cpuinfo").symlink_to("/proc/cpuinfo")
    (proc / str(gpu_pid) / "cgroup").write_text(f"0::/{POD_CGROUP}\n")
    state_path = tmp_path / "nvml.state"
    state = StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=5_000_000).process(0, gpu_pid, mem=1 << 30)
    state.write(state_path)
    nvml_env = stub_env(build_stub(tmp_path_factory.mktemp("nvml")), state_path, base={})
    token = tmp_path / "token"
    token.write_text("e2e-token")

    hardware = Hardware(rapl, state, state_path, gpu_pid)
    api = FakeApiServer(token="e2e-token", lifetime_s=150)
    api.put(pod(POD, NODE, POD_UID, namespace=NAMESPACE, labels={"app": "vllm"}, owner=("StatefulSet", "vllm"),
                containers={"vllm": CONTAINER_ID}))
    vllm, ksm = vllm_exporter(), kube_state_metrics()
    objects = chart_objects()
    prom: Prometheus | None = None
    hardware.start()
    try:
        with Daemon("--sys", str(rapl.root), "--proc", str(proc), "--cgroup-root", str(node.root),
                    "--interval", "1", "--node-name", NODE,
                    env={"WATTLENS_WORKLOAD_TTL": "60", "WATTLENS_CARBON_INTENSITY": str(CARBON),
                         "WATTLENS_GPU_IDLE_WATTS": str(GPU_IDLE_WATTS),
                         "WATTLENS_KUBELET_LOG_PATH": str(tmp_path / "no-kubelet-logs"),
                         "WATTLENS_KUBERNETES_API": "true", "WATTLENS_KUBERNETES_API_SERVER": api.url,
                         "WATTLENS_KUBERNETES_TOKEN_FILE": str(token), "WATTLENS_POD_LABELS": "app",
                         **{k: nvml_env[k] for k in ("LD_LIBRARY_PATH", "STUB_NVML_STATE")}}) as daemon:
            daemon.wait_ready()
            # Prometheus starts once wattlens exports every workload under its final labels (a pod is first
            # seen unnamed if its tick comes before the pod watch's list), so every wattlens series exists
            # from the first scrape on and rate() extrapolates them all alike: the rules' sums can be exact.
            expected = [
                ("wattlens_pod_cpu_joules_total", {"pod": POD, "uid": POD_UID}),
                ("wattlens_pod_gpu_joules_total", {"pod": POD, "uid": POD_UID}),
                ("wattlens_pod_labels", {"owner_name": "vllm"}),
                ("wattlens_pod_cpu_joules_total", {"pod": "", "uid": UNNAMED_UID}),
                ("wattlens_container_cpu_joules_total", {"pod": "", "uid": UNNAMED_UID, "parent_kind": "pod"}),
                ("wattlens_container_cpu_joules_total", {"runtime": "docker", "parent_kind": ""}),
                ("wattlens_container_cpu_joules_total", {"runtime": "podman", "parent_kind": "user"}),
                ("wattlens_service_cpu_joules_total", {"unit": "ended.service"}),
            ]

            def missing() -> list[tuple[str, dict[str, str]]]:
                exported = [(name, dict(labels)) for name, labels in _label_sets(daemon.metrics(), keep_empty=True)]
                return [(name, want) for name, want in expected
                        if not any(n == name and want.items() <= have.items() for n, have in exported)]
            try:
                _wait_for(lambda: not missing(), "wattlens to export every workload, named")
            except AssertionError:
                raise AssertionError(f"wattlens does not export {missing()}") from None
            # A few more seconds of energy on every counter before the first scrape: rate() extrapolates a
            # counter whose first sample is under 1.1 scrape intervals of its rate from zero differently
            # (Prometheus' extrapolatedRate), which would break the rules' sums by a fraction of a per cent.
            daemon.wait_ticks(3)
            wattlens_job = scrape_config(objects["ServiceMonitor"])
            wattlens_job["static_configs"] = [target_group(f"127.0.0.1:{daemon.port}", objects["Service"],
                                                           objects["DaemonSet"], EXPORTER_POD, NODE)]
            prom = Prometheus(tmp_path, [
                wattlens_job,
                # kube-prometheus-stack scrapes kube-state-metrics with honorLabels too.
                {"job_name": "kube-state-metrics", "honor_labels": True,
                 "static_configs": [{"targets": [ksm.address]}]},
                {"job_name": "vllm", "static_configs": [{"targets": [vllm.address],
                                                         "labels": {"namespace": NAMESPACE, "pod": POD}}]},
            ])
            _wait_for(lambda: prom.query('wattlens_ticks_total{job="wattlens"}') and prom.query("kube_pod_info")
                      and prom.query(f'vllm:generation_tokens_total{{pod="{POD}"}}'), "the first scrapes")
            metrics_at_start = daemon.metrics()
            time.sleep(1.5)
            t_first = prom.scrape_time()
            hardware.wrap_in(6.0)

            # The service ends mid-run: its process exits and its cgroup is removed.
            time.sleep(5)
            node.processes["ended.service"].kill()
            node.processes["ended.service"].wait(timeout=10)
            _rmdir(node.root / "system.slice" / "ended.service")
            time.sleep(3)  # two ticks and scrapes after the end: nothing more can reach its series
            t_ended = prom.scrape_time()
            time.sleep(max(0.0, t_first + 18 - time.time()))
            t_last = prom.scrape_time()
            metrics_at_end = daemon.metrics()
            time.sleep(2)  # let the rules evaluate on the last samples
            check_run(prom, t_first, t_ended, t_last, metrics_at_end)
            check_labels_and_joins(prom, {**metrics_at_start, **metrics_at_end})
            check_rules_conserve(prom)
            check_domains(prom)
            code, log = daemon.stop()
            assert code == 0
            assert not re.search(r" (WARNING|ERROR) ", log), log
    finally:
        hardware.stop.set()
        hardware.join(timeout=10)
        if prom is not None:
            prom.stop()
        vllm.close()
        ksm.close()
        api.close()
    print(f"\nprometheus e2e: {time.monotonic() - started:.1f} s in all, measured range {t_last - t_first:.3f} s")


def check_run(prom: Prometheus, t_first: float, t_ended: float, t_last: float, metrics_at_end: dict[str, float],
              ) -> None:
    # One range for every query: it starts and ends exactly on wattlens' scrape timestamps (ms), which all its
    # series share, so increase() has nothing to extrapolate and is last − first (Prometheus 2.x range
    # selectors include the sample at the start). Every scrape is one rendered exposition of one tick, in
    # which node = idle + unattributed + Σ top-level workloads holds exactly in integer µJ; exported values
    # are µJ / 1e6, so the only difference left is float64 rounding of a few sums of ~1e3 J (~1e-12 J).
    # The tolerance is one µJ, wattlens' own unit; a missing workload or a tick torn between series would
    # be off by joules.
    window = f"[{round((t_last - t_first) * 1000)}ms]"
    package = f'sum(increase(wattlens_node_cpu_joules_total{{zone="package"}}{window}))'
    node_j = prom.value(package, t_last)
    raw = (prom.value('sum(wattlens_node_cpu_joules_total{zone="package"})', t_last)
           - prom.value('sum(wattlens_node_cpu_joules_total{zone="package"})', t_first))
    assert abs(node_j - raw) <= TOLERANCE_J, (node_j, raw, "the range does not sit on the scrapes")
    idle = _total(prom, f'increase(wattlens_node_cpu_idle_joules_total{{zone="package"}}{window})', t_last)
    unattributed = _total(prom, f'increase(wattlens_unattributed_cpu_joules_total{{zone="package"}}{window})', t_last)
    parts = {kind: _total(prom, f'increase(wattlens_{kind}_cpu_joules_total{{zone="package"{extra}}}{window})', t_last)
             for kind, extra in (("pod", ""), ("container", ',parent_kind=""'), ("service", ""), ("vm", ""),
                                 ("user", ""))}
    difference = node_j - (idle + unattributed + sum(parts.values()))
    print(f"\npackage over {t_last - t_first:.3f} s: node {node_j:.6f} J = idle {idle:.6f} + unattributed "
          f"{unattributed:.6f} + workloads {parts}; difference {difference:.3g} J")
    assert parts["pod"] > 0 and parts["service"] > 0 and parts["container"] > 0 and parts["user"] > 0
    assert abs(difference) <= TOLERANCE_J

    # The package counter wrapped inside the range, and no joule counter ever went back.
    wraps = 'sum(wattlens_node_cpu_energy_wraps_total{zone="package"})'
    assert prom.value(wraps, t_last) - prom.value(wraps, t_first) == 1
    counters = [name for name in prom.api("label/__name__/values", **{"match[]": '{job="wattlens"}'})
                if name.endswith("joules_total")]
    assert len(counters) >= 10, counters
    for counter in counters:
        resets = prom.values(f"resets({counter}{window})", t_last)
        assert resets and set(resets.values()) == {0.0}, (counter, resets)
    assert prom.value(f'sum(increase(wattlens_node_cpu_energy_resets_total{window}))', t_last) == 0

    # The ended service's series are still exported (workload_ttl 60 s) and no longer grow.
    ended = 'wattlens_service_cpu_joules_total{unit="ended.service",zone="package"}'
    assert prom.value(f"timestamp({ended})", t_last) == pytest.approx(t_last, abs=1e-3)
    assert prom.value(ended, t_last) == prom.value(ended, t_ended) > 0
    assert any('unit="ended.service"' in key for key in metrics_at_end)

    # Every recording rule has data, every rule evaluates cleanly, and nothing is alerting.
    groups = prom.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {g["file"] for g in groups} == {str(path) for path in RULE_FILES}
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    empty = [r["name"] for r in rules if r["type"] == "recording" and not prom.query(r["name"])]
    assert not empty, f"recording rules without data: {empty}"
    assert len([r for r in rules if r["type"] == "recording"]) == len(_record_names())
    assert prom.api("alerts")["alerts"] == []

    # The numbers the rules give are the ones driven: 200 W of GPU (300 W − 100 W idle) on 50 tokens/s is
    # 4 J per generated token and 1 J per prompt token. Tolerance: the 5-minute window holds a few tens of
    # seconds of two targets scraped at different moments, each extrapolated by up to half a scrape at its
    # start, and wattlens' GPU energy moves once per 1 s tick: a few per cent, 15 % allowed.
    per_generated = prom.value("namespace_pod:wattlens_gpu_joules_per_generation_token:ratio_increase5m")
    per_prompt = prom.value("namespace_pod:wattlens_gpu_joules_per_prompt_token:ratio_increase5m")
    print(f"J/generated token {per_generated:.3f} (4 driven), J/prompt token {per_prompt:.3f} (1 driven)")
    assert per_generated == pytest.approx(4.0, rel=0.15)
    assert per_prompt == pytest.approx(1.0, rel=0.15)
    assert prom.value("wattlens_grid_carbon_intensity_grams_per_kwh") == CARBON
    # Carbon counted by wattlens: its grams over the energy they cover give back the intensity (CPU zones that
    # add up and GPUs, from the exporter's own split), and the workloads' part is the top-level workloads' sum.
    charged = prom.value("node:wattlens_node_operational_carbon_grams_per_kwh:rate5m")
    assert charged == pytest.approx(CARBON, rel=1e-4)  # whole nanograms per tick: ~1e-6 of a tick's grams
    for which in ("operational", "embodied"):
        workloads = prom.value(f"node:wattlens_workload_{which}_carbon_grams:rate5m")
        part = prom.value(f'sum(node_part:wattlens_node_{which}_carbon_grams:rate5m{{part="workloads"}})')
        assert workloads == pytest.approx(part, rel=1e-9) and workloads > 0, which
    owner = prom.values("namespace_owner:wattlens_pod_joules:rate5m")
    assert list(owner) == [f"namespace={NAMESPACE},owner_kind=StatefulSet,owner_name=vllm"]

    # The cookbook: every query of docs/promql.md and docs/llm-energy.md is valid PromQL that Prometheus runs.
    for doc, expr in doc_queries():
        try:
            prom.query(expr, t_last)
        except AssertionError as exc:
            raise AssertionError(f"a query of docs/{doc} fails: {exc}") from None

    # The dashboard: every panel query returns data, for the node and namespace selected and for All.
    nodes = prom.api("label/node/values", **{"match[]": "wattlens_node_info"})
    assert nodes == [NODE]
    namespaces = prom.api("label/namespace/values", **{"match[]": f'wattlens_pod_cpu_joules_total{{node=~"{NODE}"}}'})
    assert namespaces == [NAMESPACE]
    for node_value, namespace_value in ((NODE, NAMESPACE), (".*", ".*")):
        for title, expr in dashboard_queries(node_value, namespace_value):
            assert prom.query(expr), f"panel {title!r} returned no data: {expr}"


def _label_sets(samples: dict[str, float], keep_empty: bool = False) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """(name, labels) of the exposition's series, without empty values unless asked: what Prometheus stores."""
    out = set()
    for key in samples:
        name, _, rest = key.partition("{")
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        out.add((name, frozenset((k, v) for k, v in labels.items() if v or keep_empty)))
    return out


def check_labels_and_joins(prom: Prometheus, exposition: dict[str, float]) -> None:
    """`exposition`: wattlens' own /metrics, at the start and the end of the run (an idle baseline's method
    label changes from ratio to learned in between)."""
    # Every wattlens series in Prometheus has exactly the labels wattlens exported, plus job and instance from
    # the ServiceMonitor (instance = the node): none of the exporter pod's namespace, pod, container, service
    # or endpoint, not even where wattlens' own label is empty (node series, the unnamed pod).
    exported = _label_sets(exposition)
    stored = prom.api("series", **{"match[]": '{job="wattlens"}', "start": f"{time.time() - 120:.0f}"})
    leaked = []
    for series in stored:
        name = series.pop("__name__")
        if name == "up" or name.startswith("scrape_"):
            continue  # Prometheus' own series about the target
        assert (series.pop("job"), series.pop("instance")) == ("wattlens", NODE), series
        if (name, frozenset(series.items())) not in exported:
            leaked.append((name, series))
    assert not leaked, f"series whose labels are not wattlens' own: {leaked[:5]}"
    assert len(stored) > 50
    exporter_values = {EXPORTER_NAMESPACE, EXPORTER_POD}
    assert not [s for s in stored if exporter_values & set(s.values())]
    unnamed = prom.query(f'wattlens_pod_cpu_joules_total{{uid="{UNNAMED_UID}",zone="package"}}')
    assert unnamed and "pod" not in unnamed[0]["metric"] and "namespace" not in unnamed[0]["metric"], unnamed

    # kube-state-metrics joins: on uid, on (namespace, pod), and a container on (uid, container).
    by_uid = prom.values("namespace_pod:wattlens_pod_joules:rate5m"
                         " * on (uid) group_left (created_by_kind, created_by_name) kube_pod_info")
    assert list(by_uid) == [f"created_by_kind=StatefulSet,created_by_name=vllm,namespace={NAMESPACE},node={NODE},"
                            f"pod={POD},uid={POD_UID}"], by_uid
    by_name = prom.values('sum by (namespace, pod) (rate(wattlens_pod_cpu_joules_total{zone="package"}[1m]))'
                          " * on (namespace, pod) group_left (created_by_name) kube_pod_info")
    assert list(by_name) == [f"created_by_name=vllm,namespace={NAMESPACE},pod={POD}"], by_name
    by_container = prom.values(
        'sum by (uid, container) (rate(wattlens_container_cpu_joules_total{zone="package"}[1m]))'
        " * on (uid, container) group_left (image) kube_pod_container_info")
    assert list(by_container) == [f"container=vllm,image=vllm/vllm-openai:v0.9.0,uid={POD_UID}"], by_container


def shipped_rule(record: str, window: str) -> str:
    """A shipped recording rule's expression over another window."""
    for group in yaml.safe_load(RULE_FILES[0].read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == record:
                return str(rule["expr"]).replace("[5m]", f"[{window}]")
    raise AssertionError(f"no rule records {record}")


def check_domains(prom: Prometheus) -> None:
    """With an ACPI power meter (287 W) beside RAPL and a GPU: the node's total is the platform, and the rest of
    the node is what the top-level domains (package, dram, GPU) leave of it, never negative."""
    at = time.time() - 1
    # The shipped rules' own expressions over 10 s, a window every series covers: over a run shorter than their
    # 5 minutes, rate() extrapolates each series from where it starts, and the platform series (an integrated
    # power reading) starts a tick after the CPU's, so the rules' values can only be compared once 5 minutes in.
    def rule(record: str) -> float:
        return prom.value(f"sum({shipped_rule(record, '10s')})", at)

    total = rule("node:wattlens_node_joules:rate5m")
    platform = rule("node_source:wattlens_node_platform_joules:rate5m")
    rest = rule("node:wattlens_node_rest_joules:rate5m")
    parts = rule("node:wattlens_node_cpu_joules:rate5m") + rule("node:wattlens_node_gpu_joules:rate5m")
    watts = prom.value("sum(wattlens_node_platform_watts)", at)
    print(f"domains: platform {watts:.2f} W; rules over 10 s: platform {platform:.3f}, total {total:.3f}, "
          f"parts {parts:.3f}, rest {rest:.3f}")
    assert watts == 287.0 and abs(total - platform) <= 0.01 * platform
    assert rest >= 0 and abs(rest - max(0.0, platform - parts)) <= 0.02 * platform
    tops = {(r["metric"]["zone"], r["metric"]["top_level"]) for r in prom.query("wattlens_node_zone_info", at)}
    assert ("platform", "false") in tops and ("package", "true") in tops and ("gpu", "true") in tops


def check_rules_conserve(prom: Prometheus) -> None:
    """idle + unattributed + workloads = node through the recording rules, with a named pod, an unnamed pod, a
    standalone container and a user's rootless container all exporting series."""
    at = time.time() - 1  # an evaluation the rules have all written
    rules = {part: prom.value(f'sum(node_zone_source:wattlens_{part}:rate5m{{zone="package"}})', at)
             for part in ("node_cpu_joules", "node_cpu_idle_joules", "unattributed_cpu_joules",
                          "workload_cpu_joules")}
    node_w = rules["node_cpu_joules"]
    parts_w = rules["node_cpu_idle_joules"] + rules["unattributed_cpu_joules"] + rules["workload_cpu_joules"]
    # The containers pod="" selected besides the standalone one: the unnamed pod's and the rootless one's.
    doubled = prom.value('sum(rate(wattlens_container_cpu_joules_total{zone="package",pod="",parent_kind!=""}[5m]))',
                         at)
    print(f"rules, package: node {node_w:.4f} W, idle + unattributed + workloads {parts_w:.4f} W "
          f"({(parts_w - node_w) / node_w:+.5%}); the pod=\"\" selector would add {doubled:.4f} W "
          f"({doubled / node_w:+.3%})")
    assert abs(parts_w - node_w) <= 0.001 * node_w
    assert doubled > 0.001 * node_w  # the case the old rule got wrong is really present
