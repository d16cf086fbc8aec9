"""Acceptance 3 of issue 16: the real daemon pushes OTLP to a real receiver (VictoriaMetrics 1.112): the node and
workload metrics arrive, PromQL over the pushed data gives the same joules as the pulled /metrics within one tick,
and with the receiver stopped for 60 s the daemon keeps ticking and serving, its memory stays bounded, the dropped
pushes are counted, and pushing resumes when the receiver is back.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from helpers import CgroupFixture, Daemon, ProcTree, RaplTree
from victoria import VictoriaMetrics

NAMES = (("shop", "web-0"), ("shop", "web-1"), ("search", "solr-0"), ("ml", "train-0"))
OUTAGE_S = 60
QUEUE = 4


def pod_uid(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def pod_path(i: int) -> str:
    return f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_uid(i).replace('-', '_')}.slice"


def container_path(i: int) -> str:
    return f"{pod_path(i)}/cri-containerd-{i:064x}.scope"


class Node:
    """A node whose counters move in a thread: 2 sockets of RAPL, four named pods, a service."""

    def __init__(self, root: Path) -> None:
        self.rapl = RaplTree.copy("intel-2socket-server", root)
        self.proc = ProcTree(root / "proc")
        self.cgroups = CgroupFixture(root / "cgroup")
        self.log = root / "log"
        for i, (namespace, pod) in enumerate(NAMES):
            self.cgroups.add(container_path(i))
            (self.log / "pods" / f"{namespace}_{pod}_{pod_uid(i)}" / "app").mkdir(parents=True)
        self.cgroups.add("system.slice/kubelet.service")
        self.moving = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.25):
            if not self.moving.is_set():
                continue
            for i in range(len(NAMES)):
                self.cgroups.burn(container_path(i), 20_000 * (i + 1))
            self.cgroups.burn("system.slice/kubelet.service", 10_000)
            self.proc.advance_usec(220_000, 300_000)
            for zone, microjoules in (("intel-rapl:0", 30_000_000), ("intel-rapl:1", 20_000_000),
                                      ("intel-rapl:0:0", 4_000_000), ("intel-rapl:1:0", 3_000_000)):
                self.rapl.advance(zone, microjoules)

    def flags(self) -> list[str]:
        return ["--sys", str(self.rapl.root), "--proc", str(self.proc.root), "--cgroup-root", str(self.cgroups.root),
                "--meters", "rapl", "--idle-watts", "package=10,dram=2"]


def sample(metrics: dict[str, float], name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [v for k, v in metrics.items() if k.startswith(name + "{")
             and all(f'{key}="{value}"' in k for key, value in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def pushed(vm: VictoriaMetrics, promql: str) -> float:
    vm.flush()
    result = vm.query(promql)
    assert len(result) == 1, (promql, result)
    return float(result[0]["value"][1])


def rss_kib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))  # type: ignore[union-attr]


def test_push_to_victoria_metrics_same_joules_and_a_60_s_outage(tmp_path: Path) -> None:
    node = Node(tmp_path)
    vm = VictoriaMetrics(tmp_path / "vm", lifetime_s=OUTAGE_S + 120)
    port = vm.port
    url = f"http://127.0.0.1:{port}/opentelemetry/v1/metrics"
    daemon = Daemon(*node.flags(), "--interval", "1", "--node-name", "node-a", "--cluster-name", "fleet-1",
                    "--otlp-endpoint", url, "--otlp-interval", "1", "--otlp-timeout", "2", "--otlp-queue", str(QUEUE),
                    env={"WATTLENS_KUBELET_LOG_PATH": str(node.log), "WATTLENS_GPUS": "false"})
    node.thread.start()
    try:
        node.moving.set()
        daemon.wait_ready()
        # 1. Node and workload metrics arrive, with the resource attributes as labels.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            vm.flush()
            if vm.query('wattlens.pod.energy{k8s.pod.name="train-0"}') and vm.query("hw.energy"):
                break
            time.sleep(0.2)
        series = vm.query('hw.energy{hw.id="intel-rapl:0"}')
        assert series[0]["metric"]["k8s.cluster.name"] == "fleet-1"
        assert series[0]["metric"]["service.instance.id"] == "node-a"
        assert {s["metric"]["k8s.pod.name"] for s in vm.query("wattlens.pod.energy")} == {p for _, p in NAMES}

        # 2. The same joules: while the counters move, within one tick's energy; once they rest, exactly.
        tick_j = 30.0 * 4  # intel-rapl:0 gains 30 J per 0.25 s: one 1 s tick's worth
        pulled = sample(daemon.metrics(), "wattlens_node_cpu_joules_total", zone="package", socket="0")
        assert abs(pushed(vm, 'hw.energy{hw.id="intel-rapl:0"}') - pulled) <= 2 * tick_j
        node.moving.clear()
        daemon.wait_ticks(3)
        time.sleep(1.5)  # the push of the last tick
        metrics = daemon.metrics()
        assert pushed(vm, 'hw.energy{hw.id="intel-rapl:0"}') == sample(
            metrics, "wattlens_node_cpu_joules_total", zone="package", socket="0")
        for namespace, pod in NAMES:
            assert pushed(vm, f'wattlens.pod.energy{{k8s.pod.name="{pod}",hw.name="package"}}') == sample(
                metrics, "wattlens_pod_cpu_joules_total", namespace=namespace, pod=pod, zone="package")
        by_namespace = pushed(vm, 'sum(wattlens.pod.energy{k8s.namespace.name="shop",hw.name="package"})')
        assert abs(by_namespace - sum(sample(metrics, "wattlens_pod_cpu_joules_total", pod=p, zone="package")
                                      for n, p in NAMES if n == "shop")) < 1e-6
        assert pushed(vm, 'wattlens.unattributed.energy{hw.name="package"}') == sample(
            metrics, "wattlens_unattributed_cpu_joules_total", zone="package")

        # 3. The receiver is stopped for 60 s: the daemon keeps ticking and serving, drops pushes, stays small.
        node.moving.set()
        before = daemon.metrics()
        vm.close()
        rss_start = rss_kib(daemon.process.pid)
        rss_most = rss_start
        rss_seen = []
        started = time.monotonic()
        while time.monotonic() - started < OUTAGE_S:
            time.sleep(5)
            rss_seen.append(rss_kib(daemon.process.pid))
            rss_most = max(rss_most, rss_seen[-1])
            assert sample(daemon.metrics(), "wattlens_otlp_queue_length") <= QUEUE
        during = daemon.metrics()
        ticks = sample(during, "wattlens_ticks_total") - sample(before, "wattlens_ticks_total")
        assert ticks >= OUTAGE_S - 5, f"only {ticks} ticks in {OUTAGE_S} s without the receiver"
        assert sample(during, "wattlens_ticks_skipped_total") == sample(before, "wattlens_ticks_skipped_total")
        assert sample(during, "wattlens_otlp_pushes_total", result="failure") > sample(
            before, "wattlens_otlp_pushes_total", result="failure")
        dropped = sample(during, "wattlens_otlp_pushes_dropped_total")
        assert dropped >= OUTAGE_S - QUEUE - 10, f"{dropped} pushes dropped in {OUTAGE_S} s"
        assert rss_most - rss_start < 2 * 1024, f"RSS grew {(rss_most - rss_start) / 1024:.1f} MiB"
        print(f"outage {OUTAGE_S} s: {ticks:.0f} ticks, {dropped:.0f} pushes dropped, RSS {rss_start / 1024:.1f} MiB"
              f" -> at most {rss_most / 1024:.1f} MiB; {[round(r / 1024, 1) for r in rss_seen]}")

        # 4. The receiver is back (same port and storage): the push resumes with the totals.
        vm = VictoriaMetrics(tmp_path / "vm", port=port, lifetime_s=60)
        resumed = sample(during, "wattlens_otlp_pushes_total", result="success")
        deadline = time.monotonic() + 20
        while sample(daemon.metrics(), "wattlens_otlp_pushes_total", result="success") < resumed + 3:
            assert time.monotonic() < deadline, "the push did not resume"
            time.sleep(0.2)
        node.moving.clear()
        daemon.wait_ticks(3)
        time.sleep(1.5)
        metrics = daemon.metrics()
        assert pushed(vm, 'hw.energy{hw.id="intel-rapl:0"}') == sample(
            metrics, "wattlens_node_cpu_joules_total", zone="package", socket="0")
        assert sample(metrics, "wattlens_otlp_queue_length") == 0
    finally:
        node.stop.set()
        code, log = daemon.stop()
        vm.close()
    assert code == 0, log
    # Said once each, not once per retry (the SDK's own retry warnings are kept out of the log).
    assert len(re.findall(r"OTLP push to \S+ failed", log)) == 1, log
    # (The fake /proc/stat is rewritten in place: a tick may read it half-written, said and recovered on its own.)
    assert len(re.findall(r"OTLP push to \S+ works again", log)) == 1 and "Transient error" not in log, log
