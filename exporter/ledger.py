"""Monotonic energy accumulators in integer µJ (no I/O).

Exported joule counters are these sums, never raw hardware values: a hardware counter wraps and resets,
a ledger entry only ever grows.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Ledger(Generic[K]):
    def __init__(self) -> None:
        self._totals: dict[K, int] = {}

    def add(self, key: K, microjoules: int) -> None:
        if microjoules < 0:
            raise ValueError(f"negative energy {microjoules} µJ for {key!r}")
        self._totals[key] = self._totals.get(key, 0) + microjoules

    def get(self, key: K) -> int:
        return self._totals.get(key, 0)

    def items(self) -> Iterator[tuple[K, int]]:
        return iter(sorted(self._totals.items(), key=lambda item: repr(item[0])))

    def __len__(self) -> int:
        return len(self._totals)
