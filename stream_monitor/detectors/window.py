"""Counts per cell over tumbling windows: the state that PSI, KS and data quality share.

A window closes after ``window`` values; its counts are a mergeable sketch
(the windows of several partitions add up cell by cell).

>>> w = TumblingCounts(cells=2, window=3)
>>> w.add_many(np.array([0, 1, 1, 0, -1], dtype=np.int64))
[(2, [1, 2])]
>>> w.counts.tolist(), w.n
([1, 0], 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .kernels import tumble


class TumblingCounts:
    def __init__(self, cells: int, window: int):
        self.window = window
        self.counts = np.zeros(cells, dtype=np.int64)
        self.n = 0
        self._no_close = (np.empty((1, cells), dtype=np.int64), np.empty(1, dtype=np.int64))

    def add_many(self, cells: np.ndarray) -> list[tuple[int, list[int]]]:
        """Count one cell per value (int64; −1: in the window, in no cell); per window closed: the
        position of the value that closed it and its counts."""
        most = (self.n + len(cells)) // self.window
        if most:
            buffers = np.empty((most, len(self.counts)), dtype=np.int64), np.empty(most, dtype=np.int64)
        else:
            buffers = self._no_close
        closed, self.n = tumble(cells, self.counts, self.n, self.window, *buffers)
        return list(zip(buffers[1][:closed].tolist(), buffers[0][:closed].tolist()))

    def snapshot(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "n": self.n}

    def restore(self, state: dict[str, Any]) -> None:
        self.counts = np.array(state["counts"], dtype=np.int64)
        self.n = state["n"]
