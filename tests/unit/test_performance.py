"""Performance detectors on the adapter protocol: pinned decisions and texts, batch cuts, restores.

The streams are seeded; the pins were taken before the performance detectors moved onto the
adapters (the alerts, snapshots and summaries of the old per-pair code and of the adapters were
compared field by field under one-at-a-time feeding, random cuts and restores).
"""

from __future__ import annotations

import random
from functools import lru_cache

import pytest

from stream_monitor.config import parse_config
from stream_monitor.detectors.episode import Episode
from stream_monitor.partition import PartitionMonitor, PerformanceColumn
from stream_monitor.performance import RollingMetrics, pair_row
from stream_monitor.synthetic import labelled

from ..support import joined_items

DETECTORS = {"psi": {"window": 500}, "data_quality": {"enabled": False}, "ks": {"enabled": False},
             "adwin": {"enabled": False}, "page_hinkley": {"enabled": False}}
CLASSIFIER = {"decisions": "partition", "reference": {"events": 500}, "features": {"x": "numeric"},
              "detectors": {**DETECTORS, "resolve_after": 1500, "cooldown": 300},
              "performance": {"task": "classification", "window": 300, "floors": {"accuracy": 0.72, "precision": 0.7}}}
REGRESSOR = {"decisions": "partition", "reference": {"events": 500}, "features": {"x": "numeric"},
             "detectors": {**DETECTORS, "resolve_after": 800},
             "performance": {"task": "regression", "window": 200, "reference_pairs": 300,
                             "ceilings": {"mae": 1.5, "rmse": 2.0}}}


def regression(count: int, seed: int, change_at: int) -> list[dict]:
    """y = 3x + 10 predicted exactly, labelled with noise whose sd triples at ``change_at``; a few
    predictions without a score and labels that are not numbers (pairs that do not count)."""
    rng = random.Random(seed)
    out, waiting = [], []
    for i in range(count):
        x = rng.gauss(0, 1)
        predicted = 3 * x + 10
        noise = rng.gauss(0, 1 if i < change_at else 3)
        out.append({"event_id": f"r-{i}", "model_id": "reg", "timestamp": 1.7e9 + i * 0.01,
                    "features": {"x": round(x, 4)},
                    "prediction": {"score": round(predicted, 4)} if i % 97 else {"label": "odd"}})
        label = round(predicted + noise, 4) if i % 89 else "bad"
        waiting.append((i + 30, {"event_id": f"r-{i}", "model_id": "reg", "label": label,
                                 "timestamp": 1.7e9 + i * 0.01 + 0.3}))
        while waiting and waiting[0][0] <= i:
            out.append(waiting.pop(0)[1])
    return out + [label for _, label in waiting]


@lru_cache(maxsize=None)
def joined(kind: str) -> tuple:
    """(config, the decoded stream with each message's side of the label join)."""
    if kind == "classifier":
        models = {"credit": CLASSIFIER}
        docs = (labelled("credit", 4000, seed=4, invert_at=1500) + labelled("credit", 4000, seed=5)
                + labelled("credit", 1500, seed=6, invert_at=500))
    else:
        models, docs = {"reg": REGRESSOR}, regression(4000, 5, 2000)
    config = parse_config({"models": models})
    return config, joined_items(config, docs)


def run(kind: str, cuts=None, restore_at: int | None = None):
    config, items = joined(kind)
    monitor = PartitionMonitor(config, 0, {})
    alerts, start, rng = [], 0, random.Random(cuts)
    while start < len(items):
        size = len(items) if cuts is None else rng.randint(1, cuts)
        alerts.extend(monitor.process_batch(items[start:start + size]))
        start += size
        if restore_at is not None and start >= restore_at:
            restored = PartitionMonitor(config, 0, {})
            restored.restore(monitor.snapshot())
            monitor, restore_at = restored, None
    return alerts, monitor


def brief(alerts):
    return [(a.offset, a.status, a.severity, a.name, a.detector) for a in alerts if a.signal == "performance"]


def test_classification_error_rate_and_floors_fire_and_resolve_at_pinned_pairs():
    alerts, monitor = run("classifier")
    assert brief(alerts) == [
        (3169, "firing", "critical", "accuracy", "floor"),
        (3169, "firing", "critical", "precision", "floor"),
        (3185, "firing", "critical", "error_rate", "adwin"),  # 0.22 → 0.75 errors: graded by its size
        (6185, "resolved", "critical", "error_rate", "adwin"),
        (8569, "resolved", "critical", "accuracy", "floor"),
        (8569, "resolved", "critical", "precision", "floor"),
        (17149, "firing", "critical", "accuracy", "floor"),
        (17149, "firing", "critical", "precision", "floor"),
        # budget: the two new tests are counted
        (17201, "firing", "critical", "error_rate", "adwin"),  # the cooldown let it fire again
    ]
    assert [a.alert_id[:16] for a in alerts] == [  # budget: the two new tests are counted
        "1d922f4ee1c739e5", "1a364a973f33f7c4", "57505e7bdfc77dbc", "88c74205c84a333b", "1e9152139512aff0",
        "ab92d229f67539cd", "799c79bed45a0734", "7274639bdda4eb4e", "1705179675af9872"]
    accuracy = alerts[0]
    assert (accuracy.statistic, accuracy.threshold, accuracy.reference, accuracy.current) == (
        pytest.approx(0.67333333), 0.72, {"floor": 0.72}, {"accuracy": pytest.approx(0.67333333), "pairs": 300})
    assert accuracy.message == ("accuracy of credit is 0.673, below its floor 0.72, over the last 300 labelled "
                                "predictions; no feature moved in its last closed window (every PSI < 0.1)")
    error_rate, resolved = alerts[2], alerts[3]
    # the level after the change (the new sub-window's error rate) and the size of the rise (Cohen's h)
    assert error_rate.message == ("error rate of credit rose to 0.75 since the change (was 0.22; 1.12 on Cohen's h, "
                                  "critical): the model got worse (concept drift); no feature moved in its last closed window (every PSI < 0.1)")
    assert error_rate.statistic == error_rate.current["error_rate"] == 0.75
    assert set(error_rate.current) == {"error_rate", "effect", "pairs"} and error_rate.threshold == pytest.approx(
        monitor.models["credit"].performance.adapters[0].detector.delta)
    assert resolved.message == "error_rate of credit: no further change for 1500 pairs, resolved"
    assert alerts[4].message.startswith("accuracy of credit is back to ") and alerts[4].message.endswith(
        "(limit 0.72)")
    rows = [(r["name"], r["detector"], r["threshold"], r["firing"], r["last_alert_id"][:16])
            for r in monitor.summary()["models"]["credit"]["detectors"] if r["signal"] == "performance"]
    assert rows == [("error_rate", "adwin", None, True, "1705179675af9872"),  # budget: the two new tests are counted
                    ("accuracy", "floor", 0.72, True, "799c79bed45a0734"),
                    ("precision", "floor", 0.7, True, "7274639bdda4eb4e")]


def test_regression_absolute_error_and_ceilings_fire_at_pinned_pairs():
    alerts, monitor = run("regressor")
    # Page-Hinkley at 4113/5749 (4109/5745 before), threshold 33 (30 before): the budget is now per model,
    # and the error stream's detector has one fifth of it (the model runs five tests)
    assert brief(alerts) == [(4113, "firing", "warning", "absolute_error", "page_hinkley"),
                             (4199, "firing", "critical", "rmse", "ceiling"),
                             (4239, "firing", "critical", "mae", "ceiling"),
                             (5749, "resolved", "warning", "absolute_error", "page_hinkley")]
    assert [a.alert_id[:16] for a in alerts] == ["e474db725fd1b291", "b064e0540179f286", "5f43cc9dd78c1bb6",
                                                 "362ca1cb1af35ec8"]
    drift = alerts[0]
    # the mean absolute error since the change began against the reference errors': 2.3 sd, a warning
    assert drift.message == ("absolute error of reg rose to 2.18 on average since the change began (reference 0.7814 "
                             "± 0.606, 2.3 standard deviations, warning); Page-Hinkley cumulative deviation 33.0 > 33 "
                             "(concept drift); no feature moved in its last closed window (every PSI < 0.1)")
    assert (drift.threshold, drift.reference, drift.current) == (
        33.0, {"threshold": 33.0, "mean": pytest.approx(0.78144076), "std": pytest.approx(0.60640805)},
        {"cumulative_deviation": pytest.approx(33.0160035), "absolute_error": pytest.approx(2.1798675),
         "shift_sd": pytest.approx(2.3060821)})
    assert alerts[1].message == ("rmse of reg is 2.05, above its ceiling 2, over the last 200 labelled predictions"
                                 "; no feature moved in its last closed window (every PSI < 0.1)")
    assert alerts[3].message == "absolute_error of reg: no further change for 800 pairs, resolved"
    info = monitor.summary()["models"]["reg"]["performance"]
    assert info["pairs"] == 3914, "4000 labels; the 86 pairs without a score or a numeric label do not count"


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_cuts_and_a_restore_change_nothing(kind):
    """Random batches of 1–40 events with a snapshot/restore in the middle: the same alerts (ids,
    messages, payloads) and the same final state as the whole stream in one batch."""
    whole, whole_monitor = run(kind)
    cut, cut_monitor = run(kind, cuts=40, restore_at=len(joined(kind)[1]) // 2)
    assert [a.to_dict(0) for a in cut] == [a.to_dict(0) for a in whole]
    assert cut_monitor.snapshot() == whole_monitor.snapshot()
    assert cut_monitor.summary() == whole_monitor.summary()


def test_the_snapshot_keeps_the_performance_layout():
    _, monitor = run("regressor")
    state = monitor.models["reg"].performance.snapshot()
    assert list(state) == ["task", "pairs_seen", "unscored", "window", "delays", "adwin", "page_hinkley",
                           "error_reference", "grid", "grid_events", "episodes", "last"]
    assert (state["task"], state["unscored"]) == ("regression", 86)
    assert list(state["episodes"]) == list(state["last"]) == ["absolute_error/page_hinkley", "mae/ceiling",
                                                              "rmse/ceiling"]
    assert state["adwin"] is None and state["error_reference"] == [] and len(state["grid"]) == 1001


def test_pair_rows_and_the_rolling_window():
    assert pair_row(True, "1", {"label": 1, "score": 0.2}, 0) == (0, 1, 0.2, 1)
    assert pair_row(True, "1", {"score": 0.7}, "1") == (1, 1, 0.7, 0)
    assert pair_row(True, "1", {}, 1) is None, "neither a predicted label nor a score"
    assert pair_row(False, "1", {"score": 2.5}, 4) == (2.5, 4.0, 1.5)
    assert pair_row(False, "1", {"score": 2.5}, "four") is None
    config = parse_config({"models": {"m": {"performance": {"task": "regression", "window": 20}}}})
    rolling = RollingMetrics(config.models["m"].performance, "regression")
    evaluated = rolling.add_many([(0.0, float(i), float(i)) for i in range(45)])
    assert [j for j, _ in evaluated] == [19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43], \
        "once the window is full, every window // 10 pairs"
    assert evaluated[-1][1]["mae"] == pytest.approx(sum(range(24, 44)) / 20)


def test_a_limit_episode_resolves_at_once_and_honours_the_cooldown():
    episode = Episode(cooldown=2)
    assert [t and t.status for t in (episode.limit(True), episode.limit(True), episode.limit(False))] == \
        ["firing", None, "resolved"]
    assert episode.limit(True) is None, "cooling down"
    episode.quiet_ticks(2)
    assert episode.limit(True).status == "firing"
    floor = PerformanceColumn(parse_config({"models": {"credit": CLASSIFIER}}).models["credit"]).adapters[1]
    assert (floor.key, floor.judge(0.5).status, floor.judge(0.71), floor.judge(0.72).status) == (
        "accuracy/floor", "firing", None, "resolved"), "at the floor is back within it"


def test_the_performance_detector_takes_the_models_share_once_the_reference_is_built():
    """A configured task builds the performance detectors at the start, before the reference's columns are
    known (the share of the label and performance tests alone); once the reference is built they take the
    model's share like every column, their state kept (the budget is the model's, split over its tests)."""
    from stream_monitor.calibration import adwin_delta, model_tests, split
    from stream_monitor.merge import model_share

    config, items = joined("classifier")
    model = config.models["credit"]
    monitor = PartitionMonitor(config, 0, {})
    early = monitor.model("credit")
    before = early.performance
    # budget: the two new tests are counted (a classifier's estimated performance, known from the config)
    assert before.budget == split(0.1, model_tests([], True, model.detectors, estimate=True)) == 0.1 / 3
    # labels (PSI), drift, estimate
    _, monitor = run("classifier")
    credit = monitor.models["credit"]
    share = model_share(model, credit.reference)
    # budget: the two new tests are counted (the estimate; one feature: no joint test)
    assert credit.share == share == 0.1 / 6  # x, score, predicted label (PSI only each), labels, performance, estimate
    assert credit.performance.budget == share
    assert credit.performance.adapters[0].detector.delta == adwin_delta(share, model.detectors.adwin.clock)
    assert all(c.budget == share for c in credit.columns)
    assert credit.performance.pairs_seen > 0
