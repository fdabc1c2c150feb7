"""Per-partition checkpoint timers: saving some partitions (on a revoke) does not delay the others."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from prometheus_client import CollectorRegistry

from stream_monitor.app import CheckpointTimers, Service
from stream_monitor.metrics import Metrics
from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import create_topics
from stream_monitor.synthetic import generate

from .support import FAST_CONSUMER, lines, produce, stored_offset, unique

# --- the due logic ---------------------------------------------------------------------------------


def test_a_partition_is_due_after_its_own_events_or_seconds():
    timers = CheckpointTimers(events=100, seconds=5.0)
    timers.count({"A": 99, "B": 50}, now=0.0)
    assert timers.due({"A", "B"}, now=4.9) == []
    timers.count({"A": 1}, now=4.9)
    assert timers.due({"A", "B"}, now=4.9) == ["A"]
    assert timers.due({"B"}, now=5.0) == ["B"]  # B's clock started at its first message
    assert timers.due({"A"}, now=5.0) == ["A"]


def test_saving_some_partitions_resets_only_their_timers():
    timers = CheckpointTimers(events=100, seconds=5.0)
    timers.count({"A": 60, "B": 60}, now=0.0)
    timers.saved(["A"], now=3.0)  # a revoke saved A
    timers.count({"A": 50, "B": 40}, now=4.0)
    assert timers.due({"A", "B"}, now=4.0) == ["B"], "B reached 100 of its own messages"
    timers.saved(["B"], now=4.0)
    assert timers.due({"A", "B"}, now=7.9) == []
    assert timers.due({"A", "B"}, now=8.0) == ["A"], "5 s after A's own save"
    assert timers.due({"A", "B"}, now=9.0) == ["A", "B"]


def test_only_changed_partitions_are_due_and_released_ones_are_forgotten():
    timers = CheckpointTimers(events=10, seconds=5.0)
    timers.count({"A": 20, "B": 20}, now=0.0)
    assert timers.due({"A"}, now=0.0) == ["A"]  # B has nothing unsaved
    timers.keep({"A"})
    assert timers.due({"B"}, now=100.0) == [], "B was released: a new assignment starts a new clock"
    assert timers.due({"B"}, now=105.0) == ["B"]


# --- a revoke-triggered checkpoint of A, then B through the service ------------------------------


def test_after_a_revoke_checkpoint_of_a_the_other_partition_is_saved_within_its_own_interval(broker, redis_server):
    """The service's own loop steps (handle a batch, check what is due, checkpoint) over real messages
    from the broker and a real Redis: B reaches 100 messages since it was assigned 40 messages after
    A's revoke-triggered checkpoint, and is saved then (it used to wait for 100 more)."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    stable = lines(generate("stable", 170, seed=4))
    produce(broker.address, topic, [(0, b"a", v, None) for v in stable[:60]] +
            [(1, b"b", v, None) for v in stable[60:]])
    group, namespace = unique("group-timers"), unique("ns-timers")
    alerts, letters = unique("alerts"), unique("dlq")
    create_topics(broker.address, {alerts: 1, letters: 1})
    config = parse_config({
        "kafka": {"bootstrap_servers": broker.address, "group_id": group, "input_topics": [topic],
                  "alert_topic": alerts, "dead_letter_topic": letters},
        "redis": {"url": redis_server.address, "namespace": namespace},
        "service": {"checkpoint_interval_events": 100, "checkpoint_interval_seconds": 3600.0},
        "models": {"stable": {"reference": {"events": 1000}}}})
    service = Service(config, Metrics(CollectorRegistry()))  # a registry of its own: other tests build services too
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": group, "enable.auto.commit": False,
                         "enable.auto.offset.store": False, **FAST_CONSUMER})
    service.consumer = consumer
    a, b = TopicPartition(topic, 0), TopicPartition(topic, 1)
    try:
        service._on_assign(consumer, [a, b])
        messages = {0: [], 1: []}
        deadline = time.monotonic() + 30
        while (len(messages[0]), len(messages[1])) != (60, 110) and time.monotonic() < deadline:
            for message in consumer.consume(200, 0.2):
                if message.error() is None:
                    messages[message.partition()].append(message)
        assert (len(messages[0]), len(messages[1])) == (60, 110)

        def step(batch):
            service._handle_batch(batch)
            due = service._checkpoint_due()
            if due:
                service._checkpoint(due)

        step(messages[0] + messages[1][:60])  # A 60, B 60: nothing due
        assert (stored_offset(service.store, topic, 0), stored_offset(service.store, topic, 1)) == (None, None)
        shown = service.board.version
        service._on_revoke(consumer, [TopicPartition(topic, 0)])  # saves A only
        assert (stored_offset(service.store, topic, 0), stored_offset(service.store, topic, 1)) == (60, None)
        assert list(service.partitions.owned()) == [(topic, 1)] and service.partitions.get((topic, 0)) is None
        # the checkpoint did no status work: the loop refreshes the status page after it
        assert (service.board.version, service.status_due) == (shown, True)
        service._publish_status()
        assert service.board.version > shown and not service.status_due
        step(messages[1][60:100])  # B at 100 messages since it was assigned: due, saved
        assert stored_offset(service.store, topic, 1) == 100
        step(messages[1][100:])
        assert stored_offset(service.store, topic, 1) == 100, "10 messages since B's save: not due"
    finally:
        consumer.close()
        service.publisher.close()
        service.redis.close()
