"""The messages that flow through the service: decoded events, alerts, dead letters."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, NamedTuple

import orjson

FeatureValue = float | int | str | bool | None


class InferenceEvent(NamedTuple):
    """One model call: features, prediction and latency.

    Decoded events and raw messages are named tuples: immutable like a frozen
    dataclass, and built in a third of the time (one of each per message).
    """

    event_id: str
    model_id: str
    timestamp_ms: int | None
    features: Mapping[str, FeatureValue]
    score: float | None = None
    predicted_label: str | None = None
    latency_ms: float | None = None
    # When every feature is a number: their values as float64 in the document's key order, and that order
    # (read by the codec while the parsed values are in cache; the engine stacks them without touching
    # a Python object per value). Not part of the event's meaning: snapshots leave it out.
    numbers: Any = None
    layout: tuple[str, ...] | None = None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, InferenceEvent):
            return self[:7] == other[:7]  # the event, not the codec's numeric copy of its features
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # features are a dict


class LabelEvent(NamedTuple):
    """Ground truth for an earlier inference event, joined by (model_id, event_id)."""

    event_id: str
    model_id: str
    timestamp_ms: int | None
    label: str | float | bool


# Every dead letter's reason (the dead-letter schema's enum; one metrics label value each).
DEAD_LETTER_REASONS = ("too_large", "empty", "not_utf8", "not_json", "not_object", "missing_field", "wrong_type",
                       "unknown_model", "too_many_features", "event_id_too_long", "timestamp_ahead", "processing_error",
                       "wrong_datatype", "shape_mismatch", "unknown_tensor", "quarantined_partition",
                       "undeliverable_alert")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a message could not be processed (errors as data)."""

    reason: str  # one of DEAD_LETTER_REASONS
    error: str


class RawMessage(NamedTuple):
    """What the codec needs of a Kafka message; independent of confluent-kafka."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """A firing or resolved detection."""

    status: str
    severity: str
    model_id: str
    signal: str
    name: str
    detector: str
    statistic: float
    threshold: float
    reference: Mapping[str, Any]
    current: Mapping[str, Any]
    partition: int | None  # None (and offset None): a model-level decision over several partitions
    offset: int | None
    event_time_ms: int | None
    message: str
    alert_id: str = field(default="")
    incident: str | None = None  # its incident's id (stream_monitor/incidents.py; model-level: merge.incident_id)
    window: Mapping[str, Any] | None = None  # a model-level decision: what it decided on (docs/MODEL_DECISIONS.md)
    drivers: tuple[Mapping[str, Any], ...] | None = None  # the features that moved most (stream_monitor/drivers.py)
    segment: Mapping[str, str | None] | None = None  # a segment's detector: column → value (stream_monitor/segments.py)

    def __post_init__(self) -> None:
        if not self.alert_id:
            object.__setattr__(self, "alert_id", alert_id(
                self.model_id, self.signal, self.name, self.detector, self.partition, self.offset, self.status,
                self.segment))

    def to_dict(self, detected_at_ms: int, max_bytes: int | None = None) -> dict[str, Any]:
        """The alert JSON (schemas/alert.json), bounded by construction.

        A string longer than :data:`ALERT_MAX_CHARS` (in ``model_id``, ``name``, ``message``,
        ``reference``, ``current``) keeps its head and ends with a marker giving its length and
        sha256; a list or object with more than :data:`ALERT_MAX_ITEMS` entries keeps its first ones.
        What was cut is listed in ``truncated``. If the JSON is still over ``max_bytes``,
        ``reference`` and ``current`` are replaced by a summary (``{"truncated": true, "bytes": …,
        "sha256": …}``). ``alert_id`` is always that of the full values. Alerts within the bounds
        are unchanged (no ``truncated`` field).
        """
        cuts: list[str] = []
        record = {
            "alert_id": self.alert_id,
            "status": self.status,
            "severity": self.severity,
            "model_id": _bounded(self.model_id, "model_id", cuts),
            "signal": self.signal,
            "name": _bounded(self.name, "name", cuts),
            "detector": self.detector,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "reference": _bounded(dict(self.reference), "reference", cuts),
            "current": _bounded(dict(self.current), "current", cuts),
            "partition": self.partition,
            "offset": self.offset,
            "event_time": format_time(self.event_time_ms),
            "detected_at": format_time(detected_at_ms),
            "message": _bounded(self.message, "message", cuts),
        }
        if self.incident is not None:
            record["incident"] = self.incident
        if self.window is not None:
            record["window"] = _bounded({**self.window, "first": format_time(self.window["first"]),
                                         "last": format_time(self.window["last"])}, "window", cuts)
        if self.segment is not None:
            record["segment"] = _bounded(dict(self.segment), "segment", cuts)
        if self.drivers is not None:
            record["drivers"] = [{**d, "name": _bounded(d["name"], "drivers", cuts)} for d in self.drivers]
        if cuts:
            record["truncated"] = {"fields": sorted(set(cuts)), "cuts": len(cuts)}
        if max_bytes is not None and len(orjson.dumps(record)) > max_bytes:
            for part in ("reference", "current"):  # the only parts whose size the bounds above do not fix
                full = orjson.dumps(dict(getattr(self, part)), default=str)
                record[part] = {"truncated": True, "bytes": len(full), "sha256": hashlib.sha256(full).hexdigest()}
                cuts.append(part)
            record["truncated"] = {"fields": sorted(set(cuts)), "cuts": len(cuts)}
        return record


def alert_id(model_id: str, signal: str, name: str, detector: str,
             partition: int, offset: int, status: str, segment: Mapping[str, Any] | None = None) -> str:
    """A pure function of what identifies an alert (a segment's alert: its segment too; without one, the
    id is what it always was).

    >>> alert_id("fraud", "feature", "amount", "psi", 3, 123456, "firing")[:16]
    'b33b131dc4c4cae6'
    >>> alert_id("fraud", "feature", "amount", "psi", 3, 123456, "firing", {"country": "DE"})[:16]
    '8bf552ce4925ccbe'
    """
    parts = (model_id, signal, name, detector, str(partition), str(offset), status)
    if segment is not None:
        parts += (segment_id_text(segment),)
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def segment_words(segment: Mapping[str, Any]) -> str:
    """A segment in a few words, as logs, pages and labels show it: ``country=DE,device=ios`` (columns
    sorted; null for a missing value).

    >>> segment_words({"device": None, "country": "DE"})
    'country=DE,device=null'
    """
    return ",".join(f"{column}={'null' if segment[column] is None else segment[column]}" for column in sorted(segment))


def segment_id_text(segment: Mapping[str, Any]) -> str:
    """A segment as exact text (sorted JSON) for ids and stored keys."""
    return orjson.dumps(dict(segment), option=orjson.OPT_SORT_KEYS).decode()


ALERT_MAX_CHARS = 1_024  # longer strings in an alert are cut to this many characters plus a marker
ALERT_MAX_ITEMS = 1_000  # longer lists (e.g. categories) and larger objects in an alert keep this many entries


def _bounded(value: Any, path: str, cuts: list[str]) -> Any:
    """``value`` with long strings and long lists/objects cut (each cut's path appended to ``cuts``);
    the very object when nothing needed cutting, so a normal alert serialises exactly as before."""
    if isinstance(value, str):
        if len(value) <= ALERT_MAX_CHARS:
            return value
        cuts.append(path)
        return cut_text(value, ALERT_MAX_CHARS)
    if isinstance(value, (list, tuple)):
        items = value
        if len(items) > ALERT_MAX_ITEMS:
            cuts.append(path)
            items = items[:ALERT_MAX_ITEMS]
        bounded = [_bounded(v, path, cuts) for v in items]
        if items is value and all(a is b for a, b in zip(bounded, value)):
            return value
        return bounded
    if isinstance(value, dict):
        pairs = list(value.items())
        if len(pairs) > ALERT_MAX_ITEMS:
            cuts.append(path)
            pairs = pairs[:ALERT_MAX_ITEMS]
        bounded = {_bounded(k, path, cuts) if isinstance(k, str) else k: _bounded(v, f"{path}.{k}"[:200], cuts)
                   for k, v in pairs}
        if len(pairs) == len(value) and all(bounded.get(k, _MISSING) is v for k, v in pairs):
            return value
        return bounded
    return value


_MISSING = object()


def cut_text(text: str, keep: int) -> str:
    """The head of a long text and a marker with its full length and sha256.

    >>> cut_text("abcdefgh", 3)
    'abc…[truncated: 8 characters in all, sha256 9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab]'
    """
    if len(text) <= keep:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[:keep]}…[truncated: {len(text)} characters in all, sha256 {digest}]"


# Dead letters: when one does not fit the producer's limit, these parts are cut (and the record says so).
LETTER_MAX_ERROR_CHARS = 1_000  # of the error text (always)
LETTER_KEEP_KEY_BYTES = 1_024  # of a key longer than this
LETTER_KEEP_HEADERS = 64  # headers kept of a message with more …
LETTER_KEEP_HEADER_BYTES = 1_024  # … or with a longer header value
LETTER_KEEP_HEADER_NAME_CHARS = 256  # … or a longer header name
LETTER_SHARE_HEADERS = 64 * 1_024  # headers are cut when they take more than this


def dead_letter_record(message: RawMessage, letter: DeadLetter, received_at_ms: int,
                       max_bytes: int | None = None) -> dict[str, Any]:
    """The dead-letter JSON (schemas/dead_letter.json): reason, error, where it came from, the original bytes.

    With ``max_bytes``, the record is cut to fit (see :func:`dead_letter_message`)."""
    return dead_letter_message(message, letter, received_at_ms, max_bytes)[0]


def dead_letter_message(message: RawMessage, letter: DeadLetter, received_at_ms: int, max_bytes: int | None = None
                        ) -> tuple[dict[str, Any], bytes | None, bytes, list[tuple[str, bytes | None]]]:
    """(record, Kafka key, Kafka value, Kafka headers) of a dead letter, the whole message within
    ``max_bytes`` (key + value + header names and values).

    The original key and headers travel both as the dead letter's own key and headers and, base64,
    in the record. A letter that does not fit is cut, in this order, until it does: a key over
    :data:`LETTER_KEEP_KEY_BYTES` to that many bytes (``key_truncated``, ``key_bytes``,
    ``key_sha256``); headers taking over :data:`LETTER_SHARE_HEADERS` to the first
    :data:`LETTER_KEEP_HEADERS`, each value to :data:`LETTER_KEEP_HEADER_BYTES` bytes and each name to
    :data:`LETTER_KEEP_HEADER_NAME_CHARS` characters (``headers_truncated``, ``headers_count``,
    ``headers_bytes``, ``headers_sha256``); the value to the head that fits (``value_truncated``,
    ``value_bytes``, ``value_sha256``). Each sha256 is of the original bytes; for headers, of the
    JSON array ``[[name, base64 value or null], …]`` written without spaces. A letter that fits is
    exactly as it always was.
    """
    key, value, headers = message.key, message.value, list(message.headers)
    record = {
        "reason": letter.reason,
        "error": cut_text(letter.error, LETTER_MAX_ERROR_CHARS),
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "received_at": format_time(received_at_ms),
        "timestamp_ms": message.timestamp_ms,
        "key": _b64(key),
        "value": _b64(value),
        "headers": [{"key": k, "value": _b64(v)} for k, v in headers],
    }
    body = orjson.dumps(record)
    if max_bytes is None or _message_bytes(key, body, headers) <= max_bytes:
        return record, key, body, headers
    if key is not None and len(key) > LETTER_KEEP_KEY_BYTES:
        record.update(key_truncated=True, key_bytes=len(key), key_sha256=hashlib.sha256(key).hexdigest())
        key = key[:LETTER_KEEP_KEY_BYTES]
        record["key"] = _b64(key)
        body = orjson.dumps(record)
    if _message_bytes(key, body, headers) > max_bytes and _headers_bytes(headers) * 7 // 3 > LETTER_SHARE_HEADERS:
        original = orjson.dumps([[k, _b64(v)] for k, v in headers])
        record.update(headers_truncated=True, headers_count=len(headers), headers_bytes=_headers_bytes(headers),
                      headers_sha256=hashlib.sha256(original).hexdigest())
        kept, spent = [], 0
        for name, data in headers[:LETTER_KEEP_HEADERS]:
            name, data = name[:LETTER_KEEP_HEADER_NAME_CHARS], None if data is None else data[:LETTER_KEEP_HEADER_BYTES]
            spent += _headers_bytes([(name, data)]) * 7 // 3 + 32
            if spent > LETTER_SHARE_HEADERS:
                break
            kept.append((name, data))
        headers = kept
        record["headers"] = [{"key": k, "value": _b64(v)} for k, v in headers]
        body = orjson.dumps(record)
    over = _message_bytes(key, body, headers) - max_bytes
    if over > 0 and value:  # base64 grows a value by a third: keep the head that fits
        keep = max(0, (len(record["value"]) - over) * 3 // 4 - 256)
        record.update(value=_b64(value[:keep]), value_truncated=True, value_bytes=len(value),
                      value_sha256=hashlib.sha256(value).hexdigest())
        body = orjson.dumps(record)
    return record, key, body, headers


def _headers_bytes(headers: list[tuple[str, bytes | None]]) -> int:
    return sum(len(k.encode("utf-8", "surrogatepass")) + len(v or b"") for k, v in headers)


def _message_bytes(key: bytes | None, value: bytes, headers: list[tuple[str, bytes | None]]) -> int:
    """The size the producer's ``message.max.bytes`` applies to, less its few bytes of framing."""
    return len(key or b"") + len(value) + _headers_bytes(headers) + 8 * len(headers)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def format_time(epoch_ms: int | None) -> str | None:
    """RFC 3339 UTC with milliseconds.

    >>> format_time(1795812290123)
    '2026-11-27T20:44:50.123Z'
    """
    if epoch_ms is None:
        return None
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=epoch_ms)
    return f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"  # %Y drops zeros
