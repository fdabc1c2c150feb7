"""Labels and realized performance decided per model (``decisions = "model"``): their partials and windows.

Pure: no Kafka, no Redis, and no other engine module but :mod:`stream_monitor.alerts`,
:mod:`stream_monitor.history`, :mod:`stream_monitor.performance` and :mod:`stream_monitor.reference`
(:mod:`stream_monitor.merge` drives it and decides the label column with the features' code).

- Partition side. A label event counts its label in the bucket of its own time (the partial's
  ``labels``: the categories' counts, bounded like a categorical column). A joined pair counts in the
  bucket of its **label's** time, whichever side completed the join (the partial's ``pairs``: what the
  performance windows need, for either task: the classification's error and confusion counts and score
  cells, the regression's fixed-point sums of absolute and squared errors). Integers only: partials add up
  exactly in any grouping.
- Merge side. The label column's window of at least ``psi.window`` labels, decided like a feature's
  against the model's one label reference (the stored reference's, else built here from the first whole
  buckets that hold ``reference.events`` labels). The performance window of at least
  ``performance.window`` pairs: the floors (ceilings) on its metrics, and the end of the error stream's
  point episodes (ADWIN, Page-Hinkley per partition; one model-level episode each): back nearer the
  error level before the change than the one after it.

>>> part = {}
>>> add_pair(part, {"score": 0.9, "label": 1, "t": 0}, 1, "1")
>>> add_pair(part, {"score": 0.2, "label": 1, "t": 0}, 0, "1")
>>> metrics = window_metrics("classification", part["pairs"])
>>> metrics["accuracy"], metrics["auc"], metrics["precision"]
(0.5, 1.0, 0.5)
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping

from . import alerts as words, history
from .config import ModelConfig
from .detectors.episode import Transition
from .performance import infer_task, pair_row
from .reference import ColumnReference, ColumnSummary, ReferenceProfile, category_key, column_from_dict, \
    is_finite_number, numeric_label_reference

FIXED = 1 << 16  # fixed point of the regression's error sums (2⁻¹⁶ per unit)
SCORE_CELLS = 1000  # a score's cell for the window's AUC: round(score × 1000) (ties within a cell count half)
POINTS = {"classification": ("error_rate", "adwin"), "regression": ("absolute_error", "page_hinkley")}


def model_task(model: ModelConfig, reference: ReferenceProfile | None) -> str | None:
    """The model's performance task: the configured one, else inferred from its reference's predictions
    (``None``: no reference yet). The same on every partition and in the merge, whatever the partitioning."""
    if model.performance.task:
        return model.performance.task
    if reference is None:
        return None
    scores = None if reference.score is None else (reference.score.minimum, reference.score.maximum)
    return infer_task(reference.predicted_label is not None, scores) or "classification"


# --- the partition side -----------------------------------------------------------------


def add_label(partial: dict[str, Any], label: Any, max_categories: int) -> None:
    """One label event in ``partial`` (a bucket's): ``None`` counts as missing."""
    part = partial.get("labels")
    if part is None:
        part = partial["labels"] = {"events": 0, "counts": {}, "overflow": 0}
    part["events"] += 1
    if label is None:
        return
    key, counts = category_key(label), part["counts"]
    if key in counts:
        counts[key] += 1
    elif len(counts) < max_categories:
        counts[key] = 1
    else:
        part["overflow"] += 1


def add_pair(partial: dict[str, Any], prediction: Mapping[str, Any], label: Any, positive: str) -> None:
    """One joined pair in ``partial``: its classification row and its regression row, where it has them
    (:func:`stream_monitor.performance.pair_row`)."""
    part = partial.get("pairs")
    if part is None:
        part = partial["pairs"] = {"n": 0, "cls": [0] * 6, "cells": {}, "reg": [0, 0, 0]}
    part["n"] += 1
    row = pair_row(True, positive, prediction, label)
    if row is not None:
        truth, predicted, score, error = row
        cls = part["cls"]  # pairs, errors, tp, fp, fn, tn
        cls[0] += 1
        cls[1] += error
        cls[2 + (0 if truth and predicted else 1 if predicted else 2 if truth else 3)] += 1
        if is_finite_number(score):
            cell = str(round(score * SCORE_CELLS))
            counts = part["cells"].setdefault(cell, [0, 0])
            counts[truth] += 1
    row = pair_row(False, positive, prediction, label)
    if row is not None:
        error = row[2]
        reg = part["reg"]  # pairs, Σ|e|, Σe² (fixed point)
        reg[0] += 1
        reg[1] += round(error * FIXED)
        reg[2] += round(error * error * FIXED)


def copy_parts(partial: Mapping[str, Any]) -> dict[str, Any]:
    """The label and pair parts of a partial, copied (a partial's other parts are the merge's)."""
    out: dict[str, Any] = {}
    labels = partial.get("labels")
    if labels is not None:
        out["labels"] = {**labels, "counts": dict(labels["counts"])}
    pairs = partial.get("pairs")
    if pairs is not None:
        out["pairs"] = _copy_pairs(pairs)
    segments = partial.get("segment_pairs")
    if segments is not None:  # per segment (or, counted during a warm-up, per segment value) its pairs
        out["segment_pairs"] = {key: {"pairs": _copy_pairs(part["pairs"])} for key, part in segments.items()}
    return out


def _copy_pairs(pairs: Mapping[str, Any]) -> dict[str, Any]:
    return {"n": pairs["n"], "cls": list(pairs["cls"]), "reg": list(pairs["reg"]),
            "cells": {c: list(v) for c, v in pairs["cells"].items()}}


def add_pairs(into: dict[str, Any], part: Mapping[str, Any]) -> None:
    """One partial's pair counts added to a window's, exactly."""
    if not into:
        into.update(copy_parts({"pairs": part})["pairs"])
        return
    into["n"] += part["n"]
    into["cls"] = [a + b for a, b in zip(into["cls"], part["cls"])]
    into["reg"] = [a + b for a, b in zip(into["reg"], part["reg"])]
    for cell, (negative, positive) in part["cells"].items():
        held = into["cells"].setdefault(cell, [0, 0])
        held[0] += negative
        held[1] += positive


# --- the merge side: labels ---------------------------------------------------------------


def label_summary(part: Mapping[str, Any], max_categories: int = 10_000) -> ColumnSummary:
    """A bucket's label part as the categorical summary it is."""
    summary = ColumnSummary("categorical", max_categories)
    summary.counts = dict(part["counts"])
    summary.overflow = part["overflow"]
    summary.present = sum(summary.counts.values()) + summary.overflow
    return summary


def label_state(state: dict[str, Any]) -> dict[str, Any]:
    """The model's label side in its merge state (created on first use: merge states saved before it)."""
    return state.setdefault("labels", {"reference": None, "warmup": None, "window": None, "windows": 0})


def label_reference(model: ModelConfig, reference: ReferenceProfile, labels: Mapping[str, Any]) \
        -> ColumnReference | None:
    """The model's one label reference: the stored reference's labels, else the one the merge built
    (numeric for a regression's numeric labels: :func:`stream_monitor.reference.numeric_label_reference`)."""
    if model.reference.source == "stored" and reference.labels is not None:
        return reference.labels
    return None if labels["reference"] is None else column_from_dict(labels["reference"])


def add_label_part(into: dict[str, Any], part: Mapping[str, Any], max_categories: int = 10_000) -> None:
    """One label part added to another (a window's, the warm-up's): a category past ``max_categories``
    counts in the overflow, as in one partition's summary."""
    into["events"] += part["events"]
    into["overflow"] += part["overflow"]
    counts = into["counts"]
    for key, count in part["counts"].items():
        if key in counts:
            counts[key] += count
        elif len(counts) < max_categories:
            counts[key] = count
        else:
            into["overflow"] += count


def warm_labels(model: ModelConfig, labels: dict[str, Any], bucket: int, parts: list[Mapping[str, Any]],
                max_categories: int = 10_000, numeric: bool = False) -> None:
    """One bucket's label parts (in topic, partition order) into the model's label warm-up; once the
    buckets so far hold ``reference.events`` labels, the label reference is built from them (as one
    partition's label warm-up builds its own: ``numeric``, a regression's, on the reference's quantile bins
    when every label is a number) and the warm-up ends."""
    warmup = labels["warmup"] or {"events": 0, "counts": {}, "overflow": 0}
    for part in parts:
        add_label_part(warmup, part, max_categories)
    if warmup["events"] < model.reference.events:
        labels["warmup"] = warmup
        return
    psi = model.detectors.psi
    built: ColumnReference | None = None
    if numeric:
        built = numeric_label_reference(warmup["counts"], warmup["events"], warmup["overflow"], psi.bins)
    if built is None:
        built = label_summary(warmup, max_categories).categorical(warmup["events"], psi.top_k)
    labels.update(warmup=None, reference=None if built is None else built.to_dict(), reference_bucket=bucket)


# --- the merge side: performance ----------------------------------------------------------


def performance_state(state: dict[str, Any]) -> dict[str, Any]:
    return state.setdefault("performance", {"window": None, "windows": 0})


def pairs_counted(task: str, pairs: Mapping[str, Any]) -> int:
    """The window's pairs that count for ``task``."""
    return pairs["cls"][0] if task == "classification" else pairs["reg"][0]


def window_metrics(task: str, pairs: Mapping[str, Any]) -> dict[str, float | None]:
    """The window's metrics from its counts: accuracy, precision, recall, F1 and ROC AUC (from the score
    cells) for a classification, MAE and RMSE for a regression, and the error stream's level (error rate,
    mean absolute error)."""
    if task == "classification":
        n, errors, tp, fp, fn, _tn = pairs["cls"]
        if n == 0:
            return {}
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall else None)
        return {"accuracy": 1 - errors / n, "precision": precision, "recall": recall, "f1": f1,
                "auc": _auc(pairs["cells"]), "error_rate": errors / n}
    n, absolute, squared = pairs["reg"]
    if n == 0:
        return {}
    mae = absolute / FIXED / n
    return {"mae": mae, "rmse": math.sqrt(squared / FIXED / n), "absolute_error": mae}


def _auc(cells: Mapping[str, list[int]]) -> float | None:
    """ROC AUC from per-cell (negatives, positives) counts; pairs in one cell count as ties."""
    negatives = sum(c[0] for c in cells.values())
    positives = sum(c[1] for c in cells.values())
    if negatives == 0 or positives == 0:
        return None
    below, total = 0, 0.0
    for cell in sorted(cells, key=int):
        negative, positive = cells[cell]
        total += positive * (below + negative / 2)
        below += negative
    return total / (positives * negatives)


def point_opened(saved: dict[str, Any], firing: Mapping[str, Any]) -> None:
    """A performance point episode just opened on ``firing``: remember the level it ends below (halfway
    between the error before the change and after it, as the firing measured them)."""
    if "back_below" in saved:
        return
    before, after = firing["reference"], firing["current"]
    if firing["detector"] == "adwin":
        level = (before["error_rate"] + after["error_rate"]) / 2
    else:
        mean, std = before.get("mean", math.nan), before.get("std", math.nan)
        level = (mean + after["absolute_error"]) / 2 if "absolute_error" in after else mean + std
    saved["back_below"] = level


AlertMaker = Callable[[Transition, str, str, str, float, float, tuple], Any]


def decide_performance(model: ModelConfig, task: str, window: Mapping[str, Any], episodes: Any,
                       alert: AlertMaker, points: list, payload: Mapping[str, Any], segment: tuple[str, str] | None = None
                       ) -> list:
    """A full performance window: each floor (classification) or ceiling (regression) on its metrics, then
    the end of the error stream's point episode if the window started after it opened and its error is
    back below the episode's level. ``episodes``: the merge's model-level episodes; ``alert``: builds a
    window decision's alert. ``segment``: a segment's window (its episodes' key prefix, and how messages
    name the model): its floors (ceilings) only, no history points (the error stream runs model-wide only)."""
    prefix, shown = ("", model.model_id) if segment is None else segment
    pairs = window["pairs"]
    metrics = window_metrics(task, pairs)
    counted = pairs_counted(task, pairs)
    limits, kind = (model.performance.floors, "floor") if task == "classification" else \
        (model.performance.ceilings, "ceiling")
    out = []
    for metric, value in metrics.items():
        if value is None or metric in POINTS[task] or segment is not None:
            continue
        limit = limits.get(metric)
        entry = history.window_point(model.model_id, "performance", metric, kind if limit is not None else "rolling",
                                     value, limit, limit, None, None, payload["last"])
        entry["buckets"] = [payload["first_bucket"], payload["last_bucket"]]
        points.append(entry)
    for metric, limit in limits.items():
        value = metrics.get(metric)
        if value is None:
            continue
        key = f"{prefix}performance|{metric}|{kind}"
        episode = episodes.level(key)
        transition = episode.limit((limit - value if kind == "floor" else value - limit) > 0)
        episodes.keep(key, episode)
        if transition is not None:
            out.append(alert(transition, "performance", metric, kind, value, limit,
                             words.limit_description(shown, metric, kind, transition, value, limit, counted)))
    if segment is not None:
        return out
    subject, detector = POINTS[task]
    key = f"performance|{subject}|{detector}"
    saved = episodes.state.get(key)
    level = metrics.get(subject)
    if saved is not None and saved["firing"] and saved["opened_bucket"] < window["first_bucket"] \
            and level is not None and level < saved.get("back_below", math.inf):
        episodes.state[key] = {**saved, "firing": False}
        what = "error rate" if task == "classification" else "mean absolute error"
        message = (f"{detector} on {model.model_id}'s {what}: back to {level:.3g} over the model's last {counted} "
                   f"labelled predictions (below {saved['back_below']:.3g}, halfway between its level before "
                   f"the change and after it), resolved")
        out.append(alert(Transition("resolved", saved["severity"]), "performance", subject, detector, level,
                         saved["back_below"], ({}, {subject: level, "pairs": counted}, message)))
    return out


def copy_sides(state: Mapping[str, Any]) -> dict[str, Any]:
    """The merge state's label and performance sides, copied (a merge step changes its own copy)."""
    return {key: copy.deepcopy(state[key]) for key in ("labels", "performance", "segment_performance")
            if state.get(key) is not None}
