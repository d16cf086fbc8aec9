"""The optional pod watch against a fake API server on loopback: labels and owners arrive; a dropped
connection resumes without listing; a rotated token is picked up; a 410 Gone relists exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fake_apiserver import FakeApiServer, pod
from helpers import CgroupFixture, Daemon, RaplTree

from exporter.workloads.pod_watch import PodWatch, pod_meta

UID_WEB = "0000000a-0000-4000-8000-00000000000a"
UID_DB = "0000000b-0000-4000-8000-00000000000b"


def run_watch(watch: PodWatch, server: FakeApiServer, steps: Callable[[], Awaitable[None]]) -> None:
    """Run the watch on an event loop while `steps` drive the server; stop both afterwards, always."""

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        try:
            await steps()
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)

    try:
        asyncio.run(scenario())
    finally:
        server.close()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_watch_survives_drops_token_rotation_and_410(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    server = FakeApiServer(token="first")
    server.put(pod("web-1", "node-a", UID_WEB, labels={"app": "web", "team": "shop"}, owner=("ReplicaSet", "web-7f")))
    server.put(pod("elsewhere", "node-b", "0000000c-0000-4000-8000-00000000000c"))
    watch = PodWatch(node_name="node-a", api_server=server.url, token_file=token, ca_file=tmp_path / "none")

    async def steps() -> None:
        await until(lambda: UID_WEB in watch.pods)
        assert set(watch.pods) == {UID_WEB}  # the field selector keeps other nodes' pods out
        web = watch.pods[UID_WEB]
        assert (web.owner_kind, web.owner_name, dict(web.labels)) == ("ReplicaSet", "web-7f",
                                                                     {"app": "web", "team": "shop"})
        server.put(pod("db-0", "node-a", UID_DB, labels={"app": "db"}, owner=("StatefulSet", "db")))
        await until(lambda: UID_DB in watch.pods)
        server.bookmark()
        await until(lambda: watch._resource_version == str(server.version))

        server.drop_watches()  # the connection drops: resume from the last resourceVersion
        server.put(pod("web-1", "node-a", UID_WEB, labels={"app": "web", "team": "checkout"},
                       owner=("ReplicaSet", "web-7f")))
        await until(lambda: dict(watch.pods[UID_WEB].labels).get("team") == "checkout")
        assert server.lists == 1

        token.write_text("second\n")  # the kubelet rotates the projected token
        server.token = "second"
        server.drop_watches()
        server.delete(UID_DB)
        await until(lambda: server.watches >= 3 and watch._resource_version == str(server.version))
        assert UID_DB in watch.pods  # a deleted pod's labels stay while its series do
        assert server.lists == 1

        server.expire_history()  # compaction: the watch's resourceVersion is now too old
        server.drop_watches()
        await until(lambda: server.lists == 2)
        server.put(pod("web-2", "node-a", "0000000d-0000-4000-8000-00000000000d"))
        await until(lambda: "0000000d-0000-4000-8000-00000000000d" in watch.pods)
        await asyncio.sleep(0.3)
        assert server.lists == 2  # one list per relist, never more
        assert watch.up

    run_watch(watch, server, steps)
    assert watch.lists == server.lists == 2


def test_unauthorized_backs_off_and_recovers(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("wrong")
    server = FakeApiServer(token="right")
    server.put(pod("web-1", "node-a", UID_WEB))
    watch = PodWatch(node_name="node-a", api_server=server.url, token_file=token, ca_file=tmp_path / "none")

    async def steps() -> None:
        await until(lambda: watch.errors >= 1)
        assert not watch.up
        token.write_text("right")
        await until(lambda: UID_WEB in watch.pods, timeout=15)
        assert watch.up

    run_watch(watch, server, steps)
    assert 1 <= server.unauthorized <= 3  # it backed off instead of hammering the API server


def test_static_pods_use_the_config_hash_and_container_names() -> None:
    raw = pod("etcd-node-a", "node-a", "mirror-uid", namespace="kube-system", containers={"etcd": "ab" * 32})
    raw["metadata"]["annotations"] = {"kubernetes.io/config.hash": "0123456789abcdef0123456789abcdef"}
    meta = pod_meta(raw)
    assert meta is not None
    assert meta.uid == "0123456789abcdef0123456789abcdef"
    assert meta.containers == (("ab" * 32, "etcd"),)
    assert pod_meta({"metadata": {"name": "x"}}) is None


@pytest.mark.slow
def test_daemon_exports_pod_labels_from_the_watch(tmp_path: Path) -> None:
    rapl = RaplTree.copy("unreadable", tmp_path)
    cgroups = CgroupFixture(tmp_path / "cgroup")
    web_cgroup = f"kubepods.slice/kubepods-pod{UID_WEB.replace('-', '_')}.slice"
    cgroups.add(f"{web_cgroup}/cri-containerd-{'cd' * 32}.scope")
    cgroups.burn(f"{web_cgroup}/cri-containerd-{'cd' * 32}.scope", 1000)  # a workload once it has used CPU
    token = tmp_path / "token"
    token.write_text("t")
    server = FakeApiServer(token="t")
    server.put(pod("web-1", "node-a", UID_WEB, namespace="shop", labels={"app.kubernetes.io/name": "web"},
                   owner=("ReplicaSet", "web-7f"), containers={"nginx": "cd" * 32}))
    try:
        with Daemon("--sys", str(rapl.root), "--cgroup-root", str(cgroups.root), "--interval", "0.5",
                    "--node-name", "node-a",
                    env={"WATTLENS_KUBELET_LOG_PATH": str(tmp_path / "nolog"), "WATTLENS_KUBERNETES_API": "true",
                         "WATTLENS_KUBERNETES_API_SERVER": server.url, "WATTLENS_KUBERNETES_TOKEN_FILE": str(token),
                         "WATTLENS_POD_LABELS": "app.kubernetes.io/name"},
                    ) as daemon:
            daemon.wait_ready()
            deadline = time.monotonic() + 15
            while True:
                samples = daemon.metrics()
                row = [k for k in samples if k.startswith("wattlens_pod_labels{")]
                if row or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert row == ['wattlens_pod_labels{label_app_kubernetes_io_name="web",namespace="shop",node="node-a",'
                           f'owner_kind="ReplicaSet",owner_name="web-7f",pod="web-1",uid="{UID_WEB}"}}']
            # Names come from the watch when the kubelet's log directories are not mounted.
            assert any(k.startswith("wattlens_container_cpu_joules_total{") and 'container="nginx"' in k
                       and 'pod="web-1"' in k for k in samples)
            assert samples['wattlens_pod_watch_requests_total{node="node-a",verb="list"}'] == 1
            assert samples['wattlens_source_up{device="",node="node-a",source="kubernetes-api"}'] == 1
            assert daemon.stop()[0] == 0
    finally:
        server.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no service account", "unreachable", "401"])
def test_an_unusable_api_is_one_line_source_down_retried_and_never_a_traceback(case: str, tmp_path: Path) -> None:
    """kubernetes_api: true outside a pod, with a dead server, or with a rejected token: the daemon says so once,
    with the fix, reports the source down, retries with backoff, stays ready and stops with status 0."""
    server = FakeApiServer(token="right") if case == "401" else None
    token = tmp_path / "token"
    token.write_text("wrong")
    env = {"WATTLENS_KUBERNETES_API": "true", "WATTLENS_KUBERNETES_TOKEN_FILE": str(token),
           "WATTLENS_KUBELET_LOG_PATH": str(tmp_path / "nolog")}
    if case == "unreachable":
        env["WATTLENS_KUBERNETES_API_SERVER"] = f"http://127.0.0.1:{_closed_port()}"
    elif server is not None:
        env["WATTLENS_KUBERNETES_API_SERVER"] = server.url
    expected = {"no service account": "not in a pod (KUBERNETES_SERVICE_HOST is unset) and kubernetes_api_server "
                                      "is empty. Fix: run wattlens in a pod, set kubernetes_api_server, or set "
                                      "kubernetes_api to false",
                "unreachable": "cannot connect to http://127.0.0.1:",
                "401": f"HTTP 401 Unauthorized from {server.url if server else ''}: the token in {token} is not "
                       "accepted. Fix:"}[case]
    rapl = RaplTree.copy("intel-laptop", tmp_path)
    try:
        with Daemon("--sys", str(rapl.root), "--interval", "0.5", "--node-name", "node-a", env=env) as daemon:
            started = time.monotonic()
            daemon.wait_ready()  # readiness does not depend on the watch
            time.sleep(max(0.0, 3.5 - (time.monotonic() - started)))  # attempts at 0, 1 and 3 s: backoff 1, 2, 4
            samples = daemon.metrics()
            assert daemon.get("/readyz")[0] == 200 and daemon.get("/healthz")[0] == 200
            assert samples['wattlens_source_up{device="",node="node-a",source="kubernetes-api"}'] == 0
            errors = samples['wattlens_pod_watch_errors_total{node="node-a"}']
            assert 2 <= errors <= 4, errors  # retried, and backing off rather than hammering
            assert samples['wattlens_node_cpu_joules_total{die="",method="energy_counter",node="node-a",socket="0",'
                           'source="rapl",zone="package"}'] >= 0
            code, log = daemon.stop()
    finally:
        if server is not None:
            server.close()
    assert code == 0
    assert "Traceback" not in log and " ERROR " not in log, log
    warnings = [line for line in log.splitlines() if "pod watch:" in line and "WARNING" in line]
    assert len(warnings) == 1, log  # one line when it starts failing, not one per retry
    assert "cannot use the Kubernetes API: " + expected in warnings[0], warnings[0]
    if server is not None:
        assert 2 <= server.unauthorized <= 4
