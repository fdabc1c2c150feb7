"""Poison outputs: every alert and dead letter fits the producer's message size, and a message the
producer or the broker refuses never stops the service (real broker and Redis where it is about them)."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import threading
import time

import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream_monitor.codec import decode
from stream_monitor.errors import StopRequested
from stream_monitor.events import (ALERT_MAX_CHARS, Alert, DeadLetter, RawMessage, _message_bytes,
                                   dead_letter_message, format_time)
from stream_monitor.demo.localstack import create_topics, free_port, produce_records, start_broker
from stream_monitor.metrics import Metrics
from stream_monitor.publisher import Publisher, _Out

from ..support import lines, logged, read_topic, Run, stored_offset, unique, validator, wait_for_offsets

LIMIT = 1_000_000 - 64 * 1024  # what the service allows itself under librdkafka's default message.max.bytes
NOW_MS = 1_795_812_290_123
KB = 1024
DEAD_LETTER_SCHEMA = validator("dead_letter.json")
ALERT_SCHEMA = validator("alert.json")
BAD_VALUE = b'{"event_id": "e", "model_id": "nobody", "features": {"x": 1}}'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def poison() -> dict[str, RawMessage]:
    """The messages of the crash loop: a huge key, many big headers, a 1 MB model_id, a 1 MB feature name."""
    many = tuple((f"h{i}", b"v" * 500) for i in range(2000))
    model_id = orjson.dumps({"event_id": "e", "model_id": "m" * 1_000_000, "features": {"x": 1}})
    feature = orjson.dumps({"event_id": "e", "model_id": "stable", "features": {"f" * 1_000_000: [1]}})
    return {
        "key": RawMessage("ml.inference", 0, 1, BAD_VALUE, key=b"k" * 900_000, headers=(("trace", b"t"),)),
        "headers": RawMessage("ml.inference", 0, 2, BAD_VALUE, key=b"stable", headers=many),
        "model_id": RawMessage("ml.inference", 0, 3, model_id, key=b"stable"),
        "feature_name": RawMessage("ml.inference", 0, 4, feature, key=b"stable"),
    }


def letter_of(raw: RawMessage, max_bytes: int = LIMIT):
    decoded = decode(raw, {"stable"})
    assert isinstance(decoded, DeadLetter)
    return dead_letter_message(raw, decoded, NOW_MS, max_bytes)


# --- dead letters, no I/O ------------------------------------------------------------------------------


def test_a_dead_letter_that_fits_is_exactly_what_it_always_was():
    raw = RawMessage("ml.inference", 3, 42, b"not json", key=b"fraud", headers=(("trace", b"abc"), ("empty", None)),
                     timestamp_ms=NOW_MS)
    record, key, value, headers = dead_letter_message(raw, DeadLetter("not_json", "cannot parse"), NOW_MS, LIMIT)
    expected = {"reason": "not_json", "error": "cannot parse", "topic": "ml.inference", "partition": 3, "offset": 42,
                "received_at": format_time(NOW_MS), "timestamp_ms": NOW_MS, "key": "ZnJhdWQ=",
                "value": base64.b64encode(b"not json").decode(),
                "headers": [{"key": "trace", "value": "YWJj"}, {"key": "empty", "value": None}]}
    assert value == orjson.dumps(expected) and record == expected
    assert key == b"fraud" and headers == [("trace", b"abc"), ("empty", None)]


@pytest.mark.parametrize("case", ["key", "headers", "model_id", "feature_name"])
def test_each_poison_message_gets_a_dead_letter_that_fits_and_says_what_was_cut(case):
    raw = poison()[case]
    record, key, value, headers = letter_of(raw)
    assert _message_bytes(key, value, headers) <= LIMIT
    assert len(key or b"") + len(value) + sum(len(k) + len(v or b"") for k, v in headers) <= LIMIT
    DEAD_LETTER_SCHEMA.validate(orjson.loads(value))
    assert len(record["error"]) <= 1_000
    if case == "key":
        assert record["key_truncated"] is True and record["key_bytes"] == 900_000
        assert record["key_sha256"] == sha(raw.key) and key == raw.key[:1024]
        assert base64.b64decode(record["key"]) == key
        assert "value_truncated" not in record and "headers_truncated" not in record  # what fits stays whole
        assert headers == [("trace", b"t")]
    if case == "headers":
        assert record["headers_truncated"] is True and record["headers_count"] == 2000
        assert record["headers_bytes"] == sum(len(k) + len(v) for k, v in raw.headers)
        assert record["headers_sha256"] == sha(orjson.dumps([[k, base64.b64encode(v).decode()] for k, v in raw.headers]))
        assert headers == list(raw.headers[:len(headers)]) and 0 < len(headers) <= 64
        assert [(h["key"], base64.b64decode(h["value"])) for h in record["headers"]] == headers
        assert base64.b64decode(record["value"]) == raw.value and key == b"stable"
    if case in ("model_id", "feature_name"):
        assert record["value_truncated"] is True and record["value_bytes"] == len(raw.value)
        assert record["value_sha256"] == sha(raw.value)
        assert raw.value.startswith(base64.b64decode(record["value"])) and len(record["value"]) > 500_000
        assert "characters in all" in record["error"]
    assert record["reason"] == ("wrong_type" if case == "feature_name" else "unknown_model")


def test_a_long_error_text_is_cut_with_its_length_and_digest():
    raw = RawMessage("ml.inference", 0, 7, b"x")
    error = "Boom: " + "y" * 50_000
    record, _, value, _ = dead_letter_message(raw, DeadLetter("processing_error", error), NOW_MS, LIMIT)
    assert record["error"].startswith(error[:1000]) and len(record["error"]) < 1_200
    assert f"{len(error)} characters in all, sha256 {sha(error.encode())}" in record["error"]


def test_the_limit_follows_the_producers_message_max_bytes():
    small = Publisher(logged({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 200_000}), "a", "d")
    assert small.max_record_bytes == 200_000 - 25_000
    assert Publisher(logged({"bootstrap.servers": "127.0.0.1:1"}), "a", "d").max_record_bytes == LIMIT
    for raw in poison().values():
        assert _message_bytes(*[letter_of(raw, small.max_record_bytes)[i] for i in (1, 2, 3)]) <= 175_000


# --- alerts, no I/O ------------------------------------------------------------------------------------


def alert(**changes) -> Alert:
    fields = dict(status="firing", severity="critical", model_id="shop", signal="feature", name="color",
                  detector="psi", statistic=0.9, threshold=0.25,
                  reference={"categories": ["a", "b", "__other__"], "proportions": [0.5, 0.5, 0.0]},
                  current={"proportions": [1.0, 0.0, 0.0], "events": 200}, partition=0, offset=1234,
                  event_time_ms=NOW_MS, message="PSI of shop.color is 0.9")
    fields.update(changes)
    return Alert(**fields)


def test_an_alert_within_the_bounds_is_exactly_what_it_always_was():
    a = alert()
    expected = {"alert_id": a.alert_id, "status": "firing", "severity": "critical", "model_id": "shop",
                "signal": "feature", "name": "color", "detector": "psi", "statistic": 0.9, "threshold": 0.25,
                "reference": dict(a.reference), "current": dict(a.current), "partition": 0, "offset": 1234,
                "event_time": format_time(NOW_MS), "detected_at": format_time(NOW_MS + 5),
                "message": "PSI of shop.color is 0.9"}
    assert orjson.dumps(a.to_dict(NOW_MS + 5, max_bytes=LIMIT)) == orjson.dumps(expected)


def test_an_alert_with_huge_categories_is_cut_and_keeps_its_id():
    categories = [chr(65 + i) * 50 * KB for i in range(20)] + ["__other__"]
    a = alert(reference={"categories": categories, "proportions": [0.05] * 20 + [0.0]}, name="c" * 100_000,
              message="PSI of " + "c" * 100_000)
    record = a.to_dict(NOW_MS, max_bytes=LIMIT)
    value = orjson.dumps(record)
    assert len(value) < 60 * KB
    ALERT_SCHEMA.validate(orjson.loads(value))
    assert record["alert_id"] == a.alert_id == alert(name="c" * 100_000).alert_id  # of the full values
    assert record["truncated"] == {"fields": ["message", "name", "reference.categories"], "cuts": 22}
    first = record["reference"]["categories"][0]
    assert first.startswith("A" * ALERT_MAX_CHARS) and first.endswith(f"{50 * KB} characters in all, sha256 "
                                                                     f"{sha(categories[0].encode())}]")
    assert record["reference"]["categories"][-1] == "__other__"
    assert record["reference"]["proportions"] == [0.05] * 20 + [0.0]


def test_an_alert_still_too_large_carries_a_summary_of_reference_and_current():
    categories = [f"{i:05d}" + "x" * 2000 for i in range(5000)]
    a = alert(reference={"categories": categories, "proportions": [0.0002] * 5000})
    record = a.to_dict(NOW_MS, max_bytes=LIMIT)
    assert len(orjson.dumps(record)) <= LIMIT
    full = orjson.dumps(dict(a.reference))
    assert record["reference"] == {"truncated": True, "bytes": len(full), "sha256": sha(full)}
    assert record["current"]["truncated"] is True
    assert "reference" in record["truncated"]["fields"]
    ALERT_SCHEMA.validate(orjson.loads(orjson.dumps(record)))


# --- the publisher against a real broker ---------------------------------------------------------------


def publisher(broker, alert_topic, dead_letter_topic, **kw):
    metrics = Metrics(CollectorRegistry())
    settings = logged({"bootstrap.servers": broker.address, "enable.idempotence": True, "acks": "all",
                       "linger.ms": 5, **kw.pop("settings", {})})
    return Publisher(settings, alert_topic, dead_letter_topic, metrics=metrics, **kw), metrics


def failures(metrics, topic, reason):
    return metrics.registry.get_sample_value("stream_monitor_publish_failures_total",
                                             {"topic": topic, "reason": reason}) or 0


def test_an_alert_the_broker_refuses_is_dead_lettered_and_counted(broker):
    dlq = unique("dlq")
    create_topics(broker.address, {dlq: 1})
    refused = "not a valid topic!"  # the broker answers TOPIC_EXCEPTION: a permanent delivery error
    pub, metrics = publisher(broker, refused, dlq)
    a = alert()
    pub.alert(a)
    pub.confirm(timeout=30)  # no PublishError
    pub.close()
    assert failures(metrics, refused, "TOPIC_EXCEPTION") == 1
    (message,) = read_topic(broker.address, dlq, 1)
    letter = orjson.loads(message.value())
    DEAD_LETTER_SCHEMA.validate(letter)
    assert letter["reason"] == "undeliverable_alert" and letter["alert_id"] == a.alert_id
    assert a.alert_id in letter["error"] and "TOPIC_EXCEPTION" in letter["error"]
    assert (letter["topic"], letter["partition"], letter["offset"]) == (refused, 0, 1234)
    assert orjson.loads(base64.b64decode(letter["value"]))["alert_id"] == a.alert_id


def test_a_dead_letter_the_broker_refuses_is_sent_bare_then_dropped_and_counted(broker):
    refused = "not a valid topic either!"
    pub, metrics = publisher(broker, unique("alerts"), refused)
    raw = RawMessage("ml.inference", 0, 5, b"junk", key=b"k", headers=(("h", b"v"),))
    pub.dead_letter(raw, DeadLetter("not_json", "cannot parse"))
    pub.confirm(timeout=30)
    pub.close()
    # the full letter (refused by the broker), then its bare form (refused by librdkafka, which now knows)
    assert failures(metrics, refused, "TOPIC_EXCEPTION") == 1
    assert failures(metrics, refused, "_UNKNOWN_TOPIC") == 1


def test_msg_size_too_large_raised_by_librdkafka_itself_is_handled(broker):
    """The producer's own check (produce() raising MSG_SIZE_TOO_LARGE) for a message the service did not
    cut: the alert is dead-lettered instead, nothing is raised, confirm() completes."""
    dlq = unique("dlq")
    create_topics(broker.address, {dlq: 1})
    pub, metrics = publisher(broker, unique("alerts"), dlq, settings={"message.max.bytes": 100_000})
    a = alert()
    value = orjson.dumps(a.to_dict(NOW_MS)) + b" " * 150_000  # past the producer's limit, as a bug could make it
    pub._send(_Out(pub.alert_topic, b"shop", value, None, f"alert {a.alert_id}",
                   lambda reason: pub._alert_letter(a, value, reason)))
    pub.confirm(timeout=30)
    pub.close()
    assert failures(metrics, pub.alert_topic, "MSG_SIZE_TOO_LARGE") == 1
    (message,) = read_topic(broker.address, dlq, 1)
    letter = orjson.loads(message.value())
    assert letter["reason"] == "undeliverable_alert" and "MSG_SIZE_TOO_LARGE" in letter["error"]
    assert letter["value_truncated"] is True and letter["value_bytes"] == len(value)


# --- SIGTERM during a broker outage: the waits end on request -------------------------------------------


@pytest.fixture
def paused_broker(tmp_path):
    own = start_broker(str(tmp_path))
    create_topics(own.address, {"alerts": 1, "dlq": 1})
    yield own
    os.kill(own.pid, signal.SIGCONT)
    own.stop()


def stop_after(seconds: float) -> tuple[list, object]:
    flag = []
    timer = threading.Timer(seconds, lambda: flag.append(time.monotonic()))
    timer.start()
    return flag, timer


def test_confirm_ends_with_stop_requested_soon_after_the_flag(paused_broker):
    flag, timer = stop_after(1.0)
    pub, _ = publisher(paused_broker, "alerts", "dlq", stop_requested=lambda: bool(flag))
    pub.confirm(timeout=30)  # the producer is connected
    os.kill(paused_broker.pid, signal.SIGSTOP)
    pub.alert(alert())
    with pytest.raises(StopRequested):
        pub.confirm()  # would wait broker_outage_seconds (120 s)
    ended = time.monotonic()
    timer.join()
    assert ended - flag[0] < 1.0
    pub.close()  # gives up on the undelivered alert at once (it was never confirmed, so never saved)
    assert time.monotonic() - ended < 2.0


def test_backpressure_wait_ends_with_stop_requested(paused_broker):
    flag, timer = stop_after(1.0)
    pub, _ = publisher(paused_broker, "alerts", "dlq", stop_requested=lambda: bool(flag),
                       settings={"queue.buffering.max.messages": 2})
    pub.confirm(timeout=30)
    os.kill(paused_broker.pid, signal.SIGSTOP)
    with pytest.raises(StopRequested):
        for offset in range(10):  # the local queue fills up: _send waits for room
            pub.dead_letter(RawMessage("ml.inference", 0, offset, b"junk"), DeadLetter("not_json", "x"))
    ended = time.monotonic()
    timer.join()
    assert ended - flag[0] < 1.0
    pub.close()


# --- through the service: `stream-monitor run`, real broker and Redis --------------------------------------

STABLE = {"decisions": "partition", "reference": {"events": 300}, "detectors": {"psi": {"window": 300}}}
SHOP = {"decisions": "partition",
        "reference": {"events": 200}, "features": {"color": "categorical"}, "detectors": {"psi": {"window": 200}}}
HUGE_COLORS = [chr(65 + i) * 50 * KB for i in range(20)]  # top categories of 50 KB each


def feed(bootstrap: str, topic: str, records: list) -> dict[int, int]:
    """Like helpers.produce, with room for the 1 MB test messages (the local broker has no size limit)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                         "message.max.bytes": 4_000_000})
    return produce_records(producer, topic, ((0, key, value, headers) for key, value, headers in records),
                           flush_timeout=60)


def shop_events(count: int, drifted: bool) -> list[bytes]:
    return [orjson.dumps({"event_id": f"s{drifted}-{i}", "model_id": "shop",
                          "features": {"color": HUGE_COLORS[0 if drifted else i % 20]}}) for i in range(count)]


def message_bytes(message) -> int:
    return len(message.key() or b"") + len(message.value()) + sum(len(k) + len(v or b"")
                                                                 for k, v in (message.headers() or []))


@pytest.mark.parametrize("producer_limit", [None, 300_000], ids=["librdkafka-default", "message.max.bytes=300000"])
def test_poison_messages_and_huge_alerts_fit_and_monitoring_goes_on(producer_limit, broker, redis_server, tmp_path,
                                                                     monitors):
    """The crash loop of the issue: a 900 KB key, 2,000 headers, a 1 MB model_id, a 1 MB feature name and a
    PSI alert over 50 KB categories (cut by the warm-up's category bound). Each dead letter and alert fits the producer's message size
    (librdkafka's default, or a smaller ``message.max.bytes`` in [kafka.producer]) and says what was
    cut; the good events after them are processed (stored offset at the end)."""
    from stream_monitor.synthetic import generate

    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    good = lines(generate("stable", 1200, seed=5))
    cases = poison()
    cases["headers"] = cases["headers"]._replace(headers=tuple((f"h{i}", b"v" * 400) for i in range(2000)))
    records = [(b"stable", v, None) for v in good[:400]]
    records += [(raw.key, raw.value, list(raw.headers) or None) for raw in cases.values()]
    records += [(b"shop", v, None) for v in shop_events(200, False) + shop_events(250, True)]
    records += [(b"stable", v, None) for v in good[400:]]
    ends = feed(broker.address, topic, records)
    run = Run(broker, redis_server, tmp_path, topic, 1, "poison", models={"stable": STABLE, "shop": SHOP})
    limit = LIMIT
    if producer_limit is not None:
        with run.config.open("a") as config:
            config.write(f'\n[kafka.producer]\n"message.max.bytes" = {producer_limit}\n')
        limit = producer_limit - producer_limit // 8
    process = run.start(monitors)
    wait_for_offsets(run.store, topic, ends, processes=[process], timeout=180)
    assert process.process.poll() is None, "the service is still running"
    assert process.terminate() == 0
    log = process.log()
    assert "could not be produced" not in log and "Traceback" not in log

    letters = run.dead_letters()
    assert [orjson.loads(m.value())["offset"] for m in letters] == [400, 401, 402, 403]
    for message in letters:
        assert message_bytes(message) <= limit
        DEAD_LETTER_SCHEMA.validate(orjson.loads(message.value()))
    key, headers, model_id, feature = (orjson.loads(m.value()) for m in letters)
    assert key["key_truncated"] and key["key_bytes"] == 900_000 and letters[0].key() == b"k" * 1024
    assert headers["headers_truncated"] and headers["headers_count"] == 2000 and len(letters[1].headers()) <= 64
    assert model_id["reason"] == "unknown_model" and model_id["value_truncated"]
    assert feature["reason"] == "wrong_type" and feature["value_truncated"]
    assert all(len(letter["error"]) < 1_000 for letter in (model_id, feature))

    shop = [(m, orjson.loads(m.value())) for m in read_topic(broker.address, run.alert_topic, 1)]
    psi = [a for _, a in shop if a["model_id"] == "shop" and a["detector"] == "psi" and a["status"] == "firing"]
    assert psi, "the drift of shop.color raised a PSI alert"
    # the warm-up remembers a category value up to 256 characters (then its head and a hash), so the
    # alert's categories arrive already bounded; the 50 KB values never reach the alert
    categories = psi[0]["reference"]["categories"]
    assert len(categories) > 2 and all(len(c) <= 256 for c in categories)
    assert any(c.startswith("A" * 200) and "…" in c for c in categories)
    for message, alert_doc in shop:
        assert message_bytes(message) <= limit
        ALERT_SCHEMA.validate(alert_doc)
    (next_offset, _), = run.states().values()
    assert next_offset == ends[0]


def test_broker_restart_the_producer_is_replaced_and_dead_letters_flow_again(redis_server, tmp_path, monitors):
    """A memory-only broker killed and restarted on the same port: the idempotent producer would never
    deliver again (the service exited with PublishError). Now it is replaced; the dead letters of the
    input fed after the restart reach the new broker and the process stays up."""
    port = free_port()
    own = start_broker(str(tmp_path), port=port)
    try:
        topic = unique("inference")
        create_topics(own.address, {topic: 1})
        run = Run(own, redis_server, tmp_path, topic, 1, "restart", models={"stable": STABLE},
                  service={"producer_stall_seconds": 3.0, "broker_outage_seconds": 60.0})
        from stream_monitor.synthetic import generate

        good = lines(generate("stable", 2000, seed=6))
        before = [(b"stable", v, None) for v in good[:400]] + [(b"k", b"junk-before", None)] * 3
        ends = feed(own.address, topic, before)
        process = run.start(monitors)
        wait_for_offsets(run.store, topic, ends, processes=[process])
        assert len(run.dead_letters()) == 3

        own.process.kill()
        own.process.wait(10)
        own = start_broker(str(tmp_path), port=port)  # empty: every topic is gone
        create_topics(own.address, {topic: 1, run.alert_topic: 1, run.dead_letter_topic: 1})
        stored = stored_offset(run.store, topic, 0)
        after = [(b"stable", v, None) for v in good[400:400 + stored]] + [(b"k", b"junk-after", None)] * 3
        after += [(b"stable", v, None) for v in good[1000:1300]]
        ends = feed(own.address, topic, after)  # offsets from `stored` on are new to the service
        wait_for_offsets(run.store, topic, ends, processes=[process], timeout=120)
        deadline = time.monotonic() + 60
        letters = []
        while time.monotonic() < deadline and len(letters) < 3:
            letters = [orjson.loads(m.value()) for m in read_topic(own.address, run.dead_letter_topic, 1, idle=1.0)]
        assert [base64.b64decode(letter["value"]) for letter in letters] == [b"junk-after"] * 3
        assert [letter["offset"] for letter in letters] == [stored, stored + 1, stored + 2]
        assert process.process.poll() is None, "the service is still running"
        assert process.terminate() == 0
        assert "PublishError" not in process.log()
    finally:
        for p in monitors:
            p.close()
        own.stop()
