"""Text from outside (feature names, model ids, error messages quoting input) cannot forge log lines,
page rows or `status` rows: control characters are shown as escapes, every record stays one line."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import pytest

from stream_monitor import cli, logs
from stream_monitor.web import render_page

FORGED = "amount\n2026-12-01 23:59:59,000 ERROR   stream_monitor.app: Redis data lost\r\x1b[2J\u2028\u2029\x85\x00\t"


def test_escape_controls_shows_each_control_as_an_escape():
    assert logs.escape_controls(FORGED) == (
        "amount\\n2026-12-01 23:59:59,000 ERROR   stream_monitor.app: Redis data lost\\r\\x1b[2J\\u2028\\u2029"
        "\\x85\\x00\\t")
    assert logs.escape_controls("PSI of fraud.amount is 0.31 (critical ≥ 0.25) — ünïcode") == \
        "PSI of fraud.amount is 0.31 (critical ≥ 0.25) — ünïcode"


def test_text_log_keeps_a_forged_feature_name_on_its_line(capsys, restore_logging):
    logs.setup("text")
    logging.getLogger("stream_monitor.alerts").warning("FIRING warning fraud/feature/%s psi", FORGED)
    logging.getLogger("stream_monitor.app").warning(FORGED)  # as the message itself, not an argument
    err = capsys.readouterr().err
    lines = err.splitlines()  # splitlines also breaks at \r, \x1c-\x1e, \x85, U+2028/2029
    assert len(lines) == 2 and err.count("\n") == 2
    assert "ERROR" not in "".join(line.split(": ", 1)[0] for line in lines)  # the level of each line is WARNING
    assert all(" WARNING " in line for line in lines)
    assert "fraud/feature/amount\\n2026-12-01 23:59:59,000 ERROR" in lines[0] and "\x1b" not in err


def test_text_log_traceback_lines_cannot_pass_for_records(capsys, restore_logging):
    logs.setup("text")
    try:
        raise ValueError(FORGED)
    except ValueError:
        logging.getLogger("stream_monitor.app").exception("decoding failed")
    first, *rest = capsys.readouterr().err.rstrip("\n").split("\n")
    assert first.endswith("ERROR   stream_monitor.app: decoding failed")
    assert rest and all(line.startswith("  | ") for line in rest)  # the message's own newline too
    assert rest[-2:] == ["  | ValueError: amount", "  | " + logs.escape_controls(FORGED.split("\n", 1)[1])]


def test_json_log_stays_one_line_and_round_trips(capsys, restore_logging):
    logs.setup("json")
    logging.getLogger("stream_monitor.app").warning("feature %s", FORGED)
    err = capsys.readouterr().err
    line, = err.splitlines()
    assert "\u2028" not in line and "\u2029" not in line and "\x85" not in line
    assert json.loads(line)["message"] == f"feature {FORGED}"


def _snapshot(name: str) -> dict:
    row = {"signal": "feature", "name": name, "detector": "psi", "statistic": 0.4, "threshold": 0.1,
           "critical": 0.25, "firing": True, "severity": "critical", "history": [[1.0, 0.4]]}
    return {"instance": "host\npid 1", "started_at": 0, "partitions": [{"topic": "t\n", "partition": 0}],
            "models": {"fraud\n": {"events": 1, "labels": 0, "detectors": [row]}},
            "alerts": [{"model_id": "fraud", "message": f"PSI of {name}", "severity": "critical", "status": "firing"}],
            "dead_letters": {"bad_json": {"count": 1, "sample": f"line 1: {FORGED}"}}}


def test_status_page_shows_controls_as_escapes_and_markup_as_text():
    page = render_page(_snapshot(FORGED + "<script>alert(1)</script>"))
    assert not any(char in page for char in "\r\x1b\x00\x85\u2028\u2029\t")
    assert "\n" not in page.split("<style>")[0] + page.split("</style>")[1]
    assert "amount\\n2026-12-01 23:59:59,000 ERROR" in page and "host\\npid 1" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_status_table_keeps_each_row_on_one_line():
    text = cli._table(["name", "count"], [[FORGED, 1], ["plain", 2]], right={1})
    assert len(text.splitlines()) == 4 and "amount\\n2026" in text.splitlines()[2]


# --- end to end: a hostile feature name through `run`, its log and `status` -------------------------

LINE_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: ")
HOSTILE = "amount\n2026-12-01 23:59:59,000 ERROR   stream_monitor.app: Redis data lost\u2028\x1b[31m"


def test_a_hostile_feature_name_cannot_forge_lines_of_run_or_status(broker, redis_server, tmp_path, monitors):
    from stream_monitor.demo.localstack import create_topics
    from stream_monitor.synthetic import generate

    from ..support import produce, unique, wait_for_offsets
    from ..support import Run, lines

    topic = unique("hostile")
    create_topics(broker.address, {topic: 1})
    events = generate("fraud", 3000, seed=3, drift_at=1500)
    for event in events:
        event["features"][HOSTILE] = event["features"].pop("amount")
    ends = produce(broker.address, topic, [(0, b"fraud", v, None) for v in lines(events)])
    run = Run(broker, redis_server, tmp_path, topic, 1, "hostile",
              models={"fraud": {"decisions": "partition",
                                "reference": {"events": 1000}, "detectors": {"psi": {"window": 500}}}})
    process = run.start(monitors)
    wait_for_offsets(run.store, topic, ends, processes=[process])
    assert process.terminate() == 0
    log = process.log()
    alerts = run.alerts()
    assert any(a["name"] == HOSTILE for a in alerts)  # the name itself is kept, byte for byte, in the alert
    assert "FIRING" in log and "fraud/feature/amount\\n2026-12-01 23:59:59,000 ERROR" in log
    assert "\x1b" not in log and "\u2028" not in log
    for line in log.splitlines():
        assert LINE_START.match(line) or line.startswith("  | "), line

    result = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(run.config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "amount\\n2026-12-01 23:59:59,000 ERROR" in result.stdout and "\x1b" not in result.stdout
    assert not any(line.startswith("2026-12-01") for line in result.stdout.splitlines())
