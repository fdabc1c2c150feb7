"""Ground truth: the label join through Redis, performance metrics and concept drift."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_monitor.config import parse_config
from stream_monitor.join import JoinOp, MemoryJoin, RedisJoin, performance_settings
from stream_monitor.demo.localstack import MonitorProcess, create_topics, free_port
from stream_monitor.replay import replay_alerts
from stream_monitor.state import connect
from stream_monitor.synthetic import labelled

from ..support import (CREDIT, Feeder, LabelRun, alerts_of, final_states, is_cluster, pairs_counted, produce,
                       read_topic, split, store_for, stored_offset, unique, wait_for_offsets, write_config)

SERVICE = {"checkpoint_interval_events": 500, "checkpoint_interval_seconds": 0.5}


def test_concept_drift_raises_a_performance_alert_and_no_feature_alert(broker, redis_server, tmp_path, monitors):
    """Labels on their own topic, most arriving before their predictions; two instances share the work."""
    inference_topic, label_topic = unique("inference"), unique("labels")
    create_topics(broker.address, {inference_topic: 2, label_topic: 1})
    inference, labels = split(labelled("credit", 8000, seed=1, invert_at=4000))
    label_ends = produce(broker.address, label_topic, [(0, b"credit", orjson.dumps(e), None) for e in labels])
    run = LabelRun(broker, redis_server, tmp_path, "concept", inference_topic, label_topic)
    ports = [free_port(), free_port()]
    a, b = (run.start(monitors, {"STREAM_MONITOR_SERVICE_METRICS_PORT": str(port)}) for port in ports)
    wait_for_offsets(run.store, label_topic, label_ends, processes=[a, b])
    ends = produce(broker.address, inference_topic, [(i % 2, b"credit", orjson.dumps(e), None)
                                                    for i, e in enumerate(inference)])
    wait_for_offsets(run.store, inference_topic, ends, processes=[a, b])
    status = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(run.config), "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    deadline = time.monotonic() + 30  # until a checkpoint after the last pair has refreshed the gauges
    while True:
        scraped = {}
        for port in ports:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    scraped[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        metric_names = {labels for (name, labels) in scraped if name == "stream_monitor_performance"}
        exported = ((("metric", "accuracy"), ("model", "credit")) in metric_names
                    and any(name == "stream_monitor_predictions_awaiting_labels" for name, _ in scraped))
        if exported or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert a.terminate() == 0 and b.terminate() == 0
    assert (("metric", "accuracy"), ("model", "credit")) in metric_names, "rolling accuracy is exported"
    assert any(name == "stream_monitor_predictions_awaiting_labels" for name, _ in scraped)

    alerts = run.alerts()
    firing = [(x["signal"], x["name"], x["detector"]) for x in alerts if x["status"] == "firing"]
    assert ("performance", "error_rate", "adwin") in firing
    assert ("performance", "accuracy", "floor") in firing
    assert not [f for f in firing if f[0] in ("feature", "prediction", "data_quality")], firing
    # every label came first, so inference events completed the pairs: offset o of partition p is event 2·o + p
    first = min(2 * x["offset"] + x["partition"] for x in alerts if x["signal"] == "performance")
    assert 4000 < first < 4400, f"concept drift at event 4000 detected at event {first}"
    print(f"concept drift at inference event 4000: first performance alert at event {first}")
    assert pairs_counted(run.store, {inference_topic: 2, label_topic: 1}) == len(labels), "each pair once"
    partitions = json.loads(status.stdout)["partitions"]
    metrics = [m["performance"] for p in partitions for m in p["models"].values()
               if (m.get("performance") or {}).get("pairs")]
    assert metrics and all(0 <= m["accuracy"] <= 1 and "auc" in m and "f1" in m for m in metrics)


@pytest.mark.slow
def test_sigkill_between_a_prediction_and_its_label_neither_loses_nor_double_counts(broker, redis_target, tmp_path,
                                                                                   monitors):
    inference_topic, label_topic = unique("inference"), unique("labels")
    create_topics(broker.address, {inference_topic: 2, label_topic: 2})
    events = labelled("credit", 30_000, seed=2, invert_at=15_000, delay=400)
    # predictions to the inference topic, labels (400 events later) to the label topic, round-robin over partitions
    predictions, answers = split(events)
    inference = Feeder(broker.address, inference_topic,
                       [(i % 2, b"credit", orjson.dumps(e), None) for i, e in enumerate(predictions)], 3000)
    labels = Feeder(broker.address, label_topic,
                    [(i % 2, b"credit", orjson.dumps(e), None) for i, e in enumerate(answers)], 3000)
    run = LabelRun(broker, redis_target, tmp_path, "killed", inference_topic, label_topic)
    first = run.start(monitors)
    inference.start()
    # labels trail their predictions: they start once the monitor has stored 2,000 predictions per partition
    wait_for_offsets(run.store, inference_topic, {0: 2000, 1: 2000}, processes=[first])
    labels.start()
    joiner = RedisJoin(connect(redis_target.address, is_cluster(redis_target)), run.namespace,
                       performance_settings(parse_config({"models": {"credit": CREDIT}})))
    wait_for_offsets(run.store, label_topic, {0: 1000, 1: 1000}, processes=[first])
    deadline = time.monotonic() + 30
    while joiner.lag("credit")["awaiting"] < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    awaiting = joiner.lag("credit")["awaiting"]
    assert awaiting >= 100, ("predictions were stored and waiting for their labels at the kill",
                             [stored_offset(run.store, t, p) for t in (inference_topic, label_topic) for p in (0, 1)])
    first.kill()
    inference_ends, label_ends = inference.result(), labels.result()
    second = run.start(monitors)
    wait_for_offsets(run.store, inference_topic, inference_ends, processes=[second], timeout=120)
    wait_for_offsets(run.store, label_topic, label_ends, processes=[second], timeout=120)
    assert second.terminate() == 0
    label_count = sum(1 for e in events if "features" not in e)
    assert pairs_counted(run.store, {inference_topic: 2, label_topic: 2}) == label_count
    assert ("performance", "error_rate", "adwin") in {(x["signal"], x["name"], x["detector"]) for x in run.alerts()}


def test_replay_joins_labels_in_the_same_file():
    config = parse_config({"models": {"credit": CREDIT}})
    events = labelled("credit", 12_000, seed=1, invert_at=6000)
    alerts = [(a.offset, a.status, a.signal, a.name, a.detector)
              for a in replay_alerts(config, (orjson.dumps(e) for e in events), {})]
    # ADWIN at 12210/22210 (12146/22146 before): the budget is now per model, ADWIN's share of it is smaller
    assert alerts == [(12210, "firing", "performance", "error_rate", "adwin"),
                      (12350, "firing", "performance", "accuracy", "floor"),
                      (22210, "resolved", "performance", "error_rate", "adwin")]
    stable = [a for a in replay_alerts(config, (orjson.dumps(e) for e in labelled("credit", 12_000, seed=1)), {})]
    assert stable == []


def test_join_is_effectively_once_and_bounded(redis_target):
    """The Redis join and the in-memory one agree; replays of the joining message count again, others don't."""
    config = parse_config({"models": {"credit": {"performance": {"task": "classification", "max_pending": 10,
                                                                  "prediction_ttl_seconds": 0.3}}}})
    settings = performance_settings(config)
    client = connect(redis_target.address, is_cluster(redis_target))
    for joiner in (RedisJoin(client, unique("ns"), settings), MemoryJoin(settings)):
        pred = JoinOp("prediction", "credit", "e1", {"score": 0.9, "label": 1, "t": 0}, "inf|0|1")
        label = JoinOp("label", "credit", "e1", {"label": 1, "t": 5}, "lab|0|7")
        assert [r.status for r in joiner.run([pred])] == ["pending"]
        assert [r.status for r in joiner.run([label])] == ["joined"]
        assert [r.status for r in joiner.run([label])] == ["joined"], "the joining message, replayed, counts again"
        other = label._replace(me="lab|0|8")
        assert [r.status for r in joiner.run([other])] == ["taken"], "a duplicate label counts nothing"
        assert [r.status for r in joiner.run([pred])] == ["taken"], "the prediction, replayed, counts nothing"
        early = JoinOp("label", "credit", "e2", {"label": 0, "t": 1}, "lab|0|9")
        late = JoinOp("prediction", "credit", "e2", {"score": 0.2, "label": 0, "t": 0}, "inf|1|3")
        assert [r.status for r in joiner.run([early, late])] == ["pending", "joined"]
        assert joiner.run([late])[0].other == {"label": 0, "t": 1}
        many = [JoinOp("prediction", "credit", f"m{i}", {"score": 0.5, "label": 1, "t": 0}, f"inf|0|{i + 100}")
                for i in range(12)]
        statuses = [r.status for r in joiner.run(many)]
        assert statuses == ["pending"] * 12, "over the cap the oldest pending predictions make room"
        late_labels = [JoinOp("label", "credit", f"m{i}", {"label": 1, "t": 9}, f"lab|1|{i}") for i in (0, 1, 2, 11)]
        assert [r.status for r in joiner.run(late_labels)] == ["pending", "pending", "joined", "joined"], \
            "m0 and m1 were evicted; the newest are joinable"
    redis_join = RedisJoin(client, unique("ns"), settings)
    redis_join.run([JoinOp("prediction", "credit", f"x{i}", {"score": 0.5, "label": 1, "t": 0}, f"p|0|{i}")
                    for i in range(3)])
    assert redis_join.lag("credit")["awaiting"] == 3
    time.sleep(0.5)
    lag = redis_join.lag("credit")
    assert lag["awaiting"] == 0 and lag["expired"] == 3, lag


def test_join_data_vanishing_is_reported_once_per_model(redis_server):
    """The join's marker gone (Redis restarted empty, flushed) is reported to on_lost; a first run is not."""
    settings = performance_settings(parse_config({"models": {"credit": CREDIT}}))
    lost: list[str] = []
    client = connect(redis_server.address)
    joiner = RedisJoin(client, unique("ns"), settings, on_lost=lost.append)
    ops = [JoinOp("prediction", "credit", f"v{i}", {"score": 0.5, "label": 1, "t": 0}, f"p|0|{i}") for i in range(3)]
    assert [r.status for r in joiner.run(ops)] == ["pending"] * 3
    assert lost == [], "a marker never seen before is not a loss"
    assert RedisJoin(client, joiner.namespace, settings, on_lost=lost.append).run(ops[:1])[0].status == "pending"
    assert lost == [], "another instance finds the marker"
    for key in client.scan_iter(f"{joiner.namespace}:*"):
        client.delete(key)
    label = JoinOp("label", "credit", "v1", {"label": 1, "t": 5}, "l|0|1")
    assert [r.status for r in joiner.run([label, ops[2]])] == ["pending", "pending"], "the pair was lost"
    assert lost == ["credit"], "reported once, by the first step that found the marker gone"


def test_labels_without_a_performance_table_raise_performance_alerts(broker, redis_server, tmp_path, monitors):
    """The user sends predictions and labels on one topic and writes no [models.<id>.performance] table:
    the labels are joined by default, the task is inferred (scores in [0, 1]: classification), and when
    the world inverts at inference event 4,000 the model's worsening is announced."""
    topic, alert_topic, namespace, group_id = unique("inference"), unique("alerts"), unique("ns"), unique("group")
    create_topics(broker.address, {topic: 1, alert_topic: 1})
    path = write_config(tmp_path / "plain.toml", bootstrap=broker.address, redis_url=redis_server.address,
                        input_topic=topic, alert_topic=alert_topic, dead_letter_topic=unique("dlq"),
                        group_id=group_id, namespace=namespace, service=SERVICE,
                        models={"credit": {"decisions": "partition",
                                           "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}})
    assert "performance" not in path.read_text()
    events = labelled("credit", 8000, seed=1, invert_at=4000)
    ends = produce(broker.address, topic, [(0, b"credit", orjson.dumps(e), None) for e in events])
    process = MonitorProcess(path, tmp_path / "plain.log")
    monitors.append(process)
    store = store_for(redis_server.address, namespace, group_id)
    wait_for_offsets(store, topic, ends, processes=[process])
    status = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(path), "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert process.terminate() == 0
    alerts = alerts_of(read_topic(broker.address, alert_topic, 1))
    performance = [(x["offset"], x["status"], x["name"], x["detector"]) for x in alerts if x["signal"] == "performance"]
    assert performance == [(8177, "firing", "error_rate", "adwin")]
    assert not [x for x in alerts if x["signal"] != "performance"], "inputs and predictions never changed"
    # the same decision as replay of the same messages (offset = line number, counted from 1)
    replayed = [(a.offset - 1, a.status, a.name, a.detector) for a in replay_alerts(
        parse_config({"models": {"credit": {"decisions": "partition",
                                            "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}}}),
        (orjson.dumps(e) for e in events), {})]
    assert replayed == performance
    (_, state), = final_states(store, topic, [0]).values()
    assert state["models"]["credit"]["performance"]["task"] == "classification"
    assert state["models"]["credit"]["performance"]["pairs_seen"] == 8000, "every label joined, once"
    shown = json.loads(status.stdout)["partitions"][0]["models"]["credit"]["performance"]
    assert shown["task"] == "classification (inferred)" and 0 <= shown["accuracy"] <= 1
    assert "performance monitored as classification, inferred from the warm-up's predictions" in process.log()
