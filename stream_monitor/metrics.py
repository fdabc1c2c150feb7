"""Prometheus metrics. Families are prefixed ``stream_monitor_``.

Label cardinality is bounded: ``reason`` takes the dead-letter reasons;
``model``, ``signal``, ``name`` and ``detector`` come from the config and the
reference profiles (columns × detectors per model), and at most
``MAX_DETECTOR_SERIES`` (model, signal, name, detector) series are exported per
instance (in label order; each series left out is counted once in
``stream_monitor_detector_series_dropped_total``);
``topic``/``partition`` are the input partitions this instance owns.
The detector gauges, the firing counts, the performance gauges and the consumer lag are derived at
scrape time (:class:`PartitionCollector`) from the partitions this instance owns at that moment, so
a partition that moved away takes its series with it.
The detector gauges hold the highest statistic over this instance's partitions;
ADWIN exports its window's mean reference rank (0.5 when unchanged) and no threshold,
since its cut test is internal.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import platform

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .events import DEAD_LETTER_REASONS, segment_words

MAX_DETECTOR_SERIES = 5_000

# A counter's `_created` series (its creation time as a second sample) doubles the series count and
# is not what the conventions ask of a counter; Prometheus reads resets from the value itself.
disable_created_metrics()


class Metrics:
    """The service's families. ``clients`` names the Kafka client's versions for
    ``stream_monitor_build_info`` (the shell passes them: this module imports no client)."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 clients: Mapping[str, str] | None = None):
        self.registry = registry or REGISTRY
        kw = {"registry": self.registry}
        self.events_consumed = Counter("stream_monitor_events_consumed_total",
                                       "Input messages consumed", ["topic"], **kw)
        self.model_events = Counter("stream_monitor_model_events_total",
                                    "Events of a configured model processed (inference or label events)",
                                    ["model", "kind"], **kw)
        self.last_checkpoint = Gauge("stream_monitor_last_checkpoint_timestamp_seconds",
                                     "Unix time of the last completed checkpoint (state saved, offsets committed);"
                                     " 0 before the first", **kw)
        self.checkpoint_interval = Gauge("stream_monitor_checkpoint_interval_seconds",
                                         "service.checkpoint_interval_seconds: a changed partition is saved at least"
                                         " this often (alert rules compare the last checkpoint's age with it)", **kw)
        self.events_decoded = Counter("stream_monitor_events_decoded_total",
                                      "Input messages decoded into events", ["kind"], **kw)
        self.dead_letters = Counter("stream_monitor_dead_letters_total",
                                    "Input messages sent to the dead-letter topic", ["reason"], **kw)
        for reason in DEAD_LETTER_REASONS:  # exported at 0 from the start, so rate() sees the first ones
            self.dead_letters.labels(reason)
        self.alerts = Counter("stream_monitor_alerts_total", "Alerts published",
                              ["model", "signal", "detector", "severity", "status"], **kw)
        self.retraining_requests = Counter("stream_monitor_retraining_requests_total",
                                           "Retraining requests published ([retraining] topic)", ["model", "reason"],
                                           **kw)
        self.checkpoint_seconds = Histogram("stream_monitor_checkpoint_seconds",
                                            "Duration of a checkpoint (flush, save, commit)", **kw)
        self.checkpoints = Counter("stream_monitor_checkpoints_total", "Checkpoints completed", **kw)
        self.redis_seconds = Histogram("stream_monitor_redis_seconds", "Redis round trips (state saves)",
                                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
                                       **kw)
        self.assigned_partitions = Gauge("stream_monitor_assigned_partitions",
                                         "Input partitions owned by this instance", **kw)
        self.redis_errors = _Stamped(Counter("stream_monitor_redis_errors_total",
                                             "Redis operations that failed and were retried (processing paused)",
                                             **kw))
        self.offset_resets = Counter("stream_monitor_offset_resets_total",
                                     "Stored offsets found outside the partition's log (topic recreated, broker "
                                     "lost its data, retention); reading went on from the earliest message",
                                     ["topic", "partition"], **kw)
        self.quarantined_partitions = Gauge("stream_monitor_quarantined_partitions",
                                            "Assigned partitions whose stored state cannot be loaded (corrupt, old "
                                            "format): quarantined, their messages waiting or dead-lettered", **kw)
        self.quarantines = Counter("stream_monitor_quarantines_total",
                                   "Partitions quarantined on assignment because their stored state cannot be loaded",
                                   **kw)
        self.state_lost = Counter("stream_monitor_state_lost_total",
                                  "Partitions whose state had vanished from Redis (Redis lost its data)", **kw)
        self.join_lost = Counter("stream_monitor_join_lost_total",
                                 "Times the label join's data was found gone from Redis (Redis lost its data)",
                                 ["model"], **kw)
        self.dropped_series = Counter("stream_monitor_detector_series_dropped_total",
                                      "Detector series not exported (over the cardinality cap), each counted once",
                                      **kw)
        self.awaiting_labels = Gauge("stream_monitor_predictions_awaiting_labels",
                                     "Predictions stored for the label join and not labelled yet", ["model"], **kw)
        self.labels_expired = Gauge("stream_monitor_predictions_never_labelled",
                                    "Predictions that expired, or were evicted, without a label", ["model"], **kw)
        self.predictions_evicted = Gauge("stream_monitor_predictions_evicted",
                                         "Unlabelled predictions evicted from the label join to make room for newer "
                                         "ones (performance.max_pending, max_pending_bytes); also never labelled",
                                         ["model"], **kw)
        self.labels_evicted = Gauge("stream_monitor_labels_evicted",
                                    "Labels that came before their prediction, evicted from the label join to make "
                                    "room (performance.max_pending_bytes)", ["model"], **kw)
        self.join_bytes = Gauge("stream_monitor_join_bytes",
                                "Estimated Redis memory of the label join's entries of a model (kept by the join "
                                "itself; bounded by performance.max_pending_bytes)", ["model"], **kw)
        self.oip_waiting = Gauge("stream_monitor_oip_requests_waiting",
                                 "Rows of Open Inference Protocol requests waiting in Redis for their response",
                                 ["model"], **kw)
        self.oip_responses_stored = Gauge("stream_monitor_oip_responses_stored",
                                          "Rows of responses that came before their request, kept in Redis for "
                                          "oip.pair_wait_seconds (waiting, or paired and remembered for replays)",
                                          ["model"], **kw)
        self.oip_unpaired = Gauge("stream_monitor_oip_unpaired",
                                  "Rows of requests that never met their response: expired after "
                                  "oip.pair_wait_seconds or evicted (oip.max_pending, max_pending_bytes)",
                                  ["model"], **kw)
        self.oip_responses_evicted = Gauge("stream_monitor_oip_responses_evicted",
                                           "Rows of responses that came before their request, evicted to make room "
                                           "(oip.max_pending_bytes)", ["model"], **kw)
        self.predictions_dropped = Counter("stream_monitor_predictions_dropped_total",
                                           "Predictions or early labels not stored for the join: bigger by "
                                           "themselves than performance.max_pending_bytes", ["model"], **kw)
        self.stage_seconds = Counter("stream_monitor_stage_seconds_total",
                                     "Time spent per stage of the loop (consume, decode, join, detect, produce, "
                                     "checkpoint) and per detector kind inside detect", ["stage"], **kw)
        self.publish_failures = Counter("stream_monitor_publish_failures_total",
                                        "Alerts and dead letters the producer or the broker refused for good (e.g. "
                                        "MSG_SIZE_TOO_LARGE): an alert is dead-lettered instead, a dead letter sent "
                                        "without its original bytes, or, if that fails too, dropped",
                                        ["topic", "reason"], **kw)
        self.outputs_truncated = Counter("stream_monitor_outputs_truncated_total",
                                         "Alerts and dead letters whose contents were cut to fit the producer's "
                                         "message size (the record lists what was cut)", ["topic"], **kw)
        self.producer_restarts = Counter("stream_monitor_producer_restarts_total",
                                         "Producers replaced because deliveries stalled while the broker answered "
                                         "(e.g. after a broker restart); unacknowledged messages are resent", **kw)
        self.group_rejoins = Counter("stream_monitor_group_rejoins_total",
                                     "Consumer-group joins abandoned after service.rejoin_stalled_join_seconds "
                                     "without an assignment: the instance left the group and joined again", **kw)
        self.rebaselined = Counter("stream_monitor_rebaselined_total",
                                   "Model states restored under changed detector settings: what no longer fit "
                                   "started afresh", ["model"], **kw)
        self.unmonitored_columns = Gauge("stream_monitor_unmonitored_columns",
                                         "Configured features the model's reference has no profile of "
                                         "(never monitored; see the error log)", ["model"], **kw)
        self.alertmanager_posted = Counter("stream_monitor_alertmanager_alerts_posted_total",
                                           "Alerts Alertmanager accepted (a firing alert counts at each re-post)",
                                           **kw)
        self.alertmanager_failed = Counter("stream_monitor_alertmanager_alerts_failed_total",
                                           "Alerts in posts to Alertmanager that failed: unreachable (retried with "
                                           "backoff) or refused (an answer 4xx: not retried)", ["reason"], **kw)
        self.alertmanager_dropped = Counter("stream_monitor_alertmanager_alerts_dropped_total",
                                            "Alerts never posted to Alertmanager: over alertmanager.max_queue while "
                                            "it was unreachable (oldest first), or left when the service stopped",
                                            **kw)
        self.alertmanager_queued = Gauge("stream_monitor_alertmanager_alerts_queued",
                                         "Alerts waiting to be posted to Alertmanager", **kw)
        from . import __version__  # noqa: PLC0415

        clients = clients or {}
        self.build_info = Gauge("stream_monitor_build_info", "The running build (always 1): package, Python, "
                                "confluent-kafka and librdkafka versions",
                                ["version", "python", "confluent_kafka", "librdkafka"], **kw)
        self.build_info.labels(__version__, platform.python_version(), clients.get("confluent_kafka", ""),
                               clients.get("librdkafka", "")).set(1)
        # model-level decisions (docs/MODEL_DECISIONS.md)
        self.merge_buckets = Counter("stream_monitor_merge_buckets_total",
                                     "Event-time buckets merged into a model's windows by this instance", ["model"],
                                     **kw)
        self.merge_late = Counter("stream_monitor_merge_late_partials_total",
                                  "Partials merged after their bucket had passed (a partition woke from idle)",
                                  ["model"], **kw)
        self.merge_dropped = Counter("stream_monitor_merge_partials_dropped_total",
                                     "Unmerged partials dropped over merge_max_buckets (oldest first)", ["model"], **kw)
        self.merge_refused = Counter("stream_monitor_merge_refused_total",
                                     "Merge states not saved because a newer one was stored (another merger)",
                                     ["model"], **kw)
        self.history_points = Counter("stream_monitor_history_points_total",
                                      "History points (closed windows, alerts) appended to Redis for reports",
                                      **kw)
        self.history_dropped = Counter("stream_monitor_history_dropped_total",
                                       "History points not written (Redis refused or was unreachable, or the "
                                       "writer's queue was full); processing never waits for them", **kw)
        self._dropped: set[tuple[str, str, str, str]] = set()
        self._dropped_lock = threading.Lock()
        self.partitions = PartitionCollector(self)
        self.registry.register(self.partitions)

    def count_dropped(self, key: tuple[str, str, str, str]) -> None:
        """A detector series over the cap: counted once, however many scrapes leave it out."""
        with self._dropped_lock:
            if key not in self._dropped:
                self._dropped.add(key)
                self.dropped_series.inc()


class _Stamped:
    """A counter that also remembers when it was last incremented (``last``, monotonic seconds):
    the health report reads "Redis failed after the loop last came round" from it."""

    def __init__(self, counter: Counter):
        self._counter = counter
        self.last: float | None = None

    def inc(self, amount: float = 1) -> None:
        self.last = time.monotonic()
        self._counter.inc(amount)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._counter, name)


@dataclass(frozen=True)
class PartitionView:
    """What a scrape sees of one owned partition: its latest checkpoint summary (``None`` before the
    first), the next offset it will process and the end of its log as the consumer last heard it."""

    topic: str
    partition: int
    summary: Mapping[str, Any] | None = None
    next_offset: int | None = None
    high_watermark: int | None = None
    low_watermark: int | None = None

    @property
    def lag(self) -> int | None:
        """Messages between the next offset to process and the log's end (``None``: end not known yet)."""
        if self.high_watermark is None or self.high_watermark < 0:
            return None
        start = self.next_offset
        if start is None:  # nothing processed yet: the whole retained log is ahead
            start = self.low_watermark if self.low_watermark is not None and self.low_watermark >= 0 else 0
        return max(0, self.high_watermark - start)


_DETECTOR_LABELS = ["model", "signal", "name", "detector"]
_METRICS = frozenset(("accuracy", "precision", "recall", "f1", "auc", "mae", "rmse"))  # a segment's rolling ones
SEVERITIES = ("warning", "critical")


@dataclass
class _Families:
    statistic: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_detector_statistic",
        "Latest statistic of a detector (highest over this instance's partitions)", labels=_DETECTOR_LABELS))
    threshold: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_detector_threshold", "Warning threshold of a detector", labels=_DETECTOR_LABELS))
    critical: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_detector_critical", "Critical threshold of a detector", labels=_DETECTOR_LABELS))
    firing: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_episodes_firing", "Detectors currently firing", labels=["model", "signal", "detector"]))
    firing_severity: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_alerts_firing", "Detectors currently firing over this instance's partitions, by the severity of "
        "their open episode (both severities exported, 0 when none)", labels=["model", "signal", "detector", "severity"]))
    performance: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_performance", "Rolling performance metric over the last performance.window labelled "
        "predictions (highest over this instance's partitions)", labels=["model", "metric"]))
    estimated: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_estimated_performance", "Performance estimated from the scores alone over the last closed "
        "detectors.estimated_performance.window predictions, beside stream_monitor_performance (highest over this "
        "instance's partitions; with decisions = \"model\" the model's last window over all partitions, exported "
        "by the instance that merges it)", labels=["model", "metric"]))
    lag: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_consumer_lag", "Messages behind the partition's end (the consumer's cached high "
        "watermark minus the next offset to process; grows while processing is paused)",
        labels=["topic", "partition"]))
    untracked: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_untracked_columns", "Feature names a model's warm-up did not track (over "
        "service.max_inferred_columns; highest over this instance's partitions)", labels=["model"]))

    fairness_rate: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_fairness_rate", "A protected group's rate over its attribute's last closed fairness window: "
        "rate = favorable (favourable-outcome rate, from predictions), tpr or fpr (true- and false-positive rate, "
        "from joined labels); the partition that judged the most windows", labels=["model", "attribute", "group", "rate"]))
    fairness_gap: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_fairness_gap", "The largest gap between the compared groups' rates over the last closed "
        "window, per fairness metric (compare with fairness.max_gap)", labels=["model", "attribute", "metric"]))
    segment_events: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_segment_events", "Inference events of a model's segment ([models.<id>.segments]: its top_k "
        "segments and __rest__) since its reference, over this instance's partitions", labels=["model", "segment"]))
    segment_firing: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_segment_detectors_firing", "A segment's detectors firing now over this instance's "
        "partitions (decisions = \"partition\"; a model-level decision's are its merge's)", labels=["model", "segment"]))
    segment_performance: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_segment_performance", "A segment's rolling performance metric over its last "
        "performance.window labelled predictions (decisions = \"partition\"; highest over this instance's "
        "partitions)", labels=["model", "segment", "metric"]))
    incidents: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "stream_monitor_incidents_open", "Open incidents of a model (what its detectors found about one change, "
        "grouped) over this instance's partitions and the model-level merges it runs", labels=["model"]))

    def all(self) -> list[GaugeMetricFamily]:
        return [self.statistic, self.threshold, self.critical, self.firing, self.firing_severity,
                self.performance, self.estimated, self.lag, self.untracked, self.incidents, self.fairness_rate,
                self.fairness_gap, self.segment_events, self.segment_firing, self.segment_performance]


def _judged(fairness: Mapping[str, Any]) -> int:
    """The windows a partition's fairness of one attribute has judged."""
    return sum((fairness.get("windows") or {}).values())


class PartitionCollector(Collector):
    """The per-partition families, derived at each scrape from ``source()``: the partitions owned now.

    ``source`` runs in the HTTP server's thread while the service loop goes on: it must only read
    (copies of dicts the loop replaces or updates in single steps, never a lock the loop holds).
    Without a source (no service bound yet) the families are exported empty.
    """

    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self.source: Callable[[], Iterable[PartitionView]] | None = None
        # the open incidents of the models merged here (decisions = "model"), model → count; read the same way
        self.merged_incidents: Callable[[], Mapping[str, int]] | None = None
        # the model-level fairness of the models merged here, model → attribute → findings; read the same way
        self.merged_fairness: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None
        # the model-level estimated performance of the models merged here, model → mergejoint.estimate_info
        self.merged_estimates: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(_Families().all())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = _Families()
        views = list(self.source()) if self.source is not None else []
        best: dict[tuple[str, str, str, str], Mapping[str, Any]] = {}
        firing: dict[tuple[str, str, str], int] = {}
        severities: dict[tuple[str, str, str, str], int] = {}
        performance: dict[tuple[str, str], float] = {}
        estimated: dict[tuple[str, str], float] = {}
        untracked: dict[str, int] = {}
        incidents: dict[str, int] = {}
        fairness: dict[tuple[str, str], Mapping[str, Any]] = {}  # (model, attribute) → the most judged
        segments: dict[tuple[str, str], list] = {}  # (model, segment) → [events, firing, {metric: highest}]
        for view in views:
            lag = view.lag
            if lag is not None:
                families.lag.add_metric([view.topic, str(view.partition)], lag)
            for model_id, model in ((view.summary or {}).get("models") or {}).items():
                if model.get("untracked_columns"):
                    untracked[model_id] = max(untracked.get(model_id, 0), model["untracked_columns"])
                if "incidents" in model:
                    incidents[model_id] = incidents.get(model_id, 0) + sum(
                        1 for row in model["incidents"] if row.get("state") == "open")
                for metric, value in (model.get("performance") or {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and metric not in ("pairs", "unscored"):
                        held = performance.get((model_id, metric))
                        performance[(model_id, metric)] = value if held is None else max(held, value)
                for metric, value in ((model.get("estimated") or {}).get("metrics") or {}).items():
                    held = estimated.get((model_id, metric))
                    estimated[(model_id, metric)] = value if held is None else max(held, value)
                for row in model.get("segments") or ():  # at most top_k + 1 per model: bounded labels
                    held = segments.setdefault((model_id, segment_words(row["segment"])), [0, 0, {}])
                    held[0] += row.get("events", 0)
                    held[1] += len(row.get("firing") or ())
                    for metric, value in (row.get("performance") or {}).items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool) and metric in _METRICS:
                            held[2][metric] = value if metric not in held[2] else max(held[2][metric], value)
                for attribute, judged in (model.get("fairness") or {}).items():
                    held = fairness.get((model_id, attribute))
                    if held is None or _judged(judged) > _judged(held):
                        fairness[(model_id, attribute)] = judged
                for row in model.get("detectors", []):
                    key = (model_id, row["signal"], row["name"], row["detector"])
                    value = row.get("statistic")
                    held = best.get(key)
                    if held is None or (value is not None and (held.get("statistic") is None
                                                               or value > held["statistic"])):
                        best[key] = row
                    group = (model_id, row["signal"], row["detector"])
                    firing[group] = firing.get(group, 0) + (1 if row.get("firing") else 0)
                    for severity in SEVERITIES:
                        counted = (*group, severity)
                        severities[counted] = severities.get(counted, 0) + (
                            1 if row.get("firing") and (row.get("severity") or "warning") == severity else 0)
        exported = 0
        for key in sorted(best):
            if exported >= MAX_DETECTOR_SERIES:
                self._metrics.count_dropped(key)
                continue
            exported += 1
            row = best[key]
            for family, field_name in ((families.statistic, "statistic"), (families.threshold, "threshold"),
                                       (families.critical, "critical")):
                if row.get(field_name) is not None:
                    family.add_metric(list(key), row[field_name])
        for group, count in sorted(firing.items()):
            families.firing.add_metric(list(group), count)
        for key, count in sorted(severities.items()):
            families.firing_severity.add_metric(list(key), count)
        for (model_id, metric), value in sorted(performance.items()):
            families.performance.add_metric([model_id, metric], value)
        for model_id, info in (self.merged_estimates() if self.merged_estimates is not None else {}).items():
            for metric, value in (info.get("metrics") or {}).items():  # the model's own, never a partition's
                estimated[(model_id, metric)] = value
        for (model_id, metric), value in sorted(estimated.items()):
            families.estimated.add_metric([model_id, metric], value)
        for model_id, count in sorted(untracked.items()):
            families.untracked.add_metric([model_id], count)
        for model_id, count in (self.merged_incidents() if self.merged_incidents is not None else {}).items():
            incidents[model_id] = incidents.get(model_id, 0) + count
        for model_id, count in sorted(incidents.items()):
            families.incidents.add_metric([model_id], count)
        for model_id, attributes in (self.merged_fairness() if self.merged_fairness is not None else {}).items():
            for attribute, judged in attributes.items():  # the model's own, never a partition's fragment
                fairness[(model_id, attribute)] = judged
        for (model_id, segment), (events, firing_now, metrics) in sorted(segments.items()):
            families.segment_events.add_metric([model_id, segment], events)
            families.segment_firing.add_metric([model_id, segment], firing_now)
            for metric, value in sorted(metrics.items()):
                families.segment_performance.add_metric([model_id, segment, metric], value)
        for (model_id, attribute), judged in sorted(fairness.items()):
            rates: dict[tuple[str, str], float] = {}
            for metric, found in (judged.get("metrics") or {}).items():
                if found.get("gap") is not None:
                    families.fairness_gap.add_metric([model_id, attribute, metric], found["gap"])
                for group, counts in found.get("groups", {}).items():
                    for key, rate in (("rate", "favorable"), ("tpr", "tpr"), ("fpr", "fpr")):
                        if counts.get(key) is not None:
                            rates[(group, rate)] = counts[key]
            for (group, rate), value in sorted(rates.items()):
                families.fairness_rate.add_metric([model_id, attribute, group, rate], value)
        return iter(families.all())


class HttpMetrics:
    """The HTTP endpoint's own counters (created by :func:`stream_monitor.web.serve` on its registry)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        kw = {"registry": registry or REGISTRY}
        self.requests = Counter("stream_monitor_http_requests_total",
                                "HTTP requests answered, by status code", ["code"], **kw)
        self.closed = Counter("stream_monitor_http_connections_closed_total",
                              "HTTP connections closed by the server before a complete request: idle past "
                              "service.web_read_timeout_seconds, evicted (oldest first) at "
                              "service.web_max_connections, refused while every worker was busy, or a failed "
                              "TLS handshake / malformed request", ["reason"], **kw)
        self.renders = Counter("stream_monitor_status_renders_total",
                               "Renders of the status page or /api/status; each board update is rendered at most "
                               "once per format, however many requests read it", ["format"], **kw)
