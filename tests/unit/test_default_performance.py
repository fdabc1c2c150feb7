"""Ground truth on by default: labels of a model with no ``[models.<id>.performance]`` table are joined
and its performance is monitored, with the task inferred from its predictions (pure, no I/O: the
in-memory join of ``replay`` and the engine itself)."""

from __future__ import annotations

import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.errors import ConfigError
from stream_monitor.events import InferenceEvent, LabelEvent
from stream_monitor.join import JoinResult, performance_settings
from stream_monitor.partition import ModelMonitor
from stream_monitor.performance import infer_task
from stream_monitor.replay import replay_alerts
from stream_monitor.synthetic import labelled

PLAIN = {"decisions": "partition",
         "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}  # no performance table


def config(**performance):
    model = dict(PLAIN, **({"performance": performance} if performance else {}))
    return parse_config({"models": {"credit": model}})


def keys(alerts):
    return [(a.offset, a.status, a.signal, a.name, a.detector) for a in alerts]


def test_labels_without_a_performance_table_raise_performance_alerts():
    """A classifier whose world inverts at inference event 6,000; the user wrote no performance table."""
    events = labelled("credit", 12_000, seed=1, invert_at=6000)
    alerts = list(replay_alerts(config(), (orjson.dumps(e) for e in events), {}))
    # 12210/22210 (12146/22146 before): the budget is now per model, ADWIN's share of it is smaller
    assert keys(alerts) == [(12210, "firing", "performance", "error_rate", "adwin"),
                            (22210, "resolved", "performance", "error_rate", "adwin")]
    stable = labelled("credit", 12_000, seed=1)
    assert list(replay_alerts(config(), (orjson.dumps(e) for e in stable), {})) == []


def test_enabled_false_turns_the_join_off():
    off = config(enabled=False)
    assert performance_settings(off) == {}
    assert list(performance_settings(config())) == ["credit"]
    events = labelled("credit", 12_000, seed=1, invert_at=6000)
    assert list(replay_alerts(off, (orjson.dumps(e) for e in events), {})) == []
    monitor = ModelMonitor(off.models["credit"], None)
    monitor.process(event("e0", 0.3), 0, 0, JoinResult("joined", {"label": 1, "t": None}))
    assert monitor.performance is None and monitor.summary()["performance"] is None


def event(event_id: str, score: float | None = None, label=None) -> InferenceEvent:
    return InferenceEvent(event_id, "credit", None, {"x": 1.0}, score, label)


def joined(monitor: ModelMonitor, score, truth, predicted=None, offset: int = 0):
    return monitor.process(event(f"e{offset}", score, predicted), offset, 0,
                           JoinResult("joined", {"label": truth, "t": None}))


@pytest.mark.parametrize("scores, predicted, task", [
    ([0.1, 0.9, 0.0, 1.0], None, "classification"),  # scores in [0, 1]
    ([0.1, 3.5, 12.0], None, "regression"),  # any other number
    ([-4.0, 3.5], "1", "classification"),  # a predicted label wins
])
def test_the_task_is_inferred_from_the_warm_up_predictions(scores, predicted, task):
    monitor = ModelMonitor(config().models["credit"], None)
    for i, score in enumerate(scores):  # warm-up events: no label yet
        monitor.process(event(f"w{i}", score, predicted), i, 0)
    assert monitor.performance is None, "nothing to monitor before the first pair"
    joined(monitor, 0.5, 1, offset=100)
    assert monitor.performance.task == task
    assert monitor.summary()["performance"]["task"] == f"{task} (inferred)"
    assert monitor.snapshot()["performance"]["task"] == task


def test_the_task_comes_from_the_reference_once_it_is_built():
    monitor = ModelMonitor(config().models["credit"], None)
    for i in range(1000):  # a regression model: the reference's scores run from 0 to 99.9
        monitor.process(event(f"w{i}", i / 10), i, 0)
    assert monitor.reference is not None and monitor.reference.score.maximum == 99.9
    joined(monitor, 0.5, 0.7, offset=2000)  # this pair's score alone would say classification
    assert monitor.performance.task == "regression"


def test_the_pair_itself_decides_when_this_partition_saw_no_prediction():
    """A label event whose inference event landed in another partition: its record is all there is."""
    monitor = ModelMonitor(config().models["credit"], None)
    monitor.process(LabelEvent("e1", "credit", None, 3.0), 0, 0, JoinResult("joined", {"score": 7.5, "label": None,
                                                                                        "t": None}))
    assert monitor.performance.task == "regression" and monitor.performance.pairs_seen == 1


def test_a_configured_task_wins():
    monitor = ModelMonitor(config(task="regression").models["credit"], None)
    assert monitor.performance.task == "regression" and not monitor.performance.inferred
    joined(monitor, 0.5, 1.0)
    assert monitor.summary()["performance"]["task"] == "regression"


def test_the_inferred_task_is_kept_in_the_state_and_later_predictions_do_not_change_it():
    model = config().models["credit"]
    monitor = ModelMonitor(model, None)
    joined(monitor, 3.0, 2.0, offset=0)  # regression, told by the first pair
    restored = ModelMonitor(model, None)
    assert restored.restore(monitor.snapshot()) is None
    assert restored.performance.task == "regression"
    for i, (score, label) in enumerate([(0.2, 0.0), (None, "yes"), (0.9, "no")], start=1):
        joined(restored, score, label, predicted="yes" if score is None else None, offset=i)
    assert restored.performance.task == "regression"
    assert restored.performance.pairs_seen == 2 and restored.performance.unscored == 2
    assert restored.summary()["performance"]["unscored"] == 2


def test_performance_config_keys():
    assert config().models["credit"].performance.enabled is True
    with pytest.raises(ConfigError, match=r"models\.credit\.performance\.enabled"):
        config(enabled="no")
    # an inferred task may carry both: floors apply to a classifier, ceilings to a regression
    both = config(floors={"accuracy": 0.8}, ceilings={"mae": 2.0}).models["credit"]
    monitor = ModelMonitor(both, None)
    joined(monitor, 0.4, 1)
    assert monitor.performance.floors == {"accuracy": 0.8} and monitor.performance.ceilings == {}
    assert "accuracy/floor" in monitor.performance.episodes and "mae/ceiling" not in monitor.performance.episodes
    with pytest.raises(ConfigError, match=r"models\.credit\.performance\.ceilings\.mae"):
        config(task="classification", ceilings={"mae": 2.0})


def test_infer_task_without_predictions_is_none():
    assert infer_task(False, None) is None
    assert infer_task(False, (0.0, 1.0000001)) == "regression"


def test_a_task_set_later_wins_over_the_inferred_one_and_restarts_performance():
    """The inferred task lives in the state; setting ``task`` (or ``enabled = false``) is a settings change
    on restore: the performance detectors restart with the configured task (or stop)."""
    monitor = ModelMonitor(config().models["credit"], None)
    joined(monitor, 0.4, 1)
    assert monitor.performance.task == "classification" and monitor.performance.inferred
    state = monitor.snapshot()
    regression = ModelMonitor(config(task="regression").models["credit"], None)
    said = regression.restore(state)
    assert "performance.task \"\" → regression" in said and said.endswith("performance restarted")
    assert regression.performance.task == "regression" and not regression.performance.inferred
    assert regression.performance.pairs_seen == 0
    off = ModelMonitor(config(enabled=False).models["credit"], None)
    assert "performance.enabled unset → false" in off.restore(state)
    assert off.performance is None
    same = ModelMonitor(config().models["credit"], None)
    assert same.restore(state) is None and same.performance.pairs_seen == 1, "the default: nothing changed"
