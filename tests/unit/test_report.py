"""The report renderer and the history points it reads: pure, no I/O."""

import re

import numpy as np
import pytest

from stream_monitor import history, report
from stream_monitor.config import parse_config
from stream_monitor.partition import PartitionMonitor

from ..support import events

T0 = 1_800_000_000_000


def _window(i, statistic, detector="psi", name="amount", partition=0, shares=True):
    point = {"kind": "window", "model": "fraud", "signal": "feature", "name": name, "detector": detector,
             "statistic": statistic, "warning": 0.1, "critical": 0.25, "partition": partition,
             "offset": 1000 * (i + 1), "event_time_ms": T0 + i * 60_000, "wall_ms": T0 + i * 60_000}
    if shares and detector == "psi":
        point.update(bins=["< 1", "1–2", "2–3", "> 3"], reference=[0.1, 0.4, 0.4, 0.1],
                     current=[0.05, 0.15, 0.4, 0.4])
    return point


def _alert(i, status, severity="critical", detector="psi", name="amount", statistic=0.3):
    return {"kind": "alert", "model": "fraud", "signal": "feature", "name": name, "detector": detector,
            "status": status, "severity": severity, "statistic": statistic, "threshold": 0.25, "partition": 0,
            "offset": 1000 * (i + 1), "event_time_ms": T0 + i * 60_000, "alert_id": f"{detector}{status}{i}",
            "message": f"PSI of fraud.{name} is {statistic}", "wall_ms": T0 + i * 60_000}


def _points():
    points = [_window(i, 0.02 + 0.05 * i) for i in range(8)]
    points += [_window(i, 0.04, detector="ks", shares=False) for i in range(8)]
    points += [_alert(5, "firing"), _alert(7, "resolved", statistic=0.05),
               _alert(6, "firing", severity="warning", detector="adwin", statistic=0.7)]
    points += [{"kind": "window", "model": "fraud", "signal": "performance", "name": "accuracy",
                "detector": "floor", "statistic": 0.9 - 0.01 * i, "warning": 0.85, "critical": 0.85,
                "partition": 0, "offset": 5000 + i, "event_time_ms": None, "wall_ms": T0 + i * 60_000}
               for i in range(8)]
    return points


def _page():
    return report.render("fraud", _points(), T0 - 60_000, T0 + 8 * 60_000, generated_ms=T0 + 8 * 60_000)


def test_the_page_draws_the_reference_against_the_recent_window_as_bars():
    page = _page()
    assert page.count('class="bar reference"') == 4 and page.count('class="bar recent"') == 4
    assert "reference vs window ending" in page


def test_each_statistic_is_a_line_against_its_warning_and_critical_lines():
    page = _page()
    assert page.count('class="statistic"') == 3  # psi, ks, accuracy
    assert page.count('class="threshold warning"') == 2  # the accuracy floor is one limit: one line
    assert page.count('class="threshold critical"') == 3
    assert "Performance (realized)" in page


def test_alerts_are_markers_and_episodes_are_spans():
    page = _page()
    assert page.count('class="marker firing"') == 2  # psi's on its line, adwin's on the column's first chart
    assert page.count('class="marker resolved"') == 1
    assert page.count('class="episode"') == 2
    assert "still firing" in page and "resolved" in page


def test_the_file_loads_nothing_from_the_network():
    page = _page()
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert "http://" not in page and "https://" not in page


def test_text_from_the_stream_is_escaped():
    points = [_window(0, 0.3, name="<img src=x onerror=alert(1)>"),
              _alert(0, "firing", name="<img src=x onerror=alert(1)>")]
    page = report.render("<b>m</b>", points, T0 - 1000, T0 + 1000)
    assert "<img" not in page and "<b>m</b>" not in page


def test_many_categories_are_cut_to_the_largest_bars():
    bins = [f"c{i}" for i in range(200)]
    shares = list(np.full(200, 1 / 200))
    svg = report.distribution_svg(bins, shares, shares)
    assert svg.count('class="bar reference"') == report.MAX_BARS


def test_an_empty_history_still_renders():
    page = report.render("fraud", [], T0, T0 + 1000)
    assert "No alert in this range" in page


def test_points_delivered_twice_count_once():
    points = _points()
    assert history.dedupe(points + points) == history.dedupe(points)
    assert len(history.dedupe(points + points)) == len(points)


def test_episodes_pair_firing_with_resolved():
    spans = history.episodes(_points())
    assert [(s["detector"], s["start"], s["end"]) for s in spans] == [
        ("psi", T0 + 5 * 60_000, T0 + 7 * 60_000), ("adwin", T0 + 6 * 60_000, None)]


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("6h", 21600), ("7d", 604800), ("1h30m", 5400),
                                           ("45s", 45), ("2w", 1209600)])
def test_durations(text, seconds):
    assert history.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "6", "six hours", "-1h", "0h", "1y"])
def test_a_bad_duration_is_an_error_that_says_what_to_write(text):
    with pytest.raises(history.HistoryError, match="duration|zero"):
        history.parse_duration(text)


def test_a_stored_entry_that_is_not_a_point_is_skipped():
    assert history.decode(b"not json") is None and history.decode(b'{"kind": "x"}') is None
    assert history.decode(history.encode(_window(0, 0.1)))["statistic"] == 0.1


def test_the_engine_collects_a_point_per_closed_window_with_the_psi_shares():
    config = parse_config({"models": {"fraud": {"decisions": "partition",
                                                "reference": {"events": 1000}, "detectors": {"psi": {"window": 500}}}}})
    monitor = PartitionMonitor(config, 0, {})
    monitor.process_batch([(o, e, None) for o, e in enumerate(events("fraud", 3000, 2000))])
    points = monitor.take_points()
    psi = [p for p in points if p["detector"] == "psi" and p["signal"] == "feature"]
    names = {p["name"] for p in psi}
    assert names and all(sum(1 for p in psi if p["name"] == n) == 4 for n in names)  # 2,000 events, windows of 500
    assert all(len(p["current"]) == len(p["reference"]) == len(p["bins"]) for p in psi)
    assert all(abs(sum(p["current"]) - 1) < 1e-6 and p["critical"] > p["warning"] > 0 for p in psi)
    assert max(p["statistic"] for p in psi) > max(p["critical"] for p in psi)  # the drift shows
    assert monitor.take_points() == []  # taken once


# --- the status page's pictures of what is firing now -----------------------------------------------------


def _board(drift_at):
    from stream_monitor.board import StatusBoard

    config = parse_config({"models": {"fraud": {"decisions": "partition",
                                                "reference": {"events": 1000}, "detectors": {"psi": {"window": 500}}}}})
    monitor = PartitionMonitor(config, 2, {})
    monitor.process_batch([(o, e, None) for o, e in enumerate(events("fraud", 3000, drift_at))])
    board = StatusBoard("test")
    board.update({("ml.inference", 2): (monitor.summary(), 0)})
    return board.snapshot()


def test_the_status_page_draws_each_firing_column_against_its_reference():
    from stream_monitor.web import render_page

    snapshot = _board(2000)
    pictures = {(p["signal"], p["name"]): p for p in snapshot["pictures"]}
    assert ("feature", "amount") in pictures
    amount = pictures[("feature", "amount")]
    assert amount["partition"] == 2 and "psi" in amount["detectors"] and amount["severity"] == "critical"
    assert len(amount["bins"]) == len(amount["reference"]) == len(amount["current"])
    assert all("shares" not in row for row in snapshot["models"]["fraud"]["detectors"])  # only in the pictures
    page = render_page(snapshot)
    firing_now = page[page.index("<h2>Firing now</h2>"):page.index("</section>", page.index("<h2>Firing now</h2>"))]
    assert firing_now.count("<svg class=\"distribution\"") == len(snapshot["pictures"])
    assert 'class="bar reference"' in firing_now and "fraud.amount" in firing_now


def test_nothing_firing_draws_no_picture():
    from stream_monitor.web import render_page

    snapshot = _board(None)
    assert snapshot["pictures"] == []
    assert "<svg class=\"distribution\"" not in render_page(snapshot)


# --- the writer: never blocks, drops and counts what Redis does not take ------------------------------------


class RefusingPipe:
    def __init__(self, owner):
        self.owner = owner

    def xadd(self, key, fields, maxlen=None, approximate=None):
        self.owner.sent.append((key, fields, maxlen, approximate))

    def execute(self):
        import redis

        if self.owner.refusing:
            raise redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
        self.owner.taken.extend(self.owner.sent)
        self.owner.sent = []


class FakeRedis:
    def __init__(self):
        self.refusing, self.sent, self.taken = True, [], []

    def pipeline(self, transaction=False):
        return RefusingPipe(self)

    def close(self):
        pass


def test_the_history_key_is_under_the_models_hash_tag():
    from redis.crc import key_slot

    from stream_monitor.historystore import history_key

    assert history_key("sm", "fraud") == "sm:history:{fraud}"
    assert key_slot(history_key("sm", "fraud").encode()) == key_slot(b"sm:join:{fraud}:pending")


def test_a_refusing_redis_costs_the_caller_nothing_and_the_points_are_counted_as_dropped(caplog):
    from stream_monitor import historystore

    fake = FakeRedis()
    writer = historystore.HistoryWriter(lambda: fake, "sm", 100, queue_points=50)
    old = historystore.RETRY_SECONDS
    historystore.RETRY_SECONDS = 0.01
    try:
        with caplog.at_level("WARNING", logger="stream_monitor.historystore"):
            for i in range(20):
                writer.add([_window(i, 0.1)])  # returns at once: the thread writes
            writer.add([_window(i, 0.1, name=f"c{i}") for i in range(200)])  # past the queue: oldest dropped
            assert writer.flush(10)
            assert writer.written == 0 and writer.dropped == 220
            fake.refusing = False
            writer.add([_window(99, 0.2)])
            assert writer.flush(10)
    finally:
        historystore.RETRY_SECONDS = old
        writer.close()
    assert writer.written == 1 and fake.taken[-1][0] == "sm:history:{fraud}" and fake.taken[-1][2:] == (100, True)
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("did not take" in w for w in warnings) == 1, "logged once per outage"
    assert sum("takes history points again" in w for w in warnings) == 1


def test_a_column_that_drifted_and_came_back_also_shows_its_worst_window():
    points = [_window(i, v) for i, v in enumerate((0.02, 0.4, 0.5, 0.03))]
    page = report.render("fraud", points, T0 - 60_000, T0 + 4 * 60_000)
    assert page.count('<svg class="distribution"') == 2 and "the worst window (PSI 0.5)" in page
    quiet = report.render("fraud", [_window(i, 0.02) for i in range(4)], T0 - 60_000, T0 + 4 * 60_000)
    assert quiet.count('<svg class="distribution"') == 1


def test_the_rolling_performance_metrics_are_points_too():
    from stream_monitor.join import JoinResult
    from stream_monitor.partition import ModelMonitor

    config = parse_config({"models": {"credit": {"decisions": "partition", "reference": {"events": 1000},
                                                 "performance": {"window": 200, "floors": {"accuracy": 0.7}}}}})
    monitor = ModelMonitor(config.models["credit"], None)
    rng = np.random.default_rng(4)
    from stream_monitor.events import InferenceEvent

    for i in range(600):
        truth = int(rng.random() < 0.3)
        score = float(min(max(truth * 0.6 + rng.random() * 0.4, 0.0), 1.0))
        monitor.process(InferenceEvent(f"e{i}", "credit", None, {"x": 1.0}, score, None), i, 0,
                        JoinResult("joined", {"label": truth, "t": None}))
    points = [p for p in monitor.take_points() if p["signal"] == "performance"]
    floors = [p for p in points if p["detector"] == "floor"]
    rolling = {p["name"] for p in points if p["detector"] == "rolling"}
    assert floors and all(p["name"] == "accuracy" and p["warning"] == 0.7 for p in floors)
    assert rolling and "accuracy" not in rolling  # drawn once, against its floor


def test_data_quality_checks_at_zero_throughout_are_named_not_drawn():
    points = [dict(_window(i, 0.0, detector=check, shares=False), signal="data_quality")
              for i in range(3) for check in ("missing", "non_finite")]
    points += [dict(_window(i, 0.02 * i, detector="out_of_range", shares=False), signal="data_quality")
               for i in range(3)]
    page = report.render("fraud", points, T0 - 60_000, T0 + 4 * 60_000)
    assert page.count('<svg class="series"') == 1 and "at 0 throughout: missing, non_finite" in page
