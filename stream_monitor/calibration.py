"""From a model's false-alarm budget to each detector's threshold.

The budget (``detectors.false_alarms_per_million``) is the *model's*: the
expected number of false alarms per 10^6 of the model's events on data drawn
like its reference, all its columns, detectors and partitions together.

**The split.** :func:`model_tests` counts the tests the model runs — per
numeric column its four data-quality rates, PSI, KS, ADWIN and Page-Hinkley;
per categorical column its two quality rates and PSI; the label column (three,
counted from the start so thresholds do not move when labels arrive); the
performance drift detector; the estimated performance where the model may be a
classifier with scores; the multivariate test where the reference has a joint
part; with segments, each window test that also runs per segment, once for all
segments; one per (protected attribute, fairness metric) — and :func:`split` gives each an equal share (0.1 over the 182 tests of
a 20-feature classifier with a score and latency: 5.5·10⁻⁴ each). Each test then turns its share into a threshold as a rate per
value it sees, which is what makes the sum over partitions the model's:

- a **point detector** (ADWIN, Page-Hinkley) runs once per partition and sees
  that partition's events, 1/P of the model's on balanced traffic: at a rate of
  ``share`` per 10^6 of the values it sees, the P detectors together raise
  ``share`` per 10^6 of the model's events, whatever P (and whatever the
  balance). With ``decisions = "model"`` their firings meet in one model-level
  episode, which can only lower that.
- a **window test** (PSI, KS, a quality rate) of ``n`` events is allowed
  ``p = share × n / 10⁶`` per window. With ``decisions = "model"`` there is one
  window per ``n`` of the model's events; per partition, each partition closes a
  window per ``n`` of its own events, so again ``10⁶ / n`` windows per 10^6 of the
  model's events in all: ``share`` per 10^6 either way, independent of P.

Summed over the tests: at most the budget per 10^6 of the model's events
(labels and joined pairs are at most one per event, so their tests spend less).

How each detector turns a share into a threshold:

- **ADWIN** bounds the chance of a false cut at each check by ``delta``; it
  checks every ``clock`` values, so ``delta = share × 10⁻⁶ × clock``.
- **Page-Hinkley** sees reference-normal scores (N(0, 1) on unchanged data,
  whatever the feature's distribution; less variable for discrete data), so one
  simulated table (``bench/calibrate_page_hinkley.py``, river's own update rule,
  ``alpha = 1``) maps (delta, rate) to a threshold, log-linear in the tail (a
  CUSUM's false-alarm rate falls exponentially with its threshold). A model's
  share lies below the table's rows: there the table's last row and rows from
  long runs (``--check``, :data:`PAGE_HINKLEY_TAIL`) set the threshold.
- The **joint test** (multivariate) is tested once per window too, against a non-central χ² that
  covers the reference's own error (:func:`hotelling_threshold`).
- **PSI**, **KS** and the **data-quality rates** are tested once per window of
  ``n`` events: the share allows ``p = share × n / 10⁶`` per window, and the
  threshold is the null distribution's upper ``p`` quantile, widened for a
  reference of only ``N`` events.

The threshold functions take the share of one test (the ``budget_per_million``
argument):

>>> split(0.1, model_tests(numeric=[True] * 22, performance=True, estimate=True, joint=True))  # 20 features
0.0005494505494505495
>>> round(adwin_delta(0.1, clock=32), 8)
3.2e-06
>>> round(psi_threshold(0.1, window=5000, reference_events=5000, bins=10), 4)
0.0119
>>> round(ks_threshold(0.1, window=5000, reference_events=5000), 4)
0.0407
>>> page_hinkley_threshold(0.1, delta=0.25)
30.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import stats

# (delta → [(threshold, false alarms per 10^6 values)]) from bench/calibrate_page_hinkley.py:
# 200 streams × 200,000 N(0, 1) values per point, alpha = 1, min_instances = 30, river's update rule.
PAGE_HINKLEY_TABLE: dict[float, list[tuple[float, float]]] = {
    0.125: [(30.0, 25.725), (40.0, 1.975), (50.0, 0.325), (60.0, 0.025), (70.0, 0.0)],
    0.25: [(15.0, 76.125), (20.0, 6.675), (25.0, 0.7), (30.0, 0.075), (35.0, 0.0)],
    0.5: [(8.0, 100.85), (10.0, 13.925), (12.0, 1.55), (14.0, 0.175), (16.0, 0.05)],
    1.0: [(4.0, 139.825), (5.0, 19.75), (6.0, 2.4), (7.0, 0.4), (8.0, 0.05)],
}


QUALITY_NUMERIC = 4  # missing, type_mismatch, non_finite, out_of_range
QUALITY_CATEGORICAL = 2  # missing, unseen_category


def column_tests(numeric: bool, detectors: Any = None) -> int:
    """The calibrated tests one column runs (``detectors``: the model's ``DetectorsConfig``; default: all on).

    >>> column_tests(True), column_tests(False)
    (8, 3)
    """
    def on(name: str) -> bool:
        return detectors is None or getattr(detectors, name).enabled

    tests = (QUALITY_NUMERIC if numeric else QUALITY_CATEGORICAL) if on("data_quality") else 0
    tests += 1  # PSI
    if numeric:
        tests += on("ks") + on("adwin") + on("page_hinkley")
    return tests


def window_tests(numeric: bool, detectors: Any = None) -> int:
    """The window tests of one column (its data-quality rates, PSI and KS): what a segment runs of it.

    >>> window_tests(True), window_tests(False)
    (6, 3)
    """
    on = (lambda name: True) if detectors is None else (lambda name: getattr(detectors, name).enabled)
    quality = (QUALITY_NUMERIC if numeric else QUALITY_CATEGORICAL) if on("data_quality") else 0
    return quality + 1 + (1 if numeric and on("ks") else 0)


def fairness_tests(fairness: Any) -> int:
    """The tests a model's ``[fairness]`` section (a ``FairnessConfig``) adds: one per (attribute, metric)."""
    return len(fairness.attributes) * len(set(fairness.metrics))


def model_tests(numeric: Iterable[bool], performance: bool, detectors: Any = None, estimate: bool = False,
                joint: bool = False, segmented: Iterable[bool] = (), fairness: int = 0,
                numeric_label: bool = False) -> int:
    """The calibrated tests of a model whose inference columns (features, prediction, latency) are numeric or
    not as ``numeric`` says: theirs, the label column's (categorical; numeric with ``numeric_label``: a
    regression's), with ``performance`` the error
    stream's drift detector, with ``estimate`` the estimated performance (one test: its four metrics share
    it), with ``joint`` the multivariate test and ``fairness`` tests of its groups' gaps. Fixed limits (metric floors, the p95 ceiling) are not
    tests of the budget.

    ``segmented``: the columns (numeric or not) whose window tests also run per segment. Each such test
    counts once for all the model's segments together: a segment's window of ``n`` of its events is
    allowed ``share × n / 10⁶`` like any window, and a segment that carries a fraction ``f`` of the
    traffic closes ``f × 10⁶ / n`` windows per 10^6 of the model's events, so the segments together
    spend ``share`` per 10^6, however many there are and however the traffic divides between them.

    >>> model_tests([True] * 22, performance=True, estimate=True, joint=True)  # 20 numeric features, score, latency
    182
    >>> model_tests([True] * 22, performance=True, estimate=True, joint=True, segmented=[True] * 22)  # and per segment
    314
    """
    return (sum(column_tests(n, detectors) for n in numeric) + column_tests(numeric_label, detectors)
            + (1 if performance else 0) + (1 if estimate else 0) + (1 if joint else 0) + fairness
            + sum(window_tests(n, detectors) for n in segmented))


def split(budget_per_million: float, tests: int) -> float:
    """One test's equal share of the model's budget."""
    return budget_per_million / max(1, tests)


# Rows below the table, from long runs (bench/calibrate_page_hinkley.py --check: streams of 200,000 N(0, 1)
# values, 4·10⁹ values per row), for the small shares of a model's budget; used only below the table.
PAGE_HINKLEY_TAIL: dict[float, list[tuple[float, float]]] = {
    0.25: [(35.0, 0.004), (38.0, 0.001)],
}


def adwin_delta(budget_per_million: float, clock: int = 32) -> float:
    return budget_per_million * 1e-6 * clock


def per_window(budget_per_million: float, window: int) -> float:
    """The false-alarm probability one window may have."""
    return min(0.5, budget_per_million * window / 1e6)


def psi_threshold(budget_per_million: float, window: int, reference_events: int, bins: int) -> float:
    """PSI ≈ χ²(bins − 1) · (1/n + 1/N) on unchanged data (the two-sample χ² of the bin counts)."""
    return float(stats.chi2.isf(per_window(budget_per_million, window), max(1, bins - 1))
                 * (1 / window + 1 / reference_events))


def ks_threshold(budget_per_million: float, window: int, reference_events: int) -> float:
    """The two-sample Kolmogorov-Smirnov critical value (asymptotic Kolmogorov distribution)."""
    scale = math.sqrt((window + reference_events) / (window * reference_events))
    return float(stats.kstwobign.isf(per_window(budget_per_million, window)) * scale)


def hotelling_threshold(budget_per_million: float, window: int, reference_events: int, terms: int) -> float:
    """The joint test's T² = |W(m − μ̂)|² / (1/n + 1/N) at the per-window budget.

    Over many references it is about χ²(terms); but every window of a model is compared with the same
    reference, whose own error in its term means μ̂ shifts them all alike. Given that error, T² is
    N/(n + N) · χ²'(terms, λ) (non-central) with λ = n/N · χ²(terms) drawn once; the threshold holds for a
    reference whose error is at its 99.9 % quantile.

    >>> round(hotelling_threshold(0.1, window=5000, reference_events=5000, terms=65), 1)
    128.7
    """
    reference_error = window / reference_events * float(stats.chi2.isf(1e-3, terms))
    return float(reference_events / (window + reference_events)
                 * stats.ncx2.isf(per_window(budget_per_million, window), terms, reference_error))


def rate_threshold(budget_per_million: float, window: int, reference_hits: float, reference_events: int) -> float:
    """Largest share of a window that is still consistent with the reference rate.

    The reference rate is taken at its 99.9 % upper confidence bound (so a rate
    of 0 in 5,000 reference events still allows a little), then the binomial
    upper quantile of a window at the per-window budget.

    >>> round(rate_threshold(0.1, 5000, 0, 5000), 4)
    0.0036
    """
    upper = float(stats.beta.ppf(0.999, reference_hits + 1, max(1.0, reference_events - reference_hits)))
    count = float(stats.binom.isf(per_window(budget_per_million, window), window, min(upper, 1.0)))
    return (count + 1) / window


def page_hinkley_threshold(budget_per_million: float, delta: float) -> float:
    """The threshold whose simulated false-alarm rate is the budget (log-linear in threshold)."""
    deltas = sorted(PAGE_HINKLEY_TABLE)
    if not deltas:
        raise RuntimeError("Page-Hinkley calibration table is empty")
    nearest = min(deltas, key=lambda d: abs(math.log(d / delta)))
    target = math.log10(budget_per_million)
    points = [(h, math.log10(rate)) for h, rate in PAGE_HINKLEY_TABLE[nearest] if rate > 0]
    tail = [(h, math.log10(rate)) for h, rate in PAGE_HINKLEY_TAIL.get(nearest, []) if rate > 0]
    if tail and target < points[-1][1]:  # below the table: its last row and the long runs' rows
        points = [points[-1], *tail]
    local = points[-3:]  # the last three rows: the tail decays exponentially, a line in log-rate follows it
    slope, intercept = np.polyfit([h for h, _ in local], [r for _, r in local], 1)
    threshold = (target - intercept) / slope
    # scale with delta for deltas between table rows: h·delta is roughly constant for a CUSUM
    return float(math.ceil(threshold * nearest / delta))


def page_hinkley_alarms(values: Any, delta: float, threshold: float, min_instances: int = 30,
                        alpha: float = 1.0, streams: int | None = None) -> np.ndarray:
    """Alarms per column of ``values`` (time × streams), with river's PageHinkley update rule.

    Vectorised across streams for calibration; equal to river's decisions
    (tests/unit/test_calibration.py checks it). ``values`` may also be any iterable of rows
    (then ``streams`` says how many), for runs too long to hold in memory.
    """
    streams = values.shape[1] if streams is None else streams
    n = np.zeros(streams)
    mean = np.zeros(streams)
    up = np.zeros(streams)
    down = np.zeros(streams)
    lowest = np.full(streams, np.inf)
    highest = np.full(streams, -1.0)  # river starts _max_decrease at -1
    alarms = np.zeros(streams, dtype=np.int64)
    fired = np.zeros(streams, dtype=bool)
    for row in values:
        if fired.any():  # river resets at the update after a detection
            for array, start in ((n, 0.0), (mean, 0.0), (up, 0.0), (down, 0.0), (lowest, np.inf), (highest, -1.0)):
                array[fired] = start
        n += 1
        mean += (1.0 / n) * (row - mean)  # river's exact arithmetic
        deviation = row - mean
        up = alpha * up + deviation - delta
        down = alpha * down + deviation + delta
        np.minimum(lowest, up, out=lowest)
        np.maximum(highest, down, out=highest)
        fired = (n >= min_instances) & (((up - lowest) > threshold) | ((highest - down) > threshold))
        alarms += fired
    return alarms
