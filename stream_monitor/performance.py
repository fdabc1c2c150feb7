"""Model performance from joined (prediction, label) pairs: each pair's error and the rolling metrics.

Classification: each pair's 0/1 error feeds river's ADWIN (bounded 0/1 values
are what ADWIN's distribution-free bound is made for, so the budget's delta
applies as it is); an alert when the error rate rises. Regression: the
absolute error's normal score against the first ``reference_pairs`` errors
feeds river's one-sided Page-Hinkley (up), calibrated like the feature
detectors. Rolling accuracy, precision, recall, F1 and ROC AUC (or MAE and
RMSE) over the last ``window`` pairs; a ``performance`` alert when one crosses
its configured floor (ceiling).

The detectors are adapters like a column's (:mod:`stream_monitor.adapters`:
``ErrorRate``, ``AbsoluteError``, ``MetricLimit``) and the model's
:class:`stream_monitor.partition.PerformanceColumn` walks their episodes with
the same code as every column's; this module holds what they read: a pair's
row (:func:`pair_row`) and the rolling window (:class:`RollingMetrics`).

On by default: without a configured ``task`` the task is inferred once, from
the model's predictions, by :func:`infer_task` (a predicted label, or scores
in [0, 1] → classification; any other number → regression). The inferred task
is part of the model's state and never changes by itself: under an inferred
classification a pair is scored by its predicted label, else by score ≥ 0.5;
under an inferred regression a pair without a numeric score and label is not
scored (counted as ``unscored``). Setting ``task`` restarts the model's
performance detectors with it.

>>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from .codec import category
from .config import PerformanceConfig
from .reference import is_finite_number


def auc(truth: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC by ranks (ties share ranks); ``None`` when one class is absent."""
    positives = sum(truth)
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return None
    return _auc(np.asarray(scores, dtype=float), np.asarray(truth) == 1, positives, negatives)


def _auc(values: np.ndarray, positive: np.ndarray, positives: int, negatives: int) -> float:
    """:func:`auc` of float64 ``values`` whose positives are ``positive`` (both classes present). The ranks
    are multiples of 1/2, so their sum is exact in any order: the pairs' order does not matter."""
    order = np.argsort(values, kind="mergesort")
    sorted_scores = values[order]
    n = len(sorted_scores)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # each run of equal scores
    ends = np.r_[starts[1:], n] - 1
    ranks = np.empty(n)
    ranks[order] = np.repeat((starts + ends) / 2 + 1, ends - starts + 1)  # average ranks over ties
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def infer_task(predicted_label: bool, scores: tuple[float, float] | None) -> str | None:
    """The task of a model from its predictions: whether one had a predicted label, and the least and
    greatest score (``None``: no score). ``None`` when there is no prediction to tell from.

    >>> infer_task(True, (3.0, 9.5)), infer_task(False, (0.0, 1.0)), infer_task(False, (-0.2, 0.9))
    ('classification', 'classification', 'regression')
    >>> infer_task(False, None) is None
    True
    """
    if predicted_label:
        return "classification"
    if scores is None:
        return None
    low, high = scores
    return "classification" if 0.0 <= low and high <= 1.0 else "regression"


def pair_row(classification: bool, positive: str, prediction: Mapping[str, Any], label: Any) -> tuple | None:
    """A joined pair as the rolling window keeps it, its error last: (truth, predicted, score, 0/1 error)
    for classification, (score, label, absolute error) for regression; ``None`` when the pair says
    nothing (no predicted label or score; a regression score or label that is not a finite number)."""
    score = prediction.get("score")
    if classification:
        truth = int(category(label) == positive)
        if prediction.get("label") is not None:
            predicted = int(category(prediction["label"]) == positive)
            error = int(category(prediction["label"]) != category(label))
        elif score is not None:
            predicted = int(score >= 0.5)
            error = int(predicted != truth)
        else:
            return None
        return truth, predicted, score, error
    if not is_finite_number(score) or not is_finite_number(label):
        return None
    return float(score), float(label), abs(float(score) - float(label))


class RollingMetrics:
    """The last ``window`` pairs' rows and label delays; the metrics are evaluated every
    ``window // 10`` pairs once the window is full (what the floor and ceiling detectors read).
    ``pairs_seen`` counts the pairs scored, ``unscored`` the joined pairs the task could not score.

    Classification keeps its counts as rows enter and leave the window (the confusion matrix's cells, the
    errors, the scored pairs and their positives) and the scores and truths in slots of a ring, so that an
    evaluation costs the AUC's sort and no pass over the rows; the values are those of counting the window
    afresh. Regression sums the window's errors in order at each evaluation (a running sum would round
    differently)."""

    def __init__(self, config: PerformanceConfig, task: str):
        self.classification = task == "classification"
        self.pairs_seen = 0
        self.unscored = 0
        self.window: deque = deque(maxlen=config.window)
        self.delays: deque = deque(maxlen=config.window)
        self.evaluate_every = max(1, config.window // 10)
        self._reset()

    def _reset(self) -> None:
        size = self.window.maxlen
        self._cells = [0, 0, 0, 0]  # rows by truth * 2 + predicted: tn, fp, fn, tp
        self._errors = 0
        self._scored = 0  # rows with a score, and of them the positives
        self._scored_positives = 0
        self._next = 0  # the ring slot of the next row (the slot of the row it evicts)
        if self.classification:
            self._scores = np.zeros(size)
            self._truths = np.zeros(size, dtype=bool)
            self._has_score = np.zeros(size, dtype=bool)

    def _push(self, row: tuple) -> None:
        """``row`` into the window (classification: the counts and the ring follow)."""
        window = self.window
        if not self.classification:
            window.append(row)
            return
        cells = self._cells
        if len(window) == window.maxlen:
            truth, predicted, score, error = window[0]
            cells[(2 if truth else 0) + (1 if predicted else 0)] -= 1
            self._errors -= error
            if score is not None:
                self._scored -= 1
                self._scored_positives -= truth == 1
        window.append(row)
        truth, predicted, score, error = row
        cells[(2 if truth else 0) + (1 if predicted else 0)] += 1
        self._errors += error
        slot = self._next
        self._next = slot + 1 if slot + 1 < window.maxlen else 0
        self._truths[slot] = truth == 1
        if score is None:
            self._has_score[slot] = False
        else:
            self._scored += 1
            self._scored_positives += truth == 1
            self._scores[slot] = score
            self._has_score[slot] = True

    def add_many(self, rows: Sequence[tuple]) -> list[tuple[int, dict[str, float | None]]]:
        """Count ``rows`` in order; the metrics as (index into ``rows``, metrics) where they were evaluated."""
        out = []
        window, every, push = self.window, self.evaluate_every, self._push
        for j, row in enumerate(rows):
            push(row)
            self.pairs_seen += 1
            if len(window) == window.maxlen and self.pairs_seen % every == 0:
                out.append((j, self.metrics()))
        return out

    def metrics(self) -> dict[str, float | None]:
        n = len(self.window)
        if not n:
            return {}
        if self.classification:
            _, fp, fn, tp = self._cells
            precision = tp / (tp + fp) if tp + fp else None
            recall = tp / (tp + fn) if tp + fn else None
            f1 = (2 * precision * recall / (precision + recall)
                  if precision is not None and recall is not None and precision + recall else None)
            scored, positives = self._scored, self._scored_positives
            area = None
            if scored and positives and scored - positives:
                if scored == len(self._scores):  # every slot holds a scored row
                    values, truths = self._scores, self._truths
                else:
                    mask = self._has_score
                    values, truths = self._scores[mask], self._truths[mask]
                area = _auc(values, truths, positives, scored - positives)
            return {"accuracy": 1 - self._errors / n, "precision": precision, "recall": recall,
                    "f1": f1, "auc": area}
        errors = [r[2] for r in self.window]
        return {"mae": sum(errors) / len(errors), "rmse": math.sqrt(sum(e * e for e in errors) / len(errors))}

    def info(self) -> dict[str, Any]:
        """Pairs counted, the rolling metrics and the label delay's p50 and p95 (status, page, metrics)."""
        delays = sorted(self.delays)
        out: dict[str, Any] = {"pairs": self.pairs_seen, **self.metrics()}
        if self.unscored:
            out["unscored"] = self.unscored
        if delays:
            out["label_delay_p50_ms"] = delays[len(delays) // 2]
            out["label_delay_p95_ms"] = delays[min(len(delays) - 1, int(0.95 * len(delays)))]
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"pairs_seen": self.pairs_seen, "unscored": self.unscored, "window": list(self.window),
                "delays": list(self.delays)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.pairs_seen = state["pairs_seen"]
        self.unscored = state.get("unscored", 0)  # absent in states saved before it was counted
        self.window.clear()
        self._reset()
        for r in state["window"]:
            self._push(tuple(r))
        self.delays.clear()
        self.delays.extend(state["delays"])
