"""The opt-in per-process view (`process_metrics`): the same split as for workloads, over processes.

A separate view of the same energy, bounded to `process_top_n` series plus `comm="other"` (ledger.TopProcesses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.accounting import Weights
from exporter.attribution import Usage
from exporter.ledger import TopProcesses
from exporter.snapshot import ProcessState
from exporter.sysfs import UNLIMITED, FdBudget
from exporter.workloads.processes import ProcessKey, ProcessTable
from exporter.workloads.procfs import clock_ticks_per_second

if TYPE_CHECKING:
    from exporter.config import Config


class ProcessView:
    def __init__(self, config: Config, budget: FdBudget = UNLIMITED) -> None:
        self.table = ProcessTable(config.proc_path, budget)
        self.top: TopProcesses[ProcessKey] = TopProcesses(config.process_top_n, config.workload_ttl)

    def weights(self, busy_us: int) -> Weights[ProcessKey]:
        """This tick's CPU µs per process, as weights of the node's busy time."""
        usec_per_tick = 1_000_000 // clock_ticks_per_second()
        usages = [Usage(key, ticks * usec_per_tick) for key, ticks in self.table.read().items()]
        return Weights(busy_us, usages)

    def add(self, now: float, shares: dict[ProcessKey, dict[str, int]]) -> None:
        self.top.add_tick(now, shares)

    def states(self) -> tuple[tuple[ProcessState, ...], tuple[tuple[str, int], ...]]:
        exported = tuple(ProcessState(k, tuple(sorted(e.items()))) for k, e in self.top.exported())
        return exported, tuple(sorted(self.top.other_uj.items()))

    def close(self) -> None:
        self.table.close()
