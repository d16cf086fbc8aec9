"""Reliability (issue 8): a short soak and a short load run of the real daemon, and the faults no other test
file covers — wall-clock jumps, energy_uj EIO, config YAML fuzzing, kubelet log names in invalid UTF-8.

The soak and load runs are benchmarks/soak.py and benchmarks/load.py, shortened; docs/reliability.md has the
full runs' figures and the map of every fault to the test that proves it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, CgroupFixture, ProcTree, RaplTree, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import Config, ConfigError, load_config
from exporter.daemon import Daemon as DaemonService
from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.meters.rapl import RaplMeter
from exporter.snapshot import Snapshot, SourceUp
from exporter.sysfs import MAX_PSEUDO_FILE_BYTES, HeldFile
from exporter.workloads.kubernetes import KubeletLogs
from exporter.workloads.processes import parse_pid_cgroup

sys.path.insert(0, str(REPO / "benchmarks"))
import load  # benchmarks/load.py
import soak  # benchmarks/soak.py

FUZZ_EXAMPLES = 300  # per config fuzz test; docs/reliability.md counts them


# --- soak and load, shortened ---------------------------------------------------------------------------


def test_soak_under_churn_keeps_rss_and_fds_flat_and_conserves_energy() -> None:
    result = soak.run(seconds=60, ttl=5, sample_s=5)
    soak.print_report(result)  # shown with -s, and on failure
    pods, containers, procs = result.created
    assert pods + containers >= 1000 and procs >= 1000, result.created
    assert result.rss_growth <= 0.05, result.checkpoints
    assert result.fd_delta <= 0, result.checkpoints
    assert result.conserved, result.conservation
    assert result.ttl_honoured, (result.exported_pods_end, result.live_pods_end, result.retention_s)
    assert result.scrape_failures == 0 and result.skipped == 0 and result.exit_code == 0


def test_load_200_scrapers_and_slow_clients_do_not_disturb_the_tick() -> None:
    result = load.run(seconds=15, quiet_s=3)
    load.print_report(result)
    c = result.loaded
    assert c.samples >= 100 and c.non_200 == 0, "the well-behaved scraper must always get 200"
    assert c.ticks >= 12 and len(c.lags_s) >= 10
    assert c.lag(99) < 0.5 * result.interval, c.lags_s
    assert c.skipped == 0
    assert result.attack["ok"] > 1000 and result.attack["bad_status"] == 0
    assert result.attack["slowloris_cut_off"] >= result.clients[1]  # every slow client was cut off at 10 s
    assert result.attack["dropped_mid_response"] > 100
    assert result.fds["3 s after"] <= result.fds["before"] + 2  # every dropped connection was closed
    assert result.rss_kib["3 s after"] <= 1.5 * result.rss_kib["before"]
    assert result.exit_code == 0


# --- the clock jumps ------------------------------------------------------------------------------------


def test_wall_clock_jumps_change_neither_cadence_nor_joules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Δt and the tick grid come from time.monotonic (daemon.py passes it to Engine.tick): a wall clock that
    jumps a year back and forth every call, and a TZ change, leave ticks, Δt and joules untouched. Only the
    informational wattlens_last_tick_timestamp_seconds follows the wall clock."""
    tree = RaplTree.copy("intel-2socket-server", tmp_path)
    config = make_config(sys_path=tree.root, meters="rapl", interval="0.5", workloads="false", gpus="false")
    engine = Engine.start(config)
    daemon = DaemonService(config, engine)
    real_time = time.time
    calls = [0]

    def jumping() -> float:
        calls[0] += 1
        return real_time() + (-1 if calls[0] % 2 else 1) * 365 * 86400.0

    monkeypatch.setattr(time, "time", jumping)
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14
    time.tzset()
    writer = threading.Timer(1.2, lambda: tree.advance("intel-rapl:0", 7_000_000))

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(2.8, stop.set)
        await daemon.run(stop)

    try:
        writer.start()
        asyncio.run(main())
    finally:
        writer.join()
        monkeypatch.undo()
        time.tzset()
        engine.close()
    snap = engine.snapshot()
    assert 5 <= snap.ticks.ticks <= 7 and snap.ticks.skipped == 0  # 0.5 s grid over 2.8 s: 6 ticks
    zones = {z.zone.device: z for z in snap.zones}
    assert zones["intel-rapl:0"].joules_uj == 7_000_000  # exactly what was written, once
    assert all(z.resets == 0 and z.up for z in snap.zones)
    assert abs(abs(snap.ticks.last_unix_time - real_time()) - 365 * 86400) < 60  # the wall clock, jumped


# --- energy_uj returns EIO ------------------------------------------------------------------------------


def _eio_for(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = HeldFile.read

    def read(self: HeldFile) -> bytes:
        if str(self.path).endswith(f"/{device}/energy_uj"):
            raise OSError(errno.EIO, "Input/output error")
        return real_read(self)

    monkeypatch.setattr(HeldFile, "read", read)


def _by_device(snap: Snapshot) -> dict[str, int]:
    return {z.zone.device: z.joules_uj for z in snap.zones}


def test_energy_uj_eio_marks_the_zone_down_others_continue_and_it_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = RaplTree.copy("intel-2socket-server", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    engine = Engine.start(make_config(sys_path=tree.root, proc_path=proc.root, meters="rapl", workloads="false",
                                      gpus="false", idle_watts="package=0,dram=0"))
    engine.tick(0.0)
    _eio_for("intel-rapl:0", monkeypatch)
    tree.advance("intel-rapl:0", 1_000_000)
    tree.advance("intel-rapl:1", 2_000_000)
    snap = engine.tick(5.0)
    assert SourceUp("rapl", "intel-rapl:0", False) in snap.sources
    assert SourceUp("rapl", "intel-rapl:1", True) in snap.sources
    assert SourceUp("rapl", "intel-rapl:0:0", True) in snap.sources
    assert _by_device(snap)["intel-rapl:1"] == 2_000_000  # the other socket keeps counting, exactly
    assert _by_device(snap)["intel-rapl:0"] == 0
    assert b'wattlens_source_up{device="intel-rapl:0",node="test-node",source="rapl"} 0.0' in (
        Renderer().render(snap).text)
    tree.advance("intel-rapl:0", 5_000_000)  # energy while it is down: not guessed afterwards
    monkeypatch.undo()  # the device answers again
    assert SourceUp("rapl", "intel-rapl:0", False) in engine.tick(5.5).sources  # inside the 1 s backoff: not retried
    snap = engine.tick(7.0)  # reopened: re-baselined, no delta for the gap
    assert SourceUp("rapl", "intel-rapl:0", True) in snap.sources
    assert _by_device(snap)["intel-rapl:0"] == 0
    tree.advance("intel-rapl:0", 3_000_000)
    snap = engine.tick(12.0)
    assert _by_device(snap)["intel-rapl:0"] == 3_000_000
    assert all(z.resets == 0 for z in snap.zones)
    engine.close()


# --- config YAML fuzzing --------------------------------------------------------------------------------


def _load_yaml_text(text: str) -> Config | None:
    """The Config, or None where load_config raised ConfigError (anything else fails the test)."""
    message = ""
    try:
        return _load_yaml_text_raising(text)
    except ConfigError as exc:
        message = str(exc)
    assert message
    return None


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.text(max_size=400))
def test_any_config_text_loads_or_raises_only_config_error(text: str) -> None:
    _load_yaml_text(text)


_KEYS = [*Config.model_fields, "model", "idle_watts", "unknown_key"]
_SCALARS = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=30)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["package", "dram", "idle_watts_per_cpu", "max_watts_per_cpu", "cpus", "x"]) | st.text(max_size=8),
    inner, max_size=4), max_leaves=12)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=12), _VALUES, max_size=6))
def test_any_config_document_loads_or_raises_only_config_error(document: dict[str, object]) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    _load_yaml_text(text)


@pytest.mark.parametrize("text", ["'0': ~\n", "'42': x\n", "'007': 1\n"])
def test_a_numeric_top_level_key_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        _load_yaml_text_raising(text)


def test_yaml_alias_bomb_gives_a_bounded_one_line_error() -> None:
    lines = ['x0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"x{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    lines.append("pod_labels: *a6")  # 10^7 strings by reference
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        _load_yaml_text_raising("\n".join(lines))
    assert time.monotonic() - started < 5
    assert len(str(caught.value)) < 10_000


def _load_yaml_text_raising(text: str) -> Config:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", encoding="utf-8", delete=False) as handle:
        handle.write(text)
    try:
        return load_config(None, Path(handle.name), environ={})
    finally:
        os.unlink(handle.name)


# --- kubelet log names in invalid UTF-8 -----------------------------------------------------------------

UID = "0000000a-0000-4000-8000-00000000000a"
_NAME_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b and b"_" not in b
                                                        and b not in (b".", b".."))


@settings(max_examples=200, deadline=None)
@given(namespace=_NAME_BYTES, pod=_NAME_BYTES, container=_NAME_BYTES)
def test_kubelet_log_names_in_any_bytes_never_break_the_index(namespace: bytes, pod: bytes, container: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.fsencode(tmp)
        os.makedirs(root + b"/pods/" + namespace + b"_" + pod + b"_" + UID.encode())
        os.makedirs(root + b"/containers")
        cid = "c" * 64
        open(root + b"/containers/" + pod + b"_" + namespace + b"_" + container + b"-" + cid.encode() + b".log",
             "wb").close()
        logs = KubeletLogs(Path(tmp))
        logs.refresh(0.0, [UID], [cid])
        named = logs.pod(UID)
        assert named is not None and named.pod == pod.decode("utf-8", "replace")
        assert named.namespace == namespace.decode("utf-8", "replace")
        container_name = logs.container(cid)
        if b"-" not in container and b"-" not in pod and b"-" not in namespace:
            assert container_name is not None and container_name.container == container.decode("utf-8", "replace")


def test_invalid_utf8_pod_name_reaches_the_exposition_as_replacement_characters(tmp_path: Path) -> None:
    rapl = RaplTree.copy("unreadable", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    cgroups = CgroupFixture(tmp_path / "cgroup")
    pod = f"kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice"
    cgroups.add(pod)
    log = tmp_path / "log"
    os.makedirs(os.fsencode(log / "pods") + b"/n\xffs_we\xc3\x28ird_" + UID.encode())
    engine = Engine.start(make_config(sys_path=rapl.root, proc_path=proc.root, cgroup_root=cgroups.root,
                                      kubelet_log_path=log, meters="rapl", idle_watts="package=0", gpus="false"))
    engine.tick(0.0)
    cgroups.burn(pod, 100_000)
    proc.advance_usec(100_000, 0)
    rapl.advance("intel-rapl:0", 1_000_000)
    snap = engine.tick(5.0)
    text = Renderer().render(snap).text.decode("utf-8")  # valid UTF-8 throughout
    assert (f'wattlens_pod_cpu_joules_total{{namespace="n\ufffds",node="test-node",pod="we\ufffd(ird",source="rapl",'
            f'uid="{UID}",zone="package"}} 1.0') in text
    pods = [w for w in snap.workloads if w.kind == "pod"]
    assert dict(pods[0].energy_uj)["package"] == 1_000_000
    engine.close()


# --- parsers no other test fuzzes with hypothesis -------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_any_energy_uj_content_is_a_value_or_an_error_never_an_exception(tmp_path: Path, data: bytes) -> None:
    tree = RaplTree.copy("near-wrap", tmp_path) if not (tmp_path / "near-wrap").exists() else RaplTree(
        tmp_path / "near-wrap")
    meter = RaplMeter.open(tree.root)
    try:
        path = tree.energy_file("intel-rapl:0")
        path.write_bytes(data)
        sample = next(s for s in meter.read(0.0, None) if s.zone.device == "intel-rapl:0")
        if sample.energy_uj is None:
            assert sample.error
        else:
            assert 0 <= sample.energy_uj <= tree.max_range("intel-rapl:0")
            assert sample.energy_uj == int(data)
    finally:
        meter.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_pid_cgroup_parser_never_raises(data: bytes) -> None:
    container, unit = parse_pid_cgroup(data)
    assert isinstance(container, str) and isinstance(unit, str)


def test_an_oversized_pseudo_file_is_read_only_up_to_the_bound(tmp_path: Path) -> None:
    big = tmp_path / "huge"
    big.write_bytes(b"7" * (3 * MAX_PSEUDO_FILE_BYTES))
    held = HeldFile(big)
    try:
        assert len(held.read()) <= MAX_PSEUDO_FILE_BYTES + (1 << 16)
    finally:
        held.close()
