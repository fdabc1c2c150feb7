"""A model's retraining requests: one per incident that meets the model's policy.

With ``[retraining] topic`` set, each model's alerts, stamped with their
incident (:mod:`stream_monitor.incidents`), are fed here as they leave the
model. The policy (``[models.<id>.retraining]``) asks for retraining when,
within one incident:

- **drift**: at least ``min_drifted_features`` features have fired a
  *critical* alert of one of ``drift_detectors`` (by default the window
  detectors PSI and KS, which judge a whole window of events, so a burst of
  odd values does not count: the drift is sustained over a window);
- **performance**: a *critical* ``performance`` alert of one of
  ``performance_detectors`` fired (by default a metric below its floor or
  above its ceiling);
- **estimated performance**, **fairness**: a critical alert of that signal
  fired (``on_estimated_performance``, ``on_fairness``);

and the last request of the model is at least ``cooldown_seconds`` of event
time older (alerts without an event time, or with one before the last
request's, are not held back by it).

One request per incident at most. Its ``request_id`` is a pure function of
the model, the incident and the evidence's alert ids, so a replay after a
crash gives the same ids (a repeat of a request is a repeat of its id). Pure:
the policy's state is plain data in the model's snapshot.

>>> from stream_monitor.events import Alert
>>> def alert(name, offset, severity="critical", incident="i1"):
...     return Alert("firing", severity, "m", "feature", name, "psi", 0.5, 0.25, {}, {}, 0, offset, 1000, "",
...                  incident=incident)
>>> policy = Retraining("m", RetrainingPolicy(min_drifted_features=2))
>>> policy.observe([alert("a", 10), alert("b", 12, "warning")])
[]
>>> [r.reason for r in policy.observe([alert("c", 20)])]
['drift']
>>> policy.observe([alert("d", 30)])
[]
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping, Sequence

import orjson

from .events import Alert, format_time

KEPT_INCIDENTS = 16  # incident ids remembered as requested (one request per incident)
MAX_EVIDENCE = 200  # alerts listed in a request's evidence at most (the rest counted)
RECENT_REQUESTS = 5  # requests a model keeps for the status page and `status`


@dataclasses.dataclass(frozen=True)
class RetrainingPolicy:
    """When to ask (the values of ``[models.<id>.retraining]``)."""

    enabled: bool = True
    min_drifted_features: int = 3
    drift_detectors: tuple[str, ...] = ("psi", "ks")
    on_performance: bool = True
    performance_detectors: tuple[str, ...] = ("floor", "ceiling")
    on_estimated_performance: bool = True
    on_fairness: bool = True
    cooldown_seconds: float = 3600.0

    @classmethod
    def of(cls, table: Any) -> "RetrainingPolicy":
        """The policy of a ``[models.<id>.retraining]`` table (:class:`stream_monitor.config.ModelRetrainingConfig`)."""
        return cls(table.enabled, table.min_drifted_features, tuple(table.drift_detectors), table.on_performance,
                   tuple(table.performance_detectors), table.on_estimated_performance, table.on_fairness,
                   float(table.cooldown_seconds))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["drift_detectors"] = list(self.drift_detectors)
        out["performance_detectors"] = list(self.performance_detectors)
        return out


@dataclasses.dataclass(frozen=True)
class RetrainingRequest:
    """One request: what decided it and the evidence (schemas/retraining_request.json)."""

    request_id: str
    model_id: str
    incident: str
    reason: str  # drift | performance | estimated_performance | fairness
    evidence: tuple[Mapping[str, Any], ...]  # the alerts, in the order raised
    drifted_features: tuple[str, ...]
    policy: Mapping[str, Any]
    message: str

    def to_dict(self, requested_at_ms: int, max_bytes: int | None = None) -> dict[str, Any]:
        """The request's JSON; over ``max_bytes`` the evidence keeps its first alerts and says so."""
        alerts = [dict(a) for a in self.evidence]
        record = self._record(alerts, requested_at_ms)
        while max_bytes is not None and len(alerts) > 1 and len(orjson.dumps(record)) > max_bytes:
            alerts = alerts[:len(alerts) // 2]
            record = self._record(alerts, requested_at_ms)
        return record

    def _record(self, alerts: list[dict[str, Any]], requested_at_ms: int) -> dict[str, Any]:
        offsets = [(a["partition"], a["offset"]) for a in self.evidence if a["offset"] is not None]
        times = [a["event_time_ms"] for a in self.evidence if a["event_time_ms"] is not None]
        windows = [a["window"] for a in self.evidence if a.get("window") is not None]  # model-level decisions
        times += [w["first_ms"] for w in windows]
        partitions = {p for p, _ in offsets} | {p for w in windows for p in w["partitions"]}
        shown = [{**{k: v for k, v in a.items() if k not in ("event_time_ms", "window")},
                  "event_time": format_time(a["event_time_ms"]), **_shown_window(a.get("window"))} for a in alerts]
        evidence: dict[str, Any] = {
            "alerts": shown, "alert_ids": [a["alert_id"] for a in alerts],
            "drifted_features": list(self.drifted_features),
            "window": {"partitions": sorted(partitions),
                       "first_offset": min((o for _, o in offsets), default=None),
                       "last_offset": max((o for _, o in offsets), default=None),
                       "first_event_time": format_time(min(times)) if times else None,
                       "last_event_time": format_time(max(times)) if times else None}}
        if windows:
            evidence["window"]["buckets"] = [min(w["first_bucket"] for w in windows),
                                             max(w["last_bucket"] for w in windows)]
        if len(alerts) < len(self.evidence):
            evidence["truncated"] = {"alerts": len(self.evidence), "shown": len(alerts)}
        return {"request_id": self.request_id, "model_id": self.model_id, "incident": self.incident,
                "reason": self.reason, "message": self.message, "evidence": evidence, "policy": dict(self.policy),
                "requested_at": format_time(requested_at_ms)}


def request_id(model_id: str, incident: str, alert_ids: Sequence[str]) -> str:
    """A pure function of the model, the incident and the evidence."""
    text = "\x1f".join((model_id, incident, *alert_ids))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _evidence(alert: Alert) -> dict[str, Any]:
    out = {"alert_id": alert.alert_id, "signal": alert.signal, "name": alert.name, "detector": alert.detector,
           "severity": alert.severity, "statistic": alert.statistic, "threshold": alert.threshold,
           "partition": alert.partition, "offset": alert.offset, "event_time_ms": alert.event_time_ms,
           "events": _events(alert.current)}
    if alert.window is not None:  # a model-level decision (decisions = "model"): the window it decided on
        window = alert.window
        out["window"] = {"first_ms": window["first"], "last_ms": window["last"], "first_bucket": window["first_bucket"],
                         "last_bucket": window["last_bucket"],
                         "partitions": sorted({int(k.rpartition("|")[2]) for k in window.get("events", {})})}
    return out


def _shown_window(window: Mapping[str, Any] | None) -> dict[str, Any]:
    """An evidence alert's model window as the request shows it (nothing for a partition's alert)."""
    if window is None:
        return {}
    return {"window": {"first": format_time(window["first_ms"]), "last": format_time(window["last_ms"]),
                       "first_bucket": window["first_bucket"], "last_bucket": window["last_bucket"],
                       "partitions": list(window["partitions"])}}


def _events(current: Mapping[str, Any]) -> int | None:
    """The events (or pairs) the alert's statistic was computed over, where it says so."""
    for key in ("events", "window", "pairs"):
        value = current.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class Retraining:
    """The retraining policy of one model, fed its stamped alerts in the order raised."""

    def __init__(self, model_id: str, policy: RetrainingPolicy):
        self.model_id = model_id
        self.policy = policy
        self.incident: str | None = None  # the incident the evidence below belongs to
        self.drift: dict[str, dict[str, Any]] = {}  # feature → its first qualifying alert in the incident
        self.requested: list[str] = []  # incidents a request was made for, newest last
        self.last_request_ms: int | None = None  # event time of the last request
        self.recent: list[dict[str, Any]] = []  # the last requests made, newest first (what `status` shows)

    def observe(self, alerts: Sequence[Alert]) -> list[RetrainingRequest]:
        """The requests these alerts complete (at most one per incident)."""
        out = []
        if not self.policy.enabled:
            return out
        for alert in alerts:
            request = self._take(alert)
            if request is not None:
                out.append(request)
        return out

    def _take(self, alert: Alert) -> RetrainingRequest | None:
        if alert.status != "firing" or alert.incident is None or alert.severity != "critical":
            return None
        if alert.incident != self.incident:
            self.incident, self.drift = alert.incident, {}
        if alert.incident in self.requested:
            return None
        policy = self.policy
        reason = None
        if alert.signal == "feature" and alert.detector in policy.drift_detectors:
            self.drift.setdefault(alert.name, _evidence(alert))
            if len(self.drift) >= policy.min_drifted_features:
                reason = "drift"
        elif alert.signal == "performance" and policy.on_performance and alert.detector in policy.performance_detectors:
            reason = "performance"
        elif alert.signal == "estimated_performance" and policy.on_estimated_performance:
            reason = "estimated_performance"
        elif alert.signal == "fairness" and policy.on_fairness:
            reason = "fairness"
        if reason is None or self._cooling(alert.event_time_ms):
            return None
        evidence = list(self.drift.values()) if reason == "drift" else [*self.drift.values(), _evidence(alert)]
        evidence = evidence[:MAX_EVIDENCE]
        self.requested = [*self.requested, alert.incident][-KEPT_INCIDENTS:]
        if alert.event_time_ms is not None:
            self.last_request_ms = alert.event_time_ms
        features = tuple(self.drift)
        rid = request_id(self.model_id, alert.incident, [a["alert_id"] for a in evidence])
        self.recent = [{"request_id": rid, "incident": alert.incident, "reason": reason,
                        "event_time_ms": alert.event_time_ms, "evidence": len(evidence)},
                       *self.recent][:RECENT_REQUESTS]
        return RetrainingRequest(rid, self.model_id, alert.incident, reason, tuple(evidence), features,
                                 policy.to_dict(), _message(self.model_id, reason, alert, features))

    def _cooling(self, event_time_ms: int | None) -> bool:
        if self.last_request_ms is None or event_time_ms is None:
            return False
        return 0 <= event_time_ms - self.last_request_ms < self.policy.cooldown_seconds * 1000

    def snapshot(self) -> dict[str, Any]:
        return {"incident": self.incident, "drift": {k: dict(v) for k, v in self.drift.items()},
                "requested": list(self.requested), "last_request_ms": self.last_request_ms,
                "recent": [dict(r) for r in self.recent]}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        state = state or {}
        self.incident = state.get("incident")
        self.drift = {k: dict(v) for k, v in (state.get("drift") or {}).items()}
        self.requested = list(state.get("requested") or [])
        self.last_request_ms = state.get("last_request_ms")
        self.recent = [dict(r) for r in state.get("recent") or []]  # absent: saved before requests were listed

    def summary(self) -> list[dict[str, Any]]:
        """The last requests, newest first: id, incident, reason, event time, evidence count."""
        return [dict(r, model_id=self.model_id) for r in self.recent]


def _message(model_id: str, reason: str, alert: Alert, features: Sequence[str]) -> str:
    if reason == "drift":
        shown = ", ".join(features[:5]) + (f" and {len(features) - 5} more" if len(features) > 5 else "")
        return f"retrain {model_id}: critical drift of {len(features)} features ({shown})"
    return f"retrain {model_id}: {alert.message or f'{alert.signal} {alert.name} {alert.detector} critical'}"
