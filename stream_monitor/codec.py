"""Bytes → :class:`InferenceEvent` | :class:`LabelEvent` | :class:`DeadLetter` (errors as data).

>>> raw = RawMessage("ml.inference", 0, 7, b'{"event_id": "e1", "model_id": "fraud", "features": {"amount": 3}}')
>>> decode(raw, {"fraud"}).features
{'amount': 3}
>>> decode(RawMessage("ml.inference", 0, 8, b'[1, 2]'), {"fraud"})
DeadLetter(reason='not_object', error='expected a JSON object, got array')
"""

from __future__ import annotations

from array import array

from datetime import datetime, timezone
from typing import Any, Collection

import orjson

from .events import DeadLetter, InferenceEvent, LabelEvent, RawMessage, format_time

Decoded = InferenceEvent | LabelEvent | DeadLetter

_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
                    bool: "boolean", type(None): "null"}


def decode(message: RawMessage, known_models: Collection[str], max_bytes: int = 1_048_576,
           max_features: int = 1_000, max_event_id_bytes: int = 256, max_ahead_ms: int = 3_600_000) -> Decoded:
    """Decode one input message; never raises for bad input. ``max_ahead_ms``: how far an event's time may
    be ahead of its Kafka message's (0: unchecked)."""
    value = message.value
    refused = size_refusal(value, max_bytes)
    if refused is not None:
        return refused
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        reason = "not_utf8" if "UTF-8" in str(exc) else "not_json"
        return DeadLetter(reason, f"cannot parse JSON: {exc}")
    if not isinstance(doc, dict):
        return DeadLetter("not_object", f"expected a JSON object, got {_type_name(doc)}")
    try:
        return _event(doc, known_models, message.timestamp_ms, max_features, max_event_id_bytes, max_ahead_ms)
    except _Invalid as invalid:
        return invalid.letter


def size_refusal(value: bytes | None, max_bytes: int) -> DeadLetter | None:
    """Why a message's value is refused before it is parsed (none, or more than ``max_bytes``), or None."""
    if not value:
        return DeadLetter("empty", "message has no value (tombstone or empty)")
    if len(value) > max_bytes:
        return DeadLetter("too_large", f"message is {len(value)} bytes, over the limit of {max_bytes}")
    return None


class _Invalid(Exception):
    def __init__(self, reason: str, error: str):
        self.letter = DeadLetter(reason, error)


def _event(doc: dict[str, Any], known_models: Collection[str], kafka_timestamp_ms: int | None,
           max_features: int = 1_000, max_event_id_bytes: int = 256, max_ahead_ms: int = 3_600_000):
    event_id = doc.get("event_id")
    if event_id.__class__ is not str or not event_id:  # the common case costs one lookup and one check
        event_id = _required_string(doc, "event_id")
    if len(event_id) * 4 > max_event_id_bytes and len(event_id.encode("utf-8", "surrogatepass")) > max_event_id_bytes:
        raise _Invalid("event_id_too_long", f"event_id is {len(event_id.encode('utf-8', 'surrogatepass'))} bytes, "
                                            f"over the limit of {max_event_id_bytes} (service.max_event_id_bytes): "
                                            f"{_quote(event_id)}")
    model_id = doc.get("model_id")
    if model_id.__class__ is not str or not model_id:
        model_id = _required_string(doc, "model_id")
    if model_id not in known_models:
        raise _Invalid("unknown_model", f"model_id {_quote(model_id)} is not configured (known: {_names(known_models)})")
    timestamp_ms = _timestamp(doc.get("timestamp"), kafka_timestamp_ms, max_ahead_ms)
    if "features" not in doc and "label" in doc:
        label = doc["label"]
        if not isinstance(label, (str, int, float)):  # bool is an int
            raise _Invalid("wrong_type", f"label must be a number, string or boolean, got {_type_name(label)}")
        return LabelEvent(event_id, model_id, timestamp_ms, label)
    if "features" not in doc:
        raise _Invalid("missing_field", "an inference event needs 'features' (a label event needs 'label')")
    features = doc["features"]
    if not isinstance(features, dict):
        raise _Invalid("wrong_type", f"features must be an object, got {_type_name(features)}")
    if len(features) > max_features:
        raise _Invalid("too_many_features", f"{len(features)} features, over the limit of {max_features} "
                                            "(service.max_features_per_event)")
    kinds = set(map(type, features.values()))  # one C-level pass
    if not kinds <= _SCALAR_TYPES:  # the loop only names the culprit
        for name, value in features.items():
            if isinstance(value, (dict, list)):
                raise _Invalid("wrong_type", f"feature {_quote(name)} must be a number, string, boolean or null, "
                                             f"got {_type_name(value)}")
    score, predicted_label = _prediction(doc.get("prediction"))
    latency = doc.get("latency_ms")
    if latency is not None and (not _is_number(latency) or latency < 0):
        raise _Invalid("wrong_type", f"latency_ms must be a number >= 0, got {_quote(latency)}")
    numbers = layout = None
    if kinds <= NUMBER_TYPES and features:
        numbers, layout = array("d", features.values()), tuple(features)
    return InferenceEvent(event_id, model_id, timestamp_ms, features, score, predicted_label,
                          None if latency is None else float(latency), numbers, layout)


_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})  # what orjson gives for JSON scalars
NUMBER_TYPES = frozenset({int, float})  # bool is its own type here: not a number


def _required_string(doc: dict[str, Any], key: str) -> str:
    if key not in doc or doc[key] is None:
        raise _Invalid("missing_field", f"required field {key!r} is missing")
    value = doc[key]
    if not isinstance(value, str):
        raise _Invalid("wrong_type", f"{key} must be a string, got {_type_name(value)}")
    if not value:
        raise _Invalid("wrong_type", f"{key} must not be empty")
    return value


def _prediction(prediction: Any) -> tuple[float | None, str | None]:
    if prediction.__class__ is dict and len(prediction) == 1:  # the common {"score": <float>}
        score = prediction.get("score")
        if score.__class__ is float:
            return score, None
    if prediction is None:
        return None, None
    if _is_number(prediction):
        return float(prediction), None
    if isinstance(prediction, str):
        return None, prediction
    if isinstance(prediction, dict):
        score = prediction.get("score")
        label = prediction.get("label")
        if score is not None and not _is_number(score):
            raise _Invalid("wrong_type", f"prediction.score must be a number, got {_type_name(score)}")
        if label is not None and not isinstance(label, (str, int, float)):
            raise _Invalid("wrong_type", f"prediction.label must be a number or string, got {_type_name(label)}")
        return (None if score is None else float(score)), (None if label is None else category(label))
    raise _Invalid("wrong_type", f"prediction must be a number, string or object, got {_type_name(prediction)}")


# Timestamps must be representable in RFC 3339 (years 1..9999) to appear in alerts.
_MIN_MS = int(datetime(1, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
_MAX_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc).timestamp() * 1000)


def _timestamp(value: Any, kafka_timestamp_ms: int | None, max_ahead_ms: int = 3_600_000) -> int | None:
    if value is None:
        return kafka_timestamp_ms
    epoch_ms = None
    try:
        if _is_number(value):
            epoch_ms = int(round(value * 1000))
        elif isinstance(value, str):
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:  # RFC 3339 requires an offset; read a bare time as UTC
                moment = moment.replace(tzinfo=timezone.utc)
            epoch_ms = int(moment.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        epoch_ms = None
    if epoch_ms is None or not _MIN_MS <= epoch_ms <= _MAX_MS:
        raise _Invalid("wrong_type", f"timestamp must be an RFC 3339 string or epoch seconds between the years "
                                     f"1 and 9999, got {value!r:.80}")
    ahead = time_ahead(epoch_ms, kafka_timestamp_ms, max_ahead_ms, "timestamp")
    if ahead is not None:
        raise _Invalid("timestamp_ahead", ahead)
    return epoch_ms


def time_ahead(epoch_ms: int, kafka_timestamp_ms: int | None, max_ahead_ms: int, field: str) -> str | None:
    """Why an event time is refused as too far ahead of its Kafka message's timestamp, or None.

    >>> time_ahead(1_800_000_000_000 + 7_200_000, 1_800_000_000_000, 3_600_000, "timestamp")
    'timestamp 2027-01-15T10:00:00.000Z is 7200 s ahead of its Kafka message (2027-01-15T08:00:00.000Z): more than service.max_timestamp_ahead_seconds (3600) is a clock or time-zone error'
    """
    if not max_ahead_ms or kafka_timestamp_ms is None or epoch_ms - kafka_timestamp_ms <= max_ahead_ms:
        return None
    return (f"{field} {format_time(epoch_ms)} is {(epoch_ms - kafka_timestamp_ms) / 1000:.0f} s ahead of its Kafka "
            f"message ({format_time(kafka_timestamp_ms)}): more than service.max_timestamp_ahead_seconds "
            f"({max_ahead_ms / 1000:g}) is a clock or time-zone error")


def category(value: Any) -> str:
    """The categorical key of a value: JSON spelling for booleans and numbers.

    >>> [category(v) for v in (True, 1, 1.5, "DE")]
    ['true', '1', '1.5', 'DE']
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


QUOTE_CHARS = 200  # an error text quotes at most this many characters of a bad value or name
QUOTE_NAMES = 10  # … and lists at most this many configured names


def _quote(value: Any) -> str:
    """``repr(value)``, its head only when long: an error text stays small whatever the input.

    >>> _quote("x" * 1_000_000)[-30:]
    'x… (1000002 characters in all)'
    """
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}… ({len(text)} characters in all)"


def _names(names: Collection[str]) -> str:
    ordered = sorted(names)
    shown = ", ".join(_quote(n) for n in ordered[:QUOTE_NAMES])
    return f"[{shown}]" if len(ordered) <= QUOTE_NAMES else f"[{shown}, … {len(ordered) - QUOTE_NAMES} more]"


def _type_name(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
