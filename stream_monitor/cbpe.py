"""Performance before labels: a classifier's accuracy, precision, recall and F1 estimated from its scores.

Confidence-based performance estimation, streaming: the scores are calibrated
once on reference pairs (score, true label) by histogram binning
(:class:`Calibration`: equal-frequency bins, each bin's share of positives),
then each tumbling window of ``window`` predictions gives the *expected*
confusion matrix — a prediction ``score ≥ 0.5`` with calibrated probability
``p`` is a true positive with probability ``p`` and a false positive with
``1 − p`` — and from it the expected metrics (:func:`expected_metrics`). No
label is needed, so a shift into a region where the model is less sure shows
before the labels arrive.

A window's estimate is judged against the reference's range
(:func:`reference_floors`): the spread of the same estimate over seeded
windows of ``window`` calibrated reference scores, a floor ``z`` standard
deviations under their mean, ``z`` from the false-alarm budget.

>>> c = Calibration.fit([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9], [0, 0, 0, 1, 0, 1, 1, 1], bins=2)
>>> c.probability(np.array([0.15, 0.85])).tolist()
[0.25, 0.75]
>>> m = expected_metrics(c.probability(np.array([0.15, 0.85])), np.array([0.15, 0.85]))
>>> {k: round(v, 3) for k, v in m.items()}
{'accuracy': 0.75, 'precision': 0.75, 'recall': 0.75, 'f1': 0.75}
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np

METRICS = ("accuracy", "precision", "recall", "f1")


class Calibration:
    """Histogram binning: ``edges`` (inner cut points of the scores) and each bin's share of positives."""

    def __init__(self, edges: Sequence[float], probabilities: Sequence[float], pairs: int):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.pairs = pairs

    @classmethod
    def fit(cls, scores: Sequence[float], truth: Sequence[int], bins: int = 10) -> "Calibration":
        """Equal-frequency bins of ``scores``; each bin's positives, smoothed by one pseudo-pair at the
        bin's mean score (so an all-negative bin of few pairs is not certain)."""
        s = np.asarray(scores, dtype=np.float64)
        t = np.asarray(truth, dtype=np.float64)
        if len(s) == 0:
            raise ValueError("calibration needs at least one pair")
        edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)[1:-1]))
        index = np.searchsorted(edges, s, side="right")
        counts = np.bincount(index, minlength=len(edges) + 1).astype(np.float64)
        positives = np.bincount(index, weights=t, minlength=len(edges) + 1)
        means = np.bincount(index, weights=s, minlength=len(edges) + 1) / np.maximum(counts, 1)
        probabilities = np.where(counts > 0, (positives + means) / (counts + 1), means)
        # few pairs per bin: the plain share, the pseudo-pair only where a bin is pure
        plain = np.where(counts > 0, positives / np.maximum(counts, 1), means)
        pure = (plain == 0) | (plain == 1)
        return cls(edges, np.where(pure, probabilities, plain), len(s))

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """The calibrated probability of the positive class for each score."""
        return self.probabilities[np.searchsorted(self.edges, scores, side="right")]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "probabilities": self.probabilities.tolist(), "pairs": self.pairs}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        return cls(d["edges"], d["probabilities"], d["pairs"])


def expected_metrics(probabilities: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The expected confusion matrix's accuracy, precision, recall and F1 (a prediction is positive when
    its score ≥ 0.5; an undefined ratio is 0)."""
    predicted = scores >= 0.5
    p = probabilities
    tp = float(p[predicted].sum())
    fp = float((1 - p[predicted]).sum())
    fn = float(p[~predicted].sum())
    tn = float((1 - p[~predicted]).sum())
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1}


def budget_z(false_alarms_per_million: float, window: int) -> float:
    """How many standard deviations under the reference mean a window's estimate may fall by chance:
    the budget's share per window, split over the four metrics (one-sided).

    >>> round(budget_z(1.0, 1000), 2)
    3.48
    """
    p = min(0.5, false_alarms_per_million * 1e-6 * window / len(METRICS))
    return NormalDist().inv_cdf(1 - p)


def reference_floors(calibration: Calibration, scores: Sequence[float], window: int, z: float,
                     draws: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per metric: the reference estimate's ``mean`` and ``sd`` over ``draws`` seeded windows of
    ``window`` scores drawn (with replacement) from the reference ``scores``, and its ``floor``."""
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    p = calibration.probability(s)
    estimates = {m: [] for m in METRICS}
    for _ in range(draws):
        pick = rng.integers(0, len(s), window)
        for m, v in expected_metrics(p[pick], s[pick]).items():
            estimates[m].append(v)
    out = {}
    for m in METRICS:
        values = np.asarray(estimates[m])
        mean, sd = float(values.mean()), float(values.std(ddof=1))
        out[m] = {"mean": mean, "sd": sd, "floor": mean - z * sd}
    return out


class EstimatedWindow:
    """Tumbling windows of ``window`` scores; each closed window's expected metrics."""

    def __init__(self, calibration: Calibration, window: int):
        self.calibration = calibration
        self.window = window
        self.pending: list[float] = []
        self.closed = 0
        self.last: dict[str, float] | None = None

    def add_many(self, scores: Sequence[float]) -> list[tuple[int, dict[str, float]]]:
        """Count ``scores`` in order; the estimates as (index into ``scores``, metrics) where a window closed."""
        out = []
        pending = self.pending
        for j, score in enumerate(scores):
            pending.append(float(score))
            if len(pending) == self.window:
                s = np.asarray(pending)
                self.last = expected_metrics(self.calibration.probability(s), s)
                self.closed += 1
                out.append((j, self.last))
                pending.clear()
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"pending": list(self.pending), "closed": self.closed, "last": self.last}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.pending = list(state["pending"])
        self.closed = state["closed"]
        self.last = None if state["last"] is None else dict(state["last"])
