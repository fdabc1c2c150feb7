"""decisions = "model": equal opportunity and equalized odds are the model's. Each partition counts its joined
pairs per group (positives, true positives, negatives, false positives) in the partial of the label's time;
the merge adds them into the model's window of ``fairness.label_window`` pairs and runs the two-proportion
tests on the merged counts at the model's share of the budget, one episode per (attribute, metric). Pure:
PartitionMonitor and merge_step, no I/O."""

from __future__ import annotations

import zlib

import numpy as np
import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.events import InferenceEvent
from stream_monitor.merge import PartitionPartials, fairness_info, merge_step, model_share
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import build_reference

from tests.support import FAIRNESS_METRICS as ALL, assert_cuts_and_a_restore_change_nothing, labelled_stream

MODEL = {"decisions": "model", "reference": {"source": "stored"}, "detectors": {"psi": {"window": 1000}},
         "fairness": {"attributes": ["gender"], "metrics": ALL, "window": 2000, "label_window": 1000}}
LABELLED = ("equal_opportunity", "equalized_odds")


def model(table: dict = MODEL):
    return parse_config({"models": {"credit": table}})


def reference():
    events = [e for _, e, _ in labelled_stream(seed=5, gap_at=None, step_ms=10, events=5000)
              if isinstance(e, InferenceEvent)]
    return build_reference("credit", events, None, source="stored")


def partials(items: list[tuple], partitions: int, cut: int = 500, table: dict = MODEL) -> list[PartitionPartials]:
    """``items`` spread over ``partitions`` partitions by event id (a label on its prediction's partition, as
    a producer keyed by event id puts it; its join result carries the prediction's groups, as Redis's does),
    each a PartitionMonitor with the stored reference fed in batches of ``cut``; their closed partials."""
    full, profile = model(table), reference()
    out = []
    for p in range(partitions):
        mine = [(k, e, j) for k, e, j in items if zlib.crc32(e.event_id.encode()) % partitions == p]
        monitor = PartitionMonitor(full, p, {"credit": profile})
        for start in range(0, len(mine), cut):
            # nothing is announced by a partition: the model's merge decides
            assert [a for a in monitor.process_batch(mine[start:start + cut]) if a.signal == "fairness"] == []
        summary = monitor.summary()["models"]["credit"]
        assert summary["fairness"] is None and not [r for r in summary["detectors"] if r["signal"] == "fairness"]
        monitor.go_idle()
        mark = monitor.merge_marks()["credit"]
        out.append(PartitionPartials("in", p, mark["watermark"], mark["idle"], mark["partials"]))
    return out


def merged(partitions: int, cut: int = 500, **stream):
    items = labelled_stream(step_ms=10, **stream)
    return merge_step(model().models["credit"], reference(), None, partials(items, partitions, cut), 1000)


def fair(result) -> list[tuple]:
    return [(a.status, a.detector, a.severity, a.window["first_bucket"], a.window["last_bucket"])
            for a in result.alerts if a.signal == "fairness"]


@pytest.fixture(scope="module")
def one():
    return merged(1)


@pytest.fixture(scope="module")
def four():
    return merged(4, cut=333)


def test_a_tpr_gap_opening_at_a_known_event_is_announced_once_by_the_model_at_a_pinned_window(four):
    # 100 events a second; the gap opens with event 11,000 (t = 110 s), whose label comes 300 events later
    # (t = 113 s). Windows of 1,000 pairs = 10 s of labels, counted by the label's time, from the first label
    # (t = 3 s): 3–12 s, 13–22 s, … The window of 113–122 s is the first wholly after the change: equal
    # opportunity (TPR F 0.6 against M 0.9) and equalized odds are announced there, once, and parity holds
    assert fair(four) == [("firing", "equal_opportunity", "critical", 113, 122),
                          ("firing", "equalized_odds", "critical", 113, 122)]
    alert = next(a for a in four.alerts if a.detector == "equal_opportunity")
    groups = alert.current["groups"]
    assert groups["F"]["tpr"] == pytest.approx(0.6, abs=0.1) and groups["M"]["tpr"] == pytest.approx(0.9, abs=0.05)
    assert alert.partition is None and alert.offset is None
    assert sorted(alert.window["events"]) == [f"in|{p}" for p in range(4)]
    assert sum(alert.window["events"].values()) == 1000  # the pairs of the window, from all partitions
    assert alert.reference["tests"] == 1 and alert.reference["alpha"] == pytest.approx(
        model_share(model().models["credit"], reference()) * 1000 / 1e6)
    odds = next(a for a in four.alerts if a.detector == "equalized_odds")
    assert odds.reference["tests"] == 2 and odds.current["groups"]["F"]["fpr"] == pytest.approx(0.4, abs=0.1)
    assert four.state["episodes"]["fairness|gender|equal_opportunity"]["firing"] is True


def test_one_partition_and_four_give_the_same_counts_and_decisions(one, four):
    # (the error stream's ADWIN runs per partition: where and when it fires depends on the partitioning)
    assert [a.alert_id for a in four.alerts if a.signal == "fairness"] == [
        a.alert_id for a in one.alerts if a.signal == "fairness"]
    # the same alerts but for the window's pairs per partition and the incident (opened, with one partition,
    # by that ADWIN's earlier firing)
    pairs = [(a, b) for a, b in zip([a for a in one.alerts if a.signal == "fairness"],
                                    [a for a in four.alerts if a.signal == "fairness"])]
    assert [b.to_dict(0) for _, b in pairs] == [
        {**a.to_dict(0), "window": b.to_dict(0)["window"], "incident": b.incident} for a, b in pairs]
    assert [a.window["events"] for a, _ in pairs] == [{"in|0": 1000}] * 2
    info_one, info_four = (fairness_info(model().models["credit"], r.state)["gender"] for r in (one, four))
    assert info_one == info_four
    # 30,000 predictions: 15 parity windows of 2,000; 29,700 pairs: 29 windows of 1,000 (one per 10 s of labels)
    assert info_four["windows"] == {"predictions": 15, "pairs": 29} and info_four["open"]["pairs"] == 700
    last = info_four["metrics"]["equalized_odds"]["groups"]
    assert sum(g["positives"] + g["negatives"] for g in last.values()) == 1000


def test_a_parity_window_and_the_pair_window_are_the_models_and_nothing_else_fires(four):
    firing = {(a.signal, a.name, a.detector) for a in four.alerts if a.status == "firing"}
    assert ("fairness", "gender", "demographic_parity") not in firing


def test_equal_groups_stay_quiet_on_a_long_seeded_stream():
    """10^6 joined pairs over 4 partitions, two groups of unequal size (70/30) at the same true- and
    false-positive rates, and two more on the null's boundary for equal opportunity (TPRs exactly max_gap
    apart): no fairness alert in a thousand windows at a 20-feature model's share of the budget."""
    table = {**MODEL, "fairness": {**MODEL["fairness"], "attributes": ["gender", "region"]}}
    config = model(table).models["credit"]
    share = 0.1 / 180
    rng = np.random.default_rng(17)
    parts: list[dict] = [{} for _ in range(4)]
    bucket_pairs = 250  # per partition and bucket: a window of 1,000 pairs is one bucket of the model
    rates = {"gender": {"F": (0.8, 0.2, 0.7), "M": (0.8, 0.2, 0.3)},  # (TPR, FPR, share of pairs)
             "region": {"north": (0.85, 0.2, 0.5), "south": (0.75, 0.2, 0.5)}}  # 0.1 apart: on the boundary
    for bucket in range(1000):
        for p in range(4):
            counted = {}
            for attribute, groups in rates.items():
                names = list(groups)
                sizes = rng.multinomial(bucket_pairs, [groups[g][2] for g in names])
                counted[attribute] = {}
                for name, size in zip(names, sizes):
                    tpr, fpr, _ = groups[name]
                    positives = int(rng.binomial(size, 0.5))
                    negatives = int(size) - positives
                    counted[attribute][name] = [positives, int(rng.binomial(positives, tpr)), negatives,
                                                int(rng.binomial(negatives, fpr))]
            parts[p][bucket] = {"events": 0, "columns": {}, "firings": [], "fairness_pairs": counted}
    marks = [PartitionPartials("in", p, None, True, parts[p]) for p in range(4)]
    from unittest import mock

    with mock.patch("stream_monitor.merge.model_share", return_value=share):
        result = merge_step(config, reference(), None, marks, 1000)
    assert [a for a in result.alerts if a.signal == "fairness"] == []
    info = fairness_info(config, result.state)
    assert info["gender"]["windows"]["pairs"] == 1000
    found = info["region"]["metrics"]["equal_opportunity"]
    assert found["alpha"] == pytest.approx(share * 1000 / 1e6) and found["gap"] == pytest.approx(0.1, abs=0.08)


def test_the_merge_state_through_json_in_steps_decides_the_same(four):
    """The merge in steps, its state stored (JSON) between them, inside the episode and with a window half
    full: the same alerts, ids and fairness state as one step."""
    marks = partials(labelled_stream(step_ms=10), 4, 333)
    config = model().models["credit"]
    state, alerts = None, []
    for upto in (77, 118, 171, 10_000):
        step = [PartitionPartials(m.topic, m.partition, m.watermark_ms, m.idle,
                                  {b: p for b, p in m.partials.items() if b <= upto}) for m in marks]
        result = merge_step(config, reference(), state, step, 1000)
        alerts += result.alerts
        state = orjson.loads(orjson.dumps(result.state))
        if upto == 118:
            assert state["fairness_pairs_window"]["events"] > 0  # a window open across the save
        marks = [PartitionPartials(m.topic, m.partition, m.watermark_ms, m.idle,
                                   {b: p for b, p in m.partials.items() if b > upto}) for m in marks]
    assert [a.alert_id for a in alerts] == [a.alert_id for a in four.alerts] and len(alerts) == 3
    assert fairness_info(config, state) == fairness_info(config, orjson.loads(orjson.dumps(four.state)))
    assert state["episodes"]["fairness|gender|equalized_odds"] == orjson.loads(orjson.dumps(
        four.state["episodes"]["fairness|gender|equalized_odds"]))


def test_status_the_status_page_and_the_metrics_show_the_models_fairness(four, tmp_path, monkeypatch, capsys):
    """The merge's findings (groups' rates and counts over all partitions) where a partition's would be: the
    status page of the merging instance, the metrics it exports and ``stream-monitor status`` (text and
    ``--json``), read from the stored merge state."""
    from prometheus_client import CollectorRegistry

    from stream_monitor import cli, state as state_module
    from stream_monitor.board import StatusBoard
    from stream_monitor.fairness import shown
    from stream_monitor.metrics import Metrics
    from stream_monitor.web import render_page
    from tests.support import stored_status

    config = model().models["credit"]
    stored = orjson.loads(orjson.dumps(four.state))
    info = fairness_info(config, stored)
    found = info["gender"]["metrics"]["equalized_odds"]
    (line,) = [x for x in shown(info) if "equalized odds" in x]
    assert line.startswith("gender · equalized odds: gap ")
    f, m = found["groups"]["F"], found["groups"]["M"]
    assert f"true-positive rate F {f['tpr']:.3g} of {f['positives']:,} · M {m['tpr']:.3g} of {m['positives']:,}" in line
    assert f"false-positive rate F {f['fpr']:.3g} of {f['negatives']:,}" in line

    board = StatusBoard("here")
    board.merged("credit", {"windows": stored["windows"], "episodes": [], "fairness": info})
    page = render_page(board.snapshot())
    area = page.split("Fairness over each attribute")[1]
    assert line in area

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.partitions.source = lambda: []
    metrics.partitions.merged_fairness = lambda: {"credit": info}
    labels = {"model": "credit", "attribute": "gender", "group": "F", "rate": "tpr"}
    assert registry.get_sample_value("stream_monitor_fairness_rate", labels) == f["tpr"]
    assert registry.get_sample_value("stream_monitor_fairness_rate", {**labels, "rate": "fpr"}) == f["fpr"]
    assert registry.get_sample_value("stream_monitor_fairness_gap", {
        "model": "credit", "attribute": "gender", "metric": "equal_opportunity"}) == \
        info["gender"]["metrics"]["equal_opportunity"]["gap"]

    class Merges:
        def __init__(self, *_):
            pass

        def load(self, model_id):
            return stored if model_id == "credit" else None

    stored_status(monkeypatch, {"credit": {"events": 30_000, "labels": 29_700, "detectors": [], "fairness": None}},
                  30_000)
    monkeypatch.setattr(state_module, "MergeStore", Merges)
    path = tmp_path / "config.toml"
    path.write_text('[models.credit]\ndecisions = "model"\nreference = { source = "stored" }\n'
                    '[models.credit.fairness]\nattributes = ["gender"]\n'
                    'metrics = ["demographic_parity", "equal_opportunity", "equalized_odds"]\n'
                    'window = 2000\nlabel_window = 1000\n')
    assert cli.main(["status", "--config", str(path)]) == 0
    printed = [x for x in capsys.readouterr().out.splitlines() if "fairness" in x]
    assert f"  fairness (all partitions): {line}" in printed
    assert cli.main(["status", "--config", str(path), "--json"]) == 0
    decided = orjson.loads(capsys.readouterr().out)["model_decisions"]["credit"]
    assert decided["fairness"]["gender"]["metrics"]["equalized_odds"]["groups"]["F"] == f
    assert decided["fairness"]["gender"]["windows"] == {"predictions": 15, "pairs": 29}


@pytest.mark.parametrize("source", ["stored", "warmup"])
def test_the_pair_partials_do_not_depend_on_batch_cuts_or_a_restore_midway(source):
    """One partition's fairness pairs, fed in random batches and restarted from its stored state at a random
    offset: the same partials. With a model warm-up (the model's reference already built: the partition
    takes it the moment its share ends, inside a batch) the rest of that batch counts its pairs too."""
    table = MODEL if source == "stored" else {**MODEL, "reference": {"events": 2000}}
    config = model(table)
    items = labelled_stream(step_ms=10, events=8000)

    def monitor():
        return PartitionMonitor(config, 0, {"credit": reference()} if source == "stored" else {},
                                model_references={"credit": reference()})

    whole = assert_cuts_and_a_restore_change_nothing(monitor, items, most=700)
    whole.go_idle()
    pending = whole.merge_marks()["credit"]["partials"]
    pairs = sum(sum(c[0] + c[2] for c in p["fairness_pairs"]["gender"].values())
                for p in pending.values() if "fairness_pairs" in p)
    # every pair joined after the reference: all 7,700 with a stored one; with the warm-up, those whose label
    # came after the share's last (2,000th) prediction: 1,699 labels came before it
    assert pairs == (7700 if source == "stored" else 7700 - 1699)


def test_replay_decides_the_models_equal_opportunity_as_the_merge_of_its_one_stream():
    """``replay`` of the labelled stream as JSON lines (labels with their own time, joined in memory with
    each prediction's gender): the merge's decisions, one firing per metric, the window of 113–122 s."""
    from stream_monitor.replay import replay_alerts

    lines = []
    for _, event, _ in labelled_stream(step_ms=10):
        if isinstance(event, InferenceEvent):
            lines.append(orjson.dumps({"event_id": event.event_id, "model_id": "credit",
                                       "timestamp": event.timestamp_ms / 1000, "features": dict(event.features),
                                       "prediction": {"score": event.score}}))
        else:
            lines.append(orjson.dumps({"event_id": event.event_id, "model_id": "credit", "label": event.label,
                                       "timestamp": event.timestamp_ms / 1000}))
    alerts = [a for a in replay_alerts(model(), lines, {"credit": reference()}) if a.signal == "fairness"]
    assert fair_of(alerts) == [("firing", "equal_opportunity", "critical", 113, 122),
                               ("firing", "equalized_odds", "critical", 113, 122)]


def fair_of(alerts) -> list[tuple]:
    return [(a.status, a.detector, a.severity, a.window["first_bucket"], a.window["last_bucket"]) for a in alerts]
