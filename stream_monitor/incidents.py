"""A model's incidents: what its detectors find about one change, as one thing to look at.

One drift of a model's inputs fires many episodes at once — PSI, KS, ADWIN and
Page-Hinkley of each column it touches, the prediction's, data quality. An
incident groups them:

- it **opens** with a firing alert of the model while none of its incidents
  is open; its id is that alert's ``alert_id`` (deterministic: the same
  events give the same incident ids, across restarts, replays and batch cuts);
- it **collects** every firing alert of the model while it is open: while any
  of its episodes is still firing, what else the model's detectors find is
  part of the same situation (bounded: an episode is in it once while firing);
- it **closes** with the ``resolved`` alert of its last firing episode: the
  model is back to normal everywhere the incident had reached.

Each alert carries its incident's id (``incident``; the resolved ones too).
The incident is not an input of ``alert_id``. Its **drivers** are the columns
involved, ranked by severity, then by how far the statistic went past its
threshold (ADWIN, whose threshold is a confidence and not a level of its
statistic, ranks after the detectors with a level). When an incident opens
and when it closes, one log line says so, e.g. ``incident 5b1e07c2d4a9 on
model fraud: 5 columns drifted: amount (PSI 1.69 critical), score (PSI 1.08
critical), …``.

Pure: fed the alerts of one model in the order they are raised; its state is
plain data in the model's snapshot. One :class:`Incidents` runs per model and
partition (:class:`stream_monitor.partition.ModelMonitor` hands it its alerts
as they leave the model); for a model with ``decisions = "model"`` one more
runs in the model's merge (:func:`stream_monitor.merge.model_incidents`), fed
the model-level alerts in merge order, its state in the merge state, and its
incidents named by the model window they opened in (the same id whatever the
partitioning).

>>> from stream_monitor.events import Alert
>>> def alert(name, detector, status, offset, statistic=0.5):
...     return Alert(status, "critical", "m", "feature", name, detector, statistic, 0.25, {}, {}, 0, offset, None, "")
>>> incidents = Incidents("m")
>>> stamped, lines = incidents.stamp([alert("a", "psi", "firing", 10), alert("b", "psi", "firing", 10, 0.9)])
>>> stamped[0].incident == stamped[1].incident == stamped[0].alert_id
True
>>> lines == [("opened", f"incident {stamped[0].alert_id[:12]} on model m: 2 columns drifted: "
...                     "b (PSI 0.9 critical), a (PSI 0.5 critical)")]
True
>>> stamped, lines = incidents.stamp([alert("a", "psi", "resolved", 20), alert("b", "psi", "resolved", 30)])
>>> [a.incident == stamped[0].incident for a in stamped], incidents.open is None, [what for what, _ in lines]
([True, True], True, ['closed'])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from .events import Alert, segment_id_text

HISTORY = 5  # closed incidents a model keeps for the status page and `status`
SUMMARY_DRIVERS = 10  # drivers an incident's status row lists (``columns`` counts them all)
SHOWN_DRIVERS = 5  # drivers named in a log line (the rest are counted)
WORDS = {"psi": "PSI", "ks": "KS", "adwin": "ADWIN", "page_hinkley": "Page-Hinkley"}
NO_LEVEL = frozenset({"adwin"})  # its threshold is a confidence (delta), not a level of its statistic
_SEVERITY = {"critical": 0, "warning": 1}


def episode_key(signal: str, name: str, detector: str, segment: Mapping[str, Any] | None = None) -> str:
    """The key of one episode (a model's (signal, name, detector[, segment])) in an incident's state."""
    parts = (signal, name, detector) if segment is None else (signal, name, detector, segment_id_text(segment))
    return "\x1f".join(parts)


def _ratio(member: Mapping[str, Any]) -> float | None:
    """How far the statistic went past its threshold (None: no level to compare with)."""
    if member["detector"] in NO_LEVEL or not member["threshold"] or not member["statistic"]:
        return None
    if member["detector"] == "floor":  # a performance floor: the statistic fell below it
        return member["threshold"] / member["statistic"]
    return member["statistic"] / member["threshold"]


def _strength(member: Mapping[str, Any]) -> tuple:
    """Sorts the strongest first: severity, then the ratio to the threshold (none last)."""
    ratio = _ratio(member)
    return _SEVERITY.get(member["severity"], 2), ratio is None, -(ratio or 0.0)


def drivers(members: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The columns an incident involves, ranked: per column its strongest member (severity, then
    statistic relative to threshold) and the detectors that fired on it."""
    columns: dict[str, list[Mapping[str, Any]]] = {}
    for member in members.values():
        columns.setdefault(member["name"], []).append(member)
    out = []
    for name, held in columns.items():
        lead = min(held, key=_strength)
        out.append({"name": name, "signal": lead["signal"], "detector": lead["detector"],
                    "severity": lead["severity"], "statistic": lead["statistic"], "threshold": lead["threshold"],
                    "detectors": sorted({m["detector"] for m in held})})
    out.sort(key=lambda d: (*_strength(d), d["name"]))
    return out


def driver_text(driver: Mapping[str, Any]) -> str:
    word = WORDS.get(driver["detector"], driver["detector"])
    if driver["detector"] in NO_LEVEL:
        return f"{driver['name']} ({word} {driver['severity']})"
    return f"{driver['name']} ({word} {driver['statistic']:.3g} {driver['severity']})"


def drivers_text(ranked: Sequence[Mapping[str, Any]]) -> str:
    """``5 columns drifted: amount (PSI 1.69 critical), …``."""
    shown = ", ".join(driver_text(d) for d in ranked[:SHOWN_DRIVERS])
    more = f" and {len(ranked) - SHOWN_DRIVERS} more" if len(ranked) > SHOWN_DRIVERS else ""
    if any(d["signal"] == "performance" for d in ranked):
        return f"{len(ranked)} signal{'s' if len(ranked) != 1 else ''} changed: {shown}{more}"
    return f"{len(ranked)} column{'s' if len(ranked) != 1 else ''} drifted: {shown}{more}"


def _where(alert: Alert) -> dict[str, Any]:
    return {"partition": alert.partition, "offset": alert.offset, "event_time_ms": alert.event_time_ms}


class Incidents:
    """The incidents of one model: at most one open, the last :data:`HISTORY` closed ones."""

    def __init__(self, model_id: str):
        self.model_id = model_id
        self.open: dict[str, Any] | None = None
        self.closed: list[dict[str, Any]] = []  # newest first

    def stamp(self, alerts: Sequence[Alert], opening_ids: Sequence[str] | None = None
              ) -> tuple[list[Alert], list[tuple[str, str]]]:
        """The model's alerts, in the order raised, each with its ``incident``; and the log lines of
        the incidents that opened or closed, as (``"opened"`` | ``"closed"``, text) (an opening line
        names the drivers known when these alerts end; the closing line all of them).

        ``opening_ids``: per alert, the id an incident it opens takes (default: its ``alert_id``)."""
        if not alerts:
            return [], []
        out: list[Alert] = []
        happened: list[tuple[str, dict[str, Any]]] = []
        for index, alert in enumerate(alerts):
            incident = self._take(alert, happened, None if opening_ids is None else opening_ids[index])
            out.append(alert if incident is None else dataclasses.replace(alert, incident=incident))
        return out, [(what, self._line(what, record)) for what, record in happened]

    def _take(self, alert: Alert, happened: list, opens_as: str | None = None) -> str | None:
        key = episode_key(alert.signal, alert.name, alert.detector, alert.segment)
        record = self.open
        if alert.status == "firing":
            if record is None:
                record = self.open = {"id": opens_as or alert.alert_id, "opened": _where(alert), "closed": None,
                                      "firing": [], "members": {}, "alerts": 0}
                happened.append(("opened", record))
            if key not in record["firing"]:
                record["firing"].append(key)
            member = {"signal": alert.signal, "name": alert.name, "detector": alert.detector,
                      "severity": alert.severity, "statistic": alert.statistic, "threshold": alert.threshold}
            held = record["members"].get(key)
            if held is None or _strength(member) < _strength(held):
                record["members"][key] = member
            record["alerts"] += 1
            return record["id"]
        if record is None or key not in record["firing"]:
            return None  # an episode that fired before its model's incidents were kept
        record["firing"].remove(key)
        if not record["firing"]:
            self._close(record, _where(alert))
            happened.append(("closed", record))
        return record["id"]

    def _close(self, record: dict[str, Any], where: Mapping[str, Any] | None) -> None:
        record["closed"] = dict(where) if where is not None else {"partition": None, "offset": None,
                                                                   "event_time_ms": None}
        self.open = None
        self.closed = [record, *self.closed][:HISTORY]

    def _line(self, what: str, record: Mapping[str, Any]) -> str:
        head = f"incident {record['id'][:12]} on model {self.model_id}"
        ranked = drivers(record["members"])
        if what == "opened":
            return f"{head}: {drivers_text(ranked)}"
        opened, closed = record["opened"], record["closed"]
        span = ""
        if opened["offset"] is not None and closed["offset"] is not None:
            span = f", from offset {opened['offset']} to {closed['offset']} of partition {closed['partition']}"
        return (f"{head} closed: every episode resolved ({record['alerts']} firing alert"
                f"{'s' if record['alerts'] != 1 else ''}{span}); {drivers_text(ranked)}")

    def reconcile(self, firing: Iterable[str]) -> str | None:
        """Only these episode keys are firing now (detectors restarted by a config change or a new
        reference end their episodes without a ``resolved``): the open incident forgets the others and
        closes if none is left; the log line then, else ``None``."""
        if self.open is None:
            return None
        now = set(firing)
        self.open["firing"] = [k for k in self.open["firing"] if k in now]
        if self.open["firing"]:
            return None
        record = self.open
        self._close(record, None)
        return (f"incident {record['id'][:12]} on model {self.model_id} closed: its detectors restarted "
                f"(config or reference changed); {drivers_text(drivers(record['members']))}")

    # --- state and the status page --------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"open": _copy(self.open), "closed": [_copy(r) for r in self.closed]}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        state = state or {"open": None, "closed": []}
        self.open = _copy(state["open"])
        self.closed = [_copy(r) for r in state["closed"]]

    def summary(self) -> list[dict[str, Any]]:
        """One row per incident, the open one first, then the closed ones, newest first."""
        rows = []
        for record in ([self.open] if self.open is not None else []) + self.closed:
            ranked = drivers(record["members"])
            rows.append({"incident": record["id"], "model_id": self.model_id,
                         "state": "open" if record["closed"] is None else "closed",
                         "opened": dict(record["opened"]), "closed": _copy(record["closed"]),
                         "alerts": record["alerts"], "firing": len(record["firing"]), "columns": len(ranked),
                         "drivers": ranked[:SUMMARY_DRIVERS], "text": drivers_text(ranked)})
        return rows


def _copy(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A deep copy of an incident record (plain data: dicts, lists, scalars)."""
    if record is None:
        return None
    out = {}
    for k, v in record.items():
        if isinstance(v, Mapping):
            out[k] = {kk: dict(vv) if isinstance(vv, Mapping) else vv for kk, vv in v.items()}
        elif isinstance(v, list):
            out[k] = list(v)
        else:
            out[k] = v
    return out
