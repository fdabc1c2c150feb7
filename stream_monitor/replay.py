"""``replay``: the service's processing over a JSONL file, without broker or Redis.

Each line is one message value; ``partition`` is -1 and ``offset`` the line
number (from 1). The same :class:`PartitionMonitor` as ``run`` decides.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Iterator, Mapping

import orjson

from .codec import decode
from .config import Config
from .events import Alert, DeadLetter, RawMessage
from .join import MemoryJoin, join_op, performance_settings
from .partition import PartitionMonitor
from .reference import ReferenceProfile


def replay_alerts(config: Config, lines: Iterator[bytes], references: Mapping[str, ReferenceProfile],
                  errors: IO[str] | None = None) -> Iterator[Alert]:
    monitor = PartitionMonitor(config, -1, references)
    known = frozenset(config.models)
    settings = performance_settings(config)
    joiner = MemoryJoin(settings)
    batch: list = []
    for line_number, line in enumerate(lines, start=1):
        value = line.rstrip(b"\r\n")
        if not value.strip():
            continue
        raw = RawMessage("replay", -1, line_number, value)
        decoded = decode(raw, known, config.service.max_message_bytes, config.service.max_features_per_event)
        if isinstance(decoded, DeadLetter):
            monitor.skip(line_number)
            if errors is not None:
                print(f"line {line_number}: {decoded.reason}: {decoded.error}", file=errors)
            continue
        op = join_op(decoded, f"replay|-1|{line_number}", settings)
        batch.append((line_number, decoded, joiner.run([op])[0] if op else None))
        if len(batch) >= config.service.batch_size:  # batches like `run`'s (the alerts do not depend on it)
            yield from monitor.process_batch(batch)
            batch = []
    if batch:
        yield from monitor.process_batch(batch)


def replay_file(config: Config, path: Path, references: Mapping[str, ReferenceProfile],
                out: IO[str] = sys.stdout, errors: IO[str] = sys.stderr) -> int:
    """Print each alert as one JSON line; returns how many."""
    count = 0
    with open(path, "rb") as handle:
        for alert in replay_alerts(config, iter(handle), references, errors):
            out.write(orjson.dumps(alert.to_dict(int(time.time() * 1000))).decode() + "\n")
            count += 1
    out.flush()
    return count
