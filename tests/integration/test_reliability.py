"""Reliability against real processes: SIGTERM under load, disaster recovery
through `state export` / `state import`, Redis authentication without leaking the password, librdkafka
security properties passed through, and a bad message near the size limit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from stream_monitor.config import admin_settings, consumer_settings, load_config, parse_config, producer_settings
from stream_monitor.demo.localstack import LocalProcess, create_topics, free_port, redis_binary
from stream_monitor.synthetic import generate

from ..support import (MODELS, assert_same_outcome, Feeder, lines, MonitorProcess, namespace_contents, produce, Run,
                      stored_offset, two_model_stream, unique, validator, wait_for_offsets, write_config)

CLI = [sys.executable, "-m", "stream_monitor"]


def cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def committed_offsets(bootstrap: str, group_id: str, topic: str, partitions) -> dict[int, int | None]:
    """The group's committed offsets, read without joining the group (no subscribe)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in committed}


def resumed_at(log: str, topic: str, partition: int) -> int | None:
    """The offset a monitor said it resumed a partition at ("assigned T[P]: resuming at offset N")."""
    found = re.findall(rf"{re.escape(topic)}\[{partition}\]: resuming at offset (\d+)", log)
    return int(found[0]) if found else None


def stored_offsets(run: Run) -> dict[int, int | None]:
    return {p: stored_offset(run.store, run.input_topic, p) for p in range(run.partitions)}


# --- SIGTERM under load ---------------------------------------------------------------------------------------

# The service's own defaults: a checkpoint every 10,000 events or 5 s, so a stop has real unsaved progress.
UNDER_LOAD = {"checkpoint_interval_events": 10_000, "checkpoint_interval_seconds": 5.0}


@pytest.mark.slow
def test_sigterm_under_load_persists_commits_and_exits_within_10s(broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    ends = produce(broker.address, topic, two_model_stream(75_000, 2))
    assert sum(ends.values()) == 150_000
    stopped = Run(broker, redis_server, tmp_path, topic, 2, "sigterm", service=UNDER_LOAD)
    clean = Run(broker, redis_server, tmp_path, topic, 2, "sigterm-clean")
    first = stopped.start(monitors)
    clean_process = clean.start(monitors)

    deadline = time.monotonic() + 60
    while not all(stored_offsets(stopped).values()):  # a checkpoint of both partitions: progress shown
        assert first.process.poll() is None, f"monitor exited early:\n{first.log()[-3000:]}"
        assert time.monotonic() < deadline, f"no progress stored within 60 s:\n{first.log()[-3000:]}"
        time.sleep(0.02)
    signalled = time.monotonic()
    os.kill(first.pid, signal.SIGTERM)
    try:
        code = first.process.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 10 s after SIGTERM:\n{first.log()[-3000:]}")
    took = time.monotonic() - signalled
    assert code == 0, f"exit code {code} after SIGTERM:\n{first.log()[-3000:]}"

    stored = stored_offsets(stopped)
    committed = committed_offsets(broker.address, stopped.group_id, topic, range(2))
    assert stored == committed, f"Redis holds {stored}, the group committed {committed}"
    assert all(offset is not None and offset > 0 for offset in stored.values()), stored
    assert any(stored[p] < ends[p] for p in ends), f"stopped mid-stream: {stored} vs ends {ends}"
    print(f"SIGTERM → exit 0 in {took:.2f} s at offsets {stored} of {ends}")

    second = stopped.start(monitors)
    wait_for_offsets(stopped.store, topic, ends, processes=[second], timeout=120)
    for p, offset in stored.items():
        assert resumed_at(second.log(), topic, p) == offset, second.log()[-3000:]
    wait_for_offsets(clean.store, topic, ends, processes=[clean_process], timeout=120)
    assert second.terminate() == 0 and clean_process.terminate() == 0
    assert_same_outcome(stopped, clean)


def test_sigterm_during_start_up_exits_cleanly(broker, redis_server, tmp_path, monitors):
    """A stop that arrives while the modules load (an orchestrator scaling down at once) is not a crash:
    the start-up ends there, with 0 and one line saying nothing was consumed."""
    topic = unique("startup")
    create_topics(broker.address, {topic: 1})
    run = Run(broker, redis_server, tmp_path, topic, 1, "startup")
    process = run.start(monitors)
    deadline = time.monotonic() + 15
    while "starting (pid" not in process.log() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGTERM)
    assert process.process.wait(30) == 0, process.log()
    assert "stopped during start-up (SIGTERM): nothing was consumed" in process.log()


# --- disaster recovery: state export → lose Redis → state import ------------------------------------------------


@pytest.mark.slow
def test_state_export_import_disaster_recovery(broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    # the first half is fed while the first run works, the rest only after it has stopped: it stops
    # mid-stream on both partitions however unevenly they were consumed (at most 6,000 of 12,000 each)
    records = two_model_stream(12_000, 2)
    feeder = Feeder(broker.address, topic, records[:len(records) // 2], rate=3000)
    recovered = Run(broker, redis_server, tmp_path, topic, 2, "dr")
    clean = Run(broker, redis_server, tmp_path, topic, 2, "dr-clean")
    first = recovered.start(monitors)
    clean_process = clean.start(monitors)
    feeder.start()
    wait_for_offsets(recovered.store, topic, {0: 4000, 1: 4000}, processes=[first])
    assert first.terminate() == 0, first.log()[-3000:]
    feeder.result()
    ends = produce(broker.address, topic, records[len(records) // 2:])

    export = tmp_path / "state.jsonl"
    result = cli("state", "export", "-c", str(recovered.config), "--output", str(export))
    assert result.returncode == 0, result.stderr
    exported = [orjson.loads(line) for line in export.read_bytes().splitlines() if line.strip()]
    assert sorted((r["topic"], r["partition"]) for r in exported) == [(topic, 0), (topic, 1)]
    at_stop = stored_offsets(recovered)
    assert all(at_stop[p] < ends[p] for p in ends), f"stopped mid-stream: {at_stop} vs {ends}"

    client = recovered.store.client
    before = namespace_contents(client, recovered.namespace)
    assert before, "the run stored state"
    client.delete(*before)  # the disaster: this run's Redis data is gone
    assert namespace_contents(client, recovered.namespace) == {}

    result = cli("state", "import", "-c", str(recovered.config), "--input", str(export))
    assert result.returncode == 0, result.stderr
    # the partitions' state is what an export holds; the label join's entries (every model's predictions
    # awaiting a label: the join is on by default) are not, and a disaster loses them; nor is the
    # report's history of closed windows (best effort by design: a report after the disaster starts
    # from the import)
    exported_keys = {k: v for k, v in before.items() if b":join:" not in k and b":history:" not in k}
    assert any(b":join:" in k for k in before), "the predictions were waiting in the label join"
    assert any(b":history:" in k for k in before), "the closed windows were in the report's history"
    assert namespace_contents(client, recovered.namespace) == exported_keys, \
        "import restores exactly what was exported"

    second = recovered.start(monitors)
    wait_for_offsets(recovered.store, topic, ends, processes=[second], timeout=120)
    for p, offset in at_stop.items():
        assert resumed_at(second.log(), topic, p) == offset, "resumed from the imported state"
    wait_for_offsets(clean.store, topic, ends, processes=[clean_process], timeout=120)
    assert second.terminate() == 0 and clean_process.terminate() == 0
    assert_same_outcome(recovered, clean)


# --- Redis authentication; the password is never printed ---------------------------------------------------------

PASSWORD = "S3cretPassw0rd"
WRONG_PASSWORD = "Wr0ngPassw0rdX"
SECRETS = (PASSWORD, WRONG_PASSWORD)
PERMISSION_WORDS = ("permission", "readable", "0644", "0o644", "chmod")
FAIL_WITHIN = 60.0  # a wrong password or a malformed config is refused within this long (not treated as an outage)


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory):
    """A second redis-server that requires a password; stopped by its own pid."""
    port = free_port()
    directory = tmp_path_factory.mktemp("redis-auth")
    log_path = directory / "redis.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(directory), "--requirepass", PASSWORD],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = LocalProcess("redis-auth", process, f"redis://:{PASSWORD}@127.0.0.1:{port}/0", str(log_path),
                          extra={"port": port})
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(server.address, socket_connect_timeout=0.5).ping()
                break
            except redis.RedisError:
                assert process.poll() is None and time.monotonic() < deadline, server.log_tail()
                time.sleep(0.05)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        yield server
    finally:
        server.stop()


class LoudMonitor(MonitorProcess):
    """`stream-monitor --log-level DEBUG run`: the most the service ever prints."""

    def __init__(self, config: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen([*CLI, "--log-level", "DEBUG", "run", "-c", str(config)],
                                        stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode(errors="replace")


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


@pytest.mark.slow
def test_redis_auth_and_password_never_printed(broker, auth_redis, tmp_path, monitors):
    port = auth_redis.extra["port"]
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    ends = produce(broker.address, topic, [(0, b"stable", v, None) for v in lines(generate("stable", 2500, seed=7))])

    def config(name: str, url: str) -> Path:
        return write_config(tmp_path / f"{name}.toml", bootstrap=broker.address, redis_url=url, input_topic=topic,
                            alert_topic=unique("alerts"), dead_letter_topic=unique("dlq"), group_id=unique(name),
                            namespace=unique(name), models=MODELS)

    wrong = config("wrong", f"redis://:{WRONG_PASSWORD}@127.0.0.1:{port}/0")
    malformed = config("malformed", f"http://:{PASSWORD}@x")
    failing_commands = {"run with a wrong password": ["run", "-c", str(wrong)],
                        "status with a wrong password": ["status", "-c", str(wrong)],
                        "run with a malformed redis.url": ["run", "-c", str(malformed)]}
    failing: dict[str, tuple[subprocess.Popen, Path, Path]] = {}
    try:
        # In the background (a wrong password may be retried for a while), while the real run goes on.
        started = time.monotonic()
        for n, (name, args) in enumerate(failing_commands.items()):
            out, err = tmp_path / f"failing-{n}.out", tmp_path / f"failing-{n}.err"
            with open(out, "wb") as stdout, open(err, "wb") as stderr:
                failing[name] = (subprocess.Popen([*CLI, *args], stdout=stdout, stderr=stderr,
                                                  stdin=subprocess.DEVNULL), out, err)

        metrics_port = free_port()
        run = Run(broker, SimpleNamespace(address=auth_redis.address), tmp_path, topic, 1, "auth",
                  service={"metrics_port": metrics_port})
        process = LoudMonitor(run.config, tmp_path / "auth.log")
        monitors.append(process)
        wait_for_offsets(run.store, topic, ends, processes=[process])
        outputs = {f"GET {path}": _fetch(f"http://127.0.0.1:{metrics_port}{path}")
                   for path in ("/", "/api/status", "/metrics", "/healthz")}
        assert process.terminate() == 0, process.log()[-3000:]
        outputs["service log (DEBUG)"] = process.log()

        status = cli("status", "-c", str(run.config))
        status_json = cli("status", "-c", str(run.config), "--json")
        assert status.returncode == 0, status.stderr
        assert status_json.returncode == 0, status_json.stderr
        assert f"{topic}[0]" in status.stdout, status.stdout
        (partition,) = orjson.loads(status_json.stdout)["partitions"]
        assert partition["next_offset"] == ends[0]
        outputs["status"] = status.stdout + status.stderr
        outputs["status --json"] = status_json.stdout + status_json.stderr

        problems = []
        for name, (popen, out, err) in failing.items():
            try:
                code = popen.wait(max(1.0, started + FAIL_WITHIN - time.monotonic()))
            except subprocess.TimeoutExpired:
                tail = err.read_text(errors="replace").strip().splitlines()[-1:]
                problems.append(f"{name}: still running {FAIL_WITHIN:.0f} s after start (last line: {tail})")
                outputs[name] = out.read_text(errors="replace") + err.read_text(errors="replace")
                continue
            stderr = err.read_text(errors="replace")
            outputs[name] = out.read_text(errors="replace") + stderr
            last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
            if code == 0:
                problems.append(f"{name}: exit code 0")
            if "Traceback" in stderr:
                problems.append(f"{name}: a Python traceback instead of a message (exit {code}): {last!r}")
            if "malformed" in name:
                clear = "redis.url" in last
            else:
                clear = "redis" in last.lower() and ("password" in last.lower() or "auth" in last.lower())
            if not clear:
                problems.append(f"{name}: unclear message (exit {code}): {last!r}")
        for where, text in outputs.items():
            for secret in _leaks(text):
                line = next(line for line in text.splitlines() if secret in line)
                problems.append(f"password {secret!r} printed by {where}: {line.strip()[:300]!r}")
        assert not problems, "\n".join(problems)
    finally:
        for popen, _, _ in failing.values():
            if popen.poll() is None:
                popen.kill()
                popen.wait(10)


def test_config_file_readable_by_others_with_secrets_warns(broker, auth_redis, tmp_path):
    path = write_config(tmp_path / "secret.toml", bootstrap=broker.address, redis_url=auth_redis.address,
                        input_topic="ml.inference", alert_topic="ml.alerts", dead_letter_topic="ml.dead-letters",
                        group_id=unique("perm"), namespace=unique("perm"), models=MODELS)
    os.chmod(path, 0o644)
    loose = cli("status", "-c", str(path), timeout=60)
    os.chmod(path, 0o600)
    tight = cli("status", "-c", str(path), timeout=60)
    assert loose.returncode == 0 and tight.returncode == 0, (loose.stderr, tight.stderr)
    for result in (loose, tight):
        assert not _leaks(result.stdout + result.stderr)
    assert any(word in loose.stderr.lower() for word in PERMISSION_WORDS), \
        f"no warning on stderr about a config with a Redis password that others can read (mode 0644): {loose.stderr!r}"
    assert not any(word in tight.stderr.lower() for word in PERMISSION_WORDS), tight.stderr


# --- librdkafka security properties pass through ------------------------------------------------------------------

SECURITY = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "monitor",
            "sasl.password": "p@ss=w0rd;#\"x", "ssl.ca.location": "/etc/ssl/certs/kafka-ca.pem"}


def _toml_lines(style: str) -> str:
    def key(k: str, i: int) -> str:
        quoted = style == "quoted" or (style == "mixed" and i % 2 == 0)
        return f'"{k}"' if quoted else k

    def value(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "\n".join(f"{key(k, i)} = {value(v)}" for i, (k, v) in enumerate(SECURITY.items()))


@pytest.mark.parametrize("style", ["quoted", "bare", "mixed"])
def test_sasl_ssl_properties_pass_through(style, tmp_path):
    body = _toml_lines(style)
    text = (f'[kafka]\nbootstrap_servers = "kafka-1:9093,kafka-2:9093"\n\n'
            f'[kafka.consumer]\n{body}\n"session.timeout.ms" = 10000\n\n[kafka.producer]\n{body}\n')
    path = tmp_path / "secure.toml"
    path.write_text(text)
    for config in (parse_config(tomllib.loads(text)), load_config(path, environ={})):
        consumer, producer, admin = consumer_settings(config), producer_settings(config), admin_settings(config)
        for name, settings in (("consumer", consumer), ("producer", producer), ("admin", admin)):
            for key, value in SECURITY.items():
                assert settings.get(key) == value, f"{style}: {name} {key} = {settings.get(key)!r}"
            assert settings["bootstrap.servers"] == "kafka-1:9093,kafka-2:9093"
        assert consumer["session.timeout.ms"] == 10000
        assert dict(config.kafka.consumer) == {**SECURITY, "session.timeout.ms": 10000}
        assert dict(config.kafka.producer) == SECURITY
        assert "session.timeout.ms" not in admin, "admin settings carry only connection and security properties"


# --- a bad message near the size limit ---------------------------------------------------------------------------


def test_bad_message_near_the_size_limit_is_dead_lettered_and_the_service_goes_on(broker, redis_server, tmp_path,
                                                                                 monitors):
    """A 900 KB message under the default 1 MiB limit that is not JSON: its dead letter (the value in
    base64, ~1.2 MB) is larger than the producer's message.max.bytes (librdkafka's default 1,000,000).
    It is still dead-lettered and the service neither stops nor stalls."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    good = lines(generate("stable", 600, seed=4))
    bad = b"\xff" + b"A" * 900_000
    records = ([(0, b"stable", v, None) for v in good[:300]] + [(0, b"big", bad, [("trace", b"1")])]
               + [(0, b"stable", v, None) for v in good[300:]])
    ends = produce(broker.address, topic, records)
    run = Run(broker, redis_server, tmp_path, topic, 1, "near-limit")
    process = run.start(monitors)
    wait_for_offsets(run.store, topic, ends, processes=[process], timeout=60)
    assert process.terminate() == 0, process.log()[-3000:]
    letters = [orjson.loads(m.value()) for m in run.dead_letters()]
    assert [letter["offset"] for letter in letters] == [300], letters
    validator("dead_letter.json").validate(letters[0])
    assert letters[0]["reason"] in ("not_utf8", "not_json", "too_large")
    (next_offset, state), = run.states().values()
    assert next_offset == ends[0] and state["dead_letters"] == 1
