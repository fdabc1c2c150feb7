"""Per-segment realized performance: the model's floors on each top segment's joined pairs (the label's
record carries its prediction's segment values), per partition and decided by the model (its segments'
pair counts merged like the model's). One segment's accuracy drops at a known event: that segment's floor
fires at a pinned position, the model-wide floor does not."""

from __future__ import annotations

from functools import lru_cache

from stream_monitor.config import parse_config
from stream_monitor.events import InferenceEvent, LabelEvent
from stream_monitor.join import MemoryJoin, join_op, kept_columns, performance_settings
from stream_monitor.partition import PartitionMonitor
from stream_monitor.state import decode_state, encode_state

from ..support import SEGMENT_DROP_AT, model_cluster, segment_labelled_stream as stream, validator

FR = {"country": "FR"}
FEATURES = {"amount": "numeric", "country": "categorical"}
PERFORMANCE = {"task": "classification", "window": 1000, "floors": {"accuracy": 0.85}}


def config(decisions: str, segments: dict | None = {"columns": ["country"], "top_k": 3}):
    table = {"decisions": decisions, "reference": {"events": 5000}, "detectors": {"psi": {"window": 5000}},
             "features": FEATURES, "performance": PERFORMANCE}
    if decisions == "model":
        table.update(merge_bucket_seconds=1.0, merge_lateness_seconds=1.0)
    if segments is not None:
        table["segments"] = segments
    return parse_config({"models": {"m": table}})


def run(monitor: PartitionMonitor, items: list[tuple], cut: int = 1000, start: int = 0) -> list:
    alerts = []
    for first in range(start, len(items), cut):
        alerts += monitor.process_batch([(first + i, e, join) for i, (e, join) in enumerate(items[first:first + cut])])
    return alerts


def performance(alerts) -> list[tuple]:
    return [(a.offset, a.status, a.name, a.detector, a.segment, round(a.statistic, 3)) for a in alerts
            if a.signal == "performance"]


@lru_cache(maxsize=None)
def partition_run(cut: int = 1000, restart_at: int | None = None):
    items = stream(45_000, 5)
    monitor = PartitionMonitor(config("partition"), 0, {})
    if restart_at is None:
        return tuple(run(monitor, items, cut)), monitor
    alerts = run(monitor, items[:restart_at], cut)
    again = PartitionMonitor(config("partition"), 0, {})
    again.restore(decode_state(encode_state(monitor.snapshot())))
    return tuple(alerts + run(again, items, cut, restart_at)), again


def test_one_segments_accuracy_drop_fires_its_floor_and_not_the_models():
    alerts, monitor = partition_run()
    items = stream(45_000, 5)
    # FR's rolling accuracy over its last 1,000 pairs falls below 0.85 with the label of e32311 (about 350 of
    # FR's pairs after the drop at e30000); model-wide only the error stream's ADWIN (a point detector) sees
    # the change, the model's accuracy (about 0.887 after it) stays above its floor
    assert performance(alerts) == [(64_923, "firing", "accuracy", "floor", FR, 0.844),
                                   (67_499, "firing", "error_rate", "adwin", None, 0.118),
                                   (77_499, "resolved", "error_rate", "adwin", None, 0.113)]
    assert not [a for a in alerts if a.detector == "floor" and a.segment is None]
    fired = alerts[0]
    assert isinstance(items[fired.offset][0], LabelEvent) and items[fired.offset][0].event_id == "e32311"
    assert SEGMENT_DROP_AT < 32_311
    assert fired.message.startswith("accuracy of m[country=FR] is 0.844, below its floor 0.85")
    validator("alert.json").validate(fired.to_dict(0))
    fr = next(s for s in monitor.models["m"].summary()["segments"] if s["segment"] == FR)
    assert [(r["signal"], r["name"], r["detector"]) for r in fr["firing"]] == [("performance", "accuracy", "floor")]


def test_batch_cuts_and_a_restore_change_nothing():
    alerts, _ = partition_run()
    assert [a.alert_id for a in partition_run(613, 41_234)[0]] == [a.alert_id for a in alerts]


def test_without_the_drop_nothing_fires():
    monitor = PartitionMonitor(config("partition"), 0, {})
    assert [a for a in run(monitor, stream(45_000, 5, drop_at=None)) if a.detector == "floor"] == []


def test_pairs_whose_prediction_did_not_keep_the_segment_count_model_wide_only():
    monitor = PartitionMonitor(config("partition"), 0, {})
    assert performance(run(monitor, stream(45_000, 5, kept=False))) == [
        (67_499, "firing", "error_rate", "adwin", None, 0.118), (77_499, "resolved", "error_rate", "adwin", None, 0.113)]
    assert monitor.models["m"].performance.pairs_seen == 44_700
    # each segment's columns (amount's and the score's window tests), no performance
    assert all(s["detectors"] == 12 for s in monitor.models["m"].summary()["segments"])


def test_the_join_keeps_the_segment_columns_with_the_prediction():
    cfg = parse_config({"models": {"m": {"features": FEATURES, "segments": {"columns": ["country"]},
                                         "fairness": {"attributes": ["country"]}}, "other": {}}})
    assert kept_columns(cfg) == {"m": ("country",)}
    settings, kept = performance_settings(cfg), kept_columns(cfg)
    joiner = MemoryJoin(settings)
    event = InferenceEvent("e1", "m", 5, {"country": "FR", "amount": 1.0}, 0.7, None)
    joiner.run([join_op(event, "a", settings, kept)])
    joined = joiner.run([join_op(LabelEvent("e1", "m", 9, 1), "b", settings, kept)])[0]
    assert joined.other["g"] == {"country": "FR"}


@lru_cache(maxsize=None)
def merged(partitions: int, cut: int = 1000, restart_every: int | None = None):
    return model_cluster(config("model"), stream(45_000, 5), partitions, cut, restart_every)


def test_decided_by_the_model_the_segments_floor_fires_once_with_the_same_id_for_1_and_3_partitions():
    one, state = merged(1)
    three, _ = merged(3)
    # FR's performance windows of 1,000 of its pairs (by their labels' time): the one of buckets 26–32 (labels
    # of e26000 to e32999, the drop at e30000) has an accuracy of 0.826; the model's windows stay above 0.85
    # (model-wide only the error stream's ADWIN, a point detector, fires: its partition and offset depend on
    # the partitioning)
    fired = [(a.status, a.name, a.detector, a.segment, a.window["first_bucket"] % 1000,
              a.window["last_bucket"] % 1000, round(a.statistic, 3)) for a in one if a.detector == "floor"]
    assert fired == [("firing", "accuracy", "floor", FR, 26, 32, 0.826)]
    assert [a.detector for a in one if a.segment is None] == ["adwin"]
    segment_ids = [a.alert_id for a in one if a.segment is not None]
    assert [a.alert_id for a in three if a.segment is not None] == segment_ids
    assert [a.alert_id for a in merged(3, 613, restart_every=7)[0] if a.segment is not None] == segment_ids
    assert one[0].message.startswith("accuracy of m[country=FR] is 0.826, below its floor 0.85")
    validator("alert.json").validate(one[0].to_dict(0))
    assert {k: v["windows"] for k, v in state["segment_performance"].items()} == {"s0": 13, "s1": 9, "s2": 5, "s3": 8}


def test_status_and_metrics_show_each_segments_events_performance_and_firing():
    from prometheus_client import CollectorRegistry

    from stream_monitor.metrics import Metrics, PartitionView

    _, monitor = partition_run()
    summary = monitor.summary()
    fr = next(s for s in summary["models"]["m"]["segments"] if s["segment"] == FR)
    # FR's events and joined pairs since the reference (the pairs: of its labels arrived by then)
    assert (fr["events"], fr["performance"]["pairs"], fr["performance"]["accuracy"]) == (6139, 6121, 0.704)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.partitions.source = lambda: [PartitionView("in", 0, summary, 5, 5)]
    labels = {"model": "m", "segment": "country=FR"}
    assert registry.get_sample_value("stream_monitor_segment_events", labels) == fr["events"]
    assert registry.get_sample_value("stream_monitor_segment_detectors_firing", labels) == 1
    assert registry.get_sample_value("stream_monitor_segment_performance", {**labels, "metric": "accuracy"}) == \
        fr["performance"]["accuracy"] < 0.85
    assert registry.get_sample_value("stream_monitor_segment_detectors_firing",
                                     {"model": "m", "segment": "country=__rest__"}) == 0


def test_status_prints_each_segments_realized_performance(monkeypatch, tmp_path, capsys):
    from stream_monitor import cli

    from ..support import stored_status

    _, monitor = partition_run()
    stored_status(monkeypatch, monitor.summary()["models"], 90_000)
    path = tmp_path / "config.toml"
    path.write_text('[models.m]\ndecisions = "partition"\nfeatures = { amount = "numeric", country = "categorical" }\n'
                    '[models.m.segments]\ncolumns = ["country"]\ntop_k = 3\n')
    assert cli.main(["status", "--config", str(path)]) == 0
    fr = next(line for line in capsys.readouterr().out.splitlines() if "segment country=FR: " in line)
    # the rolling accuracy now, and the floor's statistic at its last evaluation (every 100 pairs)
    assert fr == ("  segment country=FR: 6,139 events, accuracy 0.704 over 6,121 pairs, FIRING performance "
                  "accuracy floor 0.702 (partition 0)")


def test_a_change_of_the_performance_settings_restarts_the_segments_performance_with_the_models():
    _, monitor = partition_run()
    changed = parse_config({"models": {"m": {**{"decisions": "partition", "reference": {"events": 5000},
                                                 "detectors": {"psi": {"window": 5000}}, "features": FEATURES,
                                                 "segments": {"columns": ["country"], "top_k": 3}},
                                              "performance": {**PERFORMANCE, "floors": {"accuracy": 0.8}}}}})
    again = PartitionMonitor(changed, 0, {})
    again.restore(decode_state(encode_state(monitor.snapshot())))
    segments = again.models["m"].segments
    assert again.models["m"].performance.pairs_seen == 0 and segments.performance_columns() == []
    kept = PartitionMonitor(config("partition"), 0, {})
    kept.restore(decode_state(encode_state(monitor.snapshot())))
    assert len(kept.models["m"].segments.performance_columns()) == 4
