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
        self._series: set[tuple[str, str, str, str]] = set()

    def observe_summaries(self, summaries: Iterable[Mapping[str, Any]]) -> None:
        """Refresh the detector gauges from partition summaries (at each checkpoint)."""
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
