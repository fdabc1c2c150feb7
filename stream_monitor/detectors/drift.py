"""ADWIN and Page-Hinkley: river's detectors, wrapped so their state can be saved.

Decisions are river's own (the objects *are* river's); a snapshot is the
pickle of the river object together with river's version, since river's
compiled ADWIN pickles are version-bound.

>>> import random
>>> rng = random.Random(7)
>>> ph = PageHinkleyDetector(delta=0.25, threshold=50.0)
>>> [i for i in range(2000) if ph.update(rng.gauss(0 if i < 1000 else 1.5, 1))]
[1040]
"""

from __future__ import annotations

import pickle
from typing import Any

import river
from river import drift

from ..errors import StateError


class _RiverDetector:
    name = ""

    def __init__(self, detector: Any):
        self._detector = detector

    def update(self, value: float) -> bool:
        """Feed one value; ``True`` when the detector signals a change at this value."""
        self._detector.update(value)
        return self._detector.drift_detected

    @property
    def drift_detected(self) -> bool:
        return self._detector.drift_detected

    def snapshot(self) -> dict[str, Any]:
        return {"river": river.__version__, "pickle": pickle.dumps(self._detector, protocol=5)}

    def restore(self, state: dict[str, Any]) -> None:
        if state["river"] != river.__version__:
            raise StateError(f"{self.name} state was saved by river {state['river']}, "
                             f"this is river {river.__version__}")
        self._detector = pickle.loads(state["pickle"])


class AdwinDetector(_RiverDetector):
    """river's ADWIN: adaptive window, change in the mean."""

    name = "adwin"

    def __init__(self, delta: float = 0.002, clock: int = 32, max_buckets: int = 5,
                 min_window_length: int = 5, grace_period: int = 10):
        super().__init__(drift.ADWIN(delta=delta, clock=clock, max_buckets=max_buckets,
                                     min_window_length=min_window_length, grace_period=grace_period))
        self.delta = delta

    @property
    def window_mean(self) -> float:
        return float(self._detector.estimation)

    @property
    def window_width(self) -> int:
        return int(self._detector.width)


class PageHinkleyDetector(_RiverDetector):
    """river's two-sided Page-Hinkley test: a shift of the mean up or down."""

    name = "page_hinkley"

    def __init__(self, min_instances: int = 30, delta: float = 0.25, threshold: float = 50.0,
                 alpha: float = 0.9999, mode: str = "both"):
        super().__init__(drift.PageHinkley(min_instances=min_instances, delta=delta,
                                           threshold=threshold, alpha=alpha, mode=mode))
        self.threshold = threshold

    @property
    def statistic(self) -> float:
        """The larger of the two cumulative deviations (what is compared with the threshold)."""
        d = self._detector
        return float(max(d._sum_increase - d._min_increase, d._max_decrease - d._sum_decrease))

    @property
    def running_mean(self) -> float:
        return float(self._detector._x_mean.get())
