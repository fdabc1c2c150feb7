"""Liveness (/healthz) and readiness (/readyz): judged from what the service knows, never "ok" by default.

The judgement itself (:func:`stream_monitor.web.assess`) is tested without I/O; one real
`stream-monitor run` (real broker, its own Redis) shows it through a group join and a Redis pause.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from stream_monitor.demo.localstack import create_topics, free_port, start_redis
from stream_monitor.web import HealthFacts, assess

from ..support import Feeder, probe, Run, two_model_stream, unique, wait_for_offsets

LOOP, UNASSIGNED = 10.0, 60.0


def judge(**facts) -> tuple[bool, bool, dict]:
    return assess(HealthFacts(**{"now": 1000.0, "started": 900.0, **facts}), LOOP, UNASSIGNED)


def test_a_running_joined_instance_is_live_and_ready():
    live, ready, report = judge(last_loop=999.5, joined=True, assigned_partitions=3)
    assert (live, ready) == (True, True)
    assert report["problems"] == [] and report["assigned_partitions"] == 3 and report["loop_age_seconds"] == 0.5


def test_a_loop_that_does_not_come_round_is_not_live():
    live, ready, report = judge(last_loop=985.0, joined=True, redis_failed_at=999.0)
    assert (live, ready) == (False, False)
    assert report["status"] == "stuck" and report["redis"] == "failing"
    assert report["problems"][0] == "the loop has not come round for 15 s (waiting for Redis) (limit 10 s)"


def test_a_redis_failure_since_the_last_iteration_pauses_readiness_only():
    live, ready, report = judge(last_loop=998.0, joined=True, redis_failed_at=999.0)
    assert (live, ready) == (True, False) and report["problems"] == ["paused: Redis is failing"]
    # a failure before the loop last came round is over: Redis answered since
    assert judge(last_loop=999.0, joined=True, redis_failed_at=998.0)[:2] == (True, True)


def test_an_unreachable_broker_pauses_readiness_but_the_loop_goes_on():
    live, ready, report = judge(last_loop=999.9, joined=True, broker_down_since=970.0)
    assert (live, ready) == (True, False)
    assert report["broker"] == "unreachable" and report["broker_unreachable_seconds"] == 30.0


def test_joining_is_not_ready_and_a_join_that_never_ends_is_not_live():
    assert judge(last_loop=999.9, joining_since=990.0)[:2] == (True, False)
    live, _, report = judge(last_loop=999.9, joined=True, joining_since=930.0)
    assert not live and report["problems"][0].startswith("no partition assignment for 70 s")
    # joined and given nothing (more instances than partitions) is healthy and ready
    assert judge(last_loop=999.9, joined=True, assigned_partitions=0)[:2] == (True, True)


def test_before_the_first_iteration_the_age_counts_from_the_start():
    live, ready, report = judge(started=995.0, joining_since=995.0)
    assert (live, ready) == (True, False) and report["loop_age_seconds"] == 5.0
    assert judge(started=980.0)[0] is False


def test_stopping_is_not_ready():
    assert judge(last_loop=999.9, joined=True, stopping=True)[:2] == (True, False)


# --- through a real run -----------------------------------------------------------------------------------


def wait_for(port: int, path: str, status: int, process, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise AssertionError(f"monitor exited ({process.process.returncode}):\n{process.log()[-3000:]}")
        seen = probe(port, path)
        if seen is not None and seen[0] == status:
            return seen[1]
        time.sleep(0.05)
    raise AssertionError(f"{path} did not answer {status} within {timeout:.0f} s (last: {seen})\n{process.log()[-3000:]}")


@pytest.mark.slow
def test_health_and_readiness_through_the_join_and_a_redis_pause(broker, redis_server, tmp_path, monitors):
    """readyz 503 while joining, then 200; with Redis SIGSTOPped the loop waits inside a Redis call:
    healthz and readyz 503 saying why; after SIGCONT both 200 again and the stream completes."""
    own = start_redis(str(tmp_path))
    try:
        topic = unique("inference")
        create_topics(broker.address, {topic: 1})
        feeder = Feeder(broker.address, topic, two_model_stream(6000, 1), rate=1500)
        port = free_port()
        run = Run(broker, own, tmp_path, topic, 1, "health",
                  service={"metrics_port": port, "health_max_loop_age_seconds": 3})
        process = run.start(monitors)

        first = wait_for(port, "/readyz", 503, process)
        assert "joining the consumer group" in first["problems"] and first["joined"] is False
        ready = wait_for(port, "/readyz", 200, process)
        assert ready["joined"] is True and ready["assigned_partitions"] == 1 and ready["references_loaded"] is True
        assert probe(port, "/healthz")[0] == 200

        feeder.start()
        wait_for_offsets(run.store, topic, {0: 1000}, processes=[process])
        os.kill(own.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            stuck = wait_for(port, "/healthz", 503, process, timeout=30)
            print(f"healthz 503 {time.monotonic() - stopped:.1f} s after Redis was stopped")
            assert stuck["status"] == "stuck" and stuck["loop_age_seconds"] > 3
            assert any(p.startswith("the loop has not come round") for p in stuck["problems"]), stuck
            paused = probe(port, "/readyz")
            assert paused[0] == 503 and paused[1]["ready"] is False
        finally:
            os.kill(own.pid, signal.SIGCONT)
        resumed = time.monotonic()
        back = wait_for(port, "/healthz", 200, process, timeout=60)
        print(f"healthz 200 again {time.monotonic() - resumed:.1f} s after SIGCONT")
        assert back["status"] == "ok"
        wait_for(port, "/readyz", 200, process, timeout=60)

        ends = feeder.result(timeout=120)
        wait_for_offsets(run.store, topic, ends, processes=[process], timeout=120)
        assert process.terminate() == 0, process.log()[-3000:]
    finally:
        own.stop()
