"""Two-sample Kolmogorov-Smirnov statistic of tumbling windows against the reference.

Window values are counted between the reference's percentile points (a
mergeable sketch, like PSI's bins); the statistic is the largest gap between
the window's and the reference's distribution functions at those points. It
can only understate the exact KS statistic (by at most the reference mass
between two points), so alarms stay within the budget.

>>> ks = KsWindow(grid=[0.0, 1.0, 2.0], reference_cdf=[0.0, 0.5, 1.0], window=4)
>>> ks.add_many(np.array([2, 2, 2, 2]))  # the cells of 2.0, 2.0, 1.5, 1.8: bisect_left(grid, value)
[(3, 0.5)]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .window import TumblingCounts


class KsWindow:
    def __init__(self, grid: Sequence[float], reference_cdf: Sequence[float], window: int):
        self.grid = list(grid)
        self.reference_cdf = list(reference_cdf)
        self.window = window
        self._window = TumblingCounts(len(self.grid) + 1, window)
        self.last_value: float | None = None

    def add_many(self, cells: np.ndarray) -> list[tuple[int, float]]:
        """Count a batch, given each value's cell (``bisect_left(grid, value)``, int64: a value ≤ grid[j]
        ⇔ its cell ≤ j); per window closed: its position in the batch and the statistic."""
        return [(position, self._gap(counts)) for position, counts in self._window.add_many(cells)]

    def _gap(self, counts: Sequence[int]) -> float:
        below, gap = 0, 0.0
        for j, reference in enumerate(self.reference_cdf):
            below += counts[j]
            gap = max(gap, abs(below / self.window - reference))
        self.last_value = gap
        return gap

    def snapshot(self) -> dict[str, Any]:
        return {**self._window.snapshot(), "last_value": self.last_value}

    def restore(self, state: dict[str, Any]) -> None:
        self._window.restore(state)
        self.last_value = state["last_value"]
