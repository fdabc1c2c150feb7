"""Observability end to end: the Prometheus scrape, /healthz, /api/status and the
status page of a real `stream-monitor run` watching a drifting stream (real broker, real Redis).

One monitored run (module fixture) serves the scrape, dead-letter and page tests: a drifting "fraud"
stream on partition 0, a stable stream with a few bad messages on partition 1, the service left
running while we look. The scrape-time collector is also tested without I/O, and with two real
instances between which a rebalance moves a partition.
The status-page test renders the page with headless Chromium from the OS packages (`make test`
installs it; if it is missing the test fails and says so). The scrape excerpt and the screenshot go to a
temporary directory; `make docs` sets STREAM_MONITOR_DOCS_DIR=docs to refresh the copies kept in the
repository (tests never write tracked files).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.events import DEAD_LETTER_REASONS
from stream_monitor.synthetic import generate

from ..support import lines, MonitorProcess, produce, Run, unique, wait_for_offsets

DOCS_DIR = os.environ.get("STREAM_MONITOR_DOCS_DIR")  # set by `make docs`; else a temporary directory


def docs_dir(tmp_path_factory) -> Path:
    """Where the scrape excerpt and the screenshot are written: docs/ only when `make docs` asks."""
    return Path(DOCS_DIR) if DOCS_DIR else tmp_path_factory.mktemp("docs")

BAD = [b"this is not json", b"[1, 2, 3]", b"",
       b'{"event_id": "e", "model_id": "nobody", "features": {"x": 1}}',
       b'{"model_id": "stable", "features": {"x": 1}}']


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def wait_for_status(port: int, ends: dict[int, int], process: MonitorProcess, timeout: float = 30.0) -> dict:
    """Until /api/status shows every partition's next offset at its end (the gauges follow the same checkpoint)."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise AssertionError(f"monitor exited early ({process.process.returncode}):\n{process.log()[-3000:]}")
        try:
            status = orjson.loads(http_get(port, "/api/status")[2])
        except OSError:
            status = {}
        seen = {part["partition"]: part.get("next_offset") for part in status.get("partitions", [])}
        if all(seen.get(p) is not None and seen[p] >= end for p, end in ends.items()):
            return status
        time.sleep(0.1)
    raise AssertionError(f"/api/status did not reach {ends} within {timeout:.0f} s: {status.get('partitions')}\n"
                         f"{process.log()[-3000:]}")


@pytest.fixture(scope="module")
def observed(broker, redis_server, tmp_path_factory):
    """A running monitor that has consumed a drifting fraud stream and a few bad messages."""
    tmp_path = tmp_path_factory.mktemp("observability")
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    fraud = lines(generate("fraud", 8000, seed=1, drift_at=3000))
    stable = lines(generate("stable", 2000, seed=1))
    records = [(0, b"fraud", v, None) for v in fraud]
    for i, value in enumerate(stable):
        if i % 300 == 150 and i // 300 < len(BAD):
            records.append((1, b"bad", BAD[i // 300], None))
        records.append((1, b"stable", value, None))
    ends = produce(broker.address, topic, records)
    port = free_port()
    run = Run(broker, redis_server, tmp_path, topic, 2, "observed",
              service={"metrics_port": port, "dead_letter_log_seconds": 1})
    process = MonitorProcess(run.config, tmp_path / "observed.log")
    try:
        wait_for_offsets(run.store, topic, ends, processes=[process])
        wait_for_status(port, ends, process)
        yield {"port": port, "topic": topic, "ends": ends, "process": process, "tmp_path": tmp_path, "run": run}
        assert process.terminate() == 0, process.log()[-3000:]
    finally:
        process.close()


# --- /metrics ----------------------------------------------------------------------------------------------


def samples(families: dict, family: str, suffix: str = "") -> list:
    assert family in families, f"no family {family}; have {sorted(families)}"
    name = family + suffix
    return [s for s in families[family].samples if s.name == name]


@pytest.mark.slow
def test_metrics_scrape_has_every_family(observed, tmp_path_factory):
    port, topic, ends = observed["port"], observed["topic"], observed["ends"]
    status, content_type, body = http_get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    text = body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    assert families["stream_monitor_events_consumed"].type == "counter"
    consumed = samples(families, "stream_monitor_events_consumed", "_total")
    assert {s.labels["topic"]: s.value for s in consumed} == {topic: sum(ends.values())}

    decoded = {s.labels["kind"]: s.value for s in samples(families, "stream_monitor_events_decoded", "_total")}
    assert decoded["inference"] == sum(ends.values()) - len(BAD)

    per_model = {(s.labels["model"], s.labels["kind"]): s.value
                 for s in samples(families, "stream_monitor_model_events", "_total")}
    assert sum(v for (_, kind), v in per_model.items() if kind == "inference") == decoded["inference"]
    assert {model for model, _ in per_model} <= {"fraud", "stable"} and ("fraud", "inference") in per_model
    (checkpointed,) = samples(families, "stream_monitor_last_checkpoint_timestamp_seconds")
    assert time.time() - 600 < checkpointed.value <= time.time()

    letters = {s.labels["reason"]: s.value for s in samples(families, "stream_monitor_dead_letters", "_total")}
    assert sum(letters.values()) == len(BAD)
    assert set(letters) == set(DEAD_LETTER_REASONS), "every reason exported, at 0 until its first dead letter"
    assert {"not_json", "unknown_model", "missing_field"} <= {reason for reason, v in letters.items() if v > 0}

    alerts = samples(families, "stream_monitor_alerts", "_total")
    assert alerts and all(s.value > 0 for s in alerts)
    assert all(set(s.labels) == {"model", "signal", "detector", "severity", "status"} for s in alerts)
    assert {s.labels["model"] for s in alerts} == {"fraud"}, "only the drifting model alerts"
    assert any(s.labels["signal"] == "feature" and s.labels["detector"] == "psi"
               and s.labels["status"] == "firing" for s in alerts)

    assert families["stream_monitor_checkpoint_seconds"].type == "histogram"
    (count,) = samples(families, "stream_monitor_checkpoint_seconds", "_count")
    assert count.value > 0
    (total,) = samples(families, "stream_monitor_checkpoint_seconds", "_sum")
    assert 0 < total.value < 60
    assert families["stream_monitor_redis_seconds"].type == "histogram"
    (redis_count,) = samples(families, "stream_monitor_redis_seconds", "_count")
    assert redis_count.value >= count.value, "at least one state save per checkpoint"
    buckets = samples(families, "stream_monitor_redis_seconds", "_bucket")
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == redis_count.value

    lag = {(s.labels["topic"], s.labels["partition"]): s.value for s in samples(families, "stream_monitor_consumer_lag")}
    assert set(lag) == {(topic, "0"), (topic, "1")}
    assert all(v >= 0 for v in lag.values())
    (assigned,) = samples(families, "stream_monitor_assigned_partitions")
    assert assigned.value == 2

    def detector_values(family: str) -> dict:
        return {(s.labels["model"], s.labels["signal"], s.labels["name"], s.labels["detector"]): s.value
                for s in samples(families, family)}

    statistic = detector_values("stream_monitor_detector_statistic")
    threshold = detector_values("stream_monitor_detector_threshold")
    critical = detector_values("stream_monitor_detector_critical")
    amount_psi = ("fraud", "feature", "amount", "psi")
    assert amount_psi in statistic and amount_psi in threshold and amount_psi in critical
    assert statistic[amount_psi] > critical[amount_psi] >= threshold[amount_psi] > 0, "the drift is visible"
    stable_keys = [k for k in statistic if k[0] == "stable" and k[3] == "psi"]
    assert stable_keys and all(statistic[k] < threshold[k] for k in stable_keys)

    firing = {(s.labels["model"], s.labels["signal"], s.labels["detector"]): s.value
              for s in samples(families, "stream_monitor_episodes_firing")}
    assert firing[("fraud", "feature", "psi")] >= 1
    assert all(v == 0 for k, v in firing.items() if k[0] == "stable")

    (cpu,) = samples(families, "process_cpu_seconds", "_total")
    assert cpu.value > 0
    (rss,) = samples(families, "process_resident_memory_bytes")
    assert rss.value > 10_000_000

    health_status, _, health = http_get(port, "/healthz")
    assert health_status == 200 and orjson.loads(health)["status"] == "ok"
    api = orjson.loads(http_get(port, "/api/status")[2])
    fraud = api["models"]["fraud"]
    assert fraud["events"] == ends[0]
    rows = {(r["signal"], r["name"], r["detector"]): r for r in fraud["detectors"]}
    assert rows[("feature", "amount", "psi")]["firing"] is True
    assert len(rows[("feature", "amount", "psi")]["history"]) >= 2
    assert api["alerts"] and all(a["model_id"] == "fraud" for a in api["alerts"])

    excerpt = [line for line in text.splitlines()
               if line.startswith(("# HELP stream_monitor_alerts_total", "# TYPE stream_monitor_alerts_total",
                                   "stream_monitor_alerts_total{"))]
    excerpt += [line for line in text.splitlines()
                if line.startswith(("# HELP stream_monitor_detector_statistic",
                                    "# TYPE stream_monitor_detector_statistic"))
                or (line.startswith("stream_monitor_detector_statistic{")
                    and 'model="fraud"' in line and 'name="amount"' in line)]
    out = docs_dir(tmp_path_factory)
    out.mkdir(exist_ok=True)
    (out / "metrics-scrape.txt").write_text("\n".join(excerpt) + "\n")


# --- the status page ---------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str:
    """Chromium from the OS packages, which `make test` installs (a test never installs anything)."""
    found = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if not found:
        pytest.fail("chromium is not installed: `make test` installs it (or `apt-get install -y chromium`)")
    return found


def screenshot(url: str, out: Path, profile: str) -> tuple[list[str], subprocess.CompletedProcess]:
    binary = ensure_chromium()
    common = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
              "--window-size=1400,2200", f"--screenshot={out}", url]
    attempts = []
    for headless in ("--headless", "--headless=new"):
        command = [binary, headless, *common]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as exc:
            attempts.append(f"{headless}: timed out\n{exc.stderr}")
            continue
        if result.returncode == 0 and out.exists() and out.stat().st_size > 0:
            return command, result
        attempts.append(f"{headless}: exit {result.returncode}\n{result.stderr[-1500:]}")
    pytest.fail("headless chromium made no screenshot:\n" + "\n---\n".join(attempts))


@pytest.mark.slow
def test_status_page_screenshot(observed, tmp_path_factory):
    port = observed["port"]
    status, content_type, body = http_get(port, "/")
    assert status == 200 and content_type.startswith("text/html")
    page = body.decode()
    assert "Firing now" in page and "fraud" in page and "<svg" in page and "FIRING" in page
    assert "Nothing is firing" not in page

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        out = Path(profile) / "status.png"
        screenshot(f"http://127.0.0.1:{port}/", out, profile)
        png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "a PNG file"
    assert png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1400, 2200)
    assert len(png) > 20_000, "not a blank page"
    out = docs_dir(tmp_path_factory)
    out.mkdir(exist_ok=True)
    (out / "status-page.png").write_bytes(png)


def scraped(port: int, family: str, **labels) -> float:
    """One sample of the running monitor's scrape (0 when absent)."""
    for metric in text_string_to_metric_families(http_get(port, "/metrics")[2].decode()):
        for sample in metric.samples:
            if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.mark.slow
def test_a_page_flood_is_served_from_one_render(observed):
    """400 requests for the page and /api/status from 8 clients while nothing changes: not one
    render more (both were rendered once already), every request answered with the same bytes."""
    import threading

    port = observed["port"]
    # the banner's event rate (over the last 10 s) is still falling to 0 just after the stream ended,
    # and each step it takes is a change of the page: wait until it is 0 and nothing moves any more
    deadline = time.monotonic() + 60
    while orjson.loads(http_get(port, "/api/status")[2])["health"]["events_per_second"] != 0:
        assert time.monotonic() < deadline, "the event rate did not fall to 0 after the stream ended"
        time.sleep(0.2)
    first = {path: http_get(port, path)[2] for path in ("/", "/api/status")}
    before = {fmt: scraped(port, "stream_monitor_status_renders_total", format=fmt) for fmt in ("html", "json")}
    checkpoints = scraped(port, "stream_monitor_checkpoints_total")
    bodies: list[tuple[str, bytes]] = []

    def client(path: str) -> None:
        for _ in range(50):
            bodies.append((path, http_get(port, path)[2]))

    clients = [threading.Thread(target=client, args=(path,)) for path in ("/", "/api/status") * 4]
    started = time.monotonic()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(120)
    elapsed = time.monotonic() - started
    print(f"400 page and /api/status requests from 8 clients in {elapsed:.2f} s ({400 / elapsed:.0f}/s)")
    assert len(bodies) == 400 and all(body == first[path] for path, body in bodies)
    assert scraped(port, "stream_monitor_checkpoints_total") == checkpoints  # nothing changed meanwhile
    after = {fmt: scraped(port, "stream_monitor_status_renders_total", format=fmt) for fmt in ("html", "json")}
    assert after == before and before["html"] >= 1 and before["json"] >= 1
    assert scraped(port, "stream_monitor_http_requests_total", code="200") >= 402


# --- dead letters by reason ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_dead_letters_by_reason_in_the_log_the_status_page_and_status(observed):
    port, process = observed["port"], observed["process"]
    families = {f.name: f for f in text_string_to_metric_families(http_get(port, "/metrics")[2].decode())}
    counted = {s.labels["reason"]: s.value for s in samples(families, "stream_monitor_dead_letters", "_total")}

    api = orjson.loads(http_get(port, "/api/status")[2])
    assert set(counted) == set(DEAD_LETTER_REASONS), "the metric has every reason, at 0 until its first"
    counted = {reason: count for reason, count in counted.items() if count > 0}
    assert {reason: entry["count"] for reason, entry in api["dead_letters"].items()} == counted
    assert "'nobody' is not configured" in api["dead_letters"]["unknown_model"]["sample"]
    page = http_get(port, "/")[2].decode()
    assert "Dead letters" in page and "unknown_model" in page and "&#x27;nobody&#x27; is not configured" in page

    import re
    deadline = time.monotonic() + 30
    while True:  # at most one line a second here (service.dead_letter_log_seconds = 1)
        summaries = [line for line in process.log().splitlines() if "dead-lettered" in line]
        logged = sum(int(re.search(r"dead-lettered (\d+) message", line).group(1)) for line in summaries)
        if logged >= len(BAD) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert logged == len(BAD), summaries
    assert any("unknown_model 1 (e.g. model_id 'nobody' is not configured" in line for line in summaries)

    import subprocess
    import sys
    config = observed["tmp_path"] / "observed.toml"
    shown = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(config), "--json"],
                           capture_output=True, text=True, timeout=60, check=True)
    status = orjson.loads(shown.stdout)  # read from the partition summaries stored in Redis
    assert {reason: entry["count"] for reason, entry in status["dead_letters"].items()} == counted
    assert sum(sum(e["count"] for e in p["dead_letter_reasons"].values()) for p in status["partitions"]) == len(BAD)
    text = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert "dead letters by reason" in text and "unknown_model" in text and "'nobody' is not configured" in text


def test_one_drift_is_one_incident_on_its_alerts_the_log_the_status_page_and_status(observed):
    """The fraud drift's alerts all carry one incident (the first firing alert's id); the run's log says it
    opened, with its drivers; /api/status, the page and `status` show it open."""
    import subprocess
    import sys

    from ..support import validator

    port, process = observed["port"], observed["process"]
    alerts = observed["run"].alerts()
    fraud = [a for a in alerts if a["model_id"] == "fraud"]
    assert len(fraud) >= 6 and {a["status"] for a in fraud} == {"firing"}
    incident = fraud[0]["alert_id"]
    assert {a.get("incident") for a in fraud} == {incident}
    schema = validator("alert.json")
    assert all(schema.is_valid(a) for a in fraud)
    opened = [line for line in process.log().splitlines() if f"incident {incident[:12]} on model fraud: " in line]
    assert len(opened) == 1 and "columns drifted: " in opened[0], process.log()[-3000:]

    api = orjson.loads(http_get(port, "/api/status")[2])
    [row] = api["models"]["fraud"]["incidents"]
    assert (row["incident"], row["state"], row["partition"], row["alerts"]) == (incident, "open", 0, len(fraud))
    assert row["drivers"][0]["severity"] == "critical"
    page = http_get(port, "/")[2].decode()
    assert "<h2>Incidents</h2>" in page and incident[:12] in page and "OPEN" in page
    families = {f.name: f for f in text_string_to_metric_families(http_get(port, "/metrics")[2].decode())}
    assert {s.labels["model"]: s.value for s in samples(families, "stream_monitor_incidents_open")} == \
        {"fraud": 1, "stable": 0}
    config = observed["tmp_path"] / "observed.toml"
    text = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"OPEN incident {incident[:12]} (partition 0, offset {fraud[0]['offset']}, " in text, text


def test_dead_letter_reasons_survive_a_restore():
    from stream_monitor.config import parse_config
    from stream_monitor.partition import PartitionMonitor

    config = parse_config({"models": {"stable": {}}})
    monitor = PartitionMonitor(config, 0, {})
    monitor.skip(10, "unknown_model", "model_id 'frod' is not configured")
    monitor.skip(11, "unknown_model", "model_id 'frud' is not configured")
    monitor.skip(12, "not_json", "x" * 1000)
    restored = PartitionMonitor(config, 0, {})
    restored.restore(orjson.loads(orjson.dumps(monitor.snapshot())))
    reasons = restored.summary()["dead_letter_reasons"]
    assert reasons == {"not_json": {"count": 1, "sample": "x" * 160},
                       "unknown_model": {"count": 2, "sample": "model_id 'frud' is not configured"}}
    assert restored.dead_letters == 3 and restored.next_offset == 13
    old = monitor.snapshot()
    del old["dead_letter_reasons"]  # a state saved before reasons were kept
    older = PartitionMonitor(config, 0, {})
    older.restore(old)
    assert older.dead_letters == 3 and older.summary()["dead_letter_reasons"] == {}


# --- per-partition series are derived at scrape time ---------------------------------------------------------


def test_partition_collector_derives_series_from_the_owned_partitions(monkeypatch):
    from prometheus_client import CollectorRegistry

    from stream_monitor import metrics as metrics_module
    from stream_monitor.metrics import Metrics, PartitionView

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    row = {"signal": "feature", "name": "amount", "detector": "psi", "statistic": 0.3, "threshold": 0.1,
           "critical": 0.25, "firing": True}
    summary = {"models": {"fraud": {"detectors": [row, dict(row, name="country", statistic=0.01, firing=False)],
                                    "performance": {"pairs": 10, "accuracy": 0.9}}}}
    other = {"models": {"fraud": {"detectors": [dict(row, statistic=0.5)], "performance": {"accuracy": 0.8}}}}
    owned = [PartitionView("t", 0, summary, 90, 100), PartitionView("t", 1, other, 5, 5)]
    metrics.partitions.source = lambda: owned

    def value(family, **labels):
        return registry.get_sample_value(family, labels)

    assert value("stream_monitor_consumer_lag", topic="t", partition="0") == 10
    assert value("stream_monitor_consumer_lag", topic="t", partition="1") == 0
    amount = {"model": "fraud", "signal": "feature", "name": "amount", "detector": "psi"}
    assert value("stream_monitor_detector_statistic", **amount) == 0.5, "the highest over the partitions"
    assert value("stream_monitor_detector_threshold", **amount) == 0.1
    assert value("stream_monitor_episodes_firing", model="fraud", signal="feature", detector="psi") == 2
    assert value("stream_monitor_performance", model="fraud", metric="accuracy") == 0.9

    owned = [PartitionView("t", 1, other, 5, 5)]  # partition 0 moved away
    assert value("stream_monitor_consumer_lag", topic="t", partition="0") is None
    assert value("stream_monitor_detector_statistic", **dict(amount, name="country")) is None
    assert value("stream_monitor_detector_statistic", **amount) == 0.5

    monkeypatch.setattr(metrics_module, "MAX_DETECTOR_SERIES", 1)
    owned = [PartitionView("t", 0, summary, 90, 100)]
    for _ in range(3):
        assert value("stream_monitor_detector_statistic", **dict(amount, name="country")) is None
    assert value("stream_monitor_detector_series_dropped_total") == 1, "counted once, not once per scrape"


def scrape(port: int) -> dict:
    return {f.name: f for f in text_string_to_metric_families(http_get(port, "/metrics")[2].decode())}


@pytest.mark.slow
def test_series_of_a_partition_that_moved_away_vanish_from_the_scrape(broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    ends = produce(broker.address, topic, [(0, b"fraud", v, None) for v in lines(generate("fraud", 3000, seed=5))]
                   + [(1, b"stable", v, None) for v in lines(generate("stable", 3000, seed=5))])
    first_port, second_port = free_port(), free_port()
    run = Run(broker, redis_server, tmp_path, topic, 2, "moved", service={"metrics_port": first_port})
    first = run.start(monitors)
    wait_for_offsets(run.store, topic, ends, processes=[first])
    wait_for_status(first_port, ends, first)

    def seen(port: int) -> tuple[set, set]:
        families = scrape(port)
        lag = {s.labels["partition"] for s in samples(families, "stream_monitor_consumer_lag")}
        models = {s.labels["model"] for s in samples(families, "stream_monitor_detector_statistic")}
        return lag, models

    deadline = time.monotonic() + 30  # the lag appears once the consumer has heard the log ends (< 1 s)
    while seen(first_port) != ({"0", "1"}, {"fraud", "stable"}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen(first_port) == ({"0", "1"}, {"fraud", "stable"})
    second_config = tmp_path / "moved-second.toml"
    second_config.write_text(run.config.read_text().replace(f"metrics_port = {first_port}",
                                                            f"metrics_port = {second_port}"))
    second = MonitorProcess(second_config, tmp_path / "moved-second.log")
    monitors.append(second)
    model_of = {"0": "fraud", "1": "stable"}
    deadline = time.monotonic() + 60
    kept = None
    while time.monotonic() < deadline:
        lag, models = seen(first_port)
        if len(lag) == 1 and len(models) == 1:
            kept = lag
            break
        time.sleep(0.1)
    assert kept is not None, f"the first instance still exports {seen(first_port)}\n{first.log()[-2000:]}"
    (partition,) = kept
    assert seen(first_port) == ({partition}, {model_of[partition]})
    moved = ({"0", "1"} - kept).pop()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if seen(second_port) == ({moved}, {model_of[moved]}):
                break
        except OSError:
            pass
        time.sleep(0.1)
    assert seen(second_port) == ({moved}, {model_of[moved]}), "the new owner exports what moved"
    for process in (second, first):
        assert process.terminate() == 0, process.log()[-3000:]
