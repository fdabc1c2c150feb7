"""Two-sample Kolmogorov-Smirnov statistic of tumbling windows against the reference.

Window values are counted between the reference's percentile points (a
mergeable sketch, like PSI's bins); the statistic is the largest gap between
the window's and the reference's distribution functions at those points. It
can only understate the exact KS statistic (by at most the reference mass
between two points), so alarms stay within the budget.

>>> ks = KsWindow(grid=[0.0, 1.0, 2.0], reference_cdf=[0.0, 0.5, 1.0], window=4)
>>> [ks.add(x) for x in (2.0, 2.0, 1.5, 1.8)][-1]
0.5
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Sequence


class KsWindow:
    def __init__(self, grid: Sequence[float], reference_cdf: Sequence[float], window: int):
        self.grid = list(grid)
        self.reference_cdf = list(reference_cdf)
        self.window = window
        self._counts = [0] * (len(self.grid) + 1)
        self._n = 0
        self.last_value: float | None = None

    def add(self, value: float) -> float | None:
        """Count one value; the statistic when a window closes, else ``None``."""
        self._counts[bisect_left(self.grid, value)] += 1  # ≤ grid[j] ⇔ index ≤ j
        self._n += 1
        if self._n < self.window:
            return None
        below, gap = 0, 0.0
        for j, reference in enumerate(self.reference_cdf):
            below += self._counts[j]
            gap = max(gap, abs(below / self._n - reference))
        self.last_value = gap
        self._counts = [0] * len(self._counts)
        self._n = 0
        return gap

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self._counts), "n": self._n, "last_value": self.last_value}

    def restore(self, state: dict[str, Any]) -> None:
        self._counts = list(state["counts"])
        self._n = state["n"]
        self.last_value = state["last_value"]
