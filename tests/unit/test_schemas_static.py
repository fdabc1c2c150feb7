"""Static tests of the JSON Schemas in schemas/: hand-written messages, no service."""

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from ..support import logged

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_NAMES = ["inference_event", "label_event", "alert", "dead_letter", "oip", "retraining_request"]
SHA = "3f" * 32

INFERENCE = {
    "event_id": "7f3c9a",
    "model_id": "fraud",
    "timestamp": "2026-11-27T20:44:50.123Z",
    "features": {"amount": 12.5, "country": "DE", "age": None, "is_new": True, "n": 3},
    "prediction": {"score": 0.83, "label": 1},
    "latency_ms": 12.3,
}
LABEL = {"event_id": "7f3c9a", "model_id": "fraud", "label": 0, "timestamp": "2026-11-28T08:00:00+01:00"}
ALERT = {
    "alert_id": SHA,
    "status": "firing",
    "severity": "critical",
    "model_id": "fraud",
    "signal": "feature",
    "name": "amount",
    "detector": "psi",
    "statistic": 0.31,
    "threshold": 0.25,
    "reference": {"edges": [1.0, 5.0, 20.0], "proportions": [0.25, 0.25, 0.25, 0.25]},
    "current": {"proportions": [0.1, 0.1, 0.2, 0.6], "events": 5000},
    "partition": 3,
    "offset": 123456,
    "event_time": "2026-11-27T20:44:50.123Z",
    "detected_at": "2026-11-27T20:44:50.500Z",
    "message": "PSI of fraud.amount is 0.31 (critical ≥ 0.25) over the last 5000 events",
}
DEAD_LETTER = {
    "reason": "not_json",
    "error": "Expecting value: line 1 column 1 (char 0)",
    "topic": "ml.inference",
    "partition": 0,
    "offset": 42,
    "received_at": "2026-11-27T20:44:51.000Z",
    "value": "bm90IGpzb24=",
    "key": "ZnJhdWQ=",
    "headers": [{"key": "trace-id", "value": "YWJj"}, {"key": "empty", "value": None}],
    "timestamp_ms": 1795812290123,
}
OIP_REQUEST = {"id": "r1", "inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP32", "data": [[1.5, 2]]}]}
RETRAINING_REQUEST = {
    "request_id": SHA, "model_id": "fraud", "incident": SHA, "reason": "drift",
    "message": "retrain fraud: critical drift of 1 features (amount)",
    "evidence": {"alerts": [{"alert_id": SHA, "signal": "feature", "name": "amount", "detector": "psi",
                             "severity": "critical", "statistic": 0.31, "threshold": 0.25, "partition": 0,
                             "offset": 5, "event_time": "2026-11-27T20:44:50.123Z"}],
                 "alert_ids": [SHA], "drifted_features": ["amount"],
                 "window": {"partitions": [0], "first_offset": 5, "last_offset": 5,
                            "first_event_time": "2026-11-27T20:44:50.123Z",
                            "last_event_time": "2026-11-27T20:44:50.123Z"}},
    "policy": {"min_drifted_features": 1}, "requested_at": "2026-11-27T20:44:51.000Z"}
GOOD = {"inference_event": INFERENCE, "label_event": LABEL, "alert": ALERT, "dead_letter": DEAD_LETTER,
        "oip": OIP_REQUEST, "retraining_request": RETRAINING_REQUEST}


def load(name):
    """Read schemas/<name>.json."""
    return json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))


def validator(name):
    """A draft 2020-12 validator with format checking for the named schema."""
    return Draft202012Validator(load(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def with_changes(base, drop=(), **changes):
    """A deep copy of base without the keys in drop and with changes applied."""
    out = copy.deepcopy(base)
    for key in drop:
        del out[key]
    out.update(changes)
    return out


def assert_valid(name, instance):
    errors = [e.message for e in validator(name).iter_errors(instance)]
    assert not errors, errors


def assert_invalid(name, instance):
    assert not validator(name).is_valid(instance), instance


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name):
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://stream-monitor.dev/schemas/{name}.json"
    assert schema["title"] and schema["description"]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_good_example_validates(name):
    assert_valid(name, GOOD[name])


# --- inference events -------------------------------------------------------

@pytest.mark.parametrize(
    "instance",
    [
        with_changes(INFERENCE, drop=["timestamp", "prediction", "latency_ms"]),
        with_changes(INFERENCE, features={}),
        with_changes(INFERENCE, timestamp=1795812290.123),
        with_changes(INFERENCE, timestamp=1795812290),
        with_changes(INFERENCE, timestamp="2026-11-27T21:44:50+01:00"),
        with_changes(INFERENCE, prediction=0.83),
        with_changes(INFERENCE, prediction=1),
        with_changes(INFERENCE, prediction="fraud"),
        with_changes(INFERENCE, prediction={"score": 0.2}),
        with_changes(INFERENCE, prediction={"label": "fraud"}),
        with_changes(INFERENCE, latency_ms=0),
        with_changes(INFERENCE, request_id="abc", extra={"nested": [1, 2]}),
    ],
    ids=[
        "minimal", "no-features", "epoch-float", "epoch-int", "offset-tz", "pred-number",
        "pred-int", "pred-string", "pred-score-only", "pred-label-only", "zero-latency",
        "extra-fields",
    ],
)
def test_inference_event_accepts(instance):
    assert_valid("inference_event", instance)


@pytest.mark.parametrize(
    "instance",
    [
        with_changes(INFERENCE, drop=["event_id"]),
        with_changes(INFERENCE, drop=["model_id"]),
        with_changes(INFERENCE, drop=["features"]),
        with_changes(INFERENCE, event_id=""),
        with_changes(INFERENCE, event_id=7),
        with_changes(INFERENCE, model_id=""),
        with_changes(INFERENCE, model_id=None),
        with_changes(INFERENCE, features=[1, 2]),
        with_changes(INFERENCE, features={"amount": [1, 2]}),
        with_changes(INFERENCE, features={"amount": {"v": 1}}),
        with_changes(INFERENCE, timestamp="yesterday"),
        with_changes(INFERENCE, timestamp="2026-11-27"),
        with_changes(INFERENCE, timestamp="2026-11-27T20:44:50"),
        with_changes(INFERENCE, timestamp=True),
        with_changes(INFERENCE, prediction={}),
        with_changes(INFERENCE, prediction={"score": "high"}),
        with_changes(INFERENCE, prediction={"label": True}),
        with_changes(INFERENCE, prediction=[0.1, 0.9]),
        with_changes(INFERENCE, prediction=None),
        with_changes(INFERENCE, latency_ms=-1),
        with_changes(INFERENCE, latency_ms="12ms"),
        [INFERENCE],
        "not an object",
    ],
    ids=[
        "missing-event-id", "missing-model-id", "missing-features", "empty-event-id",
        "int-event-id", "empty-model-id", "null-model-id", "features-array",
        "feature-array-value", "feature-object-value", "timestamp-text", "timestamp-date-only",
        "timestamp-no-zone", "timestamp-bool", "pred-empty-object", "pred-score-string",
        "pred-label-bool", "pred-array", "pred-null", "negative-latency", "latency-string",
        "array", "string",
    ],
)
def test_inference_event_rejects(instance):
    assert_invalid("inference_event", instance)


# --- label events -----------------------------------------------------------

@pytest.mark.parametrize(
    "instance",
    [
        with_changes(LABEL, drop=["timestamp"]),
        with_changes(LABEL, label="fraud"),
        with_changes(LABEL, label=True),
        with_changes(LABEL, label=17.25),
        with_changes(LABEL, timestamp=1795812290),
        with_changes(LABEL, source="chargeback-feed"),
    ],
    ids=["no-timestamp", "string", "bool", "regression", "epoch", "extra-field"],
)
def test_label_event_accepts(instance):
    assert_valid("label_event", instance)


@pytest.mark.parametrize(
    "instance",
    [
        with_changes(LABEL, drop=["event_id"]),
        with_changes(LABEL, drop=["model_id"]),
        with_changes(LABEL, drop=["label"]),
        with_changes(LABEL, label=None),
        with_changes(LABEL, label=[0]),
        with_changes(LABEL, label={"value": 0}),
        with_changes(LABEL, event_id=""),
        with_changes(LABEL, timestamp="not a time"),
        with_changes(LABEL, features={"amount": 1.0}),
        with_changes(LABEL, features={}),
    ],
    ids=[
        "missing-event-id", "missing-model-id", "missing-label", "null-label", "array-label",
        "object-label", "empty-event-id", "bad-timestamp", "with-features", "with-empty-features",
    ],
)
def test_label_event_rejects(instance):
    assert_invalid("label_event", instance)


def test_inference_event_is_not_a_label_event():
    assert_invalid("label_event", with_changes(INFERENCE, label=1))


# --- alerts -----------------------------------------------------------------

DRIVERS = [{"name": "amount", "psi": 1.9, "association": 0.31}, {"name": "country", "psi": 0.74, "association": 0.2},
           {"name": "age", "psi": 0.02, "association": 0.05}]
WINDOW = {"first": "2026-11-27T20:44:50.000Z", "last": "2026-11-27T20:45:00.000Z", "first_bucket": 1795812290,
          "last_bucket": 1795812299, "events": {"ml.inference|0": 260, "ml.inference|1": 248}}


def test_a_model_level_alert_as_produced_validates():
    from stream_monitor.events import Alert  # noqa: PLC0415
    from stream_monitor.merge import window_alert_id  # noqa: PLC0415

    window = {"first": 1795812290000, "last": 1795812300000, "first_bucket": 1795812290,
              "last_bucket": 1795812299, "events": {"ml.inference|0": 510, "ml.inference|1": 490}}
    alert = Alert("firing", "critical", "fraud", "feature", "amount", "psi", 0.31, 0.25, {}, {}, None, None,
                  1795812300000, "PSI of fraud.amount is 0.31", window=window,
                  alert_id=window_alert_id("fraud", "feature", "amount", "psi", 1795812290, 1795812299, "firing"))
    record = alert.to_dict(1795812300500)
    assert_valid("alert", record)
    assert record["window"]["first"] == "2026-11-27T20:44:50.000Z" and record["partition"] is None


def test_alert_required_fields_are_exactly_the_contract():
    assert set(load("alert")["required"]) == set(ALERT)


@pytest.mark.parametrize(
    "instance",
    [
        with_changes(ALERT, status="resolved", severity="warning"),
        with_changes(ALERT, detector="adwin", signal="prediction", name="score"),
        with_changes(ALERT, detector="page_hinkley", signal="performance", name="error"),
        with_changes(ALERT, detector="p95_ceiling", signal="latency", name="latency_ms"),
        with_changes(ALERT, signal="label", name="label"),
        with_changes(ALERT, signal="data_quality", name="amount.missing_rate"),
        with_changes(ALERT, partition=-1, offset=0, event_time=None),
        with_changes(ALERT, statistic=3, threshold=50),
        with_changes(ALERT, reference={}, current={}),
        with_changes(ALERT, episode_started_at="2026-11-27T20:00:00Z"),
        with_changes(ALERT, incident=SHA),
        with_changes(ALERT, status="resolved", incident="0a" * 32),
        with_changes(ALERT, partition=None, offset=None, window=WINDOW),
        with_changes(ALERT, signal="prediction", name="score", drivers=DRIVERS),
        with_changes(ALERT, signal="performance", name="error", drivers=[]),
        with_changes(ALERT, signal="prediction", name="score",
                     drivers=[{"name": "amount", "psi": 1.9, "association": None}]),
    ],
    ids=[
        "resolved-warning", "adwin", "page-hinkley", "other-detector", "label", "data-quality",
        "replay", "integer-numbers", "empty-objects", "extra-field", "incident", "resolved-incident",
        "model-level", "drivers", "no-drivers", "drivers-without-association",
    ],
)
def test_alert_accepts(instance):
    assert_valid("alert", instance)


@pytest.mark.parametrize("field", sorted(ALERT))
def test_alert_rejects_missing_field(field):
    assert_invalid("alert", with_changes(ALERT, drop=[field]))


@pytest.mark.parametrize(
    "instance",
    [
        with_changes(ALERT, alert_id="abc123"),
        with_changes(ALERT, alert_id=SHA.upper()),
        with_changes(ALERT, alert_id=SHA + "0"),
        with_changes(ALERT, alert_id="z" * 64),
        with_changes(ALERT, status="open"),
        with_changes(ALERT, severity="info"),
        with_changes(ALERT, signal="features"),
        with_changes(ALERT, detector="PSI"),
        with_changes(ALERT, detector="page-hinkley"),
        with_changes(ALERT, detector=""),
        with_changes(ALERT, model_id=5),
        with_changes(ALERT, name=None),
        with_changes(ALERT, statistic="0.31"),
        with_changes(ALERT, threshold=None),
        with_changes(ALERT, reference=[]),
        with_changes(ALERT, current="5000 events"),
        with_changes(ALERT, partition=-2),
        with_changes(ALERT, partition=1.5),
        with_changes(ALERT, offset=-1),
        with_changes(ALERT, offset="123456"),
        with_changes(ALERT, event_time="2026-11-27 20:44"),
        with_changes(ALERT, event_time=1795812290.123),
        with_changes(ALERT, detected_at=None),
        with_changes(ALERT, detected_at="now"),
        with_changes(ALERT, message=None),
        with_changes(ALERT, incident=None),
        with_changes(ALERT, incident="abc123"),
        with_changes(ALERT, incident=SHA.upper()),
        with_changes(ALERT, partition=None, offset=None),
        with_changes(ALERT, partition=None, offset=5, window=WINDOW),
        with_changes(ALERT, offset=None),
        with_changes(ALERT, partition=None, offset=None, window={**WINDOW, "first": 1795812290}),
        with_changes(ALERT, partition=None, offset=None, window={k: v for k, v in WINDOW.items() if k != "events"}),
        with_changes(ALERT, drivers={"amount": 1.9}),
        with_changes(ALERT, drivers=[{"name": "amount", "psi": 1.9}]),
        with_changes(ALERT, drivers=[{"name": "amount", "psi": -1.0, "association": 0.2}]),
        with_changes(ALERT, drivers=[{"name": "amount", "psi": 1.9, "association": 1.5}]),
        with_changes(ALERT, drivers=DRIVERS * 2),
    ],
    ids=[
        "short-id", "upper-id", "long-id", "non-hex-id", "bad-status", "bad-severity",
        "bad-signal", "upper-detector", "dashed-detector", "empty-detector", "int-model",
        "null-name", "string-statistic", "null-threshold", "array-reference", "string-current",
        "partition-below-replay", "float-partition", "negative-offset", "string-offset",
        "bad-event-time", "epoch-event-time", "null-detected-at", "bad-detected-at", "null-message",
        "null-incident", "short-incident", "upper-incident",
        "merged-without-window", "merged-with-offset", "null-offset-only", "epoch-window-time", "window-without-events",
        "drivers-object", "driver-without-association", "negative-driver-psi", "association-over-one", "six-drivers",
    ],
)
def test_alert_rejects(instance):
    assert_invalid("alert", instance)


# --- dead letters -----------------------------------------------------------

@pytest.mark.parametrize(
    "reason", ["too_large", "empty", "not_utf8", "not_json", "not_object", "missing_field", "wrong_type", "unknown_model"]
)
def test_dead_letter_accepts_every_reason(reason):
    assert_valid("dead_letter", with_changes(DEAD_LETTER, reason=reason))


@pytest.mark.parametrize(
    "instance",
    [
        with_changes(DEAD_LETTER, value=None, key=None, headers=[], timestamp_ms=None),
        with_changes(DEAD_LETTER, value="", reason="empty"),
        with_changes(DEAD_LETTER, value="/w==", reason="not_utf8"),
        with_changes(DEAD_LETTER, value="YWJj", key="YQ=="),
        with_changes(DEAD_LETTER, instance="monitor-1"),
    ],
    ids=["tombstone", "empty-value", "binary-value", "padding", "extra-field"],
)
def test_dead_letter_accepts(instance):
    assert_valid("dead_letter", instance)


@pytest.mark.parametrize("field", sorted(DEAD_LETTER))
def test_dead_letter_rejects_missing_field(field):
    assert_invalid("dead_letter", with_changes(DEAD_LETTER, drop=[field]))


@pytest.mark.parametrize(
    "instance",
    [
        with_changes(DEAD_LETTER, reason="bad_json"),
        with_changes(DEAD_LETTER, error=None),
        with_changes(DEAD_LETTER, topic=""),
        with_changes(DEAD_LETTER, partition="0"),
        with_changes(DEAD_LETTER, partition=-1),
        with_changes(DEAD_LETTER, offset=4.2),
        with_changes(DEAD_LETTER, received_at="27/11/2026"),
        with_changes(DEAD_LETTER, value="not json"),
        with_changes(DEAD_LETTER, value="YWJ"),
        with_changes(DEAD_LETTER, value={"amount": 1}),
        with_changes(DEAD_LETTER, key="fraud!"),
        with_changes(DEAD_LETTER, headers={"trace-id": "YWJj"}),
        with_changes(DEAD_LETTER, headers=[{"key": "trace-id"}]),
        with_changes(DEAD_LETTER, headers=[{"value": "YWJj"}]),
        with_changes(DEAD_LETTER, headers=[{"key": "trace-id", "value": "abc"}]),
        with_changes(DEAD_LETTER, headers=[["trace-id", "YWJj"]]),
        with_changes(DEAD_LETTER, timestamp_ms=1795812290.123),
        with_changes(DEAD_LETTER, timestamp_ms="1795812290123"),
    ],
    ids=[
        "bad-reason", "null-error", "empty-topic", "string-partition", "negative-partition",
        "float-offset", "bad-received-at", "plain-text-value", "unpadded-value", "object-value",
        "bad-key", "headers-object", "header-without-value", "header-without-key",
        "header-not-base64", "header-pair", "float-timestamp", "string-timestamp",
    ],
)
def test_dead_letter_rejects(instance):
    assert_invalid("dead_letter", instance)


# --- real records cut to fit the producer's message size ---------------------------------------------------
# Built by the service's own functions (no broker): the optional fields they add must validate.

def _cut_dead_letters():
    import orjson

    from stream_monitor.events import DeadLetter, RawMessage, dead_letter_message

    raws = [RawMessage("ml.inference", 0, 1, b"x" * 200_000, key=b"k" * 5_000, headers=(("h", b"v" * 60_000),) * 3),
            RawMessage("ml.inference", 0, 2, None, key=b"k" * 50_000)]
    return [orjson.loads(dead_letter_message(raw, DeadLetter("not_json", "e" * 5_000), 1795812290123, 100_000)[2])
            for raw in raws]


def test_cut_dead_letters_validate():
    cut = _cut_dead_letters()
    assert cut[0]["key_truncated"] and cut[0]["headers_truncated"] and cut[0]["value_truncated"]
    assert cut[1]["key_truncated"] and cut[1]["value"] is None
    for record in cut:
        assert_valid("dead_letter", record)


def test_undeliverable_alert_letter_validates():
    from stream_monitor.events import Alert
    from stream_monitor.publisher import Publisher

    alert = Alert("firing", "critical", "fraud", "feature", "amount", "psi", 0.31, 0.25, {}, {}, 3, 123456, None,
                  "PSI of fraud.amount is 0.31")
    publisher = Publisher(logged({"bootstrap.servers": "127.0.0.1:1"}), "ml.alerts", "ml.dead-letters")
    out = publisher._alert_letter(alert, b"{" + b" " * 10_000 + b"}", "MSG_SIZE_TOO_LARGE: too large")
    record = json.loads(out.value)
    assert record["reason"] == "undeliverable_alert" and record["value_truncated"]
    assert_valid("dead_letter", record)


def test_cut_alert_validates():
    from stream_monitor.events import Alert

    alert = Alert("firing", "critical", "fraud", "feature", "n" * 5_000, "psi", 0.31, 0.25,
                  {"categories": ["c" * 5_000] * 3, "proportions": [0.5] * 2000}, {"events": 5}, 3, 123456, None,
                  "m" * 5_000)
    record = alert.to_dict(1795812290123, max_bytes=20_000)
    assert record["truncated"]["fields"] == ["message", "name", "reference.categories", "reference.proportions"]
    assert_valid("alert", record)
    assert_invalid("alert", with_changes(record, truncated={"fields": "name"}))


def test_dead_letter_truncation_fields_are_typed():
    assert_invalid("dead_letter", with_changes(DEAD_LETTER, key_truncated=False))
    assert_invalid("dead_letter", with_changes(DEAD_LETTER, value_sha256="abc"))
    assert_invalid("dead_letter", with_changes(DEAD_LETTER, headers_count=-1))
    assert_valid("dead_letter", with_changes(DEAD_LETTER, reason="undeliverable_alert", alert_id=SHA))


def test_engine_alerts_with_their_incident_validate():
    """Alerts as the engine raises them (a drift on a partition: several detectors, one incident) are valid,
    and each carries the alert_id of the incident's first firing alert."""
    from stream_monitor.codec import decode
    from stream_monitor.config import parse_config
    from stream_monitor.events import RawMessage
    from stream_monitor.partition import PartitionMonitor
    from stream_monitor.synthetic import generate

    config = parse_config({"models": {"fraud": {"decisions": "partition",
                                                "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}}})
    monitor = PartitionMonitor(config, 3, {})
    docs = generate("fraud", 5000, drift_at=3000)
    items = [(i, decode(RawMessage("t", 3, i, json.dumps(d).encode()), frozenset({"fraud"})), None)
             for i, d in enumerate(docs)]
    alerts = monitor.process_batch(items)
    assert len(alerts) > 5
    records = [a.to_dict(1795812290123) for a in alerts]
    for record in records:
        assert_valid("alert", record)
    assert {r["incident"] for r in records} == {records[0]["alert_id"]}


def test_retraining_request_refuses_an_unknown_reason_and_a_missing_evidence():
    assert_invalid("retraining_request", with_changes(RETRAINING_REQUEST, reason="boredom"))
    assert_invalid("retraining_request", with_changes(RETRAINING_REQUEST, drop=("evidence",)))
