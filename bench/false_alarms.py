"""False alarms per 10^6 stationary events and detection delays, per detector.

Every number comes from the service's own code path (`ColumnMonitor`, default
config: budget 0.1 false alarms per 10^6 events per detector): a reference of
5,000 values, then 10^6 values drawn the same way (false alarms), or 20,000
unchanged values followed by a change (delay = events from the change to the
detector's first `firing` alert, median of 5 seeds).

    .venv/bin/python bench/false_alarms.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from stream_monitor.cbpe import EstimatedPerformance
from stream_monitor.config import EstimatedPerformanceConfig, parse_config
from stream_monitor.detectors.psi import psi
from stream_monitor.partition import ColumnMonitor
from stream_monitor.reference import CategoricalReference, NumericReference

REFERENCE = 5_000
CHECK_BUDGET = 200.0
CATEGORIES = [f"c{i}" for i in range(10)]
WEIGHTS = [0.3, 0.2, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02]


def category_shift(target: float = 0.25) -> list[float]:
    """Weights whose PSI against WEIGHTS is `target`: mass moves from the head to the tail."""
    tail = [1 / len(WEIGHTS)] * len(WEIGHTS)
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        mixed = [(1 - mid) * w + mid * t for w, t in zip(WEIGHTS, tail)]
        low, high = (mid, high) if psi(WEIGHTS, mixed) < target else (low, mid)
    return [(1 - low) * w + low * t for w, t in zip(WEIGHTS, tail)]


def draw(kind: str, rng: random.Random, change: str | None = None):
    shift = {"mean+0.25sd": 0.25, "mean+0.5sd": 0.5, "mean+1sd": 1.0}.get(change or "", 0.0)
    scale = math.sqrt(2.0) if change == "variance x2" else 1.0
    if kind == "normal":
        return rng.gauss(shift, scale)
    if kind == "lognormal":
        return rng.lognormvariate(0.0, 1.0)
    if kind == "uniform":
        return rng.random()
    if kind == "poisson":
        return _poisson(rng, 3.0)
    if kind == "bernoulli":
        return int(rng.random() < 0.3)
    weights = SHIFTED if change == "categories psi 0.25" else WEIGHTS
    return rng.choices(CATEGORIES, weights)[0]


SHIFTED = category_shift()


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, product = math.exp(-lam), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def monitor(kind: str, rng: random.Random, budget: float = 0.1) -> ColumnMonitor:
    values = [draw(kind, rng) for _ in range(REFERENCE)]
    reference = CategoricalReference.build(values) if kind == "categorical" else NumericReference.build(values)
    detectors = {"false_alarms_per_million": budget}
    if budget > 1:  # the calibration check: windows short enough that the budget's level decides
        detectors.update(psi={"window": 500, "warning": 1e-6, "critical": 1.0}, cooldown=0, resolve_after=1)
    config = parse_config({"models": {"m": {"detectors": detectors}}}).models["m"]
    column = ColumnMonitor(config, "feature", "x", reference)
    if budget > 1:  # count every detection: a point episode ends one quiet value later, not when the windows say
        for adapter in column.adapters:
            if adapter.point:
                adapter.episode.resolve_after = 1
    return column


def false_alarms(args: tuple[str, int] | tuple[str, int, float]) -> tuple[str, Counter, float]:
    kind, events, *budget = args
    rng = random.Random(f"fa/{kind}")
    column = monitor(kind, rng, *budget)
    fired: Counter = Counter()
    started = time.perf_counter()
    for offset in range(events):
        for alert in column.update(draw(kind, rng), offset, 0, None):
            if alert.status == "firing":
                fired[alert.detector] += 1
    return kind, fired, time.perf_counter() - started


def estimated_false_alarms(args: tuple[int, int]) -> tuple[int, int, int]:
    """The estimated performance (detector `cbpe`, default window and calibration) of a calibrated classifier
    (score = sigmoid(2x), x ~ N(0, 1.5²), label drawn with that probability): calibrated on the first 2,000
    pairs, then ``events`` stationary predictions. (seed, windows, firing alerts)."""
    seed, events = args
    rng = np.random.default_rng(seed)

    def scores(n: int) -> np.ndarray:
        return 1 / (1 + np.exp(-2 * rng.normal(0, 1.5, n)))

    estimator = EstimatedPerformance("m", EstimatedPerformanceConfig(), 0.1)
    reference = scores(estimator.config.reference_pairs)
    for score, truth in zip(reference, rng.random(len(reference)) < reference):
        estimator.add_pair(float(score), bool(score >= 0.5), bool(truth))
    fired = 0
    for start in range(0, events, 100_000):
        s = scores(min(100_000, events - start))
        predictions = list(zip(s.tolist(), (s >= 0.5).tolist()))
        offsets = range(start, start + len(s))
        fired += sum(a.status == "firing" for _, a in estimator.add_predictions(predictions, offsets, 0,
                                                                                 [None] * len(s)))
    return seed, estimator.windows.closed, fired


def delay(args: tuple[str, str, int]) -> tuple[str, str, int, dict[str, int]]:
    kind, change, seed = args
    rng = random.Random(f"delay/{kind}/{change}/{seed}")
    column = monitor(kind, rng)
    before, after = 20_000, 60_000
    first: dict[str, int] = {}
    for offset in range(before + after):
        value = draw(kind, rng, change if offset >= before else None)
        for alert in column.update(value, offset, 0, None):
            if alert.status == "firing" and offset >= before:
                first.setdefault(alert.detector, offset - before)
    return kind, change, seed, first


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    kinds = ["normal", "lognormal", "uniform", "poisson", "bernoulli", "categorical"]
    detectors = ["psi", "ks", "adwin", "page_hinkley", "missing", "type_mismatch", "non_finite", "out_of_range",
                 "unseen_category"]
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(false_alarms, [(kind, args.events) for kind in kinds]))
        changes = [("normal", c) for c in ("mean+0.25sd", "mean+0.5sd", "mean+1sd", "variance x2")]
        changes.append(("categorical", "categories psi 0.25"))
        delays = list(pool.map(delay, [(k, c, s) for k, c in changes for s in range(args.seeds)]))
        check_kinds = ["normal", "lognormal", "poisson"]
        checks = list(pool.map(false_alarms, [(kind, 300_000, CHECK_BUDGET) for kind in check_kinds]))
        estimated = list(pool.map(estimated_false_alarms, [(seed, args.events) for seed in range(args.seeds)]))

    scale = 1e6 / args.events
    print(f"False alarms per 10^6 stationary events (budget 0.1 per detector; {args.events:,} events per stream)")
    print("| detector | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    worst = 0.0
    for detector in detectors:
        cells = []
        for kind, fired, _ in results:
            applies = detector not in ("ks", "adwin", "page_hinkley", "type_mismatch", "non_finite",
                                       "out_of_range") or kind != "categorical"
            applies = applies and (detector != "unseen_category" or kind == "categorical")
            rate = fired[detector] * scale
            worst = max(worst, rate) if applies else worst
            cells.append(f"{rate:.1f}" if applies else "–")
        print(f"| {detector} | " + " | ".join(cells) + " |")
    print(f"\nworst: {worst:.1f} per 10^6 (target < 1)   "
          + "   ".join(f"{kind}: {seconds:.0f} s" for kind, _, seconds in results))

    windows, fired = sum(w for _, w, _ in estimated), sum(f for _, _, f in estimated)
    print(f"\nestimated_performance (cbpe, budget 0.1): {fired} firing alerts in {len(estimated)} streams of "
          f"{args.events:,} stationary predictions of a calibrated classifier ({windows:,} windows of 1,000, "
          f"each judged on 4 metrics): {fired * 1e6 / (len(estimated) * args.events):.1f} per 10^6")
    worst = max(worst, fired * 1e6 / (len(estimated) * args.events))
    print(f"\nCalibration check: the same code with a budget of {CHECK_BUDGET:g} false alarms per 10^6 events "
          "(PSI/KS/quality windows of 500, no cooldown), 300,000 events: observed per 10^6")
    print("| detector | " + " | ".join(check_kinds) + " |")
    print("|---|" + "---|" * len(check_kinds))
    for detector in ("psi", "ks", "adwin", "page_hinkley", "missing", "out_of_range"):
        print(f"| {detector} | " + " | ".join(f"{fired[detector] * 1e6 / 300_000:.0f}" for _, fired, _ in checks) + " |")

    print(f"\nDetection delay in events after the change (median of {args.seeds} seeds; '–' = not within 60,000)")
    wanted = ["psi", "ks", "adwin", "page_hinkley"]
    print("| change | " + " | ".join(wanted) + " |")
    print("|---|" + "---|" * len(wanted))
    for kind, change in changes:
        cells = []
        for detector in wanted:
            found = [d[detector] for k, c, _, d in delays if (k, c) == (kind, change) and detector in d]
            cells.append(f"{statistics.median(found):,.0f}" if len(found) > args.seeds // 2 else "–")
        print(f"| {change} ({kind}) | " + " | ".join(cells) + " |")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
