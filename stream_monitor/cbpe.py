"""Performance before labels: a classifier's accuracy, precision, recall and F1 estimated from its scores.

Confidence-based performance estimation, streaming: the scores are calibrated
once on reference pairs (score, true label) by histogram binning
(:class:`Calibration`: equal-frequency bins, each bin's share of positives),
then each tumbling window of ``window`` predictions gives the *expected*
confusion matrix — a predicted positive (the event's predicted label when it
has one, else its score at or above the decision threshold:
:func:`predicted_positive`) with calibrated probability ``p`` is a true
positive with probability ``p`` and a false positive with ``1 − p`` — and from
it the expected metrics (:func:`expected_metrics`). No
label is needed, so a shift into a region where the model is less sure shows
before the labels arrive.

A window's estimate is judged against the reference's range
(:func:`reference_floors`): the spread of the same estimate over seeded
windows of ``window`` calibrated reference scores, a floor ``z`` standard
deviations under their mean, ``z`` from the false-alarm budget.

>>> c = Calibration.fit([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9], [0, 0, 0, 1, 0, 1, 1, 1], bins=2)
>>> c.probability(np.array([0.15, 0.85])).tolist()
[0.25, 0.75]
>>> m = expected_metrics(c.probability(np.array([0.15, 0.85])), np.array([False, True]))
>>> {k: round(v, 3) for k, v in m.items()}
{'accuracy': 0.75, 'precision': 0.75, 'recall': 0.75, 'f1': 0.75}
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np

from . import history
from .codec import category
from .config import EstimatedPerformanceConfig
from .detectors.episode import Episode, Transition
from .events import Alert

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


def predicted_positive(score: float, label: Any, positive: str, threshold: float) -> bool:
    """Whether a prediction is of the positive class: its predicted label when it has one (compared by its
    JSON spelling with ``positive``), else its score at or above ``threshold``.

    >>> predicted_positive(0.3, 1, "1", 0.5), predicted_positive(0.7, "no", "yes", 0.5), predicted_positive(0.7, None, "1", 0.5)
    (True, False, True)
    """
    if label is not None:
        return category(label) == positive
    return score >= threshold


def expected_metrics(probabilities: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """The expected confusion matrix's accuracy, precision, recall and F1, given each prediction's calibrated
    probability of the positive class and whether it was predicted positive (an undefined ratio is 0)."""
    predicted = np.asarray(predicted, dtype=bool)
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


def reference_floors(calibration: Calibration, scores: Sequence[float], predicted: Sequence[bool], window: int,
                     z: float, draws: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per metric: the reference estimate's ``mean`` and ``sd`` over ``draws`` seeded windows of
    ``window`` predictions drawn (with replacement) from the reference (``scores``, ``predicted``), the sd
    widened by the reference mean's own uncertainty, and its ``floor`` ``z`` sds under the mean."""
    s = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(predicted, dtype=bool)
    rng = np.random.default_rng(seed)
    p = calibration.probability(s)
    estimates = {m: [] for m in METRICS}
    for _ in range(draws):
        pick = rng.integers(0, len(s), window)
        for m, v in expected_metrics(p[pick], positive[pick]).items():
            estimates[m].append(v)
    # the reference's mean is itself an estimate from len(s) scores: its variance adds window / len(s) of a
    # window's to the difference a new window shows
    spread = float(np.sqrt(1 + window / len(s)))
    out = {}
    for m in METRICS:
        values = np.asarray(estimates[m])
        mean, sd = float(values.mean()), float(values.std(ddof=1)) * spread
        out[m] = {"mean": mean, "sd": sd, "floor": mean - z * sd}
    return out


def describe(model_id: str, metric: str, transition: Transition, metrics: Mapping[str, float],
             floor: Mapping[str, float], window: int, pairs: int) -> tuple[dict, dict, str]:
    """An estimated-performance alert's reference, current and message: ``metrics`` of a window of ``window``
    predictions against ``floor`` (its mean, sd and floor), calibrated on ``pairs`` pairs."""
    value = metrics[metric]
    if transition.status == "firing":
        text = (f"estimated {metric} of {model_id} is {value:.3g}, below the reference's range "
                f"(floor {floor['floor']:.3g}, reference {floor['mean']:.3g}) over the last {window} "
                f"predictions, from their scores (no labels needed)")
    else:
        text = (f"estimated {metric} of {model_id} is back to {value:.3g} (floor {floor['floor']:.3g}) "
                f"over the last {window} predictions")
    return ({"mean": floor["mean"], "sd": floor["sd"], "pairs": pairs},
            {"estimate": dict(metrics), "events": window}, text)


class EstimatedWindow:
    """Tumbling windows of ``window`` predictions (score, predicted positive); each closed window's expected
    metrics."""

    def __init__(self, calibration: Calibration, window: int):
        self.calibration = calibration
        self.window = window
        self.pending: list[tuple[float, bool]] = []
        self.closed = 0
        self.last: dict[str, float] | None = None

    def add_many(self, predictions: Sequence[tuple[float, bool]]) -> list[tuple[int, dict[str, float]]]:
        """Count ``predictions`` in order; the estimates as (index into them, metrics) where a window closed."""
        out = []
        pending = self.pending
        for j, (score, positive) in enumerate(predictions):
            pending.append((float(score), bool(positive)))
            if len(pending) == self.window:
                s = np.fromiter((x for x, _ in pending), dtype=np.float64, count=len(pending))
                positives = np.fromiter((y for _, y in pending), dtype=bool, count=len(pending))
                self.last = expected_metrics(self.calibration.probability(s), positives)
                self.closed += 1
                out.append((j, self.last))
                pending.clear()
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"pending": [[s, p] for s, p in self.pending], "closed": self.closed, "last": self.last}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.pending = [(float(s), bool(p)) for s, p in state["pending"]]
        self.closed = state["closed"]
        self.last = None if state["last"] is None else dict(state["last"])


class EstimatedPerformance:
    """One model's estimated performance in one partition: the first ``reference_pairs`` joined (score,
    predicted, truth) pairs calibrate it (:meth:`add_pair`); from then on each window of predictions
    (:meth:`add_predictions`) is estimated and judged per metric against its floor, a limit episode per
    metric (fires below the floor, resolves once a window is back at or above it)."""

    def __init__(self, model_id: str, config: EstimatedPerformanceConfig, false_alarms_per_million: float):
        self.model_id = model_id
        self.config = config
        self.settings = {"window": config.window, "reference_pairs": config.reference_pairs,
                         "decision_threshold": config.decision_threshold, "budget": false_alarms_per_million}
        self.z = budget_z(false_alarms_per_million, config.window)
        self.pairs: list[tuple[float, bool, int]] = []
        self.calibration: Calibration | None = None
        self.floors: dict[str, dict[str, float]] | None = None
        self.windows: EstimatedWindow | None = None
        self.episodes = {m: Episode(cooldown=0) for m in METRICS}
        self.points = history.pending()  # each closed window's estimates, for the report (not saved)

    def recalibrate(self, false_alarms_per_million: float) -> None:
        """The same calibration and state, judged at another share of the budget (the floors move with z)."""
        if false_alarms_per_million == self.settings["budget"]:
            return
        self.settings["budget"] = false_alarms_per_million
        self.z = budget_z(false_alarms_per_million, self.config.window)
        if self.floors is not None:
            for floor in self.floors.values():
                floor["floor"] = floor["mean"] - self.z * floor["sd"]

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def add_pair(self, score: float, predicted: bool, truth: bool) -> None:
        """A joined pair with a score; the one that completes the reference calibrates."""
        if self.calibration is not None:
            return
        self.pairs.append((float(score), bool(predicted), int(truth)))
        if len(self.pairs) >= self.config.reference_pairs:
            self._calibrate()

    def calibrate_on(self, pairs: Sequence[tuple[float, bool, int]]) -> None:
        """Calibrate at once on given (score, predicted positive, truth) pairs: a stored reference's."""
        self.pairs = [(float(s), bool(p), int(t)) for s, p, t in pairs]
        self._calibrate()

    def _calibrate(self) -> None:
        scores = [s for s, _, _ in self.pairs]
        self.calibration = Calibration.fit(scores, [t for _, _, t in self.pairs])
        self.floors = reference_floors(self.calibration, scores, [p for _, p, _ in self.pairs],
                                       self.config.window, self.z)
        self.windows = EstimatedWindow(self.calibration, self.config.window)
        self.pairs = []

    def add_predictions(self, predictions: Sequence[tuple[float, bool]], offsets: Sequence[int], partition: int,
                        times: Sequence[int | None]) -> list[tuple[int, Alert]]:
        """Scored predictions (score, predicted positive) in order, each at its offset; the alerts as (index,
        alert), in metric order within a window. Nothing before calibration."""
        if self.windows is None:
            return []
        out = []
        for j, metrics in self.windows.add_many(predictions):
            for metric in METRICS:
                value, floor = metrics[metric], self.floors[metric]
                self.points.append(history.window_point(
                    self.model_id, "estimated_performance", metric, "cbpe", value, floor["floor"],
                    floor["mean"] - 2 * self.z * floor["sd"], offsets[j], partition, times[j]))
                transition = self.episodes[metric].limit(value < floor["floor"], self._severity(value, floor))
                if transition is not None:
                    out.append((j, self._alert(metric, transition, metrics, offsets[j], partition, times[j])))
        return out

    def _severity(self, value: float, floor: Mapping[str, float]) -> str:
        """Critical when the estimate is twice as far under the mean as the floor is."""
        return "critical" if value < floor["mean"] - 2 * self.z * floor["sd"] else "warning"

    def _alert(self, metric: str, transition: Transition, metrics: Mapping[str, float], offset: int,
               partition: int, event_time_ms: int | None) -> Alert:
        reference, current, text = describe(self.model_id, metric, transition, metrics, self.floors[metric],
                                            self.config.window, self.calibration.pairs)
        return Alert(transition.status, transition.severity, self.model_id, "estimated_performance", metric, "cbpe",
                     metrics[metric], self.floors[metric]["floor"], reference, current, partition, offset,
                     event_time_ms, text)

    def info(self) -> dict[str, Any] | None:
        """The last window's estimates and their floors (status, page, metrics); ``None`` before calibration."""
        if self.windows is None:
            return None
        return {"window": self.config.window, "windows": self.windows.closed,
                "metrics": None if self.windows.last is None else dict(self.windows.last),
                "floors": {m: f["floor"] for m, f in self.floors.items()}}

    def rows(self) -> list[dict[str, Any]]:
        """One detector row per metric (the status table's shape)."""
        if self.windows is None:
            return []
        last = self.windows.last or {}
        return [{"signal": "estimated_performance", "name": m, "detector": "cbpe", "statistic": last.get(m),
                 "threshold": self.floors[m]["floor"], "critical": None, "firing": e.firing,
                 "severity": e.severity if e.firing else None, "last_alert_id": e.last_alert_id}
                for m, e in self.episodes.items()]

    def snapshot(self) -> dict[str, Any]:
        return {"settings": self.settings, "pairs": [list(p) for p in self.pairs],
                "calibration": None if self.calibration is None else self.calibration.to_dict(),
                "floors": self.floors, "windows": None if self.windows is None else self.windows.snapshot(),
                "episodes": {m: e.snapshot() for m, e in self.episodes.items()}}

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Continue from a snapshot; ``False`` (and nothing restored) when it was taken with other settings."""
        if dict(state["settings"]) != self.settings:
            return False
        self.pairs = [(float(s), bool(p), int(t)) for s, p, t in state["pairs"]]
        if state["calibration"] is not None:
            self.calibration = Calibration.from_dict(state["calibration"])
            self.floors = {m: dict(f) for m, f in state["floors"].items()}
            self.windows = EstimatedWindow(self.calibration, self.config.window)
            self.windows.restore(state["windows"])
        for m, saved in state["episodes"].items():
            self.episodes[m].restore(saved)
        return True
