"""Attribution is exact: for any tree, deltas and zones, nothing is created or lost, and nothing is negative."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.attribution import Usage, apportion, attribute

cpu = st.integers(min_value=0, max_value=10_000_000)


@given(total=st.integers(min_value=0, max_value=10**15), weights=st.lists(st.integers(0, 10**9), min_size=1))
def test_apportion_is_exact_and_fair(total: int, weights: list[int]) -> None:
    if sum(weights) == 0:
        with pytest.raises(ValueError, match="positive weight"):
            apportion(total, weights)
        return
    shares = apportion(total, weights)
    assert sum(shares) == total
    for share, weight in zip(shares, weights, strict=True):
        exact = total * weight / sum(weights)
        assert share >= 0
        assert abs(share - exact) < 1 + 1e-6 * exact  # never more than one µJ from the exact quota


def test_apportion_known_split() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]  # the leftover µJ goes to the earliest tie
    assert apportion(100, [3, 1, 0]) == [75, 25, 0]


@st.composite
def trees(draw: st.DrawFn) -> list[Usage[str]]:
    tops: list[Usage[str]] = []
    for i in range(draw(st.integers(0, 8))):
        children = tuple(Usage(f"c{i}.{j}", draw(cpu)) for j in range(draw(st.integers(0, 4))))
        tops.append(Usage(f"w{i}", draw(cpu), children))
    return tops


@given(tops=trees(), delta=st.integers(0, 10**12), idle_fraction=st.floats(0, 1), busy=cpu,
       spread_idle=st.booleans())
def test_conservation_holds_exactly(tops: list[Usage[str]], delta: int, idle_fraction: float, busy: int,
                                    spread_idle: bool) -> None:
    idle = int(delta * idle_fraction)
    shares = attribute(delta, idle, busy, tops, spread_idle)
    top_total = sum(shares.workloads.get(t.key, 0) for t in tops)
    assert shares.idle_uj + shares.unattributed_uj + top_total == delta
    assert shares.idle_uj == (0 if spread_idle else idle)
    assert min([shares.unattributed_uj, *shares.workloads.values(), *shares.residual_uj.values()]) >= 0
    for top in tops:
        if top.children:
            children = sum(shares.workloads[c.key] for c in top.children)
            assert children + shares.residual_uj[top.key] == shares.workloads[top.key]


@given(tops=trees(), share=st.integers(0, 10**12))
def test_each_workloads_split_is_apportion_by_definition(tops: list[Usage[str]], share: int) -> None:
    """attribute's inlined split of a workload among its children and residual is apportion's, exactly."""
    for top in tops:
        shares = attribute(share, 0, max(0, top.cpu_us), [top])
        if not top.children:
            continue
        weights = [max(0, c.cpu_us) for c in top.children]
        weights.append(max(0, max(0, top.cpu_us) - sum(weights)))
        want = apportion(shares.workloads[top.key], weights) if sum(weights) else [0] * (len(weights) - 1) + [
            shares.workloads[top.key]]
        assert [shares.workloads[c.key] for c in top.children] + [shares.residual_uj[top.key]] == want


def test_unattributed_takes_the_node_busy_time_nobody_claims() -> None:
    shares = attribute(1_000, 200, 100, [Usage("a", 30), Usage("b", 10)])
    # active 800 µJ over 100 µs busy: a 30 % → 240, b 10 % → 80, the unclaimed 60 % → 480.
    assert (shares.workloads, shares.unattributed_uj, shares.idle_uj) == ({"a": 240, "b": 80}, 480, 200)


def test_workloads_above_node_busy_are_normalised() -> None:
    shares = attribute(900, 0, 10, [Usage("a", 20), Usage("b", 10)])
    assert (shares.workloads, shares.unattributed_uj) == ({"a": 600, "b": 300}, 0)


def test_children_and_residual() -> None:
    pod = Usage("pod", 100, (Usage("app", 60), Usage("sidecar", 20)))
    shares = attribute(1_000, 0, 100, [pod])
    assert shares.workloads == {"pod": 1_000, "app": 600, "sidecar": 200}
    assert shares.residual_uj == {"pod": 200}  # pause container and exited processes


def test_no_cpu_anywhere_leaves_everything_unattributed() -> None:
    shares = attribute(500, 100, 0, [Usage("a", 0)])
    assert (shares.unattributed_uj, shares.workloads) == (400, {"a": 0})
