"""Equal opportunity decided per model through the real broker and Redis: a model keyed by event id over 4
partitions, its labels 3 s late on the same topic (joined in Redis with each prediction's gender), and a
true-positive gap between the groups that opens at a known event. The model announces it once, with the ids
the engine decides in process, whether 1 instance reads the partitions, 2 do, or 2 with a SIGKILL of the one
that merges the model (docs/MODEL_DECISIONS.md)."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections import Counter

import numpy as np
import orjson
import pytest

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import create_topics
from stream_monitor.events import RawMessage
from stream_monitor.join import MemoryJoin, join_op, kept_columns, performance_settings
from stream_monitor.merge import PartitionPartials, fairness_info, merge_step
from stream_monitor.mergejoint import estimate_info
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import build_reference
from stream_monitor.state import ReferenceStore

from ..support import Feeder, Run, merged_alerts, unique, validator, wait_for_offsets, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 4
EVENTS, GAP_AT, DELAY = 12_000, 6_000, 300  # 100 events a second; labels 300 events (3 s) later
START = 1_795_000_000  # epoch seconds, on a bucket boundary, in the past (a time ahead of its message is refused)
METRICS = ["demographic_parity", "equal_opportunity", "equalized_odds"]
MODEL = {"decisions": "model", "reference": {"source": "stored"}, "merge_lateness_seconds": 1.0,
         "merge_idle_seconds": 1.0, "detectors": {"psi": {"window": 1000}},
         "fairness": {"attributes": ["gender"], "metrics": METRICS, "window": 2000, "label_window": 1000}}
SERVICE = {"checkpoint_interval_events": 200, "checkpoint_interval_seconds": 0.3}


def documents(count: int, seed: int, gap_at: int | None, prefix: str = "e") -> list[dict]:
    """Scored predictions of ``credit`` (gender F or M, favourable half the time) and each one's label
    ``DELAY`` events later; from ``gap_at`` on F's predictions agree with the truth 60 % of the time (M's:
    90 %), so F's true-positive rate falls from 0.9 to 0.6 while parity holds."""
    rng = np.random.default_rng(seed)
    out, waiting = [], []
    for k in range(count):
        gender = "F" if rng.random() < 0.5 else "M"
        truth = int(rng.random() < 0.5)
        right = rng.random() < (0.6 if gender == "F" and gap_at is not None and k >= gap_at else 0.9)
        positive = truth if right else 1 - truth
        score = float(0.5 + 0.4 * rng.random()) if positive else float(0.4 * rng.random())
        stamp = round(START + k / 100, 2)
        out.append({"event_id": f"{prefix}{k}", "model_id": "credit", "timestamp": stamp,
                    "features": {"gender": gender, "x": float(rng.normal())}, "prediction": {"score": score}})
        waiting.append((f"{prefix}{k}", truth))
        if len(waiting) > DELAY:
            event_id, label = waiting.pop(0)
            out.append({"event_id": event_id, "model_id": "credit", "label": label, "timestamp": stamp})
    return out


def keyed(docs) -> list[tuple]:
    """(partition, key, value, headers) as a producer keyed by event id spreads them (a label on its
    prediction's partition)."""
    return [(zlib.crc32(d["event_id"].encode()) % PARTITIONS, d["event_id"].encode(), orjson.dumps(d), None)
            for d in docs]


def reference():
    events = [decode(RawMessage("r", 0, i, orjson.dumps(d)), frozenset(["credit"]))
              for i, d in enumerate(d for d in documents(5000, 7, None, prefix="r") if "features" in d)]
    return build_reference("credit", events, None, source="stored")


def engine(records):
    """What the engine decides in process on the same partitions and offsets, the label join shared by the
    partitions as Redis shares it: the merge's result."""
    config = parse_config({"models": {"credit": MODEL}})
    settings, attributes = performance_settings(config), kept_columns(config)
    join = MemoryJoin(settings)
    profile = reference()
    parts = []
    for p in range(PARTITIONS):
        monitor = PartitionMonitor(config, p, {"credit": profile})
        items = []
        for offset, value in enumerate(value for partition, _, value, _ in records if partition == p):
            event = decode(RawMessage("t", p, offset, value), frozenset(["credit"]))
            op = join_op(event, f"t|{p}|{offset}", settings, attributes)
            items.append((offset, event, join.run([op])[0] if op else None))
        monitor.process_batch(items)
        monitor.go_idle()
        mark = monitor.merge_marks()["credit"]
        parts.append(PartitionPartials("t", p, mark["watermark"], True, mark["partials"]))
    return merge_step(config.models["credit"], profile, None, parts, 1000)


def counts_of(state) -> dict:
    return {"windows": state["windows"], **(state.get("fairness_windows") or {}),
            "estimated": (state.get("estimate") or {}).get("windows", 0)}


def finish(run: Run, processes, counts: dict, timeout: float = 120.0) -> list[dict]:
    """Until the merge state has decided ``counts`` windows (features, predictions, pairs, estimates); the alerts."""
    return merged_alerts(run, processes, "credit", counts, counts_of, timeout)


def test_an_equal_opportunity_gap_is_announced_once_with_the_same_ids_by_1_and_2_instances_and_after_a_sigkill(
        broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    records = keyed(documents(EVENTS, 1, GAP_AT))
    expected = engine(records)
    counts = counts_of(expected.state)
    assert counts == {"windows": 12, "predictions": 6, "pairs": 11, "estimated": 9}
    fired = [(a.detector, a.window["first_bucket"] - START, a.window["last_bucket"] - START)
             for a in expected.alerts if a.signal == "fairness"]
    # the gap opens at event 6,000 (60 s); its label comes at 63 s. Pair windows of 1,000 labels, counted by
    # the label's time, from the first label (3 s): the one of 63–72 s, the first wholly after the change,
    # announces equal opportunity and equalized odds; parity holds
    assert fired == [("equal_opportunity", 63, 72), ("equalized_odds", 63, 72)]

    def pipeline(name: str) -> Run:
        run = Run(broker, redis_server, tmp_path, topic, PARTITIONS, name, service=SERVICE, models={"credit": MODEL})
        ReferenceStore(run.store.client, run.namespace).store(reference())
        return run

    one, two, killed = pipeline("fair-one"), pipeline("fair-two"), pipeline("fair-killed")
    processes = {"one": [one.start(monitors)], "two": [two.start(monitors), two.start(monitors)]}
    first = killed.start(monitors)
    wait_until(lambda: f"assigned {topic}[" in first.log(), "an assignment", first)
    second = killed.start(monitors)
    # the group has two members: the partitions are shared
    wait_until(lambda: f"assigned {topic}[" in second.log(), "an assignment", second)
    feeder = Feeder(broker.address, topic, records, rate=1500)
    feeder.start()
    # labels are joined and the first pair windows merged by then; the gap's window is yet to come
    wait_for_offsets(killed.store, topic, {p: 1200 for p in range(PARTITIONS)}, processes=[first, second])
    assert feeder.is_alive(), "killed mid-stream"
    merge_partition = zlib.crc32(b"credit") % PARTITIONS
    merger, survivor = (second, first) if f"assigned {topic}[{merge_partition}]" in second.log() else (first, second)
    merger.kill()
    feeder.result()
    alerts = {"killed": finish(killed, [survivor], counts), "one": finish(one, processes["one"], counts),
              "two": finish(two, processes["two"], counts)}
    ids = [a.alert_id for a in expected.alerts]
    schema = validator("alert.json")
    for name, found in alerts.items():
        assert {a["alert_id"] for a in found} == set(ids), name  # a SIGKILL may repeat an id, never lose one
        firing = Counter((a["name"], a["detector"]) for a in {a["alert_id"]: a for a in found}.values()
                         if a["signal"] == "fairness" and a["status"] == "firing")
        assert firing == {("gender", "equal_opportunity"): 1, ("gender", "equalized_odds"): 1}, name
        for alert in found:
            schema.validate(alert)
    alert = next(a for a in alerts["killed"] if a["detector"] == "equal_opportunity")
    assert alert["partition"] is None and sorted(alert["window"]["events"]) == [f"{topic}|{p}" for p in range(4)]
    assert alert["current"]["groups"]["F"]["tpr"] < 0.75 < alert["current"]["groups"]["M"]["tpr"]
    # `status` shows the model's groups' rates and counts, read from the merge state in Redis: the engine's
    done = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(killed.config), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = orjson.loads(done.stdout)["model_decisions"]["credit"]["fairness"]
    assert shown == orjson.loads(orjson.dumps(fairness_info(parse_config({"models": {"credit": MODEL}}).models["credit"],
                                                            expected.state)))
    assert shown["gender"]["windows"] == {"predictions": 6, "pairs": 11}
    # and the model's estimated performance beside it (the scores stay sure: the estimate holds its range),
    # calibrated on the pairs of its first buckets from all partitions: the engine's too
    estimated = orjson.loads(done.stdout)["model_decisions"]["credit"]["estimated"]
    assert estimated == orjson.loads(orjson.dumps(estimate_info(parse_config({"models": {"credit": MODEL}})
                                                                .models["credit"], expected.state)))
    assert estimated["windows"] == 9 and estimated["calibrated_pairs"] == 2002
    assert all(estimated["metrics"][m] >= estimated["floors"][m] for m in estimated["metrics"])
