"""Input decoding and dead-letter reasons: errors as data, never raised."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.codec import decode
from stream_monitor.events import DeadLetter, InferenceEvent, LabelEvent, RawMessage, format_time

from ..support import examples

MODELS = frozenset({"fraud", "churn"})
T_20261127 = int(datetime(2026, 11, 27, 20, 44, 50, 123000, tzinfo=timezone.utc).timestamp() * 1000)
KAFKA_TS = T_20261127 + 1_500  # the message was written 1.5 s after its event happened


def raw(value, timestamp_ms: int | None = KAFKA_TS) -> RawMessage:
    if not isinstance(value, (bytes, type(None))):
        value = orjson.dumps(value)
    return RawMessage("ml.inference", 3, 42, value, key=b"fraud", timestamp_ms=timestamp_ms)


def run(value, max_bytes: int = 1_048_576, timestamp_ms: int | None = KAFKA_TS):
    return decode(raw(value, timestamp_ms), MODELS, max_bytes)


def event(**overrides):
    doc = {"event_id": "e1", "model_id": "fraud", "features": {"amount": 12.5}}
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()


def reason(value, **kw) -> str:
    out = run(value, **kw)
    assert isinstance(out, DeadLetter), out
    assert out.error  # a human-readable explanation is always there
    return out.reason


# --- valid events ----------------------------------------------------------------------------


def test_full_inference_event():
    """The contract's example inference event decodes field by field."""
    out = run({"event_id": "7f3c", "model_id": "fraud", "timestamp": "2026-11-27T20:44:50.123Z",
               "features": {"amount": 12.5, "country": "DE", "age": None, "is_new": True},
               "prediction": {"score": 0.83, "label": 1}, "latency_ms": 12.3})
    assert out == InferenceEvent(event_id="7f3c", model_id="fraud", timestamp_ms=T_20261127,
                                 features={"amount": 12.5, "country": "DE", "age": None, "is_new": True},
                                 score=0.83, predicted_label="1", latency_ms=12.3)


@pytest.mark.parametrize("prediction, score, label", [
    (0.7, 0.7, None),
    (3, 3.0, None),
    ("cat", None, "cat"),
    ({"score": 0.25}, 0.25, None),
    ({"label": "spam"}, None, "spam"),
    ({"label": True}, None, "true"),
    ({"label": 2.0}, None, "2"),
    ({"score": 1, "label": 0}, 1.0, "0"),
    ({}, None, None),
    (None, None, None),
])
def test_prediction_forms(prediction, score, label):
    """A prediction may be a number, a string or an object with score and/or label."""
    out = run(event(prediction=prediction))
    assert isinstance(out, InferenceEvent)
    assert (out.score, out.predicted_label) == (score, label)
    assert out.score is None or isinstance(out.score, float)


def test_latency_is_a_float_and_optional():
    """latency_ms is kept as a float; absent or null → None; zero is fine."""
    assert run(event(latency_ms=7)).latency_ms == 7.0
    assert run(event(latency_ms=0)).latency_ms == 0.0
    assert run(event(latency_ms=None)).latency_ms is None
    assert run(event()).latency_ms is None


def test_empty_features_object_is_valid():
    """An inference event with no features is still an inference event."""
    assert run(event(features={})).features == {}


def test_label_event():
    """A label event has `label` and no `features`."""
    out = run({"event_id": "7f3c", "model_id": "fraud", "label": 0, "timestamp": "2026-11-27T20:44:50.123Z"})
    assert out == LabelEvent(event_id="7f3c", model_id="fraud", timestamp_ms=T_20261127, label=0)
    assert run({"event_id": "e", "model_id": "churn", "label": "yes"}).label == "yes"
    assert run({"event_id": "e", "model_id": "churn", "label": 2.5}).label == 2.5


def test_features_win_over_label():
    """A document with both features and label is an inference event."""
    assert isinstance(run(event(label=1)), InferenceEvent)


# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize("timestamp, expected_ms", [
    ("2026-11-27T20:44:50.123Z", T_20261127),
    ("2026-11-27T21:44:50.123+01:00", T_20261127),
    ("2026-11-27T15:44:50.123-05:00", T_20261127),
    ("2026-11-27T20:44:50.123", T_20261127),  # naive → read as UTC
    ("2026-11-27T20:44:50Z", T_20261127 - 123),
    (T_20261127 / 1000, T_20261127),  # epoch seconds, float
    (1_795_812_290, 1_795_812_290_000),  # epoch seconds, int
    (0, 0),
])
def test_timestamp_forms(timestamp, expected_ms):
    """RFC 3339 (Z, offset, naive = UTC) and epoch seconds all give epoch milliseconds."""
    assert run(event(timestamp=timestamp)).timestamp_ms == expected_ms


def test_absent_timestamp_falls_back_to_kafka_timestamp():
    """No `timestamp` (or null) → the Kafka message timestamp, which may itself be absent."""
    assert run(event()).timestamp_ms == KAFKA_TS
    assert run(event(timestamp=None)).timestamp_ms == KAFKA_TS
    assert run(event(), timestamp_ms=None).timestamp_ms is None
    assert run({"event_id": "e", "model_id": "fraud", "label": 1}).timestamp_ms == KAFKA_TS


def test_a_time_ahead_of_its_kafka_message_by_more_than_the_limit_is_a_dead_letter():
    """No model server sees an event before it sends it: a time more than an hour (by default) ahead of
    the message's is a clock or time-zone error, and one such event would carry a partition's event-time
    watermark with it. Up to the limit is accepted; 0 turns the check off; without a Kafka timestamp
    there is nothing to compare with."""
    hour = 3_600_000
    assert run(event(timestamp=(KAFKA_TS + hour) / 1000)).timestamp_ms == KAFKA_TS + hour
    refused = run(event(timestamp=(KAFKA_TS + hour + 1) / 1000))
    assert refused == DeadLetter("timestamp_ahead", "timestamp 2026-11-27T21:44:51.624Z is 3600 s ahead of its Kafka "
                                 "message (2026-11-27T20:44:51.623Z): more than service.max_timestamp_ahead_seconds "
                                 "(3600) is a clock or time-zone error")
    next_year = {"event_id": "e", "model_id": "fraud", "label": 1, "timestamp": "2027-11-27T20:44:50Z"}
    assert run(next_year).reason == "timestamp_ahead"
    assert run(next_year, timestamp_ms=None).timestamp_ms == T_20261127 - 123 + 365 * 86_400_000
    assert decode(raw(next_year), MODELS, max_ahead_ms=0).timestamp_ms == T_20261127 - 123 + 365 * 86_400_000
    assert decode(raw(next_year), MODELS, max_ahead_ms=400 * 86_400_000).timestamp_ms is not None
    assert run(event(timestamp=0)).timestamp_ms == 0  # behind is late, not wrong


# --- dead letters: one test per reason ----------------------------------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_empty(value):
    """A tombstone or an empty value is `empty`."""
    assert reason(value) == "empty"


def test_too_large():
    """A value over max_bytes is `too_large`, even when it is valid JSON; at the limit it passes."""
    value = orjson.dumps(event())
    assert reason(value, max_bytes=len(value) - 1) == "too_large"
    assert isinstance(run(value, max_bytes=len(value)), InferenceEvent)
    assert reason(b"x" * 11, max_bytes=10) == "too_large"


@pytest.mark.parametrize("value", [b"{", b"not json", b" ", b'{"a": NaN}', b'{"a": Infinity}',
                                   b"{'a': 1}", b'{"a": 1} trailing'])
def test_not_json(value):
    """Anything that is not strict JSON — including NaN tokens — is `not_json`."""
    assert reason(value) == "not_json"


@pytest.mark.parametrize("value", [b"\xff\xfe", b'{"event_id": "\xff"}', "é".encode("latin-1")])
def test_not_utf8(value):
    """Bytes that are not UTF-8 are `not_utf8`."""
    assert reason(value) == "not_utf8"


@pytest.mark.parametrize("value", [b"[1, 2]", b'"fraud"', b"12", b"true", b"null"])
def test_not_object(value):
    """Valid JSON that is not an object is `not_object`."""
    assert reason(value) == "not_object"


@pytest.mark.parametrize("doc", [
    event(event_id=_DROP),
    event(event_id=None),
    event(model_id=_DROP),
    event(model_id=None),
    {"event_id": "e1", "model_id": "fraud"},
    {"event_id": "e1", "model_id": "fraud", "prediction": 0.5},
])
def test_missing_field(doc):
    """No event_id, no model_id, or neither features nor label → `missing_field`."""
    assert reason(doc) == "missing_field"


@pytest.mark.parametrize("doc", [
    event(event_id=17),
    event(event_id=""),
    event(model_id=["fraud"]),
    event(features=[1, 2]),
    event(features="amount=3"),
    event(features={"amount": {"value": 3}}),
    event(features={"tags": ["a"]}),
    event(prediction=[0.1, 0.9]),
    event(prediction=True),
    event(prediction={"score": "0.9"}),
    event(prediction={"score": True}),
    event(prediction={"label": [1]}),
    event(latency_ms=-1),
    event(latency_ms="12"),
    event(latency_ms=True),
    event(timestamp=True),
    event(timestamp="yesterday"),
    event(timestamp="2026-13-45T99:00:00Z"),
    event(timestamp={"s": 1}),
    {"event_id": "e1", "model_id": "fraud", "label": None},
    {"event_id": "e1", "model_id": "fraud", "label": {"y": 1}},
])
def test_wrong_type(doc):
    """A mistyped field is `wrong_type`."""
    assert reason(doc) == "wrong_type"


def test_unknown_model():
    """A model that is not configured is `unknown_model`, for inference and label events alike."""
    assert reason(event(model_id="pricing")) == "unknown_model"
    assert reason({"event_id": "e", "model_id": "pricing", "label": 1}) == "unknown_model"


# --- robustness -------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20)

RESULT_TYPES = (InferenceEvent, LabelEvent, DeadLetter)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data):
    """Any bytes decode to an event or a dead letter."""
    assert isinstance(decode(raw(data), MODELS), RESULT_TYPES)


@settings(max_examples=examples(300), deadline=None)
@given(_json)
def test_arbitrary_json_never_raises(value):
    """Any JSON value decodes to an event or a dead letter."""
    assert isinstance(decode(raw(json.dumps(value).encode()), MODELS), RESULT_TYPES)


@settings(max_examples=examples(300), deadline=None)
@given(st.fixed_dictionaries(
    {"event_id": st.text(max_size=3) | _json, "model_id": st.sampled_from(["fraud", "churn"])},
    optional={"features": st.dictionaries(st.text(max_size=4), _json, max_size=4) | _json,
              "prediction": _json, "latency_ms": _json, "label": _json, "timestamp": _json}))
def test_arbitrary_event_shaped_objects_never_raise(doc):
    """Objects that look like events, with arbitrary field values, never make decode raise."""
    assert isinstance(decode(raw(json.dumps(doc).encode()), MODELS), RESULT_TYPES)


# --- timestamps that cannot be represented ------------------------------------------------------


@pytest.mark.parametrize("timestamp", [1e308, -1e308, 1.7976931348623157e308])
def test_huge_epoch_timestamp_does_not_raise(timestamp):
    """`{"timestamp": 1e308}` is valid JSON; decode must dead-letter it, not raise OverflowError.

    (the service never stops or stalls on bad input.)
    """
    out = run(event(timestamp=timestamp))
    assert isinstance(out, DeadLetter)
    assert out.reason == "wrong_type"


@pytest.mark.parametrize("timestamp", [1e300, 1e20, -1e20, 253402300800, "9999-12-31T23:59:59-12:00"])
def test_decoded_event_time_is_always_formattable(timestamp):
    """An accepted event's time must be printable as an alert's `event_time`.

    Otherwise Alert.to_dict raises when a detector fires at that event, crashing the
    publisher (and, after restart, crashing again at the same offset).
    """
    out = run(event(timestamp=timestamp))
    if isinstance(out, DeadLetter):
        assert out.reason == "wrong_type"
    else:
        format_time(out.timestamp_ms)


def test_all_numeric_features_come_with_a_float64_copy_in_key_order():
    """The engine stacks these copies instead of reading a Python object per value; anything that is
    not a number (a bool, a string, a null) means no copy, and the columns read the dict."""
    event = decode(RawMessage("t", 0, 0, b'{"event_id": "e", "model_id": "fraud", '
                                          b'"features": {"b": 2, "a": 0.5}}'), {"fraud"})
    assert list(event.numbers) == [2.0, 0.5] and event.layout == ("b", "a")
    for odd in (b"true", b'"x"', b"null"):
        event = decode(RawMessage("t", 0, 0, b'{"event_id": "e", "model_id": "fraud", "features": {"b": 2, '
                                              b'"a": ' + odd + b"}}"), {"fraud"})
        assert event.numbers is None and event.layout is None
    assert event == event._replace(numbers=[1.0])  # the copy is not part of the event's meaning


# --- event_id length: the id becomes a Redis key of the label join ---------------------------------


@pytest.mark.parametrize("doc", [event(event_id="x" * 256), {"event_id": "é" * 128, "model_id": "fraud", "label": 1}],
                         ids=["inference-256-ascii", "label-256-bytes-of-two-byte-characters"])
def test_event_id_at_the_limit_is_accepted(doc):
    assert isinstance(run(doc), (InferenceEvent, LabelEvent))


@pytest.mark.parametrize("doc, size", [(event(event_id="x" * 257), 257),
                                       ({"event_id": "é" * 129, "model_id": "fraud", "label": 1}, 258),
                                       ({"event_id": "e" * 50_000, "model_id": "fraud", "label": 0}, 50_000)],
                         ids=["inference-257", "label-258-bytes-in-129-characters", "label-50-kb"])
def test_event_id_over_the_limit_is_dead_lettered_naming_its_size(doc, size):
    out = run(doc)
    assert isinstance(out, DeadLetter) and out.reason == "event_id_too_long", out
    assert out.error.startswith(f"event_id is {size} bytes, over the limit of 256 (service.max_event_id_bytes)")
    assert len(out.error) < 400, "the error quotes the head of the id only"


def test_event_id_limit_is_a_parameter():
    message = raw(event(event_id="x" * 300))
    assert decode(message, MODELS, max_event_id_bytes=300).event_id == "x" * 300
    assert decode(message, MODELS, max_event_id_bytes=299).reason == "event_id_too_long"
