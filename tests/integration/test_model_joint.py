"""Joint drift decided per model through the real broker and Redis: a correlation that appears while every
feature's own distribution stays the same, keyed by event id over 4 partitions and read by 2 instances,
is announced once, with the id the engine decides in process (docs/MODEL_DECISIONS.md)."""

from __future__ import annotations

import time
import zlib

import numpy as np
import orjson

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import create_topics
from stream_monitor.events import RawMessage
from stream_monitor.merge import PartitionPartials, merge_step
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import build_reference
from stream_monitor.state import MergeStore, ReferenceStore

from ..support import Run, produce, unique, validator

PARTITIONS = 4
EVENTS, CHANGE_AT = 8000, 4000  # 80 s of event time at 100 events/s; the correlation appears at 40 s
START = 1_795_000_000  # epoch seconds, on a bucket boundary, in the past (a time ahead of its Kafka message is refused)
MODEL = {"decisions": "model", "reference": {"source": "stored"}, "merge_lateness_seconds": 1.0,
         "merge_idle_seconds": 1.0, "detectors": {"psi": {"window": 1000}, "multivariate": {"window": 2000}}}
SERVICE = {"checkpoint_interval_events": 200, "checkpoint_interval_seconds": 0.3}


def documents(count: int, seed: int, change_at: int | None, prefix: str = "e") -> list[dict]:
    """Five standard normal features; from ``change_at`` on f0 and f1 correlated 0.6 (marginals unchanged)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 5))
    if change_at is not None:
        x[change_at:, 1] = 0.6 * x[change_at:, 0] + 0.8 * x[change_at:, 1]
    return [{"event_id": f"{prefix}{k}", "model_id": "joint", "timestamp": START + k / 100,
             "features": {f"f{c}": float(v) for c, v in enumerate(row)}} for k, row in enumerate(x)]


def reference():
    events = [decode(RawMessage("r", 0, i, orjson.dumps(d)), frozenset(["joint"]))
              for i, d in enumerate(documents(5000, 3, None, prefix="r"))]
    return build_reference("joint", events, None, source="stored")


def expected_alert_ids(records) -> list[str]:
    """What the engine decides in process on the same partitions and offsets."""
    config = parse_config({"models": {"joint": MODEL}})
    parts = []
    for p in range(PARTITIONS):
        monitor = PartitionMonitor(config, p, {"joint": reference()})
        mine = [value for partition, _, value, _ in records if partition == p]
        monitor.process_batch([(offset, decode(RawMessage("t", p, offset, value), frozenset(["joint"])), None)
                               for offset, value in enumerate(mine)])
        monitor.go_idle()
        mark = monitor.merge_marks()["joint"]
        parts.append(PartitionPartials("t", p, mark["watermark"], True, mark["partials"]))
    return [a.alert_id for a in merge_step(config.models["joint"], reference(), None, parts, 1000).alerts]


def test_two_instances_announce_a_new_correlation_once_with_the_engines_id(broker, redis_server, tmp_path,
                                                                           monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    records = [(zlib.crc32(d["event_id"].encode()) % PARTITIONS, d["event_id"].encode(), orjson.dumps(d), None)
               for d in documents(EVENTS, 1, CHANGE_AT)]
    produce(broker.address, topic, records)
    run = Run(broker, redis_server, tmp_path, topic, PARTITIONS, "joint", service=SERVICE, models={"joint": MODEL})
    ReferenceStore(run.store.client, run.namespace).store(reference())
    processes = [run.start(monitors) for _ in range(2)]
    merges = MergeStore(run.store)
    deadline = time.monotonic() + 120
    state = None
    while time.monotonic() < deadline:  # the joint test's four windows of 2,000 rows decided
        state = merges.load("joint")
        if state is not None and state.get("joint_last") is not None and state["windows"] >= EVENTS // 1000:
            break
        assert all(p.process.poll() is None for p in processes), processes[0].log()[-3000:]
        time.sleep(0.1)
    else:
        raise AssertionError(f"the merge did not decide every window: {state and state['windows']}")
    for process in processes:
        assert process.terminate() == 0, process.log()[-3000:]
    alerts = run.alerts()
    firing = [a for a in alerts if a["status"] == "firing"]
    assert [(a["signal"], a["name"], a["detector"]) for a in firing] == [("multivariate", "joint", "hotelling")]
    (alert,) = firing
    # windows of 2,000 rows = 20 buckets from the first: the change at 40 s starts the third, which fires
    assert alert["window"]["first_bucket"] - START == 40 and alert["partition"] is None
    assert sorted(alert["window"]["events"]) == [f"{topic}|{p}" for p in range(PARTITIONS)]
    assert "corr(f0, f1)" in alert["message"]
    assert [a["alert_id"] for a in alerts] == expected_alert_ids(records)
    validator("alert.json").validate(alert)
