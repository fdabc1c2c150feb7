"""What the status page and ``/api/status`` show: the instance's recent picture, kept in memory.

Updated by the service at each checkpoint (summaries, lag) and at each alert;
read by the HTTP thread. Histories are short ring buffers per detector. ``live_lag``, when set,
gives each owned partition's lag at the moment of the request (the consumer's cached watermarks),
so the page shows a stall as it happens rather than as of the last checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Mapping

HISTORY_POINTS = 240


class StatusBoard:
    def __init__(self, instance: str = ""):
        self.instance = instance
        self._lock = threading.Lock()
        self._partitions: dict[str, dict[str, Any]] = {}
        self._history: dict[tuple[str, str, str, str], deque] = {}
        self._alerts: deque = deque(maxlen=100)
        self.label_lag: dict[str, dict[str, int]] = {}
        self.merges: dict[str, dict[str, Any]] = {}  # per model merged here: its model-level episodes
        self.started_at = time.time()
        self.live_lag: Callable[[], Mapping[tuple[str, int], int | None]] | None = None
        self.version = 0  # bumped by every update and alert: the HTTP side renders once per version

    def update(self, partitions: Mapping[tuple[str, int], tuple[Mapping[str, Any], int | None]]) -> None:
        """``partitions``: (topic, partition) → (summary, lag or None) of every owned partition."""
        now = time.time()
        with self._lock:
            self._partitions = {f"{t}[{p}]": {"topic": t, "partition": p, "lag": lag, **summary}
                                for (t, p), (summary, lag) in sorted(partitions.items())}
            for summary, _ in partitions.values():
                for model_id, model in summary.get("models", {}).items():
                    for row in model.get("detectors", []):
                        if row.get("statistic") is None:
                            continue
                        key = (model_id, row["signal"], row["name"], row["detector"])
                        points = self._history.setdefault(key, deque(maxlen=HISTORY_POINTS))
                        points.append((now, row["statistic"]))
            self.version += 1

    def merged(self, model_id: str, summary: Mapping[str, Any]) -> None:
        """The model-level episodes of a model merged by this instance (decisions = "model")."""
        with self._lock:
            if self.merges.get(model_id) != summary:
                self.merges[model_id] = dict(summary)
                self.version += 1

    def alert(self, alert: Mapping[str, Any]) -> None:
        with self._lock:
            self._alerts.appendleft(dict(alert))
            self.version += 1

    def live_lags(self) -> tuple:
        """The live lag of each owned partition, hashable (part of what the page's cache is keyed on)."""
        if self.live_lag is None:
            return ()
        try:
            return tuple(sorted(self.live_lag().items()))
        except Exception:  # noqa: BLE001 - the page must render whatever the consumer is doing
            return ()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: partitions, per-model detectors with history, recent alerts, dead letters
        by reason (count and the latest error as a sample, over the partitions owned)."""
        live, owned = {}, None
        if self.live_lag is not None:
            try:
                live = self.live_lag()
                owned = sorted([topic, partition] for topic, partition in live)
            except Exception:  # noqa: BLE001 - the page must render whatever the consumer is doing
                live = {}
        with self._lock:
            models: dict[str, dict[str, Any]] = {}
            shares: dict[tuple, tuple] = {}  # firing column → (PSI, its bin shares, partition), the largest PSI
            for part in self._partitions.values():
                for model_id, model in part.get("models", {}).items():
                    entry = models.setdefault(model_id, {"events": 0, "labels": 0, "detectors": {}})
                    entry["events"] += model.get("events", 0)
                    entry["labels"] += model.get("labels", 0)
                    if model.get("performance"):
                        held = entry.get("performance")
                        if held is None or model["performance"].get("pairs", 0) > held.get("pairs", 0):
                            entry["performance"] = dict(model["performance"])
                    if model.get("unmonitored"):
                        entry["unmonitored"] = sorted(set(entry.get("unmonitored", ())) | set(model["unmonitored"]))
                    if model_id in self.label_lag:
                        entry["label_lag"] = dict(self.label_lag[model_id])
                    for row in model.get("incidents", []):
                        entry.setdefault("incidents", []).append(dict(row, partition=part["partition"]))
                    for row in model.get("detectors", []):
                        if row.get("shares"):
                            column, value = (model_id, row["signal"], row["name"]), row.get("statistic") or 0.0
                            if column not in shares or value > shares[column][0]:
                                shares[column] = (value, row["shares"], part["partition"])
                            row = {k: v for k, v in row.items() if k != "shares"}
                        key = (model_id, row["signal"], row["name"], row["detector"])
                        held = entry["detectors"].get(key)
                        value = row.get("statistic")
                        if held is None or (value is not None and (held["statistic"] is None
                                                                   or value > held["statistic"])):
                            entry["detectors"][key] = dict(row, firing=row.get("firing") or (held or {}).get("firing"))
                        elif row.get("firing"):
                            held["firing"] = True
            order = {"feature": 0, "prediction": 1, "label": 2, "performance": 3, "latency": 4, "data_quality": 5}
            for model_id, entry in models.items():
                if "incidents" in entry:
                    entry["incidents"] = ranked_incidents(entry["incidents"])
                rows = []
                for key, row in sorted(entry["detectors"].items(), key=lambda kv: (order.get(kv[0][1], 9), kv[0])):
                    rows.append(dict(row, history=[[round(t, 3), v] for t, v in self._history.get(key, ())]))
                entry["detectors"] = rows
            partitions = []
            for part in self._partitions.values():
                lag = live.get((part["topic"], part["partition"]))
                partitions.append(dict(part, lag=lag) if lag is not None else dict(part))
            return {"instance": self.instance, "now": time.time(), "started_at": self.started_at,
                    "partitions": partitions, "owned": owned,  # owned now, checkpointed or not yet
                    "models": models, "pictures": firing_pictures(models, shares), "alerts": list(self._alerts),
                    "merges": {m: dict(v) for m, v in sorted(self.merges.items())},
                    "dead_letters": dead_letter_reasons(partitions)}


def firing_pictures(models: Mapping[str, Any], shares: Mapping[tuple, tuple]) -> list[dict[str, Any]]:
    """Per column with a firing detector: its reference and most recent window's bin shares (from the
    partition whose PSI is highest), the detectors firing and the worst severity; critical first."""
    out = []
    for model_id, entry in sorted(models.items()):
        firing: dict[tuple, list] = {}
        for row in entry["detectors"]:
            if row.get("firing"):
                firing.setdefault((row["signal"], row["name"]), []).append(row)
        for (signal, name), rows in firing.items():
            held = shares.get((model_id, signal, name))
            if held is None:
                continue
            severity = "critical" if any(r.get("severity") == "critical" for r in rows) else "warning"
            out.append({"model": model_id, "signal": signal, "name": name, "severity": severity,
                        "detectors": [r["detector"] for r in rows], "partition": held[2], **held[1]})
    return sorted(out, key=lambda p: (p["severity"] != "critical", p["model"], p["signal"], p["name"]))


SHOWN_INCIDENTS = 10  # incident rows per model on the page and in `status`


def ranked_incidents(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A model's incident rows from its partitions (each with its ``partition``): the open ones first,
    then the most recently opened, at most :data:`SHOWN_INCIDENTS`."""
    def key(row: Mapping[str, Any]) -> tuple:
        opened = row.get("opened") or {}
        return row.get("state") != "open", -(opened.get("event_time_ms") or 0), row.get("partition") or 0
    return [dict(r) for r in sorted(rows, key=key)[:SHOWN_INCIDENTS]]


def dead_letter_reasons(partitions: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """reason → {"count", "sample"} summed over partition summaries (the sample of the largest count)."""
    out: dict[str, dict[str, Any]] = {}
    for part in partitions:
        for reason, entry in (part.get("dead_letter_reasons") or {}).items():
            held = out.setdefault(reason, {"count": 0, "sample": entry.get("sample", "")})
            if entry.get("count", 0) > held["count"]:
                held["sample"] = entry.get("sample", "")
            held["count"] += entry.get("count", 0)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["count"], kv[0])))
