"""Model-level decisions: per-partition partial sketches in event-time buckets → model windows.

Pure: no Kafka, no Redis (the service reads and writes the partials and the merge
state; docs/MODEL_DECISIONS.md says where and when). Two halves:

- :class:`BucketSketch`, the partition side: one model's events of one partition cut into
  event-time buckets; per bucket a *partial*: per column its counts over the reference's PSI bins,
  KS cells and data-quality checks, and the point detectors' firings. A bucket closes once the
  partition's watermark (largest event time seen minus the lateness) has passed it; closed partials
  never change. How the stream is cut into batches changes nothing.
- :func:`merge_step`, the merge side: the closed partials of every partition, in bucket order, into
  the model's windows of at least ``psi.window`` events; PSI, KS and data quality decided on the
  merged counts; one model-level episode per (signal, name, detector).

>>> bucket_of(2_500, None, 1_000, None)
2
>>> bucket_of(500, 4_000, 1_000, None)  # late: the buckets before the watermark's are closed
4
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import orjson

from . import alerts as words, drivers, fairness, history, mergejoint, mergeperf
from .calibration import fairness_tests, ks_threshold, model_tests, per_window, psi_threshold, rate_threshold, split
from .config import ModelConfig
from .detectors.episode import Episode, Transition
from .detectors.percentile import percentile_cell, percentile_of
from .detectors.psi import psi
from .detectors.quality import CHECKS
from .events import Alert, segment_id_text, segment_words
from .incidents import Incidents
from .segments import SegmentWarmup, Segments, monitored_columns, segment_warmup_of
from .reference import (MAX_CATEGORIES, CategoricalReference, ColumnReference, ColumnSummary, Limits, NumericReference,
                        ReferenceProfile, WarmupSummary, numeric_labels)
from .retraining import Retraining, RetrainingPolicy, RetrainingRequest

POINT_DETECTORS = ("adwin", "page_hinkley")


def bucket_of(time_ms: int | None, watermark_ms: int | None, bucket_ms: int, floor: int | None) -> int:
    """The bucket an event counts in: its own time's, unless that bucket is already closed (before the
    watermark's, or below ``floor``, the first bucket still open after the partition went idle); an
    event without a time counts at the watermark."""
    if time_ms is None:
        time_ms = 0 if watermark_ms is None else watermark_ms
    bucket = time_ms // bucket_ms
    if watermark_ms is not None:
        bucket = max(bucket, watermark_ms // bucket_ms)
    if floor is not None:
        bucket = max(bucket, floor)
    return bucket


def column_key(signal: str, name: str) -> str:
    return f"{signal}:{name}"


def quality_checks(reference: ColumnReference) -> dict[str, int]:
    """The data-quality checks of a column and the reference's own count of each (as the per-partition
    adapters compare with)."""
    base = {"missing": reference.missing}
    if isinstance(reference, NumericReference):
        base.update(type_mismatch=reference.mismatches, non_finite=0, out_of_range=2)
    else:
        base.update(unseen_category=reference.singletons)
    return base


def merged_columns(reference: ReferenceProfile, latency: bool = True) -> list[tuple[str, str, ColumnReference]]:
    """The columns decided at the model level: every column of the reference (latency only when its
    detectors are on)."""
    return [(signal, name, ref) for signal, name, ref in reference.columns() if latency or signal != "latency"]


def may_estimate(model: ModelConfig) -> bool:
    """Whether the config lets the model's performance be estimated: on, with performance monitored and a
    task that may be classification (configured so, or left to be inferred)."""
    return (model.detectors.estimated_performance.enabled and model.performance.enabled
            and model.performance.task in ("", "classification"))


def runs_joint(model: ModelConfig, reference: ReferenceProfile) -> bool:
    """Whether the model runs the multivariate test on ``reference``: on, two or more numeric features with
    a joint sample (per partition, or with ``decisions = "model"`` by the merge)."""
    numeric = sum(isinstance(r, NumericReference) for r in reference.features.values())
    return model.detectors.multivariate.enabled and numeric >= 2 and reference.joint is not None


def share_before_reference(model: ModelConfig) -> float:
    """Each test's share while the reference's columns are unknown: of the tests known from the config alone
    (the label column's, the performance detector and, where it may run, the estimated performance)."""
    det = model.detectors
    return split(det.false_alarms_per_million, model_tests([], model.performance.enabled, det, may_estimate(model),
                                                           fairness=fairness_tests(model.fairness),
                                                           numeric_label=model.performance.task == "regression"))


def model_share(model: ModelConfig, reference: ReferenceProfile) -> float:
    """Each test's share of the model's false-alarm budget: split equally over the tests its reference's
    columns, its label column, its performance detector, its estimated performance (a classifier's, from
    its scores) and its multivariate test run (:mod:`stream_monitor.calibration`)."""
    det = model.detectors
    numeric = [isinstance(ref, NumericReference) for _, _, ref in merged_columns(reference, det.latency.enabled)]
    estimate = may_estimate(model) and reference.score is not None
    segmented = [isinstance(ref, NumericReference) for _, _, ref in segmented_columns(model, reference)]
    return split(det.false_alarms_per_million, model_tests(numeric, model.performance.enabled, det, estimate,
                                                           runs_joint(model, reference), segmented,
                                                           fairness_tests(model.fairness), label_numeric(model, reference)))


def label_numeric(model: ModelConfig, reference: ReferenceProfile | None) -> bool:
    """Whether the model's labels are judged as numbers: its reference's labels are numeric, or, without
    them, its task is regression (configured, or told by the reference's predictions)."""
    if reference is not None and reference.labels is not None:
        return isinstance(reference.labels, NumericReference)
    if reference is None:
        return model.performance.task == "regression"
    return numeric_labels(model.performance.task, reference.score, reference.predicted_label)


def runs_segments(model: ModelConfig, reference: ReferenceProfile) -> bool:
    """Whether the model runs per-segment detectors on ``reference``: segments configured and the reference
    has profiles built for them (a model-level warm-up's reference has none)."""
    wanted = model.segments
    return (wanted.enabled and reference.segments is not None
            and reference.segments.fits(wanted.columns, wanted.top_k, wanted.min_events))


def segmented_columns(model: ModelConfig, reference: ReferenceProfile) -> list[tuple[str, str, ColumnReference]]:
    """The model's columns whose window tests also run per segment (none without segments)."""
    if not runs_segments(model, reference):
        return []
    return monitored_columns(reference, model.segments.columns, model.detectors.latency.enabled)


def _empty_column(reference: ColumnReference, ks: bool, p95: bool = False) -> dict[str, Any]:
    numeric = isinstance(reference, NumericReference)
    out = {"n": 0, "quality": [0] * len(CHECKS), "psi": [0] * len(reference.proportions),
           "ks": [0] * (len(reference.ks_grid) + 1) if numeric and ks else None}
    if p95:  # latency with a p95 ceiling: the values' log-histogram cells ("cell" → count; sparse)
        out["p95"] = {}
    return out


def _copy_cell(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def add_cells(into: dict[str, int], cells: Mapping[str, int]) -> None:
    """Add one sparse histogram's counts to another's, cell by cell."""
    for cell, count in cells.items():
        into[cell] = into.get(cell, 0) + count


def add_partial(into: dict[str, Any], partial: Mapping[str, Any]) -> None:
    """Add one partial's counts to another's (or to a window's): cell by cell, exactly."""
    into["events"] = into.get("events", 0) + partial["events"]
    columns = into.setdefault("columns", {})
    for key, column in partial["columns"].items():
        held = columns.get(key)
        if held is None:
            columns[key] = {k: _copy_cell(v) for k, v in column.items()}
            continue
        held["n"] += column["n"]
        for part in ("quality", "psi", "ks"):
            if column[part] is not None and held[part] is not None:
                held[part] = [a + b for a, b in zip(held[part], column[part])]
        if column.get("p95") is not None:
            add_cells(held.setdefault("p95", {}), column["p95"])


def segment_parts(partial: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A partial's per-segment parts (``segments``: events per segment key; ``segment_columns``: keyed
    "<segment key>|<column key>"), each as a partial of its own (events and columns)."""
    out = {key: {"events": events, "columns": {}} for key, events in partial.get("segments", {}).items()}
    for key, column in partial.get("segment_columns", {}).items():
        segment, _, column_name = key.partition("|")
        out.setdefault(segment, {"events": 0, "columns": {}})["columns"][column_name] = column
    return out


def segment_sketch_key(index: int) -> str:
    """The key of a reference's segment (its index: the top ones in rank order, then the rest) in partials."""
    return f"s{index}"


def add_groups(into: dict[str, Any], groups: Mapping[str, Mapping[str, Sequence[int]]]) -> None:
    """Add one partial's fairness counts (attribute → group → counts: [predictions, favourable], or for the
    joined pairs [positives, true positives, negatives, false positives]) to another's."""
    for attribute, counted in groups.items():
        held = into.setdefault(attribute, {})
        for group, counts in counted.items():
            before = held.get(group)
            held[group] = list(counts) if before is None else [a + b for a, b in zip(before, counts)]


def _firing_order(record: Mapping[str, Any]) -> tuple:
    return record["offset"], record["signal"], record["name"], POINT_DETECTORS.index(record["detector"])


class BucketSketch:
    """One model's open buckets on one partition, and the closed ones not yet saved (``pending``).

    Without a reference (a model-level warm-up, ``warmup``: the feature kinds and limits) a bucket's
    partial carries the warm-up summary of its events instead of counts (``partial["warmup"]``), and with
    segments (``segment_warmup``: makes an empty :class:`~stream_monitor.segments.SegmentWarmup`) its
    per-segment summaries (``partial["segment_warmup"]``). With a reference, each partial carries the
    reference's tag (``partial["ref"]``, :func:`reference_tag`): what its counts were binned against, so the
    merge never adds counts of two references together."""

    def __init__(self, reference: ReferenceProfile | None, ks: bool, bucket_ms: int, p95: bool = False,
                 warmup: tuple[Mapping[str, str] | None, Limits] | None = None,
                 segment_warmup: Callable[[], SegmentWarmup] | None = None):
        self.tag = None if reference is None else reference_tag(reference)
        self.bucket_ms = bucket_ms
        self.ks = ks
        self.p95 = p95  # the latency column counts its p95 cells (a ceiling is set)
        self.columns = {} if reference is None else {column_key(s, n): ref for s, n, ref in merged_columns(reference)}
        self.open: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, dict[str, Any]] = {}
        self.floor: int | None = None  # buckets below are closed
        self.warmup = warmup
        self.warming: dict[int, WarmupSummary] = {}  # open buckets' warm-up summaries
        self.segment_warmup = segment_warmup
        self.segment_warming: dict[int, SegmentWarmup] = {}  # open buckets' per-segment warm-up summaries
        self.segment_keys: set[str] = set()  # columns counted per segment ("s<i>|signal:name"), apart

    def add_segment_columns(self, columns: Mapping[str, ColumnReference]) -> None:
        """Count these per-segment columns too (key "s<i>|signal:name" → the segment's reference)."""
        self.columns.update(columns)
        self.segment_keys.update(columns)

    def count_segment(self, key: str, buckets: np.ndarray) -> None:
        """A segment's events of a batch (one bucket per event)."""
        for bucket, n in zip(*np.unique(buckets, return_counts=True)):
            counts = self._bucket(int(bucket)).setdefault("segments", {})
            counts[key] = counts.get(key, 0) + int(n)

    def take_over(self, other: "BucketSketch") -> None:
        """Continue where another sketch left off (a warm-up's, or one of the reference before): its closed
        partials and its floor (its open buckets are closed first, under its own tag: a bucket holds the
        counts of one reference only, and the buckets after them are this one's)."""
        other.close(None, everything=True)
        self.pending.update(other.pending)
        self.floor = other.floor

    def add_warmup(self, bucket: int, event: Any) -> None:
        """One warm-up event (an :class:`~stream_monitor.events.InferenceEvent`) in ``bucket``."""
        self._bucket(bucket)["events"] += 1
        summary = self.warming.get(bucket)
        if summary is None:
            summary = self.warming[bucket] = WarmupSummary(*self.warmup)
        summary.add(event)
        if self.segment_warmup is not None:
            segments = self.segment_warming.get(bucket)
            if segments is None:
                segments = self.segment_warming[bucket] = self.segment_warmup()
            segments.add(event)

    def partial(self, bucket: int) -> dict[str, Any]:
        """The open partial of ``bucket`` (opened if need be): labels and joined pairs count in it
        (:mod:`stream_monitor.mergeperf`), and :mod:`stream_monitor.mergejoint` adds to it."""
        return self._bucket(bucket)

    def _bucket(self, bucket: int) -> dict[str, Any]:
        partial = self.open.get(bucket)
        if partial is None:
            partial = self.open[bucket] = {"events": 0, "columns": {}, "firings": []}
            if self.tag is not None:
                partial["ref"] = self.tag
        return partial

    def count_events(self, buckets: np.ndarray) -> None:
        for bucket, n in zip(*np.unique(buckets, return_counts=True)):
            self._bucket(int(bucket))["events"] += int(n)

    def add(self, key: str, buckets: np.ndarray, codes: np.ndarray, usable: np.ndarray,
            psi_bins: np.ndarray | None, ks_cells: np.ndarray | None,
            p95_cells: np.ndarray | None = None) -> None:
        """One column's batch: ``buckets`` and data-quality ``codes`` per value, the PSI bins (and KS
        cells, and for latency the p95 histogram's cells) of its ``usable`` values."""
        reference = self.columns[key]
        part = "segment_columns" if key in self.segment_keys else "columns"
        p95 = self.p95 and key.startswith("latency:")
        usable_buckets = buckets[usable] if len(usable) else buckets[:0]
        for bucket in np.unique(buckets).tolist():
            columns = self._bucket(bucket).setdefault(part, {})
            column = columns.get(key)
            if column is None:
                column = columns[key] = _empty_column(reference, self.ks, p95)
            mine = buckets == bucket
            column["n"] += int(mine.sum())
            problems = codes[mine]
            problems = problems[problems >= 0]
            if len(problems):
                counts = np.bincount(problems, minlength=len(CHECKS))
                column["quality"] = [a + int(b) for a, b in zip(column["quality"], counts)]
            if psi_bins is not None and len(usable):
                here = usable_buckets == bucket
                if here.any():
                    counts = np.bincount(psi_bins[here], minlength=len(column["psi"]))
                    column["psi"] = [a + int(b) for a, b in zip(column["psi"], counts)]
                    if column["ks"] is not None and ks_cells is not None:
                        counts = np.bincount(ks_cells[here], minlength=len(column["ks"]))
                        column["ks"] = [a + int(b) for a, b in zip(column["ks"], counts)]
                    if p95 and p95_cells is not None:
                        cells, counts = np.unique(p95_cells[here], return_counts=True)
                        add_cells(column["p95"], {str(c): int(k) for c, k in zip(cells.tolist(), counts.tolist())})

    def add_groups(self, attribute: str, buckets: Sequence[int], groups: Sequence[str],
                   favorable: Sequence[bool]) -> None:
        """Predictions of a fairness attribute: each one's bucket, group and whether it was favourable."""
        for bucket, group, good in zip(buckets, groups, favorable):
            counted = self._bucket(bucket).setdefault("fairness", {}).setdefault(attribute, {})
            held = counted.get(group)
            if held is None:
                held = counted[group] = [0, 0]
            held[0] += 1
            held[1] += int(good)

    def add_pair_groups(self, attribute: str, bucket: int, group: str, predicted: bool, truth: bool) -> None:
        """A joined pair of a fairness attribute (equal opportunity, equalized odds) in ``bucket`` (its
        label's time): per group [positives, true positives, negatives, false positives]."""
        counted = self._bucket(bucket).setdefault("fairness_pairs", {}).setdefault(attribute, {})
        held = counted.get(group)
        if held is None:
            held = counted[group] = [0, 0, 0, 0]
        held[0 if truth else 2] += 1
        held[1 if truth else 3] += int(predicted)

    def firing(self, bucket: int, record: dict[str, Any]) -> None:
        firings = self._bucket(bucket)["firings"]
        firings.append(record)
        firings.sort(key=_firing_order)  # in the order of one event at a time, however the batch was cut

    def close(self, watermark_ms: int | None, everything: bool = False) -> None:
        """Close the buckets the watermark has passed (``everything``: all open ones: the partition is
        idle)."""
        if everything:
            if self.open:
                self.floor = max(self.floor if self.floor is not None else -(1 << 62), max(self.open) + 1)
            closing = list(self.open)
        elif watermark_ms is None:
            return
        else:
            first_open = watermark_ms // self.bucket_ms
            self.floor = first_open if self.floor is None else max(self.floor, first_open)
            closing = [b for b in self.open if b < self.floor]
        for bucket in sorted(closing):
            self.pending[bucket] = self.open.pop(bucket)
            if bucket in self.warming:
                self.pending[bucket]["warmup"] = self.warming.pop(bucket).to_data()
            if bucket in self.segment_warming:
                self.pending[bucket]["segment_warmup"] = self.segment_warming.pop(bucket).to_data()

    def take_pending(self) -> dict[int, dict[str, Any]]:
        pending, self.pending = self.pending, {}
        return pending

    def snapshot(self) -> dict[str, Any]:
        out = {"open": {str(b): p for b, p in sorted(self.open.items())},
               "pending": {str(b): p for b, p in sorted(self.pending.items())}, "floor": self.floor}
        if self.warming:
            out["warming"] = {str(b): s.to_data() for b, s in sorted(self.warming.items())}
        if self.segment_warming:
            out["segment_warming"] = {str(b): s.to_data() for b, s in sorted(self.segment_warming.items())}
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        self.open = {int(b): _copy_partial(p) for b, p in state["open"].items()}
        self.pending = {int(b): _copy_partial(p) for b, p in state["pending"].items()}
        self.floor = state["floor"]
        self.warming = {}
        if self.warmup is not None:
            self.warming = {int(b): WarmupSummary.from_data(d, *self.warmup)
                            for b, d in state.get("warming", {}).items()}
        self.segment_warming = {}
        if self.segment_warmup is not None:
            self.segment_warming = {int(b): self.segment_warmup().restore_data(d)
                                    for b, d in state.get("segment_warming", {}).items()}


def _copy_partial(partial: Mapping[str, Any]) -> dict[str, Any]:
    out = {"events": partial["events"],
           "columns": {k: {p: _copy_cell(v) for p, v in c.items()} for k, c in partial["columns"].items()},
           "firings": [dict(f) for f in partial["firings"]]}
    if "segments" in partial:  # per-segment events and columns
        out["segments"] = dict(partial["segments"])
        out["segment_columns"] = {k: {p: _copy_cell(v) for p, v in c.items()}
                                  for k, c in partial.get("segment_columns", {}).items()}
    for part in ("fairness", "fairness_pairs"):
        if part in partial:
            out[part] = {a: {g: list(c) for g, c in groups.items()} for a, groups in partial[part].items()}
    if "warmup" in partial:  # closed: never changed again
        out["warmup"] = partial["warmup"]
    if "segment_warmup" in partial:
        out["segment_warmup"] = partial["segment_warmup"]
    if "ref" in partial:  # the tag of the reference its counts were binned against (absent: saved before tags)
        out["ref"] = partial["ref"]
    out.update(mergeperf.copy_parts(partial))
    if "joint" in partial:  # the joint test's sums (mergejoint)
        out["joint"] = {**partial["joint"], "sums": list(partial["joint"]["sums"])}
    if "estimate" in partial:  # the estimate's score cells and pairs (mergejoint)
        estimate = partial["estimate"]
        out["estimate"] = {"cells": {c: list(v) for c, v in estimate["cells"].items()},
                           "pairs": [list(p) for p in estimate["pairs"]]}
    return out


# --- the merge side ---------------------------------------------------------------------


class PartitionPartials(NamedTuple):
    """What one partition's partials key holds for a model (``watermark_ms`` ``None``: no key yet)."""

    topic: str
    partition: int
    watermark_ms: int | None
    idle: bool
    partials: Mapping[int, Mapping[str, Any]]


class MergeResult(NamedTuple):
    alerts: list[Alert]
    state: dict[str, Any]
    consumed: dict[tuple[str, int], list[int]]  # per partition: the buckets merged (to delete)
    buckets: int  # buckets merged in this step
    late: int  # partials merged after their bucket had passed (a partition woke from idle)
    points: Sequence[dict[str, Any]] = ()  # the model windows decided: their history points
    incident_lines: Sequence[str] = ()  # the model's incidents that opened or closed (one log line each)
    requests: Sequence[RetrainingRequest] = ()  # the retraining requests its incidents made (``retraining``)
    # a reference switch in this step: what it dropped (``state["stale"]`` keeps the totals; empty: none)
    stale: Mapping[str, int] = {}


def initial_state() -> dict[str, Any]:
    # through: per "topic|partition" the last bucket merged from it (a partition writes its buckets in
    # increasing order, so a partial at or below it is one already merged whose deletion was interrupted)
    return {"step": 0, "last_bucket": None, "window": None, "episodes": {}, "windows": 0, "through": {}}


def frontier(partitions: Sequence[PartitionPartials], bucket_ms: int) -> int | None:
    """The last bucket every partition has closed (``None``: some partition holds everything back)."""
    busy = [p for p in partitions if not p.idle]
    if any(p.watermark_ms is None for p in busy):
        return None
    if busy:
        return min(p.watermark_ms // bucket_ms for p in busy) - 1
    present = [b for p in partitions for b in p.partials]
    return max(present) if present else None


def window_alert_id(model_id: str, signal: str, name: str, detector: str, first_bucket: int, last_bucket: int,
                    status: str, segment: Mapping[str, Any] | None = None) -> str:
    """A model-level decision's id: a pure function of what it decided on (a segment's: its segment too).

    >>> window_alert_id("fraud", "feature", "amount", "psi", 10, 14, "firing")[:16]
    'a02834c2e760d67c'
    """
    parts = (model_id, signal, name, detector, "window", str(first_bucket), str(last_bucket), status)
    if segment is not None:
        parts += (segment_id_text(segment),)
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


class _Episodes:
    """The model-level episodes, kept as plain data in the merge state."""

    def __init__(self, model: ModelConfig, state: dict[str, Any]):
        self.model = model
        self.state = state  # key "signal|name|detector" → episode snapshot (+ "opened_bucket" for points)

    def level(self, key: str) -> Episode:
        det = self.model.detectors
        episode = Episode(det.resolve_after, 0, det.hysteresis)
        saved = self.state.get(key)
        if saved is not None:
            episode.restore(saved)
        return episode

    def keep(self, key: str, episode: Episode, **extra: Any) -> None:
        self.state[key] = {**episode.snapshot(), **extra}


def merge_step(model: ModelConfig, reference: ReferenceProfile, state: Mapping[str, Any] | None,
               partitions: Sequence[PartitionPartials], bucket_ms: int, retraining: bool = False,
               previous: ReferenceProfile | None = None) -> MergeResult:
    """Merge every bucket all partitions have closed into the model's windows; decide each window that
    fills; stamp the alerts with the model's incidents (and, with ``retraining``, judge those by the
    model's retraining policy: :func:`model_incidents`). ``state``: the merge state as stored (``None``:
    the first merge). Deterministic: the same partials give the same alerts, ids and state whatever the
    order of ``partitions``.

    ``reference``: the model's reference as this instance holds it now (``previous``: the one it held
    before, if it switched). The merge judges against the reference its state names (``judged``); partials
    carry the tag of the one they were sketched against (:func:`reference_tag`). The first bucket holding a
    newer tag switches the merge to it (its open windows, binned against the old one, are dropped and
    counted in ``state["stale"]``); partials of an older tag after that are dropped and counted too; a newer
    tag this instance does not hold yet stops the step before its bucket (the next step goes on)."""
    state = _copy_state(state or initial_state())
    current = reference
    judged, lost = _judged_reference(state, current, previous)
    if judged is None:  # the state judges a newer reference than this instance holds: wait for it
        return MergeResult([], state, {}, 0, 0)
    reference = judged
    judged_tag, current_tag = reference_tag(judged), reference_tag(current)
    stale: dict[str, int] = {}
    if lost:  # it judged one no instance holds any more: its open windows cannot be judged
        _switch(model, state, reference, reference, stale, labels=False)
    last = frontier(partitions, bucket_ms)
    previous_bucket = state["last_bucket"]
    late = 0
    candidates: list[tuple[int, str, int, Mapping[str, Any], int]] = []
    consumed: dict[tuple[str, int], list[int]] = {}
    through = state.setdefault("through", {})
    done = dict(through)  # as stored: what earlier steps merged
    for p in partitions:
        where = f"{p.topic}|{p.partition}"
        for bucket, partial in p.partials.items():
            if where in done and bucket <= done[where]:  # merged before; its deletion did not happen
                consumed.setdefault((p.topic, p.partition), []).append(bucket)
                continue
            if last is not None and bucket <= last or previous_bucket is not None and bucket <= previous_bucket:
                effective = bucket if previous_bucket is None or bucket > previous_bucket else previous_bucket + 1
                candidates.append((effective, p.topic, p.partition, partial, bucket))
    # a tag newer than this instance's reference (it has not loaded it yet): merge only the buckets before it
    unknown = [c[0] for c in candidates if tag_version(_tag(c[3], judged_tag)) > current.version]
    stop = min(unknown) if unknown else None
    entries: list[tuple[int, str, int, Mapping[str, Any]]] = []
    for effective, topic, partition, partial, bucket in candidates:
        if stop is not None and effective >= stop:
            continue
        late += effective != bucket
        entries.append((effective, topic, partition, partial))
        consumed.setdefault((topic, partition), []).append(bucket)
        where = f"{topic}|{partition}"
        through[where] = max(bucket, through.get(where, bucket))
    entries.sort(key=lambda e: e[:3])
    out: list[Alert] = []
    points: list[dict[str, Any]] = []
    episodes = _Episodes(model, state["episodes"])
    columns = merged_columns(reference, model.detectors.latency.enabled)
    share = model_share(model, reference)
    segments = Segments(reference.segments) if runs_segments(model, reference) else None
    merged = sorted({e[0] for e in entries})
    opened_in: list[int] = []  # per alert of ``out``: the first bucket of the model window it was raised in
    for bucket in merged:
        group = [e for e in entries if e[0] == bucket]
        if judged_tag != current_tag and any(tag_version(_tag(e[3], judged_tag)) > judged.version for e in group):
            # the first bucket sketched against a newer reference: from here on, this instance's (the newest)
            _switch(model, state, reference, current, stale)
            reference, judged_tag = current, current_tag
            columns = merged_columns(reference, model.detectors.latency.enabled)
            share = model_share(model, reference)
            segments = Segments(reference.segments) if runs_segments(model, reference) else None
        kept = [e for e in group if _tag(e[3], judged_tag) == judged_tag]
        for e in group:
            if _tag(e[3], judged_tag) != judged_tag:  # binned against an older reference: dropped, counted
                stale["partials"] = stale.get("partials", 0) + 1
                stale["partial_events"] = stale.get("partial_events", 0) + e[3]["events"]
        group = [(b, t, p, warmup_counts(model, reference, partial) if "warmup" in partial else partial)
                 for b, t, p, partial in kept]  # a warm-up share's partial past the model's reference: its counts
        if not group:
            continue
        window = state["window"]
        counted = window is not None or any(e[3]["events"] for e in group)  # labels alone open no window
        if window is None and counted:
            window = state["window"] = {"first_bucket": bucket, "events": 0, "columns": {}, "by_partition": {}}
        if counted:
            window["last_bucket"] = bucket
        firings = []
        for _, topic, partition, partial in group:
            if counted and partial["events"]:
                add_partial(window, partial)
                where = f"{topic}|{partition}"
                window["by_partition"][where] = window["by_partition"].get(where, 0) + partial["events"]
                if segments is not None:
                    _add_segments(state.setdefault("segment_windows", {}), partial, bucket, where)
            firings.extend((-1 if f["time"] is None else f["time"], topic, partition, f["offset"], f)
                           for f in partial["firings"])
        firings.sort(key=lambda f: f[:4])
        for *_, firing in firings:
            out.extend(_with_drivers(_point_firing(model, episodes, bucket, firing), state.get("feature_psi"),
                                     reference))
        if model.fairness.attributes:
            out.extend(_fairness_bucket(model, reference, state, episodes, bucket, group, bucket_ms, share, points))
        if counted and window["events"] >= model.detectors.psi.window:
            feature_psi: dict[str, float] = {}
            decided = _decide(model, columns, episodes, window, bucket_ms, share, points, feature_psi)
            state["feature_psi"] = feature_psi  # the drivers of the point firings until the next window
            out.extend(_with_drivers(decided, feature_psi, reference))
            state["window"] = None
            state["windows"] += 1
        decided = _labels_and_performance(model, reference, state, episodes, bucket, group,
                                          [f[-1] for f in firings], bucket_ms, share, points)
        out.extend(_with_drivers(decided, state.get("feature_psi"), reference))
        for decided in mergejoint.merge_bucket(model, reference, state, bucket, group, share):
            out.extend(_with_drivers(_joint_alerts(model, decided, bucket_ms, points), state.get("feature_psi"),
                                     reference))
        if segments is not None:
            out.extend(_decide_segments(model, segments, episodes, state, bucket_ms, share))
            out.extend(_segment_performance(model, reference, segments, state, episodes, bucket, group, bucket_ms))
        opened = window["first_bucket"] if window is not None else bucket  # labels alone: their own bucket
        opened_in.extend([opened] * (len(out) - len(opened_in)))
    if merged:
        state["last_bucket"] = max(merged[-1], previous_bucket if previous_bucket is not None else merged[-1])
    if stale:
        totals = state.setdefault("stale", {})
        for key, count in stale.items():
            totals[key] = totals.get(key, 0) + count
    # the reference judged against, named; its profile kept while this instance holds a newer one (so a step
    # after a restart, which holds only the newest, can still judge the partials sketched against it)
    state["judged"] = {"tag": judged_tag, "profile": None if judged_tag == current_tag else reference.to_dict()}
    out, lines, requests = model_incidents(model, state, out, opened_in, retraining)
    return MergeResult(out, state, consumed, len(merged), late, points, lines, requests, stale)


def _tag(partial: Mapping[str, Any], default: str) -> str:
    """The tag of the reference ``partial`` was sketched against (``default``: a partial without one, saved
    before partials were tagged, or a warm-up share's, whose summary the merge counts itself)."""
    return partial.get("ref") or default


def _judged_reference(state: Mapping[str, Any], current: ReferenceProfile,
                      previous: ReferenceProfile | None) -> tuple[ReferenceProfile | None, bool]:
    """The reference the merge state judges against: the one it names (a state saved before it named one:
    this instance's), and whether it was lost (an older one that neither the state nor this instance
    holds: this instance's from now on). ``None``: it names a newer one than this instance holds (wait)."""
    held = state.get("judged")
    if held is None or held["tag"] == reference_tag(current):
        return current, False
    if held.get("profile") is not None:
        return ReferenceProfile.from_dict(held["profile"]), False
    if previous is not None and reference_tag(previous) == held["tag"]:
        return previous, False
    if tag_version(held["tag"]) > current.version:
        return None, False
    return current, True


def _switch(model: ModelConfig, state: dict[str, Any], old: ReferenceProfile, new: ReferenceProfile,
            stale: dict[str, int], labels: bool = True) -> None:
    """The merge turns to a newer reference: the open windows counted against the old one are dropped
    (counted in ``stale``), the episodes go on (the next windows, against the new one, end or keep them)."""
    stale["switches"] = stale.get("switches", 0) + 1

    def dropped(events: int) -> None:
        stale["windows"] = stale.get("windows", 0) + 1
        stale["window_events"] = stale.get("window_events", 0) + events

    if state.get("window") is not None:
        dropped(state["window"]["events"])
        state["window"] = None
    for window in state.pop("segment_windows", {}).values():
        dropped(window["events"])
    if state.get("joint_window") is not None:
        dropped(state["joint_window"].get("n", 0))
        state["joint_window"] = None
    side = state.get("labels")
    if side is not None and side.get("window") is not None and (not labels or
            mergeperf.label_reference(model, old, side) != mergeperf.label_reference(model, new, side)):
        dropped(side["window"]["events"])
        side["window"] = None


def incident_id(model_id: str, first_bucket: int) -> str:
    """A model-level incident's id: a pure function of the model and the first bucket of the model window
    it opened in (so the same whatever the partitioning that decided it).

    >>> incident_id("fraud", 30)[:16]
    '58a25ce00a959139'
    """
    text = "\x1f".join((model_id, "incident", str(first_bucket)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_incidents(model: ModelConfig, state: dict[str, Any], alerts: list[Alert], opened_in: Sequence[int],
                    retraining: bool = False) -> tuple[list[Alert], list[str], list[RetrainingRequest]]:
    """The model's incidents over its merged alerts, in merge order (their state: ``state["incidents"]``):
    each alert stamped, an incident opened by an alert named by :func:`incident_id` of the window it was
    raised in (``opened_in``); the log lines of those that opened or closed; with ``retraining``, the
    requests the model's policy makes of them (its state: ``state["retraining"]``)."""
    incidents = Incidents(model.model_id)
    incidents.restore(state.get("incidents"))  # absent in merge states saved before incidents were merged
    stamped, happened = incidents.stamp(alerts, [incident_id(model.model_id, b) for b in opened_in])
    state["incidents"] = incidents.snapshot()
    requests: list[RetrainingRequest] = []
    if retraining:
        policy = Retraining(model.model_id, RetrainingPolicy.of(model.retraining))
        policy.restore(state.get("retraining"))
        requests = policy.observe(stamped)
        state["retraining"] = policy.snapshot()
    return stamped, [line for _, line in happened], requests


def incidents_summary(model_id: str, state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The model-level incidents for the status page and `status`: the open one, then the closed ones."""
    incidents = Incidents(model_id)
    incidents.restore((state or {}).get("incidents"))
    return incidents.summary()


def requests_summary(model_id: str, state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The last retraining requests of the model's merge, newest first."""
    policy = Retraining(model_id, RetrainingPolicy())
    policy.restore((state or {}).get("retraining"))
    return policy.summary()


def _joint_alerts(model: ModelConfig, decided: mergejoint.Decided, bucket_ms: int,
                  points: list[dict[str, Any]]) -> list[Alert]:
    """A decided joint or estimate window (:mod:`stream_monitor.mergejoint`): its history points, its alerts."""
    payload = _window_payload(decided.window, bucket_ms)
    for signal, name, detector, value, warning, critical in decided.points:
        entry = history.window_point(model.model_id, signal, name, detector, value, warning, critical, None, None,
                                     payload["last"])
        entry["buckets"] = [payload["first_bucket"], payload["last_bucket"]]
        points.append(entry)
    out = []
    for transition, signal, name, detector, statistic, threshold, (reference, current, message) in decided.transitions:
        out.append(Alert(status=transition.status, severity=transition.severity, model_id=model.model_id,
                         signal=signal, name=name, detector=detector, statistic=float(statistic),
                         threshold=float(threshold), reference=reference, current=current, partition=None,
                         offset=None, event_time_ms=payload["last"], message=message, window=payload,
                         alert_id=window_alert_id(model.model_id, signal, name, detector, payload["first_bucket"],
                                                  payload["last_bucket"], transition.status)))
    return out


def _add_segments(windows: dict[str, Any], partial: Mapping[str, Any], bucket: int, where: str) -> None:
    """A partial's per-segment parts into each segment's open window."""
    for key, part in segment_parts(partial).items():
        window = windows.get(key)
        if window is None:
            window = windows[key] = {"first_bucket": bucket, "events": 0, "columns": {}, "by_partition": {}}
        window["last_bucket"] = bucket
        add_partial(window, part)
        window["by_partition"][where] = window["by_partition"].get(where, 0) + part["events"]


def _decide_segments(model: ModelConfig, segments: Segments, episodes: _Episodes, state: dict[str, Any],
                     bucket_ms: int, share: float) -> list[Alert]:
    """Each segment window that holds at least ``psi.window`` of its events, decided like a model window
    against the segment's profile (in the reference's segment order)."""
    out: list[Alert] = []
    windows = state.get("segment_windows", {})
    latency = model.detectors.latency.enabled
    for index, (segment, profile) in enumerate(zip(segments.objects, segments.profiles)):
        key = segment_sketch_key(index)
        window = windows.get(key)
        if window is None or profile is None or window["events"] < model.detectors.psi.window:
            continue
        columns = monitored_columns(profile, model.segments.columns, latency)
        out.extend(_decide(model, columns, episodes, window, bucket_ms, share, segment=segment))
        del windows[key]
    return out


def _with_drivers(alerts: list[Alert], feature_psi: Mapping[str, float] | None,
                  reference: ReferenceProfile) -> list[Alert]:
    """The firing model-wide alerts with their drivers: the features' PSIs of the latest model window
    decided at or before them (none before the first window)."""
    if feature_psi is None:
        return alerts
    return [drivers.attach(a, drivers.rank(feature_psi, reference.association))
            if a.status == "firing" and a.signal in drivers.SIGNALS else a for a in alerts]


def _numeric_counts(ref: NumericReference, summary: ColumnSummary, events: int, ks: bool,
                    p95: bool) -> dict[str, Any]:
    numbers = np.frombuffer(summary.numbers.tobytes(), dtype=np.float64)
    quality = [0] * len(CHECKS)
    quality[CHECKS.index("missing")] = events - summary.present
    nonfinite = sum(summary.nonfinite.values())
    if summary.kind == "categorical":  # a non-number turned the share's column categorical: read its keys back
        parsed: list[float] = []
        for key, count in summary.counts.items():
            try:
                value = float(key)
            except ValueError:
                continue
            if np.isfinite(value):
                parsed.extend([value] * count)
            else:
                nonfinite += count
        numbers = np.asarray(parsed, dtype=np.float64)
    quality[CHECKS.index("non_finite")] = nonfinite
    quality[CHECKS.index("type_mismatch")] = summary.present - len(numbers) - nonfinite
    quality[CHECKS.index("out_of_range")] = int(((numbers < ref.minimum) | (numbers > ref.maximum)).sum())
    bins = np.fromiter((ref.bin_index(x) for x in numbers.tolist()), dtype=np.int64, count=len(numbers))
    out = {"n": events, "quality": quality, "psi": np.bincount(bins, minlength=len(ref.proportions)).tolist(),
           "ks": None}
    if ks:
        cells = np.searchsorted(np.asarray(ref.ks_grid), numbers, side="left")
        out["ks"] = np.bincount(cells, minlength=len(ref.ks_grid) + 1).tolist()
    if p95:
        cells = {}
        for x in numbers.tolist():
            cell = str(percentile_cell(x))
            cells[cell] = cells.get(cell, 0) + 1
        out["p95"] = cells
    return out


def _label_counts(ref: ColumnReference, part: Mapping[str, Any], ks: bool) -> dict[str, Any]:
    """A bucket's label part as the counts of the label column against the model's label reference: a
    categorical one's categories, a numeric one's (a regression's) numbers read back from their categories
    (PSI bins, KS cells, data quality: missing, not a number, not finite, out of range). Labels past the
    part's ``max_categories`` are not judged by a numeric reference (their values are not kept)."""
    summary = mergeperf.label_summary(part)
    if isinstance(ref, CategoricalReference):
        return _categorical_counts(ref, summary, part["events"])
    summary.present -= part["overflow"]
    return _numeric_counts(ref, summary, part["events"] - part["overflow"], ks, False)


def _categorical_counts(ref: CategoricalReference, summary: ColumnSummary, events: int) -> dict[str, Any]:
    if summary.kind != "categorical":  # only numbers so far: their categories
        summary = ColumnSummary.from_snapshot(summary.snapshot(), summary.max_categories)
        summary._become_categorical()
    quality = [0] * len(CHECKS)
    quality[CHECKS.index("missing")] = events - summary.present
    psi_counts = [0] * len(ref.proportions)
    known = set(ref.seen) | set(ref.categories)
    every = ref.overflow > 0 or len(known) >= MAX_CATEGORIES  # as CategoricalReference.is_seen
    index = {c: i for i, c in enumerate(ref.categories)}
    for key, count in summary.counts.items():
        psi_counts[index.get(key, len(ref.categories))] += count
        if not every and key not in known:
            quality[CHECKS.index("unseen_category")] += count
    psi_counts[-1] += summary.overflow  # categories past the share's cap: counted, not named
    if not every:
        quality[CHECKS.index("unseen_category")] += summary.overflow
    return {"n": events, "quality": quality, "psi": psi_counts, "ks": None}


def warmup_counts(model: ModelConfig, reference: ReferenceProfile, partial: Mapping[str, Any]) -> dict[str, Any]:
    """A warm-up share's partial past the model's reference, as the counts the partition would have made
    with the reference (PSI bins, KS and p95 cells, data quality; exact for numbers and categories; a
    numeric column whose values included non-numbers is read back from their categories). Its events were
    not seen by the point detectors: no firings."""
    det = model.detectors
    summary = WarmupSummary.from_data(partial["warmup"], model.features)
    events = partial["events"]
    columns = _summary_counts(model, merged_columns(reference, det.latency.enabled), summary, events)
    out = {"events": events, "columns": columns, "firings": [], **mergeperf.copy_parts(partial)}
    joint = mergejoint.warmup_joint(model, reference, summary)
    if joint is not None:
        out["joint"] = joint
    if "segment_warmup" in partial and runs_segments(model, reference):
        out.update(_segment_warmup_counts(model, reference, partial["segment_warmup"]))
    return out


def _summary_counts(model: ModelConfig, columns: Sequence[tuple[str, str, ColumnReference]], summary: WarmupSummary,
                    events: int, prefix: str = "") -> dict[str, Any]:
    """Each column's counts (keyed ``prefix`` + "signal:name") of a warm-up ``summary`` of ``events``."""
    det = model.detectors
    out: dict[str, Any] = {}
    for signal, name, ref in columns:
        if signal == "feature":
            column = summary.features.get(name) or ColumnSummary(None)
        else:
            column = {"score": summary.score, "label": summary.predicted_label,
                      "latency_ms": summary.latency}[name]
        if isinstance(ref, NumericReference):
            p95 = signal == "latency" and det.latency.p95_ceiling_ms is not None
            out[prefix + column_key(signal, name)] = _numeric_counts(ref, column, events, det.ks.enabled, p95)
        else:
            out[prefix + column_key(signal, name)] = _categorical_counts(ref, column, events)
    return out


def _segment_warmup_counts(model: ModelConfig, reference: ReferenceProfile, data: Mapping[str, Any]) -> dict[str, Any]:
    """A warm-up share's per-segment summaries past the model's reference, as the per-segment counts
    (``segments``, ``segment_columns``) the partition would have made: each value's summary to its
    segment (a value the reference did not rank, and the bucket's values past its cap, to the rest)."""
    warmup = segment_warmup_of(model).restore_data(data)
    segments = Segments(reference.segments)
    by_index: dict[int, WarmupSummary] = {}
    for values, summary in [*warmup.candidates.items(), (None, warmup.overflow)]:
        if not summary.events:
            continue
        index = segments.rest if values is None else segments.index.get(values, segments.rest)
        held = by_index.get(index)
        if held is None:
            held = by_index[index] = WarmupSummary(model.features)
        held.absorb(summary)
    events: dict[str, int] = {}
    columns: dict[str, Any] = {}
    latency = model.detectors.latency.enabled
    for index in sorted(by_index):
        key, summary, profile = segment_sketch_key(index), by_index[index], segments.profiles[index]
        events[key] = summary.events
        if profile is not None:
            columns.update(_summary_counts(model, monitored_columns(profile, model.segments.columns, latency),
                                           summary, summary.events, f"{key}|"))
    return {"segments": events, "segment_columns": columns}


class ReferenceResult(NamedTuple):
    reference: ReferenceProfile
    state: dict[str, Any]
    consumed: dict[tuple[str, int], list[int]]  # per partition: the warm-up buckets the reference took


_TAGS: dict[int, tuple[ReferenceProfile, str]] = {}  # id(profile) → (profile, tag): a profile's tag, once


def reference_tag(profile: ReferenceProfile) -> str:
    """The tag of the reference a partial was sketched against: "<version>:<first 16 hex digits of the sha256
    of its data>" (the version orders a stored reference's reloads and rollbacks, which store a new version; the id tells
    two profiles of one version apart)."""
    held = _TAGS.get(id(profile))
    if held is not None and held[0] is profile:
        return held[1]
    # of its data as stored (orjson, as Redis holds it: a loaded copy has the same tag as the object built)
    blob = orjson.dumps(profile.to_dict(), option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    tag = f"{profile.version}:{hashlib.sha256(blob).hexdigest()[:16]}"
    if len(_TAGS) >= 64:
        _TAGS.clear()
    _TAGS[id(profile)] = (profile, tag)
    return tag


def tag_version(tag: str) -> int:
    return int(tag.partition(":")[0])


def reference_id(profile: ReferenceProfile) -> str:
    """A reference's id: the sha256 of its data (the same reference, the same id, wherever it was built)."""
    text = json.dumps(profile.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_reference(state: Mapping[str, Any] | None) -> ReferenceProfile | None:
    """The model's warm-up reference as its merge state keeps it (``None``: not built yet)."""
    if not state or state.get("reference") is None:
        return None
    return ReferenceProfile.from_dict(state["reference"])


def reference_step(model: ModelConfig, state: Mapping[str, Any] | None, partitions: Sequence[PartitionPartials],
                   bucket_ms: int, limits: Limits = Limits()) -> ReferenceResult | None:
    """The model's warm-up reference, once the buckets every partition has closed hold at least
    ``reference.events`` warm-up events: the warm-up summaries of the fewest whole buckets from the first
    that do, absorbed in (bucket, topic, partition) order, built as one partition's warm-up builds its
    own. ``None``: not yet (or built already). A pure function of the closed partials, whatever their
    order in ``partitions`` and whenever it runs: later steps see the same first buckets."""
    state = _copy_state(state or initial_state())
    if state.get("reference") is not None:
        return None
    last = frontier(partitions, bucket_ms)
    if last is None:
        return None
    entries = sorted(((bucket, p.topic, p.partition, partial) for p in partitions
                      for bucket, partial in p.partials.items() if bucket <= last and "warmup" in partial),
                     key=lambda e: e[:3])
    wanted = model.reference.events
    total, end = 0, None
    for index, (bucket, *_rest) in enumerate(entries):
        total += entries[index][3]["events"]
        if total >= wanted and (index + 1 == len(entries) or entries[index + 1][0] != bucket):
            end = bucket
            break
    if end is None:
        return None
    summary = WarmupSummary(model.features, limits)
    consumed: dict[tuple[str, int], list[int]] = {}
    through = state["through"]
    taken = [e for e in entries if e[0] <= end]
    for bucket, topic, partition, partial in taken:
        summary.absorb(WarmupSummary.from_data(partial["warmup"], model.features, limits))
        consumed.setdefault((topic, partition), []).append(bucket)
        where = f"{topic}|{partition}"
        through[where] = max(bucket, through.get(where, bucket))
    psi_config = model.detectors.psi
    profile = summary.build(model.model_id, psi_config.bins, psi_config.top_k, source="warmup",
                            joint_features=model.detectors.multivariate.max_features)
    segments = segment_warmup_of(model, limits)
    if segments is not None and all("segment_warmup" in e[3] for e in taken):  # else (older partials): none
        for *_, partial in taken:
            segments.absorb(segment_warmup_of(model, limits).restore_data(partial["segment_warmup"]))
        profile = dataclasses.replace(profile, segments=segments.build(profile, psi_config.bins, psi_config.top_k))
    _warm_labels_from(model, profile, state, taken)
    state.update(reference=profile.to_dict(), reference_id=reference_id(profile),
                 reference_buckets=[taken[0][0], end], last_bucket=end)
    return ReferenceResult(profile, state, consumed)


def _copy_state(state: Mapping[str, Any]) -> dict[str, Any]:
    window = state["window"]
    if window is not None:
        window = {**window, "columns": {k: {p: _copy_cell(v) for p, v in c.items()}
                                        for k, c in window["columns"].items()},
                  "by_partition": dict(window["by_partition"])}
    out = {**state, "window": window, "episodes": {k: dict(v) for k, v in state["episodes"].items()},
           "through": dict(state.get("through", {})), **mergeperf.copy_sides(state)}
    if "segment_windows" in state:
        out["segment_windows"] = {k: {**w, "columns": {c: {p: _copy_cell(v) for p, v in col.items()}
                                                       for c, col in w["columns"].items()},
                                      "by_partition": dict(w["by_partition"])}
                                  for k, w in state["segment_windows"].items()}
    for key in ("fairness_window", "fairness_pairs_window"):
        fair = state.get(key)
        if fair is not None:
            out[key] = {**fair, "by_partition": dict(fair["by_partition"]),
                        "groups": {a: {g: list(c) for g, c in groups.items()} for a, groups in fair["groups"].items()}}
    if "fairness_last" in state:
        out["fairness_last"] = {a: dict(m) for a, m in state["fairness_last"].items()}
    return out


def _point_firing(model: ModelConfig, episodes: _Episodes, bucket: int, firing: Mapping[str, Any]) -> list[Alert]:
    """A point detector fired on some partition: the model's episode opens unless it is already open."""
    key = f"{firing['signal']}|{firing['name']}|{firing['detector']}"
    saved = episodes.state.get(key)
    if saved is not None and saved["firing"]:
        return []
    alert = Alert(status="firing", severity=firing["severity"], model_id=model.model_id, signal=firing["signal"],
                  name=firing["name"], detector=firing["detector"], statistic=firing["statistic"],
                  threshold=firing["threshold"], reference=firing["reference"], current=firing["current"],
                  partition=firing["partition"], offset=firing["offset"], event_time_ms=firing["time"],
                  message=firing["message"])
    episodes.state[key] = {"firing": True, "severity": firing["severity"], "quiet": 0, "cooling": 0,
                           "last_alert_id": alert.alert_id, "opened_bucket": bucket}
    return [alert]


# per kind of fairness window: the partial's part, the open window's key in the merge state, its columns
FAIR_KINDS = (("predictions", "fairness", "fairness_window", fairness.PREDICTION_COLUMNS),
              ("pairs", "fairness_pairs", "fairness_pairs_window", fairness.PAIR_COLUMNS))


def _fair_metrics(config: Any, kind: str) -> list[str]:
    return [m for m in dict.fromkeys(config.metrics)
            if (m == "demographic_parity") == (kind == "predictions")]


def _fairness_bucket(model: ModelConfig, reference: ReferenceProfile, state: dict[str, Any], episodes: _Episodes,
                     bucket: int, group: list, bucket_ms: int, share: float, points: list) -> list[Alert]:
    """A bucket's fairness counts into the model's two fairness windows: the parity window of predictions
    (per group: predictions, favourable) and the window of joined pairs (per group: positives, true
    positives, negatives, false positives; a pair counts in its label's bucket). At ``fairness.window``
    predictions (``fairness.label_window`` pairs), on a bucket boundary, a window is judged per attribute and
    metric as one partition judges its own (:func:`stream_monitor.fairness.judge`, at the window's actual
    size and the model's share): demographic parity on the first, equal opportunity and equalized odds on
    the second, one model-level episode per (attribute, metric)."""
    config = model.fairness
    out: list[Alert] = []
    for kind, part, key, columns in FAIR_KINDS:
        window = state.get(key)
        for _, topic, partition, partial in group:
            counted = partial.get(part)
            if not counted:
                continue
            if window is None:
                window = state[key] = {"first_bucket": bucket, "events": 0, "by_partition": {}, "groups": {}}
            window["last_bucket"] = bucket
            add_groups(window["groups"], counted)
            # every attribute counts each prediction (pair): the first one's groups hold them all
            items = sum(sum(c[0::2]) for c in next(iter(counted.values())).values())
            window["events"] += items
            where = f"{topic}|{partition}"
            window["by_partition"][where] = window["by_partition"].get(where, 0) + items
        size = config.window if kind == "predictions" else config.label_window
        metrics = _fair_metrics(config, kind)
        if window is None or window["events"] < size or not metrics:
            continue
        state[key] = None
        judged = state.get("fairness_windows") or {}
        state["fairness_windows"] = {**judged, kind: judged.get(kind, 0) + 1}
        last = state.setdefault("fairness_last", {})
        payload = _window_payload(window, bucket_ms)
        alpha = per_window(share, window["events"])
        for attribute in config.attributes:
            counted = window["groups"].get(attribute, {})
            ref = reference.features.get(attribute)
            names = fairness.Groups(ref.categories if isinstance(ref, CategoricalReference) else None,
                                    config.max_groups).names
            names = names + sorted(set(counted) - set(names))  # seen values of an attribute the reference holds as numeric
            counts = np.asarray([counted.get(name, [0] * len(columns)) for name in names], dtype=np.int64)
            for metric in metrics:
                out.extend(_fairness_judged(model, episodes, attribute, metric, names, counts, alpha, payload, points,
                                            last.setdefault(attribute, {})))
    return out


def _fairness_judged(model: ModelConfig, episodes: _Episodes, attribute: str, metric: str, names: list[str],
                     counts: np.ndarray, alpha: float, payload: Mapping[str, Any], points: list,
                     last: dict[str, Any]) -> list[Alert]:
    """One closed fairness window of one attribute and metric: its history point, its findings kept for the
    status (``last``), the model-level episode's alert if it moved."""
    config = model.fairness
    key = f"fairness|{attribute}|{metric}"
    episode = episodes.level(key)
    found, transition = fairness.judge(config, metric, names, counts, alpha, episode)
    last[metric] = found
    point = fairness.window_point(model.model_id, config, attribute, metric, found, None, None, payload["last"])
    point["buckets"] = [payload["first_bucket"], payload["last_bucket"]]
    points.append(point)
    out = []
    if transition is not None:
        description, current, message = fairness.describe(model.model_id, config, model.detectors.hysteresis,
                                                          attribute, metric, transition, found)
        alert = Alert(status=transition.status, severity=transition.severity, model_id=model.model_id,
                      signal="fairness", name=attribute, detector=metric,
                      statistic=float(found["gap"]), threshold=config.max_gap, reference=description,
                      current=current, partition=None, offset=None, event_time_ms=payload["last"],
                      message=message, window=payload,
                      alert_id=window_alert_id(model.model_id, "fairness", attribute, metric,
                                               payload["first_bucket"], payload["last_bucket"], transition.status))
        episode.last_alert_id = alert.alert_id
        out.append(alert)
    episodes.keep(key, episode)
    return out


def fairness_info(model: ModelConfig, state: Mapping[str, Any] | None) -> dict[str, Any]:
    """A merged model's fairness as one partition's :meth:`stream_monitor.fairness.Fairness.info` has it:
    per attribute the windows judged and each metric's last findings (groups' counts and rates, the gap),
    with the open windows' sizes (status, the status page, the metrics)."""
    if not state or not model.fairness.attributes:
        return {}
    judged = state.get("fairness_windows") or {}
    last = state.get("fairness_last") or {}
    opened = {kind: (state.get(key) or {}).get("events", 0) for kind, _, key, _ in FAIR_KINDS}
    return {attribute: {"windows": {"predictions": judged.get("predictions", 0), "pairs": judged.get("pairs", 0)},
                        "open": opened, "metrics": {m: dict(f) for m, f in (last.get(attribute) or {}).items()}}
            for attribute in model.fairness.attributes}


def _window_payload(window: Mapping[str, Any], bucket_ms: int) -> dict[str, Any]:
    return {"first": window["first_bucket"] * bucket_ms, "last": (window["last_bucket"] + 1) * bucket_ms,
            "first_bucket": window["first_bucket"], "last_bucket": window["last_bucket"],
            "events": dict(sorted(window["by_partition"].items()))}


def _decide(model: ModelConfig, columns: list, episodes: _Episodes, window: Mapping[str, Any],
            bucket_ms: int, budget: float, points: list | None = None,
            feature_psi: dict | None = None, segment: Mapping[str, Any] | None = None) -> list[Alert]:
    """A full model window: per column data quality, PSI and KS on the merged counts (thresholds for the
    window's actual size and each test's ``budget``, its share of the model's), and the resolution of the
    column's point episodes. ``points``: gets each statistic's history point (:mod:`stream_monitor.history`);
    ``feature_psi``: gets each feature's PSI (the drivers of the window's alerts). ``segment``: a segment's
    window (its episodes and ids its own, no history points, no point detectors to resolve)."""
    det = model.detectors
    prefix = "" if segment is None else f"segment|{segment_id_text(segment)}|"
    shown = "" if segment is None else f"[{segment_words(segment)}]"
    payload = _window_payload(window, bucket_ms)
    out: list[Alert] = []
    points = [] if points is None else points

    def point(signal: str, name: str, detector: str, value: float, warning: float, critical: float,
              counts: Any = None, ref: Any = None) -> None:
        entry = history.window_point(model.model_id, signal, name, detector, value, warning, critical, None, None,
                                     payload["last"], counts, ref)
        entry["buckets"] = [payload["first_bucket"], payload["last_bucket"]]
        points.append(entry)

    alert = _window_alert(model, payload, segment)

    for signal, name, ref in columns:
        column = window["columns"].get(column_key(signal, name))
        if column is None or column["n"] == 0:
            continue
        label = (f"{model.model_id}.{name}" if signal != "prediction" else f"{model.model_id}.prediction.{name}") + shown
        numeric = isinstance(ref, NumericReference)
        reference_events = max(ref.events, 1)
        n = column["n"]
        if det.data_quality.enabled:
            total = ref.events + ref.missing + (ref.mismatches if numeric else 0)
            for check, hits in quality_checks(ref).items():
                rate = column["quality"][CHECKS.index(check)] / n
                warning = rate_threshold(budget, n, hits, max(total, 1))
                critical = max(warning, 0.5)
                key = f"{prefix}data_quality|{name}|{check}"
                point("data_quality", name, check, rate, warning, critical)
                episode = episodes.level(key)
                transition = episode.level(rate, warning, critical)
                episodes.keep(key, episode)
                if transition is not None:
                    description = words.quality_description(check, ref, label, transition, rate, warning, critical, n)
                    out.append(alert(transition, "data_quality", name, check, rate,
                                     critical if transition.severity == "critical" else warning, description))
        if column.get("p95") and segment is None:
            out.extend(_p95_ceiling(model, episodes, column["p95"], alert))
        usable = sum(column["psi"])
        if usable == 0:
            continue
        bins_with_mass = sum(1 for p in ref.proportions if p > 0)
        warning = max(det.psi.warning, psi_threshold(budget, usable, reference_events, bins_with_mass))
        critical = max(det.psi.critical, warning)
        value = psi(ref.proportions, [c / usable for c in column["psi"]], det.psi.epsilon)
        if signal == "feature" and feature_psi is not None:
            feature_psi[name] = value
        key = f"{prefix}{signal}|{name}|psi"
        point(signal, name, "psi", value, warning, critical, column["psi"], ref)
        episode = episodes.level(key)
        transition = episode.level(value, warning, critical)
        episodes.keep(key, episode)
        if transition is not None:
            description = words.psi_description(ref, label, transition, value, warning, critical, column["psi"])
            out.append(alert(transition, signal, name, "psi", value,
                             critical if transition.severity == "critical" else warning, description))
        if numeric and det.ks.enabled and column["ks"] is not None:
            threshold = det.ks.threshold or ks_threshold(budget, usable, reference_events)
            below, gap = 0, 0.0
            for j, cdf in enumerate(ref.ks_cdf):
                below += column["ks"][j]
                gap = max(gap, abs(below / usable - cdf))
            key = f"{prefix}{signal}|{name}|ks"
            point(signal, name, "ks", gap, threshold, 2 * threshold)
            episode = episodes.level(key)
            transition = episode.level(gap, threshold, 2 * threshold)
            episodes.keep(key, episode)
            if transition is not None:
                description = words.ks_description(ref, label, transition, gap, threshold, 2 * threshold, usable)
                out.append(alert(transition, signal, name, "ks", gap,
                                 2 * threshold if transition.severity == "critical" else threshold, description))
        for detector in POINT_DETECTORS if segment is None else ():  # back within the reference: resolved
            key = f"{signal}|{name}|{detector}"
            saved = episodes.state.get(key)
            if saved is None or not saved["firing"] or saved["opened_bucket"] >= window["first_bucket"]:
                continue
            if value < warning:
                transition = Transition("resolved", saved["severity"])
                episodes.state[key] = {**saved, "firing": False}
                message = (f"{detector} on {label}: back within its reference over the model's last {usable} "
                           f"events (PSI {value:.3g} < {warning:.3g}), resolved")
                out.append(alert(transition, signal, name, detector, value, warning,
                                 ({}, {"psi": value, "events": usable}, message)))
    return out


def _window_alert(model: ModelConfig, payload: Mapping[str, Any], segment: Mapping[str, Any] | None = None):
    """What builds a window decision's alerts: ``partition`` and ``offset`` null, the window (and segment)
    named, its id a pure function of what it decided on."""

    def alert(transition: Transition, signal: str, name: str, detector: str, statistic: float, threshold: float,
              description: words.Description) -> Alert:
        reference, current, message = description
        return Alert(status=transition.status, severity=transition.severity, model_id=model.model_id,
                     signal=signal, name=name, detector=detector, statistic=float(statistic),
                     threshold=float(threshold), reference=reference, current=current, partition=None,
                     offset=None, event_time_ms=payload["last"], message=message, window=payload, segment=segment,
                     alert_id=window_alert_id(model.model_id, signal, name, detector, payload["first_bucket"],
                                              payload["last_bucket"], transition.status, segment))

    return alert


# --- labels and realized performance (stream_monitor/mergeperf.py holds their parts) ---------------


def _labels_and_performance(model: ModelConfig, reference: ReferenceProfile, state: dict[str, Any],
                            episodes: _Episodes, bucket: int, group: list, firings: list[Mapping[str, Any]],
                            bucket_ms: int, share: float, points: list) -> list[Alert]:
    """One merged bucket's labels and joined pairs into the model's label and performance windows; a label
    window that fills is decided as a feature column is (:func:`_decide`, against the model's label
    reference), a performance window by :func:`stream_monitor.mergeperf.decide_performance`."""
    out: list[Alert] = []
    labels = [(topic, partition, partial["labels"]) for _, topic, partition, partial in group if partial.get("labels")]
    if labels:
        side = mergeperf.label_state(state)
        known = mergeperf.label_reference(model, reference, side)
        if known is None:
            mergeperf.warm_labels(model, side, bucket, [part for *_, part in labels],
                                  numeric=label_numeric(model, reference))
        else:
            window = side["window"]
            if window is None:
                window = side["window"] = {"first_bucket": bucket, "events": 0, "columns": {}, "by_partition": {}}
            window["last_bucket"] = bucket
            for topic, partition, part in labels:
                counts = _label_counts(known, part, model.detectors.ks.enabled)
                add_partial(window, {"events": part["events"], "columns": {column_key("label", "label"): counts}})
                where = f"{topic}|{partition}"
                window["by_partition"][where] = window["by_partition"].get(where, 0) + part["events"]
            if window["events"] >= model.detectors.psi.window:
                out.extend(_decide(model, [("label", "label", known)], episodes, window, bucket_ms, share, points))
                side["window"] = None
                side["windows"] += 1
    for firing in firings:  # a performance point episode opened here: the level it ends below
        key = f"{firing['signal']}|{firing['name']}|{firing['detector']}"
        saved = episodes.state.get(key)
        if firing["signal"] == "performance" and saved and saved["firing"] and saved.get("opened_bucket") == bucket:
            mergeperf.point_opened(saved, firing)
    pairs = [(topic, partition, partial["pairs"]) for _, topic, partition, partial in group if partial.get("pairs")]
    task = mergeperf.model_task(model, reference)
    if pairs and task is not None:
        side = mergeperf.performance_state(state)
        window = side["window"]
        if window is None:
            window = side["window"] = {"first_bucket": bucket, "pairs": {}, "by_partition": {}}
        window["last_bucket"] = bucket
        for topic, partition, part in pairs:
            mergeperf.add_pairs(window["pairs"], part)
            where = f"{topic}|{partition}"
            window["by_partition"][where] = window["by_partition"].get(where, 0) + part["n"]
        if mergeperf.pairs_counted(task, window["pairs"]) >= model.performance.window:
            payload = _window_payload(window, bucket_ms)
            out.extend(mergeperf.decide_performance(model, task, window, episodes, _window_alert(model, payload),
                                                    points, payload))
            side["window"] = None
            side["windows"] += 1
    return out


def _segment_performance(model: ModelConfig, reference: ReferenceProfile, segments: Segments, state: dict[str, Any],
                         episodes: _Episodes, bucket: int, group: list, bucket_ms: int) -> list[Alert]:
    """One merged bucket's joined pairs per segment (``segment_pairs``; a key counted during the warm-up,
    by segment value, routed to its segment) into each segment's performance window; a window of at least
    ``performance.window`` pairs decides the segment's floors (ceilings), in the reference's segment order."""
    task = mergeperf.model_task(model, reference)
    if task is None:
        return []
    sides = state.setdefault("segment_performance", {})
    for _, topic, partition, partial in group:
        for key, part in sorted(partial.get("segment_pairs", {}).items()):
            index = segments.key_index(key)
            if index is None:
                continue
            side = sides.setdefault(segment_sketch_key(index), {"window": None, "windows": 0})
            window = side["window"]
            if window is None:
                window = side["window"] = {"first_bucket": bucket, "pairs": {}, "by_partition": {}}
            window["last_bucket"] = bucket
            mergeperf.add_pairs(window["pairs"], part["pairs"])
            where = f"{topic}|{partition}"
            window["by_partition"][where] = window["by_partition"].get(where, 0) + part["pairs"]["n"]
    out: list[Alert] = []
    for index, segment in enumerate(segments.objects):
        side = sides.get(segment_sketch_key(index))
        window = None if side is None else side["window"]
        if window is None or mergeperf.pairs_counted(task, window["pairs"]) < model.performance.window:
            continue
        payload = _window_payload(window, bucket_ms)
        named = (f"segment|{segment_id_text(segment)}|", f"{model.model_id}[{segment_words(segment)}]")
        out.extend(mergeperf.decide_performance(model, task, window, episodes, _window_alert(model, payload, segment),
                                                [], payload, named))
        side["window"] = None
        side["windows"] += 1
    return out


def _warm_labels_from(model: ModelConfig, profile: ReferenceProfile, state: dict[str, Any], taken: list) -> None:
    """The labels in the buckets a warm-up reference took feed the model's label warm-up (their pairs are
    not judged, as the reference's events are not)."""
    side = mergeperf.label_state(state)
    for bucket in sorted({e[0] for e in taken}):
        parts = [p["labels"] for b, _, _, p in taken if b == bucket and p.get("labels")]
        if parts and mergeperf.label_reference(model, profile, side) is None:
            mergeperf.warm_labels(model, side, bucket, parts, numeric=label_numeric(model, profile))


def _p95_ceiling(model: ModelConfig, episodes: _Episodes, cells: Mapping[str, int], alert: Any) -> list[Alert]:
    """The p95 latency of the model's window (its merged histogram, as exact as one partition's) against
    the ceiling: one model-level episode."""
    ceiling = model.detectors.latency.p95_ceiling_ms
    if ceiling is None:
        return []
    value = percentile_of({int(c): k for c, k in cells.items()}, 0.95)
    key = "latency|latency_ms|p95_ceiling"
    episode = episodes.level(key)
    transition = episode.level(value, ceiling, ceiling)
    episodes.keep(key, episode)
    if transition is None:
        return []
    events = sum(cells.values())
    return [alert(transition, "latency", "latency_ms", "p95_ceiling", value, ceiling,
                  words.p95_description(model.model_id, transition, value, ceiling, events))]


def firing_record(alert: Alert) -> dict[str, Any]:
    """A point detector's firing on a partition, as its bucket keeps it for the merge."""
    return {"time": alert.event_time_ms, "partition": alert.partition, "offset": alert.offset,
            "signal": alert.signal, "name": alert.name, "detector": alert.detector, "severity": alert.severity,
            "statistic": alert.statistic, "threshold": alert.threshold, "reference": dict(alert.reference),
            "current": dict(alert.current), "message": alert.message}


def episodes_summary(state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The model-level episodes for the status page: which are firing."""
    if not state:
        return []
    return [{"episode": key, "firing": value["firing"], "severity": value["severity"] if value["firing"] else None,
             "last_alert_id": value.get("last_alert_id")} for key, value in sorted(state["episodes"].items())]
