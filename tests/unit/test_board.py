"""The status board counts the partitions owned now, not only those that have checkpointed."""

from __future__ import annotations

from stream_monitor.board import StatusBoard
from stream_monitor.web import render_page


def test_the_header_counts_every_owned_partition_before_its_first_checkpoint():
    board = StatusBoard("here")
    board.live_lag = lambda: {("ml.inference", 0): 3, ("ml.inference", 1): None}  # owned now
    board.update({("ml.inference", 0): ({"models": {}}, 3)})  # only partition 0 has a summary yet
    snapshot = board.snapshot()
    assert snapshot["owned"] == [["ml.inference", 0], ["ml.inference", 1]]
    assert [p["partition"] for p in snapshot["partitions"]] == [0]
    assert "<span>2 partitions · up" in render_page(snapshot)


def test_one_owned_partition_is_one_partition():
    board = StatusBoard("here")
    board.live_lag = lambda: {("ml.inference", 4): 0}
    assert "<span>1 partition · up" in render_page(board.snapshot())
