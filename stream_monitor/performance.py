"""Model performance from joined (prediction, label) pairs: rolling metrics and concept drift.

Classification: each pair's 0/1 error feeds river's ADWIN (bounded 0/1 values
are what ADWIN's distribution-free bound is made for, so the budget's delta
applies as it is); an alert when the error rate rises. Regression: the
absolute error's normal score against the first ``reference_pairs`` errors
feeds river's one-sided Page-Hinkley (up), calibrated like the feature
detectors. Rolling accuracy, precision, recall, F1 and ROC AUC (or MAE and
RMSE) over the last ``window`` pairs; a ``performance`` alert when one crosses
its configured floor (ceiling).

On by default: without a configured ``task`` the task is inferred once, from
the model's predictions, by :func:`infer_task` (a predicted label, or scores
in [0, 1] → classification; any other number → regression). The inferred task
is part of the monitor's state and never changes by itself: under an inferred
classification a pair is scored by its predicted label, else by score ≥ 0.5;
under an inferred regression a pair without a numeric score and label is not
scored (counted as ``unscored``). Setting ``task`` restarts the monitor with it.

>>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from .calibration import adwin_delta, page_hinkley_threshold
from .codec import category
from .config import ModelConfig
from .detectors import AdwinDetector, Episode, PageHinkleyDetector
from .detectors.transform import RankTransform
from .events import Alert
from .reference import is_finite_number
from .severity import rate_effect, rate_severity, severity as grade, shift_in_sd


def auc(truth: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC by ranks (ties share ranks); ``None`` when one class is absent."""
    positives = sum(truth)
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(np.asarray(scores, dtype=float), kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = np.asarray(scores, dtype=float)[order]
    i = 0
    while i < len(sorted_scores):  # average ranks over ties
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = float(ranks[np.asarray(truth) == 1].sum())
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


def error_rate_severity(level: float, before: float) -> str:
    """An error rate's rise: graded by its size (Cohen's h, :mod:`stream_monitor.severity`)."""
    return rate_severity(level, before)


def absolute_error_severity(level: float, mean: float, std: float) -> str:
    """A regression's mean absolute error since the change, against the reference errors."""
    return grade(shift_in_sd(level, mean, std))


class PerformanceMonitor:
    def __init__(self, model: ModelConfig, task: str | None = None):
        """``task``: the inferred task when the config sets none (the config's wins)."""
        self.model_id = model.model_id
        self.config = cfg = model.performance
        det = self._detectors = model.detectors
        self.task = cfg.task or task or "classification"
        self.inferred = not cfg.task
        self.classification = self.task == "classification"
        self.positive = cfg.positive_label
        self.pairs_seen = 0
        self.unscored = 0  # joined pairs the task could not score (a regression pair without numbers)
        self.window: deque = deque(maxlen=cfg.window)
        self.delays: deque = deque(maxlen=cfg.window)
        self.evaluate_every = max(1, cfg.window // 10)
        budget = det.false_alarms_per_million

        def episode() -> Episode:
            return Episode(det.resolve_after, det.cooldown, det.hysteresis)

        self.episodes: dict[str, Episode] = {}
        self.adwin: AdwinDetector | None = None
        self.page_hinkley: PageHinkleyDetector | None = None
        self.error_reference: list[float] = []
        self.transform: RankTransform | None = None
        if self.classification:
            a = det.adwin
            self.adwin = AdwinDetector(a.delta or adwin_delta(budget, a.clock), a.clock, a.max_buckets,
                                       a.min_window_length, a.grace_period)
            self.episodes["error_rate/adwin"] = episode()
        else:
            p = det.page_hinkley
            self.ph_threshold = p.threshold or page_hinkley_threshold(budget, p.delta)
            self.episodes["absolute_error/page_hinkley"] = episode()
        # floors are classification metrics, ceilings regression ones (both may be set for an inferred task)
        self.floors = dict(cfg.floors) if self.classification else {}
        self.ceilings = {} if self.classification else dict(cfg.ceilings)
        for metric in self.floors:
            self.episodes[f"{metric}/floor"] = episode()
        for metric in self.ceilings:
            self.episodes[f"{metric}/ceiling"] = episode()
        self.last: dict[str, float] = {}

    # --- one pair ---------------------------------------------------------------------------------

    def pair(self, prediction: Mapping[str, Any], label: Any, label_time_ms: int | None, offset: int,
             partition: int, event_time_ms: int | None) -> list[Alert]:
        """A joined (prediction, label) pair, counted by the message at ``offset``."""
        alerts: list[Alert] = []
        context = (offset, partition, event_time_ms)
        if prediction.get("t") is not None and label_time_ms is not None:
            self.delays.append(max(0, label_time_ms - prediction["t"]))
        score = prediction.get("score")
        if self.classification:
            truth = int(category(label) == self.positive)
            if prediction.get("label") is not None:
                predicted = int(category(prediction["label"]) == self.positive)
                error = int(category(prediction["label"]) != category(label))
            elif score is not None:
                predicted = int(score >= 0.5)
                error = int(predicted != truth)
            else:
                self.unscored += 1
                return alerts
            self.window.append((truth, predicted, score, error))
            before = self.adwin.window_mean
            detected, _, _, levels = self.adwin.update_levels(np.array([float(error)]))
            rose = bool(detected[0]) and self.adwin.window_mean > before
            self.last["error_rate/adwin"] = self.adwin.window_mean
            level = float(levels[0]) if rose else self.adwin.window_mean
            alerts.extend(self._point("error_rate/adwin", rose, level, before, context,
                                      error_rate_severity(level, before) if rose else "warning"))
        else:
            if not is_finite_number(score) or not is_finite_number(label):
                self.unscored += 1
                return alerts
            error = abs(float(score) - float(label))
            self.window.append((float(score), float(label), error))
            if self.transform is None:
                self.error_reference.append(error)
                if len(self.error_reference) >= self.config.reference_pairs:
                    grid = np.quantile(np.asarray(self.error_reference), np.linspace(0, 1, 1001)).tolist()
                    self.transform = RankTransform(grid, len(self.error_reference))
                    ph = self._ph_config()
                    self.page_hinkley = PageHinkleyDetector(ph.min_instances, ph.delta, self.ph_threshold, ph.alpha,
                                                            mode="up")
                    self.error_reference = []
            else:
                detected, _, levels = self.page_hinkley.update_levels(
                    np.array([self.transform.normal_score(error)]), np.array([error]))
                detected = bool(detected[0])
                self.last["absolute_error/page_hinkley"] = self.page_hinkley.statistic
                level = float(levels[0]) if detected else None
                mean, std = self.error_reference_level()
                alerts.extend(self._point("absolute_error/page_hinkley", detected, self.page_hinkley.statistic,
                                          level, context,
                                          absolute_error_severity(level, mean, std) if detected else "warning"))
        self.pairs_seen += 1
        for key, episode in self.episodes.items():
            if key.endswith(("/floor", "/ceiling")):
                episode.quiet_tick()
        if len(self.window) == self.window.maxlen and self.pairs_seen % self.evaluate_every == 0:
            alerts.extend(self._limits(context))
        return alerts

    def _ph_config(self):
        return self._detectors.page_hinkley

    def error_reference_level(self) -> tuple[float, float]:
        """Regression: the mean and standard deviation of the reference errors (from their quantiles)."""
        if self.transform is None:
            return math.nan, math.nan
        grid = np.asarray(self.transform.grid)
        return float(grid.mean()), float(grid.std())

    # --- rolling metrics ----------------------------------------------------------------------------

    def metrics(self) -> dict[str, float | None]:
        rows = list(self.window)
        if not rows:
            return {}
        if self.classification:
            truth = [r[0] for r in rows]
            predicted = [r[1] for r in rows]
            tp = sum(1 for t, p in zip(truth, predicted) if t and p)
            fp = sum(1 for t, p in zip(truth, predicted) if not t and p)
            fn = sum(1 for t, p in zip(truth, predicted) if t and not p)
            precision = tp / (tp + fp) if tp + fp else None
            recall = tp / (tp + fn) if tp + fn else None
            f1 = (2 * precision * recall / (precision + recall)
                  if precision is not None and recall is not None and precision + recall else None)
            scored = [(t, r[2]) for t, r in zip(truth, rows) if r[2] is not None]
            return {"accuracy": 1 - sum(r[3] for r in rows) / len(rows), "precision": precision, "recall": recall,
                    "f1": f1, "auc": auc([t for t, _ in scored], [s for _, s in scored]) if scored else None}
        errors = [r[2] for r in rows]
        return {"mae": sum(errors) / len(errors), "rmse": math.sqrt(sum(e * e for e in errors) / len(errors))}

    def _limits(self, context: tuple) -> list[Alert]:
        values = self.metrics()
        alerts = []
        for kind, limits in (("floor", self.floors), ("ceiling", self.ceilings)):
            for metric, limit in limits.items():
                value = values.get(metric)
                if value is None:
                    continue
                key = f"{metric}/{kind}"
                self.last[key] = value
                shortfall = (limit - value) if kind == "floor" else (value - limit)
                episode = self.episodes[key]
                if shortfall > 0 and not episode.firing:
                    transition = episode.detected("critical")
                elif shortfall <= 0 and episode.firing:
                    transition = episode._resolve()
                else:
                    transition = None
                if transition is None:
                    continue
                side = "below its floor" if kind == "floor" else "above its ceiling"
                message = (f"{metric} of {self.model_id} is {value:.3g}, {side} {limit:g}, over the last "
                           f"{len(self.window)} labelled predictions")
                if transition.status == "resolved":
                    message = f"{metric} of {self.model_id} is back to {value:.3g} (limit {limit:g})"
                alerts.append(self._alert(key, transition, value, limit, {kind: limit},
                                          {metric: value, "pairs": len(self.window)}, message, *context))
        return alerts

    def _point(self, key: str, detected: bool, statistic: float, before: float | None, context: tuple,
               severity: str = "warning") -> list[Alert]:
        """A detector's step. ADWIN: ``statistic`` is the error rate after the change (at a detection: the
        new sub-window's), ``before`` the window's rate before it. Page-Hinkley: ``statistic`` is the
        cumulative deviation, ``before`` the mean absolute error since the change began."""
        episode = self.episodes[key]
        transition = episode.detected(severity) if detected else episode.tick()
        if transition is None:
            return []
        name, detector = key.split("/")
        if detector == "adwin":
            threshold = self.adwin.delta
            level = statistic
            message = (f"error rate of {self.model_id} rose to {level:.3g} since the change (was {before:.3g}; "
                       f"{rate_effect(level, before):.2f} on Cohen's h, {transition.severity}): the model got worse "
                       f"(concept drift)")
            reference = {"error_rate": before}
            current = {"error_rate": level, "effect": rate_effect(level, before), "pairs": self.adwin.window_width}
        else:
            threshold = self.ph_threshold
            mean, std = self.error_reference_level()
            reference, current = {"threshold": threshold, "mean": mean, "std": std}, {"cumulative_deviation": statistic}
            message = (f"absolute error of {self.model_id} rose: Page-Hinkley cumulative deviation {statistic:.1f} "
                       f"> {threshold:g} (concept drift)")
            if before is not None:
                shift = shift_in_sd(before, mean, std)
                current.update(absolute_error=before, shift_sd=shift)
                message = (f"absolute error of {self.model_id} rose to {before:.4g} on average since the change began "
                           f"(reference {mean:.4g} ± {std:.3g}, {shift:.1f} standard deviations, "
                           f"{transition.severity}); Page-Hinkley cumulative deviation {statistic:.1f} > {threshold:g} "
                           f"(concept drift)")
        if transition.status == "resolved":
            message = f"{name} of {self.model_id}: no further change for {episode.resolve_after} pairs, resolved"
        return [self._alert(key, transition, statistic, threshold, reference, current, message, *context)]

    def _alert(self, key: str, transition, statistic: float, threshold: float, reference: dict, current: dict,
               message: str, offset: int, partition: int, event_time_ms: int | None) -> Alert:
        name, detector = key.split("/")
        alert = Alert(status=transition.status, severity=transition.severity, model_id=self.model_id,
                      signal="performance", name=name, detector=detector, statistic=float(statistic),
                      threshold=float(threshold), reference=reference, current=current, partition=partition,
                      offset=offset, event_time_ms=event_time_ms, message=message)
        self.episodes[key].last_alert_id = alert.alert_id
        return alert

    # --- state ------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"task": self.task, "unscored": self.unscored,
                "pairs_seen": self.pairs_seen, "window": list(self.window), "delays": list(self.delays),
                "adwin": None if self.adwin is None else self.adwin.snapshot(),
                "page_hinkley": None if self.page_hinkley is None else self.page_hinkley.snapshot(),
                "error_reference": list(self.error_reference),
                "grid": None if self.transform is None else self.transform.grid,
                "grid_events": self.config.reference_pairs,
                "episodes": {k: e.snapshot() for k, e in self.episodes.items()}, "last": dict(self.last)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.pairs_seen = state["pairs_seen"]
        self.unscored = state.get("unscored", 0)
        self.window.clear()
        self.window.extend(tuple(r) for r in state["window"])
        self.delays.clear()
        self.delays.extend(state["delays"])
        if self.adwin is not None and state["adwin"] is not None:
            self.adwin.restore(state["adwin"])
        self.error_reference = list(state["error_reference"])
        if state["grid"] is not None:
            self.transform = RankTransform(state["grid"], state["grid_events"])
            ph = self._ph_config()
            self.page_hinkley = PageHinkleyDetector(ph.min_instances, ph.delta, self.ph_threshold, ph.alpha, mode="up")
            self.page_hinkley.restore(state["page_hinkley"])
        for key, saved in state["episodes"].items():
            if key in self.episodes:
                self.episodes[key].restore(saved)
        self.last = dict(state["last"])

    def summary(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(metrics and label delays, detector rows) for status, the page and the metrics."""
        delays = sorted(self.delays)
        info: dict[str, Any] = {"task": self.task + (" (inferred)" if self.inferred else ""),
                                "pairs": self.pairs_seen, **self.metrics()}
        if self.unscored:
            info["unscored"] = self.unscored
        if delays:
            info["label_delay_p50_ms"] = delays[len(delays) // 2]
            info["label_delay_p95_ms"] = delays[min(len(delays) - 1, int(0.95 * len(delays)))]
        rows = []
        for key, episode in self.episodes.items():
            name, detector = key.split("/")
            limit = (self.floors.get(name) if detector == "floor" else self.ceilings.get(name)
                     if detector == "ceiling" else self.ph_threshold if detector == "page_hinkley" else None)
            rows.append({"signal": "performance", "name": name, "detector": detector, "statistic": self.last.get(key),
                         "threshold": limit, "critical": limit, "firing": episode.firing,
                         "severity": episode.severity if episode.firing else None,
                         "last_alert_id": episode.last_alert_id})
        return info, rows
