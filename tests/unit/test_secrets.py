"""Credentials never reach a reader: every form redis-py and librdkafka accept is redacted in logs,
the status page, `status`, exceptions and config errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from stream_monitor import config as config_module
from stream_monitor import logs
from stream_monitor.config import (load_config, parse_config, redact, redact_properties, redact_url,
                                   remember_secrets)
from stream_monitor.demo.localstack import start_redis
from stream_monitor.web import render_page

SECRET = "Hunter2-s3cret"


@pytest.mark.parametrize("url, expected", [
    ("redis://app:Hunter2-s3cret@h:6379/0", "redis://app:***@h:6379/0"),
    ("rediss://:Hunter2-s3cret@h:6380/1", "rediss://:***@h:6380/1"),
    ("redis://Hunter2-s3cret@h:6379", "redis://***@h:6379"),
    ("redis://h:6379/0?password=Hunter2-s3cret", "redis://h:6379/0?password=***"),
    ("redis://h/0?socket_timeout=2&PASSWORD=Hunter2-s3cret&db=1", "redis://h/0?socket_timeout=2&PASSWORD=***&db=1"),
    ("redis://h/0?passwd=Hunter2-s3cret&pass=x&auth=y&token=z", "redis://h/0?passwd=***&pass=***&auth=***&token=***"),
    ("redis://u:p@ss@h:6379/0?username=u", "redis://u:***@h:6379/0?username=u"),
    ("unix:///run/redis.sock?db=0&password=Hunter2-s3cret", "unix:///run/redis.sock?db=0&password=***"),
    ("redis://h:6379/0", "redis://h:6379/0"),
])
def test_redact_url_removes_every_credential_form(url, expected):
    assert redact_url(url) == expected


def test_redact_properties_hides_librdkafka_credentials():
    settings = {"sasl.username": "app", "sasl.password": SECRET, "ssl.key.password": SECRET,
                "ssl.keystore.password": SECRET, "sasl.oauthbearer.client.secret": SECRET,
                "sasl.oauthbearer.config": f"principal=app secret={SECRET}", "ssl.key.pem": SECRET,
                "security.protocol": "SASL_SSL"}
    shown = redact_properties(settings)
    assert shown["sasl.username"] == "app" and shown["security.protocol"] == "SASL_SSL"
    assert SECRET not in repr(shown) and sum(v == "***" for v in shown.values()) == 6


def test_redact_text_by_form():
    text = (f"Redis at redis://h:6379/0?password={SECRET} failed; sasl.password={SECRET}, "
            f"'ssl.key.password': '{SECRET}' and https://u:{SECRET}@proxy:8080/x")
    assert SECRET not in redact(text)
    assert "redis://h:6379/0?password=***" in redact(text)
    assert redact("rejected sasl.oauthbearer.config=principal=admin") == "rejected sasl.oauthbearer.config=***"


def test_secrets_of_a_loaded_config_are_redacted_wherever_they_appear(monkeypatch):
    monkeypatch.setattr(config_module, "_known_secrets", set())
    parse_config({"redis": {"url": "redis://h:6379/0?password=Query-Secret-1"},
                  "kafka": {"consumer": {"sasl.password": "Sasl-Secret-2",
                                         "sasl": {"oauthbearer": {"client": {"secret": "Oauth-Secret-3"}}}},
                            "producer": {"ssl.key.password": "Key-Secret-4"}}})
    text = "client said: bad credentials Query-Secret-1 / Sasl-Secret-2 / Oauth-Secret-3 / Key-Secret-4"
    assert redact(text) == "client said: bad credentials *** / *** / *** / ***"


def test_a_sasl_password_from_the_environment_is_redacted_wherever_it_appears(monkeypatch):
    monkeypatch.setattr(config_module, "_known_secrets", set())
    parse_config({}, environ={"STREAM_MONITOR_KAFKA_SASL_PASSWORD": "Env-Sasl-Secret-5"})
    assert redact("broker said: authentication failed for Env-Sasl-Secret-5") == \
        "broker said: authentication failed for ***"


def test_config_repr_shows_no_credential():
    config = parse_config({"redis": {"url": f"redis://app:{SECRET}@h:6379/0"},
                           "kafka": {"consumer": {"sasl.password": SECRET}, "producer": {"ssl.key.password": SECRET}}})
    assert SECRET not in repr(config) and "redis://app:***@h:6379/0" in repr(config)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_never_print_a_secret(capsys, restore_logging, monkeypatch, log_format):
    monkeypatch.setattr(config_module, "_known_secrets", set())
    remember_secrets(SECRET)
    logs.setup(log_format)
    log = logging.getLogger("stream_monitor.app")
    log.warning("Redis unreachable at %s", f"redis://h:6379/0?password={SECRET}")
    log.error("Kafka client error: %s", f"SASL authentication failed for password {SECRET}")
    try:
        raise RuntimeError(f"sasl.password={SECRET}")
    except RuntimeError:
        log.exception("the producer failed")
    err = capsys.readouterr().err
    assert SECRET not in err and err.count("***") >= 3


def test_status_page_shows_no_secret(monkeypatch):
    monkeypatch.setattr(config_module, "_known_secrets", set())
    remember_secrets(SECRET)
    snapshot = {"instance": "h", "started_at": 0, "partitions": [], "models": {},
                "alerts": [{"model_id": "m", "message": f"sent to redis://:{SECRET}@h/0", "severity": "warning"}],
                "dead_letters": {"bad_json": {"count": 1, "sample": f"line 1: {{\"token\": \"{SECRET}\"}}"}}}
    page = render_page(snapshot)
    assert SECRET not in page and "redis://:***@h/0" in page


# --- through the command line, against a Redis that wants a password ---------------------------------

@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    process = start_redis(str(tmp_path_factory.mktemp("locked-redis")), extra=("--requirepass", "the-right-one"))
    yield process
    process.stop()


def _config(path: Path, redis_url: str, service: str = "") -> Path:
    path.write_text(f"""
[kafka]
bootstrap_servers = "127.0.0.1:1"
[kafka.consumer]
"sasl.password" = "{SECRET}-kafka"
"ssl.key.password" = "{SECRET}-key"
[redis]
url = "{redis_url}"
[service]
metrics_port = 0
redis_outage_seconds = 1.0
{service}
[models.m]
""")
    path.chmod(0o600)
    return path


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_monitor", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["run"], ["reference", "show", "--model", "m"],
                                     ["state", "export", "--output", "/dev/null"]])
@pytest.mark.parametrize("form", ["query", "userinfo"])
def test_a_wrong_redis_password_is_never_printed(tmp_path, locked_redis, command, form):
    address = locked_redis.address  # redis://127.0.0.1:PORT/0
    url = (f"{address}?password={SECRET}" if form == "query"
           else address.replace("redis://", f"redis://default:{SECRET}@"))
    result = _cli(*command[:1], *command[1:2] if command[0] != "status" else (), "-c",
                  str(_config(tmp_path / "c.toml", url)), *(command[1:] if command[0] == "status" else command[2:]))
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert SECRET not in out and "Traceback" not in out
    assert "***" in out or "Redis" in out


def test_an_unparseable_redis_url_is_a_config_error_without_its_password(tmp_path):
    result = _cli("status", "-c", str(_config(tmp_path / "c.toml", f"redis://app:{SECRET}@h:notaport/0")))
    assert result.returncode == 2 and result.stdout == ""
    line, = result.stderr.splitlines()
    assert line.startswith("stream-monitor: config: redis.url: cannot be parsed") and SECRET not in line
    assert "redis://app:***@h:notaport/0" in line


def test_an_unreachable_redis_is_reported_without_its_password(tmp_path):
    url = f"redis://app:{SECRET}@127.0.0.1:1/0?password={SECRET}"
    for command in (["status"], ["run"]):
        result = _cli(command[0], "-c", str(_config(tmp_path / "c.toml", url)))
        out = result.stdout + result.stderr
        assert result.returncode == 2, out
        assert SECRET not in out and "Traceback" not in out


def test_a_failing_thread_is_logged_without_its_secret(capsys, restore_logging, monkeypatch):
    import threading

    monkeypatch.setattr(config_module, "_known_secrets", set())
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored after the test
    remember_secrets(SECRET)
    logs.setup("text")

    def fail() -> None:
        raise RuntimeError(f"connect to redis://:{SECRET}@h/0 failed\nforged line")

    thread = threading.Thread(target=fail, name="scrape")
    thread.start()
    thread.join()
    err = capsys.readouterr().err
    assert SECRET not in err and "ERROR   stream_monitor: thread scrape failed" in err
    assert all(line.startswith("  | ") for line in err.splitlines()[1:])
