"""Joint drift and estimated performance decided per model (``decisions = "model"``).

Two halves, as in :mod:`stream_monitor.merge`, and pure like it:

- :class:`PartitionSide`: what a partition adds to the model's bucket partials besides the column counts.
  For the joint test (:mod:`stream_monitor.detectors.multivariate`) the fixed-point sums of its complete
  rows' terms, their count and the rows skipped (``partial["joint"]``): integers, so four partitions'
  sums add up to exactly what one partition holding every event sums. For the estimated performance
  (:mod:`stream_monitor.cbpe`) its scored predictions counted over a fixed grid of score cells, split by
  predicted class (``partial["estimate"]["cells"]``), and its first ``reference_pairs`` joined (score,
  predicted, truth) pairs (``partial["estimate"]["pairs"]``).
- :func:`merge_bucket`, the merger's: a merged bucket's joint sums and cells go into the model's joint
  and estimate windows (tumbling, ending on a bucket boundary, ``multivariate.window`` complete rows and
  ``estimated_performance.window`` scored predictions); a full window is decided against the model's
  reference, one model-level episode per test. The estimate is calibrated once, on the first
  ``reference_pairs`` pairs in merge order (bucket, topic, partition, then each partition's order): a
  pure function of the closed partials, so the same however many instances read the partitions.

Scores are read at the grid's resolution (:data:`GRID` cells over [0, 1]: a score counts as its cell's
lower bound, in the calibration and in the windows alike), which is what makes a window's expected
confusion matrix a sum of per-cell counts.

>>> score_cell(0.8345), score_cell(1.0), score_cell(-0.2)
(834, 999, 0)
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from . import alerts as words
from .calibration import hotelling_threshold
from .cbpe import METRICS, Calibration, budget_z, describe, expected_metrics, predicted_positive, reference_floors
from .codec import category
from .config import ModelConfig
from .detectors.episode import Episode
from .detectors.multivariate import JointReference, JointWindow
from .events import InferenceEvent
from .performance import infer_task
from .reference import NumericReference, ReferenceProfile

GRID = 1000  # score cells over [0, 1]
JOINT = "multivariate|joint|hotelling"  # the joint test's model-level episode


def score_cell(score: float) -> int:
    """The grid cell a score counts in (scores outside [0, 1] in the outer cells)."""
    return min(GRID - 1, max(0, int(np.floor(score * GRID))))


def joint_runs(model: ModelConfig, reference: ReferenceProfile) -> bool:
    """Whether the model runs its joint test on ``reference``: on, two or more numeric features, a joint part."""
    numeric = sum(isinstance(r, NumericReference) for r in reference.features.values())
    return model.detectors.multivariate.enabled and numeric >= 2 and reference.joint is not None


def estimates(model: ModelConfig, reference: ReferenceProfile) -> bool:
    """Whether the model's performance is estimated at the model level: on, performance monitored, scores in
    the reference, and a classifier (configured, or inferred from the reference's predictions)."""
    est, perf = model.detectors.estimated_performance, model.performance
    if not (est.enabled and perf.enabled and reference.score is not None):
        return False
    task = perf.task or infer_task(reference.predicted_label is not None,
                                   (reference.score.minimum, reference.score.maximum))
    return task == "classification"


def reference_pairs(model: ModelConfig, reference: ReferenceProfile) -> list[tuple[float, bool, int]] | None:
    """A stored reference's labelled predictions as calibration pairs (score, predicted positive, truth), when
    the model's performance is estimated and the reference has them; else ``None``."""
    if reference.pairs is None or not estimates(model, reference):
        return None
    positive, threshold = model.performance.positive_label, model.detectors.estimated_performance.decision_threshold
    return [(score, predicted_positive(score, predicted, positive, threshold), int(truth == positive))
            for score, predicted, truth in reference.pairs]


def joint_rows(names: Sequence[str], events: Sequence[InferenceEvent], features: np.ndarray | None,
               feature_names: Sequence[str]) -> np.ndarray:
    """The events' rows (n × k, in the order of ``names``): from the batch's feature matrix when it has one
    (rows by ``feature_names``), else read from each event (NaN where a value is not a number)."""
    if isinstance(features, np.ndarray):
        where = {name: i for i, name in enumerate(feature_names)}
        return np.ascontiguousarray(features[[where[n] for n in names]].T)
    rows = np.full((len(events), len(names)), np.nan)
    for r, event in enumerate(events):
        for c, name in enumerate(names):
            value = event.features.get(name)
            if value.__class__ is float or value.__class__ is int:
                rows[r, c] = value
    return rows


# --- the partition side ---------------------------------------------------------------


class PartitionSide:
    """One model's joint sums and estimate counts on one partition, added to its sketch's open buckets.

    Its own state: how many joined pairs it has carried (at most ``reference_pairs``: the merge calibrates
    on the first buckets that hold that many of the model's, so no partition need carry more)."""

    def __init__(self, model: ModelConfig, reference: ReferenceProfile):
        self.joint: JointReference | None = reference.joint if joint_runs(model, reference) else None
        self._terms = None if self.joint is None else JointWindow(self.joint, 1)  # its fixed-point terms
        self.estimates = estimates(model, reference)
        est = model.detectors.estimated_performance
        self.pairs_wanted = 0 if reference.pairs is not None else est.reference_pairs  # a stored reference's calibrate
        self.threshold = est.decision_threshold
        self.positive = model.performance.positive_label
        self.carried = 0

    def add_events(self, sketch: Any, buckets: np.ndarray, events: Sequence[InferenceEvent],
                   features: np.ndarray | None, feature_names: Sequence[str]) -> None:
        """The batch's inference events (past the reference), each in its bucket (``buckets``)."""
        if self.joint is not None:
            self._add_rows(sketch, buckets, joint_rows(self.joint.names, events, features, feature_names))
        if self.estimates:
            for bucket, event in zip(buckets.tolist(), events):
                score = event.score
                if score.__class__ is bool or not isinstance(score, (int, float)) or not np.isfinite(score):
                    continue
                positive = predicted_positive(score, event.predicted_label, self.positive, self.threshold)
                cells = _estimate_part(sketch.partial(bucket))["cells"]
                counts = cells.setdefault(str(score_cell(score)), [0, 0])
                counts[positive] += 1

    def _add_rows(self, sketch: Any, buckets: np.ndarray, rows: np.ndarray) -> None:
        complete = np.isfinite(rows).all(axis=1)
        fixed = self._terms.fixed_terms(np.where(complete[:, None], rows, 0.0))
        for bucket in np.unique(buckets).tolist():
            mine = buckets == bucket
            part = sketch.partial(bucket).get("joint")
            if part is None:
                part = sketch.partial(bucket)["joint"] = {"n": 0, "sums": [0] * fixed.shape[1], "skipped": 0}
            used = mine & complete
            part["n"] += int(used.sum())
            part["skipped"] += int((mine & ~complete).sum())
            part["sums"] = [a + int(b) for a, b in zip(part["sums"], fixed[used].sum(axis=0).tolist())]

    def add_pair(self, sketch: Any, bucket: int, prediction: Mapping[str, Any], label: Any) -> None:
        """A joined pair, counted in ``bucket`` while this partition has carried fewer than ``reference_pairs``."""
        score = prediction.get("score")
        if not self.estimates or self.carried >= self.pairs_wanted or score.__class__ is bool \
                or not isinstance(score, (int, float)) or not np.isfinite(score):
            return
        predicted = predicted_positive(score, prediction.get("label"), self.positive, self.threshold)
        truth = category(label) == self.positive
        _estimate_part(sketch.partial(bucket))["pairs"].append([score_cell(score), int(predicted), int(truth)])
        self.carried += 1

    def snapshot(self) -> dict[str, Any]:
        return {"carried": self.carried}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        self.carried = 0 if state is None else state["carried"]


def warmup_joint(model: ModelConfig, reference: ReferenceProfile, summary: Any) -> dict[str, Any] | None:
    """A warm-up share's bucket past the model's reference (its :class:`~stream_monitor.reference.WarmupSummary`)
    as the joint sums the partition would have added (from the summary's row-aligned sample)."""
    if not joint_runs(model, reference):
        return None
    names = reference.joint.names
    where = {name: i for i, name in enumerate(summary.joint_names)}
    rows = np.full((len(summary.joint_rows), len(names)), np.nan)
    for c, name in enumerate(names):
        i = where.get(name)
        if i is None:
            continue
        for r, row in enumerate(summary.joint_rows):  # a row is shorter when names appeared after it
            value = row[i] if i < len(row) else None
            if value is not None:
                rows[r, c] = value
    part = {"n": 0, "sums": [0] * (len(names) + len(names) * (len(names) + 1) // 2), "skipped": 0}
    complete = np.isfinite(rows).all(axis=1)
    if len(rows):
        fixed = JointWindow(reference.joint, 1).fixed_terms(rows[complete])
        part.update(n=int(complete.sum()), skipped=int((~complete).sum()),
                    sums=[int(v) for v in fixed.sum(axis=0).tolist()])
    return part


def _estimate_part(partial: dict[str, Any]) -> dict[str, Any]:
    part = partial.get("estimate")
    if part is None:
        part = partial["estimate"] = {"cells": {}, "pairs": []}
    return part


# --- the merge side ---------------------------------------------------------------------


class Decided(NamedTuple):
    """A model window of the joint test or the estimate, decided: the window (``first_bucket``,
    ``last_bucket``, ``by_partition``), its statistics for the history (signal, name, detector, value,
    warning, critical) and its transitions (transition, signal, name, detector, statistic, threshold,
    description)."""

    window: Mapping[str, Any]
    points: list[tuple]
    transitions: list[tuple]


def _open(window: dict[str, Any] | None, bucket: int) -> dict[str, Any]:
    if window is None:
        window = {"first_bucket": bucket, "by_partition": {}}
    window["last_bucket"] = bucket
    return window


def _parts(group: Sequence[tuple], key: str) -> list[tuple[str, Mapping[str, Any]]]:
    """The bucket's partials' ``key`` part, each with its "topic|partition"."""
    return [(f"{topic}|{partition}", partial[key]) for _, topic, partition, partial in group
            if partial.get(key) is not None]


def _count(window: dict[str, Any], where: str, events: int) -> None:
    window["by_partition"][where] = window["by_partition"].get(where, 0) + events


def _episode(model: ModelConfig, state: Mapping[str, Any], key: str, cooldown: int | None = None) -> Episode:
    det = model.detectors
    episode = Episode(det.resolve_after, 0, det.hysteresis) if cooldown is None else Episode(cooldown=cooldown)
    saved = state["episodes"].get(key)
    if saved is not None:
        episode.restore(saved)
    return episode


def merge_bucket(model: ModelConfig, reference: ReferenceProfile, state: dict[str, Any], bucket: int,
                 group: Sequence[tuple[int, str, int, Mapping[str, Any]]], budget: float) -> list[Decided]:
    """One merged bucket's partials (``group``: (bucket, topic, partition, partial) in merge order) into
    the model's joint and estimate windows (kept in ``state``, the merge state, changed in place); the
    windows this bucket fills, decided against the reference at each test's ``budget``."""
    out: list[Decided] = []
    if joint_runs(model, reference):
        out.extend(_joint_bucket(model, reference.joint, state, bucket, group, budget))
    if estimates(model, reference):
        out.extend(_estimate_bucket(model, reference, state, bucket, group, budget))
    return out


def _joint_bucket(model: ModelConfig, joint: JointReference, state: dict[str, Any], bucket: int,
                  group: Sequence[tuple], budget: float) -> list[Decided]:
    parts = _parts(group, "joint")
    if not parts:
        return []
    held = state.get("joint_window")
    window = _open(None if held is None else {**held, "by_partition": dict(held["by_partition"])}, bucket)
    sums = window.get("sums")
    for where, part in parts:
        sums = list(part["sums"]) if sums is None else [a + b for a, b in zip(sums, part["sums"])]
        window["n"] = window.get("n", 0) + part["n"]
        window["skipped"] = window.get("skipped", 0) + part["skipped"]
        _count(window, where, part["n"])
    window["sums"] = sums
    wanted = model.detectors.multivariate.window
    if window["n"] < wanted:
        state["joint_window"] = window
        return []
    state["joint_window"] = None
    n = window["n"]
    detector = JointWindow(joint, n)
    value, top = detector.statistic(np.asarray(sums, dtype=np.int64), n)
    threshold = hotelling_threshold(budget, n, joint.events, joint.rank)
    critical = 2 * threshold
    episode = _episode(model, state, JOINT)
    transition = episode.level(value, threshold, critical)
    state["episodes"][JOINT] = episode.snapshot()
    state["joint_last"] = {"statistic": value, "threshold": threshold, "events": n, "skipped": window["skipped"]}
    transitions = []
    if transition is not None:
        label = f"{model.model_id}'s {len(joint.names)} numeric features"
        description = words.joint_description(joint.names, joint.events, joint.rank, label, transition, value,
                                              threshold, critical, top, n)
        transitions.append((transition, "multivariate", "joint", "hotelling", value,
                            critical if transition.severity == "critical" else threshold, description))
    return [Decided(window, [("multivariate", "joint", "hotelling", value, threshold, critical)], transitions)]


def _calibrate(held: dict[str, Any], pairs: Sequence[Sequence[int]], window: int, budget: float) -> None:
    """Fit the model's calibration on (score cell, predicted, truth) pairs, taken as a set (sorted)."""
    pairs = sorted(map(tuple, pairs))  # the same whatever the partitions' order
    scores = [cell / GRID for cell, _, _ in pairs]
    calibration = Calibration.fit(scores, [truth for _, _, truth in pairs])
    floors = reference_floors(calibration, scores, [bool(p) for _, p, _ in pairs], window, budget_z(budget, window))
    held.update(pairs=[], calibration=calibration.to_dict(), calibrated_pairs=len(scores),
                floors={m: {"mean": f["mean"], "sd": f["sd"]} for m, f in floors.items()})


def _estimate_bucket(model: ModelConfig, reference: ReferenceProfile, state: dict[str, Any], bucket: int,
                     group: Sequence[tuple], budget: float) -> list[Decided]:
    parts = _parts(group, "estimate")
    if not parts:
        return []
    config = model.detectors.estimated_performance
    held = state.get("estimate") or {"pairs": [], "calibration": None, "window": None}
    held = {**held, "pairs": list(held["pairs"])}
    stored = reference_pairs(model, reference)
    if held["calibration"] is None and stored is not None:  # a stored reference with labels: from the start
        _calibrate(held, [(score_cell(s), int(p), t) for s, p, t in stored], config.window, budget)
    if held["calibration"] is None:  # calibrating: the pairs of the fewest whole buckets with reference_pairs
        for _, part in parts:
            held["pairs"].extend(list(pair) for pair in part["pairs"])
        if len(held["pairs"]) >= config.reference_pairs:
            _calibrate(held, held["pairs"], config.window, budget)
        state["estimate"] = held
        return []  # windows start at the bucket after the calibration's last
    window = held["window"]
    window = _open(None if window is None else {**window, "by_partition": dict(window["by_partition"]),
                                                "cells": {c: list(v) for c, v in window["cells"].items()}}, bucket)
    cells = window.setdefault("cells", {})
    for where, part in parts:
        events = 0
        for cell, counts in part["cells"].items():
            held_counts = cells.setdefault(cell, [0, 0])
            held_counts[0] += counts[0]
            held_counts[1] += counts[1]
            events += counts[0] + counts[1]
        window["n"] = window.get("n", 0) + events
        _count(window, where, events)
    if window["n"] < config.window:
        state["estimate"] = {**held, "window": window}
        return []
    state["estimate"] = {**held, "window": None}
    metrics = window_metrics(Calibration.from_dict(held["calibration"]), cells)
    z = budget_z(budget, config.window)
    # what the status shows: the last window's estimates, the floors they were judged against, windows judged
    state["estimate"].update(last=metrics, windows=held.get("windows", 0) + 1,
                             last_floors={m: f["mean"] - z * f["sd"] for m, f in held["floors"].items()})
    points, transitions = [], []
    for metric in METRICS:
        saved = held["floors"][metric]
        floor = {**saved, "floor": saved["mean"] - z * saved["sd"]}
        value = metrics[metric]
        critical = floor["mean"] - 2 * z * floor["sd"]
        points.append(("estimated_performance", metric, "cbpe", value, floor["floor"], critical))
        key = f"estimated_performance|{metric}|cbpe"
        episode = _episode(model, state, key, cooldown=0)
        transition = episode.limit(value < floor["floor"], "critical" if value < critical else "warning")
        state["episodes"][key] = episode.snapshot()
        if transition is not None:
            transitions.append((transition, "estimated_performance", metric, "cbpe", value, floor["floor"],
                                describe(model.model_id, metric, transition, metrics, floor, window["n"],
                                         held["calibrated_pairs"])))
    return [Decided(window, points, transitions)]


def window_metrics(calibration: Calibration, cells: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """The expected metrics of a window's score cells (``cell`` → [predicted negative, predicted positive])."""
    keys = sorted(cells, key=int)
    p = calibration.probability(np.asarray([int(c) / GRID for c in keys], dtype=np.float64))
    negative = np.asarray([cells[c][0] for c in keys], dtype=np.int64)
    positive = np.asarray([cells[c][1] for c in keys], dtype=np.int64)
    probabilities = np.concatenate([np.repeat(p, negative), np.repeat(p, positive)])
    predicted = np.concatenate([np.zeros(int(negative.sum()), bool), np.ones(int(positive.sum()), bool)])
    return expected_metrics(probabilities, predicted)


def open_windows(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the status page shows of the joint test and the estimate: the open windows' sizes, the last
    decided statistics."""
    if not state:
        return {}
    joint, estimate = state.get("joint_window"), state.get("estimate")
    out: dict[str, Any] = {}
    if joint is not None or state.get("joint_last") is not None:
        out["multivariate"] = {"open_window_events": 0 if joint is None else joint["n"], "last": state.get("joint_last")}
    if estimate is not None:
        out["estimated_performance"] = {
            "calibrated": estimate["calibration"] is not None, "pairs": len(estimate["pairs"]),
            "open_window_events": 0 if estimate["window"] is None else estimate["window"]["n"],
            "metrics": estimate.get("last"), "floors": estimate.get("floors")}
    return out


def estimate_info(model: ModelConfig, state: Mapping[str, Any] | None) -> dict[str, Any]:
    """A merged model's estimated performance as one partition's :meth:`stream_monitor.cbpe.EstimatedPerformance.info`
    has it (``window``, ``windows`` judged, the last window's ``metrics`` and the ``floors`` it was judged
    against), with the reference's range (each metric's ``reference`` mean and sd), the calibration's pairs
    and the open window's size: status, the status page, the metrics. ``{}`` before the merge estimates."""
    held = (state or {}).get("estimate")
    if held is None:
        return {}
    calibrated = held["calibration"] is not None
    return {"window": model.detectors.estimated_performance.window, "windows": held.get("windows", 0),
            "metrics": None if held.get("last") is None else dict(held["last"]),
            "floors": dict(held.get("last_floors") or {}),
            "reference": {m: dict(f) for m, f in (held.get("floors") or {}).items()},
            "calibrated": calibrated, "calibrated_pairs": held.get("calibrated_pairs") if calibrated else None,
            "pairs": len(held["pairs"]),
            "open_window_events": 0 if held["window"] is None else held["window"]["n"]}


def estimate_range(info: Mapping[str, Any]) -> str:
    """The reference's range of a model's estimate (:func:`estimate_info`), one phrase: per metric the floor
    its last window was judged against and the reference's mean.

    >>> estimate_range({"floors": {"accuracy": 0.851}, "reference": {"accuracy": {"mean": 0.866, "sd": 0.004}}})
    'accuracy ≥ 0.851 (reference 0.866)'
    """
    floors, reference = info.get("floors") or {}, info.get("reference") or {}
    return " · ".join(f"{m} ≥ {floors[m]:.3g} (reference {reference[m]['mean']:.3g})" for m in reference
                      if m in floors)
