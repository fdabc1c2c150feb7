"""The commit unit. Steps, in this order, each one only after the previous succeeded:

1. confirm delivery of every alert and dead letter produced so far;
2. save each dirty partition's state with its next offset to Redis, atomically (with the partition's
   closed partials of the models whose decisions are the model's, docs/MODEL_DECISIONS.md);
3. commit the same offsets to the Kafka group (for lag tools; Redis holds the truth).

It does nothing else: no status page, no gauges (the service refreshes its status
after a checkpoint, and the per-partition gauges are read from the partition
registry at scrape time). It is safe to run again after a failure at any step.

A crash before 2 leaves the previous state in Redis: the events after it are
processed again and raise the same alerts with the same ids (repeats, never
gaps). A crash between 2 and 3 only leaves the group offset behind; the
stored state decides where reading resumes.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from . import faults
from .metrics import Metrics
from .publisher import Publisher
from .registry import OwnedPartition, PartitionKey
from .state import LOST, STALE, StateStore

log = logging.getLogger(__name__)

__all__ = ["PartitionKey", "checkpoint"]


def checkpoint(records: Sequence[OwnedPartition], publisher: Publisher, store: StateStore,
               consumer: Consumer | None, metrics: Metrics | None = None,
               lost: list[PartitionKey] | None = None) -> dict[PartitionKey, dict]:
    """Make the given partitions' progress durable; returns the summary of each partition saved.

    A record's ``persisted`` flag says this process stored or loaded its state before; such a state
    found missing means Redis lost its data: logged loudly, and the state in memory (complete up to
    this point) is what has just been written back. Each saved record is flagged ``persisted``;
    the keys found missing are appended to ``lost`` (the caller then writes back every other
    partition it owns: those with nothing new to save would otherwise stay missing).
    """
    started = time.perf_counter()
    publisher.confirm()  # 1
    faults.reached("after_alerts_before_save")
    offsets: list[TopicPartition] = []
    summaries: dict[PartitionKey, dict] = {}
    for record in records:  # 2
        (topic, partition), monitor = record.key, record.monitor
        if monitor.next_offset is None:
            continue
        summary = summaries[(topic, partition)] = monitor.summary()
        saving = time.perf_counter()
        marks = monitor.merge_marks()  # decisions = "model": closed partials, watermark, idle, beside the state
        for model_id, mark in marks.items():
            mark["cap"] = monitor.config.models[model_id].merge_max_buckets
        outcome = store.save(topic, partition, monitor.next_offset, monitor.snapshot(pending=False), summary,
                             existed=record.persisted, merge=marks)
        monitor.partials_saved(marks)  # stored, or refused for good (a newer owner): they leave the state
        for model_id, dropped in store.dropped.items():
            if dropped:
                log.warning("%s[%d]: %d unmerged partials of model %s dropped (over merge_max_buckets): is its "
                            "merger running?", topic, partition, dropped, model_id)
                if metrics is not None:
                    metrics.merge_dropped.labels(model_id).inc(dropped)
        if outcome == STALE:
            log.warning("%s[%d]: newer state already stored by another owner; not overwritten", topic, partition)
        elif outcome == LOST:
            log.error("REDIS LOST ITS DATA: the state of %s[%d] had vanished (Redis restarted empty or was "
                      "flushed); it has been written back from memory up to offset %d. Partitions owned by no "
                      "live instance follow service.on_missing_state.", topic, partition, monitor.next_offset)
            if metrics is not None:
                metrics.state_lost.inc()
            if lost is not None:
                lost.append(record.key)
        record.persisted = True
        faults.reached("mid_checkpoint")
        if metrics is not None:
            metrics.redis_seconds.observe(time.perf_counter() - saving)
        offsets.append(TopicPartition(topic, partition, monitor.next_offset))
    if consumer is not None and offsets:  # 3
        try:
            for tp in consumer.commit(offsets=offsets, asynchronous=False) or []:
                if tp.error is not None:
                    log.warning("group offset commit of %s[%d] failed: %s", tp.topic, tp.partition, tp.error)
        except KafkaException as exc:
            log.warning("group offset commit failed (Redis holds the truth): %s", exc)
    if metrics is not None:
        metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        metrics.checkpoints.inc()
        metrics.last_checkpoint.set(time.time())
    return summaries
