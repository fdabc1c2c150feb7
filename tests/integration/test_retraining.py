"""Retraining requests through the real broker and Redis: a drifting stream asks exactly what the pure
policy asks on the same events, valid against schemas/retraining_request.json; a SIGKILL right after a
request is handed to the producer, then a restart, neither loses a request nor adds an id."""

from __future__ import annotations

import collections

import orjson
import pytest

from stream_monitor.codec import decode
from stream_monitor.config import load_config
from stream_monitor.demo.localstack import create_topics
from stream_monitor.events import RawMessage
from stream_monitor.partition import PartitionMonitor

from ..support import SideBySide, read_topic, two_model_stream, unique, validator

pytestmark = pytest.mark.integration

EVENTS = 12_000  # per model: fraud drifts at 4000 (amount, country), churn at 6000 (spend)
PARTITIONS = 2  # two_model_stream: fraud on partition 0, churn on partition 1


def retraining_tables(topics: dict[str, str], broker):
    """Each run its own retraining topic; fraud asks at 2 drifted features, churn at 1."""
    def extra(name: str) -> str:
        topics[name] = unique(f"retrain-{name}")
        create_topics(broker.address, {topics[name]: 1})
        return (f'[retraining]\ntopic = "{topics[name]}"\n\n[models.fraud.retraining]\nmin_drifted_features = 2\n'
                "cooldown_seconds = 0\n\n[models.churn.retraining]\nmin_drifted_features = 1\n")
    return extra


def expected_requests(config_path, topic: str) -> dict[str, dict]:
    """The requests the pure engine makes over the same events, partition by partition (by id)."""
    config = load_config(config_path)
    by_partition = collections.defaultdict(list)
    for partition, _, value, _ in two_model_stream(EVENTS, PARTITIONS):
        by_partition[partition].append(value)
    out = {}
    for partition, values in by_partition.items():
        monitor = PartitionMonitor(config, partition, {})
        items = [(o, decode(RawMessage(topic, partition, o, v), frozenset(config.models)), None)
                 for o, v in enumerate(values)]
        monitor.process_batch(items)
        out.update({r.request_id: r.to_dict(0) for r in monitor.take_requests()})
    return out


def requests_on(broker, topic: str) -> list[dict]:
    return [orjson.loads(m.value()) for m in read_topic(broker.address, topic, 1)]


def test_a_drifting_stream_asks_for_retraining_and_a_sigkill_neither_loses_nor_adds_a_request(
        broker, redis_server, tmp_path, monitors):
    topics: dict[str, str] = {}
    pair = SideBySide(broker, redis_server, tmp_path, monitors, events=EVENTS, partitions=PARTITIONS, rate=4000,
                      service={"batch_size": 100}, extra=retraining_tables(topics, broker))
    first = pair.start(env={"STREAM_MONITOR_CRASH_AT": "after_request:1"})
    pair.feeder.start()
    while first.process.poll() is None:
        first.process.wait(60)
    assert first.process.returncode == -9, f"expected a SIGKILL, got {first.process.returncode}"
    assert pair.stopped_short(), "the crash happened mid-stream"
    pair.finish([pair.start()])  # the alerts and the final states of both runs are the same (assert_same_outcome)

    want = expected_requests(pair.clean.config, pair.topic)
    assert {r["model_id"] for r in want.values()} == {"fraud", "churn"}
    assert {r["reason"] for r in want.values()} == {"drift"}
    check = validator("retraining_request.json")
    clean, interrupted = requests_on(broker, topics["clean"]), requests_on(broker, topics["interrupted"])
    for request in clean + interrupted:
        check.validate(request)
    # undisturbed: exactly the expected requests, once each
    assert sorted(r["request_id"] for r in clean) == sorted(want)
    # after the SIGKILL: every one of them, and no other id (a repeat of the same id is allowed)
    assert {r["request_id"] for r in interrupted} == set(want)
    alerts = {a["alert_id"]: a for a in pair.clean.alerts()}
    for request in clean:
        expected = want[request["request_id"]]
        assert {k: v for k, v in request.items() if k != "requested_at"} == \
               {k: v for k, v in expected.items() if k != "requested_at"}
        for evidence in request["evidence"]["alerts"]:  # every alert cited was published, in this incident
            published = alerts[evidence["alert_id"]]
            assert published["incident"] == request["incident"] and published["severity"] == "critical"
    fraud = next(r for r in clean if r["model_id"] == "fraud")
    assert set(fraud["evidence"]["drifted_features"]) >= {"amount", "country"}
    print("a request as published:", orjson.dumps(fraud, option=orjson.OPT_INDENT_2).decode())
