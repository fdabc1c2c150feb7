"""SIGKILL at five distinct points of the processing (fault injection, stream_monitor/faults.py), then a
restart: the final Redis state and the alert ids equal those of an uninterrupted run."""

from __future__ import annotations

import time

import pytest

from ..support import SideBySide

pytestmark = pytest.mark.slow

# n-th time the point is reached: late enough to be mid-stream, early enough to be before its end
CRASHES = {"between_batches": 40, "mid_batch": 40, "after_alerts_before_save": 6, "mid_checkpoint": 6}


def wait_killed(process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while process.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.process.returncode == -9, f"expected a SIGKILL, got {process.process.returncode}"


# Every point against one redis-server; the two around a save against the 3-master Redis Cluster too
TARGETS = [(point, "standalone") for point in sorted(CRASHES)] + [
    ("after_alerts_before_save", "cluster"), ("mid_checkpoint", "cluster")]


@pytest.mark.parametrize("point, redis_target", TARGETS, indirect=["redis_target"])
def test_sigkill_at_a_point_then_restart(point, broker, redis_target, tmp_path, monitors):
    pair = SideBySide(broker, redis_target, tmp_path, monitors, events=12_000, partitions=2, rate=4000,
                      service={"batch_size": 100})
    first = pair.start(env={"STREAM_MONITOR_CRASH_AT": f"{point}:{CRASHES[point]}"})
    pair.feeder.start()
    wait_killed(first)
    assert pair.stopped_short(), "the crash happened mid-stream"
    pair.finish([pair.start()])


def test_sigkill_during_a_rebalance(broker, redis_server, tmp_path, monitors):
    """The instance dies inside its revoke callback, after persisting, before releasing."""
    # the second half of the stream waits for the crash: a fast first instance could otherwise have
    # consumed everything before the group's rebalance (a join takes seconds on the test broker)
    pair = SideBySide(broker, redis_server, tmp_path, monitors, events=12_000, partitions=2, rate=1500,
                      hold_at=6_000)
    first = pair.start(env={"STREAM_MONITOR_CRASH_AT": "during_rebalance:1"})
    pair.feeder.start()
    pair.progress(2000, [first])
    joining = pair.start()  # its join makes the group revoke the first instance's partitions
    wait_killed(first)
    assert pair.feeder.is_alive(), "the stream's second half was still held back at the crash"
    pair.feeder.release()
    assert pair.stopped_short(), "the crash happened mid-stream"
    pair.finish([joining])
