"""The partitions this instance is assigned: one record each, and the only place records come and go.

An :class:`OwnedPartition` holds everything the service knows of one assigned
partition: its monitor (``None`` while quarantined), the way back to its state
before a batch, whether it changed since its last save, whether this process
stored or loaded its state, the summary of its last save, its checkpoint timer,
its quarantine, the consumer's cached watermarks and when its log end is next
checked. :meth:`PartitionRegistry.assign`, :meth:`~PartitionRegistry.quarantine`,
:meth:`~PartitionRegistry.revoke` and :meth:`~PartitionRegistry.lose` are the
only operations that add or drop records, so nothing is left behind when a
partition moves away. The status page, the lag and the per-partition gauges
read the records at scrape time (from the HTTP thread too: reads copy a list of
records, one step under the GIL, and never wait for the loop).

>>> registry = PartitionRegistry(CheckpointTimers(events=100, seconds=5.0))
>>> a = registry.assign(("t", 0), "monitor A", persisted=True)
>>> registry.touch([("t", 0)]); registry.timers.count({("t", 0): 100}, now=0.0)
>>> registry.due(now=0.0)
[('t', 0)]
>>> [r.key for r in registry.revoke([("t", 0)])], registry.owned(), registry.due(now=0.0)
([('t', 0)], {}, [])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, MutableMapping

PartitionKey = tuple[str, int]


@dataclass
class Quarantine:
    """An assigned partition whose stored state cannot be loaded: not processed, its key never written."""

    key: str  # the Redis key
    problem: str
    since: float  # epoch seconds
    next_check: float  # monotonic


@dataclass(eq=False)
class OwnedPartition:
    key: PartitionKey
    monitor: Any = None  # the PartitionMonitor; None while quarantined
    quarantine: Quarantine | None = None
    rollback: Any = None  # the Rollback of monitor, made at its first batch
    dirty: bool = False  # changed since its last save
    persisted: bool = False  # this process stored or loaded its state (a key found missing then: Redis lost it)
    summary: dict | None = None  # of its last save, or of the state it was assigned with
    timer: list | None = None  # [input messages since its last save, monotonic time of that save]
    watermarks: tuple[int | None, int | None] = (None, None)  # (low, high) as the consumer's fetcher last heard
    log_check_after: float = 0.0  # monotonic: its log end is not compared with its offset before this
    last_message: float = 0.0  # monotonic: its last input message (0: none yet); an idle partition's clock


class CheckpointTimers:
    """Per partition: input messages and seconds since its last save. A partition is due when it
    changed and either reached its interval; a checkpoint resets the timers of the partitions it saved,
    and only theirs (a revoke saving partition A leaves B's clock running, so B is still saved within
    one interval of its own last save). ``timers``: where each partition's timer is kept (the
    :class:`PartitionRegistry` keeps it in the partition's record, so it goes when the record goes).

    >>> timers = CheckpointTimers(events=100, seconds=5.0)
    >>> timers.count({"A": 60, "B": 60}, now=0.0)
    >>> timers.saved(["A"], now=1.0)          # A revoked and saved
    >>> timers.count({"B": 40}, now=2.0)
    >>> timers.due({"A", "B"}, now=2.0)
    ['B']
    >>> timers.count({"A": 1}, now=5.9); timers.due({"A"}, now=5.9), timers.due({"A"}, now=6.0)
    ([], ['A'])
    """

    def __init__(self, events: int, seconds: float, timers: MutableMapping[Any, list] | None = None):
        self.events = events
        self.seconds = seconds
        self._since: MutableMapping[Any, list] = {} if timers is None else timers

    def count(self, consumed: dict[Any, int], now: float) -> None:
        """``consumed``: input messages per partition handled just now (a partition's clock starts at
        its first message if it was never saved)."""
        for key, n in consumed.items():
            since = self._since.get(key)
            if since is None:
                self._since[key] = [n, now]
            else:
                since[0] += n

    def due(self, dirty, now: float) -> list:
        out = []
        for key in dirty:
            since = self._since.get(key)
            if since is None:  # changed without a message (a new reference): its clock starts now
                self._since[key] = [0, now]
            elif since[0] >= self.events or now - since[1] >= self.seconds:
                out.append(key)
        return sorted(out)

    def saved(self, keys, now: float) -> None:
        for key in keys:
            self._since[key] = [0, now]

    def unsaved(self) -> int:
        """Input messages handled since their partition's last save, over all partitions."""
        return sum(since[0] for since in self._since.values())


class _RecordTimers(MutableMapping):
    """The timers of the registry's records, as the mapping :class:`CheckpointTimers` keeps them in; a
    partition not assigned has none (setting one is ignored: it would be forgotten at once)."""

    def __init__(self, records: dict[PartitionKey, OwnedPartition]):
        self._records = records

    def __getitem__(self, key: PartitionKey) -> list:
        record = self._records.get(key)
        if record is None or record.timer is None:
            raise KeyError(key)
        return record.timer

    def __setitem__(self, key: PartitionKey, timer: list) -> None:
        record = self._records.get(key)
        if record is not None:
            record.timer = timer

    def __delitem__(self, key: PartitionKey) -> None:
        self[key]  # noqa: B018 - KeyError when absent
        self._records[key].timer = None

    def __iter__(self) -> Iterator[PartitionKey]:
        return iter([key for key, record in list(self._records.items()) if record.timer is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class PartitionRegistry:
    def __init__(self, timers: CheckpointTimers):
        self._records: dict[PartitionKey, OwnedPartition] = {}
        self.timers = CheckpointTimers(timers.events, timers.seconds, _RecordTimers(self._records))
        # Partitions paused by a quarantine and not resumed since. Not a record's: the pause may outlive
        # the assignment (the client may keep it across a rebalance), so it is resumed when they are
        # assigned again and loadable.
        self.paused: set[PartitionKey] = set()

    # --- the only operations that add or drop records -------------------------------------------

    def assign(self, key: PartitionKey, monitor: Any, persisted: bool) -> OwnedPartition:
        """``key`` is owned with ``monitor`` (a fresh record: nothing of an earlier assignment remains)."""
        record = self._records[key] = OwnedPartition(key, monitor, persisted=persisted)
        return record

    def quarantine(self, key: PartitionKey, quarantine: Quarantine) -> OwnedPartition:
        """``key`` is assigned but its stored state cannot be loaded: a record without a monitor."""
        record = self._records[key] = OwnedPartition(key, quarantine=quarantine)
        return record

    def lift(self, key: PartitionKey, monitor: Any, persisted: bool) -> OwnedPartition:
        """A quarantined partition whose state loads now (or was deleted): owned from here on."""
        record = self._records[key]
        record.monitor, record.quarantine, record.persisted = monitor, None, persisted
        return record

    def revoke(self, keys: Iterable[PartitionKey]) -> list[OwnedPartition]:
        """Released (after the caller saved them): their records go."""
        return [record for record in (self._records.pop(key, None) for key in keys) if record is not None]

    def lose(self, keys: Iterable[PartitionKey]) -> list[OwnedPartition]:
        """Lost without a clean revoke (another member may own them now): their records go, unsaved."""
        return self.revoke(keys)

    # --- reads ------------------------------------------------------------------------------------

    def get(self, key: PartitionKey) -> OwnedPartition | None:
        return self._records.get(key)

    def records(self) -> list[OwnedPartition]:
        """Every assigned partition's record (a copy of the list: safe from another thread)."""
        return list(self._records.values())

    def owned(self) -> dict[PartitionKey, Any]:
        """The monitor of every owned partition (assigned and not quarantined)."""
        return {r.key: r.monitor for r in self.records() if r.monitor is not None}

    def quarantined(self) -> dict[PartitionKey, Quarantine]:
        return {r.key: r.quarantine for r in self.records() if r.quarantine is not None}

    def monitor(self, key: PartitionKey) -> Any:
        record = self._records.get(key)
        return None if record is None else record.monitor

    def owns(self, key: PartitionKey) -> bool:
        return self.monitor(key) is not None

    def __len__(self) -> int:
        """How many partitions are owned (quarantined ones not counted)."""
        return sum(1 for r in self.records() if r.monitor is not None)

    # --- checkpoint bookkeeping --------------------------------------------------------------------

    def touch(self, keys: Iterable[PartitionKey]) -> None:
        """These owned partitions changed (a batch, a new reference): they are to be saved."""
        for key in keys:
            record = self._records.get(key)
            if record is not None and record.monitor is not None:
                record.dirty = True

    def dirty(self) -> list[PartitionKey]:
        return [r.key for r in self.records() if r.dirty and r.monitor is not None]

    def due(self, now: float) -> list[PartitionKey]:
        """The partitions to save now: changed, and their own interval since their last save is up."""
        return self.timers.due(self.dirty(), now)

    def to_save(self, keys: Iterable[PartitionKey]) -> list[OwnedPartition]:
        """The records of ``keys`` that are owned and changed, in the order given."""
        return [r for r in (self._records.get(key) for key in keys)
                if r is not None and r.monitor is not None and r.dirty]
