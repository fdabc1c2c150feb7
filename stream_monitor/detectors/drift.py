"""ADWIN and Page-Hinkley: river's algorithms, a batch of values per call.

Both decide exactly as ``river.drift.ADWIN`` and ``river.drift.PageHinkley``
fed the same values (``tests/unit/test_detectors.py`` and ``tests/unit/test_kernels.py``
pin it on seeded streams, river itself as the oracle), including river's reset
at the value after a detection. The loops are compiled (:mod:`.kernels`), so a
column's batch of values costs one call instead of one Python call per value,
and the state is a handful of small arrays — what a snapshot stores.

>>> import random
>>> rng = random.Random(7)
>>> ph = PageHinkleyDetector(delta=0.25, threshold=50.0)
>>> [i for i in range(2000) if ph.update(rng.gauss(0 if i < 1000 else 1.5, 1))]
[1040]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import StateError
from . import kernels as k

_MODES = {"both": 0, "up": 1, "down": 2}


class AdwinDetector:
    """ADWIN: adaptive window, change in the mean (river's algorithm and defaults)."""

    name = "adwin"

    def __init__(self, delta: float = 0.002, clock: int = 32, max_buckets: int = 5,
                 min_window_length: int = 5, grace_period: int = 10):
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self._totals = np.zeros((k.ADWIN_ROWS, max_buckets + 1))
        self._variances = np.zeros((k.ADWIN_ROWS, max_buckets + 1))
        self._fill = np.zeros(k.ADWIN_ROWS, dtype=np.int64)
        self._scalars = np.zeros(4)
        self._counters = np.zeros(6, dtype=np.int64)
        self._counters[k.ROWS] = 1

    def update_many(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Feed float64 ``values`` in order; per value: detected?, window mean, window width."""
        return self.update_levels(values)[:3]

    def update_levels(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`update_many`, and per value the level after the change where one is detected (NaN
        elsewhere): the mean of the newest sub-window at the window's most significant split, taken
        before the cut drops the old values — not the whole window's mean, which is mostly old data."""
        n = values.shape[0]
        detected = np.empty(n, dtype=np.bool_)
        means = np.empty(n)
        widths = np.empty(n)
        levels = np.empty(n)
        k.adwin_batch(values, self._totals, self._variances, self._fill, self._scalars, self._counters,
                      float(self.delta), int(self.clock), int(self.max_buckets), int(self.min_window_length),
                      int(self.grace_period), detected, means, widths, levels)
        return detected, means, widths, levels

    def update(self, value: float) -> bool:
        """Feed one value; ``True`` when ADWIN signals a change at this value."""
        return bool(self.update_many(np.array([value], dtype=np.float64))[0][0])

    @property
    def drift_detected(self) -> bool:
        return bool(self._counters[k.DETECTED])

    @property
    def window_mean(self) -> float:
        width = self._scalars[k.WIDTH]
        return float(self._scalars[k.TOTAL] / width) if width else 0.0

    @property
    def window_width(self) -> int:
        return int(self._scalars[k.WIDTH])

    def snapshot(self) -> dict[str, Any]:
        rows = int(self._counters[k.ROWS])
        return {"kind": "adwin/1", "totals": self._totals[:rows].tobytes(),
                "variances": self._variances[:rows].tobytes(), "fill": self._fill[:rows].astype(np.int8).tobytes(),
                "scalars": self._scalars.tobytes(), "counters": self._counters.tobytes()}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "adwin/1":
            raise StateError("ADWIN state of an older version (a river pickle): it cannot be continued")
        counters = np.frombuffer(state["counters"], dtype=np.int64).copy()
        rows = int(counters[k.ROWS])
        width = self.max_buckets + 1
        self._totals[:] = 0.0
        self._variances[:] = 0.0
        self._fill[:] = 0
        self._totals[:rows] = np.frombuffer(state["totals"], dtype=np.float64).reshape(rows, width)
        self._variances[:rows] = np.frombuffer(state["variances"], dtype=np.float64).reshape(rows, width)
        self._fill[:rows] = np.frombuffer(state["fill"], dtype=np.int8)
        self._scalars = np.frombuffer(state["scalars"], dtype=np.float64).copy()
        self._counters = counters


class PageHinkleyDetector:
    """Page-Hinkley: a shift of the mean (two-sided by default), with river's update rule."""

    name = "page_hinkley"

    def __init__(self, min_instances: int = 30, delta: float = 0.25, threshold: float = 50.0,
                 alpha: float = 0.9999, mode: str = "both"):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, not {mode!r}")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._state = np.zeros(k.PH_SLOTS)
        self._state[[k.PH_LOWEST, k.PH_HIGHEST, k.PH_LOWEST2, k.PH_HIGHEST2]] = np.inf, -1.0, np.inf, -np.inf

    def update_many(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed float64 ``values`` in order; per value: detected?, statistic after it."""
        return self.update_levels(values, values)[:2]

    def update_levels(self, values: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`update_many`, and per value the level after the change where one is detected (NaN
        elsewhere): the mean of ``raw`` (each value in its own units, e.g. before a rank transform)
        since the change began, i.e. since the cumulative sum that crossed the threshold was at its
        extreme."""
        n = values.shape[0]
        detected = np.empty(n, dtype=np.bool_)
        statistics = np.empty(n)
        levels = np.empty(n)
        k.page_hinkley_batch(values, raw, self._state, float(self.min_instances), float(self.delta),
                             float(self.threshold), float(self.alpha), _MODES[self.mode], detected, statistics,
                             levels)
        return detected, statistics, levels

    def update(self, value: float) -> bool:
        """Feed one value; ``True`` when the detector signals a change at this value."""
        return bool(self.update_many(np.array([value], dtype=np.float64))[0][0])

    @property
    def drift_detected(self) -> bool:
        return bool(self._state[k.PH_DETECTED])

    @property
    def statistic(self) -> float:
        """The larger of the two cumulative deviations (what is compared with the threshold)."""
        s = self._state
        return float(max(s[k.PH_UP] - s[k.PH_LOWEST], s[k.PH_HIGHEST] - s[k.PH_DOWN]))

    @property
    def running_mean(self) -> float:
        return float(self._state[k.PH_MEAN])

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "page_hinkley/1", "state": self._state.tobytes()}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "page_hinkley/1":
            raise StateError("Page-Hinkley state of an older version (a river pickle): it cannot be continued")
        saved = np.frombuffer(state["state"], dtype=np.float64)
        self._state = np.zeros(k.PH_SLOTS)
        self._state[:len(saved)] = saved
        if len(saved) < k.PH_SLOTS:  # river's seven slots only (an older version): levels count from here on
            s = self._state
            s[[k.PH_LOWEST2, k.PH_HIGHEST2]] = np.inf, -np.inf
            s[k.PH_MARKS::3] = s[k.PH_N]
