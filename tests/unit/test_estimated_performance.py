"""Performance before labels, in the engine: a model's joined pairs calibrate its scores, then each window of
predictions gives estimated accuracy, precision, recall and F1 and an ``estimated_performance`` alert when one
falls below the reference's range (pure, no I/O: :class:`stream_monitor.partition.ModelMonitor` itself)."""

from __future__ import annotations

import pytest

import numpy as np

from stream_monitor import statecodec
from stream_monitor.config import parse_config
from stream_monitor.events import InferenceEvent, LabelEvent
from stream_monitor.join import JoinResult, prediction_record
from stream_monitor.partition import ModelMonitor
from tests.support import run_model

REFERENCE_PAIRS, QUIET, SHIFTED = 2000, 3000, 3000


def config(**estimated):
    detectors = {"psi": {"window": 1000}, **({"estimated_performance": estimated} if estimated else {})}
    return parse_config({"models": {"credit": {"decisions": "partition",
                                               "reference": {"events": 1000}, "detectors": detectors}}}).models["credit"]


def stream(seed: int = 7, shift: bool = True) -> list[tuple]:
    """(offset, event, join) of a calibrated classifier (score = sigmoid(3x), the label drawn with that
    probability): the first pairs labelled at once (the label came first), then unlabelled predictions;
    with ``shift``, x moves from ±1.5 (where the model is sure) to around 0 (where it is not) at
    ``REFERENCE_PAIRS + QUIET``; the shifted events' labels come last."""
    rng = np.random.default_rng(seed)
    out, late = [], []
    for k in range(REFERENCE_PAIRS + QUIET + SHIFTED):
        shifted = shift and k >= REFERENCE_PAIRS + QUIET
        x = rng.normal(0, 0.25) if shifted else rng.choice([-1.5, 1.5]) + rng.normal(0, 0.5)
        score = float(1 / (1 + np.exp(-3 * x)))
        truth = int(rng.random() < score)
        event = InferenceEvent(f"e{k}", "credit", 1_000 * k, {"x": float(x)}, score, None)
        out.append((k, event, JoinResult("joined", {"label": truth, "t": None}) if k < REFERENCE_PAIRS else None))
        if shifted:
            late.append((event, truth))
    for event, truth in late:  # the labels of the shifted events, after every prediction
        record = prediction_record(event.score, None, event.timestamp_ms)
        out.append((len(out), LabelEvent(event.event_id, "credit", None, truth), JoinResult("joined", record)))
    return out


run = run_model  # (offset, event, join) items through a ModelMonitor in batches


def estimated(alerts) -> list[tuple]:
    return [(a.offset, a.status, a.name, a.severity) for a in alerts if a.signal == "estimated_performance"]


def test_a_shift_into_an_unsure_region_is_announced_before_its_first_label():
    items = stream()
    first_shifted_label = REFERENCE_PAIRS + QUIET + SHIFTED
    assert isinstance(items[first_shifted_label][1], LabelEvent)
    alerts = run(ModelMonitor(config(), None), items, 500)
    # windows of 1,000 from the pair that completed the calibration (offset 1999): the one closing at 5998
    # is the first of shifted events (they start at 5000)
    assert estimated(alerts) == [(5998, "firing", m, "critical") for m in ("accuracy", "precision", "recall", "f1")]
    assert max(a.offset for a in alerts if a.signal == "estimated_performance") < first_shifted_label
    accuracy = next(a for a in alerts if a.signal == "estimated_performance" and a.name == "accuracy")
    assert accuracy.detector == "cbpe" and accuracy.statistic < 0.6 < accuracy.threshold
    assert "estimated accuracy of credit is" in accuracy.message and "no labels needed" in accuracy.message


def test_a_quiet_stream_raises_nothing_and_shows_its_estimate():
    monitor = ModelMonitor(config(), None)
    items = stream(seed=11, shift=False)
    assert estimated(run(monitor, items, 1000)) == []
    info = monitor.summary()["estimated"]
    assert info["windows"] == 6 and info["metrics"]["accuracy"] > info["floors"]["accuracy"]
    rows = [r for r in monitor.summary()["detectors"] if r["signal"] == "estimated_performance"]
    assert [r["name"] for r in rows] == ["accuracy", "precision", "recall", "f1"] and not any(r["firing"] for r in rows)


def test_each_window_estimate_is_a_history_point_and_the_report_draws_it():
    """The report's "Performance (estimated)" section: one point per metric per closed window, with the
    floor as its warning line and the critical line beside it."""
    from stream_monitor import report

    monitor = ModelMonitor(config(), None)
    run(monitor, stream(seed=11, shift=False), 1000)
    points = [p for p in monitor.take_points() if p["signal"] == "estimated_performance"]
    info = monitor.summary()["estimated"]
    assert len(points) == 4 * info["windows"] and {p["name"] for p in points} == {"accuracy", "precision", "recall", "f1"}
    last = [p for p in points if p["name"] == "accuracy"][-1]
    assert last["detector"] == "cbpe" and last["warning"] == pytest.approx(info["floors"]["accuracy"])
    assert last["critical"] < last["warning"] < last["statistic"]
    assert monitor.take_points() == []  # taken once
    page = report.render("m", [dict(p, wall_ms=1_800_000_000_000 + i) for i, p in enumerate(points)], 1_799_999_000_000,
                         1_800_000_100_000, None,
                         generated_ms=0)
    section = page[page.index("Performance (estimated)"):]
    assert "<svg" in section[:20_000] and "accuracy" in section[:20_000]


def test_enabled_false_turns_it_off():
    monitor = ModelMonitor(config(enabled=False), None)
    assert estimated(run(monitor, stream(), 500)) == []
    assert monitor.estimated is None and monitor.summary()["estimated"] is None


def test_batch_cuts_and_a_restore_midway_give_the_same_alerts():
    items = stream()
    whole = run(ModelMonitor(config(), None), items, len(items))
    first = ModelMonitor(config(), None)
    cut = run(first, items[:4321], 97)
    state = statecodec.decode(statecodec.encode(first.snapshot()))  # as stored
    second = ModelMonitor(config(), None)
    assert second.restore(state) is None
    cut += run(second, items[4321:], 1)
    assert [a.alert_id for a in cut] == [a.alert_id for a in whole]
    assert estimated(cut) == estimated(whole) != []
    once = ModelMonitor(config(), None)
    run(once, items, 1000)
    assert statecodec.encode(second.snapshot()["estimated"]) == statecodec.encode(once.snapshot()["estimated"])


def test_a_state_with_other_settings_calibrates_afresh():
    first = ModelMonitor(config(), None)
    run(first, stream()[:3000], 500)
    assert first.estimated.calibrated
    other = ModelMonitor(config(window=500), None)
    other.restore(statecodec.decode(statecodec.encode(first.snapshot())))
    assert other.estimated is not None and not other.estimated.calibrated


def test_the_estimate_is_shown_beside_the_realized_metrics_on_the_page_and_in_the_metrics():
    from prometheus_client import CollectorRegistry

    from stream_monitor.board import StatusBoard
    from stream_monitor.metrics import Metrics, PartitionView
    from stream_monitor.partition import PartitionMonitor
    from stream_monitor.web import render_page

    detectors = {"psi": {"window": 1000}}
    full = parse_config({"models": {"credit": {"decisions": "partition",
                                               "reference": {"events": 1000}, "detectors": detectors}}})
    partition = PartitionMonitor(full, 0, {})
    items = stream()
    for start in range(0, len(items), 1000):
        partition.process_batch([(o, e, j) for o, e, j in items[start:start + 1000]])
    summary = partition.summary()
    model = summary["models"]["credit"]
    assert model["performance"]["pairs"] == REFERENCE_PAIRS + SHIFTED  # the realized, once the labels came
    estimate = model["estimated"]["metrics"]
    assert estimate["accuracy"] < model["estimated"]["floors"]["accuracy"]

    board = StatusBoard("here")
    board.update({("ml.inference", 0): (summary, 0)})
    page = render_page(board.snapshot())
    performance_area = page.split("Performance over the last labelled predictions")[1]
    assert "Performance estimated from the scores (last 1,000 predictions, no labels needed)" in performance_area
    assert "below its range" in performance_area

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.partitions.source = lambda: [PartitionView("ml.inference", 0, summary, 5, 5)]
    labels = {"model": "credit", "metric": "accuracy"}
    assert registry.get_sample_value("stream_monitor_estimated_performance", labels) == estimate["accuracy"]
    assert registry.get_sample_value("stream_monitor_performance", labels) == model["performance"]["accuracy"]
    firing = registry.get_sample_value("stream_monitor_episodes_firing", {
        "model": "credit", "signal": "estimated_performance", "detector": "cbpe"})
    assert firing == 4


def test_status_prints_the_estimate_beside_the_realized_metrics(tmp_path, monkeypatch, capsys):
    """``stream-monitor status`` over a stored partition summary (Redis and the broker stand-ins: what they
    return is what the command formats)."""
    from stream_monitor import cli
    from stream_monitor.partition import PartitionMonitor
    from tests.support import stored_status

    detectors = {"psi": {"window": 1000}}
    full = parse_config({"models": {"credit": {"decisions": "partition",
                                               "reference": {"events": 1000}, "detectors": detectors}}})
    partition = PartitionMonitor(full, 0, {})
    items = stream()
    for start in range(0, len(items), 1000):
        partition.process_batch([(o, e, j) for o, e, j in items[start:start + 1000]])
    models = partition.summary()["models"]

    stored_status(monkeypatch, models, len(items))
    path = tmp_path / "config.toml"
    path.write_text('[models.credit]\ndecisions = "partition"\n[models.credit.reference]\nevents = 1000\n'
                    '[models.credit.detectors.psi]\nwindow = 1000\n')
    assert cli.main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    realized = next(line for line in out.splitlines() if "over the last labelled predictions" in line)
    estimated = next(line for line in out.splitlines() if "estimated from the scores" in line)
    assert out.index(realized) < out.index(estimated)
    assert "performance estimated from the scores over the last 1,000 predictions: accuracy 0." in estimated
    assert estimated.count("(below its range)") == 4


def test_replay_of_json_messages_raises_valid_estimated_performance_alerts():
    """The same stream as JSON messages through ``replay`` (its in-memory join: the predictions first, each
    reference label right after its prediction, the shifted events' labels last)."""
    import json
    from pathlib import Path

    import jsonschema
    import orjson

    from stream_monitor.replay import replay_alerts

    lines = []
    for _, event, join in stream():
        if isinstance(event, LabelEvent):
            lines.append(orjson.dumps({"event_id": event.event_id, "model_id": "credit", "label": event.label}))
            continue
        lines.append(orjson.dumps({"event_id": event.event_id, "model_id": "credit", "timestamp": event.timestamp_ms / 1000,
                                   "features": dict(event.features), "prediction": {"score": event.score}}))
        if join is not None:
            lines.append(orjson.dumps({"event_id": event.event_id, "model_id": "credit", "label": join.other["label"]}))
    full = parse_config({"models": {"credit": {"decisions": "partition",
                                               "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}}})
    alerts = [a for a in replay_alerts(full, lines, {}) if a.signal == "estimated_performance"]
    first_late_label = next(i for i, line in enumerate(lines) if b'"e5000"' in line and b'"label"' in line)
    assert [(a.status, a.name) for a in alerts] == [("firing", m) for m in ("accuracy", "precision", "recall", "f1")]
    assert all(a.offset < first_late_label for a in alerts)
    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "alert.json").read_text())
    for alert in alerts:
        jsonschema.validate(alert.to_dict(0), schema)


def test_the_estimate_is_one_test_of_the_budget_and_takes_the_models_share_once_the_reference_is_built():
    """Calibrated before the reference is built (at the config's share: labels, performance, the estimate),
    the estimate's floors move to the model's share with the reference, as if calibrated at it."""
    from stream_monitor.calibration import model_tests, split
    from stream_monitor.cbpe import budget_z
    from stream_monitor.merge import model_share, share_before_reference

    detectors = {"psi": {"window": 1000}, "estimated_performance": {"reference_pairs": 500, "window": 500}}
    model = parse_config({"models": {"credit": {"decisions": "partition", "reference": {"events": 1500},
                                                "detectors": detectors}}}).models["credit"]
    monitor = ModelMonitor(model, None)
    items = stream()
    run(monitor, items[:1000], 250)
    assert monitor.reference is None and monitor.estimated.calibrated
    early = share_before_reference(model)
    assert early == split(0.1, model_tests([], True, model.detectors, estimate=True)) == 0.1 / 5
    assert monitor.estimated.settings["budget"] == early
    run(monitor, items[1000:2000], 250)
    share = model_share(model, monitor.reference)
    # x and the score (8 each), labels 3, performance 1, the estimate 1; one numeric feature: no joint test
    assert monitor.share == share == split(0.1, 8 + 8 + 3 + 1 + 1)
    estimate = monitor.estimated
    assert estimate.settings["budget"] == share and estimate.z == budget_z(share, 500)
    assert all(f["floor"] == f["mean"] - estimate.z * f["sd"] for f in estimate.floors.values())
    # the same floors whatever the batch cuts, and across a restore
    other = ModelMonitor(model, None)
    run(other, items[:700], 700)
    restored = ModelMonitor(model, None)
    restored.restore(statecodec.decode(statecodec.encode(other.snapshot())))
    run(restored, items[700:2000], 97)
    assert statecodec.encode(restored.snapshot()["estimated"]) == statecodec.encode(monitor.snapshot()["estimated"])
