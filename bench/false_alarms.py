"""False alarms per 10^6 stationary events of a model, and detection delays.

The false-alarm budget is the model's (0.1 per 10^6 of its events by default),
split equally over the tests it runs. Every number comes from the service's own
code path:

- **per model**: a 20-feature model (14 continuous, 3 discrete, 3 categorical
  features, a score, latency; 167 tests) whose events are spread over 4
  partitions (as when keyed by event id), each partition a `PartitionMonitor`
  deciding on its own (`decisions = "partition"`, every figure here is the
  per-partition engine's; the model-level merge's are `bench/model_joint.py`'s)
  building its reference from its first 5,000 events, then `--model-events`
  more drawn the same way: every `firing` alert is a false alarm. The same run
  with today's thresholds beside it ("per test": each test calibrated with the
  whole 0.1, as before the budget was the model's).
- **per detector**: one column (`ColumnMonitor`) with one test's share of that
  model's budget, 10^6 values of six distributions (which detector fires).
- **joint** (`multivariate`): a whole model (`ModelMonitor`, every detector of
  its 10 normal features): false alarms over the same number of stationary
  events, and the delay of a correlation 0 → ρ between two features whose
  marginals do not change.
- **segments** (`--segments`, alone): a model segmented by a 60-value country
  with `top_k` 0, 10 and 50: its state's bytes and memory per segment, events/s
  and false alarms over stationary events.
- **fairness**: a model's fairness (`Fairness`, one attribute of three groups
  of 50 / 30 / 20 %, every group at the same rates): demographic parity over
  stationary predictions and equalized odds (true- and false-positive rates)
  over as many joined pairs, at one test's share each.
- **delays**: 20,000 unchanged values, then a change; events from the change
  to each detector's first `firing` (median of 5 seeds), with the model's share
  and with today's per-test budget.

    .venv/bin/python bench/false_alarms.py [--events 1000000] [--model-events 1000000]
    .venv/bin/python bench/false_alarms.py --quick   # a smoke run, seconds
    .venv/bin/python bench/false_alarms.py --segments   # only what per-segment detectors cost
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
import orjson

from stream_monitor.calibration import model_tests, split
from stream_monitor.cbpe import EstimatedPerformance
from stream_monitor.codec import decode
from stream_monitor.config import EstimatedPerformanceConfig, FairnessConfig, parse_config
from stream_monitor.detectors.psi import psi
from stream_monitor.events import InferenceEvent, RawMessage
from stream_monitor.fairness import Fairness
from stream_monitor.merge import may_estimate
from stream_monitor.partition import ColumnMonitor, ModelMonitor, PartitionMonitor
from stream_monitor.reference import CategoricalReference, NumericReference

REFERENCE = 5_000
BUDGET = 0.1
PARTITIONS = 4
# the per-model run's 20 features: 14 continuous, 3 discrete, 3 categorical
WIDE = [*(["normal", "lognormal", "uniform"] * 5)[:14], "poisson", "poisson", "bernoulli", *["categorical"] * 3]
# + score, latency; the estimated performance (a score, the task inferred) and the joint test (17 numeric features)
WIDE_TESTS = model_tests([kind != "categorical" for kind in WIDE] + [True, True], performance=True, estimate=True,
                         joint=True)
SHARE = split(BUDGET, WIDE_TESTS)
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


def monitor(kind: str, rng: random.Random, budget: float = SHARE) -> ColumnMonitor:
    values = [draw(kind, rng) for _ in range(REFERENCE)]
    reference = CategoricalReference.build(values) if kind == "categorical" else NumericReference.build(values)
    detectors = {"false_alarms_per_million": budget}
    if budget > 1:  # the calibration check: windows short enough that the budget's level decides
        detectors.update(psi={"window": 500, "warning": 1e-6, "critical": 1.0}, cooldown=0, resolve_after=1)
    config = parse_config({"models": {"m": {"decisions": "partition", "detectors": detectors}}}).models["m"]
    column = ColumnMonitor(config, "feature", "x", reference, budget=budget)
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


def model_event(rng: random.Random, partition: int, i: int) -> bytes:
    """One event of the wide model: its features drawn as WIDE says, a score from two of them, latency."""
    features = {f"f{j:02d}": draw(kind, rng) for j, kind in enumerate(WIDE)}
    score = 1 / (1 + math.exp(-(0.5 * features["f00"] + 0.3 * features["f03"])))
    return orjson.dumps({"event_id": f"p{partition}-{i}", "model_id": "wide", "timestamp": 1.8e9 + i * 0.004,
                         "latency_ms": round(rng.lognormvariate(2.5, 0.4), 3), "features": features,
                         "prediction": {"score": round(score, 6)}})


def model_partition(args: tuple[int, int, float, int]) -> tuple[int, Counter, int, float]:
    """One of the model's partitions: its warm-up of ``reference`` events, then ``events`` stationary ones; the
    firings by detector."""
    partition, events, budget, reference = args
    config = parse_config({"models": {"wide": {"decisions": "partition",
                                               "detectors": {"false_alarms_per_million": budget},
                                               "reference": {"events": reference}}}})
    monitor = PartitionMonitor(config, partition, {})
    rng = random.Random(f"model/{partition}")
    known = frozenset(config.models)
    fired: Counter = Counter()
    started, offset, batch = time.perf_counter(), 0, 2_000
    while offset < reference + events:
        items = []
        for _ in range(min(batch, reference + events - offset)):
            items.append((offset, decode(RawMessage("in", partition, offset, model_event(rng, partition, offset)),
                                         known), None))
            offset += 1
        for alert in monitor.process_batch(items):
            if alert.status == "firing":
                fired[f"{alert.signal}/{alert.detector}"] += 1
    model = monitor.models["wide"]
    tests = model_tests([c.numeric for c in model.columns], performance=True, estimate=may_estimate(model.config),
                        joint=model.multivariate is not None)
    assert model.share == split(budget, tests), "the bench counts the model's tests as the monitor does"
    return partition, fired, tests, time.perf_counter() - started


def estimated_false_alarms(args: tuple[int, int, float]) -> tuple[int, int, int]:
    """The estimated performance (detector `cbpe`, default window and calibration, ``budget`` split over its
    four metrics) of a calibrated classifier (score = sigmoid(2x), x ~ N(0, 1.5²), label drawn with that
    probability): calibrated on the first 2,000 pairs, then ``events`` stationary predictions. (seed, windows,
    firing alerts)."""
    seed, events, budget = args
    rng = np.random.default_rng(seed)

    def scores(n: int) -> np.ndarray:
        return 1 / (1 + np.exp(-2 * rng.normal(0, 1.5, n)))

    estimator = EstimatedPerformance("m", EstimatedPerformanceConfig(), budget)
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


def fairness_false_alarms(args: tuple[int, int, float]) -> tuple[int, int, int]:
    """Fairness of one attribute (groups of 50 / 30 / 20 %, favourable 40 % of the time; labels positive half the
    time, the prediction right 80 % of the time, alike in every group): ``events`` predictions (demographic parity,
    windows of 5,000) and as many joined pairs (equalized odds, windows of 2,000), each (attribute, metric) at
    ``budget``. (seed, windows, firing alerts)."""
    seed, events, budget = args
    rng = np.random.default_rng(seed)
    config = FairnessConfig(attributes=("group",), metrics=("demographic_parity", "equalized_odds"))
    fair = Fairness("m", config, None, budget)
    monitor = fair.attributes[0]
    names = ["a", "b", "c"]
    fired = 0
    for start in range(0, events, 100_000):
        n = min(100_000, events - start)
        groups = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
        indices = np.asarray([monitor.groups.of(name) for name in names])[groups]
        offsets = range(start, start + n)
        fired += sum(a.status == "firing" for _, a in fair.add_group_indices(
            monitor, indices, rng.random(n) < 0.4, offsets, 0, [None] * n))
        truth = rng.random(n) < 0.5
        predicted = np.where(rng.random(n) < 0.8, truth, ~truth)
        values = [{"group": names[g]} for g in groups.tolist()]
        fired += sum(a.status == "firing" for _, a in fair.add_pairs(values, predicted.tolist(), truth.tolist(),
                                                                        offsets, 0, [None] * n))
    return seed, monitor.predictions.closed + monitor.pairs.closed, fired


def delay(args: tuple[str, str, int, float, int]) -> tuple[str, str, int, dict[str, int]]:
    kind, change, seed, budget, after = args
    rng = random.Random(f"delay/{kind}/{change}/{seed}")
    column = monitor(kind, rng, budget)
    before = min(20_000, after)
    first: dict[str, int] = {}
    for offset in range(before + after):
        value = draw(kind, rng, change if offset >= before else None)
        for alert in column.update(value, offset, 0, None):
            if alert.status == "firing" and offset >= before:
                first.setdefault(alert.detector, offset - before)
    return kind, change, seed, first


JOINT_FEATURES = 10
JOINT_BATCH = 5_000


def joint_rows(rng: np.random.Generator, n: int, rho: float = 0.0) -> np.ndarray:
    x = rng.standard_normal((n, JOINT_FEATURES))
    x[:, 1] = rho * x[:, 0] + math.sqrt(1 - rho * rho) * x[:, 1]
    return x


def joint_events(model: ModelMonitor, rows: np.ndarray, start: int) -> list:
    """Feed rows as one model's events; the firing alerts as (offset, signal, detector)."""
    names = [f"f{i}" for i in range(JOINT_FEATURES)]
    out = []
    for at in range(0, len(rows), JOINT_BATCH):
        items = [(i, start + at + i, InferenceEvent(f"e{start + at + i}", "m", None, dict(zip(names, row))), None)
                 for i, row in enumerate(rows[at:at + JOINT_BATCH].tolist())]
        out.extend((a.offset, a.signal, a.detector) for *_, a in model.process_batch(items, 0) if a.status == "firing")
    return out


def joint(args: tuple[str, int, float]) -> tuple[str, float, int, list]:
    """('quiet', events, 0) → every firing on stationary events; ('change', seed, ρ) → the firings after
    20,000 unchanged events and a correlation ρ for 60,000."""
    what, n, rho = args
    rng = np.random.default_rng([7, n, int(rho * 100)])
    model = ModelMonitor(parse_config({"models": {"m": {"decisions": "partition"}}}).models["m"], None)
    joint_events(model, joint_rows(rng, REFERENCE), 0)
    if what == "quiet":
        fired = []
        for at in range(REFERENCE, REFERENCE + n, 100_000):
            fired += joint_events(model, joint_rows(rng, min(100_000, REFERENCE + n - at)), at)
        return what, rho, n, fired
    before = joint_events(model, joint_rows(rng, 20_000), REFERENCE)
    after = joint_events(model, joint_rows(rng, 60_000, rho), REFERENCE + 20_000)
    return what, rho, n, [(o - REFERENCE - 20_000, s, d) for o, s, d in after] + [(-1, s, d) for _, s, d in before]


def segmented_events(rng: np.random.Generator, n: int, start: int, countries: int = 60) -> list[InferenceEvent]:
    """Five N(0, 1) features and a country among ``countries`` with Zipf-like shares (stationary)."""
    shares = 1.0 / np.arange(1, countries + 1)
    drawn = rng.choice(countries, size=n, p=shares / shares.sum())
    values = rng.normal(size=(n, 5)).round(4)
    return [InferenceEvent(f"e{start + i}", "m", None, {**{f"x{j}": float(values[i, j]) for j in range(5)},
                                                         "country": f"c{drawn[i]:02d}"}) for i in range(n)]


def segments_cost(args: tuple[int, int, bool]) -> dict:
    """One segmented model (``top_k`` 0: none) over ``events`` stationary events after its warm-up: seconds,
    false alarms, the state's bytes and (``traced``) the monitor's memory."""
    top_k, events, traced = args
    import tracemalloc  # noqa: PLC0415
    from stream_monitor.state import encode_state  # noqa: PLC0415
    table = {"decisions": "partition", "reference": {"events": REFERENCE},
             "features": {**{f"x{j}": "numeric" for j in range(5)},
                                                              "country": "categorical"}}
    if top_k:
        table["segments"] = {"columns": ["country"], "top_k": top_k, "min_events": 20}
    rng = np.random.default_rng(20261202)
    warmup = segmented_events(rng, REFERENCE, 0)
    if traced:
        tracemalloc.start()
    monitor = PartitionMonitor(parse_config({"models": {"m": table}}), 0, {})
    monitor.process_batch([(i, e, None) for i, e in enumerate(warmup)])
    fired, seconds, done = 0, 0.0, REFERENCE
    while done < REFERENCE + events:
        batch = segmented_events(rng, 10_000, done)
        began = time.perf_counter()
        for first in range(0, len(batch), 1000):
            fired += sum(a.status == "firing" for a in monitor.process_batch(
                [(done + first + i, e, None) for i, e in enumerate(batch[first:first + 1000])]))
        seconds += time.perf_counter() - began
        done += len(batch)
    memory = tracemalloc.get_traced_memory()[0] if traced else None
    if traced:
        tracemalloc.stop()
    model = monitor.models["m"]
    segments = 0 if model.segments is None else len(model.segments.segments)
    return {"top_k": top_k, "segments": segments, "columns": 0 if model.segments is None else
            len(model.segments.all_columns()), "state": len(encode_state(monitor.snapshot())),
            "memory": memory, "rate": events / seconds, "fired": fired, "events": events}


def print_segments(events: int) -> None:
    """The cost of segments: per top_k, the state's bytes and memory per segment, events/s, false alarms."""
    with ProcessPoolExecutor(2) as pool:
        runs = list(pool.map(segments_cost, [(k, events, False) for k in (0, 10, 50)]))
        traced = list(pool.map(segments_cost, [(k, 20_000, True) for k in (0, 10, 50)]))
    base, base_memory = runs[0], traced[0]["memory"]
    print(f"Segments: 5 numeric features and a country of 60 values (Zipf shares), reference {REFERENCE:,} (a segment needs 20 of its events), "
          f"{events:,} stationary events after it (memory: after 20,000)")
    print("| top_k | segments | segment columns | state bytes | state per segment | memory per segment | "
          "events/s | false alarms |")
    print("|---|---|---|---|---|---|---|---|")
    for run, trace in zip(runs, traced):
        per = run["segments"] or 1
        print(f"| {run['top_k']} | {run['segments']} | {run['columns']} | {run['state']:,} | "
              f"{(run['state'] - base['state']) / per:,.0f} | {(trace['memory'] - base_memory) / per / 1024:,.0f} KiB | "
              f"{run['rate']:,.0f} | {run['fired']} |")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000, help="values per stream of the per-detector table")
    parser.add_argument("--model-events", type=int, default=1_000_000,
                        help="the wide model's events after its partitions' warm-ups, all partitions together")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run (a few seconds; the figures mean nothing)")
    parser.add_argument("--segments", action="store_true",
                        help="only the cost of per-segment detectors (state, memory, events/s, false alarms)")
    args = parser.parse_args()
    if args.segments:
        print_segments(20_000 if args.quick else 200_000)
        return 0
    reference, after, checked = REFERENCE, 60_000, 300_000
    if args.quick:
        args.events, args.model_events, args.seeds = 2_000, 4_000, 1
        reference, after, checked = 1_000, 3_000, 2_000
    kinds = ["normal", "lognormal", "uniform", "poisson", "bernoulli", "categorical"]
    detectors = ["psi", "ks", "adwin", "page_hinkley", "missing", "type_mismatch", "non_finite", "out_of_range",
                 "unseen_category"]
    per_partition = args.model_events // PARTITIONS
    today = BUDGET * WIDE_TESTS  # a share of 0.1 per test: the thresholds of the per-test budget
    changes = [("normal", c) for c in ("mean+0.25sd", "mean+0.5sd", "mean+1sd", "variance x2")]
    changes.append(("categorical", "categories psi 0.25"))
    check_kinds = ["normal", "lognormal", "poisson"]
    with ProcessPoolExecutor(2) as pool:
        model_runs = {budget: list(pool.map(model_partition, [(p, per_partition, budget, reference)
                                                            for p in range(PARTITIONS)]))
                      for budget in (BUDGET, today)}
        results = list(pool.map(false_alarms, [(kind, args.events) for kind in kinds]))
        delays = {budget: list(pool.map(delay, [(k, c, s, budget, after)
                                                   for k, c in changes for s in range(args.seeds)]))
                  for budget in (SHARE, BUDGET)}
        checks = list(pool.map(false_alarms, [(kind, checked, CHECK_BUDGET)
                                              for kind in check_kinds]))
        joints = list(pool.map(joint, [("quiet", args.events, 0.0)] + [("change", seed, rho) for rho in (0.2, 0.5)
                                                                        for seed in range(args.seeds)]))
        estimated = list(pool.map(estimated_false_alarms, [(seed, args.events, SHARE) for seed in range(args.seeds)]))
        fairness = list(pool.map(fairness_false_alarms, [(seed, args.events, SHARE) for seed in range(args.seeds)]))

    events = per_partition * PARTITIONS
    print(f"Per model: a {len(WIDE)}-feature model (+ score, latency: {WIDE_TESTS} tests) on {PARTITIONS} partitions, "
          f"{events:,} stationary events after the warm-ups")
    print("| budget | thresholds | false alarms | per 10^6 of the model's events | by detector |")
    print("|---|---|---|---|---|")
    worst_model = 0.0
    for budget, runs in model_runs.items():
        fired = sum((f for _, f, _, _ in runs), Counter())
        counted = {tests for _, _, tests, _ in runs}
        assert counted == {WIDE_TESTS}, f"the partitions' references count {counted} tests, not {WIDE_TESTS}"
        rate = sum(fired.values()) * 1e6 / events
        label = (f"{BUDGET:g} per model (this version)" if budget == BUDGET
                 else f"{BUDGET:g} per test (before: {today:g} per model)")
        share = split(budget, WIDE_TESTS)
        print(f"| {label} | each test {share:.2g} per 10^6 | {sum(fired.values())} | {rate:.2f} | "
              + (", ".join(f"{k} {v}" for k, v in sorted(fired.items())) or "none") + " |")
        if budget == BUDGET:
            worst_model = rate
    print(f"\nper model: {worst_model:.2f} per 10^6 of the model's events (target < 1)   "
          + "   ".join(f"partition {p}: {seconds:.0f} s" for p, _, _, seconds in model_runs[BUDGET]))

    scale = 1e6 / args.events
    print(f"\nPer detector: one column with one test's share ({SHARE:.2g} per 10^6; {args.events:,} events per stream)")
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
    print(f"\nworst: {worst:.1f} per 10^6   " + "   ".join(f"{kind}: {seconds:.0f} s" for kind, _, seconds in results))

    windows, fired = sum(w for _, w, _ in estimated), sum(f for _, _, f in estimated)
    print(f"\nestimated_performance (cbpe, one test's share {SHARE:.2g}): {fired} firing alerts in {len(estimated)} "
          f"streams of {args.events:,} stationary predictions of a calibrated classifier ({windows:,} windows, "
          f"each judged on 4 metrics): {fired * 1e6 / (len(estimated) * args.events):.1f} per 10^6")
    windows, fired = sum(w for _, w, _ in fairness), sum(f for _, _, f in fairness)
    print(f"\nfairness (demographic_parity and equalized_odds, one test's share {SHARE:.2g} each): {fired} firing "
          f"alerts in {len(fairness)} streams of {args.events:,} stationary predictions and as many joined pairs, "
          f"three equal groups ({windows:,} windows): {fired * 1e6 / (len(fairness) * args.events):.1f} per 10^6")

    print(f"\nCalibration check: the same code with a budget of {CHECK_BUDGET:g} false alarms per 10^6 events "
          f"(PSI/KS/quality windows of 500, no cooldown), {checked:,} events: observed "
          "per 10^6")
    print("| detector | " + " | ".join(check_kinds) + " |")
    print("|---|" + "---|" * len(check_kinds))
    for detector in ("psi", "ks", "adwin", "page_hinkley", "missing", "out_of_range"):
        print(f"| {detector} | " + " | ".join(f"{fired[detector] * 1e6 / checked:.0f}" for _, fired, _ in checks) + " |")

    print(f"\nDetection delay in events after the change (median of {args.seeds} seeds; '–' = not within {after:,}): "
          f"per model (each test {SHARE:.2g}) / before (each test {BUDGET:g})")
    wanted = ["psi", "ks", "adwin", "page_hinkley"]
    print("| change | " + " | ".join(wanted) + " |")
    print("|---|" + "---|" * len(wanted))

    def median(budget: float, kind: str, change: str, detector: str) -> str:
        found = [d[detector] for k, c, _, d in delays[budget] if (k, c) == (kind, change) and detector in d]
        return f"{statistics.median(found):,.0f}" if len(found) > args.seeds // 2 else "–"

    for kind, change in changes:
        cells = [f"{median(SHARE, kind, change, d)} / {median(BUDGET, kind, change, d)}" for d in wanted]
        print(f"| {change} ({kind}) | " + " | ".join(cells) + " |")

    _, _, _, quiet = joints[0]
    joint_rate = sum(1 for _, signal, _ in quiet if signal == "multivariate") * scale
    print(f"\nJoint drift (multivariate, hotelling) on a model of {JOINT_FEATURES} normal features: "
          f"{joint_rate:.1f} false alarms per 10^6 stationary events ({args.events:,} events; "
          f"every detector of the model: {len(quiet)} firings)")
    print("| change (marginals unchanged) | hotelling | any per-column detector |")
    print("|---|---|---|")
    for rho in (0.2, 0.5):
        runs = [fired for what, r, _, fired in joints if what == "change" and r == rho]
        found = [min(o for o, s, _ in f if s == "multivariate" and o >= 0) for f in runs
                 if any(s == "multivariate" and o >= 0 for o, s, _ in f)]
        other = sum(1 for f in runs for o, s, _ in f if s != "multivariate")
        cell = f"{statistics.median(found):,.0f}" if len(found) > args.seeds // 2 else "–"
        print(f"| corr(f0, f1) 0 → {rho} | {cell} | {other} firings in {len(runs)} runs |")
    return 0 if (worst_model < 1 and joint_rate < 1) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
