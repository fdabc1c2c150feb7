"""Reference ranks: what ADWIN and Page-Hinkley see instead of raw values.

A value becomes its mid-rank ``u`` in the reference (0…1; ties share the middle
of their range) and, for Page-Hinkley, the normal score ``z = Φ⁻¹(u)``. On data
drawn like the reference, ``u`` is uniform and ``z`` standard normal whatever
the feature's distribution (discrete data: less variable), so heavy tails
cannot raise alarms and one calibration serves every feature. Values beyond
the reference range are clipped to half a reference step past its ends.

>>> t = RankTransform([0.0, 1.0, 2.0, 3.0, 4.0], reference_events=1000)
>>> [round(t.rank(x), 4) for x in (-5.0, 0.5, 2.0, 9.0)]
[0.0005, 0.125, 0.5, 0.9995]
>>> round(t.normal_score(2.0), 6)
0.0
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from statistics import NormalDist
from typing import Sequence

_NORMAL = NormalDist()


class RankTransform:
    def __init__(self, grid: Sequence[float], reference_events: int):
        """``grid``: reference quantiles at equal steps of probability, from minimum to maximum."""
        self.grid = list(grid)
        self._steps = len(self.grid) - 1
        self._floor = 0.5 / max(reference_events, 1)

    def rank(self, value: float) -> float:
        grid = self.grid
        low = bisect_left(grid, value)
        high = bisect_right(grid, value)
        if high > low:  # the value is on the grid: the middle of its tie range
            u = (low + high - 1) / 2 / self._steps
        elif low == 0 or low > self._steps:
            u = 0.0 if low == 0 else 1.0
        else:  # between two grid points: linear
            left, right = grid[low - 1], grid[low]
            u = (low - 1 + (value - left) / (right - left)) / self._steps
        return min(max(u, self._floor), 1.0 - self._floor)

    def normal_score(self, value: float) -> float:
        return _inv_cdf(self.rank(value))


_inv_cdf = _NORMAL.inv_cdf


def normal_score(rank: float) -> float:
    """Φ⁻¹ of a rank from :meth:`RankTransform.rank` (never 0 or 1, so always finite)."""
    return _inv_cdf(rank)
