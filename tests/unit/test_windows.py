"""The batch windows (PSI, KS, data quality) close where the per-value oracles close, with the same
statistics, however a seeded stream is cut into batches and wherever it is snapshotted."""

from __future__ import annotations

import pickle
from bisect import bisect_left

import numpy as np
import pytest

from stream_monitor.detectors import PsiWindow
from stream_monitor.detectors.ks import KsWindow
from stream_monitor.detectors.quality import CHECKS, QualityWindow

from ..oracles import ks_values, psi_values, quality_rates

N, WINDOW = 5_000, 333


def cut(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Random batch bounds over ``n`` values (batches of 1 … 700, some empty)."""
    bounds, start = [], 0
    while start < n:
        stop = min(n, start + int(rng.integers(0, 700)))
        bounds.append((start, stop))
        start = stop
    return bounds


def batched(make, cells: np.ndarray, seed: int) -> list[tuple]:
    """Every window closed by feeding ``cells`` in random batches, restoring a fresh window from a
    pickled snapshot after every third batch; positions made absolute."""
    rng = np.random.default_rng(seed)
    window, out = make(), []
    for i, (start, stop) in enumerate(cut(len(cells), rng)):
        out.extend((start + position, *rest) for position, *rest in window.add_many(cells[start:stop]))
        if i % 3 == 2:
            state = pickle.loads(pickle.dumps(window.snapshot()))
            window = make()
            window.restore(state)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_psi_window_equals_the_oracle(seed):
    rng = np.random.default_rng(100 + seed)
    reference = [0.4, 0.3, 0.2, 0.1]
    bins = rng.choice(4, p=[0.1, 0.2, 0.3, 0.4], size=N).astype(np.int64)
    got = batched(lambda: PsiWindow(reference, WINDOW), bins, seed)
    expected = psi_values(reference, bins.tolist(), WINDOW)
    assert len(got) == N // WINDOW == 15
    assert got == expected


@pytest.mark.parametrize("seed", range(5))
def test_ks_window_equals_the_oracle(seed):
    rng = np.random.default_rng(200 + seed)
    grid = np.quantile(rng.normal(size=2_000), np.linspace(0, 1, 101)).tolist()
    cdf = [j / 100 for j in range(101)]
    values = rng.normal(0.3, 1.0, N)
    cells = np.array([bisect_left(grid, v) for v in values.tolist()], dtype=np.int64)
    got = batched(lambda: KsWindow(grid, cdf, WINDOW), cells, seed)
    assert got == ks_values(grid, cdf, values.tolist(), WINDOW)
    assert len(got) == 15


@pytest.mark.parametrize("seed", range(5))
def test_quality_window_equals_the_oracle(seed):
    rng = np.random.default_rng(300 + seed)
    checks = ["missing", "type_mismatch", "non_finite", "out_of_range"]
    # codes index CHECKS (−1: fine); unseen_category is not one of this window's checks: counted in no cell
    codes = rng.choice([-1, 0, 1, 2, 3, 4], p=[0.8, 0.05, 0.05, 0.03, 0.05, 0.02], size=N).astype(np.int64)
    got = batched(lambda: QualityWindow(checks, WINDOW), codes, seed)
    problems = [None if c < 0 else CHECKS[c] for c in codes.tolist()]
    assert got == quality_rates(checks, problems, WINDOW)
    assert len(got) == 15
