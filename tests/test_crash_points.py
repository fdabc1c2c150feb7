"""SIGKILL at five distinct points of the processing (fault injection, stream_monitor/faults.py), then a
restart: the final Redis state and the alert ids equal those of an uninterrupted run."""

from __future__ import annotations

import time

import pytest

from stream_monitor.localstack import create_topics

from .helpers import Feeder, unique, wait_for_offsets
from .test_service import Run, assert_same_outcome, two_model_stream

pytestmark = pytest.mark.slow

# n-th time the point is reached: late enough to be mid-stream, early enough to be before its end
CRASHES = {"between_batches": 40, "mid_batch": 40, "after_alerts_before_save": 6, "mid_checkpoint": 6}


def wait_killed(process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while process.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.process.returncode == -9, f"expected a SIGKILL, got {process.process.returncode}"


@pytest.mark.parametrize("point", sorted(CRASHES))
def test_sigkill_at_a_point_then_restart(point, broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    feeder = Feeder(broker.address, topic, two_model_stream(12_000, 2), rate=4000)
    crashed = Run(broker, redis_server, tmp_path, topic, 2, "crashed", service={"batch_size": 100})
    clean = Run(broker, redis_server, tmp_path, topic, 2, "clean")
    first = crashed.start(monitors, env={"STREAM_MONITOR_CRASH_AT": f"{point}:{CRASHES[point]}"})
    clean_process = clean.start(monitors)
    feeder.start()
    wait_killed(first)
    assert feeder.is_alive(), "the crash happened mid-stream"
    ends = feeder.result()
    second = crashed.start(monitors)
    wait_for_offsets(crashed.store, topic, ends, processes=[second], timeout=120)
    wait_for_offsets(clean.store, topic, ends, processes=[clean_process])
    assert second.terminate() == 0 and clean_process.terminate() == 0
    assert_same_outcome(crashed, clean)


def test_sigkill_during_a_rebalance(broker, redis_server, tmp_path, monitors):
    """The instance dies inside its revoke callback, after persisting, before releasing."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    feeder = Feeder(broker.address, topic, two_model_stream(12_000, 2), rate=3000)
    crashed = Run(broker, redis_server, tmp_path, topic, 2, "crashed")
    clean = Run(broker, redis_server, tmp_path, topic, 2, "clean")
    first = crashed.start(monitors, env={"STREAM_MONITOR_CRASH_AT": "during_rebalance:1"})
    clean_process = clean.start(monitors)
    feeder.start()
    wait_for_offsets(crashed.store, topic, {0: 2000}, processes=[first])
    joining = crashed.start(monitors)  # its join makes the group revoke the first instance's partitions
    wait_killed(first)
    assert feeder.is_alive(), "the crash happened mid-stream"
    ends = feeder.result()
    wait_for_offsets(crashed.store, topic, ends, processes=[joining], timeout=120)
    wait_for_offsets(clean.store, topic, ends, processes=[clean_process])
    assert joining.terminate() == 0 and clean_process.terminate() == 0
    assert_same_outcome(crashed, clean)
