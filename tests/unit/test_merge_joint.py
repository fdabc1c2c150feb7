"""Joint drift and estimated performance decided per model (``decisions = "model"``), without I/O.

Each partition adds its rows' fixed-point joint sums and its scored predictions' cells to its bucket
partials (:mod:`stream_monitor.mergejoint`); the merge decides the model's windows. Four partitions keyed
by event id must decide exactly what one partition holding every event decides, once for the model.
"""

from __future__ import annotations

import random
import zlib
from functools import lru_cache

import numpy as np
import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.events import InferenceEvent
from stream_monitor.join import JoinResult
from stream_monitor.merge import PartitionPartials, merge_step, model_share, window_alert_id
from stream_monitor.mergejoint import GRID, estimates, joint_runs, score_cell, window_metrics
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import build_reference
from stream_monitor.state import decode_state, encode_state

MODEL = "m"
START_MS = 1_800_000_000_000  # on a bucket boundary
BUCKET_MS = 1000
PER_SECOND = 100  # events per bucket
QUIET, CHANGED = 20_000, 10_000  # joint stream: the correlation appears at event 20,000 (bucket 200)


def config(**detectors):
    settings = {"decisions": "model", "reference": {"source": "stored"}, "merge_bucket_seconds": 1.0,
                "merge_lateness_seconds": 1.0, "detectors": {"psi": {"window": 1000}, **detectors}}
    return parse_config({"models": {MODEL: settings}})


JOINT_CONFIG = config()
ESTIMATE_CONFIG = config(estimated_performance={"window": 1000, "reference_pairs": 2000})


def correlated(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """n rows of 5 standard normal features; f0 and f1 correlated ``rho`` (every marginal unchanged)."""
    x = rng.standard_normal((n, 5))
    x[:, 1] = rho * x[:, 0] + np.sqrt(1 - rho * rho) * x[:, 1]
    return x


def joint_events(x: np.ndarray, start: int = 0, prefix: str = "e") -> tuple[InferenceEvent, ...]:
    return tuple(InferenceEvent(f"{prefix}{start + i}", MODEL, START_MS + (start + i) * 1000 // PER_SECOND,
                                {f"f{c}": float(v) for c, v in enumerate(row)}) for i, row in enumerate(x))


@lru_cache(maxsize=None)
def joint_reference():
    return build_reference(MODEL, joint_events(correlated(np.random.default_rng(3), 5000, 0.0), prefix="r"), None,
                           source="stored")


@lru_cache(maxsize=None)
def joint_stream(change: bool = True) -> tuple[InferenceEvent, ...]:
    rng = np.random.default_rng(7)
    x = np.concatenate([correlated(rng, QUIET, 0.0), correlated(rng, CHANGED, 0.5 if change else 0.0)])
    return joint_events(x)


def spread(items, partitions: int):
    """Keyed by event id (crc32 as a stand-in for the producer's hash)."""
    out = {p: [] for p in range(partitions)}
    for item in items:
        event = item if isinstance(item, InferenceEvent) else item[0]
        out[zlib.crc32(event.event_id.encode()) % partitions].append(item)
    return out


def feed(monitor: PartitionMonitor, items, cuts: random.Random | None = None, start: int = 0) -> list:
    """``items``: events, or (event, join) pairs; in batches drawn from ``cuts`` (else one batch)."""
    rows = [(start + i, *((item, None) if isinstance(item, InferenceEvent) else item)) for i, item in enumerate(items)]
    out, i = [], 0
    while i < len(rows):
        size = len(rows) if cuts is None else cuts.randint(1, 700)
        out.extend(monitor.process_batch(rows[i:i + size]))
        i += size
    return out


def partials(monitor: PartitionMonitor) -> PartitionPartials:
    mark = monitor.merge_marks()[MODEL]
    return PartitionPartials("in", monitor.partition, mark["watermark"], mark["idle"], mark["partials"])


def merged(cfg, reference, by_partition) -> tuple:
    """Every partition fed and idle, then one merge: (its result, the partitions' own alerts)."""
    parts, own = [], []
    for p, items in sorted(by_partition.items()):
        monitor = PartitionMonitor(cfg, p, {MODEL: reference})
        own.extend(feed(monitor, items))
        monitor.go_idle()
        parts.append(partials(monitor))
    return merge_step(cfg.models[MODEL], reference, None, parts, BUCKET_MS), own


def partition_side_is_stable(cfg, reference, items, restore_at: int, seed: int) -> PartitionMonitor:
    """One partition fed ``items`` whole, in random batches, and restored at ``restore_at``: the same state
    (partials included) each way; the whole run's monitor."""
    def fresh() -> PartitionMonitor:
        return PartitionMonitor(cfg, 0, {MODEL: reference})

    whole, cut, first, resumed = fresh(), fresh(), fresh(), fresh()
    feed(whole, items)
    feed(cut, items, random.Random(seed))
    assert cut.snapshot() == whole.snapshot()
    feed(first, items[:restore_at])
    resumed.restore(decode_state(encode_state(first.snapshot())))
    feed(resumed, items[restore_at:], start=restore_at)
    assert resumed.snapshot() == whole.snapshot()
    return whole


def bucket(alert) -> int:
    return alert.window["first_bucket"] - START_MS // BUCKET_MS


# --- joint drift --------------------------------------------------------------------------


def test_the_models_warm_up_and_stored_references_carry_the_joint_part_and_its_share():
    reference = joint_reference()
    assert reference.joint is not None and reference.joint.names == ("f0", "f1", "f2", "f3", "f4")
    model = JOINT_CONFIG.models[MODEL]
    assert joint_runs(model, reference)
    # the joint test takes its share of the model's budget in model mode too: 5 numeric columns × 8 + label 3
    # + performance 1 + joint 1
    assert model_share(model, reference) == 0.1 / 45


def test_a_correlation_with_unchanged_marginals_fires_once_for_the_model_as_one_partition_would():
    one, own_one = merged(JOINT_CONFIG, joint_reference(), {0: list(joint_stream())})
    four, own_four = merged(JOINT_CONFIG, joint_reference(), spread(joint_stream(), 4))
    assert own_one == own_four == []  # nothing announced by a partition: the merge decides
    firing = [a for a in four.alerts if a.status == "firing"]
    # windows of 5,000 complete rows = 50 buckets: the change at bucket 200 starts the fifth window, which fires
    assert [(a.signal, a.name, a.detector, bucket(a)) for a in firing] == [("multivariate", "joint", "hotelling", 200)]
    assert [a.alert_id for a in four.alerts] == [a.alert_id for a in one.alerts]
    assert [a.statistic for a in four.alerts] == [a.statistic for a in one.alerts]  # exact: fixed-point sums
    (alert,) = firing
    assert alert.partition is None and alert.offset is None and len(alert.window["events"]) == 4
    assert alert.alert_id == window_alert_id(MODEL, "multivariate", "joint", "hotelling",
                                             alert.window["first_bucket"], alert.window["last_bucket"], "firing")
    assert alert.statistic > 5 * alert.threshold and "corr(f0, f1) " in alert.message
    assert alert.current["events"] == 5000 and alert.current["correlations"][0]["features"] == ["f0", "f1"]
    assert [d["name"] for d in alert.drivers]  # the features' PSIs of the model window decided at that bucket
    assert four.state["episodes"]["multivariate|joint|hotelling"]["firing"]
    assert len([p for p in four.points if p["signal"] == "multivariate"]) == 6


def test_a_stationary_model_over_four_partitions_raises_no_joint_alarm():
    result, own = merged(JOINT_CONFIG, joint_reference(), spread(joint_stream(change=False), 4))
    assert own == [] and result.alerts == []
    assert len([p for p in result.points if p["signal"] == "multivariate"]) == 6
    assert result.state["joint_window"] is None  # 30,000 rows: six whole windows


def test_the_joint_partials_do_not_depend_on_batch_cuts_or_a_restore_midway():
    whole = partition_side_is_stable(JOINT_CONFIG, joint_reference(), joint_stream()[:12_000], 5_432, 5)
    assert any("joint" in p for p in whole.merge_marks()[MODEL]["partials"].values())


def test_the_joint_merge_in_two_steps_gives_the_same_alerts_and_state():
    model = JOINT_CONFIG.models[MODEL]
    parts = []
    for p, items in sorted(spread(joint_stream(), 4).items()):
        monitor = PartitionMonitor(JOINT_CONFIG, p, {MODEL: joint_reference()})
        feed(monitor, items)
        monitor.go_idle()
        parts.append(partials(monitor))
    whole = merge_step(model, joint_reference(), None, parts, BUCKET_MS)
    cut = START_MS // BUCKET_MS + 224  # mid-window: the open joint window is stored and taken up again
    early = [p._replace(watermark_ms=(cut + 1) * BUCKET_MS, idle=False,
                        partials={b: x for b, x in p.partials.items() if b <= cut}) for p in parts]
    first = merge_step(model, joint_reference(), None, early, BUCKET_MS)
    assert first.state["joint_window"]["n"] == 2500
    rest = [p._replace(partials={b: x for b, x in p.partials.items() if b > cut}) for p in parts]
    second = merge_step(model, joint_reference(), orjson.loads(orjson.dumps(first.state)), rest, BUCKET_MS)
    assert [a.alert_id for a in first.alerts + second.alerts] == [a.alert_id for a in whole.alerts]
    assert second.state == orjson.loads(orjson.dumps(whole.state))


# --- estimated performance -----------------------------------------------------------------


REFERENCE_PAIRS, SHIFT_AT, TOTAL = 2000, 5000, 8000


def scored(seed: int = 7, shift: bool = True) -> list[tuple]:
    """(event, join) of a calibrated classifier (score = sigmoid(3x), its label drawn with that
    probability), 100 per second: the first 2,000 joined at once (their label came first), then no label;
    with ``shift``, x moves from ±1.5 (sure) to around 0 (unsure) at event 5,000 (bucket 50)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(TOTAL):
        x = rng.normal(0, 0.25) if shift and k >= SHIFT_AT else rng.choice([-1.5, 1.5]) + rng.normal(0, 0.5)
        score = float(1 / (1 + np.exp(-3 * x)))
        truth = int(rng.random() < score)
        event = InferenceEvent(f"e{k}", MODEL, START_MS + k * 1000 // PER_SECOND, {"x": float(x)}, score, None)
        out.append((event, JoinResult("joined", {"label": truth, "t": None}) if k < REFERENCE_PAIRS else None))
    return out


@lru_cache(maxsize=None)
def scored_reference():
    return build_reference(MODEL, [e for e, _ in scored(seed=3, shift=False)[:4000]], None, source="stored")


def estimated(alerts) -> list[tuple]:
    return [(bucket(a), a.status, a.name, a.severity) for a in alerts if a.signal == "estimated_performance"]


def test_a_shift_into_an_unsure_region_fires_once_for_the_model_before_any_of_its_labels():
    assert estimates(ESTIMATE_CONFIG.models[MODEL], scored_reference())
    one, own_one = merged(ESTIMATE_CONFIG, scored_reference(), {0: scored()})
    four, own_four = merged(ESTIMATE_CONFIG, scored_reference(), spread(scored(), 4))
    assert not [a for a in own_one + own_four if a.signal == "estimated_performance"]  # the merge's, not theirs
    # calibrated on the pairs of buckets 0…19; windows of 1,000 predictions (10 buckets) from bucket 20:
    # the one starting at bucket 50 holds the first shifted predictions, whose labels never came
    assert estimated(four.alerts) == [(50, "firing", m, "critical") for m in ("accuracy", "precision", "recall", "f1")]
    assert [a.alert_id for a in four.alerts] == [a.alert_id for a in one.alerts]
    assert [a.statistic for a in four.alerts] == [a.statistic for a in one.alerts]
    accuracy = next(a for a in four.alerts if a.name == "accuracy")
    assert accuracy.partition is None and len(accuracy.window["events"]) == 4
    assert accuracy.statistic < 0.6 < accuracy.threshold and accuracy.reference["pairs"] == REFERENCE_PAIRS
    assert "no labels needed" in accuracy.message and "drivers: x" in accuracy.message
    assert accuracy.drivers[0]["name"] == "x"
    assert four.state["estimate"]["calibration"] is not None and four.state["estimate"]["pairs"] == []


def test_a_quiet_classifier_over_four_partitions_raises_no_estimate_alarm():
    result, _ = merged(ESTIMATE_CONFIG, scored_reference(), spread(scored(seed=11, shift=False), 4))
    assert estimated(result.alerts) == []
    points = [p for p in result.points if p["signal"] == "estimated_performance"]
    assert len(points) == 4 * 6  # windows from bucket 20 to 79
    last = result.state["estimate"]["last"]
    assert last["accuracy"] > 0.8


def test_the_estimate_partials_do_not_depend_on_batch_cuts_or_a_restore_midway():
    whole = partition_side_is_stable(ESTIMATE_CONFIG, scored_reference(), scored(), 1_234, 9)
    carried = sum(len(p.get("estimate", {}).get("pairs", [])) for p in whole.merge_marks()[MODEL]["partials"].values())
    assert carried == REFERENCE_PAIRS  # at most reference_pairs per partition


def test_a_windows_expected_metrics_are_those_of_its_scores_at_the_grids_resolution():
    from stream_monitor.cbpe import Calibration, expected_metrics  # noqa: PLC0415

    rng = np.random.default_rng(1)
    scores = rng.random(3000)
    calibration = Calibration.fit(np.floor(scores * GRID) / GRID, (rng.random(3000) < scores).astype(int))
    window = rng.random(1000)
    predicted = window >= 0.5
    cells: dict[str, list[int]] = {}
    for s, p in zip(window.tolist(), predicted.tolist()):
        cells.setdefault(str(score_cell(s)), [0, 0])[int(p)] += 1
    expected = expected_metrics(calibration.probability(np.floor(window * GRID) / GRID), predicted)
    assert window_metrics(calibration, cells) == pytest.approx(expected, rel=1e-12)  # the same sums, in cell order


@lru_cache(maxsize=None)
def labelled_reference():
    """A stored reference built with labels (``reference build`` of a file with label events too)."""
    from stream_monitor.events import LabelEvent  # noqa: PLC0415

    items = scored(seed=3, shift=False)[:4000]
    rng = np.random.default_rng(4)
    labels = [LabelEvent(e.event_id, MODEL, None, int(rng.random() < e.score)) for e, _ in items]
    return build_reference(MODEL, [e for e, _ in items], None, source="stored", labels=labels)


def test_a_stored_reference_with_labels_calibrates_the_models_estimate_before_any_label():
    reference = labelled_reference()
    assert reference.pairs is not None and len(reference.pairs) == 4000
    unlabelled = [(e, None) for e, _ in scored()]  # not one label, not one joined pair
    one, _ = merged(ESTIMATE_CONFIG, reference, {0: unlabelled})
    four, _ = merged(ESTIMATE_CONFIG, reference, spread(unlabelled, 4))
    # calibrated from the first bucket: windows of 10 buckets from bucket 0, the sixth holds the shift
    assert estimated(four.alerts) == [(50, "firing", m, "critical") for m in ("accuracy", "precision", "recall", "f1")]
    assert [a.alert_id for a in four.alerts] == [a.alert_id for a in one.alerts]
    assert next(a for a in four.alerts if a.name == "accuracy").reference["pairs"] == 4000
    assert len([p for p in four.points if p["signal"] == "estimated_performance"]) == 4 * 8


def test_the_status_page_and_status_show_the_models_estimate_and_joint_test():
    from stream_monitor.board import StatusBoard  # noqa: PLC0415
    from stream_monitor.merge import episodes_summary  # noqa: PLC0415
    from stream_monitor.mergejoint import open_windows  # noqa: PLC0415
    from stream_monitor.web import render_page  # noqa: PLC0415

    board = StatusBoard("test")
    for cfg, reference, items in ((ESTIMATE_CONFIG, scored_reference(), scored()),
                                  (JOINT_CONFIG, joint_reference(), joint_stream())):
        result, _ = merged(cfg, reference, spread(items, 4))
        board.merges[f"{MODEL}-{len(board.merges)}"] = {"windows": result.state["windows"], "open_window_events": 0,
                                                        "episodes": episodes_summary(result.state),
                                                        **open_windows(result.state)}
    shown = board.snapshot()["merges"]
    assert shown["m-0"]["estimated_performance"]["calibrated"] and shown["m-0"]["estimated_performance"]["metrics"]
    assert shown["m-1"]["multivariate"]["last"]["events"] == 5000
    page = render_page(board.snapshot())
    assert "m-0: estimated accuracy 0.5" in page and "estimated_performance|accuracy|cbpe" in page
    assert "m-1: joint test T² 611" in page and "multivariate|joint|hotelling" in page


def test_status_the_status_page_and_the_metrics_show_the_models_estimate_from_its_merge_state(
        tmp_path, monkeypatch, capsys):
    """The merge's estimate (the last model window's four metrics, the floors it was judged against, the
    reference's range, the windows judged) where a partition's would be: read from the merge state, the same
    for 1 partition and 4, on the status page beside the realized performance, as
    ``stream_monitor_estimated_performance`` and in ``stream-monitor status`` (text and ``--json``)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from stream_monitor import cli, state as state_module  # noqa: PLC0415
    from stream_monitor.board import StatusBoard  # noqa: PLC0415
    from stream_monitor.metrics import Metrics  # noqa: PLC0415
    from stream_monitor.mergejoint import estimate_info, estimate_range  # noqa: PLC0415
    from stream_monitor.web import render_page  # noqa: PLC0415
    from tests.support import stored_status  # noqa: PLC0415

    model = ESTIMATE_CONFIG.models[MODEL]
    one, _ = merged(ESTIMATE_CONFIG, scored_reference(), {0: scored()})
    four, _ = merged(ESTIMATE_CONFIG, scored_reference(), spread(scored(), 4))
    stored = orjson.loads(orjson.dumps(four.state))
    info = estimate_info(model, stored)
    assert info == estimate_info(model, one.state) == estimate_info(model, four.state)
    # calibrated on the 2,000 pairs of buckets 0…19; six windows of 1,000 from bucket 20, the last (70…79)
    # wholly after the shift into the unsure region: every estimate far under its floor
    assert {k: v for k, v in info.items() if k not in ("metrics", "floors", "reference")} == {
        "window": 1000, "windows": 6, "calibrated": True, "calibrated_pairs": 2000, "pairs": 0,
        "open_window_events": 0}
    assert {m: round(v, 4) for m, v in info["metrics"].items()} == {
        "accuracy": 0.5581, "precision": 0.8434, "recall": 0.5339, "f1": 0.6539}
    assert {m: round(v, 4) for m, v in info["floors"].items()} == {
        "accuracy": 0.949, "precision": 0.9485, "recall": 0.9364, "f1": 0.9477}
    assert {m: round(f["mean"], 4) for m, f in info["reference"].items()} == {
        "accuracy": 0.9644, "precision": 0.963, "recall": 0.9646, "f1": 0.9638}
    assert estimate_range(info).startswith("accuracy ≥ 0.949 (reference 0.964) · precision ≥ 0.948")
    quiet, _ = merged(ESTIMATE_CONFIG, scored_reference(), spread(scored(seed=11, shift=False), 4))
    calm = estimate_info(model, quiet.state)
    assert calm["windows"] == 6 and all(calm["metrics"][m] >= calm["floors"][m] for m in calm["metrics"])

    board = StatusBoard("here")
    board.merged(MODEL, {"windows": stored["windows"], "episodes": [], "estimated": info})
    assert board.snapshot()["models"][MODEL]["estimated"] == info
    page = render_page(board.snapshot())
    area = page.split("Performance estimated from the scores over all partitions")[1].split("</p>")[0]
    assert "the last of 6 model windows of at least 1,000 predictions" in area
    assert "<b>accuracy</b> 0.5581 <span class='badge critical'>below its range</span>" in area
    assert "accuracy ≥ 0.949 (reference 0.964)" in area

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.partitions.source = lambda: []
    metrics.partitions.merged_estimates = lambda: {MODEL: info}
    for metric, value in info["metrics"].items():
        assert registry.get_sample_value("stream_monitor_estimated_performance",
                                         {"model": MODEL, "metric": metric}) == value

    class Merges:
        def __init__(self, *_):
            pass

        def load(self, model_id):
            return stored if model_id == MODEL else None

    # the partitions of a model decided per model carry no estimate of their own
    stored_status(monkeypatch, {MODEL: {"events": 8000, "labels": 2000, "detectors": [], "estimated": None}}, 2000)
    monkeypatch.setattr(state_module, "MergeStore", Merges)
    path = tmp_path / "config.toml"
    path.write_text(f'[models.{MODEL}]\ndecisions = "model"\nreference = {{ source = "stored" }}\n'
                    f'[models.{MODEL}.detectors.estimated_performance]\nwindow = 1000\nreference_pairs = 2000\n')
    assert cli.main(["status", "--config", str(path)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "performance estimated" in x]
    assert line.startswith("  performance estimated from the scores (all partitions) over the last of 6 model "
                           "windows of 1,000+ predictions: accuracy 0.5581 (below its range) · precision 0.8434")
    assert line.endswith(f"reference's range: {estimate_range(info)}")
    assert cli.main(["status", "--config", str(path), "--json"]) == 0
    decided = orjson.loads(capsys.readouterr().out)["model_decisions"][MODEL]
    assert decided["estimated"] == info


def test_the_estimate_merged_in_two_steps_shows_the_same_figures():
    """A merge stopped mid-window (bucket 54: three windows judged, the fourth open) and taken up again from
    its stored state shows, at each step, what the state then holds, and at the end what one merge shows."""
    from stream_monitor.mergejoint import estimate_info  # noqa: PLC0415

    model = ESTIMATE_CONFIG.models[MODEL]
    parts = []
    for p, items in sorted(spread(scored(), 4).items()):
        monitor = PartitionMonitor(ESTIMATE_CONFIG, p, {MODEL: scored_reference()})
        feed(monitor, items)
        monitor.go_idle()
        parts.append(partials(monitor))
    whole = merge_step(model, scored_reference(), None, parts, BUCKET_MS)
    cut = START_MS // BUCKET_MS + 54
    early = [p._replace(watermark_ms=(cut + 1) * BUCKET_MS, idle=False,
                        partials={b: x for b, x in p.partials.items() if b <= cut}) for p in parts]
    first = merge_step(model, scored_reference(), None, early, BUCKET_MS)
    shown = estimate_info(model, orjson.loads(orjson.dumps(first.state)))
    assert (shown["windows"], shown["open_window_events"]) == (3, 500)  # windows of buckets 20…49, then 50…54
    assert shown["metrics"]["accuracy"] > shown["floors"]["accuracy"]  # the last judged is before the shift
    rest = [p._replace(partials={b: x for b, x in p.partials.items() if b > cut}) for p in parts]
    second = merge_step(model, scored_reference(), orjson.loads(orjson.dumps(first.state)), rest, BUCKET_MS)
    assert estimate_info(model, second.state) == estimate_info(model, whole.state)
    assert estimate_info(model, second.state)["windows"] == 6
