"""Population Stability Index over tumbling windows of bin counts.

PSI = Σ (cᵢ − rᵢ) · ln(cᵢ / rᵢ) over bins, with current (c) and reference (r)
proportions clipped below at ``epsilon`` so an empty bin gives a finite value.

>>> round(psi([0.5, 0.5], [0.5, 0.5]), 6)
0.0
>>> round(psi([0.5, 0.5], [0.9, 0.1]), 4)
0.8789
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .window import TumblingCounts


def psi(reference: Sequence[float], current: Sequence[float], epsilon: float = 1e-4) -> float:
    """PSI of two proportion vectors over the same bins."""
    r = np.maximum(np.asarray(reference, dtype=float), epsilon)
    c = np.maximum(np.asarray(current, dtype=float), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


class PsiWindow:
    """Counts bin indices over a tumbling window of ``window`` values.

    ``add_many`` returns the PSI of each window a batch closes. The counts
    are a mergeable sketch: windows of several partitions add up bin by bin.

    >>> w = PsiWindow([0.5, 0.5], window=4)
    >>> [(position, value > 0.1) for position, value, _ in w.add_many(np.array([0, 1, 1, 1]))]
    [(3, True)]
    >>> w.last_counts
    [1, 3]
    """

    def __init__(self, reference: Sequence[float], window: int, epsilon: float = 1e-4):
        self.reference = [float(p) for p in reference]
        self.window = window
        self.epsilon = epsilon
        self._window = TumblingCounts(len(self.reference), window)
        self.last_counts: list[int] | None = None
        self.last_value: float | None = None

    def add_many(self, bins: np.ndarray) -> list[tuple[int, float, list[int]]]:
        """Count a batch of bin indices (int64); per window closed: its position in the batch, its PSI
        and its counts."""
        return [(position, self._closed(counts), counts) for position, counts in self._window.add_many(bins)]

    def _closed(self, counts: list[int]) -> float:
        self.last_value = psi(self.reference, [c / self.window for c in counts], self.epsilon)
        self.last_counts = counts
        return self.last_value

    def snapshot(self) -> dict[str, Any]:
        return {**self._window.snapshot(), "last_counts": self.last_counts, "last_value": self.last_value}

    def restore(self, state: dict[str, Any]) -> None:
        self._window.restore(state)
        self.last_counts = state["last_counts"]
        self.last_value = state["last_value"]
