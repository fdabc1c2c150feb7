"""Data quality of one column over tumbling windows of events.

Counts, per window: missing values (absent or null), type mismatches (a
non-number in a numeric column), non-finite numbers, values outside the
reference range (numeric) and categories never seen in the reference
(categorical). ``add`` returns each check's share of the window when the
window closes.

>>> q = QualityWindow(["missing", "type_mismatch"], window=4)
>>> [q.add(("missing",)), q.add(()), q.add(()), q.add(("missing",))][-1]
{'missing': 0.5, 'type_mismatch': 0.0}
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

CHECKS = ("missing", "type_mismatch", "non_finite", "out_of_range", "unseen_category")


class QualityWindow:
    def __init__(self, checks: Sequence[str], window: int):
        self.checks = list(checks)
        self.window = window
        self._counts = dict.fromkeys(self.checks, 0)
        self._n = 0
        self.last_rates: dict[str, float] = {}

    def add(self, problems: Iterable[str]) -> dict[str, float] | None:
        """Count one event's problems (empty when it is fine); the rates when a window closes."""
        for problem in problems:
            self._counts[problem] += 1
        return self._next()

    def add_one(self, problem: str | None) -> dict[str, float] | None:
        """:meth:`add` for at most one problem per event (the service's case), without a loop."""
        if problem is not None:
            self._counts[problem] += 1
        return self._next()

    def _next(self) -> dict[str, float] | None:
        self._n += 1
        if self._n < self.window:
            return None
        self.last_rates = {check: count / self._n for check, count in self._counts.items()}
        self._counts = dict.fromkeys(self.checks, 0)
        self._n = 0
        return self.last_rates

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self._counts), "n": self._n, "last_rates": dict(self.last_rates)}

    def restore(self, state: dict[str, Any]) -> None:
        self._counts = dict(state["counts"])
        self._n = state["n"]
        self.last_rates = dict(state["last_rates"])
