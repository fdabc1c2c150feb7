"""Alerts to a real Prometheus Alertmanager (Debian's `prometheus-alertmanager`, started here on a free
port), whose only receiver is a webhook served by the test: grouping and resolve end to end, and an
Alertmanager that is not there at first."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stream_monitor.alertmanager import HttpSender, auth_headers
from stream_monitor.config import AlertmanagerConfig
from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.errors import AlertmanagerError
from stream_monitor.events import Alert
from stream_monitor.publisher import Publisher
from stream_monitor.synthetic import generate

from ..support import ROOT, Run, lines, logged, produce, unique, wait_for_offsets, wait_until

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
AMTOOL = "/usr/bin/amtool"
MODEL = {"decisions": "partition",
         "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}
# fraud drifts from event 2,000 to 5,000: its columns fire by 3,000 and are all resolved by 7,000
DRIFT, SETTLE = (0, 4000), (4000, 8000)  # (first event, count) of the two parts of the stream


def stream(model: str, part: tuple[int, int]) -> list[bytes]:
    """Part of fraud's drifting stream, under the model id ``model``."""
    start, count = part
    return lines(generate(model, count, seed=1, drift_at=2000, until=5000, start=start, kind="fraud"))


DRIFTING, SETTLING = stream("fraud", DRIFT), stream("fraud", SETTLE)


def need(binary: str) -> None:
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is not installed: run `make test-setup` (it installs Debian's "
                    "prometheus-alertmanager)", pytrace=False)


class Webhook:
    """An HTTP server on a free loopback port that keeps every notification Alertmanager posts to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notifications(self, status: str, model: str) -> list[dict]:
        return [n for n in list(self.received) if n["status"] == status and n["groupLabels"].get("model_id") == model]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """prometheus-alertmanager on ``port`` (gossip off), routing everything to ``webhook`` grouped by
    (model_id, signal), with short group waits; stopped by its pid."""

    def __init__(self, tmp_path: Path, webhook: Webhook, port: int | None = None):
        need(ALERTMANAGER)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root = tmp_path / f"alertmanager-{self.port}"
        (root / "data").mkdir(parents=True)
        config = root / "alertmanager.yml"
        config.write_text(f"""route:
  receiver: hook
  group_by: [model_id, signal]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {webhook.url}
        send_resolved: true
""")
        self.log_path = root / "alertmanager.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [ALERTMANAGER, f"--config.file={config}", f"--storage.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.ready():
            assert self.process.poll() is None, f"alertmanager exited: {self.log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"alertmanager not ready in 30 s: {self.log_path.read_text()[-2000:]}"
            time.sleep(0.05)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="module")
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def alertmanager(webhook, tmp_path_factory):
    manager = Alertmanager(tmp_path_factory.mktemp("alertmanager"), webhook)
    yield manager
    manager.stop()


def monitored(broker, redis_server, tmp_path, name: str, alertmanager_url: str, service: dict | None = None,
              model: str = "fraud"):
    """A Run of ``model`` over a new one-partition topic whose config posts to ``alertmanager_url``."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    run = Run(broker, redis_server, tmp_path, topic, 1, name, service=service, models={model: MODEL})
    with open(run.config, "a") as config:
        config.write(f'\n[alertmanager]\nurl = "{alertmanager_url}"\nresend_seconds = 2.0\n'
                     f'max_backoff_seconds = 1.0\nstatus_page_url = "https://sm.example/status"\n')
    return run, topic


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return answer.read().decode()
    except (urllib.error.URLError, OSError):
        return ""


def sample(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_firing_alerts_arrive_grouped_by_model_and_signal_then_resolved(broker, redis_server, tmp_path, monitors,
                                                                         alertmanager, webhook):
    run, topic = monitored(broker, redis_server, tmp_path, "am", alertmanager.url)
    process = run.start(monitors)
    ends = produce(broker.address, topic, [(0, b"fraud", v, None) for v in DRIFTING])
    wait_for_offsets(run.store, topic, ends, processes=[process])

    def fired() -> list[dict]:
        return [n for n in webhook.notifications("firing", "fraud") if n["groupLabels"].get("signal") == "feature"
                and any(a["labels"].get("detector") == "psi" for a in n["alerts"])]

    wait_until(fired, "a firing notification of fraud's feature group", process, timeout=60)
    notification = fired()[0]
    assert notification["groupLabels"] == {"model_id": "fraud", "signal": "feature"}
    psi = next(a for a in notification["alerts"] if a["labels"]["detector"] == "psi" and a["labels"]["name"] == "amount")
    assert psi["labels"] == {"alertname": "FeatureDrift", "model_id": "fraud", "signal": "feature", "name": "amount",
                             "detector": "psi", "severity": "critical"}
    published = {a["alert_id"]: a for a in run.alerts()}
    assert psi["annotations"]["alert_id"] in published, "Alertmanager hears only of alerts Kafka has"
    assert psi["annotations"]["description"] == published[psi["annotations"]["alert_id"]]["message"]
    assert psi["annotations"]["status_page"] == "https://sm.example/status"
    assert psi["generatorURL"] == "https://sm.example/status"
    assert len({(a["labels"]["name"], a["labels"]["detector"]) for a in notification["alerts"]}) >= 2, \
        "the feature alerts of one model come in one group"
    assert all(a["labels"]["signal"] == "feature" for n in fired() for a in n["alerts"]), "one group per signal"
    wait_until(lambda: [n for n in webhook.notifications("firing", "fraud") if n["groupLabels"].get("signal") ==
                        "prediction"], "fraud's prediction alerts in a group of their own", process)

    ends = produce(broker.address, topic, [(0, b"fraud", v, None) for v in SETTLING])
    wait_for_offsets(run.store, topic, ends, processes=[process])
    assert {a["alert_id"] for a in run.alerts() if a["status"] == "resolved" and a["signal"] == "feature"}
    resolved = lambda: [n for n in webhook.notifications("resolved", "fraud")  # noqa: E731
                        if n["groupLabels"].get("signal") == "feature"]
    wait_until(resolved, "the resolved notification of fraud's feature group", process, timeout=60)
    assert all(a["status"] == "resolved" for a in resolved()[0]["alerts"])
    assert process.terminate() == 0


def active(alertmanager: "Alertmanager", model: str) -> list[dict]:
    """The alerts Alertmanager holds as active for ``model`` (its v2 API)."""
    query = urllib.parse.quote(f'model_id="{model}"')
    with urllib.request.urlopen(f"{alertmanager.url}/api/v2/alerts?active=true&filter={query}", timeout=5) as answer:
        return json.loads(answer.read())


def test_the_instance_that_takes_a_partition_over_keeps_its_firing_alerts_alive_and_resolves_them(
        broker, redis_server, tmp_path, monitors, alertmanager, webhook):
    run, topic = monitored(broker, redis_server, tmp_path, "am-takeover", alertmanager.url, model="takeover")
    first = run.start(monitors)
    ends = produce(broker.address, topic, [(0, b"takeover", v, None) for v in stream("takeover", DRIFT)])
    wait_for_offsets(run.store, topic, ends, processes=[first])
    wait_until(lambda: active(alertmanager, "takeover"), "the first owner's alerts in Alertmanager", first)
    assert first.terminate() == 0
    second = run.start(monitors)
    adopted = lambda: [a for a in active(alertmanager, "takeover")  # noqa: E731
                       if "took partition 0 over" in a["annotations"]["description"]]
    wait_until(adopted, "the new owner re-posting what is still firing in the state it loaded", second)
    assert {a["labels"]["detector"] for a in adopted()} >= {"psi"}
    ends = produce(broker.address, topic, [(0, b"takeover", v, None) for v in stream("takeover", SETTLE)])
    wait_for_offsets(run.store, topic, ends, processes=[second])
    resolved = lambda: [n for n in webhook.notifications("resolved", "takeover")  # noqa: E731
                        if n["groupLabels"].get("signal") == "feature"]
    wait_until(resolved, "the new owner resolving them", second, timeout=60)
    assert second.terminate() == 0


def test_an_absent_alertmanager_never_stops_monitoring_and_gets_the_alerts_once_it_is_there(
        broker, redis_server, tmp_path, monitors):
    port, metrics_port = free_port(), free_port()  # nothing listens on ``port`` yet
    run, topic = monitored(broker, redis_server, tmp_path, "am-down", f"http://127.0.0.1:{port}",
                           service={"metrics_port": metrics_port})
    process = run.start(monitors)
    ends = produce(broker.address, topic, [(0, b"fraud", v, None) for v in DRIFTING])
    wait_for_offsets(run.store, topic, ends, processes=[process])
    assert [a for a in run.alerts() if a["status"] == "firing"], "alerts are published to Kafka meanwhile"
    failed = 'stream_monitor_alertmanager_alerts_failed_total{reason="unreachable"}'
    wait_until(lambda: sample(scrape(metrics_port), failed) > 0, "a failed post counted", process)
    assert process.log().count(f"Alertmanager at http://127.0.0.1:{port} is unreachable") == 1, \
        "the outage is logged once, not per retry"

    hook = Webhook()
    manager = Alertmanager(tmp_path, hook, port=port)
    try:
        wait_until(lambda: hook.notifications("firing", "fraud"), "the waiting alerts reaching Alertmanager",
                   process, timeout=60)
        wait_until(lambda: f"Alertmanager at http://127.0.0.1:{port} is reachable again" in process.log(),
                   "the end of the outage logged", process)
        assert sample(scrape(metrics_port), "stream_monitor_alertmanager_alerts_posted_total") > 0
        assert process.terminate() == 0
    finally:
        manager.stop()
        hook.close()


def test_the_forwarder_hears_only_of_alerts_the_broker_acknowledged(broker):
    heard = []
    topic, dlq = unique("alerts"), unique("dlq")
    create_topics(broker.address, {topic: 1, dlq: 1})
    fields = dict(status="firing", severity="critical", model_id="fraud", signal="feature", name="amount",
                  detector="psi", statistic=0.3, threshold=0.25, reference={}, current={}, partition=0, offset=1,
                  event_time_ms=1_795_812_290_123, message="PSI of fraud.amount is 0.3")
    settings = logged({"bootstrap.servers": broker.address, "enable.idempotence": True, "acks": "all"})
    delivered = Publisher(settings, topic, dlq, on_alert_delivered=heard.append)
    record = delivered.alert(Alert(**fields))
    assert heard == [], "not before the broker acknowledges it"
    delivered.confirm(timeout=30)
    assert heard == [record]
    refused = Publisher(settings, "not a valid topic!", dlq, on_alert_delivered=heard.append)
    refused.alert(Alert(**{**fields, "offset": 2}))
    refused.confirm(timeout=30)  # the broker refuses the topic: the alert is dead-lettered instead
    assert heard == [record], "an alert Kafka did not get never reaches Alertmanager"
    for publisher in (delivered, refused):
        publisher.close()


class Answering:
    """An HTTP server that answers every POST with ``code`` and keeps the requests' headers and bodies."""

    def __init__(self):
        self.code, self.requests = 200, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(outer.code)
                self.end_headers()
                self.wfile.write(b"answer")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.integration  # a local HTTP server: not the unit tier
def test_the_sender_posts_json_with_the_credential_and_tells_transient_from_refused():
    server = Answering()
    try:
        table = AlertmanagerConfig(url=server.url + "/", bearer_token_env="SM_AM_TOKEN")
        send = HttpSender(table.url, 5.0, auth_headers(table, {"SM_AM_TOKEN": "tok-abcdef"}))
        send([{"labels": {"alertname": "FeatureDrift"}}])
        path, headers, body = server.requests[-1]
        assert path == "/api/v2/alerts" and body == [{"labels": {"alertname": "FeatureDrift"}}]
        assert headers["Authorization"] == "Bearer tok-abcdef" and headers["Content-Type"] == "application/json"
        for code, transient in ((500, True), (503, True), (429, True), (400, False), (401, False)):
            server.code = code
            with pytest.raises(AlertmanagerError) as caught:
                send([])
            assert caught.value.transient is transient and f"HTTP {code}" in str(caught.value)
    finally:
        server.server.shutdown()
        server.server.server_close()
    with pytest.raises(AlertmanagerError) as caught:  # nothing listens there any more
        send([])
    assert caught.value.transient


@pytest.mark.integration  # runs a binary: not the unit tier
def test_the_shipped_routing_config_is_valid():
    need(AMTOOL)
    result = subprocess.run([AMTOOL, "check-config", str(ROOT / "deploy" / "alertmanager.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout
