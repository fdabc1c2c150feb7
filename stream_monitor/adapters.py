"""One adapter per detector of a column: its thresholds, batch update, description, state and episode.

A column (:class:`stream_monitor.partition.ColumnMonitor`) holds its adapters
in one ordered list, built by :func:`column_adapters`; that order is the order
in which one value's alerts are raised: the data-quality checks, PSI, KS, ADWIN,
Page-Hinkley, the p95 ceiling. Every threshold not set in the config comes from
the false-alarm budget (:mod:`stream_monitor.calibration`).

The protocol:

- ``name`` (the alert's ``detector``), ``part`` (its key under a column
  snapshot's ``"detectors"``; the data-quality checks share one window, part
  ``"quality"``), ``threshold`` and ``critical`` (``None`` for ADWIN, whose cut
  test decides internally), ``episode``;
- ``every_value``: it steps on every value (data quality) rather than only on
  the usable ones (numbers whose quality is fine or only off the reference range;
  categories that are present, seen in the reference or not); ``point``: it detects at single values (ADWIN, Page-Hinkley)
  and its episode ticks on every usable value, else it is a level detector
  whose episode moves when a window closes;
- ``update(batch)``: the batch through the detector, one compiled call; the
  values that matter as (index into the batch's usable values — or into all
  values when ``every_value`` —, mark); a point detector's mark is the
  detection's severity, graded by the size of the change
  (:mod:`stream_monitor.severity`);
- ``describe(transition, mark_or_index)``: the alert's statistic, threshold,
  reference, current payload and message (the words are in :mod:`stream_monitor.alerts`);
- ``detector``: the object whose ``snapshot()`` / ``restore()`` is the part's state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import alerts, severity
from .calibration import adwin_delta, ks_threshold, page_hinkley_threshold, psi_threshold, rate_threshold
from .config import ModelConfig
from .detectors.drift import AdwinDetector, PageHinkleyDetector
from .detectors.episode import Episode, Transition
from .detectors.ks import KsWindow
from .detectors.percentile import WindowPercentile
from .detectors.psi import PsiWindow
from .detectors.quality import QualityWindow
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
    signal: str | None = None  # the alert's signal when not the column's
    detector: Any

    def __init__(self, column: Any, threshold: float | None, critical: float | None, episode: Episode):
        self.column = column  # label, model_id, reference
        self.threshold = threshold
        self.critical = critical
        self.episode = episode

    def update(self, batch: Batch) -> list[tuple[int, Any]]:
        raise NotImplementedError

    def alert_threshold(self, severity: str) -> float:
        return self.critical if severity == "critical" else self.threshold

    def latest(self, last_statistic: dict[str, float]) -> float | None:
        """The statistic the status page shows."""
        return last_statistic.get(self.name)


class LevelAdapter(Adapter):
    """A window statistic; marks are (statistic, extra) when a window closes."""

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


class PointAdapter(Adapter):
    """A detector that decides at single values; its per-value arrays of the current batch are kept for
    the descriptions."""

    point = True

    def __init__(self, column: Any, threshold: float | None, critical: float | None, episode: Episode):
        super().__init__(column, threshold, critical, episode)
        self.arrays: tuple = ()

    def describe(self, transition: Transition, at: int) -> tuple[float, alerts.Description]:
        """The statistic after the usable value ``at`` of the batch, and the description."""
        raise NotImplementedError


class Adwin(PointAdapter):
    name = part = stage = "adwin"

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
        return self.detector.window_mean

    def describe(self, transition, at):
        statistic = float(self.arrays[0][at])
        level = float(self.arrays[2][at])
        level = None if level != level else level  # NaN: no detection at this value (a resolution)
        return statistic, alerts.adwin_description(self.column.reference, self.column.label, transition, statistic,
                                                   int(self.arrays[1][at]), self.episode.resolve_after, level)


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

    def describe(self, transition, at):
        statistic = float(self.arrays[0][at])
        level = float(self.arrays[1][at])
        level = None if level != level else level
        return statistic, alerts.page_hinkley_description(self.column.reference, self.column.label, transition,
                                                          statistic, self.threshold, self.episode.resolve_after,
                                                          level)


def adwin_severity(level_rank: float) -> str:
    """A column's ADWIN detection: graded by the shift its new sub-window's mean reference rank implies."""
    return severity.severity(severity.rank_shift(level_rank))


def page_hinkley_severity(level: float, mean: float, std: float) -> str:
    """A column's Page-Hinkley detection: graded by its mean since the change against the reference."""
    return severity.severity(severity.shift_in_sd(level, mean, std))


def column_adapters(column: Any, model: ModelConfig, signal: str, reference: ColumnReference) -> list[Adapter]:
    """The detectors the config gives one column, in the order a value's alerts are raised."""
    det = model.detectors
    budget = det.false_alarms_per_million
    window = det.psi.window
    numeric = isinstance(reference, NumericReference)
    reference_events = max(reference.events, 1)

    def episode() -> Episode:
        return Episode(det.resolve_after, det.cooldown, det.hysteresis)

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
    if not numeric:
        return out
    if det.ks.enabled:
        out.append(Ks(column, KsWindow(reference.ks_grid, reference.ks_cdf, window),
                      det.ks.threshold or ks_threshold(budget, window, reference_events), episode()))
    if det.adwin.enabled:
        a = det.adwin
        delta = a.delta or adwin_delta(budget, a.clock)
        out.append(Adwin(column, AdwinDetector(delta, a.clock, a.max_buckets, a.min_window_length, a.grace_period),
                         episode()))
    if det.page_hinkley.enabled:
        p = det.page_hinkley
        threshold = p.threshold or page_hinkley_threshold(budget, p.delta)
        out.append(PageHinkley(column, PageHinkleyDetector(p.min_instances, p.delta, threshold, p.alpha), episode()))
    ceiling = det.latency.p95_ceiling_ms
    if signal == "latency" and ceiling is not None:
        out.append(P95Ceiling(column, WindowPercentile(0.95, window), ceiling, episode()))
    return out
