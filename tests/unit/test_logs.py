"""Logs: one readable line per alert; one JSON object per line with --log-format json."""

from __future__ import annotations

import json
import logging

import pytest

from stream_monitor import logs


def alert_line() -> None:
    logging.getLogger("stream_monitor.alerts").info(
        "%s %s %s/%s/%s %s: %s", "FIRING", "critical", "fraud", "feature", "amount", "psi",
        "PSI of fraud.amount is 0.31 (critical ≥ 0.25) over the last 5000 events", extra={"alert": "ab" * 32})


def test_text_lines_are_readable(capsys, restore_logging):
    logs.setup("text")
    alert_line()
    line, = capsys.readouterr().err.strip().splitlines()
    assert "FIRING critical fraud/feature/amount psi: PSI of fraud.amount is 0.31" in line


def test_json_lines_are_one_object_each(capsys, restore_logging):
    logs.setup("json")
    alert_line()
    logging.getLogger("stream_monitor.app").warning("Redis unreachable (checkpoint)")
    first, second = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines())
    assert first["level"] == "info" and first["logger"] == "stream_monitor.alerts"
    assert first["alert_id"] == "ab" * 32 and first["message"].startswith("FIRING critical fraud/feature/amount psi")
    assert second["level"] == "warning" and "alert_id" not in second


def test_kafka_client_lines_are_cleaned_too(capsys, restore_logging):
    """librdkafka's lines (and the broker text they quote) take the same path as the service's own."""
    logs.setup("text")
    kafka = logs.kafka_logger(30.0)
    kafka.warning("%s", "FAIL|rdkafka#consumer-1| 127.0.0.1:1/bootstrap: Connect failed\n2026 ERROR forged\x1b[0m")
    line, = capsys.readouterr().err.splitlines()
    assert "Connect failed\\n2026 ERROR forged\\x1b[0m" in line and line.split()[2] == "WARNING"


def test_json_lines_escape_what_other_readers_take_for_a_line_break(capsys, restore_logging):
    logs.setup("json")
    logging.getLogger("stream_monitor.app").info("a\u2028b\u2029c\x85d\ne")
    out = capsys.readouterr().err
    assert len(out.splitlines()) == 1 and json.loads(out)["message"] == "a\u2028b\u2029c\x85d\ne"
