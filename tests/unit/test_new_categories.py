"""A category the reference never had is drift: it counts in the column's ``__other__`` bin of PSI
(and in the window's counts), and in the ``unseen_category`` data-quality rate as well (pure, no I/O)."""

from __future__ import annotations

import math

import numpy as np

from stream_monitor.config import parse_config
from stream_monitor.detectors.psi import psi
from stream_monitor.partition import ColumnMonitor
from stream_monitor.reference import OTHER, CategoricalReference

COUNTRIES = ["DE", "FR", "US", "GB", "IT"]
MIX = [0.4, 0.25, 0.15, 0.12, 0.08]
CHANGE_AT = 20_000  # a PSI window (5,000 values by default) closes at 24,999: the first after the change


def model():
    return parse_config({"models": {"m": {}}}).models["m"]


def countries(rng: np.random.Generator, n: int, new_share: float = 0.0) -> list[str]:
    old = rng.choice(COUNTRIES, p=MIX, size=n).tolist()
    return [("BR" if rng.random() < new_share else c) for c in old]


def feed(col: ColumnMonitor, values: list, batch: int = 1000) -> list:
    out = []
    for first in range(0, len(values), batch):
        chunk = values[first:first + batch]
        out.extend(a for _, _, a in col.update_batch(chunk, range(first, first + len(chunk)), 0, [None] * len(chunk)))
    return out


def test_a_new_country_with_40_percent_of_the_traffic_fires_psi_in_the_first_window_after_it():
    rng = np.random.default_rng(3)
    ref = CategoricalReference.build(countries(rng, 5_000))
    assert ref.categories == COUNTRIES and ref.proportions[-1] == 0.0  # no __other__ mass in the reference
    col = ColumnMonitor(model(), "feature", "country", ref)
    alerts = feed(col, countries(rng, CHANGE_AT) + countries(rng, 20_000, new_share=0.4))
    firing = [(a.offset, a.signal, a.detector, a.severity) for a in alerts if a.status == "firing"]
    assert firing == [(24_999, "data_quality", "unseen_category", "warning"),
                      (24_999, "feature", "psi", "critical")]
    drift = next(a for a in alerts if a.detector == "psi")
    assert drift.statistic > 3  # (over the old categories alone the window's PSI was ~0: no alert at all)
    assert round(drift.statistic, 4) == 3.6144
    # the window's counts hold the new country in __other__, and all 5,000 values of the window count
    assert drift.reference["categories"][-1] == OTHER
    assert drift.current["events"] == 5_000
    assert round(drift.current["proportions"][-1], 4) == 0.4088
    # the data-quality rate is still there, measured on the same window
    unseen = next(a for a in alerts if a.detector == "unseen_category")
    assert unseen.statistic == drift.current["proportions"][-1]


def test_the_same_alerts_one_value_at_a_time():
    rng = np.random.default_rng(3)
    ref = CategoricalReference.build(countries(rng, 5_000))
    values = countries(rng, 6_000) + countries(rng, 4_000, new_share=0.4)
    batched = feed(ColumnMonitor(model(), "feature", "country", ref), values, batch=1000)
    single = feed(ColumnMonitor(model(), "feature", "country", ref), values, batch=1)
    assert [a.alert_id for a in batched] == [a.alert_id for a in single]
    assert [a.statistic for a in batched] == [a.statistic for a in single]


def test_a_reference_without_other_mass_still_gives_a_finite_psi():
    """The reference's empty __other__ share is smoothed like any empty bin (``detectors.psi.epsilon``)."""
    value = psi([0.5, 0.5, 0.0], [0.0, 0.0, 1.0])
    assert math.isfinite(value) and round(value, 3) == 17.725


def test_stationary_traffic_with_rare_unseen_categories_raises_no_psi():
    """A long tail of categories the reference never saw, at the rate its singletons predict, is no drift."""
    rng = np.random.default_rng(5)
    tail = [f"c{i}" for i in range(400)]

    def draw(n: int) -> list[str]:
        head = rng.choice(COUNTRIES, p=MIX, size=n).tolist()
        return [str(rng.choice(tail)) if rng.random() < 0.02 else c for c in head]

    ref = CategoricalReference.build(draw(5_000))
    col = ColumnMonitor(model(), "feature", "country", ref)
    assert [a for a in feed(col, draw(50_000)) if a.detector == "psi"] == []
    assert col.last_statistic["psi"] < col.detectors["psi"].threshold
