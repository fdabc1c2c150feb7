"""The service end to end: real broker, real Redis, `stream-monitor run` as subprocesses."""

from __future__ import annotations

import base64
import json
from collections import Counter

import orjson
import pytest

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import RawMessage
from stream_monitor.demo.localstack import create_topics
from stream_monitor.partition import PartitionMonitor
from stream_monitor.replay import replay_alerts
from stream_monitor.synthetic import generate

from ..support import MODELS, lines, MonitorProcess, produce, Run, SideBySide, unique, validator, wait_for_offsets

# --- one drifting and one stable model through a consumer group -------------------------------


@pytest.fixture(scope="module")
def drift_run(broker, redis_server, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("drift")
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    fraud = lines(generate("fraud", 8000, seed=1, drift_at=3000))
    stable = lines(generate("stable", 8000, seed=1))
    ends = produce(broker.address, topic, [(0, b"fraud", v, None) for v in fraud] +
                   [(1, b"stable", v, None) for v in stable])
    run = Run(broker, redis_server, tmp_path, topic, 2, "drift")
    process = MonitorProcess(run.config, tmp_path / "drift.log")
    try:
        wait_for_offsets(run.store, topic, ends, processes=[process])
        assert process.terminate() == 0
    finally:
        process.close()
    return {"run": run, "alerts": run.alerts(), "fraud": fraud, "log": process.log()}


def test_drifting_stream_raises_the_expected_alerts(drift_run):
    firing = {(a["signal"], a["name"], a["detector"]) for a in drift_run["alerts"] if a["status"] == "firing"}
    assert {("feature", "amount", "psi"), ("feature", "amount", "adwin"), ("feature", "amount", "page_hinkley"),
            ("feature", "country", "psi"), ("prediction", "score", "psi")} <= firing
    first = min(a["offset"] for a in drift_run["alerts"])
    assert 3000 <= first < 3100, "the first alert comes soon after the drift at offset 3000"
    assert all(a["partition"] == 0 for a in drift_run["alerts"])
    assert "FIRING critical fraud/feature/amount psi" in drift_run["log"], "one readable log line per alert"


def test_stable_stream_raises_no_alert(drift_run):
    assert [a for a in drift_run["alerts"] if a["model_id"] == "stable"] == []


def test_alerts_match_the_schema_and_are_one_per_episode(drift_run):
    schema = validator("alert.json")
    for alert in drift_run["alerts"]:
        schema.validate(alert)
    episodes = Counter((a["signal"], a["name"], a["detector"], a["status"]) for a in drift_run["alerts"])
    for (signal, name, detector, status), count in episodes.items():
        if status == "firing":
            assert count <= episodes.get((signal, name, detector, "resolved"), 0) + 1


def test_replay_gives_the_same_alerts_as_run(drift_run, tmp_path):
    config = parse_config({"models": MODELS})
    replayed = [(a.model_id, a.signal, a.name, a.detector, a.status, a.offset - 1)
                for a in replay_alerts(config, iter(drift_run["fraud"]), {})]
    served = [(a["model_id"], a["signal"], a["name"], a["detector"], a["status"], a["offset"])
              for a in drift_run["alerts"]]
    assert replayed and served == replayed


def test_replay_command_prints_alert_json(drift_run, tmp_path):
    import subprocess
    import sys
    path = tmp_path / "fraud.jsonl"
    path.write_bytes(b"\n".join(drift_run["fraud"]) + b"\n")
    result = subprocess.run([sys.executable, "-m", "stream_monitor", "replay", "-c", str(drift_run["run"].config),
                             "--input", str(path)], capture_output=True, text=True, timeout=120, check=True)
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    served = [(a["signal"], a["name"], a["detector"], a["status"], a["offset"] + 1) for a in drift_run["alerts"]]
    assert [(a["signal"], a["name"], a["detector"], a["status"], a["offset"]) for a in printed] == served
    assert all(a["partition"] == -1 for a in printed)


# --- crashes and rebalances: the same alert ids and the same final state ---------------------------------


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_loses_and_double_counts_nothing(broker, redis_server, tmp_path, monitors):
    pair = SideBySide(broker, redis_server, tmp_path, monitors, events=20_000, partitions=2, rate=5000)
    first = pair.underway(8000)
    first.kill()
    at_kill = int(pair.run.store.client.hget(pair.run.store.key(pair.topic, 0), "offset"))
    ends = pair.finish([pair.start()])
    assert at_kill < ends[0], "the kill happened mid-stream"


@pytest.mark.slow
def test_graceful_stop_of_one_of_two_instances_hands_over_exactly(broker, redis_server, tmp_path, monitors):
    pair = SideBySide(broker, redis_server, tmp_path, monitors, events=16_000, partitions=4, rate=4000)
    a, b = pair.start(), pair.start()
    pair.feeder.start()
    pair.progress(2500, [a, b], partitions=range(4))
    assert b.terminate() == 0, b.log()[-3000:]
    assert "assigned" in b.log() and "revoked" in b.log(), "b owned partitions and released them"
    pair.finish([a])


# --- bad input ---------------------------------------------------------------------------------------------

BAD = [
    ("not_json", b"this is not json"),
    ("not_json", b'{"event_id": "x", "model_id": "stable", "features": {"x": NaN}}'),
    ("not_object", b"[1, 2, 3]"),
    ("empty", None),
    ("empty", b""),
    ("not_utf8", b'{"event_id": "\xff\xfe", "model_id": "stable"}'),
    ("missing_field", b'{"model_id": "stable", "features": {"x": 1}}'),
    ("missing_field", b'{"event_id": "e", "model_id": "stable"}'),
    ("wrong_type", b'{"event_id": 7, "model_id": "stable", "features": {}}'),
    ("wrong_type", b'{"event_id": "e", "model_id": "stable", "features": [1, 2]}'),
    ("wrong_type", b'{"event_id": "e", "model_id": "stable", "features": {"x": {"deep": 1}}}'),
    ("wrong_type", b'{"event_id": "e", "model_id": "stable", "features": {"x": 1}, "timestamp": true}'),
    ("unknown_model", b'{"event_id": "e", "model_id": "nobody", "features": {"x": 1}}'),
    ("too_large", b'{"event_id": "e", "model_id": "stable", "features": {"x": "' + b"a" * 5000 + b'"}}'),
]


def test_each_kind_of_bad_input_is_dead_lettered_and_changes_nothing_else(broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    good = lines(generate("stable", 3000, seed=3))
    records, expected = [], []
    for i, value in enumerate(good):
        if i % 200 == 100 and len(expected) < len(BAD):
            reason, bad = BAD[len(expected)]
            headers = [("trace-id", f"bad-{len(expected)}".encode()), ("empty", None)]
            expected.append((reason, bad, headers))
            records.append((0, b"k", bad, headers))
        records.append((0, b"stable", value, None))
    assert len(expected) == len(BAD)
    ends = produce(broker.address, topic, records)
    run = Run(broker, redis_server, tmp_path, topic, 1, "bad", service={"max_message_bytes": 4096})
    process = run.start(monitors)
    wait_for_offsets(run.store, topic, ends, processes=[process])
    assert process.terminate() == 0

    letters = run.dead_letters()
    schema = validator("dead_letter.json")
    assert [orjson.loads(m.value())["reason"] for m in letters] == [reason for reason, _, _ in expected]
    for message, (reason, bad, headers) in zip(letters, expected):
        letter = orjson.loads(message.value())
        schema.validate(letter)
        assert letter["error"]
        assert (None if letter["value"] is None else base64.b64decode(letter["value"])) == (bad or (None if bad is None else b""))
        assert [(k, v) for k, v in message.headers()] == [(k, v) for k, v in headers]
        assert letter["topic"] == topic and letter["partition"] == 0
    assert run.alerts() == []

    # the state equals that of the good events alone
    config = parse_config({"models": MODELS})
    pure = PartitionMonitor(config, 0, {})
    for offset, value in enumerate(good):
        pure.process(decode(RawMessage(topic, 0, offset, value), set(MODELS)), offset)
    (next_offset, stored), = run.states().values()
    assert next_offset == ends[0]
    assert stored["dead_letters"] == len(BAD)
    assert stored["models"] == pure.snapshot()["models"]
