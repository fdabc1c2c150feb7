"""Redis up but refusing writes (out of memory, a read-only replica, MISCONF): processing pauses like in
an outage and resumes when Redis accepts writes again; nothing is lost or counted twice."""

from __future__ import annotations

import os

import pytest
import redis

from stream_monitor.app import write_refusal
from stream_monitor.demo.localstack import free_port

from ..support import OwnRedis, outage_pair, wait_until


def test_write_refusals_are_told_apart_from_other_errors():
    assert "out of memory" in write_refusal(redis.exceptions.OutOfMemoryError(
        "command not allowed when used memory > 'maxmemory'."))
    assert "read-only" in write_refusal(redis.exceptions.ReadOnlyError("You can't write against a read only replica."))
    assert "MISCONF" in write_refusal(redis.ResponseError(
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk."))
    # one command of a pipeline refused (the label join's scripts run in one): redis-py prefixes Redis's error
    assert "MISCONF" in write_refusal(redis.ResponseError(
        "Command # 232 (EVALSHA 924a6d5f 7 ns:join:{fraud}:pending ...) of pipeline caused error: MISCONF Redis "
        "is configured to save RDB snapshots, but it's currently unable to persist to disk."))
    assert write_refusal(redis.ResponseError(
        "Command # 3 (HSET k f v) of pipeline caused error: WRONGTYPE Operation against a key")) is None
    assert write_refusal(redis.ResponseError("ERR wrong number of arguments for 'hset' command")) is None
    assert write_refusal(redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")) is None


def refusals(process) -> int:
    return process.log().count("Redis refuses writes")


def refused_then_accepted(pair, process, refuse, accept, reason: str) -> None:
    """Make Redis refuse writes mid-stream until the service has retried a few times, then accept them
    again; the run must finish with the uninterrupted outcome and the log must tell the story."""
    refuse()
    paused = wait_until(lambda: refusals(process) >= 4, "four retries of a refused write", process)
    backs = process.log().count("Redis is back")
    accept()
    resumed = wait_until(lambda: process.log().count("Redis is back") > backs, "the resume", process)
    pair.finish([process])
    log = process.log()
    assert reason in log and "processing paused" in log and "Redis is back" in log
    print(f"\n{reason}: first four refusals within {paused:.1f} s; resumed {resumed:.2f} s after Redis "
          f"accepted writes again; {refusals(process)} refused attempts")


@pytest.mark.slow
def test_redis_out_of_memory_mid_stream(broker, redis_server, tmp_path, monitors):
    """maxmemory set under the memory in use with noeviction (every write refused, not just some), then
    lifted."""
    with OwnRedis(tmp_path) as own:
        client = own.client()
        pair, process = outage_pair(broker, redis_server, tmp_path, monitors, run_redis=own)

        def refuse():
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)

        refused_then_accepted(pair, process, refuse, lambda: client.config_set("maxmemory", 0), "out of memory")


@pytest.mark.slow
def test_redis_turned_read_only_replica_mid_stream(broker, redis_server, tmp_path, monitors):
    """The service's Redis becomes a replica (as after a failover) and later a primary again. Its master
    is a port nobody listens on, so it never syncs and keeps its data: the same data before and after."""
    with OwnRedis(tmp_path) as own:
        client = own.client()
        pair, process = outage_pair(broker, redis_server, tmp_path, monitors, run_redis=own)
        refused_then_accepted(pair, process, lambda: client.replicaof("127.0.0.1", free_port()),
                              lambda: client.replicaof("NO", "ONE"), "read-only")


@pytest.mark.slow
def test_redis_unable_to_persist_misconf_mid_stream(broker, redis_server, tmp_path, monitors):
    """A failed background save with stop-writes-on-bgsave-error (the default): MISCONF until a save works."""
    with OwnRedis(tmp_path, extra=("--enable-protected-configs", "yes", "--save", "3600 1")) as own:
        client = own.client()
        pair, process = outage_pair(broker, redis_server, tmp_path, monitors, run_redis=own)

        def save_status() -> str:
            return client.info("persistence")["rdb_last_bgsave_status"]

        def refuse():
            gone = tmp_path / "gone"
            gone.mkdir()
            client.config_set("dir", str(gone))
            os.rmdir(gone)
            client.bgsave()
            wait_until(lambda: save_status() == "err", "the failed background save", process)

        def accept():
            back = tmp_path / "back"
            back.mkdir()
            client.config_set("dir", str(back))
            client.bgsave()
            wait_until(lambda: save_status() == "ok", "a background save that works", process)

        refused_then_accepted(pair, process, refuse, accept, "MISCONF")
