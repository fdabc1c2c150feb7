"""What the status page and ``/api/status`` show: the instance's recent picture, kept in memory.

Updated by the service at each checkpoint (summaries, lag) and at each alert;
read by the HTTP thread. Histories are short ring buffers per detector (each point marked with
the severity it was firing at, if any). ``live_lag``, when set,
gives each owned partition's lag at the moment of the request (the consumer's cached watermarks),
so the page shows a stall as it happens rather than as of the last checkpoint.

Besides its own partitions the board holds the group's view: every other partition's last saved
summary, read from Redis off the request path (:meth:`StatusBoard.group`), so each replica's page
shows the whole group, as ``stream-monitor status`` does. ``live_health``, when set, gives the
instance's health report (no I/O); with the event rate (:meth:`StatusBoard.processed`) and the
group read's time it makes the page's health banner. A fact older than its refresh is marked stale.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Sequence

from .events import segment_words

HISTORY_POINTS = 240
RATE_WINDOW_SECONDS = 10.0  # events/s is measured over this much of the recent past
RATE_STALE_SECONDS = 15.0  # no sample of the event count for this long (3 of the longest polls): stale
RAISED_KEPT = 1000  # firing alerts whose detection time the board keeps (for "firing since")
GROUP_STALE_FACTOR = 3  # the group's view is stale when older than this many refresh intervals


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
        self.live_health: Callable[[], Mapping[str, Any]] | None = None
        self.version = 0  # bumped by every update and alert: the HTTP side renders once per version
        self._firing_since: dict[tuple[str, str, str, str], tuple[float, bool]] = {}  # → (epoch s, from its alert)
        self._raised: dict[str, float] = {}  # firing alert_id → its detection time (epoch s), the latest RAISED_KEPT
        self._rate_samples: deque = deque()  # (monotonic s, events processed so far)
        self._rate: float | None = None
        self._group: dict[tuple[str, int], dict[str, Any]] = {}  # partitions owned elsewhere, from Redis
        self._group_saved: dict[tuple[str, int], int] = {}
        self.group_refresh_seconds: float | None = None  # set by the service when it reads the group's view
        self._group_read: tuple[float, float] | None = None  # (epoch s, monotonic s) of the last good read
        self._group_error: tuple[float, str, bool] | None = None  # (epoch s, problem, Redis's) of the last failed read

    def update(self, partitions: Mapping[tuple[str, int], tuple[Mapping[str, Any], int | None]]) -> None:
        """``partitions``: (topic, partition) → (summary, lag or None) of every owned partition."""
        now = time.time()
        with self._lock:
            self._partitions = {f"{t}[{p}]": {"topic": t, "partition": p, "lag": lag, **summary}
                                for (t, p), (summary, lag) in sorted(partitions.items())}
            for summary, _ in partitions.values():
                self._record_history(summary, now)
            self._note_firing(now)
            self.version += 1

    def _record_history(self, summary: Mapping[str, Any], now: float) -> None:
        for model_id, model in summary.get("models", {}).items():
            for row in model.get("detectors", []):
                if row.get("statistic") is None:
                    continue
                key = (model_id, row["signal"], row["name"], row["detector"])
                points = self._history.setdefault(key, deque(maxlen=HISTORY_POINTS))
                points.append((now, row["statistic"], (row.get("severity") or "warning") if row.get("firing") else None))

    def _note_firing(self, now: float) -> None:
        """Since when each detector firing in some partition (here or in the group) has been firing: the
        detection time of its episode's firing alert when this instance raised it (the row's
        ``last_alert_id``), else when the board first saw it firing (then marked as a lower bound)."""
        firing: dict[tuple[str, str, str, str], tuple[float, bool]] = {}
        for part in list(self._partitions.values()) + list(self._group.values()):
            for model_id, model in part.get("models", {}).items():
                for row in model.get("detectors", []):
                    if not row.get("firing"):
                        continue
                    key = (model_id, row["signal"], row["name"], row["detector"])
                    raised = self._raised.get(row.get("last_alert_id") or "")
                    seen = (raised, True) if raised is not None else self._firing_since.get(key, (now, False))
                    held = firing.get(key)
                    if held is None or (seen[1], -seen[0]) > (held[1], -held[0]):
                        firing[key] = seen
        self._firing_since = firing

    def processed(self, events: int, now: float | None = None) -> None:
        """The loop's count of events processed so far (called about once a second): the event rate
        over the last :data:`RATE_WINDOW_SECONDS`. The board's version moves only when the shown rate does."""
        now = time.monotonic() if now is None else now
        with self._lock:
            samples = self._rate_samples
            samples.append((now, events))
            while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_SECONDS:
                samples.popleft()
            (t0, e0), (t1, e1) = samples[0], samples[-1]
            rate = (e1 - e0) / (t1 - t0) if t1 > t0 else None
            if _shown_rate(rate) != _shown_rate(self._rate):
                self.version += 1
            self._rate = rate

    def group(self, partitions: list[Mapping[str, Any]] | None, owned: set[tuple[str, int]] = frozenset(),
              problem: str | None = None, redis: bool = True) -> None:
        """The group's view read from Redis: every stored partition's row (topic, partition, next_offset,
        saved_at_ms, dead letters, models: as ``stream-monitor status`` reads them); those ``owned`` here
        are left to the board's own, fresher, update. ``partitions`` None: the read failed (``problem``);
        the last view is kept and shown as stale; ``redis``: the failure was Redis's."""
        wall, mono = time.time(), time.monotonic()
        with self._lock:
            if partitions is None:
                self._group_error = (wall, problem or "the read failed", redis)
                self.version += 1
                return
            others = {(p["topic"], p["partition"]): dict(p) for p in partitions
                      if (p["topic"], p["partition"]) not in owned}
            changed = others.keys() != self._group.keys() or self._group_error is not None
            for key, part in others.items():
                saved = part.get("saved_at_ms") or 0
                if self._group_saved.get(key) != saved:
                    self._group_saved[key] = saved
                    self._record_history(part, wall)
                    changed = True
            for key in set(self._group_saved) - set(others):
                del self._group_saved[key]
            self._group, self._group_read, self._group_error = others, (wall, mono), None
            self._note_firing(wall)
            if changed:
                self.version += 1

    def group_stale(self, now: float | None = None) -> bool:
        """The group's view is older than :data:`GROUP_STALE_FACTOR` refreshes (or its last read failed)."""
        if self.group_refresh_seconds is None:
            return False
        now = time.monotonic() if now is None else now
        read = self._group_read
        return (self._group_error is not None or read is None
                or now - read[1] > GROUP_STALE_FACTOR * self.group_refresh_seconds)

    def rate_stale(self, now: float | None = None) -> bool:
        samples = self._rate_samples
        now = time.monotonic() if now is None else now
        return bool(samples) and now - samples[-1][0] > RATE_STALE_SECONDS

    def health(self) -> dict[str, Any]:
        """The banner's facts: the instance's health report (when known), the event rate, the group read."""
        report: dict[str, Any] = {}
        if self.live_health is not None:
            try:
                report = dict(self.live_health())
            except Exception:  # noqa: BLE001 - the page must render whatever the service is doing
                report = {}
        now_wall, now = time.time(), time.monotonic()
        samples = self._rate_samples
        out: dict[str, Any] = {
            "status": report.get("status"), "ready": report.get("ready"), "problems": list(report.get("problems", ())),
            "redis": report.get("redis"), "broker": report.get("broker"),
            "broker_unreachable_since": None if report.get("broker_unreachable_seconds") is None
            else round(now_wall - report["broker_unreachable_seconds"]),
            "events_per_second": self._rate, "rate_stale": self.rate_stale(now),
            "rate_measured_at": round(now_wall - (now - samples[-1][0])) if samples else None,
            "group_refresh_seconds": self.group_refresh_seconds, "group_stale": self.group_stale(now),
            "group_read_at": None if self._group_read is None else round(self._group_read[0]),
            "group_problem": None if self._group_error is None else self._group_error[1],
            "group_failed_at": None if self._group_error is None else round(self._group_error[0]),
            "group_redis_failed": self._group_error is not None and self._group_error[2],
        }
        return out

    def live_key(self) -> tuple:
        """What the page may change by between board updates, hashable: the live lags and the health
        facts as the banner words them (not their ages), so a page is rendered anew when one of them changes."""
        health = self.health()
        return (self.live_lags(), health["status"], health["ready"], tuple(health["problems"]), health["redis"],
                health["broker"], health["rate_stale"], health["group_stale"], health["group_problem"])

    def merged(self, model_id: str, summary: Mapping[str, Any]) -> None:
        """The model-level episodes of a model merged by this instance (decisions = "model")."""
        with self._lock:
            if self.merges.get(model_id) != summary:
                self.merges[model_id] = dict(summary)
                self.version += 1

    def _merged_rows(self, models: dict[str, dict[str, Any]]) -> None:
        """The incidents and retraining requests of the models merged here, beside their partitions' (a
        model-level row has ``partition`` ``None``). Called with the lock held."""
        for model_id, merge in self.merges.items():
            if merge.get("fairness"):  # the model's fairness, decided by its merge
                models.setdefault(model_id, {"events": 0, "labels": 0, "detectors": {}})["fairness"] = dict(
                    merge["fairness"])
            if (merge.get("estimated") or {}).get("metrics"):  # the model's estimate, decided by its merge
                models.setdefault(model_id, {"events": 0, "labels": 0, "detectors": {}})["estimated"] = dict(
                    merge["estimated"])
            if not merge.get("incidents") and not merge.get("retraining"):
                continue
            entry = models.setdefault(model_id, {"events": 0, "labels": 0, "detectors": {}})
            for kind in ("incidents", "retraining"):
                for row in merge.get(kind, ()):
                    entry.setdefault(kind, []).append(dict(row, partition=None))

    def alert(self, alert: Mapping[str, Any]) -> None:
        with self._lock:
            self._alerts.appendleft(dict(alert))
            since = _epoch(alert.get("detected_at"))
            if alert.get("status") == "firing" and alert.get("alert_id") and since is not None:
                self._raised[alert["alert_id"]] = since
                while len(self._raised) > RAISED_KEPT:
                    del self._raised[next(iter(self._raised))]
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
        """A JSON-ready copy: partitions (those owned here, then the rest of the group's from Redis, each
        with its ``owner``: "here" or "group"), per-model detectors over all of them with history and,
        when firing, since when; recent alerts; dead letters by reason (count and the latest error as a
        sample); the health banner's facts."""
        health = self.health()
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
            group = [dict(self._group[k], owner="group") for k in sorted(self._group)
                     if f"{k[0]}[{k[1]}]" not in self._partitions]  # one moved here since the read: ours
            everyone = list(self._partitions.values()) + group
            for part in everyone:
                for model_id, model in part.get("models", {}).items():
                    entry = models.setdefault(model_id, {"events": 0, "labels": 0, "detectors": {}})
                    entry["events"] += model.get("events", 0)
                    entry["labels"] += model.get("labels", 0)
                    if model.get("performance"):
                        held = entry.get("performance")
                        if held is None or model["performance"].get("pairs", 0) > held.get("pairs", 0):
                            entry["performance"] = dict(model["performance"])
                    estimate = model.get("estimated")
                    if estimate and estimate.get("metrics"):
                        held = entry.get("estimated")
                        if held is None or estimate.get("windows", 0) > held.get("windows", 0):
                            entry["estimated"] = dict(estimate)
                    for attribute, held_now in (model.get("fairness") or {}).items():  # the most windows judged
                        held = entry.setdefault("fairness", {}).get(attribute)
                        if held is None or fairness_windows(held_now) > fairness_windows(held):
                            entry["fairness"][attribute] = held_now
                    if model.get("unmonitored"):
                        entry["unmonitored"] = sorted(set(entry.get("unmonitored", ())) | set(model["unmonitored"]))
                    if model_id in self.label_lag:
                        entry["label_lag"] = dict(self.label_lag[model_id])
                    for row in model.get("incidents", []):
                        entry.setdefault("incidents", []).append(dict(row, partition=part["partition"]))
                    for row in model.get("retraining", []):
                        entry.setdefault("retraining", []).append(dict(row, partition=part["partition"]))
                    if model.get("segments"):
                        entry.setdefault("segment_parts", []).append((part["partition"], model["segments"]))
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
            order = {"feature": 0, "prediction": 1, "label": 2, "performance": 3, "estimated_performance": 4,
                     "fairness": 5, "latency": 6, "data_quality": 7}
            self._merged_rows(models)
            for model_id, entry in models.items():
                if "incidents" in entry:
                    entry["incidents"] = ranked_incidents(entry["incidents"])
                if "retraining" in entry:
                    entry["retraining"] = recent_requests(entry["retraining"])
                if "segment_parts" in entry:
                    entry["segments"] = gathered_segments(entry.pop("segment_parts"))
                rows = []
                for key, row in sorted(entry["detectors"].items(), key=lambda kv: (order.get(kv[0][1], 9), kv[0])):
                    shown = dict(row, history=[[round(t, 3), v] if mark is None else [round(t, 3), v, mark]
                                               for t, v, mark in self._history.get(key, ())])
                    if row.get("firing") and key in self._firing_since:
                        since, exact = self._firing_since[key]
                        shown.update(firing_since=round(since, 3), firing_since_exact=exact)
                    rows.append(shown)
                entry["detectors"] = rows
            partitions = []
            for part in self._partitions.values():
                lag = live.get((part["topic"], part["partition"]))
                partitions.append(dict(part, owner="here", **({} if lag is None else {"lag": lag})))
            return {"instance": self.instance, "now": time.time(), "started_at": self.started_at,
                    "partitions": partitions + group, "owned": owned,  # owned now, checkpointed or not yet
                    "models": models, "pictures": firing_pictures(models, shares), "alerts": list(self._alerts),
                    "merges": {m: dict(v) for m, v in sorted(self.merges.items())},
                    "dead_letters": dead_letter_reasons(partitions + group), "health": health}


def fairness_windows(fairness: Mapping[str, Any]) -> int:
    """How many windows one partition's fairness of an attribute has judged (predictions and pairs)."""
    return sum((fairness.get("windows") or {}).values())


def _epoch(stamp: Any) -> float | None:
    """An alert's RFC 3339 time as epoch seconds (None when absent or not a time)."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _shown_rate(rate: float | None) -> str:
    """The event rate as the page words it (two significant digits): the board moves when this does."""
    return "-" if rate is None else f"{rate:.2g}"


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


def gathered_segments(parts: Iterable[tuple[int, Sequence[Mapping[str, Any]]]]) -> list[dict[str, Any]]:
    """A model's segments over its partitions (each partition's ``segments`` summary rows): per segment, in
    the reference's order, its events, the detectors firing (each with its partition) and its realized
    performance (the partition's with the most pairs), when it has one."""
    out: dict[str, dict[str, Any]] = {}
    for partition, rows in parts:
        for row in rows:
            held = out.setdefault(segment_words(row["segment"]), {"segment": dict(row["segment"]), "events": 0,
                                                                   "reference_events": 0, "firing": []})
            held["events"] += row["events"]
            held["reference_events"] = max(held["reference_events"], row["reference_events"])
            held["firing"].extend(dict(f, partition=partition) for f in row["firing"])
            measured = row.get("performance")
            if measured and measured.get("pairs", 0) > held.get("performance", {}).get("pairs", -1):
                held["performance"] = dict(measured)
    return list(out.values())


def ranked_incidents(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A model's incident rows from its partitions (each with its ``partition``): the open ones first,
    then the most recently opened, at most :data:`SHOWN_INCIDENTS`."""
    def key(row: Mapping[str, Any]) -> tuple:
        opened = row.get("opened") or {}
        return row.get("state") != "open", -(opened.get("event_time_ms") or 0), row.get("partition") or 0
    return [dict(r) for r in sorted(rows, key=key)[:SHOWN_INCIDENTS]]


SHOWN_REQUESTS = 10  # retraining requests per model on the page and in `status`


def recent_requests(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A model's last retraining requests from its partitions and its merge: newest (event time) first, each
    id once, at most :data:`SHOWN_REQUESTS`."""
    out: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (-(r.get("event_time_ms") or 0), r.get("request_id") or "")):
        out.setdefault(row.get("request_id") or "", dict(row))
    return list(out.values())[:SHOWN_REQUESTS]


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
