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


class WindowPercentile:
    def __init__(self, quantile: float, window: int):
        self.quantile = quantile
        self.window = window
        self._counts: dict[int, int] = {}
        self._n = 0
        self.last_value: float | None = None

    def add(self, value: float) -> float | None:
        bucket = 0 if value <= _LOWEST else min(_BUCKETS - 1, 1 + int(math.log(value / _LOWEST) / math.log(_RATIO)))
        self._counts[bucket] = self._counts.get(bucket, 0) + 1
        self._n += 1
        if self._n < self.window:
            return None
        rank = math.ceil(self.quantile * self._n)
        seen = 0
        for bucket in sorted(self._counts):
            seen += self._counts[bucket]
            if seen >= rank:
                break
        # the bucket's upper edge: never understates the percentile
        self.last_value = round(_LOWEST * _RATIO ** bucket, 2)
        self._counts = {}
        self._n = 0
        return self.last_value

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self._counts), "n": self._n, "last_value": self.last_value}

    def restore(self, state: dict[str, Any]) -> None:
        self._counts = {int(k): v for k, v in state["counts"].items()}
        self._n = state["n"]
        self.last_value = state["last_value"]
