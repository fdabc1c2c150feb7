"""Alerts and dead letters out to Kafka, with delivery confirmed before state is saved.

- Every message fits the producer's limit (``message.max.bytes`` of ``[kafka.producer]``,
  librdkafka's default 1,000,000, less a margin for the protocol's framing): big contents are cut
  and the record says so (:meth:`Alert.to_dict`, :func:`dead_letter_message`).
- A message the producer or the broker refuses for good (too large, an invalid record or topic)
  never stops the loop: an alert is replaced by a small dead letter naming it
  (reason ``undeliverable_alert``), a dead letter by a minimal one (no key, headers or value, their
  sizes and sha256 kept); if that fails too it is dropped. Each is counted in
  ``stream_monitor_publish_failures_total{topic,reason}`` and logged (once a minute per reason).
- Transient delivery errors are retried until ``outage_seconds`` have passed without completing.
- A producer that makes no progress for ``stall_seconds`` while the broker answers metadata
  requests (an idempotent producer after a broker restart never recovers) is replaced by a new
  one, and everything not yet acknowledged is sent again (repeats are allowed, gaps are not).
- ``on_alert_delivered`` (the Alertmanager forwarder's ``offer``) hears of each alert once the broker has
  acknowledged it, never before, and never of one the broker refused.
- Every wait checks ``stop_requested`` at least every :data:`STOP_CHECK_SECONDS` and ends with
  :class:`StopRequested` when it is true (SIGTERM during an outage).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import Any, Callable

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from .errors import PublishError, StopRequested
from .events import Alert, DeadLetter, RawMessage, dead_letter_message
from .retraining import RetrainingRequest

log = logging.getLogger(__name__)

STOP_CHECK_SECONDS = 0.5
PRODUCER_DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes
FRAMING_MARGIN = 64 * 1024  # room for the record batch's framing (at most an eighth of a small limit)
LOG_EVERY_SECONDS = 60.0  # a refused message is logged at most this often per (topic, reason)
ALERT_LETTER_VALUE_BYTES = 4_096  # head of an undeliverable alert's JSON kept in its dead letter

# Delivery errors about the message itself: sending it again cannot succeed.
PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG,
    KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD, KafkaError.TOPIC_EXCEPTION,
    KafkaError.INVALID_TIMESTAMP, KafkaError._INVALID_ARG, KafkaError._BAD_MSG,
    KafkaError.RECORD_LIST_TOO_LARGE,
})


class _Out:
    """One message to deliver, and what to send instead if it is refused for good."""

    __slots__ = ("topic", "key", "value", "headers", "what", "fallback", "attempt", "record")

    def __init__(self, topic: str, key: bytes | None, value: bytes, headers: list | None, what: str,
                 fallback: Callable[[str], "_Out | None"] | None = None, record: dict[str, Any] | None = None):
        self.topic, self.key, self.value, self.headers = topic, key, value, headers
        self.what, self.fallback, self.attempt = what, fallback, 1
        self.record = record  # an alert's record: handed to ``on_alert_delivered`` once acknowledged


def _never() -> bool:
    return False


class Publisher:
    """Wraps the producer. ``confirm()`` returns only once every message sent so far is acknowledged
    (or, refused for good, replaced or dropped and counted)."""

    def __init__(self, settings: dict[str, Any], alert_topic: str, dead_letter_topic: str,
                 outage_seconds: float = 120.0, stall_seconds: float = 10.0, metrics: Any = None,
                 stop_requested: Callable[[], bool] = _never,
                 on_alert_delivered: Callable[[dict[str, Any]], None] | None = None, retraining_topic: str = ""):
        self.settings = dict(settings)
        self.retraining_topic = retraining_topic
        self.on_alert_delivered = on_alert_delivered
        self.outage_seconds = outage_seconds
        self.stall_seconds = stall_seconds
        self.metrics = metrics
        self.stop_requested = stop_requested
        limit = int(self.settings.get("message.max.bytes", PRODUCER_DEFAULT_MAX_BYTES))
        self.max_record_bytes = limit - min(FRAMING_MARGIN, limit // 8)
        self.alert_topic = alert_topic
        self.dead_letter_topic = dead_letter_topic
        self._producer = Producer(self.settings)
        self._generation = 0  # delivery reports of a replaced producer are ignored
        self._pending: dict[int, _Out] = {}  # sent, not acknowledged yet
        self._failed: list[tuple[_Out, KafkaError]] = []
        self._last_progress = time.monotonic()
        self._next_broker_check = 0.0
        self._logged: dict[tuple[str, str], float] = {}

    # --- sending --------------------------------------------------------------------------

    def alert(self, alert: Alert) -> dict[str, Any]:
        """Produce one alert; returns it as published."""
        key = alert.model_id.encode()
        record = alert.to_dict(int(time.time() * 1000), max_bytes=self.max_record_bytes - len(key))
        value = orjson.dumps(record)
        if "truncated" in record:
            self._count_truncated(self.alert_topic)
        self._send(_Out(self.alert_topic, key, value, None, _describe(alert),
                        lambda reason: self._alert_letter(alert, value, reason), record))
        return record

    def retraining(self, request: RetrainingRequest) -> dict[str, Any]:
        """Produce one retraining request to the retraining topic (key = model id); returns it as published.
        Like an alert it is confirmed before the state that says it was made is saved; one the broker refuses
        for good is dropped and counted."""
        key = request.model_id.encode()
        record = request.to_dict(int(time.time() * 1000), max_bytes=self.max_record_bytes - len(key))
        if "truncated" in record["evidence"]:
            self._count_truncated(self.retraining_topic)
        self._send(_Out(self.retraining_topic, key, orjson.dumps(record), None,
                        f"retraining request {request.request_id} of {request.model_id[:100]}"))
        return record

    def dead_letter(self, message: RawMessage, letter: DeadLetter) -> None:
        received_at = int(time.time() * 1000)
        record, key, value, headers = dead_letter_message(message, letter, received_at, self.max_record_bytes)
        if any(k.endswith("_truncated") for k in record):
            self._count_truncated(self.dead_letter_topic)
        what = f"dead letter of {message.topic}[{message.partition}]@{message.offset}"
        self._send(_Out(self.dead_letter_topic, key, value, headers or None, what,
                        lambda reason: self._minimal_letter(message, letter, received_at, reason)))

    def _alert_letter(self, alert: Alert, value: bytes, reason: str) -> _Out:
        """The dead letter of an alert the broker refused: which alert, why, and its JSON's head."""
        error = f"{_describe(alert)} could not be produced to {self.alert_topic}: {reason}"
        where = [n if isinstance(n, int) and n >= 0 else 0 for n in (alert.partition, alert.offset)]  # merged: null
        head = RawMessage(self.alert_topic, where[0], where[1], value[:ALERT_LETTER_VALUE_BYTES])
        record, _, body, _ = dead_letter_message(head, DeadLetter("undeliverable_alert", error),
                                                 int(time.time() * 1000), self.max_record_bytes)
        record["alert_id"] = alert.alert_id
        if len(value) > ALERT_LETTER_VALUE_BYTES:
            record.update(value_truncated=True, value_bytes=len(value), value_sha256=hashlib.sha256(value).hexdigest())
        return _Out(self.dead_letter_topic, alert.model_id.encode()[:1024], orjson.dumps(record), None,
                    f"dead letter of {alert.alert_id}")

    def _minimal_letter(self, message: RawMessage, letter: DeadLetter, received_at: int, reason: str) -> _Out:
        """A dead letter the broker refused, once more without key, headers and value (their sizes and
        sha256 kept), the refusal added to the error."""
        bare = RawMessage(message.topic, message.partition, message.offset, None if message.value is None else b"",
                          None, (), message.timestamp_ms)
        record, _, _, _ = dead_letter_message(bare, DeadLetter(letter.reason, letter.error), received_at)
        record["error"] = f"{record['error']} (the full dead letter could not be produced: {reason[:500]})"
        if message.key is not None:
            record.update(key_truncated=True, key_bytes=len(message.key),
                          key_sha256=hashlib.sha256(message.key).hexdigest())
        if message.headers:
            original = orjson.dumps([[k, None if v is None else _b64(v)] for k, v in message.headers])
            record.update(headers_truncated=True, headers_count=len(message.headers),
                          headers_bytes=sum(len(k.encode("utf-8", "surrogatepass")) + len(v or b"")
                                            for k, v in message.headers),
                          headers_sha256=hashlib.sha256(original).hexdigest())
        if message.value:
            record.update(value_truncated=True, value_bytes=len(message.value),
                          value_sha256=hashlib.sha256(message.value).hexdigest())
        return _Out(self.dead_letter_topic, None, orjson.dumps(record), None,
                    f"minimal dead letter of {message.topic}[{message.partition}]@{message.offset}")

    def _send(self, out: _Out) -> None:
        generation = self._generation

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if generation != self._generation:
                return  # purged with a replaced producer; resent through the new one
            if err is None:  # pending until acknowledged: a replaced producer resends everything else
                self._pending.pop(id(out), None)
                self._last_progress = time.monotonic()
                if out.record is not None and self.on_alert_delivered is not None:
                    self.on_alert_delivered(out.record)
            else:
                self._failed.append((out, err))

        if not self._pending:
            self._last_progress = time.monotonic()  # a stall is counted from the first undelivered message
        self._pending[id(out)] = out
        while True:
            try:
                self._producer.produce(out.topic, value=out.value, key=out.key, headers=out.headers,
                                       on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: wait for deliveries (backpressure, never drop)
                if not self._serve(0.1):
                    return  # the producer was replaced, and ``out`` sent again through the new one
                self._check_stop()
            except KafkaException as exc:  # refused before it left: too large, invalid…
                err = exc.args[0]
                if err.fatal() or err.code() == KafkaError._FATAL:
                    log.warning("the producer failed fatally (%s); replacing it", err)
                    self._replace_producer()  # sends ``out`` again, with everything else pending
                    return
                self._pending.pop(id(out), None)
                self._refused(out, err)
                return

    def _refused(self, out: _Out, err: KafkaError) -> None:
        """``out`` can never be delivered: count, log, send its replacement or drop it."""
        reason = err.name() if isinstance(err, KafkaError) else str(err)
        if self.metrics is not None:
            self.metrics.publish_failures.labels(out.topic, reason).inc()
        replacement = out.fallback(f"{reason}: {err.str() if isinstance(err, KafkaError) else err}") \
            if out.fallback is not None else None
        now = time.monotonic()
        if now - self._logged.get((out.topic, reason), -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._logged[(out.topic, reason)] = now
            log.error("%s could not be produced to %s (%s); %s (stream_monitor_publish_failures_total counts "
                      "each; logged once a minute per reason)", out.what, out.topic, err,
                      f"sending {replacement.what} instead" if replacement is not None else "dropped")
        if replacement is not None:
            self._send(replacement)

    def _count_truncated(self, topic: str) -> None:
        if self.metrics is not None:
            self.metrics.outputs_truncated.labels(topic).inc()

    # --- waiting --------------------------------------------------------------------------

    def poll(self) -> None:
        self._serve(0)

    def _serve(self, timeout: float, flush: bool = False) -> bool:
        """Serve delivery reports (``poll`` or ``flush``); False if the producer failed and was replaced.

        An idempotent producer whose broker lost its state (a restart) fails fatally
        (UNKNOWN_PRODUCER_ID): confluent-kafka raises that from poll/flush and still runs the delivery
        callbacks, so Python reports it as a SystemError."""
        try:
            if flush:
                self._producer.flush(timeout)
            else:
                self._producer.poll(timeout)
            return True
        except (KafkaException, SystemError) as exc:
            log.warning("the producer failed (%s); replacing it and resending %d unacknowledged messages",
                        exc, len(self._pending))
            self._replace_producer()
            return False

    def _check_stop(self) -> None:
        if self.stop_requested():
            raise StopRequested(f"stop requested while {len(self._pending)} alerts/dead letters were undelivered")

    def confirm(self, timeout: float | None = None) -> None:
        """Flush; resend what failed transiently; raise :class:`PublishError` if something is still
        undelivered after ``timeout`` (default ``outage_seconds``) and :class:`StopRequested` as soon as
        a stop is requested. A slow broker is waited for, and said so every 5 s."""
        timeout = self.outage_seconds if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        next_log = started + 5.0
        while True:
            self._serve(max(0.0, min(STOP_CHECK_SECONDS, deadline - time.monotonic())), flush=True)
            failed, self._failed = self._failed, []
            fatal = None
            for out, err in failed:
                if err.code() in PERMANENT:
                    self._pending.pop(id(out), None)
                    self._refused(out, err)
                    continue
                if err.fatal() or err.code() in (KafkaError._FATAL, KafkaError.UNKNOWN_PRODUCER_ID):
                    fatal = err
                    continue
                out.attempt += 1
                if out.attempt <= 3 or out.attempt % 20 == 0:
                    log.warning("delivery of %s to %s failed (%s); resending (attempt %d)", out.what, out.topic,
                                err, out.attempt)
                self._send(out)
            if fatal is not None:
                log.warning("the producer failed fatally (%s); replacing it", fatal)
                self._replace_producer()
            if not self._pending and not self._failed:
                return
            self._check_stop()  # only once there is something to wait for: the final checkpoint still delivers
            now = time.monotonic()
            if now >= deadline:
                raise PublishError(f"{len(self._pending)} alerts/dead letters still undelivered after {timeout:.0f} s")
            if (now - self._last_progress >= self.stall_seconds and now >= self._next_broker_check
                    and self._broker_answers()):
                log.warning("no delivery for %.0f s although the broker answers (a broker restart leaves an "
                            "idempotent producer stuck): replacing the producer and resending %d messages",
                            now - self._last_progress, len(self._pending))
                self._replace_producer()
            if now >= next_log:
                next_log = now + 5.0
                log.warning("waiting for the broker to acknowledge %d alerts/dead letters (%.0f s so far); "
                            "processing is paused and state is saved only after they are delivered",
                            len(self._pending), now - started)

    def _broker_answers(self) -> bool:
        """Whether the broker answers a metadata request (asked at most once a second, briefly, so a
        stop request is still noticed in time)."""
        self._next_broker_check = time.monotonic() + 1.0
        try:
            self._producer.list_topics(timeout=STOP_CHECK_SECONDS)
            return True
        except KafkaException:
            return False

    def _replace_producer(self) -> None:
        """A new producer, and everything unacknowledged sent again through it."""
        old, self._producer = self._producer, None
        self._generation += 1
        try:
            old.purge()
            old.flush(0)
        except (KafkaException, RuntimeError, SystemError) as exc:
            log.warning("could not purge the replaced producer: %s", exc)
        del old
        if self.metrics is not None:
            self.metrics.producer_restarts.inc()
        self._producer = Producer(self.settings)
        pending, self._pending, self._failed = list(self._pending.values()), {}, []
        self._last_progress = time.monotonic()
        for out in pending:
            self._send(out)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is left for up to ``timeout``; less once a stop is requested (what was not
        confirmed was not saved either: the next owner processes those events again)."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            if not self._serve(min(STOP_CHECK_SECONDS, max(0.0, deadline - time.monotonic())), flush=True):
                continue
            if self.stop_requested():
                break
        if self._pending:
            log.warning("closing with %d alerts/dead letters unacknowledged; their events were not saved as "
                        "processed and will be processed again", len(self._pending))
            try:
                self._producer.purge()
            except (KafkaException, RuntimeError, SystemError):
                pass


def _describe(alert: Alert) -> str:
    """Which alert, in a few hundred characters whatever its names."""
    names = "/".join(part[:100] for part in (alert.model_id, alert.signal, alert.name, alert.detector))
    return f"alert {alert.alert_id} ({names} {alert.status})"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
