"""The compiled kernels equal what they replace, value by value: river's ADWIN and PageHinkley,
the reference rank and its normal score, the PSI bin and the KS cell (decisions never
change for speed)."""

from __future__ import annotations

import random
from bisect import bisect_left
from statistics import NormalDist

import numpy as np
import pytest
from river import drift

from stream_monitor.detectors import AdwinDetector, PageHinkleyDetector
from stream_monitor.detectors import kernels
from stream_monitor.detectors.transform import RankTransform
from stream_monitor.reference import _numeric_bin


def drifting(seed: int, n: int, shift_every: int = 3000) -> list[float]:
    """Ranks as the engine feeds them: uniform, with the mean moving every ``shift_every`` values."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        centre = 0.5 + 0.15 * ((i // shift_every) % 3 - 1)
        out.append(min(max(rng.gauss(centre, 0.29), 0.0005), 0.9995))
    return out


def river_run(detector, values):
    detections, stats = [], []
    for i, x in enumerate(values):
        detector.update(x)
        if detector.drift_detected:
            detections.append(i)
        stats.append(detector.estimation if isinstance(detector, drift.ADWIN) else None)
    return detections, stats


def cut_into_batches(values, seed):
    rng = random.Random(seed)
    i, out = 0, []
    while i < len(values):
        size = rng.choice([1, 2, 7, 100, 499, 1000])
        out.append(np.array(values[i:i + size], dtype=np.float64))
        i += size
    return out


@pytest.mark.parametrize("seed,delta,clock", [(1, 0.002, 32), (2, 1e-5, 32), (3, 0.3, 1), (4, 0.002, 5)])
def test_adwin_batches_equal_river_value_by_value(seed, delta, clock):
    """Same detections and the same window mean after every value, whatever the batch cuts."""
    values = drifting(seed, 20_000)
    expected, means = river_run(drift.ADWIN(delta=delta, clock=clock), values)
    ours = AdwinDetector(delta=delta, clock=clock)
    got, got_means, offset = [], [], 0
    for batch in cut_into_batches(values, seed):
        detected, window_means, widths = ours.update_many(batch)
        got.extend(int(i) + offset for i in np.flatnonzero(detected))
        got_means.extend(window_means.tolist())
        offset += len(batch)
    assert got == expected and len(expected) >= (1 if delta > 1e-4 else 0)
    assert got_means == means


def test_adwin_snapshot_restore_mid_stream_equals_river():
    values = drifting(9, 12_000)
    expected, _ = river_run(drift.ADWIN(), values)
    ours = AdwinDetector()
    got = [i for i, x in enumerate(values[:5_000]) if ours.update(x)]
    restored = AdwinDetector()
    restored.restore(ours.snapshot())
    detected, _, _ = restored.update_many(np.array(values[5_000:]))
    got += [5_000 + int(i) for i in np.flatnonzero(detected)]
    assert got == expected and expected


@pytest.mark.parametrize("mode", ["both", "up", "down"])
def test_page_hinkley_batches_equal_river(mode):
    rng = random.Random(5)
    values = [rng.gauss(0.0 if (i // 2500) % 2 == 0 else (0.8 if i % 5000 < 4000 else -0.8), 1.0)
              for i in range(20_000)]
    river_ph = drift.PageHinkley(min_instances=30, delta=0.1, threshold=25.0, alpha=0.9999, mode=mode)
    expected, _ = river_run(river_ph, values)
    ours = PageHinkleyDetector(min_instances=30, delta=0.1, threshold=25.0, alpha=0.9999, mode=mode)
    got, offset = [], 0
    for batch in cut_into_batches(values, 5):
        detected, _ = ours.update_many(batch)
        got.extend(int(i) + offset for i in np.flatnonzero(detected))
        offset += len(batch)
    assert got == expected and expected
    assert ours.statistic == pytest.approx(max(river_ph._sum_increase - river_ph._min_increase,
                                               river_ph._max_decrease - river_ph._sum_decrease), abs=0)


def test_ranks_scores_and_cells_equal_the_per_value_code():
    rng = np.random.default_rng(3)
    reference = np.round(rng.lognormal(0.0, 1.0, 5_000), 2)  # ties on the grid
    grid = np.quantile(reference, np.linspace(0, 1, 1001))
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11))[1:-1])
    ks_grid = np.quantile(reference, np.linspace(0, 1, 101))
    values = np.concatenate([rng.lognormal(0.2, 1.1, 50_000), grid, edges, [-5.0, 0.0, 1e9]])
    transform = RankTransform(grid.tolist(), 5_000)
    n = len(values)
    psi_bins, ks_bins = np.empty(n, np.int64), np.empty(n, np.int64)
    ranks, scores = np.empty(n), np.empty(n)
    kernels.numeric_indices(values, edges, ks_grid, grid, 0.5 / 5_000, psi_bins, ks_bins, ranks, scores)
    listed_edges, listed_ks = edges.tolist(), ks_grid.tolist()
    inv = NormalDist().inv_cdf
    for i, value in enumerate(values.tolist()):
        rank = transform.rank(value)
        assert (psi_bins[i], ks_bins[i], ranks[i], scores[i]) == \
            (_numeric_bin(listed_edges, value), bisect_left(listed_ks, value), rank, inv(rank)), value


def test_tumble_closes_windows_where_counting_one_by_one_would():
    counts = np.zeros(3, np.int64)
    closed_counts, closed_at = np.zeros((4, 3), np.int64), np.zeros(4, np.int64)
    closed, n = kernels.tumble(np.array([0, -1, 2, 2, 1, 0, 0], np.int64), counts, 1, 3, closed_counts, closed_at)
    assert (closed, n) == (2, 2)
    assert closed_at[:2].tolist() == [1, 4]
    assert closed_counts[:2].tolist() == [[1, 0, 0], [0, 1, 2]]
    assert counts.tolist() == [2, 0, 0]


SIGNATURE_CHECK = """
import json
import orjson
from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.detectors import compile
from stream_monitor.events import RawMessage
from stream_monitor.partition import PartitionMonitor
from stream_monitor.synthetic import generate

compile.warm_up()
warmed = compile.signatures()
model = {"decisions": "partition", "reference": {"events": 500}, "detectors": {"psi": {"window": 500}}}
config = parse_config({"models": {m: model for m in ("fraud", "churn")}})
monitor = PartitionMonitor(config, 0, {})
docs = [doc for pair in zip(generate("fraud", 3000, drift_at=1500), generate("churn", 3000)) for doc in pair]
items = [(offset, decode(RawMessage("ml.inference", 0, offset, orjson.dumps(doc)), frozenset(config.models)), None)
         for offset, doc in enumerate(docs)]
alerts = []
for start in range(0, len(items), 500):  # batches of the service's default size
    alerts += monitor.process_batch(items[start:start + 500])
print(json.dumps({"warmed": warmed, "after": compile.signatures(), "alerts": len(alerts)}))
"""


def test_a_production_batch_adds_no_second_kernel_signature():
    """warm_up compiles each kernel with the argument types a batch passes: processing a realistic stream
    (warm-up, reference, drift, alerts) afterwards compiles nothing more. A fresh interpreter, so the calls
    of other tests in this process do not count."""
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SIGNATURE_CHECK], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["warmed"] == {"adwin_batch": 1, "page_hinkley_batch": 1, "numeric_indices": 1, "tumble": 1}
    assert result["alerts"] > 0  # the stream reached the detectors and drifted
    assert result["after"] == result["warmed"]


def test_the_kernels_import_nothing_of_the_package():
    """The compiled leaf: the detectors import it, never the other way round (warm_up lives in compile)."""
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(kernels.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported <= {"__future__", "math", "numpy", "numba"}, imported
    assert not hasattr(kernels, "warm_up")
