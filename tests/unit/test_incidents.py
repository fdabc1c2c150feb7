"""Incidents: one change of a model, one incident; pure (the engine on synthetic traffic, no I/O)."""

from __future__ import annotations

import logging
import random
from functools import lru_cache

import orjson

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import Alert, RawMessage, alert_id
from stream_monitor.incidents import HISTORY, Incidents, drivers
from stream_monitor.partition import PartitionMonitor
from stream_monitor.state import decode_state, encode_state
from stream_monitor.synthetic import generate

PARTITION = 3
MODEL = {"decisions": "partition",
         "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}
CONFIG = parse_config({"models": {m: MODEL for m in ("fraud", "stable")}})
KNOWN = frozenset(CONFIG.models)


@lru_cache(maxsize=None)
def stream(*parts: tuple) -> tuple:
    """Decoded events of generate(*part) for each part, one after the other (offsets run on)."""
    docs = [d for model, count, seed, drift_at, until in parts
            for d in generate(model, count, seed=seed, drift_at=drift_at, until=until)]
    return tuple(decode(RawMessage("t", PARTITION, i, orjson.dumps(d)), KNOWN) for i, d in enumerate(docs))


LASTING = (("fraud", 8000, 0, 3000, None),)  # drifts at 3000, to the end
RETURNING = (("fraud", 10_000, 0, 3000, 6000),)  # drifts at 3000, back at 6000
TWICE = (("fraud", 10_000, 0, 3000, 6000), ("fraud", 6000, 1, 2000, None))  # back, then drifts again at 12000


def run(events, config=CONFIG) -> tuple[list[Alert], PartitionMonitor]:
    monitor = PartitionMonitor(config, PARTITION, {})
    return monitor.process_batch([(o, e, None) for o, e in enumerate(events)]), monitor


def test_one_lasting_drift_is_one_open_incident_with_its_drivers_ranked():
    """The fraud drift fires 10 alerts (Page-Hinkley and ADWIN first, the windows at 3999): one incident,
    its id the first firing alert's; open while the drift lasts; the columns ranked by severity, then by
    statistic relative to threshold (ADWIN-only columns would come last)."""
    alerts, monitor = run(stream(*LASTING))
    assert len(alerts) == 10 and {a.status for a in alerts} == {"firing"}
    first = alerts[0]
    # 3030, not 3024: the budget is now per model (Page-Hinkley's share of it needs a higher threshold)
    assert (first.offset, first.name, first.detector) == (3030, "amount", "page_hinkley")
    assert {a.incident for a in alerts} == {first.alert_id}
    [row] = monitor.summary()["models"]["fraud"]["incidents"]
    assert (row["incident"], row["state"], row["alerts"], row["firing"]) == (first.alert_id, "open", 10, 10)
    assert row["opened"] == {"partition": PARTITION, "offset": 3030, "event_time_ms": first.event_time_ms}
    ranked = [(d["name"], d["detector"], d["severity"]) for d in row["drivers"]]
    assert ranked == [("amount", "psi", "critical"), ("score", "psi", "critical"), ("country", "psi", "critical"),
                      ("label", "psi", "critical")]
    assert row["drivers"][0]["detectors"] == ["adwin", "ks", "page_hinkley", "psi"]
    assert row["text"].startswith("4 columns drifted: amount (PSI ")


def test_the_incident_closes_with_the_last_resolved_and_says_so(caplog):
    """Drift, then back: the 20 alerts (10 firing, 10 resolved) are one incident; it closes with the last
    resolved (the point detectors at 7999); one INFO line when it opens, one when it closes."""
    with caplog.at_level(logging.INFO, logger="stream_monitor"):
        alerts, monitor = run(stream(*RETURNING))
    assert [a.status for a in alerts].count("resolved") == 10
    incident = alerts[0].alert_id
    assert {a.incident for a in alerts} == {incident}
    [row] = monitor.summary()["models"]["fraud"]["incidents"]
    assert row["state"] == "closed" and row["firing"] == 0
    assert row["closed"]["offset"] == 7999 == alerts[-1].offset
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if "incident" in r.getMessage()]
    assert [level for level, _ in lines] == [logging.INFO, logging.INFO]
    # the opening line names what the batch that opened it knew (here all of it: one batch)
    assert lines[0][1].startswith(f"incident {incident[:12]} on model fraud: 4 columns drifted: amount (PSI ")
    # from 3030, not 3024: the budget is now per model (the first Page-Hinkley firing moved)
    assert lines[1][1].startswith(f"incident {incident[:12]} on model fraud closed: every episode resolved "
                                  f"(10 firing alerts, from offset 3030 to 7999 of partition {PARTITION}); "
                                  "4 columns drifted: amount (PSI ")


def test_two_changes_apart_are_two_incidents():
    """Back to normal in between (the first incident closed): the second drift opens a second incident."""
    alerts, monitor = run(stream(*TWICE))
    ids = list(dict.fromkeys(a.incident for a in alerts))
    assert len(ids) == 2
    second = next(a for a in alerts if a.incident == ids[1])
    assert second.status == "firing" and second.offset > 10_000 and second.alert_id == ids[1]
    rows = monitor.summary()["models"]["fraud"]["incidents"]
    assert [(r["incident"], r["state"]) for r in rows] == [(ids[1], "open"), (ids[0], "closed")]


def test_stationary_traffic_has_no_incident():
    alerts, monitor = run(stream(("stable", 8000, 0, None, None)))
    assert alerts == [] and monitor.summary()["models"]["stable"]["incidents"] == []


def test_the_incident_is_not_an_input_of_alert_id():
    alerts, _ = run(stream(*TWICE))
    assert all(a.alert_id == alert_id(a.model_id, a.signal, a.name, a.detector, a.partition, a.offset, a.status)
               for a in alerts)
    assert all(a.to_dict(0)["incident"] == a.incident for a in alerts)


def test_batch_cuts_and_restarts_give_the_same_incidents():
    """Random batch cuts with a snapshot → encode → restore between batches: the same alerts (incident
    included) and the same incident state as one uninterrupted batch."""
    events = stream(*TWICE)
    expected, whole = run(events)
    rng = random.Random(5)
    monitor, alerts, start, restarts = PartitionMonitor(CONFIG, PARTITION, {}), [], 0, 0
    while start < len(events):
        size = rng.choice([1, 17, 500, 1999, 3000])
        alerts.extend(monitor.process_batch([(o, events[o], None) for o in range(start, min(start + size,
                                                                                            len(events)))]))
        start += size
        if rng.random() < 0.3:
            restored = PartitionMonitor(CONFIG, PARTITION, {})
            restored.restore(decode_state(encode_state(monitor.snapshot())))
            monitor, restarts = restored, restarts + 1
    assert restarts > 3
    assert [(a.alert_id, a.incident) for a in alerts] == [(a.alert_id, a.incident) for a in expected]
    assert monitor.snapshot()["models"]["fraud"]["incidents"] == whole.snapshot()["models"]["fraud"]["incidents"]


def test_detectors_restarted_by_a_config_change_close_the_open_incident(caplog):
    """A changed episode setting restarts every detector: their episodes end without a resolved, so the
    open incident closes on restore (with a line saying why) instead of waiting for ever."""
    events = stream(*LASTING)
    _, monitor = run(events[:5000])
    assert monitor.models["fraud"].incidents.open is not None
    changed = parse_config({"models": {"fraud": {**MODEL, "detectors": {**MODEL["detectors"], "cooldown": 7}}}})
    restored = PartitionMonitor(changed, PARTITION, {})
    with caplog.at_level(logging.INFO, logger="stream_monitor"):
        restored.restore(decode_state(encode_state(monitor.snapshot())))
    incidents = restored.models["fraud"].incidents
    assert incidents.open is None and incidents.closed[0]["closed"]["offset"] is None
    assert any("closed: its detectors restarted" in r.getMessage() for r in caplog.records)


def test_a_state_saved_before_incidents_were_kept_still_restores():
    """No "incidents" in the saved model: the episodes firing then resolve without an incident."""
    events = stream(*RETURNING)
    _, monitor = run(events[:5000])
    state = monitor.snapshot()
    del state["models"]["fraud"]["incidents"]
    restored = PartitionMonitor(CONFIG, PARTITION, {})
    restored.restore(decode_state(encode_state(state)))
    rest = restored.process_batch([(o, events[o], None) for o in range(5000, len(events))])
    assert rest and all(a.status == "resolved" and a.incident is None for a in rest)


# --- the component alone ------------------------------------------------------------------------------


def alert(name: str, detector: str, status: str = "firing", severity: str = "warning", statistic: float = 0.2,
          threshold: float = 0.1, offset: int = 0) -> Alert:
    return Alert(status, severity, "m", "feature", name, detector, statistic, threshold, {}, {}, 0, offset, None, "")


def test_drivers_rank_severity_then_the_statistic_relative_to_its_threshold():
    incidents = Incidents("m")
    incidents.stamp([alert("a", "adwin", statistic=0.9, threshold=1e-6),  # ADWIN: no level, ranks after
                     alert("b", "psi", statistic=0.3, threshold=0.1),
                     alert("c", "ks", statistic=0.5, threshold=0.1),
                     alert("d", "psi", severity="critical", statistic=0.26, threshold=0.25),
                     alert("b", "ks", severity="critical", statistic=0.09, threshold=0.04)])
    ranked = drivers(incidents.open["members"])
    assert [(d["name"], d["detector"]) for d in ranked] == [("b", "ks"), ("d", "psi"), ("c", "ks"), ("a", "adwin")]
    assert ranked[0]["detectors"] == ["ks", "psi"]


def test_a_resolved_without_its_firing_has_no_incident_and_history_is_bounded():
    incidents = Incidents("m")
    stamped, _ = incidents.stamp([alert("x", "psi", "resolved")])
    assert stamped[0].incident is None and incidents.open is None
    for k in range(HISTORY + 3):
        incidents.stamp([alert(f"c{k}", "psi", offset=2 * k), alert(f"c{k}", "psi", "resolved", offset=2 * k + 1)])
    assert len(incidents.closed) == HISTORY
    assert [r["members"] for r in incidents.closed][0].keys() == {f"feature\x1fc{HISTORY + 2}\x1fpsi"}
    assert Incidents("m").summary() == []


def test_the_status_board_and_page_show_a_models_incidents_open_first():
    """Two partitions' summaries: the open incident first, then the closed one; the page escapes what the
    data named."""
    from stream_monitor.board import StatusBoard
    from stream_monitor.web import render_page

    _, lasting = run(stream(*LASTING))
    _, returned = run(stream(*RETURNING))
    board = StatusBoard("here")
    board.update({("t", 0): (returned.summary(), 0), ("t", 1): (lasting.summary(), 0)})
    rows = board.snapshot()["models"]["fraud"]["incidents"]
    assert [(r["state"], r["partition"]) for r in rows] == [("open", PARTITION), ("closed", PARTITION)]
    page = render_page(board.snapshot())
    assert "<h2>Incidents</h2>" in page and rows[0]["incident"][:12] in page and "4 columns drifted: amount (PSI" in page
    forged = Incidents("m")
    forged.stamp([alert("<script>x</script>", "psi")])
    board.update({("t", 0): ({"models": {"m": {"incidents": forged.summary(), "detectors": []}}}, 0)})
    page = render_page(board.snapshot())
    assert "<script>x" not in page and "&lt;script&gt;x" in page
