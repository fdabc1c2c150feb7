"""Data quality of one column over tumbling windows of events.

Counts, per window: missing values (absent or null), type mismatches (a
non-number in a numeric column), non-finite numbers, values outside the
reference range (numeric) and categories never seen in the reference
(categorical). ``add_many`` returns each check's share of each window a batch
closes; a value has at most one problem, given as an index into :data:`CHECKS`
(−1: none).

>>> q = QualityWindow(["missing", "type_mismatch"], window=4)
>>> q.add_many(np.array([0, -1, -1, 0]))
[(3, {'missing': 0.5, 'type_mismatch': 0.0})]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .window import TumblingCounts

CHECKS = ("missing", "type_mismatch", "non_finite", "out_of_range", "unseen_category")


class QualityWindow:
    def __init__(self, checks: Sequence[str], window: int):
        self.checks = list(checks)
        self.window = window
        self._window = TumblingCounts(len(self.checks), window)
        # a problem code (an index into CHECKS, −1 for none, read at the end) → this window's cell
        self._cell_of_code = np.array([self.checks.index(c) if c in self.checks else -1 for c in CHECKS] + [-1],
                                      dtype=np.int64)
        self.last_rates: dict[str, float] = {}

    def add_many(self, codes: np.ndarray) -> list[tuple[int, dict[str, float]]]:
        """Count a batch of events with at most one problem each, as problem codes (int64: an index into
        :data:`CHECKS`, −1 for none); per window closed: its position in the batch and the rates."""
        closed = self._window.add_many(self._cell_of_code[codes])
        return [(position, self._rates(counts)) for position, counts in closed]

    def _rates(self, counts: list[int]) -> dict[str, float]:
        self.last_rates = {check: count / self.window for check, count in zip(self.checks, counts)}
        return self.last_rates

    def snapshot(self) -> dict[str, Any]:
        return {**self._window.snapshot(), "last_rates": dict(self.last_rates)}

    def restore(self, state: dict[str, Any]) -> None:
        self._window.restore(state)
        self.last_rates = dict(state["last_rates"])
