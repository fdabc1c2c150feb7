"""Labels and realized performance decided per model (decisions = "model") without I/O.

Each partition counts its labels and joined pairs into event-time buckets (a pair in its label's
bucket); the merge of four partitions keyed by event id decides the label column's windows and the
performance windows exactly as one partition holding every event does, announces a change once, and
ends the error stream's point episode when a model window finds the error back.
"""

from __future__ import annotations

import zlib
from collections import Counter
from functools import lru_cache

import orjson

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import DeadLetter, RawMessage
from stream_monitor.join import MemoryJoin, join_op, performance_settings
from stream_monitor.merge import PartitionPartials, merge_step
from stream_monitor.mergeperf import add_pair, model_task, window_metrics
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import build_reference
from stream_monitor.synthetic import labelled

from ..support import assert_cuts_and_a_restore_change_nothing, fed_in_batches as feed

MODEL = "clf"
BUCKET_MS = 1000
SETTINGS = {"decisions": "model", "reference": {"source": "stored"}, "merge_bucket_seconds": 1.0,
            "merge_lateness_seconds": 1.0, "detectors": {"psi": {"window": 1000}},
            "performance": {"window": 1000, "floors": {"accuracy": 0.7}}}
CONFIG = parse_config({"models": {MODEL: SETTINGS}})


def decoded(doc, partition=0, offset=0):
    out = decode(RawMessage("in", partition, offset, orjson.dumps(doc)), frozenset([MODEL]))
    assert not isinstance(out, DeadLetter), out
    return out


@lru_cache(maxsize=None)
def reference(with_labels: bool = False):
    docs = labelled(MODEL, 4000, seed=7)
    events = [decoded(d) for d in docs if "features" in d]
    labels = [decoded(d) for d in docs if "features" not in d] if with_labels else ()
    return build_reference(MODEL, events, None, source="stored", labels=labels)


def index_of(doc) -> int:
    return int(doc["event_id"].rsplit("-", 1)[1])


@lru_cache(maxsize=None)
def stream(count: int, flipped: tuple[int, int] | None = None, positive: tuple[int, int] | None = None, seed=1):
    """A stable classifier's events and, 0.5 s later, their labels (100 events/s). ``flipped``: the labels of
    those events say the opposite (the model is wrong: concept drift); ``positive``: eight in ten of those
    labels are 1 (the label distribution drifts)."""
    out = []
    for doc in labelled(MODEL, count, seed=seed):
        if "features" not in doc:
            i = index_of(doc)
            if flipped and flipped[0] <= i < flipped[1]:
                doc = {**doc, "label": 1 - doc["label"]}
            if positive and positive[0] <= i < positive[1] and i % 10 < 8:
                doc = {**doc, "label": 1}
        out.append(decoded(doc))
    return tuple(out)


def spread(events, partitions: int):
    """Keyed by event id: a label lands on its prediction's partition."""
    out = {p: [] for p in range(partitions)}
    for event in events:
        out[zlib.crc32(event.event_id.encode()) % partitions].append(event)
    return out


def joined_items(by_partition, config=CONFIG):
    """Each partition's (offset, event, join) with the label join every partition shares (Redis's, in memory)."""
    settings = performance_settings(config)
    join = MemoryJoin(settings)
    out = {}
    for p, events in sorted(by_partition.items()):
        items = []
        for offset, event in enumerate(events):
            op = join_op(event, f"in|{p}|{offset}", settings)
            items.append((offset, event, join.run([op])[0] if op else None))
        out[p] = items
    return out


def monitor(partition: int = 0, config=CONFIG, labels: bool = False) -> PartitionMonitor:
    return PartitionMonitor(config, partition, {MODEL: reference(labels)})


def partials_of(m: PartitionMonitor):
    mark = m.merge_marks()[MODEL]
    return PartitionPartials("in", m.partition, mark["watermark"], mark["idle"], mark["partials"])


def run(events, partitions: int, config=CONFIG, labels: bool = False):
    parts = []
    for p, items in joined_items(spread(events, partitions), config).items():
        m = monitor(p, config, labels)
        assert feed(m, items) == []  # every decision and episode is the merge's
        m.go_idle()
        parts.append(partials_of(m))
    return merge_step(config.models[MODEL], reference(labels), None, parts, BUCKET_MS)


def windows(result):
    return [a for a in result.alerts if a.partition is None]


def t0(events) -> int:
    return events[0].timestamp_ms // BUCKET_MS


def test_four_partitions_announce_the_models_performance_drop_once_with_the_id_of_one_partition():
    events = stream(8000, flipped=(4000, 8000))
    one, four = run(events, 1), run(events, 4)
    assert [a.alert_id for a in windows(one)] == [a.alert_id for a in windows(four)]
    firing = Counter((a.signal, a.name, a.detector) for a in four.alerts if a.status == "firing")
    assert firing == {("performance", "accuracy", "floor"): 1, ("performance", "error_rate", "adwin"): 1}
    floor = next(a for a in four.alerts if a.detector == "floor")
    # the labels say the model is wrong from event 4000 (t = 40 s; labels 0.5 s later): windows of 1000 pairs
    # by label time are buckets 0–10, 11–20, …: the first wholly after the change is 41–50
    assert (floor.window["first_bucket"] - t0(events), floor.window["last_bucket"] - t0(events)) == (41, 50)
    assert floor.partition is None and floor.offset is None and floor.severity == "critical"
    assert 0.17 < floor.statistic < 0.23 and floor.threshold == 0.7
    assert sum(floor.window["events"].values()) >= 1000 and len(floor.window["events"]) == 4
    assert floor.drivers  # ranked from the model's latest feature window
    adwin = next(a for a in four.alerts if a.detector == "adwin")
    assert adwin.partition is not None and adwin.offset is not None  # a point firing keeps where it fired
    assert adwin.drivers and adwin.current["error_rate"] > 0.5
    assert four.state["performance"]["windows"] == one.state["performance"]["windows"] == 7


def test_a_stationary_labelled_stream_stays_quiet_at_the_model_level():
    events = stream(12000, seed=3)
    result = run(events, 4)
    assert result.alerts == []
    assert result.state["windows"] == 12 and result.state["performance"]["windows"] == 11
    assert result.state["labels"]["windows"] == 6  # after the 5,000 labels of the model's label warm-up
    accuracy = [p["statistic"] for p in result.points if (p["signal"], p["name"]) == ("performance", "accuracy")]  # not the estimate's
    assert len(accuracy) == 11 and all(0.76 < a < 0.84 for a in accuracy)


def test_the_error_streams_episode_ends_when_a_model_window_finds_the_error_back():
    events = stream(12000, flipped=(3000, 6000))
    result = run(events, 4)
    points = [(a.name, a.detector, a.status) for a in result.alerts if a.detector in ("adwin", "floor")]
    assert points == [("error_rate", "adwin", "firing"), ("accuracy", "floor", "firing"),
                      ("accuracy", "floor", "resolved"), ("error_rate", "adwin", "resolved")]
    resolved = result.alerts[-1]
    assert resolved.partition is None and resolved.window["first_bucket"] - t0(events) == 61
    # the flip ends at event 6000 (labels from 60.5 s): the first window of pairs wholly after it, 61–70
    assert resolved.statistic < resolved.threshold and 0.4 < resolved.threshold < 0.6  # halfway: 0.2 → 0.8


def test_label_drift_is_decided_once_for_the_model_against_one_label_reference():
    events = stream(12000, positive=(8000, 12000))
    one, four = run(events, 1), run(events, 4)
    label = [a for a in windows(four) if a.signal == "label"]
    assert [a.alert_id for a in label] == [a.alert_id for a in windows(one) if a.signal == "label"]
    assert [(a.name, a.detector, a.status) for a in label] == [("label", "psi", "firing")]
    (alert,) = label
    # labels shift from event 8000 (label time 80.5 s); label windows after the warm-up: 51–60, …, 81–90
    assert alert.window["first_bucket"] - t0(events) == 81 and len(alert.window["events"]) == 4
    # the label reference is the model's: built by the merge from the first 5,000 labels (buckets 0–50)
    assert four.state["labels"]["reference"] == one.state["labels"]["reference"]
    assert four.state["labels"]["reference_bucket"] - t0(events) == 50
    # a stored reference with labels is the model's label reference: no warm-up
    stored = run(events, 4, labels=True)
    assert stored.state["labels"]["reference"] is None
    assert [(a.name, a.status) for a in windows(stored) if a.signal == "label"] == [("label", "firing")]


def test_the_partition_side_with_labels_does_not_depend_on_batch_cuts_or_a_restore():
    items = joined_items({0: stream(4000, flipped=(2000, 4000))})[0]
    whole = assert_cuts_and_a_restore_change_nothing(monitor, items, most=300)  # random batches, a restart
    pending = whole.merge_marks()[MODEL]["partials"]
    assert sum(p["labels"]["events"] for p in pending.values() if "labels" in p) > 3000
    assert sum(p["pairs"]["n"] for p in pending.values() if "pairs" in p) > 3000


def test_the_label_and_performance_windows_are_the_same_merged_in_two_steps():
    events = stream(12000, flipped=(3000, 6000), positive=(8000, 12000))
    parts = []
    for p, items in joined_items(spread(events, 4)).items():
        m = monitor(p)
        feed(m, items)
        m.go_idle()
        parts.append(partials_of(m))
    model = CONFIG.models[MODEL]
    whole = merge_step(model, reference(), None, parts, BUCKET_MS)
    start = min(min(p.partials) for p in parts)
    cut = start + 45  # inside the label warm-up's last bucket range and mid performance window
    early = [p._replace(watermark_ms=(cut + 1) * BUCKET_MS, idle=False,
                        partials={b: x for b, x in p.partials.items() if b <= cut}) for p in parts]
    first = merge_step(model, reference(), None, early, BUCKET_MS)
    assert first.state["performance"]["window"] is not None
    rest = [p._replace(partials={b: x for b, x in p.partials.items() if b > cut}) for p in parts]
    second = merge_step(model, reference(), orjson.loads(orjson.dumps(first.state)), rest, BUCKET_MS)
    assert [a.alert_id for a in first.alerts + second.alerts] == [a.alert_id for a in whole.alerts]
    assert second.state == orjson.loads(orjson.dumps(whole.state))


def test_the_task_is_the_models_whatever_the_partition_saw_first():
    assert model_task(CONFIG.models[MODEL], reference()) == "classification"
    assert model_task(CONFIG.models[MODEL], None) is None
    regression = parse_config({"models": {MODEL: {**SETTINGS, "performance": {"task": "regression"}}}})
    assert model_task(regression.models[MODEL], None) == "regression"
    part = {}
    add_pair(part, {"score": 3.0, "label": None, "t": 0}, 1.5, "1")
    add_pair(part, {"score": 2.0, "label": None, "t": 0}, 4.0, "1")
    assert window_metrics("regression", part["pairs"]) == {"mae": 1.75, "rmse": (6.25 / 2) ** 0.5,
                                                           "absolute_error": 1.75}


def test_replay_decides_labels_and_performance_as_the_merge_of_its_one_stream():
    from stream_monitor.replay import replay_rows  # noqa: PLC0415

    events = stream(12000, flipped=(3000, 6000), positive=(8000, 12000))
    alerts = list(replay_rows(CONFIG, list(enumerate(events)), {MODEL: reference()}))
    assert [a.alert_id for a in alerts if a.partition is None] == [a.alert_id for a in windows(run(events, 1))]
    assert {(a.signal, a.detector) for a in alerts if a.status == "firing"} == {
        ("performance", "adwin"), ("performance", "floor"), ("label", "psi")}


def test_with_a_warm_up_reference_its_buckets_labels_start_the_models_label_warm_up():
    from stream_monitor.replay import replay_rows  # noqa: PLC0415

    settings = {**SETTINGS, "reference": {"source": "warmup", "events": 2000}}
    events = stream(12000, flipped=(6000, 12000), positive=(8000, 12000))
    runs = []
    for batch_size in (97, 1000):
        config = parse_config({"service": {"batch_size": batch_size}, "models": {MODEL: settings}})
        runs.append([(a.alert_id, a.signal, a.name, a.detector, a.status)
                     for a in replay_rows(config, list(enumerate(events)), {})])
    assert runs[0] == runs[1]
    assert [alert[1:] for alert in runs[0]] == [
        ("performance", "error_rate", "adwin", "firing"), ("performance", "accuracy", "floor", "firing"),
        ("label", "label", "psi", "firing")]


@lru_cache(maxsize=None)
def regression_stream(count: int, shift_at: int):
    """The same events with numeric labels: the score plus a small error, 1.0 more from ``shift_at`` on."""
    scores = {}
    out = []
    for doc in labelled(MODEL, count, seed=1):
        i = index_of(doc)
        if "features" in doc:
            scores[i] = doc["prediction"]["score"]
        else:
            error = 0.1 * ((i * 7919) % 11 - 5) / 5  # −0.1 … 0.1, spread evenly
            doc = {**doc, "label": round(scores[i] + error + (1.0 if i >= shift_at else 0.0), 4)}
        out.append(decoded(doc))
    return tuple(out)


def test_a_regressions_mae_ceiling_and_its_page_hinkley_are_the_models():
    settings = {**SETTINGS, "performance": {"task": "regression", "window": 1000, "ceilings": {"mae": 0.3},
                                            "reference_pairs": 500}}
    config = parse_config({"models": {MODEL: settings}})
    events = regression_stream(8000, 4000)
    one, four = run(events, 1, config), run(events, 4, config)
    assert [a.alert_id for a in windows(one)] == [a.alert_id for a in windows(four)]
    performance = [a for a in four.alerts if a.signal == "performance"]  # (numeric labels drift as categories)
    assert [(a.name, a.detector, a.status) for a in performance] == [
        ("absolute_error", "page_hinkley", "firing"), ("mae", "ceiling", "firing")]
    ceiling = performance[1]
    assert ceiling.window["first_bucket"] - t0(events) == 41 and 0.95 < ceiling.statistic < 1.05
