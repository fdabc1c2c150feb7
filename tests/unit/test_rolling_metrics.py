"""The rolling window's counts kept as pairs enter and leave it give the metrics of counting the window
afresh (the former evaluation, kept here as ``recounted``): the same values, bit for bit, at every pair
of seeded streams (ties, pairs without a score, one class absent, a restore), and the engine's
performance alerts and rolling points the same at the same offsets."""

from __future__ import annotations

import math
import random

import numpy as np
import orjson
import pytest

from stream_monitor import performance
from stream_monitor.config import parse_config
from stream_monitor.partition import PartitionMonitor
from stream_monitor.performance import RollingMetrics, auc
from stream_monitor.synthetic import labelled

from ..support import joined_items


def recounted(self: RollingMetrics) -> dict:
    """The metrics counted afresh over the window's rows (the evaluation before the counts were kept)."""
    rows = list(self.window)
    if not rows:
        return {}
    if self.classification:
        truth, predicted, scores, errors = zip(*rows)
        t, p = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
        tp = int(np.count_nonzero(t & p))
        fp = int(np.count_nonzero(~t & p))
        fn = int(np.count_nonzero(t & ~p))
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall else None)
        if None in scores:
            scored = [(truth_, score) for truth_, score in zip(truth, scores) if score is not None]
            truth, scores = ([x for x, _ in scored], [y for _, y in scored]) if scored else ((), ())
        return {"accuracy": 1 - sum(errors) / len(rows), "precision": precision, "recall": recall,
                "f1": f1, "auc": auc(truth, scores) if scores else None}
    errors = [r[2] for r in rows]
    return {"mae": sum(errors) / len(errors), "rmse": math.sqrt(sum(e * e for e in errors) / len(errors))}


def rows(count: int, seed: int) -> list[tuple]:
    """Classification rows in phases: tied (rounded) scores, some without a score, a stretch of one class
    only, a stretch with no score at all, and predicted labels that disagree with the score."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        phase = (i // 700) % 5
        truth = 1 if phase == 2 else int(rng.random() < 0.4)
        score = None if phase == 3 or rng.random() < 0.05 else round(rng.random() * 0.6 + 0.4 * truth, 2)
        predicted = int(rng.random() < 0.5) if score is None or phase == 4 else int(score >= 0.5)
        out.append((truth, predicted, score, int(predicted != truth)))
    return out


@pytest.mark.parametrize("window", [10, 300, 1000])
def test_the_kept_counts_give_the_recounted_metrics_at_every_pair(window):
    config = parse_config({"models": {"m": {"performance": {"task": "classification", "window": window}}}})
    rolling = RollingMetrics(config.models["m"].performance, "classification")
    stream = rows(4000, seed=window)
    checked = set()
    for i, row in enumerate(stream):
        evaluated = rolling.add_many([row])
        assert rolling.metrics() == recounted(rolling), i
        checked.update(k for k, v in rolling.metrics().items() if v is None)
        for _, values in evaluated:
            assert values == recounted(rolling)
        if i == 2345:  # a restore rebuilds the counts from the saved rows
            restored = RollingMetrics(config.models["m"].performance, "classification")
            restored.restore(orjson.loads(orjson.dumps(rolling.snapshot())))
            assert restored.metrics() == rolling.metrics()
            rolling = restored
    assert {"auc", "precision"} <= checked, "one class absent, no score: the Nones are reached too"


def test_regression_sums_the_window_as_before():
    config = parse_config({"models": {"m": {"performance": {"task": "regression", "window": 50}}}})
    rolling = RollingMetrics(config.models["m"].performance, "regression")
    rng = random.Random(3)
    for _ in range(500):
        score, label = rng.gauss(0, 1), rng.gauss(0, 2)
        for _, values in rolling.add_many([(score, label, abs(score - label))]):
            assert values == recounted(rolling)


CLASSIFIER = {"reference": {"events": 500}, "features": {"x": "numeric"},
              "detectors": {"psi": {"window": 500}, "data_quality": {"enabled": False}, "ks": {"enabled": False},
                            "adwin": {"enabled": False}, "page_hinkley": {"enabled": False}, "resolve_after": 1500,
                            "cooldown": 300},
              "performance": {"task": "classification", "window": 300,
                              "floors": {"accuracy": 0.72, "precision": 0.7, "recall": 0.7, "f1": 0.7, "auc": 0.75}}}


def engine(decisions: str) -> tuple[list, list]:
    config = parse_config({"models": {"credit": {**CLASSIFIER, "decisions": decisions}}})
    docs = (labelled("credit", 4000, seed=4, invert_at=1500) + labelled("credit", 4000, seed=5)
            + labelled("credit", 1500, seed=6, invert_at=500))
    monitor = PartitionMonitor(config, 0, {})
    items = joined_items(config, docs)
    alerts = []
    for start in range(0, len(items), 700):
        alerts.extend(monitor.process_batch(items[start:start + 700]))
    column = monitor.models["credit"].performance
    points = [] if column is None else list(column.points)
    return ([(a.offset, a.status, a.name, a.detector, a.statistic, a.alert_id) for a in alerts
             if a.signal == "performance"], points)


def test_the_engine_decides_the_same_with_the_counts_as_with_a_recount(monkeypatch):
    kept = engine("partition")
    monkeypatch.setattr(performance.RollingMetrics, "metrics", recounted)
    again = engine("partition")
    assert kept == again
    limits = ("accuracy", "precision", "recall", "f1", "auc")
    assert [a[:3] for a in kept[0]] == [
        *((3169, "firing", m) for m in limits), (3185, "firing", "error_rate"), (6185, "resolved", "error_rate"),
        *((8569, "resolved", m) for m in limits), *((17149, "firing", m) for m in limits),
        (17201, "firing", "error_rate")]
    assert len(kept[1]) > 100, "the rolling points, compared too"
