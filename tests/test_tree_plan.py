"""The tree's plan is kept while its cgroups stay: a kept plan gives the same tree as a fresh build_tree, on
every fixture node and with any deltas, and a plan is made again when the cgroups change."""

from __future__ import annotations

import random

import pytest
from helpers import FIXTURES

from exporter.workloads.cgroups import CgroupTree
from exporter.workloads.tree import TreeBuilder, build_tree

NODES = sorted(p for p in (FIXTURES.parent / "nodes").iterdir() if (p / "cgroup").is_dir())


@pytest.mark.parametrize("node", NODES, ids=lambda p: p.name)
def test_a_kept_plan_builds_the_same_tree(node: object) -> None:
    walker = CgroupTree(node / "cgroup", watch=False)  # type: ignore[operator]
    usages = walker.read()
    walker.close()
    rng = random.Random(str(node))
    builder = TreeBuilder()
    for _ in range(5):
        deltas = {u.path: rng.choice((0, 1, rng.randint(0, 10**7))) for u in usages}
        assert builder.build(usages, deltas) == build_tree(usages, deltas)
    plan = builder._plan
    fewer = usages[: len(usages) // 2]
    deltas = {u.path: rng.randint(0, 10**6) for u in fewer}
    assert builder.build(fewer, deltas) == build_tree(fewer, deltas)
    assert builder._plan is not plan or len(fewer) == len(usages)
