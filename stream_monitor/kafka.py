"""The thin layer over confluent-kafka's consumer: typed errors and the assignment protocol.

- :func:`message_error` turns ``msg.error()`` into what the loop acts on: a
  partition's end (EOF) is ignored, a fatal error raises
  :class:`ConsumerFatalError`, an offset outside the log comes back as
  :class:`OffsetOutOfRange` (``auto.offset.reset = error`` makes the broker's
  answer an error, so it is reported, never reset silently), anything else is
  logged and the message skipped.
- :func:`assign` / :func:`unassign` take the assignment strategy into account:
  the cooperative protocol adds and removes partitions incrementally, the eager
  one replaces the whole assignment (and needs no unassign in a revoke).
- :class:`MonitorConsumer` is the consumer whose cached watermarks the HTTP
  thread can read while the loop may be closing it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from .errors import StreamMonitorError

log = logging.getLogger(__name__)

COOPERATIVE = "cooperative-sticky"


class ConsumerFatalError(StreamMonitorError):
    """The consumer reported a fatal error (e.g. a static member fenced by another with the same
    ``group.instance.id``): it cannot go on; the process exits with the broker's words."""

    def __init__(self, error: KafkaError):
        super().__init__(f"kafka: fatal consumer error: {error.str()} ({error.name()})")
        self.error = error


@dataclass(frozen=True)
class OffsetOutOfRange:
    """The broker answered a fetch of ``topic[partition]`` at ``offset`` with "offset out of range"."""

    topic: str
    partition: int
    offset: int


def message_error(message: Message) -> OffsetOutOfRange | None:
    """What an error message means for the loop (``None``: nothing to do; a message without an error
    also gives ``None``). Raises :class:`ConsumerFatalError` for a fatal error."""
    error = message.error()
    if error is None:
        return None
    if error.code() == KafkaError._AUTO_OFFSET_RESET:
        return OffsetOutOfRange(message.topic(), message.partition(), message.offset())
    if error.code() != KafkaError._PARTITION_EOF:
        if error.fatal():
            raise ConsumerFatalError(error)
        log.warning("consumer error: %s", error)
    return None


def is_cooperative(settings: dict[str, Any]) -> bool:
    return settings.get("partition.assignment.strategy") == COOPERATIVE


def assign(consumer: Consumer, partitions: list[TopicPartition], cooperative: bool) -> None:
    """Take ``partitions`` (their offsets set): added to the assignment, or the whole new one (eager)."""
    if cooperative:
        consumer.incremental_assign(partitions)
    else:
        consumer.assign(partitions)


def unassign(consumer: Consumer, partitions: list[TopicPartition], cooperative: bool) -> None:
    """Give ``partitions`` up in a revoke (eager: the client drops the whole assignment itself)."""
    if cooperative:
        consumer.incremental_unassign(partitions)


class MonitorConsumer(Consumer):
    """The consumer, closable while the HTTP thread reads its cached watermarks (:meth:`watermarks`)."""

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self._closing = threading.Lock()
        self.closed = False

    def watermarks(self, topic: str, partition: int) -> tuple[int | None, int | None]:
        """(low, high) as the fetcher last heard them (no request; ``None`` when unknown). For the thread
        that runs the loop (and closes the consumer)."""
        try:
            low, high = self.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except (KafkaException, RuntimeError):
            return None, None
        return (low if low >= 0 else None), (high if high >= 0 else None)

    def watermarks_from_elsewhere(self, keys: list[tuple[str, int]]) -> dict | None:
        """The same for another thread: ``None`` once closed. The call waits while the loop is inside
        ``consume()`` (the client serialises calls on one consumer), and :meth:`close` waits for it."""
        with self._closing:
            if self.closed:
                return None
            return {key: self.watermarks(*key) for key in keys}

    def close(self) -> None:
        with self._closing:
            self.closed = True
        super().close()


def client_versions() -> dict[str, str]:
    """The Kafka client's versions (confluent-kafka and the librdkafka it runs on)."""
    return {"confluent_kafka": confluent_kafka.version()[0], "librdkafka": confluent_kafka.libversion()[0]}
