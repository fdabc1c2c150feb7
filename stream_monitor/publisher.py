"""Alerts and dead letters out to Kafka, with delivery confirmed before state is saved."""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import Any

import orjson
from confluent_kafka import KafkaError, Producer

from .errors import PublishError
from .events import Alert, DeadLetter, RawMessage, dead_letter_record

log = logging.getLogger(__name__)


class Publisher:
    """Wraps the producer. ``confirm()`` returns only once every message sent so far is acknowledged."""

    def __init__(self, settings: dict[str, Any], alert_topic: str, dead_letter_topic: str,
                 max_attempts: int = 5, outage_seconds: float = 120.0):
        self.outage_seconds = outage_seconds
        # the broker's default limit on one record, less room for the key and headers
        self.max_record_bytes = int(settings.get("message.max.bytes", 1_000_000)) - 64 * 1024
        self._producer = Producer(settings)
        self.alert_topic = alert_topic
        self.dead_letter_topic = dead_letter_topic
        self.max_attempts = max_attempts
        self._failed: list[tuple[tuple, KafkaError]] = []

    def alert(self, alert: Alert) -> dict[str, Any]:
        """Produce one alert; returns it as published."""
        record = alert.to_dict(int(time.time() * 1000))
        self._send((self.alert_topic, alert.model_id.encode(), orjson.dumps(record), None))
        return record

    def dead_letter(self, message: RawMessage, letter: DeadLetter) -> None:
        record = dead_letter_record(message, letter, int(time.time() * 1000))
        value = orjson.dumps(record)
        if len(value) > self.max_record_bytes:  # base64 grows a value by a third: keep its head
            original = message.value or b""
            keep = max(0, (self.max_record_bytes - (len(value) - len(record["value"] or ""))) * 3 // 4 - 1024)
            record.update(value=base64.b64encode(original[:keep]).decode("ascii"), value_truncated=True,
                          value_bytes=len(original), value_sha256=hashlib.sha256(original).hexdigest())
            value = orjson.dumps(record)
        self._send((self.dead_letter_topic, message.key, value, list(message.headers) or None))

    def _send(self, item: tuple, attempt: int = 1) -> None:
        topic, key, value, headers = item

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                self._failed.append(((item, attempt), err))

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: wait for deliveries (backpressure, never drop)
                self._producer.poll(0.1)

    def poll(self) -> None:
        self._producer.poll(0)

    def confirm(self, timeout: float | None = None) -> None:
        """Flush; resend failed messages; raise :class:`PublishError` if any is still undelivered after
        ``timeout`` (default: ``outage_seconds``). A slow broker is waited for, and said so every 5 s."""
        timeout = self.outage_seconds if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        while True:
            remaining = self._producer.flush(max(0.0, min(5.0, deadline - time.monotonic())))
            if remaining and time.monotonic() < deadline:
                log.warning("waiting for the broker to acknowledge %d alerts/dead letters (%.0f s so far); "
                            "state is saved only after they are delivered", remaining, time.monotonic() - started)
                continue
            failed, self._failed = self._failed, []
            for (item, attempt), err in failed:
                if attempt >= self.max_attempts:
                    raise PublishError(f"could not deliver to {item[0]} after {attempt} attempts: {err}")
                log.warning("delivery to %s failed (%s); resending (attempt %d)", item[0], err, attempt + 1)
                self._send(item, attempt + 1)
            if not failed and remaining == 0:
                return
            if time.monotonic() >= deadline:
                raise PublishError(f"{remaining} messages still undelivered after {timeout:.0f} s")

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)
