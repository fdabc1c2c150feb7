"""Never half a batch: a failure midway is rolled back, the batch redone one event at a time, and only
the failing events are dead-lettered; the state equals that of a run that never saw them."""

from __future__ import annotations

import orjson
import pytest

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import RawMessage
from stream_monitor.demo.localstack import create_topics
from stream_monitor.partition import ColumnMonitor, PartitionMonitor
from stream_monitor.rollback import Rollback, bound
from stream_monitor.synthetic import generate

from ..support import MODELS, lines, produce, Run, unique, wait_for_offsets

MODEL = {"decisions": "partition",
         "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}
CONFIG = parse_config({"models": {"fraud": MODEL, "churn": MODEL}})
BATCH = 400


@pytest.fixture(scope="module")
def stream() -> list:
    """fraud (drifting at its event 1500) and churn interleaved: 6,000 events on one partition."""
    fraud, churn = generate("fraud", 3000, drift_at=1500), generate("churn", 3000)
    docs = [d for pair in zip(fraud, churn) for d in pair]
    return [decode(RawMessage("t", 0, i, orjson.dumps(d)), set(CONFIG.models)) for i, d in enumerate(docs)]


def fail_at(monkeypatch, column: str, offsets: set[int]) -> None:
    """Column ``column`` raises for any batch holding one of ``offsets`` (the columns before it in the
    batch have been updated by then: half a batch)."""
    original = ColumnMonitor.update_batch

    def update_batch(self, values, batch_offsets, *args):
        if self.name == column and offsets & set(batch_offsets):
            raise RuntimeError(f"bug at {sorted(offsets & set(batch_offsets))}")
        return original(self, values, batch_offsets, *args)

    monkeypatch.setattr(ColumnMonitor, "update_batch", update_batch)


def through_rollback(stream, rollback: Rollback, batch: int = BATCH):
    """Like the service: batches through the rollback, the failed events dead-lettered (skipped)."""
    alerts, failed = [], []
    for start in range(0, len(stream), batch):
        got, bad = rollback.apply([(o, stream[o], None) for o in range(start, min(start + batch, len(stream)))])
        alerts.extend(got)
        for (offset, _, _), _ in bad:
            rollback.skip(offset)
            failed.append(offset)
    return alerts, failed


def skipping(stream, skipped: set[int], batch: int = BATCH):
    """The run that never saw the skipped events: they are dead-lettered before their batch."""
    monitor = PartitionMonitor(CONFIG, 0, {})
    alerts = []
    for start in range(0, len(stream), batch):
        offsets = range(start, min(start + batch, len(stream)))
        for offset in offsets:
            if offset in skipped:
                monitor.skip(offset)
        alerts.extend(monitor.process_batch([(o, stream[o], None) for o in offsets if o not in skipped]))
    return alerts, monitor


def key(alerts) -> list[tuple]:
    return [(a.alert_id, a.offset, a.name, a.detector, a.status) for a in alerts]


@pytest.mark.parametrize("column, bad, failing, batch", [
    # fraud events are at even offsets, churn at odd ones; fraud's warm-up ends at offset 1998
    ("country", {2346}, [2346], BATCH),              # fraud: age and amount already updated in the batch
    ("plan", {2346, 2347, 4001}, [2347, 4001], BATCH),  # churn's column: fraud's 2346 does not fail
    ("score", {3599}, [3599], BATCH),                # the last event of a batch (churn's score)
    ("amount", {2000}, [2000], 300),                 # the batch 1800..2099 also ends fraud's warm-up
])
def test_a_failure_midway_leaves_the_state_of_a_run_that_never_saw_the_event(monkeypatch, stream, column, bad,
                                                                             failing, batch):
    want_alerts, want = skipping(stream, set(failing), batch)
    fail_at(monkeypatch, column, bad)
    monitor = PartitionMonitor(CONFIG, 0, {})
    alerts, failed = through_rollback(stream, Rollback(monitor), batch)
    assert failed == failing
    assert monitor.snapshot() == want.snapshot()
    assert key(alerts) == key(want_alerts)
    assert any(a.status == "firing" for a in alerts), "the drift is still found"


def test_no_failure_changes_nothing(stream):
    monitor = PartitionMonitor(CONFIG, 0, {})
    alerts, failed = through_rollback(stream, Rollback(monitor))
    want_alerts, want = skipping(stream, set())
    assert failed == []
    assert (key(alerts), monitor.snapshot()) == (key(want_alerts), want.snapshot())


def test_a_rollback_redoes_what_happened_since_the_last_base_copy(monkeypatch, stream):
    """A small log bound: several base copies; dead letters between batches are redone too."""
    rollback = Rollback(PartitionMonitor(CONFIG, 0, {}), log_events=1000)
    fail_at(monkeypatch, "age", {2350})
    alerts, failed = [], []
    for start in range(0, len(stream), BATCH):
        offsets = range(start, start + BATCH)
        for offset in offsets:
            if offset in (100, 2300):
                rollback.skip(offset)
        got, bad = rollback.apply([(o, stream[o], None) for o in offsets if o not in (100, 2300)])
        alerts.extend(got)
        for (offset, _, _), _ in bad:
            rollback.skip(offset)
            failed.append(offset)
    want_alerts, want = skipping(stream, {100, 2300, 2350})
    assert failed == [2350]
    assert rollback.bases > 3
    assert rollback.monitor.snapshot() == want.snapshot()
    assert key(alerts) == key(want_alerts)


def test_a_column_failing_for_every_event_dead_letters_them_all_and_monitors_the_rest(monkeypatch, stream):
    """fraud's age column raises for every event once fraud's warm-up is over (offset 1998)."""
    fail_at(monkeypatch, "age", set(range(len(stream))))
    monitor = PartitionMonitor(CONFIG, 0, {})
    _, failed = through_rollback(stream[:2400], Rollback(monitor))
    assert failed == list(range(2000, 2400, 2))
    snapshot = monitor.snapshot()
    assert (snapshot["dead_letters"], snapshot["next_offset"]) == (200, 2400)
    assert snapshot["models"]["fraud"]["events"] == 1000  # its warm-up, no more
    assert snapshot == skipping(stream[:2400], set(failed))[1].snapshot()


# --- through `stream-monitor run` ---------------------------------------------------------------------


def test_a_bug_mid_batch_in_the_service_dead_letters_only_that_event(broker, redis_server, tmp_path, monitors):
    """The country column raises at fraud's offset 2500 of partition 0, after age and amount were
    updated: one dead letter (processing_error, offset 2500); the stored state and the alerts are
    those of the good events alone; the other partition is untouched."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    fraud = lines(generate("fraud", 4000, seed=5, drift_at=2000))
    stable = lines(generate("stable", 2000, seed=5))
    ends = produce(broker.address, topic, [(0, b"fraud", v, None) for v in fraud] +
                   [(1, b"stable", v, None) for v in stable])
    run = Run(broker, redis_server, tmp_path, topic, 2, "rollback", service={"batch_size": 700})
    process = run.start(monitors, env={"STREAM_MONITOR_FAIL_PROCESSING": "country@2500"})
    wait_for_offsets(run.store, topic, ends, processes=[process])
    assert process.terminate() == 0, process.log()[-3000:]

    letters = [orjson.loads(m.value()) for m in run.dead_letters()]
    assert [(d["reason"], d["partition"], d["offset"]) for d in letters] == [("processing_error", 0, 2500)]
    assert "injected processing fault: country at offset 2500" in letters[0]["error"]
    assert process.log().count("processing failed; dead-lettered") == 1

    config = parse_config({"models": MODELS})
    pure = PartitionMonitor(config, 0, {})
    want_alerts = []
    for offset, value in enumerate(fraud):
        if offset == 2500:
            pure.skip(offset)
        else:
            want_alerts.extend(pure.process(decode(RawMessage(topic, 0, offset, value), set(MODELS)), offset))
    states = run.states()
    assert states[0][0] == ends[0]
    assert states[0][1]["models"] == pure.snapshot()["models"]
    assert states[0][1]["dead_letters"] == 1
    assert states[1][1]["dead_letters"] == 0
    assert {a["alert_id"] for a in run.alerts()} == {a.alert_id for a in want_alerts}
    assert want_alerts


def test_the_logs_of_all_partitions_are_bounded_together(stream):
    rollbacks = [Rollback(PartitionMonitor(CONFIG, p, {})) for p in range(4)]
    for n, rollback in enumerate(rollbacks):
        rollback.apply([(o, stream[o], None) for o in range(100 * (n + 1))], size=1000 * (n + 1))
    assert [r.held for r in rollbacks] == [(100, 1000), (200, 2000), (300, 3000), (400, 4000)]
    assert bound(rollbacks, events=500) == 2  # the two largest go
    assert [r.held for r in rollbacks] == [(100, 1000), (200, 2000), (0, 0), (0, 0)]
    assert bound(rollbacks, events=500, size=2500) == 1
    assert [r.held for r in rollbacks] == [(100, 1000), (0, 0), (0, 0), (0, 0)]
    assert rollbacks[1].base is None  # its next change takes a new base copy
