"""Never half a batch: a partition's batch either changes its state completely or not at all.

A batch is processed column-wise (:meth:`PartitionMonitor.process_batch`), so an exception in
its middle — a bug, since events are validated before any detector state changes — leaves some
columns updated and others not. :class:`Rollback` then puts the partition back to its state
before the batch, processes the batch again in parts of :data:`PART_EVENTS` events and a failing
part one event at a time, each with its own rollback, and returns the events that fail on their
own (the service dead-letters them, reason ``processing_error``); every other event is monitored
as usual. The state afterwards
equals that of a run that never saw the failing events (tests/integration/test_rollback.py).

Cost. Copying a partition's state before every batch would be simple but is not cheap. Measured on
this machine for one partition with a 20-feature model (all numeric, warm-up over): ``snapshot()``
takes ~210–280 µs and a pickled one (a copy that shares nothing with the live state) ~550 µs,
against ~2.7 ms to process a batch of 500 events and ~4.6 ms for 1,000 — a copy per batch would
add ~12 %. So the copy is kept off the hot path: a base copy is taken at most once per
:data:`LOG_EVENTS` events or :data:`LOG_BYTES` of input, and what changed the partition since (its
batches and dead-letter skips, by reference) is logged. Rolling back restores the base and redoes
the log (the same calls on the same events: deterministic), which costs a restore (~13 ms) plus
re-processing at most :data:`LOG_EVENTS` events, only on the failure path. Measured on the hot
path: 4.57–4.65 µs per event without, 4.78–4.89 µs with (≈5 %, batches of 1,000). A batch of
1,000 events with one failing event takes ~130 ms instead of ~5 ms (one event at a time with a
copy before each took ~1.3 s).

Memory. The log keeps the decoded events since the base alive: at most :data:`LOG_EVENTS` per
partition, and :func:`bound` keeps all partitions' logs under :data:`TOTAL_LOG_EVENTS` events and
:data:`TOTAL_LOG_BYTES` of input by dropping the largest logs (those partitions take a new base
copy at their next change: more copies when an instance owns very many busy partitions, never
more memory).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Iterable, Sequence

from .events import Alert, InferenceEvent, LabelEvent
from .join import JoinResult
from .partition import PartitionMonitor

log = logging.getLogger(__name__)

Item = tuple[int, "InferenceEvent | LabelEvent", "JoinResult | None"]  # (offset, event, join), as process_batch takes

LOG_EVENTS = 5_000  # events redone at most on a rollback; a new base copy after this many
LOG_BYTES = 16 << 20  # input bytes kept alive by the log at most (huge events renew the base sooner)
# Over all partitions of an instance (see :func:`bound`): decoded events cost ~2 KB each at 20 features,
# so the logs keep at most ~100 MB alive however many partitions an instance owns.
TOTAL_LOG_EVENTS = 50_000
TOTAL_LOG_BYTES = 64 << 20
PART_EVENTS = 64  # a failed batch is redone in parts of this many events, a failing part one event at a time
FAILURE_LOG_EVENTS = 256  # while redoing a failed batch: a new base copy after this many (short redos)
_SKIP = None
_PASS: Any = object()  # a message that gave no event (half of a request/response pair)


class Rollback:
    """Drives one :class:`PartitionMonitor`; every change of its state goes through here."""

    def __init__(self, monitor: PartitionMonitor, log_events: int = LOG_EVENTS, log_bytes: int = LOG_BYTES):
        self.monitor = monitor
        self.log_events = log_events
        self.log_bytes = log_bytes
        self.base: bytes | None = None  # the pickled snapshot the log starts from
        self.log: list[tuple[Sequence[Item] | None, int]] = []  # (items, 0) or (_SKIP, offset)
        self._events = 0
        self._bytes = 0
        self.bases = 0  # base copies taken (for tests and measurements)
        self.requests: list = []  # retraining requests of the batches applied, until the service takes them

    @property
    def held(self) -> tuple[int, int]:
        """(events, input bytes) the log keeps alive."""
        return self._events, self._bytes

    def forget(self) -> None:
        """The state changed outside (a new reference): the next change starts from a new base."""
        self.base = None
        self.log = []
        self._events = self._bytes = 0

    def _before(self, events: int, size: int, limit: int) -> None:
        if self.base is None or self._events + events > limit or self._bytes + size > self.log_bytes:
            self.base = _copy(self.monitor)
            self.bases += 1
            self.log = []
            self._events = self._bytes = 0
        self._events += events
        self._bytes += size

    def skip(self, offset: int, reason: str | None = None, error: str = "") -> None:
        """The message at ``offset`` was dead-lettered (:meth:`PartitionMonitor.skip`)."""
        self._before(1, 0, self.log_events)
        self.monitor.skip(offset, reason, error)
        self.log.append((_SKIP, (offset, reason, error)))

    def pass_over(self, offset: int) -> None:
        """The message at ``offset`` gave no event (:meth:`PartitionMonitor.pass_over`)."""
        self._before(1, 0, self.log_events)
        self.monitor.pass_over(offset)
        self.log.append((_PASS, offset))

    def apply(self, items: Sequence[Item], size: int = 0) -> tuple[list[Alert], list[tuple[Item, Exception]]]:
        """Process ``items`` (``size``: their input bytes, to bound what the log keeps alive); returns the
        alerts and the items that failed on their own, with their exceptions. The state reflects every
        item but the failed ones, which the caller dead-letters (:meth:`skip`)."""
        return self._apply(items, size, self.log_events, top=True)

    def _apply(self, items: Sequence[Item], size: int, limit: int,
               top: bool = False) -> tuple[list[Alert], list[tuple[Item, Exception]]]:
        self._before(len(items), size, limit)
        try:
            alerts = self.monitor.process_batch(items)
        except Exception as exc:  # noqa: BLE001 - a bug mid-batch: undone here, the loop goes on
            self._restore()
            if len(items) == 1:
                return [], [(items[0], exc)]
            if top:
                log.warning("partition %d: a batch of %d events failed midway (%s: %s); rolled back, processing "
                            "it again in parts", self.monitor.partition, len(items), type(exc).__name__, exc)
            return self._in_parts(items, size)
        self.log.append((items, 0))
        self.requests.extend(self.monitor.take_requests())  # a later rollback cannot take these back
        return alerts, []

    def take_requests(self) -> list:
        """The retraining requests of the batches applied since the last call, in the order made."""
        out, self.requests = self.requests, []
        return out

    def _in_parts(self, items: Sequence[Item], size: int) -> tuple[list[Alert], list[tuple[Item, Exception]]]:
        """A failed (and rolled back) batch again, in parts of :data:`PART_EVENTS`, then a failing part one
        event at a time: each part is logged like a batch, a failing one rolled back by :meth:`_apply`
        (base + log: no copy per event). A tighter log bound keeps each of those redos short."""
        step = PART_EVENTS if len(items) > PART_EVENTS else 1
        alerts: list[Alert] = []
        failed: list[tuple[Item, Exception]] = []
        for start in range(0, len(items), step):
            part = items[start:start + step]
            got, bad = self._apply(part, size * len(part) // len(items), FAILURE_LOG_EVENTS)
            alerts.extend(got)
            failed.extend(bad)
        return alerts, failed

    def _restore(self) -> None:
        """Back to the state before the batch in hand: the base, then the log redone (alerts discarded:
        they were published when these batches first ran). Consecutive batches are redone as one
        (any cut of a stream gives the same state), so a redo costs what one batch of them costs."""
        assert self.base is not None
        self.monitor.restore(pickle.loads(self.base))
        pending: list[Item] = []
        for items, offset in self.log:
            if items is _SKIP:
                if pending:
                    self.monitor.process_batch(pending)
                    pending = []
                self.monitor.skip(*offset)
            elif items is _PASS:
                if pending:
                    self.monitor.process_batch(pending)
                    pending = []
                self.monitor.pass_over(offset)
            else:
                pending.extend(items)
        if pending:
            self.monitor.process_batch(pending)  # ran before on this very state: same calls, same result
        self.monitor.take_requests()  # made when these batches first ran: already in :attr:`requests`


def _copy(monitor: PartitionMonitor) -> bytes:
    """The partition's state, pickled: a snapshot may share objects with the live state (the
    detectors' last readings), which later changes must not reach."""
    return pickle.dumps(monitor.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)


def bound(rollbacks: Iterable[Rollback], events: int = TOTAL_LOG_EVENTS, size: int = TOTAL_LOG_BYTES) -> int:
    """Keep what all logs hold under ``events`` and ``size``: the largest logs are dropped (those
    partitions take a new base copy at their next change). Returns how many were dropped."""
    held = sorted(((r.held, r) for r in rollbacks), key=lambda t: t[0], reverse=True)
    total_events = sum(e for (e, _), _ in held)
    total_bytes = sum(b for (_, b), _ in held)
    dropped = 0
    for (e, b), rollback in held:
        if total_events <= events and total_bytes <= size:
            break
        rollback.forget()
        total_events -= e
        total_bytes -= b
        dropped += 1
    return dropped
