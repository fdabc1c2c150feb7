"""Fault injection for the crash tests: ``STREAM_MONITOR_CRASH_AT=<point>:<n>`` SIGKILLs the
process the n-th time it reaches ``point``. Unset (always, in production) it costs one comparison.

Points, in the order a message meets them: ``between_batches``, ``mid_batch``,
``after_alerts_before_save`` (deliveries confirmed, state not yet saved), ``mid_checkpoint``
(some partitions saved, not all, offsets not committed), ``during_rebalance`` (revoked
partitions persisted, not yet released).
"""

from __future__ import annotations

import os
import signal

POINTS = ("between_batches", "mid_batch", "after_alerts_before_save", "mid_checkpoint", "during_rebalance")

_point, _, _count = os.environ.get("STREAM_MONITOR_CRASH_AT", "").partition(":")
_remaining = int(_count or 1) if _point else 0


def reached(point: str) -> None:
    global _remaining
    if _remaining and point == _point:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
