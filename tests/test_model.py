"""The no-sensor model and the /proc/stat parser it stands on."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ProcTree, make_config
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import ModelConfig
from exporter.engine import Engine
from exporter.meters.model import ModelMeter
from exporter.workloads.procfs import CpuTimes, ProcStat, parse_proc_stat, utilisation

REAL_STAT = (
    b"cpu  10132153 290696 3084719 46828483 16683 0 25195 175628 12 7\n"
    b"cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0\n"
    b"cpu1 1335 0 41 23 0 0 0 0 0 0\n"
    b"intr 199292 0 0\n"
    b"ctxt 4567\n"
)


def test_parses_a_real_proc_stat() -> None:
    cpu = parse_proc_stat(REAL_STAT)
    assert cpu.busy == 10132153 + 290696 + 3084719 + 0 + 25195  # guest is already inside user
    assert cpu.idle == 46828483 + 16683
    assert cpu.steal == 175628
    assert cpu.cpus == 2


def test_parses_this_machines_proc_stat() -> None:
    proc = ProcStat(Path("/proc"))
    first = proc.read()
    assert first.cpus >= 1 and first.total > 0
    assert proc.read().total >= first.total  # a held fd re-reads fresh values
    proc.close()


@pytest.mark.parametrize("bad", [b"", b"intr 1\n", b"cpu  1 2\n", b"cpu  a b c d\n", b"cpu  -1 0 0 0\n"])
def test_malformed_proc_stat_is_a_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_proc_stat(bad)


@given(st.binary(max_size=300))
def test_parser_never_fails_other_than_value_error(data: bytes) -> None:
    try:
        parse_proc_stat(data)
    except ValueError:
        pass


def test_utilisation_bounds() -> None:
    a = CpuTimes(busy=100, idle=100, steal=0, cpus=2)
    assert utilisation(a, CpuTimes(busy=150, idle=150, steal=0, cpus=2)) == 0.5
    assert utilisation(a, a) == 0.0
    assert utilisation(a, CpuTimes(busy=90, idle=300, steal=0, cpus=2)) == 0.0  # counter went back


def test_model_integrates_power_exactly() -> None:
    meter = ModelMeter(ModelConfig(idle_watts_per_cpu=1.0, max_watts_per_cpu=5.0), cpus=4)
    assert meter.read(0.0, CpuTimes(0, 0, 0, 4))[0].energy_uj == 0
    # 25 % busy for 10 s on 4 CPUs: 4 × (1 + 4 × 0.25) = 8 W → 80 J.
    sample = meter.read(10.0, CpuTimes(busy=100, idle=300, steal=0, cpus=4))[0]
    assert sample.energy_uj == 80_000_000
    assert sample.zone.source == "model"
    # Fractions of a µJ are carried, not dropped: 3 × (1/3 s at 4 W) is exactly 4 J.
    busy, idle = 100, 300
    for step in range(1, 4):
        idle += 100
        sample = meter.read(10.0 + step / 3, CpuTimes(busy=busy, idle=idle, steal=0, cpus=4))[0]
    assert sample.energy_uj == 84_000_000
    assert meter.idle_watts() == {"package": 4.0}


def test_model_engine_splits_idle_by_the_modelled_idle(tmp_path: Path) -> None:
    proc = ProcTree(tmp_path / "proc", cpus=2)
    engine = Engine.start(make_config(meters="model", proc_path=proc.root))
    engine.tick(0.0)
    proc.advance(busy=500, idle=500)  # 50 % busy: 2 × (0.74 + 2.76 × 0.5) = 4.24 W
    snap = engine.tick(10.0)
    zone = snap.zones[0]
    assert zone.zone.source == "model" and zone.joules_uj == 42_400_000
    d = snap.domains[0]
    assert (d.idle_uj, d.active_uj, d.idle_method) == (14_800_000, 27_600_000, "model")
