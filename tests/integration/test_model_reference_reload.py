"""A model's stored reference reloaded while its decisions are the model's, through the real broker and
Redis: the model window open at the switch (binned against version 1) is dropped and counted, the traffic
after it is judged against version 2, and the merge state names the reference it judges against."""

from __future__ import annotations

import time
import zlib

import orjson

from stream_monitor.codec import decode
from stream_monitor.demo.localstack import create_topics
from stream_monitor.events import RawMessage
from stream_monitor.reference import build_reference
from stream_monitor.state import MergeStore, ReferenceStore
from stream_monitor.synthetic import generate

from ..support import Run, produce, unique, wait_for_offsets

PARTITIONS = 2
# no partition goes idle here (idleness is wall time: a partition read late after going idle would shift the
# model windows); the merge goes as far as every partition's watermark
MODEL = {"decisions": "model", "reference": {"source": "stored"}, "merge_lateness_seconds": 1.0,
         "merge_idle_seconds": 600.0, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}
SERVICE = {"checkpoint_interval_events": 200, "checkpoint_interval_seconds": 0.3, "reference_poll_seconds": 0.3}


def keyed_by_event_id(events) -> list[tuple]:
    return [(zlib.crc32(e["event_id"].encode()) % PARTITIONS, e["event_id"].encode(), orjson.dumps(e), None)
            for e in events]


def profile(docs):
    events = [decode(RawMessage("r", 0, i, orjson.dumps(d)), frozenset(["fraud"])) for i, d in enumerate(docs)]
    return build_reference("fraud", events, None, source="stored")


def test_a_reload_drops_the_open_model_window_and_judges_on_against_the_new_reference(broker, redis_server,
                                                                                      tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    run = Run(broker, redis_server, tmp_path, topic, PARTITIONS, "reload", service=SERVICE, models={"fraud": MODEL})
    references = ReferenceStore(run.store.client, run.namespace)
    references.store(profile(generate("fraud", 4000, seed=7)))
    # 35 s of traffic like version 1: three model windows, and half of a fourth open (buckets 30–34)
    ends = produce(broker.address, topic, keyed_by_event_id(generate("fraud", 3500, seed=8)))
    process = run.start(monitors)
    wait_for_offsets(run.store, topic, ends, processes=[process])

    # version 2, from drifted traffic; the traffic from then on is drawn like it (the drift continues)
    references.store(profile(generate("fraud", 4000, seed=10, drift_at=0)))
    deadline = time.monotonic() + 30
    while "stored reference version 2" not in process.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "stored reference version 2 (was 1)" in process.log()
    drifted = generate("fraud", 4500, seed=9, drift_at=0, start=3500)  # event time goes on from 35 s
    ends = produce(broker.address, topic, keyed_by_event_id(drifted))
    wait_for_offsets(run.store, topic, ends, processes=[process])

    merges = MergeStore(run.store)
    last = int(drifted[-1]["timestamp"]) - 2  # the buckets every partition's watermark has passed (lateness 1 s)
    deadline = time.monotonic() + 90
    state = merges.load("fraud")
    while (state is None or state["last_bucket"] < last) and time.monotonic() < deadline:
        assert process.process.poll() is None, process.log()[-3000:]
        time.sleep(0.1)
        state = merges.load("fraud")
    assert state is not None and state["last_bucket"] == last, process.log()[-3000:]
    assert process.terminate() == 0
    assert state["judged"]["tag"].startswith("2:") and state["judged"]["profile"] is None
    # the windows open at the switch, binned against version 1, were dropped, not mixed: the model window
    # (buckets 30–34: 500 events) and the joint test's (its 3500 rows so far: it closes at 5000)
    assert state["stale"] == {"switches": 1, "windows": 2, "window_events": 500 + 3500}
    assert state["windows"] == 3 + 4  # then 43 s against version 2: four windows of 1000 (and 300 open)
    assert state["window"]["events"] == 300
    assert run.alerts() == []  # drifted from version 1, drawn like version 2
    assert "dropped 2 open window(s) (4000 events) and 0 partial(s)" in process.log()
