"""The Prometheus rules against a real Prometheus scraping a real `stream-monitor run` (real broker, real
Redis): every rule of deploy/prometheus/rules.yml evaluates without error on the service's series, the
critical-drift alert fires for the drifting model only, and the dead-letter-rate alert's condition holds
after bad input (it is pending: its `for` is minutes long; `promtool test rules` shows it firing).

Prometheus is Debian's `prometheus` package (`make test-setup` installs it); without it the test fails
and says so. It runs on a free loopback port with a temporary config and storage, and is stopped by its pid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.synthetic import generate

from ..support import ROOT, MonitorProcess, Run, lines, produce, unique, wait_for_offsets

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
BAD = [b"this is not json", b"[1, 2, 3]", b'{"event_id": "e", "model_id": "nobody", "features": {"x": 1}}']


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
    assert path, "prometheus is missing: run `make test-setup` (installs Debian's prometheus package)"
    return path


class LocalPrometheus:
    """A Prometheus of the test's own, scraping ``targets`` every second and evaluating ``rules`` every
    second; stopped by its pid."""

    def __init__(self, tmp_path: Path, targets: list[str], rules: Path):
        self.port = free_port()
        config = {"global": {"scrape_interval": "2s", "evaluation_interval": "1s", "scrape_timeout": "2s"},
                  "rule_files": [str(rules)],
                  "scrape_configs": [{"job_name": "stream-monitor", "metrics_path": "/metrics",
                                      "static_configs": [{"targets": targets}]}]}
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = tmp_path / "prometheus.log"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}{query}", timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait(self, condition, what: str, monitor: MonitorProcess, timeout: float = 90.0, show: str = "up"):
        """Polls ``condition()`` (a value, or None while not yet) until it gives one; fails if Prometheus
        or the monitor exited, or ``timeout`` passed (saying what the PromQL ``show`` gives then)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log()[-3000:]}"
            assert monitor.process.poll() is None, f"monitor exited:\n{monitor.log()[-3000:]}"
            try:
                last = condition()
            except (OSError, urllib.error.URLError) as exc:
                last = exc
            else:
                if last is not None and last is not False:
                    return last
            time.sleep(0.2)
        shown = self.api("/api/v1/query", query=show)["result"]
        raise AssertionError(f"{what} did not happen within {timeout:.0f} s (last: {last!r}); {show}: {shown}\n"
                             f"prometheus log:\n{self.log()[-2000:]}\nmonitor log:\n{monitor.log()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def alerts(prometheus: LocalPrometheus, name: str) -> list[dict]:
    return [a for a in prometheus.api("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]


def all_rules(prometheus: LocalPrometheus) -> list[dict]:
    return [rule for group in prometheus.api("/api/v1/rules")["groups"] for rule in group["rules"]]


def test_rules_fire_on_a_running_instance(broker, redis_server, tmp_path, monitors):
    binary = prometheus_binary()  # fails first, and says why, when it is missing
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    port = free_port()
    run = Run(broker, redis_server, tmp_path, topic, 2, "rules", service={"metrics_port": port})
    monitor = run.start(monitors)
    prometheus = LocalPrometheus(tmp_path, [f"127.0.0.1:{port}"], RULES)
    try:
        assert prometheus.process.args[0] == binary

        def scraped():  # the instance is up for Prometheus before anything is consumed: rates see the rise
            result = prometheus.api("/api/v1/query", query='up{job="stream-monitor"}')["result"]
            if not (result and result[0]["value"][1] == "1"):
                return False
            # and the counters the ratio divides are stored at 0: a rate sees no rise from a first sample
            zeros = prometheus.api("/api/v1/query", query='stream_monitor_events_consumed_total{job="stream-monitor"}'
                                   ' + on(job) group_left sum by (job) (stream_monitor_dead_letters_total)')["result"]
            return bool(zeros) and all(sample["value"][1] == "0" for sample in zeros)

        prometheus.wait(scraped, "the first scrape of the monitor", monitor)

        fraud = lines(generate("fraud", 8000, seed=1, drift_at=3000))
        stable = lines(generate("stable", 4000, seed=1))
        records = [(0, b"fraud", value, None) for value in fraud]
        for i, value in enumerate(stable):
            if i % 20 == 10:  # 200 bad messages in 12,200: ~1.6% of the input
                records.append((1, b"bad", BAD[i % len(BAD)], None))
            records.append((1, b"stable", value, None))
        ends = produce(broker.address, topic, records)
        wait_for_offsets(run.store, topic, ends, processes=[monitor])

        def drift_firing():
            firing = [a for a in alerts(prometheus, "StreamMonitorCriticalDrift") if a["state"] == "firing"]
            return firing or None

        firing = prometheus.wait(drift_firing, "StreamMonitorCriticalDrift firing", monitor)
        assert {a["labels"]["model"] for a in firing} == {"fraud"}, "only the drifting model"
        assert {a["labels"]["signal"] for a in firing} <= {"feature", "prediction"}
        for alert in firing:
            assert alert["labels"]["severity"] == "critical" and alert["labels"]["job"] == "stream-monitor"
            assert alert["annotations"]["summary"] == f"model fraud: critical {alert['labels']['signal']} drift"
            assert float(alert["value"]) >= 1

        def dead_letters_seen():
            return [a for a in alerts(prometheus, "StreamMonitorDeadLetterRate")
                    if a["state"] in ("pending", "firing")] or None

        (dead,) = prometheus.wait(dead_letters_seen, "StreamMonitorDeadLetterRate pending", monitor,
                                  show="{__name__=~'stream_monitor_(dead_letters|events_consumed)_total|job:.*'}")
        assert dead["labels"]["job"] == "stream-monitor"
        assert 0.01 < float(dead["value"]) < 0.05

        def evaluated():  # every rule evaluated at least once on these series
            found = all_rules(prometheus)
            return found if found and all(rule["health"] != "unknown" for rule in found) else None

        evaluated_rules = prometheus.wait(evaluated, "every rule evaluated", monitor)
        assert {rule["name"] for rule in evaluated_rules} == {rule.get("alert") or rule["record"] for group in
                                                              yaml.safe_load(RULES.read_text())["groups"]
                                                              for rule in group["rules"]}
        broken = [(rule["name"], rule.get("lastError")) for rule in evaluated_rules if rule["health"] != "ok"]
        assert not broken, broken
        states = {(a["labels"]["alertname"], a["state"]) for a in prometheus.api("/api/v1/alerts")["alerts"]}
        named = {name for name, _ in states}
        # up all along, no Redis error, no labels (so no performance episode): not even pending
        assert not named & {"StreamMonitorInstanceDown", "StreamMonitorRedisErrors",
                            "StreamMonitorPerformanceLimitBreached"}, states
        # once the stream has ended, no checkpoint is due while the last events are under 2 minutes old:
        # pending at most (rules.test.yml shows the idle case never firing)
        assert ("StreamMonitorNoCheckpoint", "firing") not in states, states

        lag = prometheus.api("/api/v1/query", query='job:stream_monitor_consumer_lag:sum{job="stream-monitor"}')
        assert lag["result"], "the group's lag is recorded"
        (interval,) = prometheus.api("/api/v1/query", query="stream_monitor_checkpoint_interval_seconds")["result"]
        assert float(interval["value"][1]) == 0.5, "the run's service.checkpoint_interval_seconds"
        assert monitor.terminate() == 0, monitor.log()[-3000:]
    finally:
        prometheus.stop()
