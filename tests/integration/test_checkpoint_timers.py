"""Per-partition checkpoint timers through the service's own loop steps: saving one partition on a
revoke does not delay the other (the due logic itself: tests/unit/test_checkpoint_timers.py)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from stream_monitor.app import Service
from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import create_topics
from stream_monitor.metrics import Metrics
from stream_monitor.synthetic import generate

from ..support import FAST_CONSUMER, lines, produce, stored_offset, unique


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
        "models": {"stable": {"decisions": "partition", "reference": {"events": 1000}}}})
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
