"""Retraining requests: the policy, pure (hand-made alerts, then the engine on synthetic traffic; no I/O)."""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

import orjson
from jsonschema import Draft202012Validator

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import Alert, RawMessage
from stream_monitor.partition import PartitionMonitor
from stream_monitor.retraining import Retraining, RetrainingPolicy, request_id
from stream_monitor.rollback import Rollback
from stream_monitor.state import decode_state, encode_state
from stream_monitor.synthetic import generate

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "retraining_request.json").read_text())
PARTITION = 3


def alert(name, offset, *, severity="critical", incident="a" * 64, signal="feature", detector="psi",
          status="firing", time_ms=1_000_000):
    return Alert(status, severity, "fraud", signal, name, detector, 0.5, 0.25, {}, {}, PARTITION, offset, time_ms,
                 f"{detector} of {name}", incident=incident)


def test_one_request_per_incident_once_enough_features_drift_critically():
    policy = Retraining("fraud", RetrainingPolicy(min_drifted_features=2, cooldown_seconds=0))
    assert policy.observe([alert("amount", 10), alert("amount", 11, detector="ks")]) == []  # one feature, twice
    [request] = policy.observe([alert("country", 20), alert("age", 30)])
    assert (request.reason, request.incident, request.drifted_features) == ("drift", "a" * 64, ("amount", "country"))
    ids = [a["alert_id"] for a in request.evidence]
    assert ids == [alert("amount", 10).alert_id, alert("country", 20).alert_id]
    assert request.request_id == request_id("fraud", "a" * 64, ids)
    assert policy.observe([alert("income", 40)]) == []  # the same incident asks once
    [again] = policy.observe([alert("amount", 50, incident="b" * 64), alert("age", 51, incident="b" * 64)])
    assert again.incident == "b" * 64 and again.request_id != request.request_id  # a new incident asks again
    record = request.to_dict(1_700_000_000_000)
    Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(record)
    assert record["evidence"]["window"] == {"partitions": [PARTITION], "first_offset": 10, "last_offset": 20,
                                            "first_event_time": "1970-01-01T00:16:40.000Z",
                                            "last_event_time": "1970-01-01T00:16:40.000Z"}


def test_warnings_resolutions_and_other_detectors_ask_nothing():
    policy = Retraining("fraud", RetrainingPolicy(min_drifted_features=1, cooldown_seconds=0))
    assert policy.observe([alert("amount", 1, severity="warning"), alert("age", 2, status="resolved"),
                           alert("amount", 3, detector="adwin"), alert("amount", 4, detector="missing",
                                                                       signal="data_quality")]) == []


def test_fewer_features_than_asked_for_ask_nothing():
    policy = Retraining("fraud", RetrainingPolicy(min_drifted_features=3, cooldown_seconds=0))
    assert policy.observe([alert("amount", 1), alert("age", 2), alert("amount", 3, detector="ks")]) == []
    assert [r.reason for r in policy.observe([alert("country", 4)])] == ["drift"]


def test_performance_below_its_floor_asks_and_hooks_for_estimates_and_fairness():
    policy = Retraining("fraud", RetrainingPolicy(cooldown_seconds=0))
    assert policy.observe([alert("accuracy", 1, signal="performance", detector="adwin")]) == []
    [request] = policy.observe([alert("accuracy", 2, signal="performance", detector="floor")])
    assert request.reason == "performance" and request.drifted_features == ()
    assert [r.reason for r in policy.observe([alert("accuracy", 3, signal="estimated_performance",
                                                    detector="cbpe", incident="c" * 64)])] == ["estimated_performance"]
    assert [r.reason for r in policy.observe([alert("parity", 4, signal="fairness", detector="demographic_parity",
                                                    incident="d" * 64)])] == ["fairness"]
    off = Retraining("fraud", RetrainingPolicy(on_performance=False, cooldown_seconds=0))
    assert off.observe([alert("accuracy", 2, signal="performance", detector="floor")]) == []


def test_cooldown_holds_back_a_second_incident_by_event_time():
    policy = Retraining("fraud", RetrainingPolicy(min_drifted_features=1, cooldown_seconds=60))
    assert len(policy.observe([alert("amount", 1, time_ms=0)])) == 1
    assert policy.observe([alert("amount", 2, incident="b" * 64, time_ms=59_999)]) == []
    assert len(policy.observe([alert("age", 3, incident="c" * 64, time_ms=60_000)])) == 1


# --- the engine on synthetic traffic ------------------------------------------------------------------

MODEL = {"decisions": "partition",
         "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000},
         "retraining": {"min_drifted_features": 2, "cooldown_seconds": 0}}
CONFIG = parse_config({"retraining": {"topic": "ml.retrain"}, "models": {"fraud": MODEL}})
KNOWN = frozenset(CONFIG.models)
TWICE = (("fraud", 10_000, 0, 3000, 6000), ("fraud", 6000, 1, 2000, None))  # two drifts, two incidents


@lru_cache(maxsize=None)
def stream(*parts: tuple) -> tuple:
    docs = [d for model, count, seed, drift_at, until in parts
            for d in generate(model, count, seed=seed, drift_at=drift_at, until=until)]
    return tuple(decode(RawMessage("t", PARTITION, i, orjson.dumps(d)), KNOWN) for i, d in enumerate(docs))


def test_a_drifting_stream_asks_once_per_incident_with_its_evidence():
    monitor = PartitionMonitor(CONFIG, PARTITION, {})
    alerts = monitor.process_batch([(o, e, None) for o, e in enumerate(stream(*TWICE))])
    requests = monitor.take_requests()
    incidents = list(dict.fromkeys(a.incident for a in alerts if a.status == "firing"))
    assert len(incidents) == 2 and [r.incident for r in requests] == incidents
    by_id = {a.alert_id: a for a in alerts}
    for request in requests:
        assert request.reason == "drift" and len(request.drifted_features) >= 2
        assert all(by_id[e["alert_id"]].severity == "critical" and by_id[e["alert_id"]].incident == request.incident
                   for e in request.evidence)
    assert monitor.take_requests() == []
    quiet = parse_config({"models": {"fraud": MODEL}})  # no [retraining] topic: no requests
    other = PartitionMonitor(quiet, PARTITION, {})
    other.process_batch([(o, e, None) for o, e in enumerate(stream(*TWICE))])
    assert other.take_requests() == [] and "retraining" not in other.snapshot()["models"]["fraud"]


def test_batch_cuts_and_restores_mid_stream_give_the_same_requests():
    """Random batch cuts, a snapshot → encode → restore between some: the same request ids as one batch."""
    events = stream(*TWICE)
    whole = PartitionMonitor(CONFIG, PARTITION, {})
    whole.process_batch([(o, e, None) for o, e in enumerate(events)])
    expected = [r.request_id for r in whole.take_requests()]
    rng = random.Random(7)
    monitor, got, start, restarts = PartitionMonitor(CONFIG, PARTITION, {}), [], 0, 0
    while start < len(events):
        size = rng.choice([1, 17, 500, 1999, 3000])
        monitor.process_batch([(o, events[o], None) for o in range(start, min(start + size, len(events)))])
        got.extend(r.request_id for r in monitor.take_requests())
        start += size
        if rng.random() < 0.3:
            restored = PartitionMonitor(CONFIG, PARTITION, {})
            restored.restore(decode_state(encode_state(monitor.snapshot())))
            monitor, restarts = restored, restarts + 1
    assert restarts > 3 and len(expected) == 2
    assert got == expected


def test_a_replay_from_a_saved_state_repeats_the_same_ids_never_new_ones():
    """A crash after a request was sent, before the state was saved: the replay from the older state asks
    again with the same id; a replay from the newer state does not ask again."""
    events = stream(*TWICE)
    monitor = PartitionMonitor(CONFIG, PARTITION, {})
    monitor.process_batch([(o, events[o], None) for o in range(0, 3000)])
    saved = encode_state(monitor.snapshot())
    monitor.process_batch([(o, events[o], None) for o in range(3000, 8000)])
    [first] = monitor.take_requests()
    after = encode_state(monitor.snapshot())
    replay = PartitionMonitor(CONFIG, PARTITION, {})
    replay.restore(decode_state(saved))
    replay.process_batch([(o, events[o], None) for o in range(3000, 8000)])
    assert [r.request_id for r in replay.take_requests()] == [first.request_id]
    later = PartitionMonitor(CONFIG, PARTITION, {})
    later.restore(decode_state(after))
    later.process_batch([(o, events[o], None) for o in range(7000, 8000)])
    assert later.take_requests() == []


def test_a_rolled_back_batch_neither_loses_nor_repeats_a_request():
    events = stream(*TWICE)
    rollback = Rollback(PartitionMonitor(CONFIG, PARTITION, {}))
    rollback.apply([(o, events[o], None) for o in range(0, 8000)])
    rollback._restore()  # what a failing next batch does: base + log redone
    rollback.apply([(o, events[o], None) for o in range(8000, len(events))])
    whole = PartitionMonitor(CONFIG, PARTITION, {})
    whole.process_batch([(o, e, None) for o, e in enumerate(events)])
    assert [r.request_id for r in rollback.take_requests()] == [r.request_id for r in whole.take_requests()]
