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


def psi(reference: Sequence[float], current: Sequence[float], epsilon: float = 1e-4) -> float:
    """PSI of two proportion vectors over the same bins."""
    r = np.maximum(np.asarray(reference, dtype=float), epsilon)
    c = np.maximum(np.asarray(current, dtype=float), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


class PsiWindow:
    """Counts bin indices over a tumbling window of ``window`` values.

    ``add`` returns the PSI when a window closes, else ``None``. The counts
    are a mergeable sketch: windows of several partitions add up bin by bin.

    >>> w = PsiWindow([0.5, 0.5], window=4)
    >>> [w.add(i) for i in (0, 1, 1, 1)][-1] > 0.1
    True
    >>> w.last_counts
    [1, 3]
    """

    def __init__(self, reference: Sequence[float], window: int, epsilon: float = 1e-4):
        self.reference = [float(p) for p in reference]
        self.window = window
        self.epsilon = epsilon
        self._counts = [0] * len(self.reference)
        self._n = 0
        self.last_counts: list[int] | None = None
        self.last_value: float | None = None

    def add(self, bin_index: int) -> float | None:
        self._counts[bin_index] += 1
        self._n += 1
        if self._n < self.window:
            return None
        current = [c / self._n for c in self._counts]
        self.last_value = psi(self.reference, current, self.epsilon)
        self.last_counts = self._counts
        self._counts = [0] * len(self.reference)
        self._n = 0
        return self.last_value

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self._counts), "n": self._n, "last_counts": self.last_counts,
                "last_value": self.last_value}

    def restore(self, state: dict[str, Any]) -> None:
        self._counts = list(state["counts"])
        self._n = state["n"]
        self.last_counts = state["last_counts"]
        self.last_value = state["last_value"]
