"""A tumbling-window percentile on a log-spaced histogram (bounded state, ~2 % resolution).

>>> p = WindowPercentile(0.95, window=100)
>>> [p.add(float(ms)) for ms in range(1, 101)][-1]
95.39
"""

from __future__ import annotations

import math
from typing import Any

_RATIO = 1.02
_LOWEST = 1e-3  # values at or below fall in the first bucket
_BUCKETS = int(math.log(1e8 / _LOWEST) / math.log(_RATIO)) + 2


def percentile_cell(value: float) -> int:
    """The histogram cell of one value (cells add up exactly across partitions)."""
    return 0 if value <= _LOWEST else min(_BUCKETS - 1, 1 + int(math.log(value / _LOWEST) / math.log(_RATIO)))


def percentile_of(counts: dict[int, int], quantile: float) -> float:
    """The ``quantile`` of the values counted in ``counts`` (cell → count): its cell's upper edge, so
    it never understates the percentile.

    >>> from collections import Counter
    >>> percentile_of(Counter(percentile_cell(float(ms)) for ms in range(1, 101)), 0.95)
    95.39
    """
    rank = math.ceil(quantile * sum(counts.values()))
    seen = 0
    for cell in sorted(counts):
        seen += counts[cell]
        if seen >= rank:
            break
    return round(_LOWEST * _RATIO ** cell, 2)


class WindowPercentile:
    def __init__(self, quantile: float, window: int):
        self.quantile = quantile
        self.window = window
        self._counts: dict[int, int] = {}
        self._n = 0
        self.last_value: float | None = None

    def add(self, value: float) -> float | None:
        bucket = percentile_cell(value)
        self._counts[bucket] = self._counts.get(bucket, 0) + 1
        self._n += 1
        if self._n < self.window:
            return None
        self.last_value = percentile_of(self._counts, self.quantile)
        self._counts = {}
        self._n = 0
        return self.last_value

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self._counts), "n": self._n, "last_value": self.last_value}

    def restore(self, state: dict[str, Any]) -> None:
        self._counts = {int(k): v for k, v in state["counts"].items()}
        self._n = state["n"]
        self.last_value = state["last_value"]
