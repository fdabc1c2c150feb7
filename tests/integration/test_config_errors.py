"""Config mistakes end in one line naming the file or the key, exit 2, never a traceback; bounds
are checked at load, not found out later as a crash or a stop that takes minutes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stream_monitor import cli
from stream_monitor.config import MAX_BATCH_SIZE, MAX_POLL_TIMEOUT_SECONDS, parse_config

MINIMAL = '[kafka]\nbootstrap_servers = "127.0.0.1:1"\n[models.m]\n'


def _fails(capsys, argv: list[str]) -> str:
    """`main(argv)` exits 2 with exactly one line on stderr and nothing on stdout; that line."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    line, = captured.err.splitlines()
    assert line.startswith("stream-monitor: config: ")
    return line


@pytest.mark.parametrize("command", [["status"], ["run"], ["replay", "--input", "/dev/null"], ["state", "export",
                                                                                              "--output", "/dev/null"]])
def test_a_directory_as_config(capsys, restore_logging, tmp_path, command):
    argv = [*command[:1], *(command[1:2] if command[0] == "state" else ()), "-c", str(tmp_path),
            *(command[2:] if command[0] == "state" else command[1:])]
    line = _fails(capsys, argv)
    assert line == f"stream-monitor: config: {tmp_path}: is a directory, not a config file"


def test_an_unreadable_config(capsys, restore_logging, tmp_path, monkeypatch):
    # Tests run as root, where chmod 000 does not stop a read: the error mapping is tested directly.
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL)
    real = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    line = _fails(capsys, ["status", "-c", str(path)])
    assert line == (f"stream-monitor: config: {path}: cannot be read: permission denied "
                    "(the service's user needs read access)")


def test_a_missing_config(capsys, restore_logging, tmp_path):
    assert _fails(capsys, ["status", "-c", str(tmp_path / "nope.toml")]).endswith("nope.toml: file not found")


def test_a_config_that_is_not_utf8(capsys, restore_logging, tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(MINIMAL.encode() + b'[models.caf\xe9]\n')  # Latin-1, as an editor might save it
    line = _fails(capsys, ["run", "-c", str(path)])
    assert line == f"stream-monitor: config: {path}: not valid UTF-8 (byte 0xe9 on line 4); save it as UTF-8"


def test_a_config_that_is_not_toml_is_one_line(capsys, restore_logging, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL + "[service\nbatch_size = 1\n")
    assert _fails(capsys, ["status", "-c", str(path)]).startswith(f"stream-monitor: config: {path}: not valid TOML: ")


@pytest.mark.parametrize("key, value, problem", [
    ("batch_size", MAX_BATCH_SIZE + 1, "must be at most 1,000,000 (the most the Kafka client fetches in one call), "
                                       "got 1,000,001"),
    ("poll_timeout_seconds", 3600, "must be at most 5 s, got 3600"),
    ("poll_timeout_seconds", 0, "must be > 0"),
])
def test_bounds_are_checked_at_load(capsys, restore_logging, tmp_path, key, value, problem):
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL.replace("[models.m]", f"[service]\n{key} = {value}\n[models.m]"))
    line = _fails(capsys, ["run", "-c", str(path)])
    assert line.startswith(f"stream-monitor: config: service.{key}: {problem}")


def test_bounds_apply_to_environment_overrides_too(capsys, restore_logging, tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL)
    monkeypatch.setenv("STREAM_MONITOR_SERVICE_POLL_TIMEOUT_SECONDS", "3600")
    assert _fails(capsys, ["run", "-c", str(path)]).startswith(
        "stream-monitor: config: service.poll_timeout_seconds: must be at most 5 s")


def test_the_bounds_themselves_are_accepted():
    config = parse_config({"service": {"batch_size": MAX_BATCH_SIZE,
                                       "poll_timeout_seconds": MAX_POLL_TIMEOUT_SECONDS}})
    assert config.service.batch_size == 1_000_000 and config.service.poll_timeout_seconds == 5.0


def test_the_batch_size_bound_is_the_kafka_clients():
    from confluent_kafka import Consumer

    consumer = Consumer({"group.id": "bound-check", "bootstrap.servers": "127.0.0.1:1"})
    try:
        assert consumer.consume(MAX_BATCH_SIZE, timeout=0) == []
        with pytest.raises(ValueError, match="num_messages must be between 0 and 1000000"):
            consumer.consume(MAX_BATCH_SIZE + 1, timeout=0)
    finally:
        consumer.close()


def test_a_metrics_port_in_use(tmp_path, redis_server):
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        path = tmp_path / "c.toml"
        path.write_text(f'[kafka]\nbootstrap_servers = "127.0.0.1:1"\n[redis]\nurl = "{redis_server.address}"\n'
                        f'namespace = "port-in-use"\n[service]\nmetrics_port = {port}\n[models.m]\n')
        result = subprocess.run([sys.executable, "-m", "stream_monitor", "run", "-c", str(path)],
                                capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    last = result.stderr.splitlines()[-1]  # after the "starting" log line
    assert last == f"stream-monitor: config: service.metrics_port: port {port} on 127.0.0.1 is already in use"
