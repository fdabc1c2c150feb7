"""Prometheus metrics (CONTRACT §9). Families are prefixed ``stream_monitor_``.

Label cardinality is bounded: ``reason`` takes the dead-letter reasons;
``model``, ``signal``, ``name`` and ``detector`` come from the config and the
reference profiles (columns × detectors per model), and at most
``MAX_DETECTOR_SERIES`` (model, signal, name, detector) series are exported per
instance (the rest are counted in ``stream_monitor_detector_series_dropped_total``);
``topic``/``partition`` are the input partitions this instance owns.
The detector gauges hold the highest statistic over this instance's partitions;
ADWIN exports its window's mean reference rank (0.5 when unchanged) and no threshold,
since its cut test is internal.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

MAX_DETECTOR_SERIES = 5_000


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or REGISTRY
        kw = {"registry": self.registry}
        self.events_consumed = Counter("stream_monitor_events_consumed_total",
                                       "Input messages consumed", ["topic"], **kw)
        self.events_decoded = Counter("stream_monitor_events_decoded_total",
                                      "Input messages decoded into events", ["kind"], **kw)
        self.dead_letters = Counter("stream_monitor_dead_letters_total",
                                    "Input messages sent to the dead-letter topic", ["reason"], **kw)
        self.alerts = Counter("stream_monitor_alerts_total", "Alerts published",
                              ["model", "signal", "detector", "severity", "status"], **kw)
        self.checkpoint_seconds = Histogram("stream_monitor_checkpoint_seconds",
                                            "Duration of a checkpoint (flush, save, commit)", **kw)
        self.checkpoints = Counter("stream_monitor_checkpoints_total", "Checkpoints completed", **kw)
        self.redis_seconds = Histogram("stream_monitor_redis_seconds", "Redis round trips (state saves)",
                                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
                                       **kw)
        self.assigned_partitions = Gauge("stream_monitor_assigned_partitions",
                                         "Input partitions owned by this instance", **kw)
        self.consumer_lag = Gauge("stream_monitor_consumer_lag", "Messages behind the partition's end",
                                  ["topic", "partition"], **kw)
        self.redis_errors = Counter("stream_monitor_redis_errors_total",
                                    "Redis operations that failed and were retried (processing paused)", **kw)
        self.offset_resets = Counter("stream_monitor_offset_resets_total",
                                     "Stored offsets found outside the partition's log (topic recreated, broker "
                                     "lost its data, retention); reading went on from the earliest message",
                                     ["topic", "partition"], **kw)
        self.state_lost = Counter("stream_monitor_state_lost_total",
                                  "Partitions whose state had vanished from Redis (Redis lost its data)", **kw)
        self.join_lost = Counter("stream_monitor_join_lost_total",
                                 "Times the label join's data was found gone from Redis (Redis lost its data)",
                                 ["model"], **kw)
        self.statistic = Gauge("stream_monitor_detector_statistic",
                               "Latest statistic of a detector (highest over this instance's partitions)",
                               ["model", "signal", "name", "detector"], **kw)
        self.threshold = Gauge("stream_monitor_detector_threshold",
                               "Warning threshold of a detector", ["model", "signal", "name", "detector"], **kw)
        self.critical = Gauge("stream_monitor_detector_critical",
                              "Critical threshold of a detector", ["model", "signal", "name", "detector"], **kw)
        self.firing = Gauge("stream_monitor_episodes_firing", "Detectors currently firing",
                            ["model", "signal", "detector"], **kw)
        self.dropped_series = Counter("stream_monitor_detector_series_dropped_total",
                                      "Detector series not exported (over the cardinality cap)", **kw)
        self.performance = Gauge("stream_monitor_performance", "Rolling performance metric over the last "
                                 "performance.window labelled predictions (highest over this instance's partitions)",
                                 ["model", "metric"], **kw)
        self.awaiting_labels = Gauge("stream_monitor_predictions_awaiting_labels",
                                     "Predictions stored for the label join and not labelled yet", ["model"], **kw)
        self.labels_expired = Gauge("stream_monitor_predictions_never_labelled",
                                    "Predictions that expired without a label", ["model"], **kw)
        self.predictions_dropped = Counter("stream_monitor_predictions_dropped_total",
                                           "Predictions not stored for the join: over performance.max_pending",
                                           ["model"], **kw)
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
        self.untracked_columns = Gauge("stream_monitor_untracked_columns",
                                       "Feature names a model's warm-up did not track (over "
                                       "service.max_inferred_columns; highest over this instance's partitions)",
                                       ["model"], **kw)
        self.rebaselined = Counter("stream_monitor_rebaselined_total",
                                   "Model states restored under changed detector settings: what no longer fit "
                                   "started afresh", ["model"], **kw)
        self.unmonitored_columns = Gauge("stream_monitor_unmonitored_columns",
                                         "Configured features the model's reference has no profile of "
                                         "(never monitored; see the error log)", ["model"], **kw)
        self._series: set[tuple[str, str, str, str]] = set()

    def observe_summaries(self, summaries: Iterable[Mapping[str, Any]]) -> None:
        """Refresh the detector gauges from partition summaries (at each checkpoint)."""
        summaries = list(summaries)
        self._observe_untracked(summaries)
        best: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        firing: dict[tuple[str, str, str], int] = {}
        for summary in summaries:
            for model_id, model in summary.get("models", {}).items():
                for metric, value in (model.get("performance") or {}).items():
                    if isinstance(value, (int, float)) and metric != "pairs":
                        self.performance.labels(model_id, metric).set(value)
                for row in model.get("detectors", []):
                    key = (model_id, row["signal"], row["name"], row["detector"])
                    value = row.get("statistic")
                    held = best.get(key)
                    if held is None or (value is not None and (held["statistic"] is None or value > held["statistic"])):
                        best[key] = row
                    group = (model_id, row["signal"], row["detector"])
                    firing[group] = firing.get(group, 0) + (1 if row.get("firing") else 0)
        for key, row in best.items():
            if key not in self._series:
                if len(self._series) >= MAX_DETECTOR_SERIES:
                    self.dropped_series.inc()
                    continue
                self._series.add(key)
            if row.get("statistic") is not None:
                self.statistic.labels(*key).set(row["statistic"])
            if row.get("threshold") is not None:
                self.threshold.labels(*key).set(row["threshold"])
            if row.get("critical") is not None:
                self.critical.labels(*key).set(row["critical"])
        for group, count in firing.items():
            self.firing.labels(*group).set(count)

    def _observe_untracked(self, summaries: list[Mapping[str, Any]]) -> None:
        untracked: dict[str, int] = {}
        for summary in summaries:
            for model_id, model in summary.get("models", {}).items():
                count = model.get("untracked_columns", 0)
                if count or model_id in untracked:
                    untracked[model_id] = max(untracked.get(model_id, 0), count)
        for model_id, count in untracked.items():
            self.untracked_columns.labels(model_id).set(count)
