"""What a scrape shows follows the Prometheus conventions: no `_created` twin per counter, and one
`stream_monitor_build_info` series naming the build."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, generate_latest

from stream_monitor import __version__
from stream_monitor.kafka import client_versions
from stream_monitor.metrics import Metrics


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_counters_and_histograms_export_no_created_series():
    metrics = Metrics(CollectorRegistry())
    metrics.dead_letters.labels("not_json").inc()
    metrics.checkpoint_seconds.observe(0.01)
    text = scrape(metrics)
    assert "stream_monitor_dead_letters_total{reason=\"not_json\"} 1.0" in text
    assert "_created" not in text


def test_build_info_names_the_package_python_and_kafka_client_versions():
    versions = client_versions()
    text = scrape(Metrics(CollectorRegistry(), clients=versions))
    line = next(line for line in text.splitlines() if line.startswith("stream_monitor_build_info{"))
    assert line.endswith(" 1.0")
    for value in (__version__, platform.python_version(), versions["confluent_kafka"], versions["librdkafka"]):
        assert f'"{value}"' in line


def test_dead_letter_reasons_are_exported_at_zero_from_the_start():
    """A labelled counter first seen at its value after a burst shows no increase to rate(): every reason the
    dead-letter schema names is exported at 0 before the first dead letter."""
    import json
    from pathlib import Path

    from stream_monitor.events import DEAD_LETTER_REASONS

    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "dead_letter.json").read_text())
    assert list(DEAD_LETTER_REASONS) == schema["properties"]["reason"]["enum"]
    metrics = Metrics(CollectorRegistry())
    for reason in DEAD_LETTER_REASONS:
        assert metrics.registry.get_sample_value("stream_monitor_dead_letters_total", {"reason": reason}) == 0
