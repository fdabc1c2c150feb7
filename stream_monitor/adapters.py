"""One adapter per detector of a column: its thresholds, batch update, description, state and episode.

A column (:class:`stream_monitor.partition.ColumnMonitor`) holds its adapters
in one ordered list, built by :func:`column_adapters`; that order is the order
in which one value's alerts are raised: the data-quality checks, PSI, KS, ADWIN,
Page-Hinkley, the p95 ceiling. A model's performance detectors are adapters
too, built by :func:`performance_adapters` for its joined pairs (the error
stream's drift detector, then each metric's floor and ceiling), and walked by
the same code. Every threshold not set in the config comes from the
false-alarm budget (:mod:`stream_monitor.calibration`).

The protocol:

- ``name`` (the alert's ``detector``), ``part`` (its key under a column
  snapshot's ``"detectors"``; the data-quality checks share one window, part
  ``"quality"``), ``threshold`` and ``critical`` (``None`` for ADWIN, whose cut
  test decides internally), ``episode``; ``signal`` and ``subject``: the
  alert's signal and name when not the column's (a performance detector's
  subject is its metric: ``error_rate``, ``accuracy``…), and ``key``, its key
  among the column's episodes and statistics (``name``, or
  ``subject/name`` for a performance detector);
- ``every_value``: it steps on every value (data quality) rather than only on
  the usable ones (numbers whose quality is fine or only off the reference range;
  categories that are present, seen in the reference or not); ``point``: it
  detects at single values (ADWIN, Page-Hinkley) and its episode ticks on every
  usable value, else it is a level detector whose episode moves when a window
  closes;
- ``update(batch)``: the batch through the detector, one compiled call; the
  values that matter as (index into the batch's usable values — or into all
  values when ``every_value`` —, mark); a point detector's mark is the
  detection's severity, graded by the size of the change
  (:mod:`stream_monitor.severity`);
- ``judge(value)`` (a level detector): the episode's transition at a window's
  statistic — warning and critical levels with hysteresis, or a limit;
- ``describe(transition, mark_or_index)``: the alert's statistic, threshold,
  reference, current payload and message (the words are in :mod:`stream_monitor.alerts`);
  a point detector's resolution also gets the window statistics that found the column
  back within its reference;
- ``window``: a level detector of the column's distribution (PSI, KS) whose closed windows
  judge when a point detector's episode ends (:meth:`Episode.settled`);
- ``detector``: the object whose ``snapshot()`` / ``restore()`` is the part's state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import alerts, severity
from .calibration import adwin_delta, hotelling_threshold, ks_threshold, page_hinkley_threshold, psi_threshold, rate_threshold
from .config import ModelConfig, PageHinkleyConfig
from .detectors.drift import AdwinDetector, PageHinkleyDetector
from .detectors.episode import Episode, Transition
from .detectors.ks import KsWindow
from .detectors.multivariate import JointReference, JointWindow
from .detectors.percentile import WindowPercentile
from .detectors.psi import PsiWindow
from .detectors.quality import QualityWindow
from .detectors.transform import RankTransform
from .reference import ColumnReference, NumericReference

PARTS = ("psi", "ks", "adwin", "page_hinkley", "p95", "quality")  # a column snapshot's "detectors", in order


class Batch(NamedTuple):
    """One column's batch as the adapters read it."""

    values: Any  # the values (a float64 array when all are numbers)
    usable: np.ndarray  # indices of the values the distribution detectors see
    numbers: np.ndarray | None  # numeric column: the usable values as float64
    psi_bins: np.ndarray | None  # per usable value: its PSI bin
    ks_cells: np.ndarray | None  # numeric: its KS cell
    ranks: np.ndarray | None  # numeric: its reference rank (what ADWIN sees)
    scores: np.ndarray | None  # numeric: its rank's normal score (what Page-Hinkley sees)
    quality: list  # the data-quality windows closed in this batch: (value index, rates by check)


class Adapter:
    name: str
    part: str
    stage: str | None = None  # the stage the processing clock charges the update to (None: "episodes")
    every_value = False
    point = False
    window = False  # a distribution window that judges the end of the column's point episodes
    signal: str | None = None  # the alert's signal when not the column's
    subject: str | None = None  # the alert's name when not the column's
    baseline: float | None = None  # what the shown statistic is measured against, when no threshold line is
    detector: Any

    def __init__(self, column: Any, threshold: float | None, critical: float | None, episode: Episode):
        self.column = column  # label, model_id, reference
        self.threshold = threshold
        self.critical = critical
        self.episode = episode

    def update(self, batch: Batch) -> list[tuple[int, Any]]:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """Its key among the column's episodes and last statistics."""
        return self.name if self.subject is None else f"{self.subject}/{self.name}"

    def alert_threshold(self, severity: str) -> float:
        return self.critical if severity == "critical" else self.threshold

    def latest(self, last_statistic: dict[str, float]) -> float | None:
        """The statistic the status page shows."""
        return last_statistic.get(self.key)


class LevelAdapter(Adapter):
    """A window statistic; marks are (statistic, extra) when a window closes."""

    def judge(self, value: float) -> Transition | None:
        """The episode's transition at a new statistic: warning and critical levels, with hysteresis."""
        return self.episode.level(value, self.threshold, self.critical)

    def describe(self, transition: Transition, value: float, extra: Any) -> alerts.Description:
        raise NotImplementedError


class QualityCheck(LevelAdapter):
    """One data-quality check's share of a window, against the reference's own rate."""

    part = "quality"
    every_value = True
    signal = "data_quality"

    def __init__(self, column: Any, check: str, window: QualityWindow, threshold: float, episode: Episode):
        super().__init__(column, threshold, max(threshold, 0.5), episode)
        self.name = check
        self.detector = window

    def update(self, batch: Batch) -> list[tuple[int, Any]]:
        return [(position, (rates[self.name], None)) for position, rates in batch.quality]

    def describe(self, transition, value, extra):
        return alerts.quality_description(self.name, self.column.reference, self.column.label, transition, value,
                                          self.threshold, self.critical, self.detector.window)


class Psi(LevelAdapter):
    name = part = stage = "psi"
    window = True

    def __init__(self, column: Any, window: PsiWindow, threshold: float, critical: float, episode: Episode):
        super().__init__(column, threshold, critical, episode)
        self.detector = window

    def update(self, batch: Batch) -> list[tuple[int, Any]]:
        return [(j, (value, counts)) for j, value, counts in self.detector.add_many(batch.psi_bins)]

    def describe(self, transition, value, counts):
        return alerts.psi_description(self.column.reference, self.column.label, transition, value, self.threshold,
                                      self.critical, counts)


class Ks(LevelAdapter):
    name = part = stage = "ks"
    window = True

    def __init__(self, column: Any, window: KsWindow, threshold: float, episode: Episode):
        super().__init__(column, threshold, 2 * threshold, episode)
        self.detector = window

    def update(self, batch: Batch) -> list[tuple[int, Any]]:
        return [(j, (gap, None)) for j, gap in self.detector.add_many(batch.ks_cells)]

    def describe(self, transition, value, extra):
        return alerts.ks_description(self.column.reference, self.column.label, transition, value, self.threshold,
                                     self.critical, self.detector.window)


class P95Ceiling(LevelAdapter):
    name = "p95_ceiling"
    part = "p95"

    def __init__(self, column: Any, window: WindowPercentile, ceiling: float, episode: Episode):
        super().__init__(column, ceiling, ceiling, episode)
        self.detector = window

    def update(self, batch: Batch) -> list[tuple[int, Any]]:
        out = []
        for j, value in enumerate(batch.numbers.tolist()):
            p95 = self.detector.add(value)
            if p95 is not None:
                out.append((j, (p95, None)))
        return out

    def describe(self, transition, value, extra):
        return alerts.p95_description(self.column.model_id, transition, value, self.threshold,
                                      self.detector.window)


class Hotelling(LevelAdapter):
    """A model's joint test of its numeric features (:mod:`stream_monitor.detectors.multivariate`): T² per
    window of complete events; its batch is the events' rows (n × k, the joint reference's feature order)."""

    name = "hotelling"
    part = stage = "multivariate"
    signal = "multivariate"
    subject = "joint"

    def __init__(self, column: Any, window: JointWindow, threshold: float, episode: Episode):
        super().__init__(column, threshold, 2 * threshold, episode)
        self.detector = window

    def update(self, batch: np.ndarray) -> list[tuple[int, Any]]:
        return [(j, (value, top)) for j, value, top in self.detector.add_many(batch)]

    def describe(self, transition, value, top):
        joint = self.detector.joint
        return alerts.joint_description(joint.names, joint.events, joint.rank, self.column.label, transition,
                                        value, self.threshold, self.critical, top, self.detector.window)


def multivariate_adapters(column: Any, model: ModelConfig, joint: JointReference,
                          budget: float | None = None) -> list[Adapter]:
    """A model's joint test, its threshold from its share of the false-alarm budget (``budget``: one test's
    share, :func:`stream_monitor.calibration.split`; default: the whole budget) at its window's share."""
    det = model.detectors
    window = det.multivariate.window
    budget = det.false_alarms_per_million if budget is None else budget
    threshold = hotelling_threshold(budget, window, joint.events, joint.rank)
    return [Hotelling(column, JointWindow(joint, window), threshold,
                      Episode(det.resolve_after, det.cooldown, det.hysteresis))]


class PointAdapter(Adapter):
    """A detector that decides at single values; its per-value arrays of the current batch are kept for
    the descriptions."""

    point = True

    def __init__(self, column: Any, threshold: float | None, critical: float | None, episode: Episode):
        super().__init__(column, threshold, critical, episode)
        self.arrays: tuple = ()

    def describe(self, transition: Transition, at: int,
                 back: alerts.WindowVerdict = ()) -> tuple[float, alerts.Description]:
        """The statistic after the usable value ``at`` of the batch, and the description (``back``: for a
        resolution, the window statistics that found the column back within its reference)."""
        raise NotImplementedError


class Adwin(PointAdapter):
    name = part = stage = "adwin"
    baseline = 0.5  # its statistic is the window's mean reference rank: 0.5 for a column like its reference

    def __init__(self, column: Any, detector: AdwinDetector, episode: Episode):
        super().__init__(column, None, None, episode)
        self.detector = detector

    def update(self, batch: Batch) -> list[tuple[int, Any]]:
        detected, means, widths, levels = self.detector.update_levels(batch.ranks)
        self.arrays = (means, widths, levels)
        return [(j, adwin_severity(float(levels[j]))) for j in detected.nonzero()[0].tolist()]

    def alert_threshold(self, severity: str) -> float:
        return self.detector.delta  # ADWIN's confidence parameter: what its cut test is held to

    def latest(self, last_statistic):
        """The window's mean reference rank; None while its window is empty (no value since the reference)."""
        return self.detector.window_mean if self.detector.window_width else None

    def describe(self, transition, at, back=()):
        statistic = float(self.arrays[0][at])
        level = float(self.arrays[2][at])
        level = None if level != level else level  # NaN: no detection at this value (a resolution)
        return statistic, alerts.adwin_description(self.column.reference, self.column.label, transition, statistic,
                                                   int(self.arrays[1][at]), back, level)


class PageHinkley(PointAdapter):
    name = part = stage = "page_hinkley"

    def __init__(self, column: Any, detector: PageHinkleyDetector, episode: Episode):
        super().__init__(column, detector.threshold, detector.threshold, episode)
        self.detector = detector

    def update(self, batch: Batch) -> list[tuple[int, Any]]:
        detected, statistics, levels = self.detector.update_levels(batch.scores, batch.numbers)
        self.arrays = (statistics, levels)
        ref = self.column.reference
        return [(j, page_hinkley_severity(float(levels[j]), ref.mean, ref.std)) for j in detected.nonzero()[0].tolist()]

    def latest(self, last_statistic):
        return self.detector.statistic

    def describe(self, transition, at, back=()):
        statistic = float(self.arrays[0][at])
        level = float(self.arrays[1][at])
        level = None if level != level else level
        return statistic, alerts.page_hinkley_description(self.column.reference, self.column.label, transition,
                                                          statistic, self.threshold, back, level)


def adwin_severity(level_rank: float) -> str:
    """A column's ADWIN detection: graded by the shift its new sub-window's mean reference rank implies."""
    return severity.severity(severity.rank_shift(level_rank))


def page_hinkley_severity(level: float, mean: float, std: float) -> str:
    """A column's Page-Hinkley detection: graded by its mean since the change against the reference."""
    return severity.severity(severity.shift_in_sd(level, mean, std))


class Pairs(NamedTuple):
    """A model's joined pairs of one batch as the performance adapters read them (only the pairs
    that count: a predicted label or score, and for regression finite numbers)."""

    errors: np.ndarray  # per pair: its error (0/1 for classification, absolute for regression), float64
    metrics: list  # the rolling metrics where they were evaluated: (pair index, metrics by name)


class ErrorRate(PointAdapter):
    """Classification: ADWIN on each pair's 0/1 error; a change counts only when the error rate rose."""

    name = part = "adwin"
    subject = "error_rate"
    signal = "performance"

    def __init__(self, column: Any, detector: AdwinDetector, episode: Episode):
        super().__init__(column, None, None, episode)
        self.detector = detector

    def update(self, batch: Pairs) -> list[tuple[int, Any]]:
        before = self.detector.window_mean
        detected, means, widths, levels = self.detector.update_levels(batch.errors)
        previous = np.concatenate(([before], means[:-1]))  # per pair: the window's error rate before it
        self.arrays = (means, widths, previous, levels)
        self.column.last_statistic[self.key] = float(means[-1])
        return [(j, error_rate_severity(float(levels[j]), float(previous[j])))
                for j in (detected & (means > previous)).nonzero()[0].tolist()]

    def alert_threshold(self, severity: str) -> float:
        return self.detector.delta

    def describe(self, transition, at, back=()):
        """A firing's statistic is the error rate after the change (the new sub-window's), a resolution's
        the window's."""
        means, widths, previous, levels = self.arrays
        statistic = float(levels[at] if transition.status == "firing" else means[at])
        return statistic, alerts.error_rate_description(self.column.model_id, transition, statistic,
                                                        float(previous[at]), int(widths[at]),
                                                        self.episode.resolve_after)


class AbsoluteError(PointAdapter):
    """Regression: one-sided Page-Hinkley (up) on each pair's absolute error as a normal score against
    the first ``reference_pairs`` errors; until they are in, the errors are collected and nothing is
    detected (``detector`` is ``None``)."""

    name = part = "page_hinkley"
    subject = "absolute_error"
    signal = "performance"

    def __init__(self, column: Any, settings: PageHinkleyConfig, threshold: float, reference_pairs: int,
                 episode: Episode):
        super().__init__(column, threshold, threshold, episode)
        self.settings = settings
        self.reference_pairs = reference_pairs
        self.error_reference: list[float] = []
        self.transform: RankTransform | None = None
        self.detector: PageHinkleyDetector | None = None

    def start(self, grid: list[float], events: int) -> None:
        """The error reference is complete: its quantile ``grid`` (of ``events`` errors) and a fresh detector."""
        p = self.settings
        self.transform = RankTransform(grid, events)
        self.detector = PageHinkleyDetector(p.min_instances, p.delta, self.threshold, p.alpha, mode="up")

    def update(self, batch: Pairs) -> list[tuple[int, Any]]:
        errors = batch.errors.tolist()
        first = 0  # the first pair the detector sees
        while self.transform is None and first < len(errors):
            self.error_reference.append(errors[first])
            first += 1
            if len(self.error_reference) >= self.reference_pairs:
                grid = np.quantile(np.asarray(self.error_reference), np.linspace(0, 1, 1001)).tolist()
                self.start(grid, len(self.error_reference))
                self.error_reference = []
        statistics = np.full(len(errors), np.nan)
        self.arrays = (statistics,)
        if first == len(errors):
            return []
        scores = np.array([self.transform.normal_score(e) for e in errors[first:]], dtype=np.float64)
        detected, after, levels = self.detector.update_levels(scores, batch.errors[first:])
        statistics[first:] = after
        self.arrays = (statistics, np.concatenate((np.full(first, np.nan), levels)))
        self.column.last_statistic[self.key] = float(statistics[-1])
        mean, std = self.reference_level()
        return [(first + j, absolute_error_severity(float(levels[j]), mean, std))
                for j in detected.nonzero()[0].tolist()]

    def reference_level(self) -> tuple[float, float]:
        """The mean and standard deviation of the reference errors (from their quantiles; NaN before)."""
        if self.transform is None:
            return np.nan, np.nan
        grid = np.asarray(self.transform.grid)
        return float(grid.mean()), float(grid.std())

    def describe(self, transition, at, back=()):
        statistic = float(self.arrays[0][at])
        level = float(self.arrays[1][at])
        return statistic, alerts.absolute_error_description(
            self.column.model_id, transition, statistic, self.threshold, self.episode.resolve_after,
            self.reference_level(), None if level != level else level)


class MetricLimit(LevelAdapter):
    """A rolling metric's floor (``kind`` "floor": fires below it) or ceiling (above it), judged each
    time the rolling window evaluates its metrics; critical, and resolved as soon as it is back."""

    part = "metrics"
    signal = "performance"

    def __init__(self, column: Any, metric: str, kind: str, limit: float, metrics: Any, episode: Episode):
        super().__init__(column, limit, limit, episode)
        self.subject, self.name = metric, kind
        self.detector = metrics  # the rolling window (performance.RollingMetrics)

    def update(self, batch: Pairs) -> list[tuple[int, Any]]:
        return [(j, (values[self.subject], None)) for j, values in batch.metrics
                if values.get(self.subject) is not None]

    def judge(self, value: float) -> Transition | None:
        shortfall = (self.threshold - value) if self.name == "floor" else (value - self.threshold)
        return self.episode.limit(shortfall > 0)

    def describe(self, transition, value, extra):
        shown = getattr(self.column, "subject_label", self.column.model_id)  # a segment's: model[segment]
        return alerts.limit_description(shown, self.subject, self.name, transition, value,
                                        self.threshold, self.detector.window.maxlen)


def performance_adapters(column: Any, model: ModelConfig, metrics: Any, task: str,
                         budget: float | None = None) -> list[Adapter]:
    """A model's performance detectors over its joined pairs, in the order one pair's alerts are raised:
    the error stream's drift detector, then each floor (classification) or each ceiling (regression) in
    the config's order (``metrics``: the rolling window they read; ``task``: the configured or inferred
    one — an inferred task's config may carry both floors and ceilings, and only its own apply).
    ``budget``: the drift detector's share of the model's budget (default: the whole budget)."""
    det = model.detectors
    budget = det.false_alarms_per_million if budget is None else budget
    cfg = model.performance

    def episode() -> Episode:
        return Episode(det.resolve_after, det.cooldown, det.hysteresis)

    out: list[Adapter] = []
    if task == "classification":
        a = det.adwin
        out.append(ErrorRate(column, AdwinDetector(a.delta or adwin_delta(budget, a.clock), a.clock, a.max_buckets,
                                                   a.min_window_length, a.grace_period), episode()))
        out.extend(MetricLimit(column, metric, "floor", limit, metrics, episode())
                   for metric, limit in cfg.floors.items())
    else:
        p = det.page_hinkley
        out.append(AbsoluteError(column, p, p.threshold or page_hinkley_threshold(budget, p.delta),
                                 cfg.reference_pairs, episode()))
        out.extend(MetricLimit(column, metric, "ceiling", limit, metrics, episode())
                   for metric, limit in cfg.ceilings.items())
    return out


def error_rate_severity(level: float, before: float) -> str:
    """An error rate's rise: graded by its size (Cohen's h between the rate after the change and before)."""
    return severity.rate_severity(level, before)


def absolute_error_severity(level: float, mean: float, std: float) -> str:
    """A regression's mean absolute error since the change, against the reference errors."""
    return severity.severity(severity.shift_in_sd(level, mean, std))


def column_adapters(column: Any, model: ModelConfig, signal: str, reference: ColumnReference,
                    merged: bool = False, budget: float | None = None) -> list[Adapter]:
    """The detectors the config gives one column, in the order a value's alerts are raised.

    ``merged`` (decisions = "model"): only the point detectors; their firings go to the model's merge,
    whose episode ends by the model's windows, so here an episode only spaces the firings out (it
    resolves after ``resolve_after`` quiet values: there is no window here to judge by).
    ``budget``: each test's share of the model's budget (:func:`stream_monitor.calibration.split`; default: the
    whole budget, as for a column alone)."""
    det = model.detectors
    budget = det.false_alarms_per_million if budget is None else budget
    window = det.psi.window
    numeric = isinstance(reference, NumericReference)
    reference_events = max(reference.events, 1)

    def episode() -> Episode:
        return Episode(det.resolve_after, det.cooldown, det.hysteresis)

    def point_episode() -> Episode:  # ends when the column's windows find it back within its reference
        return Episode(det.resolve_after if merged else None, det.cooldown, det.hysteresis)

    out: list[Adapter] = []
    if det.data_quality.enabled:
        total = reference.events + reference.missing + (reference.mismatches if numeric else 0)
        base = {"missing": reference.missing}
        if numeric:
            base.update(type_mismatch=reference.mismatches, non_finite=0, out_of_range=2)
        else:
            base.update(unseen_category=reference.singletons)
        quality = QualityWindow(list(base), window)
        for check, hits in base.items():
            out.append(QualityCheck(column, check, quality, rate_threshold(budget, window, hits, max(total, 1)),
                                    episode()))

    bins_with_mass = sum(1 for p in reference.proportions if p > 0)
    psi_warning = max(det.psi.warning, psi_threshold(budget, window, reference_events, bins_with_mass))
    out.append(Psi(column, PsiWindow(reference.proportions, window, det.psi.epsilon), psi_warning,
                   max(det.psi.critical, psi_warning), episode()))
    if numeric:
        if det.ks.enabled:
            out.append(Ks(column, KsWindow(reference.ks_grid, reference.ks_cdf, window),
                          det.ks.threshold or ks_threshold(budget, window, reference_events), episode()))
        if det.adwin.enabled:
            a = det.adwin
            delta = a.delta or adwin_delta(budget, a.clock)
            out.append(Adwin(column, AdwinDetector(delta, a.clock, a.max_buckets, a.min_window_length,
                                                   a.grace_period), point_episode()))
        if det.page_hinkley.enabled:
            p = det.page_hinkley
            threshold = p.threshold or page_hinkley_threshold(budget, p.delta)
            out.append(PageHinkley(column, PageHinkleyDetector(p.min_instances, p.delta, threshold, p.alpha),
                                   point_episode()))
        ceiling = det.latency.p95_ceiling_ms
        if signal == "latency" and ceiling is not None:
            out.append(P95Ceiling(column, WindowPercentile(0.95, window), ceiling, episode()))
    return [a for a in out if a.point] if merged else out
