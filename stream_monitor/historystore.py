"""A model's history in Redis: a capped stream per model, ``ns:history:{model}`` (the model's hash tag).

Each entry's field ``p`` is one point of :mod:`stream_monitor.history` as JSON (with ``wall_ms``), appended
with ``XADD … MAXLEN ~ history_points``. :class:`HistoryWriter` appends from a background thread with its
own connection: the loop hands it points and never waits (not for a slow Redis, not for one that refuses
writes); what cannot be written is dropped and counted, and an outage is logged once when it starts and
once when it ends. :func:`read` is what ``stream-monitor report`` uses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Mapping

from . import history
from .state import REDIS_ERRORS

log = logging.getLogger(__name__)

QUEUE_POINTS = 50_000  # points waiting for the writer at most (the oldest are dropped past it)
BATCH_POINTS = 1_000  # points per pipeline
RETRY_SECONDS = 1.0  # after a failed write, the writer waits this long before the next one


def history_key(namespace: str, model_id: str) -> str:
    return f"{namespace}:history:{{{model_id}}}"


class HistoryWriter:
    """Appends points in the background; :meth:`add` never blocks. ``connect``: builds the writer's own
    client (called in its thread, so an unreachable cluster does not hold up the caller)."""

    def __init__(self, connect: Callable[[], Any], namespace: str, max_points: int, metrics: Any = None,
                 queue_points: int = QUEUE_POINTS):
        self.namespace = namespace
        self.max_points = max_points
        self.metrics = metrics
        self._connect = connect
        self._client: Any = None
        self._queue: deque = deque()
        self._queue_points = queue_points
        self._lock = threading.Condition()
        self._closing = False
        self._busy = False
        self.failing_since: float | None = None  # monotonic time of the outage's first failure
        self.written = 0
        self.dropped = 0
        self._thread: threading.Thread | None = None
        if max_points > 0:
            self._thread = threading.Thread(target=self._run, name="history", daemon=True)
            self._thread.start()

    def add(self, points: Iterable[Mapping[str, Any]], wall_ms: int | None = None) -> None:
        """Queue ``points`` (stamped with ``wall_ms``, now by default) for the writer; returns at once."""
        if self._thread is None:
            return
        wall_ms = int(time.time() * 1000) if wall_ms is None else wall_ms
        stamped = [{**point, "wall_ms": wall_ms} for point in points]
        if not stamped:
            return
        with self._lock:
            self._queue.extend(stamped)
            over = len(self._queue) - self._queue_points
            for _ in range(max(over, 0)):
                self._queue.popleft()
            self._lock.notify()
        if over > 0:
            self._drop(over)

    def _drop(self, count: int) -> None:
        self.dropped += count
        if self.metrics is not None:
            self.metrics.history_dropped.inc(count)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(BATCH_POINTS, len(self._queue)))]
                self._busy = True
            ok = self._write(batch)
            with self._lock:
                self._busy = False
                self._lock.notify_all()
                closing = self._closing
            if not ok:
                if closing:  # the way out: what is left is dropped
                    with self._lock:
                        left = len(self._queue)
                        self._queue.clear()
                    self._drop(left)
                    return
                with self._lock:
                    self._lock.wait(RETRY_SECONDS)

    def _write(self, batch: list[dict[str, Any]]) -> bool:
        try:
            if self._client is None:
                self._client = self._connect()
            pipe = self._client.pipeline(transaction=False)
            for point in batch:
                pipe.xadd(history_key(self.namespace, point["model"]), {"p": history.encode(point)},
                          maxlen=self.max_points, approximate=True)
            pipe.execute()
        except (*REDIS_ERRORS, OSError, ValueError) as exc:
            self._drop(len(batch))
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                log.warning("history: Redis did not take %d point(s) (%s: %s); history points are dropped (counted "
                            "in stream_monitor_history_dropped_total) until it does; monitoring goes on",
                            len(batch), type(exc).__name__, exc)
            return False
        if self.failing_since is not None:
            log.warning("history: Redis takes history points again after %.0f s (%d dropped so far)",
                        time.monotonic() - self.failing_since, self.dropped)
            self.failing_since = None
        self.written += len(batch)
        if self.metrics is not None:
            self.metrics.history_points.inc(len(batch))
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` for the queue to be written (tests, shutdown); whether it was."""
        until = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._busy:
                left = until - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return not self._queue and not self._busy
                self._lock.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued (for at most ``timeout``; not at all while Redis refuses), then stop the thread."""
        if self._thread is None:
            return
        if self.failing_since is None:
            self.flush(timeout)
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(timeout)
        if self._client is not None and not self._thread.is_alive():  # else a daemon stuck in a write: left to exit
            try:
                self._client.close()
            except REDIS_ERRORS:
                pass


def read(client: Any, namespace: str, model_id: str, since_ms: int | None = None) -> list[dict[str, Any]]:
    """The model's points since ``since_ms`` (wall time; ``None``: all kept), oldest first, each once."""
    low = "-" if since_ms is None else f"{max(int(since_ms), 0)}-0"
    points = []
    for entry_id, fields in client.xrange(history_key(namespace, model_id), min=low, max="+"):
        raw = fields.get(b"p", fields.get("p"))
        point = None if raw is None else history.decode(raw)
        if point is None:
            continue
        if point.get("wall_ms") is None:
            ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            point["wall_ms"] = int(ident.split("-")[0])
        points.append(point)
    return history.dedupe(points)
