"""A stored reference built with labels keeps its labelled predictions, which calibrate the estimated
performance from the first prediction on, before any label arrives (per partition here;
tests/unit/test_merge_joint.py holds the model-level case)."""

from __future__ import annotations

import numpy as np

from stream_monitor.config import parse_config
from stream_monitor.events import InferenceEvent, LabelEvent
from stream_monitor.partition import ModelMonitor, _in_event_order
from stream_monitor.reference import ReferenceProfile, build_reference


def predictions(count: int, seed: int, shift_at: int | None) -> list[InferenceEvent]:
    """A calibrated classifier's predictions (score = sigmoid(3x)); from ``shift_at`` x is near 0 (unsure)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        unsure = shift_at is not None and k >= shift_at
        x = rng.normal(0, 0.25) if unsure else rng.choice([-1.5, 1.5]) + rng.normal(0, 0.5)
        out.append(InferenceEvent(f"e{k}", "credit", 1_000 * k, {"x": float(x)}, float(1 / (1 + np.exp(-3 * x)))))
    return out


def labelled_reference() -> ReferenceProfile:
    events = predictions(3000, 3, None)
    rng = np.random.default_rng(4)
    labels = [LabelEvent(e.event_id, "credit", None, int(rng.random() < e.score)) for e in events]
    return build_reference("credit", events, None, source="stored", labels=labels)


def config():
    return parse_config({"models": {"credit": {"decisions": "partition", "reference": {"source": "stored"},
                                               "detectors": {"psi": {"window": 1000}}}}}).models["credit"]


def test_the_labelled_predictions_round_trip_and_a_reference_without_labels_has_none():
    reference = labelled_reference()
    assert len(reference.pairs) == 3000 and reference.pairs[0][1] is None and reference.pairs[0][2] in ("0", "1")
    assert ReferenceProfile.from_dict(reference.to_dict()) == reference
    plain = build_reference("credit", predictions(3000, 3, None), None, source="stored")
    assert plain.pairs is None and "pairs" not in plain.to_dict()  # the same data (and id) as before


def test_a_stored_reference_with_labels_announces_a_shift_with_no_label_at_all():
    monitor = ModelMonitor(config(), labelled_reference())
    alerts, stream = [], predictions(8000, 7, 5000)
    for start in range(0, 8000, 500):
        chunk = stream[start:start + 500]
        alerts += _in_event_order(monitor.process_batch([(j, start + j, e, None) for j, e in enumerate(chunk)], 0))
    estimated = [(a.offset, a.status, a.name) for a in alerts if a.signal == "estimated_performance"]
    # windows of 1,000 predictions from the first: the one closing at 5,999 is the first of shifted events
    assert estimated == [(5999, "firing", m) for m in ("accuracy", "precision", "recall", "f1")]
    assert monitor.summary()["estimated"]["windows"] == 8
    assert next(a for a in alerts if a.name == "accuracy").reference["pairs"] == 3000
