"""What the status page and ``/api/status`` show: the instance's recent picture, kept in memory.

Updated by the service at each checkpoint (summaries, lag) and at each alert;
read by the HTTP thread. Histories are short ring buffers per detector.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Mapping

HISTORY_POINTS = 240


class StatusBoard:
    def __init__(self, instance: str = ""):
        self.instance = instance
        self._lock = threading.Lock()
        self._partitions: dict[str, dict[str, Any]] = {}
        self._history: dict[tuple[str, str, str, str], deque] = {}
        self._alerts: deque = deque(maxlen=100)
        self.label_lag: dict[str, dict[str, int]] = {}
        self.started_at = time.time()

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

    def alert(self, alert: Mapping[str, Any]) -> None:
        with self._lock:
            self._alerts.appendleft(dict(alert))

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: partitions, per-model detectors with history, recent alerts."""
        with self._lock:
            models: dict[str, dict[str, Any]] = {}
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
                    for row in model.get("detectors", []):
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
                rows = []
                for key, row in sorted(entry["detectors"].items(), key=lambda kv: (order.get(kv[0][1], 9), kv[0])):
                    rows.append(dict(row, history=[[round(t, 3), v] for t, v in self._history.get(key, ())]))
                entry["detectors"] = rows
            return {"instance": self.instance, "now": time.time(), "started_at": self.started_at,
                    "partitions": list(self._partitions.values()), "models": models,
                    "alerts": list(self._alerts)}
