"""The service loop: poll → decode → process → publish → checkpoint; assign / revoke.

Follow one message: :meth:`Service.run` polls it, :meth:`Service._handle`
decodes it (:mod:`codec`) and hands it to its partition's
:class:`~stream_monitor.partition.PartitionMonitor`, alerts go to the
:class:`~stream_monitor.publisher.Publisher`, and :func:`~stream_monitor.checkpoint.checkpoint`
makes it durable: delivery confirmed, state + offset saved to Redis, offset committed.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, TypeVar

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from . import faults
from .board import StatusBoard
from .checkpoint import PartitionKey, checkpoint
from .codec import decode
from .config import Config, consumer_settings, producer_settings, redact_url
from .errors import ConfigError, StateError
from .events import DeadLetter, LabelEvent, RawMessage
from .join import RedisJoin, join_op, performance_settings
from .logs import BrokerWatch, DeadLetterDigest, client_settings, kafka_logger
from .metrics import Metrics, PartitionView
from .partition import PartitionMonitor
from .publisher import Publisher
from .reference import ReferenceProfile
from .stages import CLOCK
from .state import ReferenceStore, StateStore, connect
from .web import Health

log = logging.getLogger(__name__)
T = TypeVar("T")
WATERMARK_SECONDS = 0.5  # how often the consumer's cached watermarks are read for the lag
GC_YOUNG_THRESHOLD = 50_000  # allocations between two young-generation collections (CPython default: 700)
alert_log = logging.getLogger("stream_monitor.alerts")


class _Consumer(Consumer):
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


class Service:
    def __init__(self, config: Config, metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        service = config.service
        self.kafka_log = kafka_logger(service.log_repeat_seconds)
        self.broker = BrokerWatch(config.kafka.bootstrap_servers, log)
        self.health = Health(service.health_max_loop_age_seconds, service.health_max_unassigned_seconds,
                             redis_failed_at=lambda: self.metrics.redis_errors.last,
                             broker_down_since=lambda: self.broker.down_since,
                             stopping=lambda: self.stopping)
        self.dead_letter_digest = DeadLetterDigest(service.dead_letter_log_seconds, log)
        self.known_models = frozenset(config.models)
        self.consumer_settings = consumer_settings(config)
        self.cooperative = self.consumer_settings.get("partition.assignment.strategy") == "cooperative-sticky"
        self.redis = connect(config.redis.url)
        self.store = StateStore(self.redis, config.redis.namespace, config.kafka.group_id)
        self._redis(self.redis.ping, "connect")
        self.references = self._redis(self._stored_references, "load stored references")
        self.join_settings = performance_settings(config)
        self.joiner = RedisJoin(self.redis, config.redis.namespace, self.join_settings)
        self.publisher = Publisher(client_settings(producer_settings(config), self.kafka_log, self.broker),
                                   config.kafka.alert_topic,
                                   config.kafka.dead_letter_topic,
                                   outage_seconds=config.service.broker_outage_seconds)
        self.consumer: _Consumer | None = None
        self._watermarks: dict[PartitionKey, tuple[int | None, int | None]] = {}
        self._next_watermarks = 0.0
        self._watermarks_read = 0.0
        self.metrics.partitions.source = self._partition_views
        self.owned: dict[PartitionKey, PartitionMonitor] = {}
        self.dirty: set[PartitionKey] = set()
        self.summaries: dict[PartitionKey, dict] = {}
        self.persisted: set[PartitionKey] = set()  # partitions whose state this process stored or loaded
        self.board = StatusBoard(f"{socket.gethostname()} pid {os.getpid()}")
        self.board.live_lag = lambda: {(v.topic, v.partition): v.lag for v in self._partition_views()}
        self.stopping = False
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._next_reference_check = time.monotonic() + config.service.reference_poll_seconds

    def _stored_references(self) -> dict[str, ReferenceProfile]:
        references = {}
        store = self.reference_store = ReferenceStore(self.redis, self.config.redis.namespace)
        for model_id, model in self.config.models.items():
            if model.reference.source == "stored":
                profile = store.load(model_id)
                if profile is None:
                    raise ConfigError(f"models.{model_id}.reference.source",
                                      f"is 'stored' but Redis holds no reference for {model_id!r}; run "
                                      f"`stream-monitor reference build --model {model_id} --input FILE` first")
                references[model_id] = profile
        return references

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        service = self.config.service
        # Every event allocates a few short-lived containers (the decoded JSON); CPython's default
        # threshold (700) then runs a collection every ~150 events, each walking the young objects and,
        # as they are promoted, the long-lived detector state. Reference counting frees all of it anyway;
        # the cycle collector only has to run now and then (measured in process: +20 % events/s at 20
        # features, +8 % at 100).
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        self.consumer = _Consumer(client_settings(self.consumer_settings, self.kafka_log, self.broker))
        self.health.joining()
        threading.Thread(target=self._watch_watermarks, name="watermarks", daemon=True).start()
        self.consumer.subscribe(list(self.config.kafka.input_topics), on_assign=self._watched(self._on_assign, True),
                                on_revoke=self._watched(self._on_revoke, False),
                                on_lost=self._watched(self._on_lost, False))
        log.info("consuming %s as group %s", ", ".join(self.config.kafka.input_topics), self.config.kafka.group_id)
        try:
            clock = CLOCK
            while not self.stopping:
                self._observe_loop()
                started = clock.now()
                messages = self.consumer.consume(service.batch_size, service.poll_timeout_seconds)
                clock.add("consume", started)
                if messages:
                    self._handle_batch(messages)
                    faults.reached("between_batches")
                started = clock.now()
                self.publisher.poll()
                clock.add("produce", started)
                if self._checkpoint_due():
                    self._checkpoint(list(self.dirty))
                if time.monotonic() >= self._next_reference_check:
                    self._refresh_references()
            self._checkpoint(list(self.owned))
        finally:
            log.info("leaving the group")
            self.consumer.close()  # revokes (→ persists) what is still owned, then leaves
            self.publisher.close()
            self.redis.close()

    def _redis(self, operation: Callable[[], T], what: str) -> T:
        """Run a Redis operation; while Redis is unreachable, wait with backoff (logged and counted) for up
        to ``service.redis_outage_seconds``, then give up with a :class:`StateError` (exit, no tight loop:
        a restarted instance waits the same way)."""
        started = time.monotonic()
        delay = 0.2
        failures = 0
        while True:
            try:
                result = operation()
                if failures:
                    log.warning("Redis is back after %.1f s (%s); resuming", time.monotonic() - started, what)
                return result
            except redis.AuthenticationError as exc:
                raise ConfigError("redis.url", f"Redis at {redact_url(self.config.redis.url)} rejected the "
                                  f"credentials: {exc}") from None
            except redis.ResponseError as exc:
                if str(exc).startswith(("NOAUTH", "WRONGPASS")):
                    raise ConfigError("redis.url", f"Redis at {redact_url(self.config.redis.url)} rejected the "
                                      f"credentials: {exc}") from None
                raise
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                waited = time.monotonic() - started
                failures += 1
                self.metrics.redis_errors.inc()
                if waited >= self.config.service.redis_outage_seconds:
                    raise StateError(f"Redis unreachable for {waited:.0f} s ({what}): {exc}") from exc
                log.warning("Redis unreachable (%s): %s; processing paused, retrying in %.1f s (%.0f s so far)",
                            what, exc, delay, waited)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _refresh_references(self) -> None:
        """Re-reference without restart: a new stored version replaces the old one from this event on.

        The switch happens between batches, so where it lands in the stream
        depends on timing; it is recorded in the partition state at the next
        checkpoint. Recovery from a crash before that checkpoint may switch a
        few events earlier or later.
        """
        self._next_reference_check = time.monotonic() + self.config.service.reference_poll_seconds
        for model_id, current in list(self.references.items()):
            try:
                version = self.reference_store.version(model_id)
            except redis.RedisError as exc:
                log.warning("cannot check the stored reference of %s: %s", model_id, exc)
                return
            if version is None or version == current.version:
                continue
            profile = self.reference_store.load(model_id)
            if profile is None:
                continue
            self.references[model_id] = profile
            for key, monitor in self.owned.items():
                if model_id in monitor.models:
                    monitor.models[model_id].use_reference(profile)
                    self.dirty.add(key)
            log.info("model %s: now compared with stored reference version %d (was %d)", model_id,
                     profile.version, current.version)

    def stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: stop fetching; the batch in hand finishes, state is persisted."""
        if not self.stopping:
            log.info("stopping: finishing the batch in hand, then persisting state")
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _handle_batch(self, messages: list[Message]) -> None:
        """Decode every message, run the batch's label joins in one Redis round trip, then hand each
        partition its events in offset order (one call per partition: the engine works column-wise)."""
        clock = CLOCK
        started = clock.now()
        prepared = []
        consumed: dict[str, int] = {}
        for message in messages:
            item = self._prepare(message)
            if item is not None:
                prepared.append(item)
                consumed[item[2].topic] = consumed.get(item[2].topic, 0) + 1
        for topic, count in consumed.items():
            self.metrics.events_consumed.labels(topic).inc(count)
        started = clock.add("decode", started)
        ops, slots = [], []
        joined_models = self.join_settings
        for key, monitor, raw, decoded in prepared:
            op = None
            if not isinstance(decoded, DeadLetter) and decoded.model_id in joined_models:
                op = join_op(decoded, f"{raw.topic}|{raw.partition}|{raw.offset}", joined_models)
            slots.append(len(ops) if op is not None else None)
            if op is not None:
                ops.append(op)
        results = self._redis(lambda: self.joiner.run(ops), "label join") if ops else []
        started = clock.add("join", started)
        batches: dict[PartitionKey, list] = {}
        middle = len(prepared) // 2
        for index, ((key, monitor, raw, decoded), slot) in enumerate(zip(prepared, slots)):
            if index == middle:
                faults.reached("mid_batch")
            if isinstance(decoded, DeadLetter):
                self._dead_letter(raw, decoded, monitor)
                continue
            batches.setdefault(key, []).append((raw, decoded, None if slot is None else results[slot]))
        started = clock.add("produce", started)
        for key, items in batches.items():
            self._apply(key, self.owned[key], items)
        self.dirty.update(key for key, _, _, _ in prepared)
        self._since_checkpoint += len(prepared)

    def _prepare(self, message: Message):
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer error: %s", error)
            return None
        key = (message.topic(), message.partition())
        monitor = self.owned.get(key)
        offset = message.offset()
        if monitor is None or (monitor.next_offset is not None and offset < monitor.next_offset):
            return None  # not ours any more, or already covered by the stored state
        timestamp_type, timestamp = message.timestamp()
        raw = RawMessage(topic=key[0], partition=key[1], offset=offset, value=message.value(),
                         key=message.key(), headers=tuple(message.headers() or ()),
                         timestamp_ms=timestamp if timestamp_type else None)
        return key, monitor, raw, decode(raw, self.known_models, self.config.service.max_message_bytes,
                                          self.config.service.max_features_per_event)

    def _apply(self, key: PartitionKey, monitor: PartitionMonitor, items: list) -> None:
        """One partition's decoded events of this batch → its detectors → alerts published."""
        clock = CLOCK
        started = clock.now()
        try:
            alerts = monitor.process_batch([(raw.offset, decoded, join) for raw, decoded, join in items])
        except Exception as exc:  # noqa: BLE001 - bad input must not stop the loop; nothing is lost
            # Events are validated before any detector state changes, so this is a bug, not bad input:
            # the batch's messages go to the dead-letter topic with the error, and the loop goes on.
            log.exception("%s[%d]@%d..%d: processing failed", key[0], key[1], items[0][0].offset,
                          items[-1][0].offset)
            for raw, _, _ in items:
                self._dead_letter(raw, DeadLetter("processing_error", f"{type(exc).__name__}: {exc}"), monitor)
            return
        started = clock.add("detect", started)
        kinds: dict[str, int] = {}
        for raw, decoded, join in items:
            kind = "label" if isinstance(decoded, LabelEvent) else "inference"
            kinds[kind] = kinds.get(kind, 0) + 1
            if join is not None and join.status == "dropped":
                self.metrics.predictions_dropped.labels(decoded.model_id).inc()
        for kind, count in kinds.items():
            self.metrics.events_decoded.labels(kind).inc(count)
        for alert in alerts:
            self.board.alert(self.publisher.alert(alert))
            self.metrics.alerts.labels(alert.model_id, alert.signal, alert.detector, alert.severity,
                                       alert.status).inc()
            alert_log.info("%s %s %s/%s/%s %s: %s", alert.status.upper(), alert.severity, alert.model_id,
                           alert.signal, alert.name, alert.detector, alert.message,
                           extra={"alert": alert.alert_id})
        clock.add("produce", started)

    def _dead_letter(self, raw: RawMessage, letter: DeadLetter, monitor: PartitionMonitor) -> None:
        self.publisher.dead_letter(raw, letter)
        monitor.skip(raw.offset, letter.reason, letter.error)
        self.dead_letter_digest.record(letter.reason, letter.error)
        self.metrics.dead_letters.labels(letter.reason).inc()
        log.debug("%s[%d]@%d dead-lettered: %s: %s", raw.topic, raw.partition, raw.offset, letter.reason, letter.error)

    # --- checkpoints ----------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        service = self.config.service
        return bool(self.dirty) and (
            self._since_checkpoint >= service.checkpoint_interval_events
            or time.monotonic() - self._last_checkpoint >= service.checkpoint_interval_seconds)

    def _checkpoint(self, keys: list[PartitionKey]) -> None:
        started = CLOCK.now()
        monitors = [(k, self.owned[k]) for k in keys if k in self.owned and k in self.dirty]
        if monitors:
            self.summaries.update(self._redis(
                lambda: checkpoint(monitors, self.publisher, self.store, self.consumer, self.metrics, self.persisted),
                "checkpoint"))
            self._publish_status()
        self.dirty.difference_update(k for k, _ in monitors)
        CLOCK.add("checkpoint", started)
        for stage, seconds in CLOCK.since_export().items():
            self.metrics.stage_seconds.labels(stage).inc(seconds)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    def _publish_status(self) -> None:
        """Status page from the summaries saved at the last checkpoints, and the label-join gauges.
        (The per-partition gauges are derived at scrape time: :meth:`_partition_views`.)"""
        self._publish_board()
        for model_id in self.join_settings:
            try:
                lag = self.joiner.lag(model_id)
            except redis.RedisError:
                continue
            self.metrics.awaiting_labels.labels(model_id).set(lag["awaiting"])
            self.metrics.labels_expired.labels(model_id).set(lag["expired"])
            self.board.label_lag[model_id] = lag

    def _publish_board(self) -> None:
        views = {(v.topic, v.partition): v for v in self._partition_views()}
        self.board.update({key: (summary, views[key].lag if key in views else None)
                           for key, summary in self.summaries.items() if key in self.owned})

    def _partition_views(self) -> list[PartitionView]:
        """The partitions owned now, for a scrape or the status page: latest summary, next offset to process
        and the consumer's cached watermarks (kept current by librdkafka's fetcher even while the loop waits,
        so a stall shows as growing lag). Runs in the HTTP thread too: it only copies dicts (one step each
        under the GIL) and reads attributes; it never waits for the loop."""
        owned, summaries, watermarks = dict(self.owned), dict(self.summaries), self._watermarks
        views = []
        for (topic, partition), monitor in sorted(owned.items()):
            low, high = watermarks.get((topic, partition), (None, None))
            summary = summaries.get((topic, partition))
            next_offset = monitor.next_offset
            if next_offset is None and summary is not None:
                next_offset = summary.get("next_offset")
            views.append(PartitionView(topic, partition, summary, next_offset, high, low))
        return views

    def _observe_loop(self) -> None:
        """Every loop iteration: the health report's heartbeat, the dead-letter summary line when due, and,
        twice a second, the consumer's cached watermarks of the owned partitions (the dict is replaced
        whole, for readers in other threads)."""
        self.health.tick()
        self.dead_letter_digest.flush()
        now = time.monotonic()
        if now >= self._next_watermarks:
            self._next_watermarks = now + WATERMARK_SECONDS
            self._read_watermarks()

    def _read_watermarks(self) -> None:
        consumer = self.consumer
        if consumer is not None:
            self._watermarks = {key: consumer.watermarks(*key) for key in list(self.owned)}
            self._watermarks_read = time.monotonic()

    def _watch_watermarks(self) -> None:
        """While the loop is held up (a Redis call that waits, a long checkpoint), read the watermarks from
        here instead, so the lag keeps growing on the scrape. Its own thread: a consumer call waits while
        another thread is inside ``consume()``, and a scrape must never wait."""
        while not self.stopping:
            time.sleep(WATERMARK_SECONDS)
            last, consumer = self.health.last_loop, self.consumer
            if consumer is None or last is None or time.monotonic() - last <= 2 * WATERMARK_SECONDS:
                continue
            started = time.monotonic()
            read = consumer.watermarks_from_elsewhere(list(self.owned))
            if read is None:
                return
            if self._watermarks_read < started:  # the loop has not read newer ones meanwhile
                self._watermarks = read

    def _watched(self, callback: Callable[[Consumer, list[TopicPartition]], None],
                 assigning: bool) -> Callable[[Consumer, list[TopicPartition]], None]:
        """A rebalance callback that also tells the health report: an eager revoke or a loss starts a
        (re)join, an assignment (even an empty one: the group has settled) ends it."""

        def watched(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            if not assigning and (callback == self._on_lost or not self.cooperative):
                self.health.joining()
            callback(consumer, partitions)
            if assigning:
                self.health.assigned(len(self.owned))
                # a partition taken over shows its restored state at once, not at its next checkpoint
                # (which an idle partition may not have for a long time)
                fresh = {key: monitor.summary() for key, monitor in list(self.owned.items())
                         if key not in self.summaries and monitor.next_offset is not None}
                if fresh:
                    self.summaries.update(fresh)
                    self._publish_board()
            else:
                self.health.assigned_partitions = len(self.owned)

        return watched

    def _forget_gauges(self, key: PartitionKey) -> None:
        """A partition that moved away: nothing to forget any more; its series are derived at scrape time
        from the partitions owned then (:class:`~stream_monitor.metrics.PartitionCollector`)."""

    # --- rebalance ------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            monitor = PartitionMonitor(self.config, tp.partition, self.references)
            loaded = self._redis(lambda: self.store.load(tp.topic, tp.partition), "load state")
            if loaded is None:
                self._missing_state(consumer, tp)
                tp.offset = OFFSET_BEGINNING  # no state: the log from the start is the truth
            else:
                self.persisted.add(key)
                next_offset, snapshot = loaded
                monitor.restore(snapshot)
                monitor.next_offset = next_offset
                tp.offset = next_offset
                log.info("assigned %s[%d]: resuming at offset %d", tp.topic, tp.partition, next_offset)
            self.owned[key] = monitor
        self.metrics.assigned_partitions.set(len(self.owned))
        if self.cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def _missing_state(self, consumer: Consumer, tp: TopicPartition) -> None:
        """No state in Redis: a new partition, or Redis lost its data (the group committed progress)."""
        try:
            committed = consumer.committed([TopicPartition(tp.topic, tp.partition)], timeout=10)[0].offset
        except KafkaException:
            committed = -1
        if committed <= 0:
            log.info("assigned %s[%d]: no stored state, reading from the beginning", tp.topic, tp.partition)
            return
        self.metrics.state_lost.inc()
        if self.config.service.on_missing_state == "stop":
            raise StateError(f"{tp.topic}[{tp.partition}]: Redis holds no state although the group committed offset "
                             f"{committed}: Redis lost its data. service.on_missing_state = 'stop': restore it "
                             "(`stream-monitor state import`) or set on_missing_state = 'rebuild'")
        log.error("REDIS LOST ITS DATA: %s[%d] has no stored state although the group committed offset %d; "
                  "rebuilding it from the beginning of the retained log (service.on_missing_state = 'rebuild')",
                  tp.topic, tp.partition, committed)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._checkpoint(keys)  # persist before release
        faults.reached("during_rebalance")
        for key in keys:
            self.owned.pop(key, None)
            self.dirty.discard(key)
            self.summaries.pop(key, None)
            self.persisted.discard(key)
            self._forget_gauges(key)
        log.info("revoked %s", ", ".join(f"{t}[{p}]" for t, p in keys) or "nothing")
        self.metrics.assigned_partitions.set(len(self.owned))
        if self.cooperative:
            consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        for key in keys:  # another member may own them now: saving could overwrite its progress
            self.owned.pop(key, None)
            self.dirty.discard(key)
            self.summaries.pop(key, None)
            self.persisted.discard(key)
            self._forget_gauges(key)
        log.warning("lost %s without a clean revoke; their unsaved progress will be redone by the new owner",
                    ", ".join(f"{t}[{p}]" for t, p in keys))
        self.metrics.assigned_partitions.set(len(self.owned))
