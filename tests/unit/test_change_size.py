"""Alerts that tell the truth about size: ADWIN and Page-Hinkley report the level *after* the change
(ADWIN: the new sub-window's mean; Page-Hinkley: the mean since the change began) and grade severity by
the size of the change against the reference, while their firing positions stay river's (pure, seeded)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from stream_monitor.config import parse_config
from stream_monitor.detectors.drift import AdwinDetector, PageHinkleyDetector
from stream_monitor.partition import ColumnMonitor, PerformanceColumn
from stream_monitor.reference import NumericReference
from stream_monitor.severity import CRITICAL_SHIFT

CHANGE_AT = 20_000


def model(**performance):
    table = {"decisions": "partition", **({"performance": performance} if performance else {})}
    return parse_config({"models": {"m": table}}).models["m"]


def reference() -> NumericReference:
    return NumericReference.build(np.random.default_rng(0).normal(0.0, 1.0, 5_000).tolist())


def firings(shift: float, seed: int, length: int = 20_200) -> dict[str, object]:
    """The first ADWIN and Page-Hinkley firing of a normal column whose mean moves by ``shift`` sd."""
    values = np.random.default_rng(seed).normal(0.0, 1.0, length)
    values[CHANGE_AT:] += shift
    col = ColumnMonitor(model(), "feature", "x", reference())
    out: dict[str, object] = {}
    for first in range(0, length, 1000):
        chunk = values[first:first + 1000].tolist()
        for _, _, alert in col.update_batch(chunk, range(first, first + len(chunk)), 0, [None] * len(chunk)):
            if alert.status == "firing" and alert.detector in ("adwin", "page_hinkley"):
                out.setdefault(alert.detector, alert)
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sign", [1, -1])
def test_a_30_sd_shift_is_critical_and_page_hinkley_reports_its_level(seed, sign):
    found = firings(30.0 * sign, seed)
    ph, adwin = found["page_hinkley"], found["adwin"]
    assert ph.severity == adwin.severity == "critical"
    # the mean since the change began, in the column's units: within 10 % of the true 30
    assert ph.current["level"] == pytest.approx(30.0 * sign, rel=0.10)
    assert ph.current["shift_sd"] >= CRITICAL_SHIFT
    assert f"its mean since the change began is {ph.current['level']:.4g}" in ph.message
    # ADWIN sees reference ranks: its new sub-window sits at the top (bottom) of the reference
    assert adwin.current["level_rank"] == pytest.approx(1.0 if sign > 0 else 0.0, abs=0.10)
    assert adwin.statistic < 0.75 if sign > 0 else adwin.statistic > 0.25, "the whole window is mostly old data"
    assert "beyond the reference's " + ("maximum" if sign > 0 else "minimum") in adwin.message


def test_the_firing_positions_and_levels_are_pinned():
    found = firings(30.0, 11)
    ph, adwin = found["page_hinkley"], found["adwin"]
    assert (ph.offset, adwin.offset) == (20008, 20063)
    assert round(ph.current["level"], 2) == 29.98
    assert round(adwin.current["level_rank"], 4) == 0.9999 and round(adwin.statistic, 4) == 0.6384


@pytest.mark.parametrize("seed", range(3))
def test_a_small_shift_stays_warning_and_reports_a_level_near_its_size(seed):
    found = firings(0.5, seed, length=24_000)
    ph, adwin = found["page_hinkley"], found["adwin"]
    assert ph.severity == adwin.severity == "warning"
    assert 0.2 < ph.current["level"] < 0.8 and ph.current["shift_sd"] < CRITICAL_SHIFT
    assert 0.5 < adwin.current["level_rank"] < 0.7 and adwin.current["shift_sd"] < CRITICAL_SHIFT


def errors(p_before: float, p_after: float, seed: int, at: int = 40_000, length: int = 60_000):
    rng = random.Random(seed)
    for i in range(length):
        yield int(rng.random() < (p_before if i < at else p_after))


def joined(column: PerformanceColumn, pairs: list, batch: int = 1000) -> list:
    """Joined (prediction record, label, label time) pairs through a model's performance detectors, the
    pair at index i counted by offset i."""
    out = []
    for first in range(0, len(pairs), batch):
        chunk = pairs[first:first + batch]
        out += [a for _, _, a in column.update_batch(chunk, range(first, first + len(chunk)), 0, [None] * len(chunk))]
    return out


def performance_alerts(p_before: float, p_after: float, seed: int = 4, batch: int = 1000) -> list:
    pairs = [({"label": 0 if wrong else 1, "score": None, "t": None}, 1, None)
             for wrong in errors(p_before, p_after, seed)]
    return joined(PerformanceColumn(model(task="classification")), pairs, batch)


def test_a_concept_drift_to_20_percent_errors_says_so_and_is_critical():
    """Agrawal-like: the error rate goes from 0.1 % to 20 %. The alert used to say "rose to 0.00521" (the
    whole window's rate, mostly before the change); it now reports the new sub-window's rate."""
    firing = [a for a in performance_alerts(0.001, 0.2) if a.status == "firing"]
    assert [(a.offset, a.name, a.detector, a.severity) for a in firing] == [(40063, "error_rate", "adwin", "critical")]
    alert = firing[0]
    assert alert.statistic == alert.current["error_rate"] == pytest.approx(0.2656, abs=1e-4)
    assert alert.reference["error_rate"] < 0.005
    assert "rose to 0.266 since the change (was 0.0017" in alert.message


def test_the_error_rate_s_level_does_not_depend_on_the_batches():
    one = [(a.alert_id, a.statistic, a.severity, a.message) for a in performance_alerts(0.001, 0.2, batch=1)]
    assert one == [(a.alert_id, a.statistic, a.severity, a.message) for a in performance_alerts(0.001, 0.2)]


def test_a_small_rise_of_the_error_rate_stays_warning():
    firing = [a for a in performance_alerts(0.1, 0.15) if a.status == "firing"]
    assert [(a.offset, a.severity) for a in firing] == [(40799, "warning")]
    assert 0.12 < firing[0].current["error_rate"] < 0.2


def test_a_regression_whose_errors_quadruple_reports_the_new_mean_absolute_error():
    rng = random.Random(5)
    pairs = [({"score": rng.gauss(0.0, 1.0 if i < 10_000 else 4.0), "label": None, "t": None}, 0.0, None)
             for i in range(20_000)]
    out = joined(PerformanceColumn(model(task="regression")), pairs)
    firing = [a for a in out if a.status == "firing"]
    assert [(a.offset, a.detector, a.severity) for a in firing] == [(10014, "page_hinkley", "critical")]
    # |N(0, 4)| has mean 4·√(2/π) = 3.19
    assert firing[0].current["absolute_error"] == pytest.approx(3.19, rel=0.10)
    assert firing[0].reference["mean"] == pytest.approx(0.80, rel=0.05)


def test_levels_do_not_change_decisions_and_are_nan_without_a_detection():
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(0, 1, 3000), rng.normal(3, 1, 3000)])
    plain, levelled = PageHinkleyDetector(delta=0.25, threshold=30.0), PageHinkleyDetector(delta=0.25, threshold=30.0)
    detected, statistics = plain.update_many(values)
    detected2, statistics2, levels = levelled.update_levels(values, values * 10.0)
    assert (detected == detected2).all() and (statistics == statistics2).all()
    assert np.isnan(levels[~detected]).all() and np.isfinite(levels[detected]).all()
    a, b = AdwinDetector(), AdwinDetector()
    d1, m1, w1 = a.update_many(values)
    d2, m2, w2, adwin_levels = b.update_levels(values)
    assert (d1 == d2).all() and (m1 == m2).all() and (w1 == w2).all()
    assert np.isnan(adwin_levels[~d2]).all() and np.isfinite(adwin_levels[d2]).all()


def test_a_page_hinkley_state_of_river_s_seven_slots_still_restores():
    """A state saved before levels were tracked: the decisions continue exactly, the level counts from
    the restore on."""
    rng = np.random.default_rng(3)
    before, after = rng.normal(0, 1, 500), np.concatenate([rng.normal(0, 1, 200), rng.normal(4, 1, 200)])
    ph = PageHinkleyDetector(delta=0.25, threshold=30.0)
    ph.update_many(before)
    old = {"kind": "page_hinkley/1", "state": ph._state[:7].tobytes()}
    restored = PageHinkleyDetector(delta=0.25, threshold=30.0)
    restored.restore(old)
    expected = ph.update_levels(after, after)
    got = restored.update_levels(after, after)
    assert (expected[0] == got[0]).all() and (expected[1] == got[1]).all()
    fired = got[0].nonzero()[0]
    assert len(fired) and got[2][fired[0]] == pytest.approx(4.0, rel=0.25)
