"""A model's history as data: one point per closed window (its statistic against its thresholds) and one
per alert, what ``stream-monitor report`` and the status page's pictures draw.

Pure: the engine builds the points where windows close (:mod:`stream_monitor.partition`) and where
alerts leave a model; the service stamps them with the wall time and appends them to Redis after the
checkpoint (:mod:`stream_monitor.historystore`). Delivery is at least once (a batch processed again
after a crash or a rollback adds its points again), so readers go through :func:`dedupe`.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Any, Iterable, Mapping

from .errors import StreamMonitorError

PENDING_PER_COLUMN = 512  # points a column keeps until the service takes them (replay never does: bounded)


class HistoryError(StreamMonitorError):
    """A history that cannot be read or asked for (a bad duration, an entry that is not a point)."""


def pending() -> deque:
    """The bounded buffer a column keeps its points in until they are taken."""
    return deque(maxlen=PENDING_PER_COLUMN)


def bin_labels(reference: Any) -> list[str]:
    """The names of a PSI reference's bins: numeric ranges (below the minimum, inner bins, above the
    maximum) or the categories and ``__other__``."""
    edges = getattr(reference, "edges", None)
    if edges is not None:
        shown = [f"{edge:.4g}" for edge in edges]
        return [f"< {shown[0]}"] + [f"{a}–{b}" for a, b in zip(shown, shown[1:])] + [f"> {shown[-1]}"]
    return [str(c) for c in getattr(reference, "categories", [])] + ["__other__"]


def window_point(model_id: str, signal: str, name: str, detector: str, statistic: float,
                 warning: float | None, critical: float | None, offset: int, partition: int,
                 event_time_ms: int | None, counts: Any = None, reference: Any = None) -> dict[str, Any]:
    """A closed window's statistic; for PSI (``counts``: the window's bin counts) also the reference's and
    the window's bin shares and the bins' names."""
    point: dict[str, Any] = {"kind": "window", "model": model_id, "signal": signal, "name": name,
                             "detector": detector, "statistic": _number(statistic), "warning": _number(warning),
                             "critical": _number(critical), "partition": partition, "offset": offset,
                             "event_time_ms": event_time_ms}
    if counts is not None and reference is not None and hasattr(reference, "proportions"):
        total = sum(counts) or 1
        point["reference"] = [round(float(p), 6) for p in reference.proportions]
        point["current"] = [round(c / total, 6) for c in counts]
        point["bins"] = bin_labels(reference)
    return point


def alert_point(alert: Any) -> dict[str, Any]:
    """An alert (firing or resolved), for the markers and the episodes (a segment's: with its segment)."""
    point = {"kind": "alert", "model": alert.model_id, "signal": alert.signal, "name": alert.name,
             "detector": alert.detector, "status": alert.status, "severity": alert.severity,
             "statistic": _number(alert.statistic), "threshold": _number(alert.threshold),
             "partition": alert.partition, "offset": alert.offset, "event_time_ms": alert.event_time_ms,
             "alert_id": alert.alert_id, "message": alert.message}
    if alert.segment is not None:
        point["segment"] = dict(alert.segment)
    return point


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def encode(point: Mapping[str, Any]) -> str:
    return json.dumps(point, separators=(",", ":"), allow_nan=False)


def decode(text: str | bytes) -> dict[str, Any] | None:
    """One stored entry, or ``None`` when it is not a point (skipped, never a crash)."""
    try:
        point = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(point, dict) or point.get("kind") not in ("window", "alert"):
        return None
    return point


def identity(point: Mapping[str, Any]) -> tuple:
    """What makes a point the same point when it was delivered twice."""
    if point["kind"] == "alert":
        return ("alert", point.get("alert_id"))
    return ("window", point.get("signal"), point.get("name"), point.get("detector"), point.get("partition"),
            point.get("offset"), tuple(point.get("buckets") or ()))  # buckets: a model-level window


def dedupe(points: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The points once each (the first delivery kept), in the order given."""
    seen: set[tuple] = set()
    out = []
    for point in points:
        key = identity(point)
        if key not in seen:
            seen.add(key)
            out.append(dict(point))
    return out


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30m``, ``6h``, ``7d``, ``1h30m`` … → seconds (> 0)."""
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[smhdw]\s*)+)", text or "")
    if parts is None:
        raise HistoryError(f"--since {text!r} is not a duration: use a number and a unit (s, m, h, d, w), "
                           "e.g. 30m, 6h, 7d or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", parts.group(1)))
    if seconds <= 0:
        raise HistoryError(f"--since {text!r} is zero: give a positive duration, e.g. 6h")
    return seconds


def episodes(points: Iterable[Mapping[str, Any]], clock: str = "wall_ms") -> list[dict[str, Any]]:
    """Firing → resolved spans per (signal, name, detector, partition, segment) from the alert points (in
    time order); an episode still open has ``end`` ``None``. Times are the points' ``clock`` field."""
    open_: dict[tuple, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for point in points:
        if point.get("kind") != "alert":
            continue
        segment = point.get("segment")
        key = (point["signal"], point["name"], point["detector"], point.get("partition"),
               None if segment is None else tuple(sorted(segment.items())))
        if point["status"] == "firing":
            if key not in open_:
                episode = {"signal": key[0], "name": key[1], "detector": key[2], "partition": key[3],
                           "severity": point["severity"], "start": point.get(clock), "end": None,
                           "message": point.get("message", "")}
                if segment is not None:
                    episode["segment"] = dict(segment)
                open_[key] = episode
                out.append(episode)
            elif point["severity"] == "critical":
                open_[key]["severity"] = "critical"
        elif key in open_:
            open_.pop(key)["end"] = point.get(clock)
    return out
