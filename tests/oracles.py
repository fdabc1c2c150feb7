"""Per-value reference implementations the batch windows are held to (used by tests only).

Plain Python, one value at a time, sharing no code with the compiled
``tumble`` kernel: a tumbling window of per-cell counts, and the PSI, KS and
data-quality statistics of each window it closes.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

import numpy as np

from stream_monitor.detectors import psi


def tumbling(cells: Sequence[int], n_cells: int, window: int, counts: Sequence[int] | None = None,
             n: int = 0) -> tuple[list[tuple[int, list[int]]], list[int], int]:
    """Count ``cells`` one value at a time (−1: counted in the window, in no cell), starting from
    ``counts`` and ``n`` values already in the window; the windows closed as (position, counts), and
    the open window's counts and size."""
    counts = list(counts) if counts is not None else [0] * n_cells
    closed = []
    for position, cell in enumerate(cells):
        if cell >= 0:
            counts[cell] += 1
        n += 1
        if n == window:
            closed.append((position, counts))
            counts, n = [0] * n_cells, 0
    return closed, counts, n


def psi_values(reference: Sequence[float], bins: Sequence[int], window: int,
               epsilon: float = 1e-4) -> list[tuple[int, float, list[int]]]:
    closed, _, _ = tumbling(bins, len(reference), window)
    return [(p, psi(reference, [c / window for c in counts], epsilon), counts) for p, counts in closed]


def ks_values(grid: Sequence[float], reference_cdf: Sequence[float], values: Sequence[float],
              window: int) -> list[tuple[int, float]]:
    closed, _, _ = tumbling([bisect_left(grid, v) for v in values], len(grid) + 1, window)
    out = []
    for position, counts in closed:
        below, gap = 0, 0.0
        for j, reference in enumerate(reference_cdf):
            below += counts[j]
            gap = max(gap, abs(below / window - reference))
        out.append((position, gap))
    return out


def quality_rates(checks: Sequence[str], problems: Sequence[str | None],
                  window: int) -> list[tuple[int, dict[str, float]]]:
    """Each value's problem (a check's name, ``None`` when fine)."""
    cells = [-1 if p is None or p not in checks else list(checks).index(p) for p in problems]
    closed, _, _ = tumbling(cells, len(checks), window)
    return [(p, {c: k / window for c, k in zip(checks, counts)}) for p, counts in closed]


def one(window, cell):
    """Feed a batch window a single value; the statistic if it closed a window, else ``None``."""
    closed = window.add_many(np.array([cell], dtype=np.int64))
    return closed[0][1] if closed else None
