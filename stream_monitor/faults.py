"""Fault injection for the crash tests: ``STREAM_MONITOR_CRASH_AT=<point>:<n>`` SIGKILLs the
process the n-th time it reaches ``point``. Unset (always, in production) it costs one comparison.

Points, in the order a message meets them: ``between_batches``, ``mid_batch``,
``after_request`` (a retraining request handed to the producer, maybe not yet delivered),
``after_alerts_before_save`` (deliveries confirmed, state not yet saved), ``mid_checkpoint``
(some partitions saved, not all, offsets not committed), ``during_rebalance`` (revoked
partitions persisted, not yet released).

``STREAM_MONITOR_FAIL_PROCESSING=<column>@<offset>`` makes the detectors of that column (a feature
name, ``score``, ...) raise whenever a batch holds the event at that offset: a bug in the middle of a
batch, after the columns before it were updated (for the rollback tests).
"""

from __future__ import annotations

import os
import signal

POINTS = ("between_batches", "mid_batch", "after_request", "after_alerts_before_save", "mid_checkpoint",
          "during_rebalance")

_point, _, _count = os.environ.get("STREAM_MONITOR_CRASH_AT", "").partition(":")
_remaining = int(_count or 1) if _point else 0


def reached(point: str) -> None:
    global _remaining
    if _remaining and point == _point:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)


_fail_processing = os.environ.get("STREAM_MONITOR_FAIL_PROCESSING", "")


def install_processing_fault() -> None:
    """Wrap ``ColumnMonitor.update_batch`` as ``STREAM_MONITOR_FAIL_PROCESSING`` asks (once; unset: nothing)."""
    global _fail_processing
    if not _fail_processing:
        return
    name, _, at = _fail_processing.rpartition("@")
    offset = int(at)
    _fail_processing = ""
    from .partition import ColumnMonitor  # noqa: PLC0415 - only under test

    original = ColumnMonitor.update_batch

    def update_batch(self, values, offsets, *args, **kwargs):
        if self.name == name and offset in list(offsets):
            raise RuntimeError(f"injected processing fault: {name} at offset {offset}")
        return original(self, values, offsets, *args, **kwargs)

    ColumnMonitor.update_batch = update_batch
