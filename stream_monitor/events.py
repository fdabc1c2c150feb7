"""The messages that flow through the service: decoded events, alerts, dead letters."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, NamedTuple

FeatureValue = float | int | str | bool | None


class InferenceEvent(NamedTuple):
    """One model call: features, prediction and latency (CONTRACT §2).

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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a message could not be processed (errors as data)."""

    reason: str  # too_large | empty | not_utf8 | not_json | not_object | missing_field | wrong_type | unknown_model
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
    """A firing or resolved detection (CONTRACT §3)."""

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
    partition: int
    offset: int
    event_time_ms: int | None
    message: str
    alert_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.alert_id:
            object.__setattr__(self, "alert_id", alert_id(
                self.model_id, self.signal, self.name, self.detector, self.partition, self.offset, self.status))

    def to_dict(self, detected_at_ms: int) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "status": self.status,
            "severity": self.severity,
            "model_id": self.model_id,
            "signal": self.signal,
            "name": self.name,
            "detector": self.detector,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "reference": dict(self.reference),
            "current": dict(self.current),
            "partition": self.partition,
            "offset": self.offset,
            "event_time": format_time(self.event_time_ms),
            "detected_at": format_time(detected_at_ms),
            "message": self.message,
        }


def alert_id(model_id: str, signal: str, name: str, detector: str,
             partition: int, offset: int, status: str) -> str:
    """A pure function of what identifies an alert (CONTRACT §3).

    >>> alert_id("fraud", "feature", "amount", "psi", 3, 123456, "firing")[:16]
    'b33b131dc4c4cae6'
    """
    text = "\x1f".join((model_id, signal, name, detector, str(partition), str(offset), status))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dead_letter_record(message: RawMessage, letter: DeadLetter, received_at_ms: int) -> dict[str, Any]:
    """The dead-letter JSON (CONTRACT §4): reason, error, where it came from, the original bytes."""
    return {
        "reason": letter.reason,
        "error": letter.error,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "received_at": format_time(received_at_ms),
        "timestamp_ms": message.timestamp_ms,
        "key": _b64(message.key),
        "value": _b64(message.value),
        "headers": [{"key": k, "value": _b64(v)} for k, v in message.headers],
    }


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
