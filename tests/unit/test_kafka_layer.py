"""The consumer layer's typed errors, without a broker: what each ``msg.error()`` means for the loop."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from stream_monitor.errors import StreamMonitorError
from stream_monitor.kafka import ConsumerFatalError, OffsetOutOfRange, is_cooperative, message_error


class Fetched:
    """What ``consume()`` hands back, as far as :func:`message_error` reads it."""

    def __init__(self, error: KafkaError | None, offset: int = 41):
        self._error, self._offset = error, offset

    def error(self):
        return self._error

    def topic(self):
        return "ml.inference"

    def partition(self):
        return 2

    def offset(self):
        return self._offset


def test_a_message_without_an_error_and_a_partition_end_mean_nothing_to_do(caplog):
    with caplog.at_level(logging.WARNING, "stream_monitor.kafka"):
        assert message_error(Fetched(None)) is None
        assert message_error(Fetched(KafkaError(KafkaError._PARTITION_EOF))) is None
    assert caplog.records == []


def test_an_offset_out_of_range_is_reported_with_its_partition_and_offset():
    error = KafkaError(KafkaError._AUTO_OFFSET_RESET, "fetch failed: Broker: Offset out of range")
    assert message_error(Fetched(error, offset=1200)) == OffsetOutOfRange("ml.inference", 2, 1200)


def test_a_fatal_error_raises_a_typed_error_with_the_brokers_words():
    error = KafkaError(KafkaError._FENCED, "fenced by a newer instance with the same group.instance.id", fatal=True)
    with pytest.raises(ConsumerFatalError, match="fatal consumer error: fenced by a newer instance") as raised:
        message_error(Fetched(error))
    assert isinstance(raised.value, StreamMonitorError) and raised.value.error is error


def test_any_other_error_is_logged_and_the_message_skipped(caplog):
    with caplog.at_level(logging.WARNING, "stream_monitor.kafka"):
        assert message_error(Fetched(KafkaError(KafkaError._TRANSPORT, "broker down"))) is None
    assert [r.getMessage() for r in caplog.records] == [f"consumer error: {KafkaError(KafkaError._TRANSPORT, 'broker down')}"]


def test_the_assignment_protocol_follows_the_strategy():
    assert is_cooperative({"partition.assignment.strategy": "cooperative-sticky"})
    assert not is_cooperative({"partition.assignment.strategy": "range"}) and not is_cooperative({})
