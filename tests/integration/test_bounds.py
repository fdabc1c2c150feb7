"""What one model may cost: warm-up summaries instead of events, inferred columns and categories capped,
what is past the limits counted and reported; a reference from summaries equals one from the events."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import replace

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream_monitor.config import parse_config
from stream_monitor.events import InferenceEvent, LabelEvent
from stream_monitor.metrics import Metrics, PartitionView
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import (MAX_CATEGORY_CHARS, CategoricalReference, Limits, NumericReference,
                                      ReferenceProfile, build_labels_reference, build_reference, category_key, cut)
from stream_monitor.codec import category
from stream_monitor.state import decode_state, encode_state

PARTITION = 0


# --- the reference of the events as built before summaries (the oracle) ---------------------------------------


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _old_numeric(values, events, bins):
    numbers = [float(v) for v in values if _is_number(v) and math.isfinite(v)]
    if not numbers:
        return None
    present = sum(1 for v in values if v is not None)
    return NumericReference.build(numbers, bins, missing=events - present, mismatches=present - len(numbers))


def _old_categorical(values, events, top_k):
    present = [v for v in values if v is not None]
    if not present:
        return None
    counts = {}
    for v in present:
        counts[category(v)] = counts.get(category(v), 0) + 1
    return CategoricalReference.from_counts(counts, top_k, missing=events - len(present))


def old_build_reference(model_id, events, feature_kinds, bins=10, top_k=20, labels=()):
    """build_reference as it was when the warm-up kept its events (inferred: ≥ 1 % and twice)."""
    seen = {}
    for event in events:
        for name in event.features:
            seen[name] = seen.get(name, 0) + 1
    if feature_kinds is None:
        least = max(2, math.ceil(0.01 * len(events)))
        kept = sorted((n for n, c in seen.items() if c >= least), key=lambda n: (-seen[n], n))[:1000]
    else:
        kept = list(feature_kinds)
    columns = {name: [e.features.get(name) for e in events] for name in kept}
    kinds = dict(feature_kinds) if feature_kinds is not None else {
        name: "numeric" if all(_is_number(v) for v in values if v is not None) else "categorical"
        for name, values in columns.items()}
    n = len(events)
    features = {}
    for name, kind in sorted(kinds.items()):
        values = columns.get(name, [None] * n)
        ref = _old_numeric(values, n, bins) if kind == "numeric" else _old_categorical(values, n, top_k)
        if ref is not None:
            features[name] = ref
    label_ref = _old_categorical([e.label for e in labels], len(labels), top_k) if labels else None
    return ReferenceProfile(model_id=model_id, events=n, features=features,
                            score=_old_numeric([e.score for e in events], n, bins),
                            predicted_label=_old_categorical([e.predicted_label for e in events], n, top_k),
                            latency=_old_numeric([e.latency_ms for e in events], n, bins), labels=label_ref)


def _strange_value(rng: random.Random):
    return rng.choice([
        lambda: rng.gauss(0, 1), lambda: rng.randint(-5, 5), lambda: 2 ** 60 + rng.randint(0, 3),
        lambda: float(rng.randint(0, 3)), lambda: 1e15, lambda: 10 ** 15, lambda: -0.0,
        lambda: math.inf, lambda: -math.inf, lambda: math.nan, lambda: None, lambda: True, lambda: False,
        lambda: rng.choice("abc"), lambda: "1", lambda: "1e+15"])()


def strange_events(seed: int, count: int) -> list[InferenceEvent]:
    """Columns of one kind, and columns that mix every kind of value (in random order), stray keys too."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        features = {"x": rng.gauss(10, 3), "n": rng.randint(0, 9), "c": rng.choice(["DE", "FR", "US"]),
                    "big": 2 ** 62 - rng.randint(0, 5), "flag": rng.random() < 0.3}
        for name in ("m1", "m2", "m3"):
            if rng.random() < 0.7:
                features[name] = _strange_value(rng)
        if rng.random() < 0.9:  # numbers only, then a string late in the warm-up (or not)
            features["late"] = rng.random() if i < count - 3 or seed % 2 else "late!"
        if rng.random() < 0.02:
            features[f"stray{i}"] = 1.0
        keys = list(features)
        rng.shuffle(keys)
        out.append(InferenceEvent(f"e{i}", "m", None, {k: features[k] for k in keys},
                                  score=rng.random() if rng.random() < 0.9 else None,
                                  predicted_label=rng.choice(["0", "1", None]),
                                  latency_ms=rng.expovariate(0.1) if i % 7 else None))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_reference_from_summaries_equals_the_one_from_the_events(seed):
    """Within the limits, the summary-built reference is exactly the events' reference (mixed kinds, big
    ints whose category differs from their float's, non-finite numbers, nulls, booleans, stray keys)."""
    events = strange_events(seed, 400)
    labels = [LabelEvent(f"e{i}", "m", None, [0, 1, "1", True, 2.0][i % 5]) for i in range(50)]
    # the columns' references (the joint one, the drivers' association and the labelled predictions, of
    # row-aligned values, have no per-column oracle here: tests/unit/test_multivariate.py,
    # tests/unit/test_drivers.py and tests/unit/test_reference_pairs.py hold them)
    assert replace(build_reference("m", events, None, 7, 4, labels=labels), joint=None, association=None,
                   pairs=None) == \
        old_build_reference("m", events, None, 7, 4, labels=labels)
    kinds = {"x": "numeric", "c": "categorical", "m1": "numeric", "m2": "categorical", "big": "categorical",
             "absent": "numeric"}
    assert replace(build_reference("m", events, kinds, 5, 3), joint=None, association=None) == \
        old_build_reference("m", events, kinds, 5, 3)
    assert build_labels_reference(labels, 2) == _old_categorical([e.label for e in labels], 50, 2)


# --- huge events --------------------------------------------------------------------------------------------


def _config(**model):
    return parse_config({"models": {"m": {"decisions": "partition", "reference": {"events": 5000}, **model}}})


def huge_event(i: int, size: int = 100_000) -> InferenceEvent:
    """~100 KB: a distinct string feature of ``size`` characters and three ordinary ones."""
    return InferenceEvent(f"huge-{i}", "m", None,
                          {"amount": float(i % 97), "age": 20 + i % 50, "country": "DE" if i % 3 else "FR",
                           "note": f"{i:08d}" + "y" * size}, score=(i % 10) / 10, predicted_label=str(i % 2))


def test_5000_warm_up_events_of_100_kb_give_a_small_snapshot():
    """5,000 events of ~100 KB in the warm-up (500 MB of input): the snapshot stays small while the
    warm-up runs and after it, and the long strings are remembered cut to MAX_CATEGORY_CHARS."""
    monitor = PartitionMonitor(_config(), PARTITION, {})
    sizes = {}
    for offset in range(5000):
        monitor.process(huge_event(offset), offset)
        if offset in (999, 4998):
            sizes[offset] = len(encode_state(monitor.snapshot()))
    after = encode_state(monitor.snapshot())
    sizes["after"] = len(after)
    print(f"snapshot bytes with 100 KB events: {sizes}")
    assert sizes[4998] < 1_000_000  # 500 MB of events in the warm-up
    reference = monitor.models["m"].reference
    note = reference.features["note"]
    assert note.events == 5000 and len(note.seen) == 5000
    assert all(len(c) == MAX_CATEGORY_CHARS for c in note.seen)
    restored = PartitionMonitor(_config(), PARTITION, {})
    restored.restore(decode_state(after))
    assert restored.snapshot() == monitor.snapshot()
    # a long value of the live stream lands where its cut lands in the reference
    column = next(c for c in monitor.models["m"].columns if c.name == "note")
    assert column.reference.is_seen(huge_event(17).features["note"])
    assert not column.reference.is_seen(huge_event(5017).features["note"])


def test_long_category_values_are_cut_deterministically():
    long = "é" * 300
    assert cut(long) == cut(long) and len(cut(long)) == MAX_CATEGORY_CHARS
    assert cut(long) != cut(long[:-1] + "e")
    assert category_key(long) == cut(long) and category_key("short") == "short"
    ref = CategoricalReference.build([long, long, "a"], top_k=5)
    assert ref.categories == [cut(long), "a"] and ref.bin_index(long) == 0


def test_categories_past_the_limit_are_counted_together():
    """service.max_categories_per_column: further categories go to __other__; every category is then 'seen'."""
    config = parse_config({"service": {"max_categories_per_column": 50},
                           "models": {"m": {"decisions": "partition",
                                            "reference": {"events": 200}, "features": {"c": "categorical"}}}})
    monitor = PartitionMonitor(config, PARTITION, {})
    for i in range(200):
        monitor.process(InferenceEvent(f"e{i}", "m", None, {"c": f"v{i % 100}"}), i)
    ref = monitor.models["m"].reference.features["c"]
    assert (ref.events, ref.overflow, len(ref.seen)) == (200, 100, 50)
    assert ref.proportions[-1] == pytest.approx(1 - 20 * 2 / 200)  # top 20 of the 50 remembered, twice each
    assert ref.is_seen("never-seen")


# --- junk keys ----------------------------------------------------------------------------------------------


REAL = [f"real{j:02d}" for j in range(20)]


def junk_event(i: int) -> InferenceEvent:
    """20 real features, then 980 junk keys (the same in every event)."""
    features = {name: float((i * 7 + j) % 31) for j, name in enumerate(REAL)}
    features.update({f"junk{j:03d}": i % 5 for j in range(980)})
    return InferenceEvent(f"j{i}", "m", None, features, score=(i % 10) / 10)


def test_980_junk_keys_give_at_most_max_inferred_columns_and_are_counted(caplog):
    """The first service.max_inferred_columns names to appear are tracked, the other 900 are counted and
    reported: metric, the model's summary, one log line."""
    config = parse_config({"models": {"m": {"decisions": "partition", "reference": {"events": 200}}}})
    monitor = PartitionMonitor(config, PARTITION, {})
    caplog.set_level(logging.WARNING, logger="stream_monitor")
    for i in range(100):
        monitor.process(junk_event(i), i)
    assert monitor.summary()["models"]["m"]["untracked_columns"] == 900  # already during the warm-up
    blob = encode_state(monitor.snapshot())
    monitor = PartitionMonitor(config, PARTITION, {})
    monitor.restore(decode_state(blob))  # the count survives a restart
    for i in range(100, 400):
        monitor.process(junk_event(i), i)
    model = monitor.models["m"]
    features = [c.name for c in model.columns if c.signal == "feature"]
    assert features == sorted(REAL + [f"junk{j:03d}" for j in range(80)])
    summary = monitor.summary()["models"]["m"]
    assert summary["untracked_columns"] == 900
    assert summary["untracked_examples"] == [f"junk{j:03d}" for j in range(80, 85)]
    lines = [r.getMessage() for r in caplog.records if "not tracked" in r.getMessage()]
    assert len(lines) == 1 and "900 feature names" in lines[0] and "service.max_inferred_columns" in lines[0]
    metrics = Metrics(CollectorRegistry())
    metrics.partitions.source = lambda: [PartitionView("t", PARTITION, summary=monitor.summary())]
    assert metrics.registry.get_sample_value("stream_monitor_untracked_columns", {"model": "m"}) == 900


def test_configured_features_are_always_tracked_and_never_count_as_untracked():
    config = parse_config({"service": {"max_inferred_columns": 5},
                           "models": {"m": {"decisions": "partition", "reference": {"events": 50},
                                            "features": {name: "numeric" for name in REAL}}}})
    monitor = PartitionMonitor(config, PARTITION, {})
    for i in range(60):
        monitor.process(junk_event(i), i)
    assert [c.name for c in monitor.models["m"].columns if c.signal == "feature"] == REAL
    assert "untracked_columns" not in monitor.summary()["models"]["m"]


def test_a_format_3_state_mid_warm_up_is_continued():
    """A state stored by the previous version (warm-up events verbatim) restores into summaries: same end."""
    config = parse_config({"models": {"m": {"decisions": "partition", "reference": {"events": 300}}}})
    events = strange_events(3, 600)
    whole = PartitionMonitor(config, PARTITION, {})
    for offset, event in enumerate(events):
        whole.process(event, offset)
    old = {"format": 3, "partition": PARTITION, "next_offset": 120, "dead_letters": 0, "models": {"m": {
        "events": 120, "labels": 1, "reference": None,
        "warmup": [(e.event_id, e.model_id, e.timestamp_ms, dict(e.features), e.score, e.predicted_label,
                    e.latency_ms) for e in events[:120]],
        "label_warmup": [("e0", "m", None, 1)], "label_reference": None, "label_column": None,
        "performance": None, "columns": {}}}}
    monitor = PartitionMonitor(config, PARTITION, {})
    monitor.restore(decode_state(encode_state(old)))
    assert monitor.rebaselined == {}
    assert len(monitor.models["m"].warmup) == 120 and len(monitor.models["m"].label_warmup) == 1
    for offset in range(120, 600):
        monitor.process(events[offset], offset)
    assert monitor.models["m"].reference == whole.models["m"].reference
    mine, theirs = monitor.snapshot()["models"]["m"], whole.snapshot()["models"]["m"]
    assert mine["columns"] == theirs["columns"]


# --- through the service: real broker, real Redis, `stream-monitor run` --------------------------------------


def _wide_huge_document(i: int) -> bytes:
    """~100 KB: five real features, a 100 KB string, then 150 junk keys (the same in every event)."""
    features = {"amount": float(i % 97), "age": 20 + i % 50, "tenure": (i * 7) % 13, "rate": (i % 10) / 10,
                "country": "DE" if i % 3 else "FR", "note": f"{i:08d}" + "y" * 100_000}
    features.update({f"junk{j:03d}": (i + j) % 5 for j in range(150)})
    return orjson.dumps({"event_id": f"w-{i}", "model_id": "wide", "timestamp": 1_795_800_000 + i,
                         "features": features, "prediction": {"score": (i % 10) / 10}})


def test_the_service_keeps_up_with_huge_wide_events_and_reports_the_untracked_columns(broker, redis_server,
                                                                                       tmp_path, monitors):
    """400 events of ~100 KB with 150 junk keys through `stream-monitor run`: every event processed, the
    state stored in Redis stays small (40 MB of input), and the 136 feature names past
    service.max_inferred_columns = 20 are reported (model summary, /metrics, one log line)."""
    import urllib.request

    from stream_monitor.demo.localstack import create_topics, free_port

    from ..support import produce, unique, wait_for_offsets
    from ..support import Run

    topic = unique("wide")
    create_topics(broker.address, {topic: 1})
    port = free_port()
    run = Run(broker, redis_server, tmp_path, topic, 1, "wide",
              service={"max_inferred_columns": 20, "metrics_port": port},
              models={"wide": {"decisions": "partition",
                               "reference": {"events": 200}, "detectors": {"psi": {"window": 100}}}})
    ends = produce(broker.address, topic, [(0, b"wide", _wide_huge_document(i), None) for i in range(400)])
    process = run.start(monitors)
    wait_for_offsets(run.store, topic, ends, timeout=120, processes=[process])
    key = run.store.key(topic, 0)
    client = run.store.client
    state_bytes = client.hstrlen(key, "state")
    total_bytes = client.memory_usage(key)
    summary = orjson.loads(client.hget(key, "summary"))["models"]["wide"]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert process.terminate() == 0
    print(f"400 events of ~100 KB: state field {state_bytes} bytes, whole key {total_bytes} bytes")
    assert total_bytes < 2_000_000
    assert summary["events"] == 400 and summary["reference"]["events"] == 200
    assert summary["untracked_columns"] == 136
    assert summary["untracked_examples"] == [f"junk{j:03d}" for j in range(14, 19)]
    assert 'stream_monitor_untracked_columns{model="wide"} 136.0' in metrics
    _, snapshot = run.store.load(topic, 0)
    features = sorted(snapshot["models"]["wide"]["reference"]["features"])
    assert features == sorted(["amount", "age", "tenure", "rate", "country", "note"] +
                              [f"junk{j:03d}" for j in range(14)])
    log = process.log()
    assert log.count("feature names of the warm-up are not tracked") == 1, log[-3000:]
    assert run.dead_letters() == []
