"""The adapter list of a column: one entry per detector, in the order one value's alerts are raised,
and the column snapshot built from it keeps the stored layout (pure, no I/O)."""

from __future__ import annotations

import numpy as np

from stream_monitor.adapters import PARTS
from stream_monitor.config import parse_config
from stream_monitor.partition import ColumnMonitor
from stream_monitor.reference import CategoricalReference, NumericReference


def model(**detectors):
    return parse_config({"models": {"m": {"detectors": detectors}}}).models["m"]


def numeric() -> NumericReference:
    return NumericReference.build(np.random.default_rng(0).lognormal(2.3, 0.3, 5_000).round(2).tolist())


def categorical() -> CategoricalReference:
    return CategoricalReference.build(np.random.default_rng(0).choice(list("abcde"), size=5_000).tolist())


def test_a_latency_column_runs_every_numeric_detector_in_alert_order():
    col = ColumnMonitor(model(latency={"p95_ceiling_ms": 50.0}), "latency", "latency_ms", numeric())
    assert [a.name for a in col.adapters] == ["missing", "type_mismatch", "non_finite", "out_of_range", "psi", "ks",
                                              "adwin", "page_hinkley", "p95_ceiling"]
    assert [a.part for a in col.adapters] == ["quality"] * 4 + ["psi", "ks", "adwin", "page_hinkley", "p95"]
    assert [a.name for a in col.adapters if a.point] == ["adwin", "page_hinkley"]
    assert [a.name for a in col.adapters if a.every_value] == ["missing", "type_mismatch", "non_finite",
                                                               "out_of_range"]
    # the four checks share one window, and that window is the snapshot's "quality" part
    assert len({id(a.detector) for a in col.adapters if a.part == "quality"}) == 1
    assert col.quality is col.adapters[0].detector
    assert list(col.snapshot()["detectors"]) == list(PARTS)
    assert list(col.snapshot()["episodes"]) == [a.name for a in col.adapters]


def test_a_categorical_column_and_disabled_detectors():
    col = ColumnMonitor(model(), "feature", "color", categorical())
    assert [a.name for a in col.adapters] == ["missing", "unseen_category", "psi"]
    state = col.snapshot()
    assert [k for k, v in state["detectors"].items() if v is not None] == ["psi", "quality"]
    assert list(state["detectors"]) == list(PARTS)
    quiet = ColumnMonitor(model(data_quality={"enabled": False}, ks={"enabled": False}, adwin={"enabled": False}),
                          "feature", "x", numeric())
    assert [a.name for a in quiet.adapters] == ["psi", "page_hinkley"]
    assert (quiet.ks, quiet.adwin, quiet.quality, quiet.p95) == (None, None, None, None)
    assert quiet.snapshot()["detectors"]["quality"] is None


def test_one_value_that_fires_several_detectors_raises_them_in_list_order():
    """100 usual values, 100 missing ones, 100 far above the reference: at value 299 the data-quality
    window and the PSI and KS windows (all 100 long) close together, and that value's four alerts come
    in list order (the tuple's second field is the adapter's position)."""
    col = ColumnMonitor(model(psi={"window": 100}), "feature", "x", numeric())
    values: list = np.random.default_rng(1).lognormal(2.3, 0.3, 100).tolist() + [None] * 100
    values += np.random.default_rng(2).lognormal(4.0, 0.3, 100).tolist()
    got = [(index, order, a.detector, a.status) for index, order, a in col.update_batch(values, range(300), 0,
                                                                                       [None] * 300)]
    assert got == [(199, 0, "missing", "firing"), (208, 7, "page_hinkley", "firing"), (291, 6, "adwin", "firing"),
                   (299, 0, "missing", "resolved"), (299, 3, "out_of_range", "firing"), (299, 4, "psi", "firing"),
                   (299, 5, "ks", "firing")]
