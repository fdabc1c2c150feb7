"""Segments decided by the model with its warm-up reference, through the real broker and Redis: each
partition's warm-up share keeps its per-segment summaries in its partials in Redis, the merge builds the top
segments' profiles from them, and a shift confined to one segment is announced once, for it alone, with the
ids the engine decides in process over the same partitions."""

from __future__ import annotations

import time
import zlib

import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import create_topics
from stream_monitor.state import MergeStore

from ..support import FEATURES_BY_COUNTRY, Run, model_cluster, produce, segmented_json, segmented_stream, unique

pytestmark = pytest.mark.integration

PARTITIONS = 3
MODEL = {"decisions": "model", "reference": {"events": 2000}, "detectors": {"psi": {"window": 2000}},
         "features": FEATURES_BY_COUNTRY, "segments": {"columns": ["country"], "top_k": 3},
         "merge_lateness_seconds": 1.0, "merge_idle_seconds": 1.0}
SERVICE = {"checkpoint_interval_events": 500, "checkpoint_interval_seconds": 0.3}


def test_the_models_warm_up_gives_its_segments_and_a_segments_shift_is_announced_once(broker, redis_server,
                                                                                      tmp_path, monitors):
    events = segmented_stream(40_000, 21, spread_from=12_000)  # FR's amount spreads 1.6 times wider
    expected, state = model_cluster(parse_config({"models": {"m": MODEL}}), [(e, None) for e in events], PARTITIONS)
    assert expected and all(a.segment == {"country": "FR"} for a in expected)
    topic = unique("segmodel")
    create_topics(broker.address, {topic: PARTITIONS})
    run = Run(broker, redis_server, tmp_path, topic, PARTITIONS, "segmodel", service=SERVICE, models={"m": MODEL})
    produce(broker.address, topic, [(zlib.crc32(e.event_id.encode()) % PARTITIONS, e.event_id.encode(),
                                     orjson.dumps(segmented_json(e)), None) for e in events])
    process = run.start(monitors)
    merges = MergeStore(run.store)
    deadline = time.monotonic() + 180
    while True:  # until the merge has decided every model window the engine did
        saved = merges.load("m")
        if saved is not None and saved["windows"] >= state["windows"]:
            break
        assert time.monotonic() < deadline and process.process.poll() is None, process.log()[-3000:]
        time.sleep(0.2)
    assert saved["reference"]["segments"] == state["reference"]["segments"]
    deadline = time.monotonic() + 60
    while len(alerts := run.alerts()) < len(expected):  # the last segment windows once every partition is idle
        assert time.monotonic() < deadline, (alerts, process.log()[-3000:])
        time.sleep(0.5)
    assert process.terminate() == 0
    assert [a["alert_id"] for a in alerts] == [a.alert_id for a in expected]
    assert {(a["signal"], a["name"], a["detector"]) for a in alerts} <= {
        ("feature", "amount", "psi"), ("feature", "amount", "ks"), ("data_quality", "amount", "out_of_range")}
