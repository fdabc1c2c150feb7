"""A model's incidents and retraining requests decided in its merge (decisions = "model"), without I/O.

The model-level alerts of one change carry one incident, named by the model window it opened in, so
one partition and four give the same incident and the same retraining request id; the merge's steps,
a restore of its state and a state saved before incidents were merged change nothing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import orjson
from jsonschema import Draft202012Validator

from stream_monitor.board import StatusBoard
from stream_monitor.config import parse_config
from stream_monitor.events import alert_id
from stream_monitor.merge import (incident_id, incidents_summary, merge_step, requests_summary,
                                  window_alert_id)
from stream_monitor.metrics import PartitionCollector
from stream_monitor.replay import replay_rows
from stream_monitor.web import render_page
from stream_monitor.synthetic import generate

from ..support import (MERGE_BUCKET_MS as BUCKET_MS, MERGE_MODEL as MODEL, MERGE_SETTINGS as SETTINGS,
                       merge_decoded as decoded, merge_reference as reference, merge_stream as stream, run_partitions,
                       spread)

RETRAINING = parse_config({"models": {MODEL: {**SETTINGS, "retraining": {"min_drifted_features": 2,
                                                                         "cooldown_seconds": 0}}}})
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "retraining_request.json").read_text())


def merged(by_partition, state=None):
    return merge_step(RETRAINING.models[MODEL], reference(), state, run_partitions(by_partition), BUCKET_MS,
                      retraining=True)


def test_one_drift_over_four_partitions_is_one_incident_with_the_one_partition_id():
    events = stream(6000, 3000)  # the change at event 3000, t = 30 s: the model window of buckets 30…39
    start = events[0].timestamp_ms // BUCKET_MS
    one, four = merged({0: list(events)}), merged(spread(events, 4))
    expected = incident_id(MODEL, start + 30)
    for result in (one, four):
        assert len(result.alerts) == 10 and {a.incident for a in result.alerts} == {expected}
        assert result.state["incidents"]["open"]["id"] == expected  # the drift lasts to the end
        assert [line.split(" (")[0] for line in result.incident_lines] == [
            f"incident {expected[:12]} on model {MODEL}: 4 columns drifted: amount"]
    # the point firings differ (partition, offset) but open the same incident: the window they fell in
    assert [(a.partition, a.offset) for a in one.alerts[:4]] == [(0, 3037), (0, 3062), (0, 3135), (0, 3199)]
    assert [(a.partition, a.offset) for a in four.alerts[:4]] == [(1, 786), (3, 800), (0, 863), (2, 927)]
    # the incident is not an input of alert_id
    for a in four.alerts:
        if a.partition is None:
            assert a.alert_id == window_alert_id(MODEL, a.signal, a.name, a.detector, a.window["first_bucket"],
                                                 a.window["last_bucket"], a.status)
        else:
            assert a.alert_id == alert_id(MODEL, a.signal, a.name, a.detector, a.partition, a.offset, a.status)
    [row] = incidents_summary(MODEL, four.state)
    assert (row["state"], row["alerts"], row["columns"]) == ("open", 10, 4)
    assert [d["name"] for d in row["drivers"]] == ["amount", "score", "country", "label"]


def test_a_change_and_the_return_to_normal_open_and_close_one_incident():
    drifted = stream(4000, 2000)
    normal = tuple(decoded({**d, "event_id": f"back-{i}", "timestamp": d["timestamp"] + 40})
                   for i, d in enumerate(generate(MODEL, 6000, seed=3)))
    start = drifted[0].timestamp_ms // BUCKET_MS
    for by_partition in ({0: list(drifted + normal)}, spread(drifted + normal, 4)):
        result = merged(by_partition)
        assert {a.incident for a in result.alerts} == {incident_id(MODEL, start + 20)}
        assert [a.status for a in result.alerts] == ["firing"] * 10 + ["resolved"] * 10
        assert result.state["incidents"]["open"] is None
        assert [r["id"] for r in result.state["incidents"]["closed"]] == [incident_id(MODEL, start + 20)]
        assert [line.split(":")[0] for line in result.incident_lines] == [
            f"incident {incident_id(MODEL, start + 20)[:12]} on model {MODEL}",
            f"incident {incident_id(MODEL, start + 20)[:12]} on model {MODEL} closed"]


def test_a_stationary_model_opens_no_incident_and_asks_nothing():
    result = merged(spread(stream(8000, None), 4))
    assert result.alerts == [] and result.incident_lines == [] and result.requests == []
    assert result.state["incidents"] == {"open": None, "closed": []}


def test_a_model_mode_drift_asks_for_retraining_once_with_the_same_id_for_one_and_four_partitions():
    events = stream(6000, 3000)
    one, four = merged({0: list(events)}), merged(spread(events, 4))
    assert [r.request_id for r in one.requests] == [r.request_id for r in four.requests]
    [request] = four.requests
    assert (request.reason, request.drifted_features) == ("drift", ("amount", "country"))
    assert request.incident == incident_id(MODEL, events[0].timestamp_ms // BUCKET_MS + 30)
    cited = {a.alert_id: a for a in four.alerts}
    assert [(cited[e["alert_id"]].name, cited[e["alert_id"]].detector) for e in request.evidence] == [
        ("amount", "psi"), ("country", "psi")]  # the window decisions: the same ids however it was partitioned
    assert all(cited[e["alert_id"]].partition is None and e["events"] == 1000 for e in request.evidence)
    record = request.to_dict(1_700_000_000_000)
    Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(record)
    start = events[0].timestamp_ms // BUCKET_MS
    assert record["evidence"]["window"] == {"partitions": [0, 1, 2, 3], "first_offset": None, "last_offset": None,
                                            "first_event_time": "2026-11-27T17:20:30.000Z",
                                            "last_event_time": "2026-11-27T17:20:40.000Z",
                                            "buckets": [start + 30, start + 39]}
    assert record["evidence"]["alerts"][0]["window"] == {
        "first": "2026-11-27T17:20:30.000Z", "last": "2026-11-27T17:20:40.000Z", "first_bucket": start + 30,
        "last_bucket": start + 39, "partitions": [0, 1, 2, 3]}
    assert requests_summary(MODEL, four.state) == [{"request_id": request.request_id, "incident": request.incident,
                                                    "reason": "drift", "event_time_ms": cited[
                                                        request.evidence[-1]["alert_id"]].event_time_ms,
                                                    "evidence": 2, "model_id": MODEL}]
    # without [retraining] topic nothing is asked and nothing kept
    quiet = merge_step(RETRAINING.models[MODEL], reference(), None, run_partitions(spread(events, 4)), BUCKET_MS)
    assert quiet.requests == [] and "retraining" not in quiet.state
    assert [a.incident for a in quiet.alerts] == [a.incident for a in four.alerts]


def test_merge_steps_and_a_restored_state_give_the_same_incidents_and_requests():
    parts = run_partitions(spread(stream(6000, 3000), 4))
    model = RETRAINING.models[MODEL]
    whole = merge_step(model, reference(), None, parts, BUCKET_MS, retraining=True)
    start = min(min(p.partials) for p in parts)
    for cut in (25, 33, 41):  # before the change, inside the window it opens the incident in, after it
        early = [p._replace(watermark_ms=(start + cut + 1) * BUCKET_MS, idle=False,
                            partials={b: x for b, x in p.partials.items() if b <= start + cut}) for p in parts]
        first = merge_step(model, reference(), None, early, BUCKET_MS, retraining=True)
        rest = [p._replace(partials={b: x for b, x in p.partials.items() if b > start + cut}) for p in parts]
        second = merge_step(model, reference(), orjson.loads(orjson.dumps(first.state)), rest, BUCKET_MS,
                            retraining=True)
        assert first.alerts + second.alerts == whole.alerts  # incidents included
        assert [r.request_id for r in [*first.requests, *second.requests]] == [r.request_id for r in whole.requests]
        assert second.state == orjson.loads(orjson.dumps(whole.state))
    # the same partials again (their deletion was interrupted): nothing new, not a second request
    again = merge_step(model, reference(), orjson.loads(orjson.dumps(whole.state)), parts, BUCKET_MS,
                       retraining=True)
    assert again.alerts == [] and again.requests == []


def test_a_merge_state_saved_before_incidents_were_merged_restores():
    parts = run_partitions(spread(stream(6000, 3000), 4))
    model = RETRAINING.models[MODEL]
    start = min(min(p.partials) for p in parts)
    early = [p._replace(watermark_ms=(start + 26) * BUCKET_MS, idle=False,
                        partials={b: x for b, x in p.partials.items() if b <= start + 25}) for p in parts]
    first = merge_step(model, reference(), None, early, BUCKET_MS, retraining=True)
    old = {k: v for k, v in orjson.loads(orjson.dumps(first.state)).items() if k not in ("incidents", "retraining")}
    rest = [p._replace(partials={b: x for b, x in p.partials.items() if b > start + 25}) for p in parts]
    second = merge_step(model, reference(), old, rest, BUCKET_MS, retraining=True)
    assert {a.incident for a in second.alerts} == {incident_id(MODEL, start + 30)} and len(second.requests) == 1


def test_replay_stamps_a_model_level_model_with_its_merged_incidents():
    events = stream(6000, 3000)
    alerts = list(replay_rows(RETRAINING, [(i, e) for i, e in enumerate(events)], {MODEL: reference()}))
    assert len(alerts) == 10 and {a.incident for a in alerts} == {
        incident_id(MODEL, events[0].timestamp_ms // BUCKET_MS + 30)}


def test_the_status_page_and_the_gauge_show_the_merged_incident_and_request():
    result = merged(spread(stream(6000, 3000), 4))
    board = StatusBoard("test")
    board.merged(MODEL, {"windows": result.state["windows"], "open_window_events": 0, "episodes": [],
                         "incidents": incidents_summary(MODEL, result.state),
                         "retraining": requests_summary(MODEL, result.state)})
    snapshot = board.snapshot()
    [row] = snapshot["models"][MODEL]["incidents"]
    assert row["partition"] is None and row["incident"] == result.alerts[0].incident
    [request] = snapshot["models"][MODEL]["retraining"]
    assert request["request_id"] == result.requests[0].request_id
    page = render_page(snapshot)
    assert "Retraining requests" in page and result.requests[0].request_id[:12] in page
    assert f"<td>all partitions</td>" in page  # the incident row of a model-level incident
    collector = PartitionCollector(None)
    collector.merged_incidents = lambda: {MODEL: 1}
    [family] = [f for f in collector.collect() if f.name == "stream_monitor_incidents_open"]
    assert [(s.labels, s.value) for s in family.samples] == [({"model": MODEL}, 1)]


def test_a_partition_model_lists_its_last_requests_in_its_summary():
    events = [decoded(d) for d in generate(MODEL, 8000, seed=1, drift_at=3000)]
    config = parse_config({"models": {MODEL: {"decisions": "partition", "reference": {"events": 2000},
                                              "retraining": {"min_drifted_features": 2, "cooldown_seconds": 0}}},
                           "retraining": {"topic": "retrain"}})
    from stream_monitor.partition import PartitionMonitor  # noqa: PLC0415

    monitor = PartitionMonitor(config, 0, {})
    monitor.process_batch([(i, e, None) for i, e in enumerate(events)])
    [request] = monitor.take_requests()
    [row] = monitor.summary()["models"][MODEL]["retraining"]
    assert dataclasses.asdict(request)["request_id"] == row["request_id"]
    assert (row["reason"], row["evidence"], row["incident"]) == ("drift", 2, request.incident)
