"""Opt-in process metrics: parsing, held fds against real processes, and the bounded top-N ledger."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.ledger import TopProcesses
from exporter.workloads.processes import ProcessTable, parse_pid_cgroup, parse_pid_stat

STAT_TAIL = b" S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 1 0 987654 100 200 0 0\n"


@pytest.mark.parametrize(("comm", "expected"), [
    (b"bash", "bash"), (b"tmux: server", "tmux: server"), (b"a) (b", "a) (b"), (b"))", "))"),
    (b"\xff\xfe", "\ufffd\ufffd"),
])
def test_comm_with_spaces_and_parentheses(comm: bytes, expected: str) -> None:
    stat = parse_pid_stat(b"4242 (" + comm + b")" + STAT_TAIL)
    assert (stat.comm, stat.cpu_ticks, stat.start_ticks) == (expected, 175, 987654)


@pytest.mark.parametrize("bad", [b"", b"4242 bash S 1", b"4242 (bash) S 1 2 3", b"4242 (x) S " + b"a " * 30])
def test_malformed_pid_stat(bad: bytes) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_pid_stat(bad)


@given(st.binary(max_size=300))
def test_pid_stat_parser_only_raises_value_error(data: bytes) -> None:
    try:
        parse_pid_stat(data)
    except ValueError:
        pass


CID = "ab" * 32


@pytest.mark.parametrize(("content", "expected"), [
    (f"0::/kubepods.slice/kubepods-pod1234abcd_0000_4000_8000_000000000001.slice/cri-containerd-{CID}.scope\n",
     (CID, "")),
    (f"0::/../../kubepods-burstable.slice/kubepods-burstable-pod1234abcd_0000_4000_8000_000000000001.slice/"
     f"crio-{CID}.scope\n", (CID, "")),  # cgroup-namespace-relative
    ("0::/system.slice/sshd.service\n", ("", "sshd.service")),
    (f"12:cpu,cpuacct:/docker/{CID}\n1:name=systemd:/docker/{CID}\n0::/\n", (CID, "")),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", ("", "")),
    ("garbage", ("", "")),
])
def test_pid_cgroup_names_the_workload(content: str, expected: tuple[str, str]) -> None:
    assert parse_pid_cgroup(content.encode()) == expected


def test_table_reads_real_processes_and_forgets_ended_ones() -> None:
    table = ProcessTable(Path("/proc"))
    table.read()  # baseline
    child = subprocess.Popen([sys.executable, "-c", "import time\nend=time.process_time()+0.5\n"
                              "while time.process_time()<end: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        seen = 0
        while time.monotonic() < deadline:
            time.sleep(0.2)
            deltas = {k.pid: (k, v) for k, v in table.read().items()}
            if child.pid in deltas:
                seen += deltas[child.pid][1]
            if seen >= 45:  # ticks: at least 0.45 s of the 0.5 s it burns
                break
        key = deltas[child.pid][0]
        assert key.comm.startswith("python")
        assert seen >= 45
    finally:
        child.kill()
        child.wait()
    assert child.pid not in {k.pid for k in table.read()}  # reaped: its held fd fails, it is forgotten
    table.close()


@given(st.lists(st.dictionaries(st.integers(0, 12), st.integers(0, 1000), max_size=8), min_size=1, max_size=15),
       st.integers(1, 4))
def test_top_processes_are_bounded_monotonic_and_lose_nothing(ticks: list[dict[int, int]], top_n: int) -> None:
    top: TopProcesses[int] = TopProcesses(top_n, ttl_s=1e9)
    before: dict[int, int] = {}
    other_before = 0
    for now, shares in enumerate(ticks):
        top.add_tick(float(now), {pid: {"package": uj} for pid, uj in shares.items()})
        after = {pid: energy.get("package", 0) for pid, energy in top.exported()}
        other = top.other_uj.get("package", 0)
        assert len(after) <= top_n
        assert all(after[pid] >= value for pid, value in before.items())
        assert other >= other_before
        gained = sum(after.values()) - sum(before.values()) + other - other_before
        assert gained == sum(shares.values())
        before, other_before = after, other


def test_soft_fd_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    code = ("import resource; from exporter.sysfs import raise_fd_limit; "
            "before = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "print(before[0], raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[1])")
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=low_soft_limit, capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    before, now, hard = map(int, out)
    assert before == 256
    assert now == min(hard, 1 << 20) > 256
