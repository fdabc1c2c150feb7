"""`stream-monitor report` end to end: the service runs on a drifting stream through the real broker and
Redis, keeps its history, the report is written from it and rendered by headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.historystore import history_key, read
from stream_monitor.report import CRITICAL_COLOUR, CURRENT_COLOUR, REFERENCE_COLOUR
from stream_monitor.state import connect
from stream_monitor.synthetic import generate

from ..support import MonitorProcess, Run, colours, is_cluster, lines, produce, unique, wait_for_offsets, wait_until

DOCS_DIR = os.environ.get("STREAM_MONITOR_DOCS_DIR")  # `make docs`: the screenshot goes to docs/report.png
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def reported(broker, redis_server, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    fraud = lines(generate("fraud", 12000, seed=3, drift_at=4000, until=8000))  # drifts, then comes back
    churn = lines(generate("churn", 6000, seed=3, drift_at=3000))  # drifts and stays so: firing at the end
    ends = produce(broker.address, topic, [(0, b"fraud", v, None) for v in fraud] +
                   [(1, b"churn", v, None) for v in churn])
    port = free_port()
    run = Run(broker, redis_server, tmp_path, topic, 2, "report", service={"metrics_port": port})
    process = MonitorProcess(run.config, tmp_path / "report.log")
    client = connect(redis_server.address, is_cluster(redis_server))
    try:
        wait_for_offsets(run.store, topic, ends, processes=[process])

        def drift_in_history() -> bool:
            points = read(client, run.namespace, "fraud")
            return any(p["kind"] == "alert" and p["status"] == "firing" and p["name"] == "amount" for p in points) \
                and sum(1 for p in points if p["kind"] == "window" and p["offset"] >= ends[0] - 1000) > 0

        wait_until(drift_in_history, "the drift's alerts and the last windows in the history", process)
        status_page: list[str] = []

        def churn_drawn() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                status_page[:] = [response.read().decode()]
            return '<svg class="distribution"' in status_page[0] and "churn." in status_page[0]

        wait_until(churn_drawn, "the status page drawing churn's firing columns", process)
        out = tmp_path / "fraud.html"
        made = report(run.config, "--model", "fraud", "--since", "1h", "--output", str(out))
        errors = {what: report(run.config, *args) for what, args in {
            "unknown": ("--model", "nobody", "--output", str(tmp_path / "x.html")),
            "empty": ("--model", "stable", "--output", str(tmp_path / "y.html")),
            "duration": ("--model", "fraud", "--since", "soon", "--output", str(tmp_path / "z.html"))}.items()}
        assert process.terminate() == 0
        points = read(client, run.namespace, "fraud")
        stored = client.xlen(history_key(run.namespace, "fraud"))
    finally:
        process.close()
        client.close()
    return {"made": made, "html": out.read_text() if out.exists() else "", "path": out, "errors": errors,
            "points": points, "stored": stored, "tmp_path": tmp_path, "log": process.log(),
            "status_page": status_page[0]}


def report(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_monitor", "report", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def test_the_history_holds_each_closed_window_with_its_thresholds_and_the_alerts(reported):
    points = reported["points"]
    windows = [p for p in points if p["kind"] == "window" and p["name"] == "amount" and p["detector"] == "psi"]
    assert len(windows) >= 11  # 12,000 events after a warm-up of 1,000, windows of 1,000 (deduplicated)
    assert all(p["partition"] == 0 and p["warning"] < p["critical"] and p["wall_ms"] > 0 for p in windows)
    assert all(len(p["reference"]) == len(p["current"]) == len(p["bins"]) for p in windows)
    assert max(p["statistic"] for p in windows) > windows[0]["critical"] > windows[0]["statistic"]
    alerts = [p for p in points if p["kind"] == "alert"]
    assert {("amount", "psi")} <= {(p["name"], p["detector"]) for p in alerts if p["status"] == "firing"}
    assert len({p["alert_id"] for p in alerts}) == len(alerts)
    assert reported["stored"] >= len(points)  # the stream may hold a point twice; reading drops the copy


def test_the_report_is_one_self_contained_file_with_the_pictures(reported):
    made = reported["made"]
    assert made.returncode == 0, made.stderr
    assert f"wrote {reported['path']}" in made.stdout
    page = reported["html"]
    assert page.startswith("<!DOCTYPE html>") and "Model report: fraud" in page
    assert page.count('class="bar reference"') >= 5 and page.count('class="bar recent"') >= 5
    assert 'class="statistic"' in page and 'class="threshold critical"' in page
    assert 'class="marker firing"' in page and 'class="episode"' in page
    assert 'class="marker resolved"' in page  # the stream came back: episodes closed
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page and "http://" not in page and "https://" not in page and "url(" not in page


def test_the_report_renders_in_a_browser_as_a_real_picture(reported):
    binary = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs it (or `apt-get install -y chromium`)")
    with tempfile.TemporaryDirectory(prefix="chromium-", dir=reported["tmp_path"]) as profile:
        png_path = Path(profile) / "report.png"
        shot = subprocess.run([binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                               "--no-first-run", "--disable-background-networking", f"--user-data-dir={profile}",
                               f"--screenshot={png_path}", "--window-size=1200,2000",
                               reported["path"].resolve().as_uri()], capture_output=True, text=True, timeout=90)
        assert png_path.exists(), f"no screenshot (exit {shot.returncode}): {shot.stderr[-2000:]}"
        png = png_path.read_bytes()
    assert int.from_bytes(png[16:20], "big") == 1200 and int.from_bytes(png[20:24], "big") == 2000
    seen = colours(png)
    assert len(seen) > 100, f"only {len(seen)} colours: a blank or broken page"
    assert max(seen.values()) < 0.9 * 1200 * 2000, "one colour covers the page"
    for name, colour in (("reference bars", REFERENCE_COLOUR), ("recent bars", CURRENT_COLOUR),
                         ("critical line and markers", CRITICAL_COLOUR)):
        assert seen.get(int(colour[1:], 16), 0) > 200, f"the {name} ({colour}) are not in the picture"
    if DOCS_DIR:
        Path(DOCS_DIR).mkdir(exist_ok=True)
        (Path(DOCS_DIR) / "report.png").write_bytes(png)


def test_clear_errors_for_an_unknown_model_no_history_and_a_bad_duration(reported):
    errors = reported["errors"]
    assert errors["unknown"].returncode == 2 and "no model 'nobody'" in errors["unknown"].stderr
    assert "fraud" in errors["unknown"].stderr  # the models it has
    assert errors["empty"].returncode == 2 and "no history of model 'stable'" in errors["empty"].stderr
    assert errors["duration"].returncode == 2 and "'soon' is not a duration" in errors["duration"].stderr
    assert all("Traceback" not in e.stderr for e in errors.values())
    assert not (reported["tmp_path"] / "x.html").exists()


def test_the_writer_appends_capped_streams_that_read_back_once_each(redis_target):
    """On a standalone Redis and on a Redis Cluster (each model's stream in its own slot): what is written
    reads back in order, a point written twice once, and the stream stays near its cap."""
    from stream_monitor.historystore import HistoryWriter

    namespace = unique("ns-history")
    cluster = is_cluster(redis_target)
    writer = HistoryWriter(lambda: connect(redis_target.address, cluster), namespace, 200)
    client = connect(redis_target.address, cluster)
    try:
        for model in ("fraud", "churn"):
            points = [{"kind": "window", "model": model, "signal": "feature", "name": "x", "detector": "psi",
                       "statistic": i / 1000, "warning": 0.1, "critical": 0.25, "partition": 0, "offset": i,
                       "event_time_ms": 1_800_000_000_000 + i} for i in range(1000)]
            writer.add(points)
            writer.add(points[-10:])  # delivered again (at least once)
        assert writer.flush(30), "the writer did not drain its queue"
        for model in ("fraud", "churn"):
            kept = read(client, namespace, model)
            assert [p["offset"] for p in kept] == sorted({p["offset"] for p in kept})  # in order, once each
            assert 200 <= client.xlen(history_key(namespace, model)) <= 400  # MAXLEN ~ 200 trims whole nodes
            assert kept[-1]["offset"] == 999 and len(kept) >= 190  # the last 10 were stored twice
        assert writer.dropped == 0 and writer.written == 2020
    finally:
        writer.close()
        for model in ("fraud", "churn"):
            client.delete(history_key(namespace, model))
        client.close()


def test_the_status_page_draws_what_is_firing_now_against_its_reference(reported):
    page = reported["status_page"]
    firing_now = page[page.index("<h2>Firing now</h2>"):page.index("</section>", page.index("<h2>Firing now</h2>"))]
    assert '<svg class="distribution"' in firing_now and 'class="bar reference"' in firing_now
    assert "churn." in firing_now and "fraud." not in firing_now  # fraud came back; churn did not
    assert "http://" not in firing_now and "https://" not in firing_now
