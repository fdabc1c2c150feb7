"""Model-level decisions without I/O: buckets, watermarks, partials, the merge and its episodes.

The partition side (:class:`~stream_monitor.merge.BucketSketch` inside a ``PartitionMonitor``) must
not depend on how the stream is cut into batches or where it was restored; the merge of four
partitions' partials must decide exactly what one partition holding every event decides.
"""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.errors import ConfigError
from stream_monitor.merge import PartitionPartials, add_partial, bucket_of, frontier, merge_step, window_alert_id
from stream_monitor.partition import PartitionMonitor
from stream_monitor.state import decode_state, encode_state
from stream_monitor.synthetic import generate

from ..support import (MERGE_BUCKET_MS as BUCKET_MS, MERGE_CONFIG as CONFIG, MERGE_MODEL as MODEL,
                       MERGE_SETTINGS as SETTINGS, MERGE_WINDOW as WINDOW, merge_decoded as decoded, merge_feed as feed,
                       merge_monitor as monitor, merge_partials_of as partials_of, merge_reference as reference,
                       merge_stream as stream, run_partitions, spread)


def test_bucket_of_counts_late_events_in_the_oldest_open_bucket():
    assert bucket_of(2_500, None, 1_000, None) == 2
    assert bucket_of(2_500, 4_100, 1_000, None) == 4  # bucket 2 is closed: late, never lost
    assert bucket_of(None, 7_300, 1_000, None) == 7  # no time: counted at the watermark
    assert bucket_of(2_500, None, 1_000, 9) == 9  # below the floor an idle partition left


def test_model_mode_takes_a_warm_up_or_a_stored_reference_and_names_the_key():
    assert parse_config({"models": {"m": {"decisions": "model"}}}).models["m"].reference.source == "warmup"
    with pytest.raises(ConfigError, match=r"models\.m\.decisions.*'partition' or 'model'"):
        parse_config({"models": {"m": {"decisions": "merged", "reference": {"source": "stored"}}}})
    with pytest.raises(ConfigError, match=r"models\.m\.merge_bucket_seconds.*> 0"):
        parse_config({"models": {"m": {"merge_bucket_seconds": 0}}})
    assert parse_config({"models": {"m": {}}}).models["m"].decisions == "model"  # the default


def test_the_partition_side_does_not_depend_on_batch_cuts():
    events = stream(3000, 1500)
    whole = monitor()
    feed(whole, events)
    for seed in range(3):
        cut = monitor()
        feed(cut, events, random.Random(seed))
        assert cut.snapshot() == whole.snapshot()
    one = monitor()
    for i, e in enumerate(events):
        one.process(e, i)
    assert one.snapshot() == whole.snapshot()


def test_a_restore_mid_stream_gives_the_same_partials_as_an_uninterrupted_run():
    events = stream(3000, 1500)
    whole = monitor()
    feed(whole, events)
    first = monitor()
    feed(first, events[:1234])
    resumed = monitor()
    resumed.restore(decode_state(encode_state(first.snapshot())))
    feed(resumed, events[1234:], start=1234)
    assert resumed.snapshot() == whole.snapshot()


def test_buckets_close_as_the_watermark_passes_them():
    m = monitor()
    feed(m, stream(1000, None))  # 10 s of events at 100 per second
    pending = m.merge_marks()[MODEL]["partials"]
    # the watermark is 9.99 s − 1 s: buckets 0…7 of the run are closed, 8 and 9 still open
    first = min(pending)
    assert sorted(pending) == list(range(first, first + 8))
    assert [pending[b]["events"] for b in sorted(pending)] == [100] * 8
    m.partials_saved(m.merge_marks())
    assert m.merge_marks()[MODEL]["partials"] == {}
    m.go_idle()
    assert sorted(m.merge_marks()[MODEL]["partials"]) == [first + 8, first + 9]


def test_four_partitions_merge_to_what_one_partition_holding_every_event_decides():
    events = stream(6000, 3000)
    one = merge_step(CONFIG.models[MODEL], reference(), None, run_partitions({0: list(events)}), BUCKET_MS)
    four = merge_step(CONFIG.models[MODEL], reference(), None, run_partitions(spread(events, 4)), BUCKET_MS)
    window = [a for a in one.alerts if a.partition is None]
    assert window and [a.alert_id for a in window] == [a.alert_id for a in four.alerts if a.partition is None]
    assert one.state["windows"] == four.state["windows"] == 6
    assert one.state["window"] is None and four.state["window"] is None
    # one firing per (signal, name, detector) for the change, not one per partition
    firing = Counter((a.signal, a.name, a.detector) for a in four.alerts if a.status == "firing")
    assert firing and set(firing.values()) == {1}
    assert {(a.name, a.detector) for a in window if a.status == "firing"} >= {("amount", "psi"), ("amount", "ks")}
    first = min(a.window["first_bucket"] for a in window if a.name == "amount" and a.detector == "psi")
    # the change is at event 3000, t = 30 s: the first drifting window starts at bucket 30
    assert first - events[0].timestamp_ms // BUCKET_MS == 30
    alert = next(a for a in four.alerts if a.name == "amount" and a.detector == "psi")
    assert alert.alert_id == window_alert_id(MODEL, "feature", "amount", "psi", alert.window["first_bucket"],
                                             alert.window["last_bucket"], "firing")
    assert sum(alert.window["events"].values()) >= WINDOW and len(alert.window["events"]) == 4


def test_a_stationary_model_over_four_partitions_raises_nothing():
    result = merge_step(CONFIG.models[MODEL], reference(), None, run_partitions(spread(stream(8000, None), 4)),
                        BUCKET_MS)
    assert result.alerts == [] and result.state["windows"] == 8


def test_the_merge_is_the_same_whatever_the_order_and_steps_of_its_input():
    parts = run_partitions(spread(stream(6000, 3000), 4))
    model = CONFIG.models[MODEL]
    whole = merge_step(model, reference(), None, parts, BUCKET_MS)
    assert merge_step(model, reference(), None, parts[::-1], BUCKET_MS).alerts == whole.alerts
    # the partials in any order (a Redis hash keeps none)
    shuffled = [p._replace(partials=dict(sorted(p.partials.items(), key=lambda kv: -kv[0]))) for p in parts]
    assert merge_step(model, reference(), None, shuffled, BUCKET_MS).state == whole.state
    # in two steps: the partials up to bucket 25 first (all four partitions' watermarks there), then the rest
    start = min(min(p.partials) for p in parts)
    early = [p._replace(watermark_ms=(start + 26) * BUCKET_MS, idle=False,
                        partials={b: x for b, x in p.partials.items() if b <= start + 25}) for p in parts]
    first = merge_step(model, reference(), None, early, BUCKET_MS)
    assert first.state["last_bucket"] == start + 25
    rest = [p._replace(partials={b: x for b, x in p.partials.items() if b > start + 25}) for p in parts]
    second = merge_step(model, reference(), orjson.loads(orjson.dumps(first.state)), rest, BUCKET_MS)
    assert [a.alert_id for a in first.alerts + second.alerts] == [a.alert_id for a in whole.alerts]
    assert second.state == orjson.loads(orjson.dumps(whole.state))


def test_a_partition_without_a_watermark_holds_back_and_an_idle_one_does_not():
    parts = run_partitions(spread(stream(3000, None), 2), finish=False)
    assert frontier(parts, BUCKET_MS) is not None
    missing = PartitionPartials("in", 2, None, False, {})
    assert frontier(parts + [missing], BUCKET_MS) is None
    assert merge_step(CONFIG.models[MODEL], reference(), None, parts + [missing], BUCKET_MS).buckets == 0
    quiet = PartitionPartials("in", 2, 0, True, {})  # idle since the start: nothing to wait for
    assert frontier(parts + [quiet], BUCKET_MS) == frontier(parts, BUCKET_MS)


def test_a_point_episode_resolves_when_the_model_window_is_back_within_the_reference():
    # drift from event 2000 to 4000, then the data are back to normal
    drifted = stream(4000, 2000)
    normal = tuple(decoded({**d, "event_id": f"back-{i}", "timestamp": d["timestamp"] + 40})
                   for i, d in enumerate(generate(MODEL, 3000, seed=3)))
    result = merge_step(CONFIG.models[MODEL], reference(), None,
                        run_partitions(spread(drifted + normal, 4)), BUCKET_MS)
    points = [a for a in result.alerts if a.detector in ("adwin", "page_hinkley")]
    assert points, "a point detector fired on the drift"
    by_key = {}
    for a in points:
        by_key.setdefault((a.name, a.detector), []).append(a.status)
    for statuses in by_key.values():
        assert statuses == ["firing", "resolved"]
    firing = [a for a in points if a.status == "firing"]
    assert all(a.partition is not None and a.offset is not None for a in firing)
    resolved = [a for a in points if a.status == "resolved"]
    assert all(a.partition is None and a.window["first_bucket"] * BUCKET_MS >= normal[0].timestamp_ms - 1000
               for a in resolved)


def test_partials_add_up_cell_by_cell():
    parts = run_partitions(spread(stream(2000, None), 3))
    one = run_partitions({0: list(stream(2000, None))})[0]
    for bucket, whole in one.partials.items():
        total = {}
        for p in parts:
            if bucket in p.partials:
                add_partial(total, p.partials[bucket])
        assert total["events"] == whole["events"]
        assert total["columns"] == whole["columns"]


def test_replay_decides_a_model_level_model_as_the_merge_of_its_one_stream():
    from stream_monitor.replay import replay_rows  # noqa: PLC0415

    events = stream(6000, 3000)
    alerts = list(replay_rows(CONFIG, [(i, e) for i, e in enumerate(events)], {MODEL: reference()}))
    m = monitor(-1)
    feed(m, events)
    m.go_idle()
    expected = merge_step(CONFIG.models[MODEL], reference(), None, [partials_of(m, "replay")], BUCKET_MS).alerts
    assert [a.alert_id for a in alerts] == [a.alert_id for a in expected]
    assert any(a.partition is None and a.detector == "psi" for a in alerts)


def test_partials_left_behind_by_an_interrupted_deletion_are_not_merged_twice():
    parts = run_partitions(spread(stream(6000, 3000), 4))
    model = CONFIG.models[MODEL]
    first = merge_step(model, reference(), None, parts, BUCKET_MS)
    saved = orjson.loads(orjson.dumps(first.state))
    again = merge_step(model, reference(), saved, parts, BUCKET_MS)  # the same partials: none was deleted
    assert again.alerts == [] and again.buckets == 0 and again.late == 0
    assert again.state == saved
    assert {k: sorted(v) for k, v in again.consumed.items()} == {k: sorted(v) for k, v in first.consumed.items()}


def test_the_status_page_shows_the_model_level_episodes():
    from stream_monitor.board import StatusBoard  # noqa: PLC0415
    from stream_monitor.merge import episodes_summary  # noqa: PLC0415
    from stream_monitor.web import render_page  # noqa: PLC0415

    result = merge_step(CONFIG.models[MODEL], reference(), None, run_partitions(spread(stream(6000, 3000), 4)),
                        BUCKET_MS)
    board = StatusBoard("test")
    board.merges[MODEL] = {"windows": result.state["windows"], "open_window_events": 0,
                           "episodes": episodes_summary(result.state)}
    page = render_page(board.snapshot())
    assert "Model-level decisions" in page and "feature|amount|psi" in page
    assert board.snapshot()["merges"][MODEL]["windows"] == 6


def test_the_p95_latency_ceiling_is_decided_once_for_the_model_over_its_partitions():
    """The latency column's p95 cells add up across partitions: four partitions announce the ceiling's
    breach once, as a window decision with the same id as one partition holding every event."""
    settings = {**SETTINGS, "detectors": {"psi": {"window": WINDOW}, "latency": {"p95_ceiling_ms": 12.0}}}
    config = parse_config({"models": {MODEL: settings}})

    def run(by_partition):
        out = []
        for p, events in sorted(by_partition.items()):
            m = PartitionMonitor(config, p, {MODEL: reference()})
            assert [a for a in feed(m, events) if a.detector == "p95_ceiling"] == []
            m.go_idle()
            out.append(partials_of(m))
        return merge_step(config.models[MODEL], reference(), None, out, BUCKET_MS).alerts

    events = stream(3000, None)  # latency ~ lognormal(2.3, 0.3): p95 ≈ 16 ms, over the 12 ms ceiling
    one = [a for a in run({0: list(events)}) if a.detector == "p95_ceiling"]
    four = [a for a in run(spread(events, 4)) if a.detector == "p95_ceiling"]
    assert [a.status for a in four] == ["firing"]
    assert [a.alert_id for a in one] == [a.alert_id for a in four]
    (alert,) = four
    assert alert.partition is None and alert.signal == "latency" and 14.0 < alert.statistic < 18.0
    assert len(alert.window["events"]) == 4


def test_each_model_window_decided_is_a_history_point_per_statistic():
    result = merge_step(CONFIG.models[MODEL], reference(), None, run_partitions(spread(stream(8000, 4000), 4)),
                        BUCKET_MS)
    psi = [p for p in result.points if p["detector"] == "psi"]
    assert psi and all(p["partition"] is None and p["offset"] is None for p in result.points)
    assert all(len(p["current"]) == len(p["reference"]) == len(p["bins"]) for p in psi)
    columns = [p for p in result.points if p["signal"] != "multivariate"]  # the joint test has its own windows
    assert len({tuple(p["buckets"]) for p in columns}) == result.state["windows"]
    joint = [p for p in result.points if p["signal"] == "multivariate"]
    assert [p["buckets"][1] - p["buckets"][0] + 1 for p in joint] == [50]  # 5,000 complete rows at 100 per second
    firing = {(a.signal, a.name) for a in result.alerts if a.detector == "psi" and a.status == "firing"}
    assert firing and all(max(p["statistic"] for p in psi if (p["signal"], p["name"]) == column) >=
                          min(p["warning"] for p in psi if (p["signal"], p["name"]) == column) for column in firing)
