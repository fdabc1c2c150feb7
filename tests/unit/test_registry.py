"""The registry of owned partitions, without I/O: records come and go only through assign, quarantine,
lift, revoke and lose, and a record takes everything of its partition with it."""

from __future__ import annotations

from stream_monitor.registry import CheckpointTimers, PartitionRegistry, Quarantine

A, B = ("t", 0), ("t", 1)


def registry() -> PartitionRegistry:
    return PartitionRegistry(CheckpointTimers(events=10, seconds=5.0))


def test_a_revoked_partition_leaves_nothing_behind_and_a_new_assignment_starts_afresh():
    partitions = registry()
    record = partitions.assign(A, "monitor A", persisted=True)
    partitions.assign(B, "monitor B", persisted=False)
    record.rollback, record.summary, record.watermarks = "rollback", {"next_offset": 7}, (0, 9)
    partitions.touch([A, B])
    partitions.timers.count({A: 10, B: 3}, now=0.0)
    assert (partitions.dirty(), partitions.due(now=0.0), partitions.timers.unsaved()) == ([A, B], [A], 13)
    assert [r.key for r in partitions.revoke([A])] == [A]
    assert partitions.owned() == {B: "monitor B"} and len(partitions) == 1
    assert (partitions.dirty(), partitions.timers.unsaved()) == ([B], 3), "A's flag and timer went with it"
    again = partitions.assign(A, "monitor A2", persisted=False)
    assert (again.rollback, again.summary, again.timer, again.dirty, again.persisted) == (None, None, None, False,
                                                                                            False)
    assert partitions.due(now=100.0) == [B], "A has nothing unsaved; B is due by its seconds"


def test_a_lost_partition_goes_like_a_revoked_one_and_unknown_keys_are_ignored():
    partitions = registry()
    partitions.assign(A, "monitor A", persisted=True)
    partitions.touch([A, B])  # B is not assigned: nothing to flag
    assert [r.key for r in partitions.lose([A, B])] == [A]
    assert (partitions.records(), partitions.dirty(), partitions.revoke([A])) == ([], [], [])
    partitions.timers.saved([A], now=1.0)  # a timer of a partition not assigned is not kept
    assert partitions.timers.unsaved() == 0 and list(partitions.timers._since) == []


def test_a_quarantined_partition_is_assigned_but_not_owned_until_lifted():
    partitions = registry()
    quarantine = Quarantine("ns:{g|t|0}:state", "garbage", since=0.0, next_check=1.0)
    partitions.quarantine(A, quarantine)
    partitions.paused.add(A)
    assert partitions.quarantined() == {A: quarantine} and partitions.owned() == {} and len(partitions) == 0
    partitions.touch([A])
    assert partitions.dirty() == [] and partitions.to_save([A]) == [], "a quarantined key is never written"
    record = partitions.lift(A, "monitor A", persisted=True)
    assert (record.quarantine, record.persisted, partitions.owned()) == (None, True, {A: "monitor A"})
    partitions.revoke([A])
    assert partitions.paused == {A}, "a pause may outlive the assignment: resumed when assigned again"


def test_to_save_keeps_the_order_given_and_only_changed_owned_partitions():
    partitions = registry()
    for key in (A, B):
        partitions.assign(key, f"monitor {key[1]}", persisted=False)
    partitions.touch([B])
    assert [r.key for r in partitions.to_save([A, B, ("t", 9)])] == [B]
    partitions.touch([A])
    assert [r.key for r in partitions.to_save([B, A])] == [B, A]
