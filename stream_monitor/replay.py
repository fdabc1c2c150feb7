"""``replay``: the service's processing over a file of events, without broker or Redis.

The file is read like ``reference build`` reads it (:mod:`sources`: JSON lines, CSV, Parquet,
gzip-compressed JSON lines or CSV). Each row is one message value; ``partition`` is -1 and
``offset`` the line number (from 1; for Parquet the row number). The same
:class:`PartitionMonitor` as ``run`` decides.

Rejected rows are summarised, never reported one line each: the first few of each reason as
examples, then one line of counts per reason. A replay in which no row was an event of a
configured model has monitored nothing; :func:`replay_file` says so and the command exits 1.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator, Mapping

import orjson

from .batchcodec import decode_batch
from .config import Config
from .events import Alert, DeadLetter, RawMessage
from .join import MemoryJoin, join_op, kept_columns, performance_settings
from .merge import PartitionPartials, merge_step, model_reference, reference_step
from .partition import PartitionMonitor
from .reference import Limits, ReferenceProfile
from .sources import Row, SourceError, read_events

EXAMPLES_PER_REASON = 3
MAX_REASONS_WITH_EXAMPLES = 10
MAX_ERROR_CHARS = 200  # an error text may repeat a huge field of the input


@dataclass
class Rejections:
    """Rejected rows by reason: the first :data:`EXAMPLES_PER_REASON` of each reason are written to
    ``out`` as they come (``line N: reason: error``), :meth:`report` adds the counts."""

    out: IO[str] | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, line: int, reason: str, error: str) -> None:
        seen = self.counts.get(reason, 0)
        self.counts[reason] = seen + 1
        if self.out is not None and seen < EXAMPLES_PER_REASON and (seen or len(self.counts) <= MAX_REASONS_WITH_EXAMPLES):
            if len(error) > MAX_ERROR_CHARS:
                error = f"{error[:MAX_ERROR_CHARS]}… ({len(error):,} characters)"
            print(f"line {line}: {reason}: {error}", file=self.out)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def text(self) -> str:
        """``3 rows rejected: not_json 2, unknown_model 1`` (most frequent first), or "" for none."""
        if not self.counts:
            return ""
        by_count = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return f"{self.total:,} rows rejected: " + ", ".join(f"{reason} {count:,}" for reason, count in by_count)


@dataclass
class ReplayResult:
    alerts: int = 0
    events: dict[str, int] = field(default_factory=dict)  # decoded events (inference and label) per model
    rejections: Rejections = field(default_factory=Rejections)

    @property
    def monitored(self) -> bool:
        return bool(self.events)


def replay_rows(config: Config, rows: Iterable[Row], references: Mapping[str, ReferenceProfile],
                result: ReplayResult | None = None) -> Iterator[Alert]:
    """The alerts of (line, event or :class:`SourceError`) rows, in order; counts go to ``result``."""
    result = result if result is not None else ReplayResult()
    monitor = PartitionMonitor(config, -1, references)
    merged = _Merges(config, monitor, references)
    settings = performance_settings(config)
    attributes = kept_columns(config)
    joiner = MemoryJoin(settings)
    batch: list = []
    for line, item in rows:
        if isinstance(item, SourceError):
            monitor.skip(line)
            result.rejections.add(line, item.reason, item.error)
            continue
        result.events[item.model_id] = result.events.get(item.model_id, 0) + 1
        op = join_op(item, f"replay|-1|{line}", settings, attributes)
        batch.append((line, item, joiner.run([op])[0] if op else None))
        if len(batch) >= config.service.batch_size:  # batches like `run`'s (the alerts do not depend on it)
            yield from merged.process(batch)
            yield from merged.step()
            batch = []
    if batch:
        yield from merged.process(batch)
    monitor.go_idle()  # the end of the file: every bucket closes
    yield from merged.step()


class _Merges:
    """``decisions = "model"`` models in a replay: the one stream's closed partials merged as `run`'s merger
    merges them (in memory)."""

    def __init__(self, config: Config, monitor: PartitionMonitor, references: Mapping[str, ReferenceProfile]):
        self.config, self.monitor, self.references = config, monitor, references
        self.states: dict[str, dict | None] = {m: None for m, model in config.models.items() if model.by_model}
        self.held: dict[str, dict] = {m: {} for m in self.states}  # closed partials not merged yet (the partials key)

    def process(self, batch: list) -> Iterator[Alert]:
        """A batch through the monitor; a warm-up share that ends in it makes the model's reference (the
        merge of the one stream) before the rest of the batch goes on."""
        yield from self.monitor.process_batch(batch)
        while self.monitor.waiting:
            yield from self.step()
            if self.monitor.waiting:
                return  # not reachable: one stream's share is the whole reference
            batch = [item for item in batch if item[0] >= self.monitor.next_offset]
            yield from self.monitor.process_batch(batch)

    def step(self) -> Iterator[Alert]:
        if not self.states:
            return
        marks = self.monitor.merge_marks()
        self.monitor.partials_saved(marks)
        for model_id, mark in marks.items():
            model, reference = self.config.models[model_id], self.references.get(model_id)
            held = self.held[model_id]
            held.update(mark["partials"])
            partials = PartitionPartials("replay", -1, mark["watermark"], mark["idle"], dict(held))
            if model.reference.source != "stored":
                reference = self.monitor.model_references.get(model_id) or model_reference(self.states[model_id])
                if reference is None:
                    built = reference_step(model, self.states[model_id], [partials],
                                           int(model.merge_bucket_seconds * 1000), self.monitor.models[model_id].limits
                                           if model_id in self.monitor.models else Limits())
                    if built is not None:
                        self.states[model_id] = built.state
                        for bucket in built.consumed.get(("replay", -1), []):
                            held.pop(bucket, None)
                        self.monitor.model_references[model_id] = built.reference
                        self.monitor.adopt()
                    continue
            if reference is None:
                continue
            result = merge_step(model, reference, self.states[model_id], [partials],
                                int(model.merge_bucket_seconds * 1000))
            self.states[model_id] = result.state
            for bucket in result.consumed.get(("replay", -1), []):
                held.pop(bucket, None)
            yield from result.alerts


def _decoded_lines(config: Config, lines: Iterable[bytes], batch: int = 1_000) -> Iterator[Row]:
    """Each non-blank line decoded, in order, as ``run`` decodes a poll batch (:func:`decode_batch`)."""
    known = frozenset(config.models)
    service = config.service
    pending: list[RawMessage] = []

    def flush() -> Iterator[Row]:
        decoded = decode_batch(pending, known, service.max_message_bytes, service.max_features_per_event,
                               service.max_event_id_bytes)
        for message, result in zip(pending, decoded):
            if isinstance(result, DeadLetter):
                yield message.offset, SourceError(message.offset, result.reason, result.error)
            else:
                yield message.offset, result
        pending.clear()

    for line_number, line in enumerate(lines, start=1):
        value = line.rstrip(b"\r\n")
        if not value.strip():
            continue
        pending.append(RawMessage("replay", -1, line_number, value))
        if len(pending) >= batch:
            yield from flush()
    yield from flush()


def replay_alerts(config: Config, lines: Iterable[bytes], references: Mapping[str, ReferenceProfile],
                  errors: IO[str] | None = None) -> Iterator[Alert]:
    """The alerts of JSON lines (one message value each); examples of rejected lines go to ``errors``."""
    yield from replay_rows(config, _decoded_lines(config, lines), references, ReplayResult(rejections=Rejections(errors)))


def replay_file(config: Config, path: str | os.PathLike[str], references: Mapping[str, ReferenceProfile],
                out: IO[str] | None = None, errors: IO[str] | None = None, model_id: str | None = None) -> ReplayResult:
    """Print each alert as one JSON line to ``out``; examples and counts of rejected rows to ``errors``.

    ``model_id``: the model of the rows of a CSV or Parquet file without a ``model_id`` column.
    Raises :class:`~stream_monitor.errors.StreamMonitorError` for a file that cannot be read.
    """
    out = out if out is not None else sys.stdout
    errors = errors if errors is not None else sys.stderr
    result = ReplayResult(rejections=Rejections(errors))
    rows = read_events(path, frozenset(config.models), model_id=model_id,
                       max_bytes=config.service.max_message_bytes,
                       max_features=config.service.max_features_per_event)
    for alert in replay_rows(config, rows, references, result):
        out.write(orjson.dumps(alert.to_dict(int(time.time() * 1000))).decode() + "\n")
        result.alerts += 1
    out.flush()
    if result.rejections.counts:
        print(result.rejections.text(), file=errors)
    return result
