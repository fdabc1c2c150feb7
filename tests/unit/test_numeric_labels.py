"""A regression model's labels are numbers: PSI on the label reference's quantile bins, KS, out of range,
ADWIN and Page-Hinkley, as a numeric feature's, in both decision modes (not categories, each new value of
which would be an unseen category).

The stream: a regression model (score 10 + 3x, x ~ N(0, 1)) at 100 events/s, each label (the score plus
N(0, 0.5) noise) 0.5 s after its prediction; from event 8000 on the labels are 1.0 higher.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from functools import lru_cache

import orjson

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import DeadLetter, RawMessage
from stream_monitor.merge import PartitionPartials, label_numeric, merge_step, model_share
from stream_monitor.mergeperf import label_reference, label_state
from stream_monitor.partition import ModelMonitor, PartitionMonitor
from stream_monitor.reference import (CategoricalReference, LabelSummary, NumericReference, ReferenceProfile,
                                      build_reference)
from stream_monitor.state import decode_state, encode_state
from stream_monitor.synthetic import BASE_TIME_S

MODEL = "reg"
BUCKET_MS = 1000
BASE = {"reference": {"source": "stored"}, "merge_bucket_seconds": 1.0, "merge_lateness_seconds": 1.0,
        "detectors": {"psi": {"window": 1000}}, "performance": {"enabled": False}}


def config(decisions: str, **extra):
    return parse_config({"models": {MODEL: {**BASE, "decisions": decisions, **extra}}})


def decoded(doc, offset=0):
    out = decode(RawMessage("in", 0, offset, orjson.dumps(doc)), frozenset([MODEL]))
    assert not isinstance(out, DeadLetter), out
    return out


@lru_cache(maxsize=None)
def stream(count: int, shift_at: int | None = None, seed: int = 1):
    """Inference events and, 50 events later, their labels; from ``shift_at`` on the labels are 1.0 higher."""
    rng = random.Random(f"{MODEL}/numeric-labels/{seed}")
    out, waiting = [], []
    for i in range(count):
        x = rng.gauss(0.0, 1.0)
        score = 10.0 + 3.0 * x
        t = round(BASE_TIME_S + i * 0.01, 3)
        event_id = f"{MODEL}-{seed}-{i}"
        out.append(decoded({"event_id": event_id, "model_id": MODEL, "timestamp": t,
                            "features": {"x": round(x, 4)}, "prediction": {"score": round(score, 4)}}))
        label = score + rng.gauss(0.0, 0.5) + (1.0 if shift_at is not None and i >= shift_at else 0.0)
        waiting.append((i + 50, decoded({"event_id": event_id, "model_id": MODEL, "label": round(label, 4),
                                         "timestamp": round(t + 0.5, 3)})))
        while waiting and waiting[0][0] <= i:
            out.append(waiting.pop(0)[1])
    out.extend(label for _, label in waiting)
    return tuple(out)


def is_label(event) -> bool:
    return not hasattr(event, "features")


@lru_cache(maxsize=None)
def reference(with_labels: bool) -> ReferenceProfile:
    events = stream(4000, seed=7)
    labels = [e for e in events if is_label(e)] if with_labels else ()
    return build_reference(MODEL, [e for e in events if not is_label(e)], None, source="stored", labels=labels)


def test_a_regressions_labels_build_a_numeric_reference_a_classifiers_stay_categories():
    profile = reference(True)
    assert isinstance(profile.labels, NumericReference) and profile.labels.events == 4000
    assert 9.5 < profile.labels.mean < 10.5 and len(profile.labels.proportions) == 12
    assert ReferenceProfile.from_dict(profile.to_dict()) == profile  # stored and loaded as numbers
    summary = LabelSummary()
    for label in (1, 0, 1.0, 1):
        summary.add(label)
    assert summary.build(numeric=False) == CategoricalReference.build([1, 0, 1, 1])  # the label 1.0 is "1"
    assert isinstance(summary.build(numeric=True), NumericReference)
    summary.add("yes")  # a label that is not a number: categories, whatever the task
    assert isinstance(summary.build(numeric=True), CategoricalReference)
    # a classifier's (configured) labels are categories even when they are numbers
    classifier = build_reference(MODEL, [e for e in stream(500, seed=7) if not is_label(e)], None,
                                 labels=[e for e in stream(500, seed=7) if is_label(e)], task="classification")
    assert isinstance(classifier.labels, CategoricalReference)


def test_the_label_columns_tests_count_as_numeric_in_the_models_budget():
    model = config("partition").models[MODEL]
    assert label_numeric(model, reference(True)) and label_numeric(model, reference(False))  # scores 0…20
    assert model_share(model, reference(True)) < model_share(model, reference(True).with_labels(
        CategoricalReference.build([1, 2])))


def label_alerts(alerts):
    return [(a.detector, a.status, a.offset) for a in alerts if a.signal == "label"]


def run_partition(events, cfg):
    m = PartitionMonitor(cfg, 0, {MODEL: reference(True)})
    return m.process_batch([(offset, event, None) for offset, event in enumerate(events)])


def test_partition_mode_a_label_shift_fires_the_numeric_detectors_at_pinned_offsets():
    cfg = config("partition")
    alerts = run_partition(stream(12000, 8000), cfg)
    assert [a for a in alerts if a.signal != "label"] == []
    # the label of event 8000 is at offset 16050 or so (labels and predictions interleave): Page-Hinkley and
    # ADWIN within a few hundred labels, PSI and KS at the close of the first label window wholly after it
    # (labels 8000…8999); no unseen_category, no out_of_range (the shift stays within the reference's range)
    assert label_alerts(alerts) == [("page_hinkley", "firing", 16615), ("adwin", "firing", 17265),
                                    ("psi", "firing", 18049), ("ks", "firing", 18049)]


def test_partition_mode_a_stationary_regressions_labels_stay_quiet():
    cfg = config("partition")
    alerts = run_partition(stream(12000), cfg)
    assert [a for a in alerts if a.signal == "label"] == []


def spread(events, partitions: int):
    out = {p: [] for p in range(partitions)}
    for event in events:
        out[zlib.crc32(event.event_id.encode()) % partitions].append(event)
    return out


def run_model(events, partitions: int, cfg, with_labels: bool = True):
    parts = []
    for p, items in sorted(spread(events, partitions).items()):
        m = PartitionMonitor(cfg, p, {MODEL: reference(with_labels)})
        assert m.process_batch([(offset, event, None) for offset, event in enumerate(items)]) == []
        m.go_idle()
        mark = m.merge_marks()[MODEL]
        parts.append(PartitionPartials("in", p, mark["watermark"], mark["idle"], mark["partials"]))
    return merge_step(cfg.models[MODEL], reference(with_labels), None, parts, BUCKET_MS)


def t0(events) -> int:
    return events[0].timestamp_ms // BUCKET_MS


def test_model_mode_a_label_shift_fires_once_in_pinned_windows_for_one_and_four_partitions():
    cfg = config("model")
    events = stream(12000, 8000)
    one, four = run_model(events, 1, cfg), run_model(events, 4, cfg)
    windows = [(a.alert_id, a.detector, a.status) for a in one.alerts if a.partition is None]
    assert windows == [(a.alert_id, a.detector, a.status) for a in four.alerts if a.partition is None]
    # the windows: label time buckets 81…90 (the labels of events 8000… are at t = 80.5 s on); the point
    # detectors run per partition (against the stored reference's labels) and open one episode each
    assert [(a.detector, a.status, a.window["first_bucket"] - t0(events), a.window["last_bucket"] - t0(events))
            for a in four.alerts if a.signal == "label" and a.partition is None] == [
        ("psi", "firing", 81, 90), ("ks", "firing", 81, 90)]
    assert Counter((a.detector, a.status) for a in four.alerts if a.partition is not None) == {
        ("page_hinkley", "firing"): 1, ("adwin", "firing"): 1}
    assert [(a.detector, a.offset) for a in one.alerts if a.partition is not None] == [
        ("page_hinkley", 16615), ("adwin", 17265)]  # one partition: the offsets of partition mode
    assert {a.signal for a in four.alerts} == {"label"}


def test_model_mode_the_merge_builds_a_numeric_label_reference_from_the_first_labels():
    cfg = config("model")
    events = stream(12000, 8000)
    one, four = run_model(events, 1, cfg, False), run_model(events, 4, cfg, False)
    built = label_reference(cfg.models[MODEL], reference(False), label_state(four.state))
    assert isinstance(built, NumericReference) and built == label_reference(
        cfg.models[MODEL], reference(False), label_state(one.state))
    assert [a.alert_id for a in one.alerts] == [a.alert_id for a in four.alerts]
    labels = [(a.detector, a.status, a.window["first_bucket"] - t0(events))
              for a in four.alerts if a.signal == "label"]
    assert labels == [("psi", "firing", 81), ("ks", "firing", 81)]  # no point detectors: no partition has it
    assert label_state(four.state)["windows"] == 6


def test_model_mode_a_stationary_regressions_labels_stay_quiet():
    cfg = config("model")
    for with_labels, windows in ((True, 11), (False, 6)):  # without: the first 5000 labels build its reference
        result = run_model(stream(12000), 4, cfg, with_labels)
        assert result.alerts == [] and result.state["labels"]["windows"] == windows


def test_a_merged_label_columns_point_detectors_survive_a_restore():
    cfg = config("model")
    monitor = ModelMonitor(cfg.models[MODEL], reference(True))
    assert monitor.label_column is not None and monitor.label_column.merged
    monitor.process_batch([(i, i, e, None) for i, e in enumerate(stream(3000))], 0)
    state = decode_state(encode_state(monitor.snapshot()))
    again = ModelMonitor(cfg.models[MODEL], reference(True))
    assert again.restore(state) is None
    assert again.label_column.snapshot() == monitor.label_column.snapshot()
