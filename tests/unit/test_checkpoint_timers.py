"""Per-partition checkpoint timers, the due logic: saving some partitions (on a revoke) does not delay the
others (the same through the service's loop steps: tests/integration/test_checkpoint_timers.py)."""

from __future__ import annotations

from stream_monitor.registry import CheckpointTimers, PartitionRegistry

# --- the due logic ---------------------------------------------------------------------------------


def test_a_partition_is_due_after_its_own_events_or_seconds():
    timers = CheckpointTimers(events=100, seconds=5.0)
    timers.count({"A": 99, "B": 50}, now=0.0)
    assert timers.due({"A", "B"}, now=4.9) == []
    timers.count({"A": 1}, now=4.9)
    assert timers.due({"A", "B"}, now=4.9) == ["A"]
    assert timers.due({"B"}, now=5.0) == ["B"]  # B's clock started at its first message
    assert timers.due({"A"}, now=5.0) == ["A"]


def test_saving_some_partitions_resets_only_their_timers():
    timers = CheckpointTimers(events=100, seconds=5.0)
    timers.count({"A": 60, "B": 60}, now=0.0)
    timers.saved(["A"], now=3.0)  # a revoke saved A
    timers.count({"A": 50, "B": 40}, now=4.0)
    assert timers.due({"A", "B"}, now=4.0) == ["B"], "B reached 100 of its own messages"
    timers.saved(["B"], now=4.0)
    assert timers.due({"A", "B"}, now=7.9) == []
    assert timers.due({"A", "B"}, now=8.0) == ["A"], "5 s after A's own save"
    assert timers.due({"A", "B"}, now=9.0) == ["A", "B"]


def test_only_changed_partitions_are_due_and_released_ones_are_forgotten():
    """A released partition's timer goes with its registry record: a new assignment starts a new clock."""
    partitions = PartitionRegistry(CheckpointTimers(events=10, seconds=5.0))
    for key in ("A", "B"):
        partitions.assign(key, object(), persisted=True)
    partitions.timers.count({"A": 20, "B": 20}, now=0.0)
    partitions.touch(["A"])
    assert partitions.due(now=0.0) == ["A"]  # B has nothing unsaved
    partitions.revoke(["B"])
    partitions.assign("B", object(), persisted=True)
    assert partitions.timers.due(["B"], now=100.0) == [], "B was released: a new assignment starts a new clock"
    assert partitions.timers.due(["B"], now=105.0) == ["B"]
