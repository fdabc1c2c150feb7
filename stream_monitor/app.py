"""The service loop: poll → decode → process → publish → checkpoint; assign / revoke.

Follow one message: :meth:`Service.run` polls it, :meth:`Service._handle`
decodes it with the rest of its batch (:mod:`batchcodec`, :mod:`codec` for
anything unusual) and hands it to its partition's
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
import zlib
from typing import Any, Callable, TypeVar

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from redis.exceptions import RedisClusterException

from . import faults
from .alertmanager import firing_in, forwarder as alertmanager_forwarder
from .board import StatusBoard
from .history import alert_point
from .historystore import HistoryWriter
from .checkpoint import PartitionKey, checkpoint
from .batchcodec import decode_batch
from .config import Config, consumer_settings, producer_settings, redact_url
from .errors import ConfigError, StateError, StopRequested
from .events import DeadLetter, LabelEvent, RawMessage
from .join import RedisJoin, join_op, kept_columns, pair_ops, pair_settings, paired_events, performance_settings
from .kafka import (ConsumerFatalError, MonitorConsumer, OffsetOutOfRange, assign, client_versions, is_cooperative,
                    message_error, unassign)
from .logs import BrokerWatch, DeadLetterDigest, clean, client_settings, kafka_logger
from .merge import (episodes_summary, fairness_info, incidents_summary, merge_step, model_reference, reference_step,
                    requests_summary)
from .mergejoint import estimate_info, open_windows
from .metrics import Metrics, PartitionView
from .oip import OipHalf, decode as decode_oip
from .partition import PartitionMonitor
from .publisher import Publisher
from .registry import CheckpointTimers, PartitionRegistry, Quarantine  # CheckpointTimers: re-exported
from .reference import Limits, ReferenceProfile, unmonitored_columns, why_unmonitored
from .rollback import Rollback, bound as bound_rollbacks
from .stages import CLOCK
from .state import REDIS_ERRORS, CorruptState, MergeStore, ReferenceStore, StateStore, connect
from .web import Health

log = logging.getLogger(__name__)
T = TypeVar("T")
PROBE_SILENCE_SECONDS = 3.0  # a log-end probe that read nothing for this long trusts the end it was told
LOG_END_CHECK_SECONDS = 2.0  # how often the owned partitions' log ends are compared with the offsets read
WATERMARK_SECONDS = 0.5  # how often the consumer's cached watermarks are read for the lag
RATE_SAMPLE_SECONDS = 1.0  # how often the loop hands the status page its count of events processed
GROUP_VIEW_SECONDS = 5.0  # how often the status page's view of the whole group is read from Redis
MERGE_SECONDS = 0.5  # how often a model's merger looks for newly closed buckets (and after each checkpoint)
GC_YOUNG_THRESHOLD = 50_000  # allocations between two young-generation collections (CPython default: 700)
_UNDECODED = object()  # a prepared message's decoded event before the batch decode ran
alert_log = logging.getLogger("stream_monitor.alerts")
retraining_log = logging.getLogger("stream_monitor.retraining")  # one line per retraining request
incident_log = logging.getLogger("stream_monitor.incidents")  # a model's incidents opening and closing
# What restoring a decoded snapshot raises when its contents are not a state this version wrote
# (a hand-edited or foreign blob): the partition is quarantined, like one whose blob does not decode.
RESTORE_ERRORS = (StateError, KeyError, IndexError, TypeError, ValueError, AttributeError)


def consumed_by_partition(prepared: list) -> dict[PartitionKey, int]:
    counts: dict[PartitionKey, int] = {}
    for key, *_ in prepared:
        counts[key] = counts.get(key, 0) + 1
    return counts


def _reply(exc: BaseException) -> str:
    """The server's reply in an error, without the "Command # n (...) of pipeline caused error: " a
    pipeline puts in front of it."""
    text = str(exc)
    return text.split(" of pipeline caused error: ", 1)[1] if text.startswith("Command # ") and \
        " of pipeline caused error: " in text else text


def write_refusal(exc: redis.ResponseError) -> str | None:
    """What a Redis error says when Redis is up but refuses writes for now (it accepts them again once the
    operator fixes it), or ``None`` for any other error. An error of one command of a pipeline reads
    "Command # N (…) of pipeline caused error: <Redis's error>": Redis's error is what counts."""
    text = _reply(exc)
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return "out of memory: maxmemory reached with a noeviction policy"
    if isinstance(exc, redis.exceptions.ReadOnlyError) or text.startswith("READONLY"):
        return "read-only: it is a replica, e.g. after a failover"
    if text.startswith("MISCONF"):
        return "MISCONF: it cannot persist to disk and stop-writes-on-bgsave-error is set"
    return None


def cluster_unavailable(exc: BaseException) -> str | None:
    """What an error of a Redis Cluster says when the cluster cannot serve a slot for now (a node down or
    unreachable, a failover, slots being moved) and will again without anyone changing the request, or
    ``None`` for any other error."""
    text = _reply(exc)
    if isinstance(exc, redis.exceptions.ClusterDownError) or text.startswith(("CLUSTERDOWN", "MASTERDOWN")) \
            or text.startswith("Script attempted to execute a command while the cluster is down"):
        return "the cluster is down: a node failed or cannot be reached"
    if isinstance(exc, redis.exceptions.TryAgainError) or text.startswith("TRYAGAIN"):
        return "a slot is being moved (TRYAGAIN)"
    if text.startswith("Script attempted to access a non local key"):
        return "a slot is being moved under a script"
    if isinstance(exc, redis.exceptions.AskError) or text.startswith(("MOVED ", "ASK ")):  # MovedError too
        return "slots are being moved (redirected)"
    if isinstance(exc, redis.exceptions.SlotNotCoveredError):
        return "a slot is served by no reachable node"
    if isinstance(exc, redis.exceptions.ClusterError):  # e.g. "TTL exhausted": redirections that did not settle
        return f"the cluster did not answer ({text})"
    if isinstance(exc, RedisClusterException) and "cannot be connected" in text:
        return "no node of the cluster can be reached"
    return None


class Service:
    def __init__(self, config: Config, metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics(clients=client_versions())
        # alerts the broker acknowledged are also posted to Alertmanager, from a thread of its own (first:
        # a credential variable that is not set stops the start before anything connects)
        self.alertmanager = alertmanager_forwarder(config.alertmanager, os.environ, self.metrics) \
            if config.alertmanager.url else None
        service = config.service
        self.kafka_log = kafka_logger(service.log_repeat_seconds)
        self.broker = BrokerWatch(config.kafka.bootstrap_servers, log)
        self.health = Health(service.health_max_loop_age_seconds, service.health_max_unassigned_seconds,
                             redis_failed_at=lambda: self.metrics.redis_errors.last,
                             broker_down_since=lambda: self.broker.down_since,
                             stopping=lambda: self.stopping)
        self.dead_letter_digest = DeadLetterDigest(service.dead_letter_log_seconds, log)
        self.known_models = frozenset(config.models)
        self.max_ahead_ms = int(config.service.max_timestamp_ahead_seconds * 1000)  # decode's event-time check
        self.consumer_settings = consumer_settings(config)
        self.cooperative = is_cooperative(self.consumer_settings)
        faults.install_processing_fault()
        self.stopping = False  # before the first Redis call: a wait for Redis reads it
        # standalone: a client that connects on first use; a cluster's client reaches a node at once
        self.redis = self._redis(lambda: connect(config.redis.url, config.redis.cluster), "connect")
        self.store = StateStore(self.redis, config.redis.namespace, config.kafka.group_id)
        self.merges = MergeStore(self.store)
        # closed windows and alerts for `stream-monitor report`: appended by a thread, never waited for
        self.history = HistoryWriter(lambda: connect(config.redis.url, config.redis.cluster),
                                     config.redis.namespace, config.service.history_points, self.metrics)
        self.merged_models = {m: model for m, model in config.models.items() if model.by_model}
        # decisions = "model" with a warm-up: each model's reference once its merge built it (shared with every
        # partition monitor), and the partitions paused while their share waits for it
        self.warmup_models = {m for m, model in self.merged_models.items() if model.reference.source != "stored"}
        self.model_references: dict[str, ReferenceProfile] = {}
        self.previous_references: dict[str, ReferenceProfile] = {}  # a stored reference before its reload
        self.waiting_partitions: set[PartitionKey] = set()
        self._next_merge = 0.0
        self._partition_counts: dict[str, int] = {}  # per input topic, from the broker's metadata
        self._redis(self.redis.ping, "connect")
        self.references = self._redis(self._stored_references, "load stored references")
        if self.warmup_models:
            self._redis(self._load_model_references, "load model references")
        self.join_settings = performance_settings(config)
        self.join_attributes = kept_columns(config)  # kept with each prediction: fairness groups, segment
        self.joiner = RedisJoin(self.redis, config.redis.namespace, self.join_settings, on_lost=self._join_lost)
        # Open Inference Protocol topics: requests and responses paired by request id (join.py, oip.py)
        self.oip_topics = frozenset(t for t, f in config.kafka.input_formats.items() if f == "oip")
        self.oip_models = {model_id: model.oip for model_id, model in config.models.items()}
        self.pairing = RedisJoin(self.redis, f"{config.redis.namespace}:oip", pair_settings(config))
        self.publisher = Publisher(client_settings(producer_settings(config), self.kafka_log, self.broker),
                                   config.kafka.alert_topic, config.kafka.dead_letter_topic,
                                   outage_seconds=config.service.broker_outage_seconds,
                                   stall_seconds=config.service.producer_stall_seconds, metrics=self.metrics,
                                   stop_requested=lambda: self.stopping,
                                   on_alert_delivered=self.alertmanager.offer if self.alertmanager else None,
                                   retraining_topic=config.retraining.topic)
        self.consumer: MonitorConsumer | None = None
        self._next_watermarks = 0.0
        self._subscribed_at = 0.0
        self._watermarks_read = 0.0
        self.metrics.partitions.source = self._partition_views
        self._merged_open: dict[str, int] = {}  # open model-level incidents of the models merged here
        self.metrics.partitions.merged_incidents = lambda: self._merged_open
        self._merged_fairness: dict[str, dict] = {}  # the model-level fairness of the models merged here
        self.metrics.partitions.merged_fairness = lambda: self._merged_fairness
        self._merged_estimates: dict[str, dict] = {}  # the model-level estimated performance of those merged here
        self.metrics.partitions.merged_estimates = lambda: self._merged_estimates
        # every assigned partition's monitor, rollback, flags, summary, timer, quarantine and watermarks
        self.partitions = PartitionRegistry(CheckpointTimers(config.service.checkpoint_interval_events,
                                                             config.service.checkpoint_interval_seconds))
        self.status_due = False  # a checkpoint saved something: the loop refreshes the status page
        self.metrics.assigned_partitions.set_function(lambda: len(self.partitions))  # read at scrape time
        self.metrics.quarantined_partitions.set_function(lambda: len(self.partitions.quarantined()))
        self.metrics.checkpoint_interval.set(config.service.checkpoint_interval_seconds)
        for topic in config.kafka.input_topics:  # at 0 from the start: the first messages count in a rate()
            self.metrics.events_consumed.labels(topic)
        self.board = StatusBoard(f"{socket.gethostname()} pid {os.getpid()}")
        self.board.live_lag = lambda: {(v.topic, v.partition): v.lag for v in self._partition_views()}
        self.board.live_health = lambda: self.health.check()[2]  # no I/O: what the loop and callbacks noted
        self.events_processed = 0  # decoded events of configured models, for the page's events/s
        self._next_rate_sample = 0.0
        self.abandoned = False  # stopped during an outage: the checkpoint in hand was given up
        self._next_reference_check = time.monotonic() + config.service.reference_poll_seconds
        self._checked_models: set[str] = set()  # models whose reference was checked for unmonitored features

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
                missing = unmonitored_columns(profile, model.features)
                if missing:
                    name = missing[0]
                    raise ConfigError(f"models.{model_id}.features.{name}",
                                      f"cannot be monitored: the stored reference of {model_id!r} (version "
                                      f"{profile.version}) has no profile of it; "
                                      + why_unmonitored(name, model.features[name], profile.features)
                                      + (f" (also without a reference: {', '.join(missing[1:])})" if missing[1:] else "")
                                      + f"; fix the name in the config or rebuild the reference with "
                                      f"`stream-monitor reference build --model {model_id} --input FILE`")
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
        # auto.offset.reset = error: an offset outside the log must be seen (and reported), not reset silently.
        self.consumer = MonitorConsumer(client_settings({**self.consumer_settings, "auto.offset.reset": "error"},
                                                  self.kafka_log, self.broker))
        self._next_log_end_check = time.monotonic() + LOG_END_CHECK_SECONDS
        self.health.joining()
        threading.Thread(target=self._watch_watermarks, name="watermarks", daemon=True).start()
        if service.metrics_port:
            threading.Thread(target=self._watch_group, name="group-view", daemon=True).start()
        self._subscribe()
        log.info("consuming %s as group %s", ", ".join(self.config.kafka.input_topics), self.config.kafka.group_id)
        try:
            clock = CLOCK
            while not self.stopping:
                self._observe_loop()
                self._rejoin_if_stalled()
                started = clock.now()
                messages = self.consumer.consume(service.batch_size, service.poll_timeout_seconds)
                clock.add("consume", started)
                if messages:
                    self._handle_batch(messages)
                    faults.reached("between_batches")
                started = clock.now()
                self.publisher.poll()
                clock.add("produce", started)
                due = self._checkpoint_due()
                if due:
                    self._checkpoint(due)
                if self.merged_models:
                    self._idle_partitions()
                    if due or time.monotonic() >= self._next_merge:
                        self._merge()
                        if self.waiting_partitions:
                            self._redis(self._load_model_references, "load model references")
                            self._resume_waiting()
                if self.status_due:  # after a checkpoint, here or in a revoke inside consume()
                    self._publish_status()
                if time.monotonic() >= self._next_reference_check:
                    self._refresh_references()
                if time.monotonic() >= self._next_log_end_check:
                    self._check_log_ends()
                if self.partitions.quarantined():
                    self._recheck_quarantined()
            self._checkpoint(list(self.partitions.owned()))
            if self.status_due:
                self._publish_status()
        except StopRequested as exc:
            # Redis (or the broker) was out when the stop came: what is stored is the last consistent
            # checkpoint, and nothing is saved or committed on the way out (not on revoke either).
            self.abandoned = True
            log.warning("stopped during an outage: %s; %d events since the last checkpoint will be processed "
                        "again by the next owner", exc, self.partitions.timers.unsaved())
        finally:
            log.info("leaving the group")
            self.consumer.close()  # revokes (→ persists) what is still owned, then leaves
            self.publisher.close()
            if self.alertmanager is not None:
                self.alertmanager.close()
            self.history.close()
            self.redis.close()

    def _subscribe(self) -> None:
        self._subscribed_at = time.monotonic()
        self.consumer.subscribe(list(self.config.kafka.input_topics), on_assign=self._watched(self._on_assign, True),
                                on_revoke=self._watched(self._on_revoke, False),
                                on_lost=self._watched(self._on_lost, False))

    def _rejoin_if_stalled(self) -> None:
        """A join that has gone on for ``service.rejoin_stalled_join_seconds`` without an assignment (every
        member polling, none assigned: a coordinator that lost track of a membership change) is abandoned:
        leave the group and join again. The health report keeps counting from the first attempt, so an
        instance that rejoins in vain still reports itself stuck after ``health_max_unassigned_seconds``."""
        since = self.health.joining_since
        if since is None:
            return
        now = time.monotonic()
        if now - max(since, self._subscribed_at) < self.config.service.rejoin_stalled_join_seconds:
            return
        log.warning("the consumer-group join has lasted %.0f s without an assignment: leaving the group and "
                    "joining again", now - since)
        self.metrics.group_rejoins.inc()
        self.consumer.unsubscribe()
        self._subscribe()

    def _redis(self, operation: Callable[[], T], what: str) -> T:
        """Run a Redis operation; while Redis is unreachable or refuses writes (out of memory, a read-only
        replica, MISCONF), wait with backoff (logged and counted) for up to ``service.redis_outage_seconds``,
        then give up with a :class:`StateError` (exit, no tight loop: a restarted instance waits the same
        way). Every operation passed here is safe to run again after a failure (see :mod:`state`,
        :mod:`join`). A stop (SIGTERM) during the wait ends it with :class:`StopRequested`."""
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
            except redis.exceptions.NoScriptError as exc:  # a pipeline re-sent to a Redis that restarted
                problem, error = "Redis lost its script cache (it restarted)", exc
            except redis.ResponseError as exc:
                if _reply(exc).startswith(("NOAUTH", "WRONGPASS")):
                    raise ConfigError("redis.url", f"Redis at {redact_url(self.config.redis.url)} rejected the "
                                      f"credentials: {exc}") from None
                trouble, refusal = cluster_unavailable(exc), write_refusal(exc)
                if trouble is None and refusal is None:
                    raise
                problem = f"Redis Cluster unavailable ({trouble})" if trouble else f"Redis refuses writes ({refusal})"
                error = exc
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                problem, error = "Redis unreachable", exc
            except (redis.exceptions.ClusterError, RedisClusterException) as exc:
                if isinstance(exc.__cause__, redis.AuthenticationError):
                    raise ConfigError("redis.url", f"Redis at {redact_url(self.config.redis.url)} rejected the "
                                      f"credentials: {exc.__cause__}") from None
                trouble = cluster_unavailable(exc)
                if trouble is None:
                    raise
                problem, error = f"Redis Cluster unavailable ({trouble})", exc
            waited = time.monotonic() - started
            failures += 1
            self.metrics.redis_errors.inc()
            if self.stopping:
                raise StopRequested(f"{problem} ({what}) when the stop arrived")
            if waited >= self.config.service.redis_outage_seconds:
                raise StateError(f"{problem} for {waited:.0f} s ({what}): {error}") from error
            log.warning("%s (%s): %s; processing paused, retrying in %.1f s (%.0f s so far)",
                        problem, what, error, delay, waited)
            self._pause(delay, f"{problem} ({what})")
            delay = min(delay * 2, 5.0)

    def _pause(self, seconds: float, why: str) -> None:
        """Sleep in short steps; a stop request ends the pause with :class:`StopRequested`."""
        until = time.monotonic() + seconds
        while True:
            if self.stopping:
                raise StopRequested(f"{why} when the stop arrived")
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

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
                profile = None if version in (None, current.version) else self.reference_store.load(model_id)
            except REDIS_ERRORS as exc:
                log.warning("cannot check the stored reference of %s: %s", model_id, exc)
                return
            if version is None or version == current.version:
                continue
            if profile is None:
                continue
            self.references[model_id] = profile
            self.previous_references[model_id] = current  # what the merge may still judge partials against
            for record in self.partitions.records():
                monitor = record.monitor
                if monitor is not None and model_id in monitor.models:
                    monitor.models[model_id].use_reference(profile)
                    self.partitions.touch([record.key])
                    if record.rollback is not None:
                        record.rollback.forget()  # changed outside a batch: roll back to after the switch
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
        undecoded = []  # positions in prepared of the messages the batch decode reads, all at once
        for message in messages:
            item = self._prepare(message)
            if item is not None:
                if item[3] is _UNDECODED:
                    undecoded.append(len(prepared))
                prepared.append(item)
                consumed[item[2].topic] = consumed.get(item[2].topic, 0) + 1
        if undecoded:
            service = self.config.service
            decoded = decode_batch([prepared[i][2] for i in undecoded], self.known_models, service.max_message_bytes,
                                   service.max_features_per_event, service.max_event_id_bytes, self.max_ahead_ms)
            for i, event in zip(undecoded, decoded):
                prepared[i] = (*prepared[i][:3], event)
        for topic, count in consumed.items():
            self.metrics.events_consumed.labels(topic).inc(count)
        arrived = prepared
        if self.oip_topics:
            prepared = self._pair(prepared)
        started = clock.add("decode", started)
        ops, slots = [], []
        joined_models = self.join_settings
        for key, monitor, raw, decoded in prepared:
            op = None
            if decoded is not None and not isinstance(decoded, DeadLetter) and decoded.model_id in joined_models:
                op = join_op(decoded, f"{raw.topic}|{raw.partition}|{raw.offset}", joined_models,
                             self.join_attributes)
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
            if decoded is None:  # half of a pair, waiting for the other
                self._rollback(key, monitor).pass_over(raw.offset)
                continue
            batches.setdefault(key, []).append((raw, decoded, None if slot is None else results[slot]))
        started = clock.add("produce", started)
        for key, items in batches.items():
            self._apply(key, self.partitions.monitor(key), items)
        if self.warmup_models:
            for key in batches:
                self._wait_for_reference(key)
        bound_rollbacks([r.rollback for r in self.partitions.records() if r.rollback is not None])
        self.partitions.touch(key for key, _, _, _ in prepared)
        if self.merged_models:
            now = time.monotonic()
            for key in {key for key, _, _, _ in prepared}:
                record = self.partitions.get(key)
                if record is not None:
                    record.last_message = now
        self.partitions.timers.count(consumed_by_partition(arrived), time.monotonic())

    def _pair(self, prepared: list) -> list:
        """The batch with each Open Inference Protocol half replaced by the events it completes (one per
        row whose other half is already in Redis; none: ``None``), paired in one Redis round trip."""
        ops, spans = [], []
        for _, _, raw, decoded in prepared:
            if isinstance(decoded, OipHalf):
                more = pair_ops(decoded, f"{raw.topic}|{raw.partition}|{raw.offset}")
                spans.append((len(ops), len(ops) + len(more)))
                ops.extend(more)
        if not spans:
            return prepared
        results = self._redis(lambda: self.pairing.run(ops), "request/response pairing")
        out, spans_left = [], iter(spans)
        for key, monitor, raw, decoded in prepared:
            if not isinstance(decoded, OipHalf):
                out.append((key, monitor, raw, decoded))
                continue
            start, end = next(spans_left)
            events = paired_events(decoded, results[start:end])
            out.extend((key, monitor, raw, event) for event in events)
            if not events:
                out.append((key, monitor, raw, None))
        return out

    def _prepare(self, message: Message):
        if message.error() is not None:  # typed by the consumer layer: EOF ignored, fatal raised
            out_of_range = message_error(message)
            if out_of_range is not None:
                self._out_of_range_error(out_of_range)
            return None
        key = (message.topic(), message.partition())
        record = self.partitions.get(key)
        monitor = None if record is None else record.monitor
        offset = message.offset()
        if record is not None and record.quarantine is not None:
            self._quarantined_message(message, record.quarantine)
            return None
        if monitor is None or (monitor.next_offset is not None and offset < monitor.next_offset):
            return None  # not ours any more, or already covered by the stored state
        if key in self.waiting_partitions:
            return None  # fetched before the pause: read again from its next offset once the reference is built
        raw = _raw(message)
        if raw.topic in self.oip_topics:
            return key, monitor, raw, decode_oip(raw, self.oip_models, self.config.service.max_message_bytes,
                                                 self.config.service.max_event_id_bytes,
                                                 self.config.service.max_features_per_event, self.max_ahead_ms)
        return key, monitor, raw, _UNDECODED  # decoded with the rest of the batch

    def _quarantined_message(self, message: Message, quarantine: Quarantine) -> None:
        """A message of a quarantined partition (only fetched with on_corrupt_state = "dead_letter")."""
        if self.config.service.on_corrupt_state != "dead_letter":
            return  # fetched before the pause took effect: read again when the quarantine ends
        letter = DeadLetter("quarantined_partition", f"the partition's stored state ({quarantine.key}) cannot be "
                            f"loaded: {quarantine.problem}")
        self.publisher.dead_letter(_raw(message), letter)
        self.dead_letter_digest.record(letter.reason, letter.error)
        self.metrics.dead_letters.labels(letter.reason).inc()

    def _apply(self, key: PartitionKey, monitor: PartitionMonitor, items: list) -> None:
        """One partition's decoded events of this batch → its detectors → alerts published."""
        clock = CLOCK
        started = clock.now()
        # Never half a batch: a failure midway (a bug: events are validated before any state changes) is
        # rolled back and the batch redone one event at a time; only the events that fail on their own
        # are dead-lettered (processing_error), the state is that of a run that never saw them.
        alerts, failed = self._rollback(key, monitor).apply(
            [(raw.offset, decoded, join) for raw, decoded, join in items], sum(len(raw.value or b"") for raw, _, _ in items))
        if failed:
            raws = {raw.offset: raw for raw, _, _ in items}
            # one dead letter per message (the rows of one Open Inference Protocol message share its offset)
            for (offset, _, _), exc in {item[0]: (item, exc) for item, exc in failed}.values():
                log.error("%s[%d]@%d: processing failed; dead-lettered (processing_error), the partition's state "
                          "left as if it had never been seen", key[0], key[1], offset, exc_info=exc)
                self._dead_letter(raws[offset], DeadLetter("processing_error", f"{type(exc).__name__}: {exc}"), monitor)
            failed_offsets = {offset for (offset, _, _), _ in failed}
            items = [item for item in items if item[0].offset not in failed_offsets]
        started = clock.add("detect", started)
        per_model: dict[tuple[str, str], int] = {}
        for raw, decoded, join in items:
            kind = "label" if isinstance(decoded, LabelEvent) else "inference"
            per_model[(decoded.model_id, kind)] = per_model.get((decoded.model_id, kind), 0) + 1
            if join is not None and join.status == "dropped":
                self.metrics.predictions_dropped.labels(decoded.model_id).inc()
        for (model_id, kind), count in per_model.items():  # configured models only: the codec refuses others
            self.metrics.model_events.labels(model_id, kind).inc(count)
            self.metrics.events_decoded.labels(kind).inc(count)
            self.events_processed += count
        if len(self._checked_models) < len(self.known_models):
            self._check_monitored(monitor)
        if alerts:
            self.history.add(map(alert_point, alerts))
        for alert in alerts:
            self.board.alert(self.publisher.alert(alert))
            self.metrics.alerts.labels(alert.model_id, alert.signal, alert.detector, alert.severity,
                                       alert.status).inc()
            alert_log.info("%s %s %s/%s/%s %s: %s", alert.status.upper(), alert.severity, alert.model_id,
                           alert.signal, alert.name, alert.detector, alert.message,
                           extra={"alert": alert.alert_id})
        for request in self._rollback(key, monitor).take_requests():  # confirmed with the alerts, before the save
            self._request(request)
        clock.add("produce", started)

    def _request(self, request) -> None:
        """Hand one retraining request to the producer (confirmed with the alerts, before the state that made it
        is saved), count it and log it."""
        self.publisher.retraining(request)
        faults.reached("after_request")
        self.metrics.retraining_requests.labels(request.model_id, request.reason).inc()
        retraining_log.info("retraining request %s to %s: %s (incident %s)", request.request_id[:12],
                            self.config.retraining.topic, request.message, request.incident[:12])

    def _rollback(self, key: PartitionKey, monitor: PartitionMonitor) -> Rollback:
        """The way back to ``monitor``'s state before a batch (every change of its state goes through it)."""
        record = self.partitions.get(key)
        rollback = None if record is None else record.rollback
        if rollback is None or rollback.monitor is not monitor:  # a new assignment: a new monitor
            rollback = Rollback(monitor)
            if record is not None:
                record.rollback = rollback
        return rollback

    def _check_monitored(self, monitor: PartitionMonitor) -> None:
        """Once per model, when its reference exists (a warm-up just ended): configured features it has
        no profile of would silently never be monitored; say so loudly (log, metric, model summary)."""
        for model_id, model in monitor.models.items():
            if model_id in self._checked_models or model.reference is None:
                continue
            self._checked_models.add(model_id)
            features = model.config.features
            missing = unmonitored_columns(model.reference, features)
            self.metrics.unmonitored_columns.labels(model_id).set(len(missing))
            for name in missing:
                log.error("model %s: configured feature %s (models.%s.features.%s) is NOT MONITORED: its %s "
                          "reference (%d events) has no profile of it; %s", model_id, name, model_id, name,
                          model.reference.source, model.reference.events,
                          why_unmonitored(name, features[name], model.reference.features))

    def _dead_letter(self, raw: RawMessage, letter: DeadLetter, monitor: PartitionMonitor) -> None:
        self.publisher.dead_letter(raw, letter)
        self._rollback((raw.topic, raw.partition), monitor).skip(raw.offset, letter.reason, letter.error)
        self.dead_letter_digest.record(letter.reason, letter.error)
        self.metrics.dead_letters.labels(letter.reason).inc()
        log.debug("%s[%d]@%d dead-lettered: %s: %s", raw.topic, raw.partition, raw.offset, letter.reason, letter.error)

    # --- model-level decisions (docs/MODEL_DECISIONS.md) ---------------------------------

    def _idle_partitions(self) -> None:
        """A partition at its log end that has received nothing for ``merge_idle_seconds`` goes idle: its
        open buckets close (saved at once) and the models' merges no longer wait for it."""
        now = time.monotonic()
        wait = min(model.merge_idle_seconds for model in self.merged_models.values())
        idle, stalled = [], []
        for record in self.partitions.records():
            monitor = record.monitor
            if monitor is None or monitor.idle:
                continue
            if not record.last_message:
                record.last_message = now  # assigned just now: its quiet time starts here
                continue
            if monitor.waiting and not monitor.stalled and now - record.last_message >= wait:
                monitor.stall()  # waits for a model's reference: holds no other model's windows back
                record.dirty = True
                stalled.append(record.key)
                continue
            low, high = record.watermarks
            position = monitor.next_offset if monitor.next_offset is not None else low
            if high is None or position is None or position < high or now - record.last_message < wait:
                continue
            monitor.go_idle()
            if record.rollback is not None:
                record.rollback.forget()
            if monitor.next_offset is None:  # never read a message: nothing to save but the flag
                key = record.key
                self._redis(lambda: self.merges.mark_idle(*key, self.merged_models), "mark idle")
            else:
                record.dirty = True
                idle.append(record.key)
        if stalled:
            log.info("waiting for a model's reference for %.0f s, idle for the other models: %s", wait,
                     ", ".join(f"{t}[{p}]" for t, p in stalled))
        if idle or stalled:
            if idle:
                log.info("idle (caught up, no message for %.0f s): %s", wait,
                         ", ".join(f"{t}[{p}]" for t, p in idle))
            self._checkpoint(idle + stalled)

    def _load_model_references(self) -> None:
        """The warm-up references the models' merges have built (kept in ``ns:merge:{model}``)."""
        for model_id in self.warmup_models - set(self.model_references):
            profile = model_reference(self.merges.load(model_id))
            if profile is not None:
                self.model_references[model_id] = profile

    def _wait_for_reference(self, key: PartitionKey) -> None:
        """A partition whose warm-up share of some model is summarised reads nothing until the model's
        reference is built: paused at its next offset (what it has not summarised)."""
        record = self.partitions.get(key)
        monitor = None if record is None else record.monitor
        if monitor is None or key in self.waiting_partitions or not monitor.waiting:
            return
        self.consumer.pause([TopicPartition(key[0], key[1])])
        self.waiting_partitions.add(key)
        log.info("%s[%d]: warm-up share of %s summarised; paused at offset %d until the model's reference is built",
                 key[0], key[1], ", ".join(monitor.waiting), monitor.next_offset)

    def _resume_waiting(self) -> None:
        """Waiting partitions whose models' references are built now take them and read on from where they
        stopped."""
        for key in sorted(self.waiting_partitions):
            record = self.partitions.get(key)
            monitor = None if record is None else record.monitor
            if monitor is None:
                self.waiting_partitions.discard(key)
                continue
            if monitor.adopt():
                self.partitions.touch([key])
                if record.rollback is not None:
                    record.rollback.forget()  # changed outside a batch
            if monitor.waiting:
                continue
            try:
                self.consumer.seek(TopicPartition(key[0], key[1], monitor.next_offset))
            except KafkaException as exc:  # paused at assignment, never fetched: it starts at that offset anyway
                log.debug("%s[%d]: seek before resuming refused (%s); resuming at the assigned offset", *key, exc)
            self.consumer.resume([TopicPartition(key[0], key[1])])
            self.waiting_partitions.discard(key)
            log.info("%s[%d]: the model's reference is built; reading on from offset %d", key[0], key[1],
                     monitor.next_offset)

    def _partition_count(self, topic: str) -> int | None:
        count = self._partition_counts.get(topic)
        if count is None and self.consumer is not None:
            try:
                metadata = self.consumer.list_topics(topic, timeout=5.0).topics.get(topic)
            except KafkaException as exc:
                log.warning("metadata of %s not available for the model merge: %s", topic, exc)
                return None
            if metadata is None or metadata.error is not None or not metadata.partitions:
                return None
            count = self._partition_counts[topic] = len(metadata.partitions)
        return count

    def _merge(self) -> None:
        """Each model whose merge this instance owns (the owner of partition crc32(model) % P of the first
        input topic): merge the buckets every partition has closed."""
        self._next_merge = time.monotonic() + MERGE_SECONDS
        topics = list(self.config.kafka.input_topics)
        counts = {topic: self._partition_count(topic) for topic in topics}
        if None in counts.values():
            return
        partitions = [(topic, p) for topic in topics for p in range(counts[topic])]
        for model_id, model in self.merged_models.items():
            first = topics[0]
            record = self.partitions.get((first, zlib.crc32(model_id.encode()) % counts[first]))
            # its state stored or loaded here; or never read (an empty partition is never saved: a model keyed
            # by model id may well not be on the partition its merge belongs to)
            if record is None or record.monitor is None or not (record.persisted or record.monitor.next_offset is None):
                continue
            self._redis(lambda: self._merge_model(model_id, model, partitions), f"merge of {model_id}")

    def _merge_model(self, model_id: str, model, partitions: list[PartitionKey]) -> None:
        """One merge step: read, decide, publish and confirm the alerts, then save the merge state (only
        forward) and delete what it consumed. Safe to repeat after a failure at any point."""
        started = CLOCK.now()
        state = self.merges.load(model_id)
        reference = self.references.get(model_id)
        if model_id in self.warmup_models:
            reference = self.model_references.get(model_id) or model_reference(state)
            if reference is None:
                self._build_reference(model_id, model, state, partitions)
                CLOCK.add("merge", started)
                return
        result = merge_step(model, reference, state, self.merges.partials(model_id, partitions),
                            int(model.merge_bucket_seconds * 1000), retraining=bool(self.config.retraining.topic),
                            previous=self.previous_references.get(model_id))
        if result.buckets:
            result.state["step"] = (state or {}).get("step", 0) + 1
            for alert in result.alerts:
                self._announce(alert)
            for line in result.incident_lines:  # INFO: the alerts themselves are the warning
                incident_log.info(line)
            for request in result.requests:
                self._request(request)
            self.publisher.confirm()  # before the state that says they were raised
            if self.merges.save(model_id, result.state):
                if result.stale:
                    log.warning("model %s: the merge now judges against reference %s: dropped %d open window(s) "
                                "(%d events) and %d partial(s) (%d events) sketched against an older reference",
                                model_id, result.state["judged"]["tag"], result.stale.get("windows", 0),
                                result.stale.get("window_events", 0), result.stale.get("partials", 0),
                                result.stale.get("partial_events", 0))
                self.history.add(result.points)  # the model windows decided, best effort
                self.merges.consumed(model_id, result.consumed)
                self.metrics.merge_buckets.labels(model_id).inc(result.buckets)
                if result.late:
                    self.metrics.merge_late.labels(model_id).inc(result.late)
                state = result.state
            else:
                log.warning("model %s: a newer merge state is stored (another instance merges this model now); "
                            "this step is not saved", model_id)
                self.metrics.merge_refused.labels(model_id).inc()
        elif result.consumed:  # merged before (the stored state says so); their deletion was interrupted
            self.merges.consumed(model_id, result.consumed)
        self.board.merged(model_id, {"last_bucket": (state or {}).get("last_bucket"),
                                     "windows": (state or {}).get("windows", 0),
                                     "open_window_events": ((state or {}).get("window") or {}).get("events", 0),
                                     "episodes": episodes_summary(state), **self._merged_incidents(model_id, state),
                                     **open_windows(state), **self._merged_fair(model, state),
                                     **self._merged_estimate(model, state)})
        CLOCK.add("merge", started)

    def _merged_fair(self, model, state) -> dict:
        """The model-level fairness of a model merged here (its groups' rates and counts), for the status
        page and the metrics (a new dict each time: a scrape reads it from another thread)."""
        info = fairness_info(model, state)
        if not info:
            return {}
        self._merged_fairness = {**self._merged_fairness, model.model_id: info}
        return {"fairness": info}

    def _merged_estimate(self, model, state) -> dict:
        """The model-level estimated performance of a model merged here (its last window's metrics, the
        reference's range), for the status page and the metrics (a new dict each time, as above)."""
        info = estimate_info(model, state)
        if not info:
            return {}
        self._merged_estimates = {**self._merged_estimates, model.model_id: info}
        return {"estimated": info}

    def _merged_incidents(self, model_id: str, state) -> dict:
        """The incidents and last retraining requests of a model merged here (the status page's rows), and its
        open incidents for ``stream_monitor_incidents_open`` (a new dict each time: a scrape reads it from
        another thread)."""
        rows = incidents_summary(model_id, state)
        self._merged_open = {**self._merged_open, model_id: sum(1 for r in rows if r["state"] == "open")}
        return {"incidents": rows, "retraining": requests_summary(model_id, state)}

    def _build_reference(self, model_id: str, model, state, partitions: list[PartitionKey]) -> None:
        """The model's warm-up reference, once every partition has closed enough warm-up buckets: stored in
        the merge state (only forward); the partitions take it from there."""
        limits = Limits(self.config.service.max_inferred_columns, self.config.service.max_categories_per_column)
        result = reference_step(model, state, self.merges.partials(model_id, partitions),
                                int(model.merge_bucket_seconds * 1000), limits)
        if result is None:
            return
        result.state["step"] = (state or {}).get("step", 0) + 1
        if not self.merges.save(model_id, result.state):
            self.metrics.merge_refused.labels(model_id).inc()
            return
        self.merges.consumed(model_id, result.consumed)
        self.model_references[model_id] = result.reference
        first, last = result.state["reference_buckets"]
        log.info("model %s: reference %s built from %d events of %d partition(s) (event-time buckets %d to %d)",
                 model_id, result.state["reference_id"][:12], result.reference.events, len(result.consumed),
                 first, last)

    def _announce(self, alert) -> None:
        self.history.add([alert_point(alert)])
        self.board.alert(self.publisher.alert(alert))
        self.metrics.alerts.labels(alert.model_id, alert.signal, alert.detector, alert.severity, alert.status).inc()
        alert_log.info("%s %s %s/%s/%s %s: %s", alert.status.upper(), alert.severity, alert.model_id,
                       alert.signal, alert.name, alert.detector, alert.message, extra={"alert": alert.alert_id})

    # --- checkpoints ----------------------------------------------------------------------

    def _checkpoint_due(self) -> list[PartitionKey]:
        """The partitions to save now: changed, and their own interval since their last save is up."""
        return self.partitions.due(time.monotonic())

    def _checkpoint(self, keys: list[PartitionKey], write_back: bool = True) -> int:
        """Save the changed ones of ``keys`` (:func:`~stream_monitor.checkpoint.checkpoint`); how many were
        saved. No status work here: the loop refreshes the status page when :attr:`status_due`."""
        started = CLOCK.now()
        records = self.partitions.to_save(keys)
        lost: list[PartitionKey] = []
        if records:
            summaries = self._redis(lambda: checkpoint(records, self.publisher, self.store, self.consumer,
                                                       self.metrics, lost), "checkpoint")
            for record in records:
                record.dirty = False
                if record.key in summaries:
                    record.summary = summaries[record.key]
                if record.monitor is not None:  # saved: its closed windows go to the history (best effort)
                    self.history.add(record.monitor.take_points())
            self.status_due = True
        CLOCK.add("checkpoint", started)
        for stage, seconds in CLOCK.since_export().items():
            self.metrics.stage_seconds.labels(stage).inc(seconds)
        self.partitions.timers.saved([r.key for r in records], time.monotonic())
        if lost and write_back:  # Redis lost its data: write back every partition owned here, not only the changed
            saved = {r.key for r in records}
            others = [r for r in self.partitions.records()
                      if r.key not in saved and r.monitor is not None and r.persisted]
            for record in others:
                record.dirty = True
            if others:
                log.warning("writing back the state of %d more partition(s) owned here, which had nothing new to "
                            "save: Redis lost theirs too", len(others))
                return len(records) + self._checkpoint([r.key for r in others], write_back=False)
        return len(records)

    def _publish_status(self) -> None:
        """Status page from the summaries saved at the last checkpoints, and the label-join gauges.
        (The per-partition gauges are derived at scrape time: :meth:`_partition_views`.)"""
        self.status_due = False
        self._publish_board()
        for model_id in self.join_settings:
            try:
                lag = self.joiner.lag(model_id)
            except REDIS_ERRORS:
                continue
            self.metrics.awaiting_labels.labels(model_id).set(lag["awaiting"])
            self.metrics.labels_expired.labels(model_id).set(lag["expired"])
            self.metrics.predictions_evicted.labels(model_id).set(lag["evicted"])
            self.metrics.labels_evicted.labels(model_id).set(lag["labels_evicted"])
            self.metrics.join_bytes.labels(model_id).set(lag["bytes"])
            self.board.label_lag[model_id] = lag
        for model_id in self.pairing.models_seen:
            try:
                pairs = self.pairing.lag(model_id)
            except REDIS_ERRORS:
                continue
            self.metrics.oip_waiting.labels(model_id).set(pairs["awaiting"])
            self.metrics.oip_responses_stored.labels(model_id).set(pairs["labels_waiting"])
            self.metrics.oip_unpaired.labels(model_id).set(pairs["expired"])
            self.metrics.oip_responses_evicted.labels(model_id).set(pairs["labels_evicted"])

    def _publish_board(self) -> None:
        views = {(v.topic, v.partition): v for v in self._partition_views()}
        records = self.partitions.records()
        shown = {r.key: (r.summary, views[r.key].lag if r.key in views else None)
                 for r in records if r.summary is not None and r.monitor is not None}
        for (topic, partition), quarantine in self.partitions.quarantined().items():
            shown[(topic, partition)] = ({"partition": partition, "next_offset": None, "models": {},
                                          "quarantined": {"key": quarantine.key, "problem": quarantine.problem,
                                                          "since": quarantine.since,
                                                          "messages": self.config.service.on_corrupt_state}}, None)
        self.board.update(shown)

    def _partition_views(self) -> list[PartitionView]:
        """The partitions owned now, for a scrape or the status page: latest summary, next offset to process
        and the consumer's cached watermarks (kept current by librdkafka's fetcher even while the loop waits,
        so a stall shows as growing lag). Runs in the HTTP thread too: it only copies the list of records
        (one step under the GIL) and reads attributes; it never waits for the loop."""
        views = []
        for record in sorted(self.partitions.records(), key=lambda r: r.key):
            monitor = record.monitor
            if monitor is None:
                continue
            (topic, partition), (low, high), summary = record.key, record.watermarks, record.summary
            next_offset = monitor.next_offset
            if next_offset is None and summary is not None:
                next_offset = summary.get("next_offset")
            views.append(PartitionView(topic, partition, summary, next_offset, high, low))
        return views

    def _observe_loop(self) -> None:
        """Every loop iteration: the health report's heartbeat, the dead-letter summary line when due, and,
        twice a second, the consumer's cached watermarks of the owned partitions (each record's pair is
        replaced whole, for readers in other threads)."""
        self.health.tick()
        self.dead_letter_digest.flush()
        now = time.monotonic()
        if now >= self._next_watermarks:
            self._next_watermarks = now + WATERMARK_SECONDS
            self._read_watermarks()
        if now >= self._next_rate_sample:
            self._next_rate_sample = now + RATE_SAMPLE_SECONDS
            self.board.processed(self.events_processed, now)

    def _read_watermarks(self) -> None:
        consumer = self.consumer
        if consumer is not None:
            for record in self.partitions.records():
                if record.monitor is not None:
                    record.watermarks = consumer.watermarks(*record.key)
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
            records = [r for r in self.partitions.records() if r.monitor is not None]
            read = consumer.watermarks_from_elsewhere([r.key for r in records])
            if read is None:
                return
            if self._watermarks_read < started:  # the loop has not read newer ones meanwhile
                for record in records:
                    record.watermarks = read[record.key]

    def _watch_group(self) -> None:
        """The status page's view of the whole group: every stored partition's last saved summary, read
        from Redis every GROUP_VIEW_SECONDS in its own thread, so neither the loop nor a request waits on
        it; its cost is one read per stored partition per period. A failed read is shown on the page (the
        last view kept, marked stale) and never counted as the loop's Redis failure."""
        self.board.group_refresh_seconds = GROUP_VIEW_SECONDS
        while not self.stopping:
            owned = {r.key for r in self.partitions.records()}  # fresher in memory (quarantined ones too): not read
            try:
                rows = self.store.partition_rows(skip=owned, tolerant=True)
            except REDIS_ERRORS as exc:
                self.board.group(None, problem=clean(str(exc))[:200] or type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - the thread must keep going; shown on the page, retried
                self.board.group(None, problem=clean(f"{type(exc).__name__}: {exc}")[:200], redis=False)
            else:
                self.board.group(rows, owned=owned)
            time.sleep(GROUP_VIEW_SECONDS)

    def _watched(self, callback: Callable[[Consumer, list[TopicPartition]], None],
                 assigning: bool) -> Callable[[Consumer, list[TopicPartition]], None]:
        """A rebalance callback that also tells the health report: an eager revoke or a loss starts a
        (re)join, an assignment (even an empty one: the group has settled) ends it."""

        def watched(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            if not assigning and (callback == self._on_lost or not self.cooperative):
                self.health.joining()
            callback(consumer, partitions)
            if assigning:
                self.health.assigned(len(self.partitions))
                # a partition taken over shows its restored state at once, not at its next checkpoint
                # (which an idle partition may not have for a long time)
                fresh = [r for r in self.partitions.records()
                         if r.summary is None and r.monitor is not None and r.monitor.next_offset is not None]
                for record in fresh:
                    record.summary = record.monitor.summary()
                if fresh:
                    self._publish_board()
            else:
                self.health.assigned_partitions = len(self.partitions)

        return watched

    # --- rebalance ------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        paused = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            try:
                monitor, loaded = self._load(tp.topic, tp.partition)
            except CorruptState as exc:
                tp.offset = self._quarantine(key, str(exc))
                if self.config.service.on_corrupt_state == "pause":
                    paused.append(TopicPartition(tp.topic, tp.partition))
                continue
            if loaded is None:
                self._missing_state(consumer, tp)
                tp.offset = OFFSET_BEGINNING  # no state: the log from the start is the truth
            else:
                next_offset = loaded
                tp.offset = next_offset
                start = self._log_start(consumer, tp)
                if start is not None and next_offset < start:  # retention deleted what the offset points to
                    self._offset_out_of_range(key, monitor, next_offset, start, None)
                    tp.offset = OFFSET_BEGINNING
                else:
                    log.info("assigned %s[%d]: resuming at offset %d", tp.topic, tp.partition, next_offset)
            self.partitions.assign(key, monitor, persisted=loaded is not None)
            if self.alertmanager is not None and loaded is not None:  # it keeps what is firing there alive
                self.alertmanager.adopt(firing_in(monitor.summary(), tp.partition, frozenset(self.merged_models)))
        assign(consumer, partitions, self.cooperative)
        if self.warmup_models:
            self._redis(self._load_model_references, "load model references")
            for tp in partitions:
                key = (tp.topic, tp.partition)
                self.waiting_partitions.discard(key)
                record = self.partitions.get(key)
                if record is not None and record.monitor is not None and record.monitor.adopt():
                    record.dirty = True
                self._wait_for_reference(key)
        if paused:
            consumer.pause(paused)  # assigned (the group sees them owned), nothing fetched
            self.partitions.paused.update((tp.topic, tp.partition) for tp in paused)
        # a partition paused by an earlier quarantine, assigned again and loadable now: whether the
        # client kept its pause across the rebalance or not, it must be read
        again = [TopicPartition(*key) for key in self.partitions.paused if self.partitions.owns(key)]
        if again:
            consumer.resume(again)
            self.partitions.paused.difference_update((tp.topic, tp.partition) for tp in again)
        if self.partitions.quarantined():
            self._publish_board()

    def _load(self, topic: str, partition: int) -> tuple[PartitionMonitor, int | None]:
        """A monitor restored from the partition's stored state, and its next offset (``None``: nothing
        stored). :class:`CorruptState` when the stored fields are not a state this version can continue."""
        monitor = PartitionMonitor(self.config, partition, self.references, self.model_references)
        loaded = self._redis(lambda: self.store.load(topic, partition), "load state")
        if loaded is None:
            return monitor, None
        next_offset, snapshot = loaded
        try:
            monitor.restore(snapshot)
        except RESTORE_ERRORS as exc:
            problem = str(exc) if isinstance(exc, StateError) else f"{type(exc).__name__}: {exc}"
            raise CorruptState(f"{self.store.key(topic, partition)}: field 'state' decodes but cannot be "
                               f"restored: {problem}") from None
        for model_id in monitor.rebaselined:  # settings changed under the state (logged by restore)
            self.metrics.rebaselined.labels(model_id).inc()
        monitor.next_offset = next_offset
        return monitor, next_offset

    # --- quarantine: a partition whose stored state cannot be loaded ---------------------------

    def _quarantine(self, key: PartitionKey, problem: str) -> int:
        """Quarantine an assigned partition (the other partitions go on): reported (ERROR, metrics,
        status board), its Redis key never written (the evidence is kept), its messages paused or
        dead-lettered (``service.on_corrupt_state``); re-checked every ``quarantine_recheck_seconds``.
        The offset to assign it at."""
        service = self.config.service
        redis_key = self.store.key(*key)
        self.partitions.quarantine(key, Quarantine(redis_key, problem, time.time(),
                                                   time.monotonic() + service.quarantine_recheck_seconds))
        self.metrics.quarantines.inc()
        then = ("its messages wait (paused)" if service.on_corrupt_state == "pause" else
                "its messages are dead-lettered (quarantined_partition)")
        log.error("QUARANTINED %s[%d]: its stored state cannot be loaded: %s. The key is left as it is; %s "
                  "(service.on_corrupt_state = %r) until the key is fixed or deleted (checked every %g s); "
                  "the other partitions go on", key[0], key[1], problem, then, service.on_corrupt_state,
                  service.quarantine_recheck_seconds)
        if service.on_corrupt_state == "dead_letter":
            stored = self._redis(lambda: self.redis.hget(redis_key, "offset"), "read a quarantined offset")
            text = (stored or b"").decode("ascii", "replace")
            if text.isdigit():
                return int(text)  # what comes after the stored state
        return OFFSET_BEGINNING

    def _recheck_quarantined(self) -> None:
        """Lift the quarantine of partitions whose key became loadable (fixed, imported) or was deleted:
        they are read from the stored offset (from the beginning when deleted), paused ones resumed."""
        now = time.monotonic()
        for key, quarantine in self.partitions.quarantined().items():
            if quarantine.next_check > now:
                continue
            try:
                monitor, loaded = self._load(*key)
            except CorruptState as exc:
                quarantine.next_check = now + self.config.service.quarantine_recheck_seconds
                if str(exc) != quarantine.problem:
                    quarantine.problem = str(exc)
                    log.error("QUARANTINED %s[%d]: still cannot be loaded: %s", key[0], key[1], exc)
                continue
            self.partitions.lift(key, monitor, persisted=loaded is not None)
            if loaded is None:
                log.warning("quarantine of %s[%d] lifted: its state key was deleted; rebuilding it from the "
                            "beginning of the retained log", key[0], key[1])
            else:
                log.warning("quarantine of %s[%d] lifted: its stored state loads now; resuming at offset %d",
                            key[0], key[1], loaded)
            tp = TopicPartition(key[0], key[1], OFFSET_BEGINNING if loaded is None else loaded)
            self.consumer.seek(tp)
            if key in self.partitions.paused:
                self.consumer.resume([TopicPartition(key[0], key[1])])
                self.partitions.paused.discard(key)
            self.health.assigned_partitions = len(self.partitions)
            self._publish_board()

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

    # --- a log that moved under the stored offset ----------------------------------------------

    @staticmethod
    def _log_start(consumer: Consumer, tp: TopicPartition) -> int | None:
        """The partition's earliest retained offset (``None`` if the broker does not say within 2 s)."""
        try:
            low, _ = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=2, cached=False)
        except KafkaException:
            return None
        return low if low >= 0 else None

    def _offset_out_of_range(self, key: PartitionKey, monitor: PartitionMonitor | None, stored: int | None,
                             start: int | None, end: int | None) -> None:
        """The stored offset is outside the partition's log: reported, then (``on_offset_out_of_range =
        "earliest"``) the partition is read again from its earliest retained message in a new epoch, the
        detector state carrying on (the new log's events are new events); the caller seeks."""
        topic, partition = key
        span = f"[{'?' if start is None else start}, {'?' if end is None else end}]"
        self.metrics.offset_resets.labels(topic, str(partition)).inc()
        if self.config.service.on_offset_out_of_range == "stop":
            raise StateError(f"{topic}[{partition}]: the stored offset {stored} is outside the partition's log {span}: "
                             "the topic was recreated, the broker lost its data, or retention deleted those messages. "
                             "service.on_offset_out_of_range = 'stop': check the topic, then either set it to "
                             "'earliest' (read from the earliest retained message, the detector state carries on) "
                             "or restore a state that matches the log (`stream-monitor state import`)")
        log.error("OFFSET OUT OF RANGE: %s[%d]: the stored offset %s is outside the partition's log %s (the topic "
                  "was recreated, the broker lost its data, or retention deleted those messages); reading resumes "
                  "at the earliest retained message, the detector state carries on "
                  "(service.on_offset_out_of_range = 'earliest')", topic, partition, stored, span)
        if monitor is not None:
            monitor.next_offset = None
        self.store.new_epoch(topic, partition)

    def _out_of_range_error(self, error: OffsetOutOfRange) -> None:
        """The broker answered a fetch with "offset out of range" (auto.offset.reset = error makes it an error)."""
        key = (error.topic, error.partition)
        monitor = self.partitions.monitor(key)
        if monitor is None:
            return
        stored = monitor.next_offset if monitor.next_offset is not None else error.offset
        try:
            start, end = self.consumer.get_watermark_offsets(TopicPartition(*key), timeout=2, cached=False)
        except KafkaException:
            start, end = None, None
        self._offset_out_of_range(key, monitor, stored, start, end)
        self.consumer.seek(TopicPartition(key[0], key[1], OFFSET_BEGINNING))

    def _check_log_ends(self) -> None:
        """Some brokers answer a fetch beyond the log's end with nothing rather than "out of range": the
        consumer would wait until the new log grows past the stored offset, then skip what came before.
        The end reported by the consumer's own fetches (cached high watermark) below the offset to read
        gives it away; as that value can be stale (e.g. from before a revoke), a fresh reader confirms it
        before anything is reset (a false reset would count events twice)."""
        now = time.monotonic()
        self._next_log_end_check = now + LOG_END_CHECK_SECONDS
        for record in self.partitions.records():
            key, monitor = record.key, record.monitor
            reading = None if monitor is None else monitor.next_offset
            if not reading or record.log_check_after > now:
                continue
            try:
                start, high = self.consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
            except KafkaException:
                continue
            if high < 0 or high >= reading:
                continue
            end = self._confirmed_log_end(key, reading)
            if end is None:
                record.log_check_after = now + 30
                log.warning("%s[%d]: the broker reports the log ending at %d, before the offset to read (%d), but "
                            "a second reader got no answer to confirm it; checking again in 30 s", key[0], key[1],
                            high, reading)
            elif end < reading:
                self._offset_out_of_range(key, monitor, reading, start if start >= 0 else None, end)
                self.consumer.seek(TopicPartition(key[0], key[1], OFFSET_BEGINNING))

    def _confirmed_log_end(self, key: PartitionKey, reading: int) -> int | None:
        """The log's end as a fresh, group-less reader fetching at ``reading - 1`` sees it: at least
        ``reading`` when that message exists, else the high watermark of its fetch; ``None`` when no
        fetch was answered within 10 s. It commits nothing and joins no group."""
        settings = {k: v for k, v in self.consumer_settings.items()
                    if k not in ("group.instance.id", "partition.assignment.strategy")}
        settings.update({"group.id": f"{self.config.kafka.group_id}.log-end-check", "auto.offset.reset": "error",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
        probe = Consumer(settings)
        tp = TopicPartition(key[0], key[1], reading - 1)
        try:
            probe.assign([tp])
            started = time.monotonic()
            deadline = started + 10
            while time.monotonic() < deadline and not self.stopping:
                for message in probe.consume(1, 0.2):
                    if message.error() is None:
                        return max(reading, message.offset() + 1)
                    if message_error(message) is not None:  # out of range: the log ends before reading - 1
                        _, end = probe.get_watermark_offsets(TopicPartition(*key), timeout=2, cached=False)
                        return end
                # A broker that answers a fetch beyond the end with nothing: the end its fetches report,
                # once they have had time to deliver the message at reading - 1 if it existed (a too-low
                # watermark alone is no proof: the local broker reports the last batch's base offset + 1).
                _, end = probe.get_watermark_offsets(TopicPartition(*key), cached=True)
                if 0 <= end < reading and time.monotonic() - started >= PROBE_SILENCE_SECONDS:
                    return end
            return None
        except (KafkaException, ConsumerFatalError):  # the probe's own failure: no answer, the service goes on
            return None
        finally:
            probe.close()

    def _join_lost(self, model_id: str) -> None:
        """The label join's marker of a model was gone (see :mod:`join`): Redis lost its data."""
        self.metrics.join_lost.labels(model_id).inc()
        log.error("REDIS LOST ITS DATA: label join of model %s: its keys had vanished (Redis restarted empty or "
                  "was flushed); predictions still waiting for their label and labels waiting for their "
                  "prediction are gone, so those pairs will never be counted. The join goes on with what "
                  "arrives from now on; the detector state is checked separately.", model_id)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if not self.abandoned:  # after a stop during an outage, Redis keeps the last consistent state
            self._checkpoint(keys)  # persist before release
        faults.reached("during_rebalance")
        self.partitions.revoke(keys)  # their series go too: the gauges are derived from the registry
        if self.alertmanager is not None:
            self.alertmanager.release([p for _, p in keys])
        self.waiting_partitions.difference_update(keys)
        log.info("revoked %s", ", ".join(f"{t}[{p}]" for t, p in keys) or "nothing")
        unassign(consumer, partitions, self.cooperative)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.partitions.lose(keys)  # another member may own them now: saving could overwrite its progress
        if self.alertmanager is not None:
            self.alertmanager.release([p for _, p in keys])
        self.waiting_partitions.difference_update(keys)
        log.warning("lost %s without a clean revoke; their unsaved progress will be redone by the new owner",
                    ", ".join(f"{t}[{p}]" for t, p in keys))


def _raw(message: Message) -> RawMessage:
    timestamp_type, timestamp = message.timestamp()
    return RawMessage(topic=message.topic(), partition=message.partition(), offset=message.offset(),
                      value=message.value(), key=message.key(), headers=tuple(message.headers() or ()),
                      timestamp_ms=timestamp if timestamp_type else None)
