"""The Kafka clients' logs through Python logging, repeats held back, and the broker's outage said once
in the service's own words (and its return once).

The filter, the broker watch and the dead-letter digest are tested without I/O; one
`stream-monitor --log-format json run` is started against a broker address where nothing listens
yet, then the broker is started on it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
from confluent_kafka import KafkaError

from stream_monitor.demo.localstack import create_topics, free_port, start_broker
from stream_monitor.logs import BrokerWatch, DeadLetterDigest, RepeatFilter

from ..support import MODELS, Clock, probe, unique, write_config


def record(message: str, *args, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("stream_monitor.kafka", level, __file__, 1, message, args or None, None)


def test_repeats_are_held_back_then_counted():
    clock = Clock()
    repeat = RepeatFilter(30.0, clock)
    first = record("%s [%s] %s", "FAIL", "rdkafka#consumer-1", "127.0.0.1:9/bootstrap: Connect failed (after 0ms)")
    assert repeat.filter(first)
    passed = []
    for i in range(1, 41):  # one a second, numbers differing: "the same line" all the same
        clock.now = float(i) * 0.5
        passed.append(repeat.filter(record("%s [%s] %s", "FAIL", "rdkafka#consumer-1",
                                           f"127.0.0.1:9/bootstrap: Connect failed (after {i}ms)")))
    assert passed.count(True) == 0, "within 30 s nothing passes"
    clock.now = 31.0
    late = record("%s [%s] %s", "FAIL", "rdkafka#consumer-1", "127.0.0.1:9/bootstrap: Connect failed (after 7ms)")
    assert repeat.filter(late)
    assert late.getMessage().endswith("(repeated 40 times)")
    assert repeat.filter(record("a different line"))


def test_broker_watch_says_unreachable_once_and_back_once(caplog):
    watch = BrokerWatch("127.0.0.1:9", logging.getLogger("watch"))
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        watch.error_cb(KafkaError(KafkaError._TRANSPORT, "connection refused"))
        watch.error_cb(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert not watch.reachable
    watch.stats_cb(orjson.dumps({"brokers": {"127.0.0.1:9/bootstrap": {"state": "CONNECT", "nodeid": -1}}}).decode())
    assert not watch.reachable
    for _ in range(3):
        watch.stats_cb(orjson.dumps({"brokers": {"127.0.0.1:9/1": {"state": "UP", "nodeid": 1}}}).decode())
    assert watch.reachable and watch.outages == 1
    own = [r.getMessage() for r in caplog.records if r.name == "watch"]
    assert len(own) == 2
    assert own[0].startswith("broker unreachable at 127.0.0.1:9") and "processing is paused" in own[0]
    assert own[1].startswith("broker is back at 127.0.0.1:9")


def test_dead_letter_digest_by_reason_at_most_once_per_interval(caplog):
    clock = Clock()
    digest = DeadLetterDigest(60.0, logging.getLogger("digest"), clock)
    caplog.set_level(logging.INFO)
    assert digest.flush() is None, "nothing to say"
    for _ in range(1200):
        digest.record("unknown_model", "model_id 'frod' is not configured (known: ['fraud'])")
    for _ in range(34):
        digest.record("not_json", "unexpected character: line 1 column 1 (char 0)")
    clock.now = 2.0
    line = digest.flush()
    assert line == ("dead-lettered 1,234 messages in the last 2 s: unknown_model 1,200 (e.g. model_id 'frod' is "
                    "not configured (known: ['fraud'])), not_json 34 (e.g. unexpected character: line 1 column 1 "
                    "(char 0))")
    digest.record("empty", "empty message")
    clock.now = 30.0
    assert digest.flush() is None, "at most once per interval"
    clock.now = 62.0
    second = digest.flush()
    assert second == "dead-lettered 1 message in the last 60 s: empty 1 (e.g. empty message)"
    clock.now = 200.0
    assert digest.flush() is None, "only when there were new dead letters"
    assert [r.getMessage() for r in caplog.records if r.name == "digest"] == [line, second]


# --- a real run against a broker that is not there, then is ------------------------------------------------


def json_lines(path) -> list[dict]:
    text = path.read_text(errors="replace")
    out = []
    for line in text.splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise AssertionError(f"not JSON: {line!r}\n--- whole stderr:\n{text[-4000:]}") from None
    return out


def wait_for_line(path, needle: str, process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"run exited ({process.returncode}):\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no {needle!r} within {timeout:.0f} s:\n{path.read_text(errors='replace')[-3000:]}")


@pytest.mark.slow
def test_broker_down_then_up_in_json_logs(redis_server, tmp_path):
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    topic = unique("inference")
    config = write_config(tmp_path / "down.toml", bootstrap=address, redis_url=redis_server.address, input_topic=topic,
                          alert_topic=unique("alerts"), dead_letter_topic=unique("dlq"), group_id=unique("group"),
                          namespace=unique("ns"), models=MODELS,
                          service={"log_repeat_seconds": 60, "checkpoint_interval_seconds": 0.5,
                                   "metrics_port": metrics_port})
    stderr = tmp_path / "stderr.log"
    broker = None
    with open(stderr, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "stream_monitor", "--log-format", "json", "run", "-c",
                                    str(config)], stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    try:
        wait_for_line(stderr, "broker unreachable at", process)
        status, down = probe(metrics_port, "/readyz")
        assert status == 503 and down["broker"] == "unreachable", down
        assert probe(metrics_port, "/healthz")[0] == 200, "the loop goes on: live, not ready"
        time.sleep(4)  # librdkafka retries the connection many times a second meanwhile
        broker = start_broker(str(tmp_path), port=port)
        create_topics(broker.address, {topic: 1})
        wait_for_line(stderr, "broker is back at", process)
        wait_for_line(stderr, f"assigned {topic}[0]", process)
        deadline = time.monotonic() + 30
        while probe(metrics_port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert probe(metrics_port, "/readyz")[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if broker is not None:
            broker.stop()

    lines = json_lines(stderr)  # every stderr line is JSON
    messages = [line["message"] for line in lines]
    assert sum(m.startswith("broker unreachable at") for m in messages) == 1, messages
    assert sum(m.startswith("broker is back at") for m in messages) == 1, messages
    kafka = [line for line in lines if line["logger"] == "stream_monitor.kafka"]
    assert kafka, "librdkafka's own lines come through the service's logging"
    by_text: dict[str, int] = {}
    for line in kafka:
        key = "".join("#" if c.isdigit() else c for c in line["message"])
        by_text[key] = by_text.get(key, 0) + 1
    assert max(by_text.values()) == 1, f"repeats held back (60 s): {by_text}"
    print(f"{len(lines)} stderr lines, {len(kafka)} from librdkafka, over the outage and recovery")
    assert len(kafka) <= 30, kafka
    assert os.path.getsize(stderr) > 0
