"""The model-level warm-up reference without I/O: each partition summarises its warm-up share per
event-time bucket and waits; the merge builds one reference from the first whole buckets that hold
``reference.events`` events (:func:`~stream_monitor.merge.reference_step`), a pure function of the
closed partials; every partition takes it and goes on. Whatever the order partitions are read in, the
moment the reference is built and the way the stream is cut into batches, the same reference (id) and
the same alerts."""

from __future__ import annotations

import random
import zlib
from functools import lru_cache

import orjson

from stream_monitor.config import parse_config
from stream_monitor.merge import (PartitionPartials, merge_step, model_reference, reference_id, reference_step)
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import build_reference
from stream_monitor.state import decode_state, encode_state
from stream_monitor.synthetic import generate

from ..support import merge_decoded as decoded

MODEL = "fraud"
SHARE = 300
SETTINGS = {"decisions": "model", "reference": {"events": SHARE}, "merge_bucket_seconds": 1.0,
            "merge_lateness_seconds": 1.0, "detectors": {"psi": {"window": 1000}}}
CONFIG = parse_config({"models": {MODEL: SETTINGS}})
PARTITIONS = 4
BUCKET_MS = 1000


@lru_cache(maxsize=None)
def spread(count: int, drift_at: int | None) -> dict[int, list]:
    out: dict[int, list] = {p: [] for p in range(PARTITIONS)}
    for doc in generate(MODEL, count, seed=1, drift_at=drift_at):
        out[zlib.crc32(doc["event_id"].encode()) % PARTITIONS].append(decoded(doc))
    return out


def marks(m: PartitionMonitor) -> PartitionPartials:
    mark = m.merge_marks()[MODEL]
    return PartitionPartials("in", m.partition, mark["watermark"], mark["idle"], mark["partials"])


def saved(m: PartitionMonitor, mark: PartitionPartials, store: dict) -> None:
    """A checkpoint: the closed partials go to the partition's partials key (``store``)."""
    held = store.setdefault(m.partition, {})
    held.update(mark.partials)
    m.partials_saved({MODEL: {"partials": mark.partials}})
    store[("wm", m.partition)] = (mark.watermark_ms, mark.idle)


def keys(store: dict, order) -> list[PartitionPartials]:
    return [PartitionPartials("in", p, *store.get(("wm", p), (None, False)), dict(store.get(p, {}))) for p in order]


class Cluster:
    """Four partitions, their partials keys and the model's merge state, driven in some order."""

    def __init__(self, by_partition, rng: random.Random, restart: bool = False):
        self.references: dict = {}
        self.monitors = {p: PartitionMonitor(CONFIG, p, {}, self.references) for p in range(PARTITIONS)}
        self.events = {p: [(i, e, None) for i, e in enumerate(events)] for p, events in by_partition.items()}
        self.rng, self.restart = rng, restart
        self.store: dict = {}
        self.state = None
        self.alerts: list = []
        self.reference_ids: list[str] = []

    def step_partition(self, p: int) -> None:
        m = self.monitors[p]
        start = 0 if m.next_offset is None else m.next_offset
        batch = self.events[p][start:start + self.rng.randint(1, 400)]
        if batch:
            m.process_batch(batch)
        elif not m.waiting:
            m.go_idle()
        saved(m, marks(m), self.store)
        if self.restart and self.rng.random() < 0.2:  # a restart from the stored state
            again = PartitionMonitor(CONFIG, p, {}, self.references)
            again.restore(decode_state(encode_state(m.snapshot(pending=False))))
            self.monitors[p] = again

    def merge(self) -> None:
        order = list(range(PARTITIONS))
        self.rng.shuffle(order)
        partitions = keys(self.store, order)
        if model_reference(self.state) is None:
            result = reference_step(CONFIG.models[MODEL], self.state, partitions, BUCKET_MS)
            if result is None:
                return
            self.state, consumed = result.state, result.consumed
            self.references[MODEL] = model_reference(self.state)
            self.reference_ids.append(self.state["reference_id"])
        else:
            result = merge_step(CONFIG.models[MODEL], model_reference(self.state), self.state, partitions, BUCKET_MS)
            self.state, consumed = result.state, result.consumed
            self.alerts.extend(result.alerts)
        for (_, p), buckets in consumed.items():
            for bucket in buckets:
                self.store[p].pop(bucket, None)

    def done(self) -> bool:
        return all(m.next_offset == len(self.events[p]) and m.idle for p, m in self.monitors.items())

    def run(self) -> "Cluster":
        for _ in range(10_000):
            if self.done():
                break
            self.step_partition(self.rng.randrange(PARTITIONS))
            if self.rng.random() < 0.3:
                self.merge()
        assert self.done()
        self.merge()
        self.merge()
        return self


def test_the_reference_and_the_alerts_do_not_depend_on_order_timing_batches_or_restarts():
    by_partition = spread(6000, 3000)
    runs = [Cluster(by_partition, random.Random(seed), restart=seed % 2 == 1).run() for seed in range(4)]
    first = runs[0]
    assert len(first.reference_ids) == 1 and first.state["windows"] >= 2
    assert {a.alert_id for a in first.alerts}, "the drift is found"
    assert any(a.name == "amount" and a.detector == "psi" and a.status == "firing" for a in first.alerts)
    for other in runs[1:]:
        assert other.reference_ids == first.reference_ids
        assert [a.alert_id for a in other.alerts] == [a.alert_id for a in first.alerts]
        assert other.state["windows"] == first.state["windows"]


def test_a_stationary_model_raises_nothing_with_its_warm_up_reference():
    run = Cluster(spread(5000, None), random.Random(9)).run()
    assert run.state["windows"] >= 2 and run.alerts == []


def shares(by_partition) -> dict[int, list]:
    """Each partition's share alone, then idle: its closed warm-up partials."""
    out = {}
    for p, events in by_partition.items():
        m = PartitionMonitor(CONFIG, p, {})
        m.process_batch([(i, e, None) for i, e in enumerate(events)])
        assert m.waiting == [MODEL] and m.next_offset == SHARE  # the rest waits for the model's reference
        assert m.process_batch([(SHARE, events[SHARE], None)]) == [] and m.next_offset == SHARE
        out[p] = m
    return out


def test_reference_step_is_a_pure_function_of_the_closed_partials_and_equals_one_warm_up_over_them():
    monitors = shares(spread(4000, None))
    partitions = [marks(m) for m in monitors.values()]
    model = CONFIG.models[MODEL]
    built = reference_step(model, None, partitions, BUCKET_MS)
    assert built is not None
    for order in ([3, 1, 0, 2], [2, 3, 1, 0]):
        again = reference_step(model, None, [partitions[i] for i in order], BUCKET_MS)
        assert again.state["reference_id"] == built.state["reference_id"] == reference_id(again.reference)
        assert again.state == built.state and again.consumed == {k: sorted(v) for k, v in built.consumed.items()}
    first, last = built.state["reference_buckets"]
    # the same reference as one warm-up over the events of those buckets, in (bucket, partition, offset) order
    events = []
    by_partition = spread(4000, None)
    for p, m in monitors.items():
        watermark, bucket_ms = None, BUCKET_MS
        for offset, event in enumerate(by_partition[p][:SHARE]):
            bucket = max(event.timestamp_ms // bucket_ms, (watermark - 1000) // bucket_ms if watermark else 0)
            events.append((bucket, p, offset, event))
            watermark = event.timestamp_ms if watermark is None else max(watermark, event.timestamp_ms)
    taken = [e for b, p, o, e in sorted(events, key=lambda t: t[:3]) if b <= last]
    assert len(taken) >= SHARE and built.reference.events == len(taken)
    expected = build_reference(MODEL, taken, None, source="warmup")
    assert built.reference == expected
    assert built.state["last_bucket"] == last and first == min(b for b, *_ in events)


def test_reference_step_waits_for_every_partition_and_for_enough_events():
    monitors = shares(spread(4000, None))
    partitions = [marks(m) for m in monitors.values()]
    model = CONFIG.models[MODEL]
    unknown = PartitionPartials("in", 9, None, False, {})  # a partition whose key does not exist yet
    assert reference_step(model, None, [*partitions, unknown], BUCKET_MS) is None
    few = parse_config({"models": {MODEL: {**SETTINGS, "reference": {"events": 100_000}}}}).models[MODEL]
    assert reference_step(few, None, partitions, BUCKET_MS) is None
    built = reference_step(model, None, partitions, BUCKET_MS)
    assert reference_step(model, built.state, partitions, BUCKET_MS) is None  # built once


def test_a_waiting_partition_goes_on_as_if_the_reference_had_been_there_when_its_share_ended():
    by_partition = spread(4000, None)
    monitors = shares(by_partition)
    built = reference_step(CONFIG.models[MODEL], None, [marks(m) for m in monitors.values()], BUCKET_MS)
    events = by_partition[0]
    late = monitors[0]  # waited, then its model's reference appears
    late.model_references[MODEL] = built.reference
    late.process_batch([(i, e, None) for i, e in enumerate(events)][SHARE:])
    early = PartitionMonitor(CONFIG, 0, {}, {MODEL: built.reference})  # built before its share ended
    early.process_batch([(i, e, None) for i, e in enumerate(events)])
    assert late.waiting == [] and early.next_offset == late.next_offset == len(events)
    assert encode_state(late.snapshot()) == encode_state(early.snapshot())
    sketch = early.models[MODEL].sketch  # the share's buckets closed when it ended; the events after count above
    judged = [b for b, partial in sketch.pending.items() if "warmup" not in partial]
    share = [b for b, partial in sketch.pending.items() if "warmup" in partial]
    assert judged and share and min(judged) > max(share)


def test_a_shares_partial_past_the_reference_counts_what_the_reference_would_have_counted():
    """The share's events after the reference's last bucket are judged too: their warm-up summary read with
    the reference gives the counts the partition itself would have made (missing values, text in a
    numeric column, unseen categories included)."""
    from stream_monitor.merge import BucketSketch, warmup_counts
    from stream_monitor.reference import Limits

    docs = generate(MODEL, 1500, seed=3)
    for i, doc in enumerate(docs):
        if i % 7 == 0:
            doc["features"]["amount"] = None
        if i % 13 == 0:
            doc["features"]["amount"] = "oops"
        if i % 11 == 0:
            doc["features"]["country"] = "XX"
    events = [decoded(d) for d in docs]
    stored_settings = {**SETTINGS, "reference": {"source": "stored"}, "merge_lateness_seconds": 10_000.0}
    config = parse_config({"models": {MODEL: stored_settings}})
    reference = build_reference(MODEL, [decoded(d) for d in generate(MODEL, 3000, seed=7)], None, source="stored")
    counted = PartitionMonitor(config, 0, {MODEL: reference})
    counted.process_batch([(i, e, None) for i, e in enumerate(events)])
    counted.go_idle()
    expected = counted.merge_marks()[MODEL]["partials"]
    sketch = BucketSketch(None, True, BUCKET_MS, warmup=(None, Limits()))
    for event in events:
        sketch.add_warmup(event.timestamp_ms // BUCKET_MS, event)
    sketch.close(None, everything=True)
    assert sorted(sketch.pending) == sorted(expected)
    for bucket, partial in sketch.pending.items():
        got = warmup_counts(config.models[MODEL], reference, partial)
        assert got["events"] == expected[bucket]["events"]
        assert got["columns"] == expected[bucket]["columns"], bucket
        assert got["joint"] == expected[bucket]["joint"], bucket  # the joint test's sums from the share's sample


def test_replay_builds_the_models_warm_up_reference_from_its_one_stream_whatever_the_batch_size():
    from stream_monitor.replay import _decoded_lines, replay_rows

    lines = [orjson.dumps(d) for d in generate(MODEL, 6000, seed=1, drift_at=3000)]
    runs = []
    for batch_size in (97, 1000):
        config = parse_config({"service": {"batch_size": batch_size}, "models": {MODEL: SETTINGS}})
        runs.append([a.alert_id for a in replay_rows(config, _decoded_lines(config, lines), {})])
    assert runs[0] and runs[0] == runs[1]


# --- a partition waiting for one model's reference and the other models ------------------------------------

TWO = parse_config({"models": {"fraud": SETTINGS, "churn": SETTINGS}})


def _decoded(doc, partition, offset):
    from stream_monitor.codec import decode  # noqa: PLC0415
    from stream_monitor.events import RawMessage  # noqa: PLC0415

    return decode(RawMessage("in", partition, offset, orjson.dumps(doc)), frozenset(TWO.models))


def _two_models_keyed_by_model_id() -> list[PartitionMonitor]:
    """fraud on partition 0, churn on partition 1 (keyed by model id), on one clock, each read past its
    share: both partitions wait, each for its own model's reference."""
    monitors = [PartitionMonitor(TWO, p, {}, {}) for p in range(2)]
    for p, model in enumerate(("fraud", "churn")):
        docs = generate(model, 2 * SHARE, seed=p)
        monitors[p].process_batch([(o, _decoded(doc, p, o), None) for o, doc in enumerate(docs)])
        assert monitors[p].waiting == [model]
    return monitors


def _partials(partitions, model: str) -> list[PartitionPartials]:
    return [PartitionPartials("in", m.partition, mark["watermark"], mark["idle"], mark["partials"])
            for m in partitions for mark in [m.merge_marks()[model]]]


def test_two_models_keyed_by_model_id_warming_up_at_once_do_not_wait_for_each_other():
    """Each model's reference needs the other's partition to close its first buckets, and that partition
    waits for its own reference: it is idle for the model it has never seen, so both are built."""
    monitors = _two_models_keyed_by_model_id()
    assert [m.merge_marks()["fraud"]["idle"] for m in monitors] == [False, True]
    assert [m.merge_marks()["churn"]["idle"] for m in monitors] == [True, False]
    for model in ("fraud", "churn"):
        result = reference_step(TWO.models[model], None, _partials(monitors, model), BUCKET_MS)
        assert result is not None and result.reference.events == SHARE, model


def test_a_partition_that_waits_too_long_is_idle_for_the_models_it_has_seen_too():
    """A partition with churn's events too waits for fraud's reference: churn's windows wait for it until it
    has waited ``merge_idle_seconds`` (the service then calls ``stall``); then its churn buckets close, it is
    idle for churn (never for fraud), and the next message it reads ends that."""
    monitor = PartitionMonitor(TWO, 0, {}, {})
    fraud, churn = generate("fraud", 2 * SHARE, seed=0), generate("churn", SHARE // 2, seed=1)
    docs = [d for pair in zip(fraud, churn) for d in pair] + fraud[len(churn):]
    monitor.process_batch([(o, _decoded(doc, 0, o), None) for o, doc in enumerate(docs)])
    assert monitor.waiting == ["fraud"]
    assert (monitor.merge_marks()["churn"]["idle"], monitor.merge_marks()["fraud"]["idle"]) == (False, False)
    open_before = dict(monitor.models["churn"].sketch.open)
    assert open_before
    monitor.stall()
    marks = monitor.merge_marks()
    assert (marks["churn"]["idle"], marks["fraud"]["idle"]) == (True, False)
    assert set(open_before) <= set(marks["churn"]["partials"]) and not monitor.models["churn"].sketch.open
    monitor.pass_over(len(docs))
    assert not monitor.stalled and not monitor.merge_marks()["churn"]["idle"]
