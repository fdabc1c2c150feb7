"""The status page as a user reads it: how long each firing row has fired, the health banner, ADWIN
against what it is measured by, and the whole group's partitions. Pure: a board fed by the engine
on a synthetic drifting stream (no broker, no Redis), rendered to HTML."""

from __future__ import annotations

import re
import time
from functools import lru_cache

import orjson

from stream_monitor.board import StatusBoard
from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import RawMessage
from stream_monitor.partition import PartitionMonitor
from stream_monitor.synthetic import generate
from stream_monitor.web import ADWIN_CRITICAL_RANKS, PageCache, human_duration, render_page

TOPIC = "ml.inference"
MODEL = {"decisions": "partition", "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}
CONFIG = parse_config({"models": {"fraud": MODEL}})
HEALTHY = {"status": "ok", "ready": True, "problems": [], "redis": "ok", "broker": "ok",
           "broker_unreachable_seconds": None}


@lru_cache(maxsize=None)
def drifted() -> tuple[list[dict], dict]:
    """The alerts (as published) and the partition summary of a fraud stream that drifts at 3000."""
    events = [decode(RawMessage(TOPIC, 0, i, orjson.dumps(d)), frozenset(CONFIG.models))
              for i, d in enumerate(generate("fraud", 6000, seed=0, drift_at=3000))]
    monitor = PartitionMonitor(CONFIG, 0, {})
    detected_ms = int((time.time() - 725) * 1000)  # detected 12 min 5 s ago
    alerts = [a.to_dict(detected_ms) for a in monitor.process_batch([(o, e, None) for o, e in enumerate(events)])]
    return alerts, monitor.summary()


def board_with(summary: dict, alerts: list[dict] = (), health: dict | None = HEALTHY) -> StatusBoard:
    board = StatusBoard("here")
    board.live_lag = lambda: {(TOPIC, 0): 7, (TOPIC, 1): 5}
    if health is not None:
        board.live_health = lambda: health
    for alert in alerts:
        board.alert(alert)
    board.update({(TOPIC, 0): (summary, 7), (TOPIC, 1): ({"partition": 1, "next_offset": 0, "models": {}}, 5)})
    return board


def firing_rows(page: str) -> list[str]:
    return re.findall(r"<tr class=firing>.*?</tr>", page.split("<h2>Firing now</h2>")[1].split("</section>")[0])


def test_each_firing_row_says_how_long_it_has_fired_since_its_alert():
    alerts, summary = drifted()
    page = render_page(board_with(summary, alerts).snapshot())
    rows = firing_rows(page)
    assert rows and "<th>firing for</th>" in page
    assert all("12 min <span class=muted>(since " in row and " UTC)</span>" in row for row in rows), rows[0]


def test_a_row_found_firing_without_its_alert_says_since_when_it_was_seen():
    """Raised by another instance (or before a restart): the page knows only a lower bound, and says so."""
    _, summary = drifted()
    page = render_page(board_with(summary).snapshot())
    assert all("≥ 0 s <span class=muted" in row and "(seen here since " in row for row in firing_rows(page))


def test_durations_read_as_people_say_them():
    assert [human_duration(s) for s in (0, 42, 725, 7260, 90000)] == ["0 s", "42 s", "12 min", "2 h 1 min", "1 d 1 h"]


def test_the_banner_shows_lag_events_per_second_redis_and_the_broker():
    _, summary = drifted()
    board = board_with(summary)
    now = time.monotonic()
    board.processed(0, now=now - 2)
    board.processed(4000, now=now)
    board.group_refresh_seconds = 5.0
    board.group([], owned={(TOPIC, 0), (TOPIC, 1)})
    page = render_page(board.snapshot())
    banner = page.split("<section class=banner id=health>")[1].split("</section>")[0]
    assert "<b>consumer lag (here)</b><span class=num>12 messages</span>" in banner
    assert "<b>events/s</b>2,000" in banner
    assert "<b>Redis</b><span class=ok>reachable</span> <span class=muted>(read " in banner
    assert "<b>broker</b><span class=ok>reachable</span>" in banner
    assert "<b>group</b>2 partitions, 2 here" in banner


def test_a_broker_down_a_failing_redis_and_a_stale_rate_are_said_so():
    _, summary = drifted()
    down = dict(HEALTHY, ready=False, redis="failing", broker="unreachable", broker_unreachable_seconds=90.0,
                problems=["paused: Redis is failing", "paused: the broker has been unreachable for 90 s"])
    board = board_with(summary, health=down)
    board.processed(10, now=time.monotonic() - 60)  # the loop's last sample is a minute old
    page = render_page(board.snapshot())
    banner = page.split("<section class=banner id=health>")[1].split("</section>")[0]
    assert "<b>Redis</b><span class=critical>failing</span>" in banner
    assert "<b>broker</b><span class=critical>unreachable</span> <span class=muted>(since " in banner
    assert "<b>events/s</b><span class=stale>stale: last measured " in banner
    assert "paused: the broker has been unreachable for 90 s" in page


def test_a_failed_group_read_keeps_the_last_view_and_says_redis_is_unreachable():
    _, summary = drifted()
    board = board_with(summary)
    board.group_refresh_seconds = 5.0
    board.group([{"topic": TOPIC, "partition": 2, "next_offset": 40, "saved_at_ms": 1, "models": {}}],
                owned={(TOPIC, 0), (TOPIC, 1)})
    board.group(None, problem="Error 111 connecting to localhost:6379. Connection refused.")
    snapshot = board.snapshot()
    assert snapshot["health"]["group_stale"] and [p["partition"] for p in snapshot["partitions"]] == [0, 1, 2]
    assert "<b>Redis</b><span class=critical>unreachable</span> <span class=muted>(read failed at " \
           in render_page(snapshot)


def test_the_header_counts_two_owned_partitions_as_two():
    _, summary = drifted()
    assert "<span>2 partitions · up" in render_page(board_with(summary).snapshot())


def test_adwin_is_drawn_against_the_reference_rank_with_its_firing_marked():
    """ADWIN has no threshold line: its statistic (the window's mean reference rank) is drawn against 0.5,
    the rank of a column like its reference, on a scale of its own values (not from 0), with the points
    taken while it fired marked; its warning and critical cells say what fires and what is critical."""
    _, summary = drifted()
    adwin = [r for r in summary["models"]["fraud"]["detectors"] if r["detector"] == "adwin" and r["firing"]]
    assert adwin and all(r["baseline"] == 0.5 and r["threshold"] is None for r in adwin)
    board = board_with(summary)
    board.update({(TOPIC, 0): (summary, 7)})  # a second point on the line
    page = render_page(board.snapshot())
    row = next(r for r in re.findall(r"<tr><td>[^<]*</td><td>adwin</td>.*?</tr>", page) if "FIRING" in r)
    assert 'stroke="#8c959f"' in row, "the reference rank's line"
    assert row.count("<circle ") == 2, "both points were taken while firing"
    assert ">any change</span>" in row and "shift ≥ 3 sd" in row
    low, high = ADWIN_CRITICAL_RANKS
    assert round(low, 3) == 0.017 and round(high, 3) == 0.983
    baseline_y = float(re.search(r'y1="([\d.]+)"[^>]*stroke="#8c959f"', row).group(1))
    line_y = [float(p.split(",")[1]) for p in re.search(r'points="([^"]+)"', row).group(1).split()]
    assert all(abs(y - baseline_y) > 20 for y in line_y), "the drift fills the chart's height, not a flat line"


def test_every_partition_of_the_group_is_on_the_page_with_its_detectors():
    """Partitions owned elsewhere come from the group's view (as saved in Redis): listed with their owner
    and last save, their detectors folded into the models' rows as the instance's own are."""
    _, summary = drifted()
    board = StatusBoard("here")
    board.live_lag = lambda: {(TOPIC, 1): 0}
    board.live_health = lambda: HEALTHY
    board.update({(TOPIC, 1): ({"partition": 1, "next_offset": 10, "models": {}}, 0)})
    board.group_refresh_seconds = 5.0
    saved = int(time.time() * 1000)
    board.group([{"topic": TOPIC, "partition": 0, "next_offset": 6000, "saved_at_ms": saved, "dead_letters": 0,
                  "dead_letter_reasons": {}, "models": summary["models"]},
                 {"topic": TOPIC, "partition": 1, "next_offset": 3, "saved_at_ms": saved, "models": {}}],
                owned={(TOPIC, 1)})
    snapshot = board.snapshot()
    assert [(p["partition"], p["owner"]) for p in snapshot["partitions"]] == [(1, "here"), (0, "group")]
    assert snapshot["partitions"][0]["next_offset"] == 10, "its own partition from memory, not from Redis"
    page = render_page(snapshot)
    assert f"<td>{TOPIC}[0]</td><td><span class=muted>another instance</span></td><td class=num>6000</td>" in page
    assert f"<td>{TOPIC}[1]</td><td>this instance</td><td class=num>10</td>" in page
    assert "<b>group</b>2 partitions, 1 here" in page
    assert firing_rows(page), "the other partition's drift is firing on this page too"
    assert "6,000 events" in page


def test_the_page_is_rendered_anew_when_a_health_fact_changes_and_not_otherwise():
    _, summary = drifted()
    health = dict(HEALTHY)
    board = board_with(summary, health=health)
    clock = [0.0]
    cache = PageCache(board, lag_refresh_seconds=1.0, clock=lambda: clock[0])
    first = cache.get("html")
    clock[0] = 5.0
    assert cache.get("html") is first
    health.update(broker="unreachable", broker_unreachable_seconds=3.0)
    clock[0] = 10.0
    assert b"<b>broker</b><span class=critical>unreachable</span>" in cache.get("html")


def test_a_partition_whose_state_does_not_decode_is_a_row_and_a_bug_in_the_read_is_not_blamed_on_redis():
    _, summary = drifted()
    board = board_with(summary)
    board.group_refresh_seconds = 5.0
    board.group([{"topic": TOPIC, "partition": 2, "next_offset": None, "saved_at_ms": 0, "models": {},
                  "problem": "ns:{g|t|2}:state: field 'offset' is 'abc', not a non-negative integer"}],
                owned={(TOPIC, 0), (TOPIC, 1)})
    page = render_page(board.snapshot())
    assert "its stored state does not decode: ns:{g|t|2}:state: field &#x27;offset&#x27; is &#x27;abc&#x27;" in page
    board.group(None, problem="KeyError: 'models'", redis=False)
    banner = render_page(board.snapshot()).split("<section class=banner id=health>")[1].split("</section>")[0]
    assert "<span class=critical>unreachable</span>" not in banner
    assert "<span class=stale>stale: the read failed at " in banner and "KeyError: &#x27;models&#x27;" in banner


def test_adwin_shows_no_statistic_before_its_window_has_a_value():
    """Right after the reference is built ADWIN's window is empty: its row has no statistic (and so no
    point on its chart), not a mean rank of 0 that would draw as a drop."""
    events = [decode(RawMessage(TOPIC, 0, i, orjson.dumps(d)), frozenset(CONFIG.models))
              for i, d in enumerate(generate("fraud", 1000, seed=0))]
    monitor = PartitionMonitor(CONFIG, 0, {})
    monitor.process_batch([(o, e, None) for o, e in enumerate(events)])
    rows = [r for r in monitor.summary()["models"]["fraud"]["detectors"] if r["detector"] == "adwin"]
    assert rows and all(r["statistic"] is None for r in rows)


def test_a_partition_read_from_redis_and_then_assigned_here_is_shown_once_as_ours():
    board = StatusBoard("here")
    board.group([{"topic": TOPIC, "partition": 0, "next_offset": 5, "saved_at_ms": 1, "models": {}}])  # before the join
    board.update({(TOPIC, 0): ({"partition": 0, "next_offset": 9, "models": {}}, 0)})
    assert [(p["partition"], p["owner"], p["next_offset"]) for p in board.snapshot()["partitions"]] == [(0, "here", 9)]
