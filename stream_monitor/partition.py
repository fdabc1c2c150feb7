"""One partition's processing: decoded events → detector updates → alerts.

Pure: no Kafka, no Redis. ``run`` and ``replay`` both drive this class, which
is why they raise the same alerts for the same events; how a stream is cut
into batches changes nothing (tests/unit/test_partition.py). All state lives here
and round-trips through ``snapshot()`` / ``restore()``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
from collections import deque
from itertools import chain
from operator import itemgetter
from typing import Any, Mapping, Sequence

import msgspec
import numpy as np
import orjson

from . import drivers, history, mergeperf
from .adapters import PARTS, Adapter, Batch, Pairs, column_adapters, multivariate_adapters, performance_adapters
from .config import Config, ModelConfig, MultivariateConfig, ServiceConfig
from .detectors import AdwinDetector, Episode, PageHinkleyDetector, PsiWindow, Transition
from .detectors.kernels import numeric_indices
from .detectors.ks import KsWindow
from .detectors.multivariate import JointReference
from .detectors.percentile import WindowPercentile, percentile_cell
from .detectors.quality import CHECKS as QUALITY_CHECKS, QualityWindow
from .errors import ReferenceProfileError, StateError
from .cbpe import EstimatedPerformance, predicted_positive
from .fairness import Fairness
from .batchcodec import column_values
from .codec import NUMBER_TYPES as _NUMBER_TYPES, category
from .events import Alert, InferenceEvent, LabelEvent, segment_words
from .incidents import Incidents, episode_key
from .retraining import Retraining, RetrainingPolicy, RetrainingRequest
from .join import JoinResult, prediction_record
from .mergejoint import PartitionSide, joint_rows, reference_pairs
from .merge import BucketSketch, bucket_of, column_key, firing_record, label_numeric, model_share, runs_segments, \
    segment_sketch_key, share_before_reference
from .performance import RollingMetrics, infer_task, pair_row
from .segments import SegmentWarmup, Segments, candidate_cap, monitored_columns, segment_of, segment_warmup_of
from .stages import CLOCK
from .reference import MAX_UNTRACKED_COUNTED, CategoricalReference, ColumnReference, LabelSummary, Limits, \
    NumericReference, ReferenceProfile, WarmupSummary, column_from_dict, is_finite_number, unmonitored_columns

# 3: compiled detectors' arrays instead of river pickles; 4: warm-ups as summaries, not events, and each
# model's detector settings (format 3 is still read: its warm-up events are summarised on restore)
STATE_FORMAT = 4
READABLE_FORMATS = (3, 4)
log = logging.getLogger("stream_monitor")
incident_log = logging.getLogger("stream_monitor.incidents")  # a model's incidents opening and closing
_INFINITIES = (math.inf, -math.inf)
_FINE = -1
_MISSING, _TYPE_MISMATCH, _NON_FINITE, _OUT_OF_RANGE, _UNSEEN = (QUALITY_CHECKS.index(c) for c in (
    "missing", "type_mismatch", "non_finite", "out_of_range", "unseen_category"))


class ColumnMonitor:
    """Detectors of one column (a feature, the score, the predicted label, latency or labels) of one model.

    The detectors are adapters (:mod:`stream_monitor.adapters`) in one
    ordered list, :attr:`adapters`: per value, in this order, data-quality
    counts, PSI and KS windows, then ADWIN on the value's reference rank and
    Page-Hinkley on its normal score, and the p95 ceiling of a latency column.
    :meth:`update_batch` runs the batch through each adapter in one go (which is
    why it is fast) and returns the alerts in that per-value order.
    """

    merged = False  # decided at the model level (decisions = "model"); the performance column never is
    segment: Mapping[str, str | None] | None = None  # a segment's column: column → value (SegmentColumn)
    sketch_prefix = ""  # a segment's column counts in the partials under "<segment key>|signal:name"

    def __init__(self, model: ModelConfig, signal: str, name: str, reference: ColumnReference,
                 merged: bool = False, budget: float | None = None):
        self.model_id = model.model_id
        self.budget = budget  # each test's share of the model's false-alarm budget (None: all of it)
        self.signal = signal
        self.name = name
        self.reference = reference
        self.numeric = isinstance(reference, NumericReference)
        # merged (decided at the model level): the window detectors are the merge's, their partials are
        # counted here (see update_batch); the point detectors run here and their firings go to the merge
        self.merged = merged
        self.adapters: list[Adapter] = column_adapters(self, model, signal, reference, merged, budget)
        self._index_adapters()
        self.last_statistic: dict[str, float] = {}
        self.closed_psi: list[tuple[int, float]] = []  # this batch's closed PSI windows: (offset, PSI)
        self.points = history.pending()  # closed windows' statistics, until the service takes them
        if self.numeric:  # what the compiled rank transform reads (detectors/transform.py: the same, one value at a time)
            self._edges = np.asarray(reference.edges, dtype=np.float64)
            self._ks_grid = np.asarray(reference.ks_grid, dtype=np.float64)
            self._grid = np.asarray(reference.grid, dtype=np.float64)
            self._rank_floor = 0.5 / max(reference.events, 1)

    def _index_adapters(self) -> None:
        """The views of :attr:`adapters` the batch walk reads."""
        self._every = [(order, a) for order, a in enumerate(self.adapters) if a.every_value]
        self._usable = [(order, a) for order, a in enumerate(self.adapters) if not a.every_value]
        self._levels = [a.episode for a in self.adapters if not a.point]
        self._points = [(order, a) for order, a in enumerate(self.adapters) if a.point]
        self._windows = [a for a in self.adapters if a.window]  # judge when a point episode ends
        self._judge = self._windows[0] if self._points and self._windows else None  # the window closing then
        self._quality = next((a.detector for a in self.adapters if a.part == "quality"), None)

    # read-only views by detector name and by part (the list is the one structure)
    @property
    def detectors(self) -> dict[str, Adapter]:
        return {a.key: a for a in self.adapters}

    @property
    def episodes(self) -> dict[str, Episode]:
        return {a.key: a.episode for a in self.adapters}

    def parts(self) -> dict[str, Any]:
        """The detector object of each part this column runs (the data-quality checks share one)."""
        return {a.part: a.detector for a in self.adapters}

    @property
    def quality(self) -> QualityWindow | None:
        return self._quality

    @property
    def psi(self) -> PsiWindow:
        return self.parts()["psi"]

    @property
    def ks(self) -> KsWindow | None:
        return self.parts().get("ks")

    @property
    def adwin(self) -> AdwinDetector | None:
        return self.parts().get("adwin")

    @property
    def page_hinkley(self) -> PageHinkleyDetector | None:
        return self.parts().get("page_hinkley")

    @property
    def p95(self) -> WindowPercentile | None:
        return self.parts().get("p95")

    @property
    def label(self) -> str:
        if self.signal == "feature":
            return f"{self.model_id}.{self.name}"
        if self.signal == "prediction":
            return f"{self.model_id}.prediction.{self.name}"
        return f"{self.model_id}.{self.name}"

    def update(self, value: Any, offset: int, partition: int, event_time_ms: int | None) -> list[Alert]:
        """Feed one event's value of this column (``None`` when absent)."""
        return [alert for _, _, alert in self.update_batch([value], [offset], partition, [event_time_ms])]

    def update_batch(self, values: Sequence[Any] | np.ndarray, offsets: Sequence[int], partition: int,
                     times: Sequence[int | None], buckets: np.ndarray | None = None,
                     sketch: BucketSketch | None = None) -> list[tuple[int, int, Alert]]:
        """Feed a batch of this column's values (``None`` when absent; a float64 array when all are
        numbers) from events at ``offsets``; the alerts as (value index, order within the value, alert).

        The same alerts as feeding the values one at a time: each adapter runs over the whole batch in
        one compiled call, and the episodes then step from one value that matters (a window closing, a
        detection) to the next, counting the quiet values in between in one go.
        """
        codes, numbers = self._classify(values)
        marks: dict[int, dict[Adapter, Any]] = {}
        clock = CLOCK
        started = clock.now()
        closed_quality = []
        if self._quality is not None:
            closed_quality = self._quality.add_many(codes)
            started = clock.add("data_quality", started)
        # a category the reference never had is drift: it counts in the __other__ bin of PSI (and its
        # data-quality rate, above); a number off the reference range lands in an open outer bin
        usable = ((codes == _FINE) | (codes == _OUT_OF_RANGE) | (codes == _UNSEEN)).nonzero()[0]
        x = psi_bins = ks_cells = ranks = scores = None
        if len(usable):
            if self.numeric:
                x = numbers[usable]
                psi_bins, ks_cells, ranks, scores = self._indices(x)
                started = clock.add("rank", started)
            else:
                psi_bins = np.fromiter((self.reference.bin_index(values[i]) for i in usable.tolist()),
                                       dtype=np.int64, count=len(usable))
        if sketch is not None:  # model-level decisions: this batch's counts go to its buckets' partials
            p95_cells = None
            if sketch.p95 and self.signal == "latency" and x is not None:  # the merge's p95 ceiling
                p95_cells = np.fromiter(map(percentile_cell, x.tolist()), dtype=np.int64, count=len(x))
            sketch.add(self.sketch_prefix + column_key(self.signal, self.name), buckets, codes, usable, psi_bins,
                       ks_cells, p95_cells)
            started = clock.add("sketch", started)
        batch = Batch(values, usable, x, psi_bins, ks_cells, ranks, scores, closed_quality)
        if closed_quality:  # the data-quality checks only report when their shared window closes
            for _, adapter in self._every:
                for position, mark in adapter.update(batch):
                    marks.setdefault(position, {})[adapter] = mark
        if len(usable):
            for _, adapter in self._usable:
                for j, mark in adapter.update(batch):
                    marks.setdefault(int(usable[j]), {})[adapter] = mark
                if adapter.stage is not None:
                    started = clock.add(adapter.stage, started)
        alerts = self._walk(marks, usable, offsets, partition, times)
        clock.add("episodes", started)
        return alerts

    def _indices(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per value: PSI bin, KS cell, reference rank (what ADWIN sees), normal score (Page-Hinkley)."""
        n = len(x)
        psi_bins, ks_cells = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        ranks, scores = np.empty(n), np.empty(n)
        numeric_indices(x, self._edges, self._ks_grid, self._grid, self._rank_floor, psi_bins, ks_cells,
                        ranks, scores)
        return psi_bins, ks_cells, ranks, scores

    def _classify(self, values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Each value's data-quality problem as an index into ``CHECKS`` (−1: none) and, for a numeric
        column, the values as float64 (NaN where not a number)."""
        ref = self.reference
        if self.numeric:
            if not isinstance(values, np.ndarray):
                kinds = set(map(type, values))
                if kinds <= _NUMBER_TYPES:
                    values = np.array(values, dtype=np.float64)
            if isinstance(values, np.ndarray):
                codes = np.full(len(values), _FINE, dtype=np.int64)
                codes[(values < ref.minimum) | (values > ref.maximum)] = _OUT_OF_RANGE
                codes[~np.isfinite(values)] = _NON_FINITE
                return codes, values
            codes = np.empty(len(values), dtype=np.int64)
            numbers = np.full(len(values), np.nan)
            for i, value in enumerate(values):
                if value is None:
                    codes[i] = _MISSING
                elif value.__class__ is not float and value.__class__ is not int:  # bool, str: not a number
                    codes[i] = _TYPE_MISMATCH
                elif value != value or value in _INFINITIES:
                    codes[i] = _NON_FINITE
                else:
                    codes[i] = _OUT_OF_RANGE if value < ref.minimum or value > ref.maximum else _FINE
                    numbers[i] = value
            return codes, numbers
        codes = np.array([_MISSING if value is None else (_FINE if ref.is_seen(value) else _UNSEEN)
                          for value in values], dtype=np.int64)
        return codes, None

    def _walk(self, marks: dict[int, dict[Adapter, Any]], usable: np.ndarray, offsets: Sequence[int],
              partition: int, times: Sequence[int | None]) -> list[tuple[int, int, Alert]]:
        """Episodes, value by value where something happens, in bulk over the quiet values between."""
        out: list[tuple[int, int, Alert]] = []
        points = self._points if len(usable) else []
        done = 0  # usable values stepped so far
        for index in sorted(marks):
            mark = marks[index]
            before = int(np.searchsorted(usable, index))
            self._quiet(done, before, points, usable, offsets, partition, times, out)
            context = (offsets[index], partition, times[index])
            for order, adapter in self._every:
                if adapter in mark:
                    out.extend((index, order, a) for a in self._level(adapter, mark[adapter], context))
            if before < len(usable) and usable[before] == index:
                for episode in self._levels:
                    episode.quiet_tick()
                back = None
                for order, adapter in self._usable:
                    if adapter.point:
                        if back is None and self._judge in mark:  # after the windows' own marks
                            back = self._back_within()
                        episode = adapter.episode
                        transition = episode.detected(mark[adapter]) if adapter in mark else episode.tick()
                        if transition is None and back is not None:
                            transition = episode.settled(back[1], back[2])
                        if transition is not None:
                            out.append((index, order, self._point(adapter, transition, before, context,
                                                                  back[0] if back else ())))
                    elif adapter in mark:
                        out.extend((index, order, a) for a in self._level(adapter, mark[adapter], context))
                done = before + 1
            else:
                done = before
        self._quiet(done, len(usable), points, usable, offsets, partition, times, out)
        out.sort(key=lambda t: t[:2])  # two resolutions in one quiet stretch were found detector by detector
        return out

    def _back_within(self) -> tuple[tuple, int, bool]:
        """The column's distribution windows closed at this value (their marks come before the point
        detectors' in the adapter list, so their statistics are in): (what they say, the window size,
        whether each is below its resolve level — the column is back within its reference)."""
        statistics = tuple((a.name, self.last_statistic[a.name], a.threshold * a.episode.hysteresis)
                           for a in self._windows if a.name in self.last_statistic)
        window = self._judge.detector.window
        return (statistics, window), window, all(value < level for _, value, level in statistics)

    def _quiet(self, start: int, stop: int, points: list, usable: np.ndarray, offsets: Sequence[int],
               partition: int, times: Sequence[int | None], out: list) -> None:
        """Usable values ``start``…``stop``−1 with nothing to report: cooldowns count down, point
        episodes count their quiet values (a point episode with ``resolve_after`` set resolves once it
        has been quiet that long; the column's own end where its windows close, in :meth:`_walk`)."""
        quiet = stop - start
        if quiet <= 0:
            return
        for episode in self._levels:
            episode.quiet_ticks(quiet)
        for order, adapter in points:
            resolved = adapter.episode.ticks(quiet)
            if resolved is not None:
                at, transition = resolved
                at += start
                index = int(usable[at])
                out.append((index, order, self._point(adapter, transition, at,
                                                      (offsets[index], partition, times[index]))))

    # --- alerts -------------------------------------------------------------------------

    def _level(self, adapter: Adapter, mark: tuple[float, Any], context: tuple) -> list[Alert]:
        value, extra = mark
        self.last_statistic[adapter.key] = value
        if adapter.part == "psi":
            self.closed_psi.append((context[0], value))
        self.points.append(history.window_point(
            self.model_id, adapter.signal or self.signal, adapter.subject or self.name, adapter.name, value,
            adapter.threshold, adapter.critical, *context, extra if adapter.part == "psi" else None,
            self.reference if adapter.part == "psi" else None))
        transition = adapter.judge(value)
        if transition is None:
            return []
        return [self._alert(adapter, transition, value, *adapter.describe(transition, value, extra), *context)]

    def _point(self, adapter: Adapter, transition: Transition, at: int, context: tuple, back: tuple = ()) -> Alert:
        """A point detector's firing or resolution, with its statistic after the usable value ``at``
        (``back``: what the windows that ended the episode said)."""
        statistic, description = adapter.describe(transition, at, back)
        return self._alert(adapter, transition, statistic, *description, *context)

    def _alert(self, adapter: Adapter, transition: Transition, statistic: float, reference: dict, current: dict,
               message: str, offset: int, partition: int, event_time_ms: int | None) -> Alert:
        alert = Alert(status=transition.status, severity=transition.severity, model_id=self.model_id,
                      signal=adapter.signal or self.signal, name=adapter.subject or self.name, detector=adapter.name,
                      statistic=float(statistic), threshold=float(adapter.alert_threshold(transition.severity)),
                      reference=reference, current=current, partition=partition, offset=offset,
                      event_time_ms=event_time_ms, message=message, segment=self.segment)
        adapter.episode.last_alert_id = alert.alert_id
        return alert

    # --- state ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        parts = self.parts()
        return {"detectors": {k: None if k not in parts else parts[k].snapshot() for k in PARTS},
                "episodes": {a.key: a.episode.snapshot() for a in self.adapters},
                "last_statistic": dict(self.last_statistic)}

    def restore(self, state: Mapping[str, Any], restart: frozenset[str] = frozenset()) -> None:
        """Continue from a snapshot; the detectors of the parts in ``restart`` start afresh."""
        for key, part in self.parts().items():
            saved = state["detectors"].get(key)
            if saved is not None and key not in restart:
                part.restore(saved)
        skipped = {episode for part in restart for episode in _EPISODES_OF.get(part, (part,))}
        episodes = self.episodes
        for key, episode_state in state["episodes"].items():
            if key in episodes and key not in skipped:
                episodes[key].restore(episode_state)
        self.last_statistic = {k: v for k, v in state["last_statistic"].items() if k not in skipped}

    def summary(self) -> list[dict[str, Any]]:
        latest = dict(self.last_statistic)  # a read: the snapshot must not depend on whether it ran
        rows = [{"signal": a.signal or self.signal, "name": a.subject or self.name, "detector": a.name,
                 "statistic": a.latest(latest), "threshold": a.threshold, "critical": a.critical,
                 "firing": a.episode.firing, "severity": a.episode.severity if a.episode.firing else None,
                 "last_alert_id": a.episode.last_alert_id, **({} if a.baseline is None else {"baseline": a.baseline})}
                for a in self.adapters]
        if any(row["firing"] for row in rows):  # the status page draws a firing column's distributions
            for adapter, row in zip(self.adapters, rows):
                counts = getattr(adapter.detector, "last_counts", None) if adapter.part == "psi" else None
                if counts:
                    total = sum(counts) or 1
                    row["shares"] = {"bins": history.bin_labels(self.reference),
                                     "reference": [float(p) for p in self.reference.proportions],
                                     "current": [c / total for c in counts]}
        return rows


class PerformanceColumn(ColumnMonitor):
    """A model's performance detectors over its joined (prediction, label) pairs: adapters like a
    column's (:func:`stream_monitor.adapters.performance_adapters`), whose episodes the same walk steps
    and whose alerts the same code builds; its values are the pairs, the usable ones those that count
    (:func:`stream_monitor.performance.pair_row`). Its snapshot keeps the performance layout.

    ``task``: the configured one, else the one inferred from the model's predictions (kept in the
    snapshot; a configured task wins)."""

    def __init__(self, model: ModelConfig, task: str | None = None, budget: float | None = None):
        self.model_id = model.model_id
        self.budget = budget
        self.signal = self.name = "performance"
        self.config = model.performance
        self.task = self.config.task or task or "classification"
        self.inferred = not self.config.task
        self.classification = self.task == "classification"
        self.rolling = RollingMetrics(self.config, self.task)
        self.last_statistic = {}
        self.points = history.pending()
        # decisions = "model": only the error stream's point detector runs here (its firings go to the merge,
        # which decides the floors and ceilings on the model's windows: stream_monitor/mergeperf.py)
        self.merged = model.by_model
        self.adapters = [a for a in performance_adapters(self, model, self.rolling, self.task, budget)
                         if a.point or not self.merged]
        self._index_adapters()

    def recalibrated(self, model: ModelConfig, budget: float) -> PerformanceColumn:
        """The same detectors and state with the thresholds of another share of the budget."""
        if budget == self.budget:
            return self
        column = PerformanceColumn(model, self.task, budget)
        column.restore(self.snapshot())
        return column

    @property
    def pairs_seen(self) -> int:
        return self.rolling.pairs_seen

    @property
    def unscored(self) -> int:
        return self.rolling.unscored

    @property
    def floors(self) -> dict[str, float]:
        """The floors that apply (a classification's; an inferred regression ignores the configured ones)."""
        return {a.subject: a.threshold for a in self.adapters if a.name == "floor"}

    @property
    def ceilings(self) -> dict[str, float]:
        return {a.subject: a.threshold for a in self.adapters if a.name == "ceiling"}

    def update_batch(self, pairs: Sequence[tuple[Mapping[str, Any], Any, int | None]], offsets: Sequence[int],
                     partition: int, times: Sequence[int | None]) -> list[tuple[int, int, Alert]]:
        """Joined pairs as (prediction record, label, label time), each counted by the message at its
        offset; the alerts as (pair index, order within the pair, alert), as one pair at a time gives."""
        rows, counted = [], []
        for i, (prediction, label, label_time_ms) in enumerate(pairs):
            if prediction.get("t") is not None and label_time_ms is not None:
                self.rolling.delays.append(max(0, label_time_ms - prediction["t"]))
            row = pair_row(self.classification, self.config.positive_label, prediction, label)
            if row is not None:
                rows.append(row)
                counted.append(i)
            else:
                self.rolling.unscored += 1
        if not rows:
            return []
        batch = Pairs(np.array([row[-1] for row in rows], dtype=np.float64), self.rolling.add_many(rows))
        limited = {a.subject for a in self.adapters if a.part == "metrics"}  # their points come from _level
        for j, values in batch.metrics:  # the rolling metrics over time, for the report
            at = counted[j]
            for metric, value in values.items():
                if value is not None and metric not in limited:
                    self.points.append(history.window_point(self.model_id, "performance", metric, "rolling", value,
                                                            None, None, offsets[at], partition, times[at]))
        marks: dict[int, dict[Adapter, Any]] = {}
        for adapter in self.adapters:
            for j, mark in adapter.update(batch):
                marks.setdefault(counted[j], {})[adapter] = mark
        return self._walk(marks, np.asarray(counted, dtype=np.int64), offsets, partition, times)

    def snapshot(self) -> dict[str, Any]:
        drift = self.adapters[0]
        regression = None if self.classification else drift
        return {"task": self.task, **self.rolling.snapshot(),
                "adwin": drift.detector.snapshot() if self.classification else None,
                "page_hinkley": None if regression is None or drift.detector is None else drift.detector.snapshot(),
                "error_reference": [] if regression is None else list(regression.error_reference),
                "grid": None if regression is None or regression.transform is None else regression.transform.grid,
                "grid_events": self.config.reference_pairs,
                "episodes": {a.key: a.episode.snapshot() for a in self.adapters},
                "last": {a.key: self.last_statistic[a.key] for a in self.adapters if a.key in self.last_statistic}}

    def restore(self, state: Mapping[str, Any], restart: frozenset[str] = frozenset()) -> None:
        self.rolling.restore(state)
        drift = self.adapters[0]
        if self.classification:
            if state["adwin"] is not None:
                drift.detector.restore(state["adwin"])
        else:
            drift.error_reference = list(state["error_reference"])
            if state["grid"] is not None:
                drift.start(state["grid"], state["grid_events"])
                drift.detector.restore(state["page_hinkley"])
        episodes = self.episodes
        for key, saved in state["episodes"].items():
            if key in episodes:
                episodes[key].restore(saved)
        self.last_statistic = dict(state["last"])

    def summary(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # type: ignore[override]
        """(the task, pairs, rolling metrics and label delays; the detector rows) for status, the page and
        the metrics."""
        return {"task": self.task + (" (inferred)" if self.inferred else ""), **self.rolling.info()}, \
            super().summary()


class MultivariateColumn(ColumnMonitor):
    """A model's joint test over its events' numeric features (:class:`stream_monitor.adapters.Hotelling`):
    its values are the events' rows in the joint reference's feature order (NaN where a value is not a
    finite number: that event is skipped and counted); its episode is walked like a column's."""

    def __init__(self, model: ModelConfig, joint: JointReference, budget: float | None = None):
        self.model_id = model.model_id
        self.budget = budget  # the test's share of the model's false-alarm budget (None: all of it)
        self.signal = "multivariate"
        self.name = "joint"
        self.reference = joint
        self.numeric = False
        self.last_statistic = {}
        self.points = history.pending()
        self.adapters = multivariate_adapters(self, model, joint, budget)
        self._index_adapters()

    @property
    def label(self) -> str:
        return f"{self.model_id}'s {len(self.reference.names)} numeric features"

    @property
    def skipped(self) -> int:
        return self.adapters[0].detector.skipped

    def rows(self, events: Sequence[InferenceEvent], features: np.ndarray | None, names: Sequence[str]) -> np.ndarray:
        """The events' rows (n × k): from the feature matrix when the batch has one (rows by ``names``),
        else read from each event."""
        return joint_rows(self.reference.names, events, features, names)

    def update_batch(self, rows: np.ndarray, offsets: Sequence[int], partition: int,  # type: ignore[override]
                     times: Sequence[int | None]) -> list[tuple[int, int, Alert]]:
        marks: dict[int, dict[Adapter, Any]] = {}
        for adapter in self.adapters:
            for j, mark in adapter.update(rows):
                marks.setdefault(j, {})[adapter] = mark
        return self._walk(marks, np.arange(len(rows), dtype=np.int64), offsets, partition, times)

    def snapshot(self) -> dict[str, Any]:
        return {"detectors": {a.part: a.detector.snapshot() for a in self.adapters},
                "episodes": {a.key: a.episode.snapshot() for a in self.adapters},
                "last_statistic": dict(self.last_statistic)}


class SegmentColumn(ColumnMonitor):
    """One column's window detectors (data quality, PSI, KS) over one segment's events, against the
    segment's own reference (:mod:`stream_monitor.segments`); its alerts carry the segment. The point
    detectors and the p95 ceiling run on the model-wide column only; its windows keep no history points."""

    def __init__(self, model: ModelConfig, signal: str, name: str, reference: ColumnReference,
                 segment: Mapping[str, str | None], budget: float | None = None, merged: bool = False,
                 sketch_prefix: str = ""):
        """``merged`` (decisions = "model"): no detectors here; the batch's counts go to the partials under
        ``sketch_prefix`` and the merge decides the segment's windows."""
        self.segment = dict(segment)
        self.sketch_prefix = sketch_prefix
        super().__init__(model, signal, name, reference, merged, budget)
        self.adapters = [a for a in self.adapters if not a.point and a.part != "p95"]
        self._index_adapters()
        self.points = deque(maxlen=0)

    @property
    def label(self) -> str:
        return f"{super().label}[{segment_words(self.segment)}]"


class SegmentPerformance(PerformanceColumn):
    """One segment's realized performance: the floors (ceilings) of the model's performance on the rolling
    metrics of the segment's joined pairs (the pairs whose prediction's segment values route to it); its
    alerts carry the segment. The error stream's point detector runs model-wide only; no history points."""

    def __init__(self, model: ModelConfig, task: str, segment: Mapping[str, str | None], budget: float | None = None):
        self.segment = dict(segment)
        super().__init__(model, task, budget)
        self.adapters = [a for a in self.adapters if not a.point]
        self._index_adapters()
        self.points = deque(maxlen=0)

    @property
    def subject_label(self) -> str:  # what its messages name
        return f"{self.model_id}[{segment_words(self.segment)}]"

    def snapshot(self) -> dict[str, Any]:
        return {"task": self.task, **self.rolling.snapshot(),
                "episodes": {a.key: a.episode.snapshot() for a in self.adapters},
                "last": {a.key: self.last_statistic[a.key] for a in self.adapters if a.key in self.last_statistic}}

    def restore(self, state: Mapping[str, Any], restart: frozenset[str] = frozenset()) -> None:
        self.rolling.restore(state)
        episodes = self.episodes
        for key, saved in state["episodes"].items():
            if key in episodes:
                episodes[key].restore(saved)
        self.last_statistic = dict(state["last"])


class SegmentMonitor:
    """A model's per-segment detectors: for each of its reference's segments (the top ones, then the rest)
    a :class:`SegmentColumn` per column the segment's profile has (:func:`stream_monitor.segments.
    monitored_columns`); a segment without reference events (a rest the reference never saw) has none."""

    def __init__(self, model: ModelConfig, reference: ReferenceProfile, budget: float, merged: bool = False):
        self.segments = Segments(reference.segments)
        latency = model.detectors.latency.enabled
        self.keys = [segment_sketch_key(i) for i in range(len(self.segments))]
        self.columns: list[list[SegmentColumn]] = [
            [] if profile is None else [SegmentColumn(model, signal, name, ref, segment, budget, merged, f"{key}|")
                                        for signal, name, ref in monitored_columns(profile, model.segments.columns,
                                                                                   latency)]
            for segment, profile, key in zip(self.segments.objects, self.segments.profiles, self.keys)]
        self.events = [0] * len(self.segments)  # events seen per segment
        self.model, self.budget, self.merged = model, budget, merged
        # per segment its realized performance (decisions = "partition"), from its first joined pair
        self.performance: list[SegmentPerformance | None] = [None] * len(self.segments)

    def all_columns(self) -> list[SegmentColumn]:
        return [column for columns in self.columns for column in columns]

    def performance_columns(self) -> list[SegmentPerformance]:
        return [column for column in self.performance if column is not None]

    def update_pairs(self, pairs: Sequence[tuple], task: str, partition: int, out: list) -> None:
        """The batch's joined pairs (as :meth:`ModelMonitor.process_batch` keeps them: position, slot,
        prediction, label, label time, offset, event time, the prediction's segment values), each through
        its segment's performance; the alerts into ``out`` after the pair's model-wide ones. A pair whose
        prediction did not keep the segment columns (joined before they were configured) counts model-wide
        only."""
        columns = self.segments.columns
        usable = [p for p in pairs if p[7] is not None and all(c in p[7] for c in columns)]
        for index, picks in enumerate(self.segments.route(p[7] for p in usable)):
            if not picks:
                continue
            column = self.performance[index]
            if column is None or column.task != task:
                column = self.performance[index] = SegmentPerformance(self.model, task, self.segments.objects[index],
                                                                      self.budget)
            mine = [usable[i] for i in picks]
            for at, order, alert in column.update_batch([p[2:5] for p in mine], [p[5] for p in mine], partition,
                                                        [p[6] for p in mine]):
                out.append((mine[at][0], mine[at][1], 1000 * (index + 1) + order, alert))

    def update_batch(self, events: Sequence[InferenceEvent], offsets: Sequence[int], positions: Sequence[int],
                     partition: int, times: Sequence[int | None], features: np.ndarray | None,
                     names: Sequence[str], slot: int, out: list, buckets: np.ndarray | None = None,
                     sketch: BucketSketch | None = None) -> None:
        """The batch's inference events, each through its segment's columns; the alerts into ``out`` as
        (position, ``slot`` + the column's rank, order, alert). ``features``: the model's feature matrix
        (rows by ``names``), when the batch has one. ``sketch`` (decisions = "model"): each segment's events
        and counts go to the partials of their ``buckets`` instead."""
        where = {name: i for i, name in enumerate(names)}
        for index, picks in enumerate(self.segments.route(e.features for e in events)):
            if not picks:
                continue
            self.events[index] += len(picks)
            mine = [events[i] for i in picks]
            mine_offsets, mine_times = [offsets[i] for i in picks], [times[i] for i in picks]
            matrix = features[:, picks] if isinstance(features, np.ndarray) else None
            mine_buckets = None
            if sketch is not None:
                mine_buckets = buckets[picks]
                sketch.count_segment(self.keys[index], mine_buckets)
            for rank, column in enumerate(self.columns[index]):
                values = _values(column, mine, matrix, where.get(column.name))
                for at, order, alert in column.update_batch(values, mine_offsets, partition, mine_times,
                                                            mine_buckets, sketch):
                    out.append((positions[picks[at]], slot + rank, order, alert))

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"segment": dict(segment), "events": events,
                 "columns": {f"{c.signal}:{c.name}": c.snapshot() for c in columns},
                 **({} if performance is None else {"performance": performance.snapshot()})}
                for segment, events, columns, performance in zip(self.segments.objects, self.events, self.columns,
                                                                 self.performance)]

    def restore(self, state: Sequence[Mapping[str, Any]], restart: frozenset[str] = frozenset()) -> None:
        saved = {segment_words(s["segment"]): s for s in state}
        for index, (segment, columns) in enumerate(zip(self.segments.objects, self.columns)):
            held = saved.get(segment_words(segment))
            if held is None:
                continue
            self.events[index] = held["events"]
            if held.get("performance") is not None and not self.merged:
                column = self.performance[index] = SegmentPerformance(self.model, held["performance"]["task"],
                                                                      segment, self.budget)
                column.restore(held["performance"])
            for column in columns:
                if f"{column.signal}:{column.name}" in held["columns"]:
                    column.restore(held["columns"][f"{column.signal}:{column.name}"], restart)

    def summary(self) -> list[dict[str, Any]]:
        """Per segment: its reference events, events seen, and its detectors firing now."""
        out = []
        for segment, profile, columns, performance in zip(self.segments.objects, self.segments.profiles, self.columns,
                                                          self.performance):
            rows = [row for column in columns for row in column.summary()]
            measured = {}
            if performance is not None:  # its pairs and rolling metrics
                info, performance_rows = performance.summary()
                rows.extend(performance_rows)
                measured = {"performance": info}
            out.append({"segment": dict(segment), "reference_events": 0 if profile is None else profile.events,
                        "events": self.events[len(out)], "detectors": len(rows),
                        "firing": [row for row in rows if row["firing"]], **measured})
        return out


def _values(column: ColumnMonitor, events: Sequence[InferenceEvent], features: np.ndarray | None,
            row: int | None) -> Any:
    """A column's values of ``events``: a row of their feature matrix when there is one, else read from each.

    A matrix stacked from the batch decode's float64 copies holds NaN where a value is not a number (a
    JSON number never is NaN). A numeric column takes its row as it is when it has no NaN (the very float64
    values the list would give), else the row's numbers with the others read from the events; any other
    column takes its row only when the whole matrix has no NaN (as it always did), else reads the events."""
    if column.signal == "feature":
        if isinstance(features, np.ndarray) and row is not None:
            values = features[row]
            missing = np.isnan(values)
            if not missing.any():
                if column.numeric or not np.isnan(features).any():
                    return values
            elif column.numeric and not missing.all():
                out = values.tolist()
                name, places = column.name, np.flatnonzero(missing).tolist()
                others = [events[i] for i in places]
                read = column_values(others, name)
                for i, value in zip(places, [e.features.get(name) for e in others] if read is None else read):
                    out[i] = value
                return out
            read = column_values(events, column.name)  # the batch decode's arrays, in one go
            if read is not None:
                return read
        return [e.features.get(column.name) for e in events]
    if column.signal == "latency":
        return [e.latency_ms for e in events]
    if column.name == "score":
        return [e.score for e in events]
    return [e.predicted_label for e in events]


_EPISODES_OF = {"p95": ("p95_ceiling",), "quality": QUALITY_CHECKS}  # else: the part's own name
_RESTARTED_NAMES = {"psi": "PSI", "ks": "KS", "quality": "data-quality", "adwin": "ADWIN",
                    "page_hinkley": "Page-Hinkley", "p95": "p95 latency", "multivariate": "joint drift"}


def model_settings(model: ModelConfig, service: ServiceConfig | None = None) -> dict[str, dict[str, Any]]:
    """What a model's stored state means, by part: the reference (and warm-up), each detector kind,
    performance. A part that differs from the saved one is re-baselined on restore."""
    service = service or ServiceConfig()
    d = model.detectors
    episode = {"detectors.false_alarms_per_million": d.false_alarms_per_million,
               "detectors.resolve_after": d.resolve_after, "detectors.cooldown": d.cooldown,
               "detectors.hysteresis": d.hysteresis}
    window = {"detectors.psi.window": d.psi.window}
    reference = {"reference.source": model.reference.source, "reference.events": model.reference.events,
                 "features": None if model.features is None else dict(sorted(model.features.items())),
                 "detectors.psi.bins": d.psi.bins, "detectors.psi.top_k": d.psi.top_k,
                 "service.max_categories_per_column": service.max_categories_per_column}
    if d.multivariate.max_features != 10:  # states saved before the joint reference meant 10
        reference["detectors.multivariate.max_features"] = d.multivariate.max_features
    if model.features is None:
        reference["service.max_inferred_columns"] = service.max_inferred_columns
    if model.segments.enabled:  # the reference's per-segment profiles (absent: what states saved before meant)
        reference["segments"] = msgspec.structs.asdict(model.segments) | {"columns": list(model.segments.columns)}

    def prefixed(section: str, obj: Any) -> dict[str, Any]:
        return {f"{section}.{k}": (dict(v) if isinstance(v, Mapping) else v) for k, v in msgspec.structs.asdict(obj).items()}

    performance = prefixed("performance", model.performance)
    if performance["performance.enabled"]:  # the default, and what states saved before the key meant
        del performance["performance.enabled"]
    return {"reference": reference,
            "psi": {**window, "detectors.psi.epsilon": d.psi.epsilon, "detectors.psi.warning": d.psi.warning,
                    "detectors.psi.critical": d.psi.critical, **episode},
            "quality": {**window, **prefixed("detectors.data_quality", d.data_quality), **episode},
            "ks": {**window, **prefixed("detectors.ks", d.ks), **episode},
            "adwin": {**prefixed("detectors.adwin", d.adwin), **episode},
            "page_hinkley": {**prefixed("detectors.page_hinkley", d.page_hinkley), **episode},
            "p95": {**window, "detectors.latency.p95_ceiling_ms": d.latency.p95_ceiling_ms, **episode},
            "latency": {"detectors.latency.enabled": d.latency.enabled},
            "performance": performance,
            **_joint_settings(d),
            # only where configured, so the fingerprints of states saved before fairness mean the same
            **({"fairness": prefixed("fairness", model.fairness)} if model.fairness.attributes else {})}


def _joint_settings(d: Any) -> dict[str, dict[str, Any]]:
    """The joint test's part of the settings: only its keys that differ from their defaults (so the
    fingerprints of the states saved before it existed still mean the same)."""
    default = msgspec.structs.asdict(MultivariateConfig())
    changed = {f"detectors.multivariate.{k}": v for k, v in msgspec.structs.asdict(d.multivariate).items()
               if v != default[k] and k != "max_features"}  # max_features: the reference's part
    return {"multivariate": changed} if changed else {}


def fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 of the settings as sorted JSON (first 16 hex digits)."""
    return hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _changes(saved: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per part of :func:`model_settings` that differs: "key old → new" of each changed key."""
    out: dict[str, list[str]] = {}
    for part, settings in now.items():
        before = saved.get(part) or {}
        if before != settings:
            out[part] = [f"{key} {_shown(before.get(key))} → {_shown(settings.get(key))}"
                         for key in sorted(set(before) | set(settings)) if before.get(key) != settings.get(key)]
    return out


def _shown(value: Any) -> str:
    if value == "":
        return '""'
    return "unset" if value is None else orjson.dumps(value).decode() if isinstance(value, (dict, list)) else \
        str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


class ModelMonitor:
    """All columns of one model in one partition, plus its warm-ups (inference events and labels, as
    summaries: what the reference needs, bounded by the limits, never the events themselves)."""

    def __init__(self, config: ModelConfig, reference: ReferenceProfile | None,
                 service: ServiceConfig | None = None,
                 model_references: Mapping[str, ReferenceProfile] | None = None, requests: bool = False):
        """``requests``: judge the model's incidents by its retraining policy (``[retraining] topic`` set)."""
        service = service or ServiceConfig()
        # decisions = "model" with a warm-up: the model's reference, once its merge has built it
        self.model_references = {} if model_references is None else model_references
        self.config = config
        self.limits = Limits(service.max_inferred_columns, service.max_categories_per_column)
        self.settings = model_settings(config, service)
        self.fingerprint = fingerprint(self.settings)
        self.given_reference = reference
        self.reference: ReferenceProfile | None = None
        self.columns: list[ColumnMonitor] = []
        self.label_column: ColumnMonitor | None = None
        self.multivariate: MultivariateColumn | None = None  # the joint test, when on and the reference has one
        self.warmup = WarmupSummary(config.features, self.limits)
        self.segment_warmup = self._segment_warmup()  # with segments: the warm-up's per-segment summaries
        self.segments: SegmentMonitor | None = None  # with segments: the per-segment detectors
        self.label_warmup = LabelSummary(self.limits)
        self.untracked: dict[str, Any] = {"columns": 0, "examples": []}  # feature names the warm-up left out
        self.events = 0
        self.labels = 0
        # with no task configured, the first joined pair infers it (:meth:`_performance`)
        perf = config.performance
        self.share = self._share_before_reference()
        self.performance = PerformanceColumn(config, budget=self.share) if perf.enabled and perf.task else None
        self.estimated: EstimatedPerformance | None = None  # a classifier's, once it has a joined pair (_estimate)
        self.fairness: Fairness | None = None  # with [fairness] attributes, from the reference on
        self.incidents = Incidents(config.model_id)  # groups this model's alerts (stream_monitor/incidents.py)
        # asks for retraining once per incident that meets the policy (stream_monitor/retraining.py)
        self.retraining = Retraining(config.model_id, RetrainingPolicy.of(config.retraining)) if requests else None
        self.requests: list[RetrainingRequest] = []  # made, not yet taken by the service
        self.sketch: BucketSketch | None = None  # decisions = "model": the open buckets' partials
        # decisions = "model": what the joint test and the estimate add to them (stream_monitor/mergejoint.py)
        self.model_side: PartitionSide | None = None
        if reference is not None:
            self.use_reference(reference)
        elif config.by_model:  # the model-level warm-up: this partition's share, summarised per bucket
            self.sketch = self._warmup_sketch()

    def _segment_warmup(self) -> SegmentWarmup | None:
        wanted = self.config.segments
        if not wanted.enabled or self.config.by_model:
            return None
        return SegmentWarmup(wanted.columns, wanted.top_k, wanted.min_events, self.config.features, self.limits)

    def _with_segments(self, profile: ReferenceProfile) -> ReferenceProfile:
        """The warm-up's reference with its per-segment profiles (with segments configured)."""
        if self.segment_warmup is None:
            return profile
        psi = self.config.detectors.psi
        return dataclasses.replace(profile, segments=self.segment_warmup.build(profile, psi.bins, psi.top_k))

    def _segment_detectors(self, reference: ReferenceProfile) -> SegmentMonitor | None:
        """The per-segment detectors of ``reference``, when segments are configured and it has their profiles
        (one log line when it cannot have them)."""
        wanted = self.config.segments
        if not wanted.enabled:
            return None
        model_id = self.config.model_id
        if not runs_segments(self.config, reference):
            log.warning("model %s: the reference has no per-segment profiles for segments.columns = %s, top_k = %d, "
                        "min_events = %d (built before they were configured or with other settings): the segment "
                        "detectors are off; rebuild the reference (`stream-monitor reference build`)", model_id,
                        list(wanted.columns), wanted.top_k, wanted.min_events)
            return None
        monitor = SegmentMonitor(self.config, reference, self.share, self.config.by_model)
        if self.sketch is not None:  # decisions = "model": the segments' counts go to the partials too
            self.sketch.add_segment_columns({c.sketch_prefix + column_key(c.signal, c.name): c.reference
                                             for c in monitor.all_columns()})
        return monitor

    def _warmup_sketch(self) -> BucketSketch:
        segments = None if not self.config.segments.enabled else \
            functools.partial(segment_warmup_of, self.config, self.limits)  # its partials: per-segment summaries too
        return BucketSketch(None, self.config.detectors.ks.enabled, int(self.config.merge_bucket_seconds * 1000),
                            warmup=(self.config.features, self.limits), segment_warmup=segments)

    @property
    def share_left(self) -> int | None:
        """decisions = "model" with a warm-up and no reference yet: how many more of this partition's
        events its warm-up share takes (0: done, waiting for the model's reference); else ``None``."""
        if not self.config.by_model or self.reference is not None:
            return None
        return max(0, self.config.reference.events - len(self.warmup))

    def adopt(self) -> bool:
        """Its share done, take the model's reference if its merge has built it; ``True`` if taken."""
        reference = self.model_references.get(self.config.model_id)
        if self.share_left != 0 or reference is None:
            return False
        self.use_reference(reference)
        return True

    def use_reference(self, reference: ReferenceProfile) -> None:
        """Compare from now on with ``reference`` (detectors start afresh; labels only if it has its own)."""
        self.reference = reference
        self.share = model_share(self.config, reference)
        latency = self.config.detectors.latency.enabled
        merged = self.config.by_model
        self.columns = [ColumnMonitor(self.config, signal, name, ref, merged, self.share)
                        for signal, name, ref in reference.columns() if latency or signal != "latency"]
        # the label and performance detectors may predate the reference: from now on, the model's share
        if self.performance is not None:
            self.performance = self.performance.recalibrated(self.config, self.share)
        if self.estimated is not None:
            self.estimated.recalibrate(self.share)
        if self.label_column is not None and reference.labels is None and self.label_column.budget != self.share:
            column = ColumnMonitor(self.config, "label", "label", self.label_column.reference, budget=self.share)
            column.restore(self.label_column.snapshot())
            self.label_column = column
        if merged:
            before = self.sketch
            self.sketch = BucketSketch(reference, self.config.detectors.ks.enabled,
                                       int(self.config.merge_bucket_seconds * 1000),
                                       p95=latency and self.config.detectors.latency.p95_ceiling_ms is not None)
            if before is not None:  # the warm-up share's buckets, or those of the reference before (their tag)
                self.sketch.take_over(before)
            self.model_side = PartitionSide(self.config, reference)
        self.multivariate = None if merged else self._joint(reference)
        self.segments = self._segment_detectors(reference)
        if self.config.fairness.attributes:
            self.fairness = Fairness(self.config.model_id, self.config.fairness, reference, self.share,
                                     self.config.detectors.hysteresis)
        if len(self.warmup):
            self.warmup = WarmupSummary(self.config.features, self.limits)
            self.segment_warmup = self._segment_warmup()
        if reference.labels is not None and not merged:  # decisions = "model": the merge decides label drift
            self._use_labels(reference.labels)
        elif merged:  # a stored reference's numeric labels: their point detectors run here, for the merge
            numeric = isinstance(reference.labels, NumericReference) and self.config.reference.source == "stored"
            self.label_column = ColumnMonitor(self.config, "label", "label", reference.labels, True, self.share) \
                if numeric else None
        self._reconcile()

    def _joint(self, reference: ReferenceProfile) -> MultivariateColumn | None:
        """The joint test of the reference's numeric features, when on (one log line when it cannot run)."""
        if not self.config.detectors.multivariate.enabled:
            return None
        numeric = sum(isinstance(r, NumericReference) for r in reference.features.values())
        if numeric < 2:
            return None
        model_id = self.config.model_id
        if reference.joint is None:
            log.info("model %s: the reference has no joint sample of its %d numeric features (built by an older "
                     "version, or too few complete events): multivariate drift is off for it; rebuild the "
                     "reference to turn it on", model_id, numeric)
            return None
        return MultivariateColumn(self.config, reference.joint, self.share)

    def _reconcile(self) -> None:
        """Episodes that ended without a ``resolved`` (their detectors restarted) leave the open incident."""
        line = self.incidents.reconcile(self._firing())
        if line is not None:
            incident_log.info(line)

    def _firing(self) -> list[str]:
        """The episode keys (:func:`stream_monitor.incidents.episode_key`) of this model firing now."""
        columns = [*self.columns, *(c for c in (self.label_column, self.performance, self.multivariate)
                                    if c is not None)]
        estimated = [] if self.estimated is None else \
            [episode_key("estimated_performance", m, "cbpe") for m, e in self.estimated.episodes.items() if e.firing]
        if self.segments is not None:
            columns.extend(self.segments.all_columns())
            columns.extend(self.segments.performance_columns())
        if self.fairness is not None:
            estimated += [episode_key("fairness", name, metric) for name, metric in self.fairness.firing()]
        return [episode_key(a.signal or c.signal, a.subject or c.name, a.name, c.segment) for c in columns
                for a in c.adapters if a.episode.firing and not c.merged] + estimated  # merged: the merge's

    def _share_before_reference(self) -> float:
        """Each test's share while the reference's columns are unknown: of the tests the config alone tells
        (:func:`stream_monitor.merge.share_before_reference`; the label, performance and estimated
        performance thresholds follow the model's share once the reference is built)."""
        return share_before_reference(self.config)

    def _use_labels(self, labels: ColumnReference) -> None:
        self.label_column = ColumnMonitor(self.config, "label", "label", labels, budget=self.share)
        if len(self.label_warmup):
            self.label_warmup = LabelSummary(self.limits)

    def process_batch(self, items: Sequence[tuple[int, int, InferenceEvent | LabelEvent, JoinResult | None]],
                      partition: int, seen: Sequence[int | None] | None = None) -> list[tuple[int, int, int, Alert]]:
        """This model's events of a batch as (position in the batch, offset, event, join); the alerts
        as (position, column, order, alert), which sort into the order of one event at a time:
        per inference event performance first, then its columns; per label event label drift, then
        performance."""
        out: list[tuple[int, int, int, Alert]] = []
        pending: list[tuple[int, int, InferenceEvent]] = []
        labelled: list[tuple[int, int, LabelEvent]] = []
        scored: list[tuple[int, int, InferenceEvent]] = []  # inference events with a score, for the estimate
        pairs: list[tuple] = []  # joined: (position, slot, prediction record, label, label time, offset, event time)
        merged = self.config.by_model
        fair_pairs: list[tuple] = []  # joined, for fairness: (position, offset, time, values, predicted, truth)
        fairness = self.fairness
        for position, offset, event, join in items:
            if isinstance(event, LabelEvent):
                self._label(event, position, offset, partition, join, labelled, pairs, seen)
                if fairness is not None and join is not None and join.status == "joined":
                    self._fair_pair(join.other.get("g") or {}, join.other, event.label, position, offset,
                                    event.timestamp_ms, fair_pairs, event.timestamp_ms, seen)
                continue
            self.events += 1
            if is_finite_number(event.score):
                scored.append((position, offset, event))
            if join is not None and join.status == "joined":
                prediction = prediction_record(event.score, event.predicted_label, event.timestamp_ms)
                if merged:  # in the loop: before a warm-up share's end closes its buckets
                    self._count_pair(position, prediction, join.other["label"], join.other["t"], seen, event.features)
                if self._performance(prediction, partition) is not None:
                    pairs.append((position, -1, prediction, join.other["label"], join.other["t"], offset,
                                  event.timestamp_ms, None if self.segments is None else event.features))
                if fairness is not None:
                    self._fair_pair(event.features, prediction, join.other["label"], position, offset,
                                    event.timestamp_ms, fair_pairs, join.other["t"], seen)
            if self.reference is None and self.config.by_model:  # the model-level warm-up (share)
                if self.share_left == 0:
                    raise AssertionError("an event past the warm-up share before the model's reference")
                sketch = self.sketch
                lateness = int(self.config.merge_lateness_seconds * 1000)
                mark = None if seen is None or seen[position] is None else seen[position] - lateness
                sketch.add_warmup(bucket_of(event.timestamp_ms, mark, sketch.bucket_ms, sketch.floor), event)
                self.warmup.add(event)
                if self.share_left == 0:  # the share ends: its buckets close; the model's reference, if built
                    sketch.close(None, everything=True)
                    self.adopt()
                    fairness = self.fairness  # the rest of the batch as the next batch would see it
                continue
            if self.reference is None:
                self.warmup.add(event)
                if self.segment_warmup is not None:
                    self.segment_warmup.add(event)
                if len(self.warmup) >= self.config.reference.events:
                    psi = self.config.detectors.psi
                    profile = self._with_segments(self.warmup.build(
                        self.config.model_id, psi.bins, psi.top_k, source="warmup",
                        joint_features=self.config.detectors.multivariate.max_features))
                    self._note_untracked(partition)
                    self.use_reference(profile)  # a label column from the label warm-up carries on
                    fairness = self.fairness
                continue
            pending.append((position, offset, event))
        if pairs:
            for index, order, alert in self.performance.update_batch(
                    [p[2:5] for p in pairs], [p[5] for p in pairs], partition, [p[6] for p in pairs]):
                if merged:  # the model's episode decides what is announced
                    if alert.status == "firing":
                        pair = pairs[index]
                        self.sketch.firing(self._bucket(pair[4], pair[0], seen), firing_record(alert))
                    continue
                out.append((pairs[index][0], pairs[index][1], order, alert))
            if self.segments is not None and not merged:  # each pair's segment's floors (ceilings) after the model's
                self.segments.update_pairs(pairs, self.performance.task, partition, out)
        features = [c for c in self.columns if c.signal == "feature" and not c.merged]
        before = {}
        for column in features:
            before[column.name] = column.last_statistic.get("psi")
            column.closed_psi = []
        buckets = self._columns(pending, partition, out, seen) if pending else None
        if self.config.by_model:  # the pairs go to the partials (once the reference is there), the merge estimates
            if self.model_side is not None and pairs:
                self._model_pairs(pairs, seen)
        elif scored or pairs:
            self._estimate(scored, pairs, partition, out)
        if fairness is not None and (pending or fair_pairs):
            self._fair(pending, fair_pairs, partition, out, buckets)
        if features and out:
            out = [(*t[:3], self._with_drivers(t[3], features, before)) for t in out]
        if labelled:
            for index, order, alert in self.label_column.update_batch(
                    [e.label for _, _, e in labelled], [o for _, o, _ in labelled], partition,
                    [e.timestamp_ms for _, _, e in labelled]):
                if merged:  # a numeric label's point firing: the model's episode decides what is announced
                    if alert.status == "firing":
                        position, _, event = labelled[index]
                        self.sketch.firing(self._bucket(event.timestamp_ms, position, seen), firing_record(alert))
                    continue
                out.append((labelled[index][0], 0, order, alert))
        return self._leaving(out)

    def _bucket(self, time_ms: int | None, position: int, seen: Sequence[int | None] | None) -> int:
        """decisions = "model": the bucket an event at ``position`` of the batch counts in, at ``time_ms``."""
        sketch = self.sketch
        mark = None if seen is None or seen[position] is None else \
            seen[position] - int(self.config.merge_lateness_seconds * 1000)
        return bucket_of(time_ms, mark, sketch.bucket_ms, sketch.floor)

    def _count_pair(self, position: int, prediction: Mapping[str, Any], label: Any, label_time: int | None,
                    seen: Sequence[int | None] | None, values: Mapping[str, Any] | None = None) -> None:
        """decisions = "model": a joined pair in the partial of its label's time (whichever side completed the
        join): :mod:`stream_monitor.mergeperf`. With segments, also under its segment (``values``: its
        prediction's segment values; see :meth:`_pair_segment`)."""
        partial = self.sketch.partial(self._bucket(label_time, position, seen))
        positive = self.config.performance.positive_label
        mergeperf.add_pair(partial, prediction, label, positive)
        key = self._pair_segment(partial, values)
        if key is not None:
            mergeperf.add_pair(partial.setdefault("segment_pairs", {}).setdefault(key, {}), prediction, label, positive)

    def _pair_segment(self, partial: Mapping[str, Any], values: Mapping[str, Any] | None) -> str | None:
        """decisions = "model": the key a joined pair counts under in its partial's ``segment_pairs``: its
        segment's (``s<i>``) once the reference's segments are known; during the warm-up its segment values'
        (``v`` + their JSON; a bucket's values past :func:`~stream_monitor.segments.candidate_cap` together
        under ``v*``), which the merge routes. ``None``: no segments, or values not kept with the prediction."""
        wanted = self.config.segments
        if not wanted.enabled or values is None or any(c not in values for c in wanted.columns):
            return None
        if self.segments is not None:
            return self.segments.keys[self.segments.segments.index_of(values)]
        if self.reference is not None:  # a reference without segment profiles: segments are off
            return None
        key = "v" + orjson.dumps(list(segment_of(values, wanted.columns))).decode()
        held = partial.get("segment_pairs", {})
        if key not in held and len(held) >= candidate_cap(wanted.top_k):
            return "v*"
        return key

    def _with_drivers(self, alert: Alert, features: list[ColumnMonitor],
                      before: Mapping[str, float | None]) -> Alert:
        """A firing model-wide alert with its drivers: each feature's PSI in its latest window closed at
        or before the alert's offset (so the same however the stream is cut into batches)."""
        if alert.status != "firing" or alert.signal not in drivers.SIGNALS or alert.offset is None:
            return alert
        psis: dict[str, float] = {}
        for column in features:
            psi = before[column.name]
            for offset, value in column.closed_psi:
                if offset > alert.offset:
                    break
                psi = value
            if psi is not None:
                psis[column.name] = psi
        association = None if self.reference is None else self.reference.association
        return drivers.attach(alert, drivers.rank(psis, association))

    def _estimate(self, scored: list[tuple[int, int, InferenceEvent]], pairs: list[tuple], partition: int,
                  out: list) -> None:
        """The estimated performance (:mod:`stream_monitor.cbpe`) over the batch, in event order: the joined
        pairs with a score calibrate it, then each scored prediction counts in its windows. A classifier's only
        (the performance task), from its first joined pair on."""
        estimated = self.estimated
        if estimated is None:
            config = self.config.detectors.estimated_performance
            stored = None if self.reference is None else reference_pairs(self.config, self.reference)
            if stored is None and not (config.enabled and self.performance is not None
                                       and self.performance.classification):
                return
            estimated = self.estimated = EstimatedPerformance(self.config.model_id, config, self._estimate_budget())
            if stored is not None:  # a stored reference with labels calibrates it before any label arrives
                estimated.calibrate_on(stored)
        positive = self.config.performance.positive_label
        threshold = estimated.config.decision_threshold
        items = [(p[0], p[1], "pair", p) for p in pairs if is_finite_number(p[2].get("score"))]
        items += [(position, 0, "event", (offset, event)) for position, offset, event in scored]
        items.sort(key=itemgetter(0, 1))
        slot = len(self.columns)  # after the event's columns
        run: list[tuple[int, int, InferenceEvent]] = []

        def flush() -> None:
            if not run:
                return
            for index, alert in estimated.add_predictions(
                    [(e.score, predicted_positive(e.score, e.predicted_label, positive, threshold)) for _, _, e in run],
                    [o for _, o, _ in run], partition, [e.timestamp_ms for _, _, e in run]):
                out.append((run[index][0], slot, len(out), alert))
            run.clear()

        for position, _, kind, item in items:
            if kind == "event":
                if estimated.calibrated:
                    run.append((position, *item))
                continue
            flush()
            prediction, label = item[2], item[3]
            estimated.add_pair(prediction["score"], predicted_positive(prediction["score"], prediction.get("label"),
                                                                       positive, threshold),
                               category(label) == positive)
        flush()

    def _model_pairs(self, pairs: list[tuple], seen: Sequence[int | None] | None) -> None:
        """decisions = "model": the batch's joined pairs into the partials, each in the bucket of the
        partition's latest event time before it (the label's own time when there is none yet)."""
        sketch, side = self.sketch, self.model_side
        lateness = int(self.config.merge_lateness_seconds * 1000)
        for position, _, prediction, label, label_time, *_ in pairs:
            latest = None if seen is None else seen[position]
            mark = None if latest is None else latest - lateness
            bucket = bucket_of(label_time if latest is None else latest, mark, sketch.bucket_ms, sketch.floor)
            side.add_pair(sketch, bucket, prediction, label)

    def _fair_pair(self, values: Mapping[str, Any], prediction: Mapping[str, Any], label: Any, position: int,
                   offset: int, time: int | None, into: list, label_time: int | None = None,
                   seen: Sequence[int | None] | None = None) -> None:
        """A joined pair for fairness: its prediction's attribute values, favourable or not, and its label's.
        decisions = "model": counted per group in the partial of its label's time (as performance's pairs),
        equal opportunity and equalized odds are the merge's."""
        fairness = self.fairness
        predicted = fairness.favorable(prediction.get("score"), prediction.get("label"))
        if predicted is None:
            return
        truth = category(label) == self.config.fairness.favorable
        if not self.config.by_model:
            into.append((position, offset, time, values, predicted, truth))
        elif fairness.wants_pairs:
            bucket = self._bucket(label_time, position, seen)
            for monitor in fairness.attributes:
                group = monitor.groups.names[monitor.groups.of(values.get(monitor.attribute))]
                self.sketch.add_pair_groups(monitor.attribute, bucket, group, predicted, truth)

    def _fair(self, pending: list[tuple[int, int, InferenceEvent]], pairs: list[tuple], partition: int,
              out: list, buckets: np.ndarray | None = None) -> None:
        """Fairness (:mod:`stream_monitor.fairness`) over the batch's predictions and joined pairs, in order;
        its alerts after the event's other alerts. decisions = "model": the predictions' groups are counted
        in their buckets' partials (``buckets``: each pending event's), demographic parity is the merge's."""
        fairness = self.fairness
        slot = len(self.columns) + 2
        rows = [(p, o, e, favorable, k) for k, (p, o, e) in enumerate(pending)
                if (favorable := fairness.favorable(e.score, e.predicted_label)) is not None]
        if self.sketch is not None and buckets is not None:
            if rows and "demographic_parity" in fairness.metrics:
                at = buckets[[r[4] for r in rows]]
                for monitor in fairness.attributes:
                    names = monitor.groups.names
                    self.sketch.add_groups(monitor.attribute, at.tolist(),
                                           [names[monitor.groups.of(r[2].features.get(monitor.attribute))]
                                            for r in rows], [r[3] for r in rows])
            rows = []
        for index, alert in fairness.add_predictions(
                [r[2].features for r in rows], [r[3] for r in rows], [r[1] for r in rows], partition,
                [r[2].timestamp_ms for r in rows]):
            out.append((rows[index][0], slot, len(out), alert))
        for index, alert in fairness.add_pairs(
                [p[3] for p in pairs], [p[4] for p in pairs], [p[5] for p in pairs], [p[1] for p in pairs],
                partition, [p[2] for p in pairs]):
            out.append((pairs[index][0], slot + 1, len(out), alert))

    def _estimate_budget(self) -> float:
        """The estimate's share of the model's false-alarm budget: one test's, as the others' (before the
        reference from the config alone, then the model's share: :meth:`use_reference` recalibrates an
        estimate that predates it, so its floors are the same whenever the first pair comes; split again
        over the four metrics by :func:`stream_monitor.cbpe.budget_z`)."""
        return self.share

    def _leaving(self, tagged: list[tuple[int, int, int, Alert]]) -> list[tuple[int, int, int, Alert]]:
        """Where the model's alerts leave it: in the order raised, each stamped with its incident."""
        if not tagged:
            return tagged
        tagged.sort(key=lambda t: t[:3])
        stamped, lines = self.incidents.stamp([t[3] for t in tagged])
        for _, line in lines:  # INFO: the alerts themselves are the warning
            incident_log.info(line)
        if self.retraining is not None:
            self.requests.extend(self.retraining.observe(stamped))
        return [(*t[:3], alert) for t, alert in zip(tagged, stamped)]

    def process(self, event: InferenceEvent, offset: int, partition: int,
                join: JoinResult | None = None) -> list[Alert]:
        """One inference event (:meth:`process_batch` of one)."""
        return _in_event_order(self.process_batch([(0, offset, event, join)], partition))

    def process_label(self, event: LabelEvent, offset: int, partition: int,
                      join: JoinResult | None = None) -> list[Alert]:
        """One label event (:meth:`process_batch` of one)."""
        return self.process(event, offset, partition, join)

    def _columns(self, pending: list[tuple[int, int, InferenceEvent]], partition: int, out: list,
                 seen: Sequence[int | None] | None = None) -> np.ndarray | None:
        """Every column over the batch's inference events, one column at a time. ``seen``: per position
        in the batch, the partition's largest event time before that event (decisions = "model"); the
        events' buckets then (else ``None``)."""
        positions = [p for p, _, _ in pending]
        offsets = [o for _, o, _ in pending]
        times = [e.timestamp_ms for _, _, e in pending]
        sketch, buckets = self.sketch, None
        if sketch is not None:
            lateness = int(self.config.merge_lateness_seconds * 1000)
            marks = [None if seen is None or seen[p] is None else seen[p] - lateness for p in positions]
            buckets = np.fromiter((bucket_of(t, w, sketch.bucket_ms, sketch.floor) for t, w in zip(times, marks)),
                                  dtype=np.int64, count=len(times))
            sketch.count_events(buckets)
        events = [e for _, _, e in pending]
        names = [c.name for c in self.columns if c.signal == "feature"]
        features = _feature_matrix(events, names)
        feature = 0
        for rank, column in enumerate(self.columns):
            values = _values(column, events, features, feature)
            feature += column.signal == "feature"
            if column.merged:
                for index, _, alert in column.update_batch(values, offsets, partition, times, buckets, sketch):
                    if alert.status == "firing":  # the model's episode decides what is announced
                        sketch.firing(int(buckets[index]), firing_record(alert))
                continue
            for index, order, alert in column.update_batch(values, offsets, partition, times):
                out.append((positions[index], rank, order, alert))
        if self.model_side is not None:  # the joint sums and score cells of the model's partials
            self.model_side.add_events(sketch, buckets, [e for _, _, e in pending], features,
                                       [c.name for c in self.columns if c.signal == "feature"])
        joint = self.multivariate
        if joint is not None:
            rows = joint.rows(events, features, names)
            for index, order, alert in joint.update_batch(rows, offsets, partition, times):
                out.append((positions[index], len(self.columns), order, alert))
        if self.segments is not None:  # after the model-wide columns, the joint test and the estimate
            self.segments.update_batch(events, offsets, positions, partition, times, features, names,
                                       len(self.columns) + 1, out, buckets, sketch)
        return buckets

    def _label(self, event: LabelEvent, position: int, offset: int, partition: int, join: JoinResult | None,
               labelled: list, pairs: list, seen: Sequence[int | None] | None = None) -> None:
        """Label drift (the distribution of ground-truth labels; the label column runs once per batch,
        over ``labelled``) and, once joined, performance. decisions = "model": the label and its joined pair
        count in the partials instead (the model's merge decides label drift), here, in event order."""
        self.labels += 1
        if self.config.by_model:
            mergeperf.add_label(self.sketch.partial(self._bucket(event.timestamp_ms, position, seen)), event.label,
                                self.limits.max_categories)
            if join is not None and join.status == "joined":
                self._count_pair(position, join.other, event.label, event.timestamp_ms, seen, join.other.get("g"))
            if self.label_column is not None:  # a stored reference's numeric labels: point detectors
                labelled.append((position, offset, event))
        elif self.label_column is None:
            self.label_warmup.add(event.label)
            if len(self.label_warmup) >= self.config.reference.events:
                psi = self.config.detectors.psi
                labels = self.label_warmup.build(psi.top_k, psi.bins, self._labels_numeric())
                if labels is not None:
                    self._use_labels(labels)
        else:
            labelled.append((position, offset, event))
        if join is not None and join.status == "joined" and self._performance(join.other, partition) is not None:
            pairs.append((position, 1, join.other, event.label, event.timestamp_ms, offset, event.timestamp_ms,
                          None if self.segments is None else join.other.get("g")))  # segments: from the reference on

    def _labels_numeric(self) -> bool:
        """Whether the label warm-up builds a numeric label reference: the model is a regression (its task
        configured, else told by its reference's predictions, else by the warm-up's so far)."""
        if self.reference is not None or self.config.performance.task:
            return label_numeric(self.config, self.reference)
        scores = self.warmup.score.numbers
        return infer_task(self.warmup.predicted_label.present > 0,
                          (min(scores), max(scores)) if len(scores) else None) == "regression"

    def _performance(self, prediction: Mapping[str, Any], partition: int) -> PerformanceColumn | None:
        """The performance detectors for a joined pair; with no task configured, created at the first pair
        with the task :meth:`_infer_task` gives (``None`` when performance is off). Called where the pair
        is in the batch, so the warm-up it reads is the same however the stream is cut into batches."""
        if self.config.by_model and self.reference is None:  # the model's warm-up: no detector yet
            return None
        if self.performance is None and self.config.performance.enabled:
            if self.config.by_model:  # the model's task: configured, or from the model's reference
                task = mergeperf.model_task(self.config, self.reference)
                self.performance = PerformanceColumn(self.config, task, self.share)
                log.info("model %s (partition %d): performance monitored as %s (%s)", self.config.model_id,
                         partition, task, "configured" if self.config.performance.task else
                         "inferred from the model's reference")
                return self.performance
            task, basis = self._infer_task(prediction)
            self.performance = PerformanceColumn(self.config, task, self.share)
            log.info("model %s (partition %d): performance monitored as %s, inferred from %s; set "
                     "[models.%s.performance] task to choose, or enabled = false to turn it off",
                     self.config.model_id, partition, self.performance.task, basis, self.config.model_id)
        return self.performance

    def _infer_task(self, prediction: Mapping[str, Any]) -> tuple[str, str]:
        """The task and what it was told from: the reference's predictions if it is built, else those of
        the warm-up so far, else the pair's own prediction (its inference event was counted elsewhere)."""
        sources: list[tuple[str, bool, tuple[float, float] | None]] = []
        ref = self.reference
        if ref is not None:
            sources.append(("the reference's predictions", ref.predicted_label is not None,
                            None if ref.score is None else (ref.score.minimum, ref.score.maximum)))
        else:
            scores = self.warmup.score.numbers
            sources.append(("the warm-up's predictions", self.warmup.predicted_label.present > 0,
                            (min(scores), max(scores)) if len(scores) else None))
        score = prediction.get("score")
        sources.append(("the first labelled prediction", prediction.get("label") is not None,
                        (float(score), float(score)) if is_finite_number(score) else None))
        for basis, labelled, scores in sources:
            task = infer_task(labelled, scores)
            if task is not None:
                return task, basis
        return "classification", "nothing (no prediction had a score or a label)"

    def _note_untracked(self, partition: int) -> None:
        """The warm-up ends: remember (and say once) which feature names it did not track."""
        count = len(self.warmup.untracked)
        self.untracked = {"columns": count, "examples": list(self.warmup.untracked_samples)}
        if count:
            more = " or more" if count >= MAX_UNTRACKED_COUNTED else ""
            log.warning("model %s (partition %d): %d%s feature names of the warm-up are not tracked (over "
                        "service.max_inferred_columns = %d: the first names to appear are), e.g. %s; list the "
                        "features to monitor under [models.%s.features]", self.config.model_id, partition, count,
                        more, self.limits.max_inferred_columns,
                        ", ".join(repr(n) for n in self.untracked["examples"]), self.config.model_id)

    def untracked_columns(self) -> int:
        return self.untracked["columns"] if self.reference is not None else len(self.warmup.untracked)

    def snapshot(self) -> dict[str, Any]:
        return {"events": self.events, "labels": self.labels,
                "settings": self.settings, "fingerprint": self.fingerprint,
                "reference": None if self.reference is None else self.reference.to_dict(),
                "warmup": None if self.reference is not None else self.warmup.snapshot(),
                **({} if self.segment_warmup is None or self.reference is not None else
                   {"segment_warmup": self.segment_warmup.snapshot()}),
                **({} if self.segments is None else {"segments": self.segments.snapshot()}),
                "untracked": {"columns": self.untracked["columns"], "examples": list(self.untracked["examples"])},
                "label_warmup": None if self.label_column is not None else self.label_warmup.snapshot(),
                "label_reference": None if self.label_column is None else self.label_column.reference.to_dict(),
                "label_column": None if self.label_column is None else self.label_column.snapshot(),
                "performance": None if self.performance is None else self.performance.snapshot(),
                "estimated": None if self.estimated is None else self.estimated.snapshot(),
                "columns": {f"{c.signal}:{c.name}": c.snapshot() for c in self.columns},
                **({} if self.multivariate is None else {"multivariate": self.multivariate.snapshot()}),
                **({} if self.fairness is None else {"fairness": self.fairness.snapshot()}),
                "incidents": self.incidents.snapshot(),
                **({} if self.retraining is None else {"retraining": self.retraining.snapshot()}),
                **({} if self.sketch is None else {"partials": self.sketch.snapshot()}),
                **({} if self.model_side is None else {"model_side": self.model_side.snapshot()})}

    def restore(self, state: Mapping[str, Any]) -> str | None:
        """Continue from a snapshot (of format 3 or 4). If the model's settings changed since it was
        taken, what no longer fits starts afresh; the returned text then says what changed and what
        restarted (``None``: restored as it was)."""
        self.events = state["events"]
        self.labels = state["labels"]
        self.reference, self.columns, self.label_column, self.multivariate = None, [], None, None
        self.model_side = None
        self.segments = None
        self.fairness = None
        self.share = self._share_before_reference()
        self.warmup = WarmupSummary(self.config.features, self.limits)
        self.segment_warmup = self._segment_warmup()
        self.label_warmup = LabelSummary(self.limits)
        saved = state.get("settings")
        changes = {} if saved is None else _changes(saved, self.settings)  # format 3: settings unknown
        untracked = state.get("untracked") or {"columns": 0, "examples": []}
        self.untracked = {"columns": untracked["columns"], "examples": list(untracked["examples"])}
        restarted: list[str] = []
        if "reference" in changes:
            if self.config.reference.source == "stored" and self.given_reference is not None:
                self.use_reference(self.given_reference)
                restarted.append("every detector (from the stored reference)")
            else:
                self.untracked = {"columns": 0, "examples": []}
                restarted.append("the warm-up (a new reference from the next "
                                 f"{self.config.reference.events} events)")
        else:
            self._restore_reference(state, frozenset(p for p in changes if p in _RESTARTED_NAMES))
            present = self._detector_kinds()
            restarted.extend(_RESTARTED_NAMES[p] for p in _RESTARTED_NAMES if p in changes and p in present)
            if "latency" in changes and self.config.detectors.latency.enabled:
                restarted.append("latency columns")
        if self.sketch is not None and state.get("partials") is not None and "reference" not in changes:
            self.sketch.restore(state["partials"])
            if self.model_side is not None:  # absent in states saved before the model-level joint test
                self.model_side.restore(state.get("model_side"))
            given = self.given_reference
            if self.config.reference.source == "stored" and given is not None and self.reference is not None \
                    and given.version > self.reference.version:
                # a newer version was stored while this state was not running: the model's merge judges against
                # the newest, so this partition switches now (its buckets so far close under the old tag)
                log.info("model %s: now compared with stored reference version %d (the state's was %d)",
                         self.config.model_id, given.version, self.reference.version)
                self.use_reference(given)
        saved_performance = state.get("performance")
        if "performance" in changes:
            restarted.append("performance")
            if self.segments is not None:  # the segments' performance starts afresh with the model's
                self.segments.performance = [None] * len(self.segments.performance)
        elif saved_performance is not None and self.config.performance.enabled:
            # an inferred task is part of the state (a state from before inference: the configured task)
            self.performance = PerformanceColumn(self.config, saved_performance.get("task"), self.share)
            self.performance.restore(saved_performance)
        self.estimated = None
        saved_estimate = state.get("estimated")  # absent in states saved before the estimate was kept
        config = self.config.detectors.estimated_performance
        if saved_estimate is not None and config.enabled:
            self.estimated = EstimatedPerformance(self.config.model_id, config, self._estimate_budget())
            if not self.estimated.restore(saved_estimate):
                log.info("model %s: estimated performance settings changed since the state was saved: its "
                         "calibration starts afresh", self.config.model_id)
                self.estimated = EstimatedPerformance(self.config.model_id, config, self._estimate_budget())
        saved_fairness = state.get("fairness")  # absent in states saved before fairness was monitored
        if "fairness" in changes and self.fairness is not None:
            restarted.append("fairness")
        elif self.fairness is not None and saved_fairness is not None and not self.fairness.restore(saved_fairness):
            self.fairness = Fairness(self.config.model_id, self.config.fairness, self.reference, self.share,
                                     self.config.detectors.hysteresis)
            restarted.append("fairness")
        self.incidents.restore(state.get("incidents"))  # absent in states saved before incidents were kept
        if self.retraining is not None:
            self.retraining.restore(state.get("retraining"))  # absent: saved before requests were asked for
        self._reconcile()
        if not changes:
            return None
        what = "; ".join(dict.fromkeys(c for part in changes.values() for c in part))
        return (f"model {self.config.model_id}: detector config changed since the state was saved ({what}): "
                f"{', '.join(restarted) or 'nothing'} restarted")

    def _detector_kinds(self) -> set[str]:
        """The parts (:data:`_RESTARTED_NAMES`) some column of this model runs."""
        columns = self.columns + [c for c in (self.label_column, self.multivariate) if c is not None]
        return {name for c in columns for name in c.parts()}

    def _restore_reference(self, state: Mapping[str, Any], restart: frozenset[str]) -> None:
        warmup = state["warmup"]
        if isinstance(warmup, list):  # format 3: the events themselves
            for t in warmup:
                self.warmup.add(InferenceEvent(*t))
        elif warmup is not None:
            self.warmup.restore(warmup)
            if self.segment_warmup is not None and state.get("segment_warmup") is not None:
                self.segment_warmup.restore(state["segment_warmup"])
        label_warmup = state["label_warmup"]
        if isinstance(label_warmup, list):
            for t in label_warmup:
                self.label_warmup.add(LabelEvent(*t).label)
        elif label_warmup is not None:
            self.label_warmup.restore(label_warmup)
        if state["reference"] is not None:
            self.use_reference(ReferenceProfile.from_dict(state["reference"]))
            for column in self.columns:
                saved = state["columns"].get(f"{column.signal}:{column.name}")
                if saved is not None:
                    column.restore(saved, restart)
            saved = state.get("multivariate")
            if self.multivariate is not None and saved is not None and "multivariate" not in restart:
                self.multivariate.restore(saved)
            if self.segments is not None and state.get("segments") is not None:  # absent: saved before segments
                self.segments.restore(state["segments"], restart)
        if state["label_reference"] is not None and not self.config.by_model:  # the merge decides label drift
            self._use_labels(column_from_dict(state["label_reference"]))
            self.label_column.restore(state["label_column"], restart)
        elif self.label_column is not None and state.get("label_column") is not None:  # merged: point detectors
            self.label_column.restore(state["label_column"], restart)

    def take_points(self) -> list[dict[str, Any]]:
        """The closed windows' points (:mod:`stream_monitor.history`) since the last call, column by column."""
        out: list[dict[str, Any]] = []
        extra = [c for c in (self.label_column, self.performance, self.multivariate, self.estimated, self.fairness)
                 if c is not None]
        for column in chain(self.columns, extra):
            if column.points:
                out.extend(column.points)
                column.points.clear()
        return out

    def summary(self) -> dict[str, Any]:
        columns = self.columns + [c for c in (self.label_column, self.multivariate) if c is not None]
        performance, performance_rows = self.performance.summary() if self.performance else (None, [])
        out = {"events": self.events, "labels": self.labels, "performance": performance,
               "reference": None if self.reference is None else
               {"source": self.reference.source, "version": self.reference.version,
                "events": self.reference.events},
               "warmup": len(self.warmup),
               "detectors": [row for c in columns for row in c.summary()] + performance_rows +
               ([] if self.estimated is None else self.estimated.rows()) +
               ([] if self.fairness is None or self.config.by_model else self.fairness.rows()),
               "estimated": None if self.estimated is None else self.estimated.info(),
               # decisions = "model": the model's fairness is its merge's (no partition's fragment)
               "fairness": None if self.fairness is None or self.config.by_model else self.fairness.info(),
               "incidents": self.incidents.summary()}
        if self.retraining is not None and self.retraining.recent:
            out["retraining"] = self.retraining.summary()
        if self.segments is not None:
            out["segments"] = self.segments.summary()
        out["unmonitored"] = [] if self.reference is None else unmonitored_columns(self.reference,
                                                                                    self.config.features)
        untracked = self.untracked_columns()
        if untracked:
            examples = self.untracked["examples"] if self.reference is not None else self.warmup.untracked_samples
            out["untracked_columns"] = untracked
            out["untracked_examples"] = list(examples)
        return out


def _in_event_order(tagged: list[tuple[int, int, int, Alert]]) -> list[Alert]:
    """Alerts tagged (position, column, order) → in the order one event at a time would raise them."""
    return [alert for *_, alert in sorted(tagged, key=lambda t: t[:3])]


def _feature_matrix(events: list[InferenceEvent], names: list[str]) -> np.ndarray | None:
    """The features as one float64 row per name, when every event has every one as a number (the
    common case, converted in bulk), or when every event has the same layout (NaN where a value is not a
    number: :func:`_values`); else ``None`` and each column reads its values itself."""
    if not names or not events:
        return None
    layout = events[0].layout
    if layout is not None and all(e.layout == layout for e in events):  # the producer's one key order
        where = {name: i for i, name in enumerate(layout)}
        picks = [where.get(name) for name in names]
        if None not in picks:
            stacked = np.frombuffer(b"".join([e.numbers for e in events]), dtype=np.float64)
            return np.ascontiguousarray(stacked.reshape(len(events), len(layout)).T[picks])
    getter = itemgetter(*names)
    try:
        rows = [getter(e.features) for e in events]
    except KeyError:
        return None
    if len(names) == 1:
        rows = [(row,) for row in rows]
    if not set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES:
        return None
    return np.ascontiguousarray(np.array(rows, dtype=np.float64).T)


DEAD_LETTER_SAMPLE_CHARS = 160


class PartitionMonitor:
    """Every model's monitors for one input partition, and the next offset to read."""

    def __init__(self, config: Config, partition: int, stored_references: Mapping[str, ReferenceProfile],
                 model_references: Mapping[str, ReferenceProfile] | None = None):
        self.config = config
        self.partition = partition
        self.stored_references = stored_references
        # decisions = "model" with a warm-up: each model's reference once its merge built it (the service
        # fills it in; a partition waits, its share summarised, until its model's is there)
        self.model_references = {} if model_references is None else model_references
        self.models: dict[str, ModelMonitor] = {}
        self.kept: dict[str, Any] = {}  # state of models this config does not know: written back as it is
        self.rebaselined: dict[str, str] = {}  # by the last restore: model → what changed and restarted
        self.next_offset: int | None = None
        self.dead_letters = 0
        self.max_time_ms: int | None = None  # the largest event time seen here (inference and label events)
        self.idle = False  # caught up and quiet: closed its open buckets (decisions = "model")
        self.stalled = False  # waiting for a model's reference too long: idle for the other models (stall())
        self._said: set[tuple[str, str]] = set()  # (model, what) logged once by this monitor
        self.dead_letter_reasons: dict[str, dict[str, Any]] = {}  # reason → {"count", "sample"} (latest error)

    def model(self, model_id: str) -> ModelMonitor:
        monitor = self.models.get(model_id)
        if monitor is None:
            model_config = self.config.models[model_id]
            reference = None
            if model_config.reference.source == "stored":
                reference = self.stored_references.get(model_id)
                if reference is None:
                    raise ReferenceProfileError(f"model {model_id!r} uses a stored reference and none is stored: "
                                                f"run `stream-monitor reference build --model {model_id}`")
            monitor = self.models[model_id] = ModelMonitor(model_config, reference, self.config.service,
                                                           self.model_references,
                                                           requests=bool(self.config.retraining.topic))
        return monitor

    @property
    def waiting(self) -> list[str]:
        """The models whose warm-up share this partition has summarised and whose reference is not built
        yet: until it is, the partition reads nothing more (:meth:`process_batch` takes no event)."""
        return [m for m, monitor in self.models.items() if monitor.share_left == 0]

    def adopt(self) -> bool:
        """Take every built model reference a waiting model needs; ``True`` if one was taken."""
        return any([monitor.adopt() for monitor in self.models.values() if monitor.share_left == 0])

    def _share_cut(self, items: Sequence[tuple[int, InferenceEvent | LabelEvent, JoinResult | None]]) -> int:
        """How many of ``items`` to process now: up to the event that ends a model's warm-up share while
        its reference is not built (the rest waits for it)."""
        cut = len(items)
        for model_id, model in self.config.models.items():
            if not model.by_model or model_id in self.model_references:
                continue
            monitor = self.models.get(model_id)
            if monitor is None:
                left = model.reference.events if model.reference.source != "stored" else None
            else:
                left = monitor.share_left
            if left is None:
                continue
            for position, (_, event, _) in enumerate(items[:cut]):
                if event.model_id == model_id and isinstance(event, InferenceEvent):
                    left -= 1
                    if left == 0:
                        cut = position + 1
                        break
        return cut

    def process(self, event: InferenceEvent | LabelEvent, offset: int, join: JoinResult | None = None) -> list[Alert]:
        """Process the event at ``offset`` (``join``: its side of the label join); the alerts, in order."""
        return self.process_batch([(offset, event, join)])

    def process_batch(self, items: Sequence[tuple[int, InferenceEvent | LabelEvent, JoinResult | None]]) -> list[Alert]:
        """Several events of this partition in offset order, as (offset, event, join); the same alerts in
        the same order as one :meth:`process` per event, however the stream is cut into batches.

        decisions = "model" with a warm-up: once a model's share is summarised, nothing more is processed
        until its reference is built (:attr:`waiting`); :attr:`next_offset` then points at the first event
        not processed."""
        self.adopt()
        if self.waiting:
            return []
        cut = self._share_cut(items)
        rest, items = items[cut:], items[:cut]
        by_model: dict[str, list] = {}
        for position, (offset, event, join) in enumerate(items):
            by_model.setdefault(event.model_id, []).append((position, offset, event, join))
        monitors = {model_id: self.model(model_id) for model_id in by_model}  # may refuse: before any change
        seen: list[int | None] = []  # per position: the largest event time before it (the watermark's base)
        latest = self.max_time_ms
        for _, event, _ in items:
            seen.append(latest)
            if event.timestamp_ms is not None:  # a label's time too: its bucket closes by the same watermark
                latest = event.timestamp_ms if latest is None else max(latest, event.timestamp_ms)
        tagged: list[tuple[int, int, int, Alert]] = []
        for model_id, model_items in by_model.items():
            tagged.extend(monitors[model_id].process_batch(model_items, self.partition, seen))
        self.max_time_ms = latest
        for offset, _, _ in items:
            self._advance(offset)
        if rest and self.waiting:
            self.next_offset = rest[0][0]  # read again from here once the model's reference is built
        self._close_buckets()
        return _in_event_order(tagged)

    # --- model-level decisions (docs/MODEL_DECISIONS.md) -----------------------------------

    def watermark(self, model: ModelConfig) -> int | None:
        """This partition's watermark for ``model``: its largest event time minus the lateness."""
        if self.max_time_ms is None:
            return None
        return self.max_time_ms - int(model.merge_lateness_seconds * 1000)

    def _close_buckets(self) -> None:
        for monitor in self.models.values():
            if monitor.sketch is not None:
                monitor.sketch.close(self.watermark(monitor.config))

    def go_idle(self) -> None:
        """Caught up and quiet: every open bucket closes, and the merge no longer waits for this partition."""
        self.idle = True
        for monitor in self.models.values():
            if monitor.sketch is not None:
                monitor.sketch.close(None, everything=True)

    def stall(self) -> None:
        """Waiting for a model's reference (reading nothing) for ``merge_idle_seconds``: idle for every
        other model, whose open buckets close, so that no model's merge waits for a partition that waits
        for another model's (two models keyed by model id, each warming up on its own partition, would
        otherwise wait for each other forever)."""
        self.stalled = True
        waiting = self.waiting
        for model_id, monitor in self.models.items():
            if model_id not in waiting and monitor.sketch is not None:
                monitor.sketch.close(None, everything=True)

    def merge_marks(self) -> dict[str, dict[str, Any]]:
        """Per model with decisions = "model": its closed partials not yet saved, the watermark and the
        idle flag, as the checkpoint stores them beside the state. A partition that waits for a model's
        reference is idle for the models it has never seen an event of (it holds back none of their
        windows), and, once stalled (:meth:`stall`), for every model but the ones it waits for."""
        out = {}
        waiting = self.waiting
        for model_id, model in self.config.models.items():
            if model.by_model:
                monitor = self.models.get(model_id)
                idle = self.idle or (bool(waiting) and model_id not in waiting
                                     and (monitor is None or self.stalled))
                pending = {} if monitor is None or monitor.sketch is None else dict(monitor.sketch.pending)
                watermark = self.watermark(model)
                floor = None if monitor is None or monitor.sketch is None else monitor.sketch.floor
                if floor is not None and watermark is not None:  # every bucket below the floor is closed
                    watermark = max(watermark, floor * monitor.sketch.bucket_ms)
                out[model_id] = {"watermark": watermark, "idle": idle, "partials": pending}
        return out

    def partials_saved(self, marks: Mapping[str, Mapping[str, Any]]) -> None:
        """The partials of :meth:`merge_marks` are stored: they leave the state."""
        for model_id, mark in marks.items():
            monitor = self.models.get(model_id)
            if monitor is not None and monitor.sketch is not None:
                for bucket in mark["partials"]:
                    monitor.sketch.pending.pop(bucket, None)

    def skip(self, offset: int, reason: str | None = None, error: str = "") -> None:
        """A message at ``offset`` was dead-lettered: count it (by ``reason``, keeping the latest
        ``error`` cut to :data:`DEAD_LETTER_SAMPLE_CHARS` as a sample) and move past it."""
        self._advance(offset)
        self.dead_letters += 1
        if reason is not None:
            held = self.dead_letter_reasons.setdefault(reason, {"count": 0, "sample": ""})
            held["count"] += 1
            held["sample"] = error[:DEAD_LETTER_SAMPLE_CHARS]

    def pass_over(self, offset: int) -> None:
        """A message at ``offset`` that gives no event by itself (half of a request/response pair, now
        waiting in Redis for its other half): move past it."""
        self._advance(offset)

    def _advance(self, offset: int) -> None:
        """Past ``offset`` (never back: a batch's dead letters are settled before its events)."""
        if self.next_offset is None or offset >= self.next_offset:
            self.next_offset = offset + 1
        self.idle = self.stalled = False

    def snapshot(self, pending: bool = True) -> dict[str, Any]:
        """The partition's state (``pending``: with the closed partials not yet stored; the checkpoint
        stores those beside the state, not in it)."""
        models = {m: monitor.snapshot() for m, monitor in self.models.items()}
        if not pending:
            for model in models.values():
                if "partials" in model:
                    model["partials"] = {**model["partials"], "pending": {}}
        models.update(self.kept)
        out = {"format": STATE_FORMAT, "partition": self.partition, "next_offset": self.next_offset,
               "dead_letters": self.dead_letters,
               "dead_letter_reasons": {r: dict(v) for r, v in sorted(self.dead_letter_reasons.items())},
               "models": dict(sorted(models.items()))}
        if any(m.by_model for m in self.config.models.values()):  # what the model-level buckets need
            out.update(max_time_ms=self.max_time_ms, idle=self.idle)
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a snapshot. A model whose settings changed is re-baselined where they no longer
        fit (:attr:`rebaselined`); the state of a model this config does not know is kept as it is."""
        if state.get("format") not in READABLE_FORMATS:
            raise StateError(f"stored state has format {state.get('format')!r}; this version reads formats "
                             f"{', '.join(map(str, READABLE_FORMATS))}. States of format 2 were written by an older "
                             "stream-monitor (detectors stored as river pickles) and cannot be continued: delete the "
                             "partition's state key to rebuild it from the retained log")
        self.next_offset = state["next_offset"]
        self.dead_letters = state["dead_letters"]
        self.max_time_ms = state.get("max_time_ms")
        self.idle = state.get("idle", False)
        self.stalled = False
        self.models, self.kept, self.rebaselined = {}, {}, {}
        self.dead_letter_reasons = {r: dict(v) for r, v in state.get("dead_letter_reasons", {}).items()}
        for model_id, model_state in state["models"].items():
            if model_id not in self.config.models:
                self.kept[model_id] = model_state
                self._once(model_id, "kept", "partition %d: the state of model %s (%d events) is kept as it is and "
                           "written back unchanged: this config does not know the model (its events are "
                           "dead-lettered as unknown_model)", self.partition, model_id, model_state.get("events", 0))
                continue
            change = self.model(model_id).restore(model_state)
            if change is not None:
                self.rebaselined[model_id] = change
                self._once(model_id, change, "partition %d: %s", self.partition, change)

    def take_requests(self) -> list[RetrainingRequest]:
        """Every model's retraining requests made since the last call, in the order made."""
        out: list[RetrainingRequest] = []
        for monitor in self.models.values():
            out.extend(monitor.requests)
            monitor.requests.clear()
        return out

    def take_points(self) -> list[dict[str, Any]]:
        """Every model's closed-window points since the last call (the service appends them to the history)."""
        return [point for monitor in self.models.values() for point in monitor.take_points()]

    def _once(self, model_id: str, what: str, message: str, *args: Any) -> None:
        if (model_id, what) not in self._said:
            self._said.add((model_id, what))
            log.warning(message, *args)

    def summary(self) -> dict[str, Any]:
        out = {"partition": self.partition, "next_offset": self.next_offset, "dead_letters": self.dead_letters,
               "dead_letter_reasons": {r: dict(v) for r, v in sorted(self.dead_letter_reasons.items())},
               "models": {m: monitor.summary() for m, monitor in sorted(self.models.items())}}
        if self.kept:
            out["unconfigured_models"] = sorted(self.kept)
        return out
