"""Prometheus metrics (CONTRACT §9). Families are prefixed ``stream_monitor_``.

Label cardinality is bounded: ``reason`` has the dead-letter reasons,
``model``/``signal``/``detector`` come from the config, ``topic`` from
``kafka.input_topics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR  # noqa: F401  (default registry)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        kw = {"registry": registry} if registry is not None else {}
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
        self.assigned_partitions = Gauge("stream_monitor_assigned_partitions",
                                         "Input partitions owned by this instance", **kw)
        self.redis_retries = Counter("stream_monitor_redis_errors_total",
                                     "Redis operations that failed and were retried", **kw)


def serve(port: int) -> None:
    """Expose the default registry on ``port`` (0 = off)."""
    if port:
        start_http_server(port)
