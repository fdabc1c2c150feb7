"""Per-segment window detectors ([models.<id>.segments]): pinned positions on seeded streams, the rest
segment, batch cuts, snapshots, the budget, and what the alerts carry."""

from __future__ import annotations

import dataclasses
import logging
import re
import zlib
from functools import lru_cache

import orjson

from stream_monitor import cli, history
from stream_monitor.alertmanager import labels_of
from stream_monitor.board import StatusBoard
from stream_monitor.calibration import model_tests, split
from stream_monitor.config import parse_config
from stream_monitor.events import Alert, InferenceEvent, segment_words
from stream_monitor.incidents import episode_key
from stream_monitor.merge import PartitionPartials, merge_step, model_share, window_alert_id
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import NumericReference, ReferenceProfile, build_reference
from stream_monitor.segments import REST, SegmentWarmup, candidate_cap, segment_of, with_segments
from stream_monitor.state import decode_state, encode_state
from stream_monitor.web import render_page

from ..support import FEATURES_BY_COUNTRY as FEATURES, segmented_json, segmented_stream as stream, validator

FR = {"country": "FR"}


def config(segments: dict | None = None, events: int = 5000, **model):
    table = {"decisions": "partition",
             "reference": {"events": events}, "detectors": {"psi": {"window": events}}, "features": FEATURES,
             **model}
    if segments is not None:
        table["segments"] = segments
    return parse_config({"models": {"m": table}})


BY_COUNTRY = {"columns": ["country"], "top_k": 3}


def run(monitor: PartitionMonitor, events: list[InferenceEvent], cut: int = 1000, start: int = 0) -> list[Alert]:
    alerts = []
    for first in range(0, len(events), cut):
        alerts += monitor.process_batch([(start + first + i, e, None)
                                         for i, e in enumerate(events[first:first + cut])])
    return alerts


def pinned(alerts: list[Alert]) -> list[tuple]:
    return [(a.offset, a.status, a.signal, a.name, a.detector, a.segment) for a in alerts]


@lru_cache(maxsize=None)
def spread_in_france() -> tuple[tuple[Alert, ...], dict, list[dict]]:
    monitor = PartitionMonitor(config(BY_COUNTRY), 0, {})
    alerts = run(monitor, stream(110_000, 7, spread_from=50_000))
    return tuple(alerts), monitor.snapshot(), monitor.models["m"].take_points()


def test_a_shift_confined_to_a_segment_of_15_percent_is_announced_for_that_segment_alone():
    alerts, _, points = spread_in_france()
    # FR's second window after the change (the first one holds only a third of it) fires; nothing model-wide
    assert pinned(alerts) == [
        (71457, "firing", "data_quality", "amount", "out_of_range", FR),
        (71457, "firing", "feature", "amount", "psi", FR),
        (104891, "firing", "feature", "amount", "ks", FR)]
    assert all(a.message.startswith(("PSI of m.amount[country=FR]", "KS of m.amount[country=FR]"))
               or "m.amount[country=FR]" in a.message for a in alerts)
    model_wide = [p["statistic"] for p in points if (p["name"], p["detector"]) == ("amount", "psi")]
    assert len(model_wide) == 21 and max(model_wide) < 0.03  # the model's PSI stays under a third of its 0.1 warning


def test_without_segments_the_same_shift_raises_nothing():
    monitor = PartitionMonitor(config(), 0, {})
    assert run(monitor, stream(110_000, 7, spread_from=50_000)) == []


def test_a_stationary_segmented_stream_stays_quiet():
    monitor = PartitionMonitor(config({"columns": ["country"], "top_k": 10}), 0, {})
    assert run(monitor, stream(200_000, 11)) == []
    segments = monitor.models["m"].summary()["segments"]
    assert [s["segment"]["country"] for s in segments] == ["DE", "US", "FR", "GB", "IT", "ES", "NL", REST]  # PL: under 100
    assert sum(s["events"] for s in segments) == 195_000 and not any(s["firing"] for s in segments)


def test_values_past_top_k_and_new_values_fold_into_the_rest():
    monitor = PartitionMonitor(config(BY_COUNTRY), 0, {})
    run(monitor, stream(5000, 3))
    later = [InferenceEvent(f"x{i}", "m", None, {"amount": 0.1, "income": 0.2, "country": country})
             for i, country in enumerate(["FR", "GB", "BR", None, "DE", True])]
    run(monitor, later, start=5000)
    segments = monitor.models["m"].summary()["segments"]
    assert [(s["segment"], s["reference_events"], s["events"]) for s in segments] == [
        ({"country": "DE"}, 1765, 1), ({"country": "US"}, 1210, 0), (FR, 767, 1),
        ({"country": REST}, 1258, 4)]  # GB, BR (never seen), a missing country and true
    assert sum(s["reference_events"] for s in segments) == 5000


def test_a_rare_value_folds_into_the_rest_and_a_frequent_null_is_a_segment_of_its_own():
    profile = with_segments(build_reference("m", stream(5000, 3, missing=0.2), FEATURES),
                            stream(5000, 3, missing=0.2),
                            config({"columns": ["country"], "top_k": 8, "min_events": 150}).models["m"])
    ranked = [(values, p.events) for values, p in profile.segments.top]
    assert ranked == [(("DE",), 1406), ((None,), 1010), (("US",), 985), (("FR",), 614), (("GB",), 371),
                      (("IT",), 258), (("ES",), 156)]
    assert profile.segments.rest.events == 200  # NL and PL, each with fewer than min_events
    assert ReferenceProfile.from_dict(profile.to_dict()) == profile


def test_the_warm_up_keeps_a_bounded_number_of_segment_summaries():
    warmup = SegmentWarmup(("shop",), 5, 100, {"amount": "numeric", "shop": "categorical"})
    for i in range(3000):
        warmup.add(InferenceEvent(f"e{i}", "m", None, {"amount": float(i % 7), "shop": f"s{i % 1000}"}))
    assert len(warmup.candidates) == candidate_cap(5) == 32
    assert sum(s.events for s in warmup.candidates.values()) + warmup.overflow.events == 3000


def test_batch_cuts_and_restores_give_the_same_alerts_and_state():
    events = stream(110_000, 7, spread_from=50_000)
    expected_alerts, expected_state, _ = spread_in_france()
    for cut in (613, 4999):
        monitor = PartitionMonitor(config(BY_COUNTRY), 0, {})
        assert tuple(run(monitor, events, cut)) == expected_alerts
        assert monitor.snapshot() == expected_state
    alerts, monitor = [], PartitionMonitor(config(BY_COUNTRY), 0, {})
    for start, stop in ((0, 2500), (2500, 61_000), (61_000, 110_000)):  # mid-warm-up, mid-window
        alerts += run(monitor, events[start:stop], 1000, start)
        restored = PartitionMonitor(config(BY_COUNTRY), 0, {})
        restored.restore(decode_state(encode_state(monitor.snapshot())))
        assert restored.snapshot() == monitor.snapshot()
        monitor = restored
    assert tuple(alerts) == expected_alerts
    assert monitor.snapshot() == expected_state


def test_a_state_saved_without_segments_restores_and_adding_segments_builds_a_new_reference(caplog):
    events = stream(20_000, 5)
    plain = PartitionMonitor(config(), 0, {})
    run(plain, events[:8000])
    state = decode_state(encode_state(plain.snapshot()))
    assert "segments" not in str(state["models"]["m"].keys())
    unchanged = PartitionMonitor(config(), 0, {})
    unchanged.restore(state)
    assert unchanged.rebaselined == {} and unchanged.snapshot() == plain.snapshot()
    segmented = PartitionMonitor(config(BY_COUNTRY), 0, {})
    with caplog.at_level(logging.WARNING, logger="stream_monitor"):
        segmented.restore(state)
    assert "segments" in segmented.rebaselined["m"] and "warm-up" in segmented.rebaselined["m"]
    run(segmented, events[8000:], start=8000)
    assert [s["events"] for s in segmented.models["m"].summary()["segments"]] == [2476, 1687, 1028, 1809]


def test_each_segmented_window_test_counts_once_in_the_models_budget():
    model = config(BY_COUNTRY).models["m"]
    profile = with_segments(build_reference("m", stream(5000, 3), FEATURES), stream(5000, 3), model)
    # amount, income (numeric: 4 quality rates, PSI, KS each), not the segment column itself
    numeric = [isinstance(r, NumericReference) for _, _, r in profile.columns()]
    assert model_share(model, profile) == split(0.1, model_tests(numeric, True, model.detectors, False, True,
                                                                 [True, True]))
    assert model_share(model, profile) == 0.1 / (8 + 8 + 3 + 3 + 1 + 1 + 12)  # + the label column, performance, joint
    assert model_share(config().models["m"], profile) == 0.1 / 24  # no segments configured: none counted


def test_a_stored_reference_without_segment_profiles_turns_segments_off(caplog):
    stored = {"m": build_reference("m", stream(5000, 3), FEATURES, source="stored")}
    with caplog.at_level(logging.WARNING, logger="stream_monitor"):
        monitor = PartitionMonitor(config(BY_COUNTRY, reference={"source": "stored"}), 0, stored)
        run(monitor, stream(2000, 4))
    assert monitor.models["m"].segments is None
    assert "no per-segment profiles" in caplog.text and "reference build" in caplog.text


def test_segment_alerts_carry_the_segment_in_the_json_the_id_and_the_alertmanager_labels():
    alerts, _, _ = spread_in_france()
    record = alerts[1].to_dict(detected_at_ms=1_700_000_100_000)
    validator("alert.json").validate(record)
    assert record["segment"] == FR
    assert labels_of(record)["segment"] == "country=FR"
    model_wide = Alert(**{**{f: getattr(alerts[1], f) for f in ("status", "severity", "model_id", "signal", "name",
                                                               "detector", "statistic", "threshold", "reference",
                                                               "current", "partition", "offset", "event_time_ms",
                                                               "message")}})
    assert "segment" not in model_wide.to_dict(0) and model_wide.alert_id != alerts[1].alert_id
    assert episode_key("feature", "amount", "psi", FR) != episode_key("feature", "amount", "psi")
    assert alerts[1].incident == alerts[0].alert_id  # one incident of the model


def test_segment_of_reads_the_categories_of_several_columns():
    assert segment_of({"a": 1.0, "b": True, "c": "x"}, ("b", "a", "missing")) == ("true", "1", None)


MODEL_LEVEL = {"columns": ["country"], "top_k": 3}


@lru_cache(maxsize=None)
def stored_with_segments() -> ReferenceProfile:
    events = stream(5000, 3)
    model = config(MODEL_LEVEL, reference={"source": "stored"}, decisions="model").models["m"]
    return with_segments(build_reference("m", events, FEATURES, source="stored"), events, model)


def merged_alerts(partitions: int) -> list[Alert]:
    """The spread-in-France stream keyed by event id over ``partitions`` partitions, each partition's closed
    partials merged in one step (decisions = "model")."""
    cfg = config(MODEL_LEVEL, reference={"source": "stored"}, decisions="model")
    events = stream(110_000, 7, spread_from=50_000)
    parts = []
    for p in range(partitions):
        monitor = PartitionMonitor(cfg, p, {"m": stored_with_segments()})
        mine = [e for e in events if zlib.crc32(e.event_id.encode()) % partitions == p]
        assert run(monitor, mine) == []  # the window decisions are the merge's
        monitor.go_idle()
        mark = monitor.merge_marks()["m"]
        parts.append(PartitionPartials("in", p, mark["watermark"], mark["idle"], mark["partials"]))
    return merge_step(cfg.models["m"], stored_with_segments(), None, parts, 1000).alerts


def test_model_level_decisions_announce_the_segment_once_whatever_the_partitioning():
    one, three = merged_alerts(1), merged_alerts(3)
    assert [(a.signal, a.name, a.detector, a.segment, a.window["first_bucket"] % 1000, a.window["last_bucket"] % 1000)
            for a in one] == [("feature", "amount", "psi", FR, 34, 67),
                              ("data_quality", "amount", "out_of_range", FR, 68, 101),
                              ("feature", "amount", "ks", FR, 68, 101)]
    assert [a.alert_id for a in three] == [a.alert_id for a in one]
    assert len(three[0].window["events"]) == 3 and sum(three[0].window["events"].values()) >= 5000
    assert three[0].alert_id == window_alert_id("m", "feature", "amount", "psi", three[0].window["first_bucket"],
                                                three[0].window["last_bucket"], "firing", FR)
    validator("alert.json").validate(three[0].to_dict(0))


def test_model_level_segment_partials_do_not_depend_on_batch_cuts_or_a_restore():
    cfg = config(MODEL_LEVEL, reference={"source": "stored"}, decisions="model")
    events = stream(30_000, 9)

    def partials(cut: int, restore_at: int | None = None) -> dict:
        monitor = PartitionMonitor(cfg, 0, {"m": stored_with_segments()})
        for start, stop in ((0, restore_at or len(events)), (restore_at or len(events), len(events))):
            run(monitor, events[start:stop], cut, start)
            restored = PartitionMonitor(cfg, 0, {"m": stored_with_segments()})
            restored.restore(decode_state(encode_state(monitor.snapshot())))
            monitor = restored
        monitor.go_idle()
        return monitor.merge_marks()["m"]["partials"]

    whole = partials(1000)
    assert sorted(whole[min(whole)]["segments"]) == ["s0", "s1", "s2", "s3"]
    assert partials(613) == whole and partials(997, restore_at=12_345) == whole


def test_the_history_keeps_a_segments_episode_apart_from_the_columns_own():
    alerts, _, _ = spread_in_france()
    psi = alerts[1]
    model_wide = dataclasses.replace(psi, segment=None, alert_id="")
    points = [history.alert_point(a) for a in (psi, model_wide)]
    assert points[0]["segment"] == FR and "segment" not in points[1]
    assert [(e["name"], e.get("segment")) for e in history.episodes(points, clock="event_time_ms")] == [
        ("amount", FR), ("amount", None)]


def test_the_status_page_lists_each_segment_and_what_of_it_fires():
    monitor = PartitionMonitor(config(BY_COUNTRY), 0, {})
    run(monitor, stream(110_000, 7, spread_from=50_000))
    board = StatusBoard("here")
    board.live_lag = lambda: {("in", 0): 0}
    board.update({("in", 0): (monitor.summary(), 0)})
    segments = board.snapshot()["models"]["m"]["segments"]
    assert [(segment_words(s["segment"]), len(s["firing"])) for s in segments] == [
        ("country=DE", 0), ("country=US", 0), ("country=FR", 3), (f"country={REST}", 0)]
    page = render_page(board.snapshot())
    row = re.search(r"<tr class=firing><td>country=FR</td>.*?</tr>", page).group(0)
    assert "FIRING" in row and "feature amount psi" in row and "(partition 0)" in row
    assert "<td>country=DE</td>" in page and "<span class='badge ok'>ok</span>" in page


def test_reference_build_stores_the_per_segment_profiles_the_config_asks_for(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text('[models.m]\nfeatures = { amount = "numeric", income = "numeric", country = "categorical" }\n'
                    '[models.m.segments]\ncolumns = ["country"]\ntop_k = 3\n')
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(segmented_json(e)) for e in stream(5000, 3)))
    assert cli.main(["reference", "build", "-c", str(path), "--model", "m", "--input", str(events), "--no-store",
                     "--output", str(tmp_path / "ref.json")]) == 0
    assert "3 segments and the rest" in capsys.readouterr().out
    profile = ReferenceProfile.from_dict(orjson.loads((tmp_path / "ref.json").read_bytes()))
    assert [(values, p.events) for values, p in profile.segments.top] == [(("DE",), 1765), (("US",), 1210),
                                                                          (("FR",), 767)]
    assert profile.segments.rest.events == 1258
