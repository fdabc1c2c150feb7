"""Segments through the broker and Redis: `run` announces a shift confined to one segment for that segment
alone, with the ids the engine gives, and `status` shows the segment firing."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import create_topics
from stream_monitor.partition import PartitionMonitor

from ..support import FEATURES_BY_COUNTRY, Run, produce, segmented_json, segmented_stream, unique, validator, \
    wait_for_offsets

pytestmark = pytest.mark.integration

SEGMENTED = {"decisions": "partition",
             "reference": {"events": 2000}, "detectors": {"psi": {"window": 2000}}, "features": FEATURES_BY_COUNTRY,
             "segments": {"columns": ["country"], "top_k": 3}}


def test_run_announces_a_shift_confined_to_one_segment_for_it_alone(broker, redis_server, tmp_path, monitors):
    topic = unique("segments")
    create_topics(broker.address, {topic: 1})
    run = Run(broker, redis_server, tmp_path, topic, 1, "segments", models={"m": SEGMENTED})
    events = segmented_stream(40_000, 21, spread_from=12_000)  # FR's amount spreads 1.6 times wider
    process = run.start(monitors)
    ends = produce(broker.address, topic, [(0, b"m", orjson.dumps(segmented_json(e)), None) for e in events])
    wait_for_offsets(run.store, topic, ends, processes=[process])

    status = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(run.config)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    fr = next(line for line in status.stdout.splitlines() if "segment country=FR: " in line)
    assert "events, FIRING" in fr and "feature amount psi" in fr
    assert "segment country=DE: " in status.stdout and "segment country=__rest__: " in status.stdout
    assert process.terminate() == 0

    alerts = run.alerts()
    for alert in alerts:
        validator("alert.json").validate(alert)
    assert [(a["offset"], a["signal"], a["name"], a["detector"], a["segment"]) for a in alerts] == [
        (28293, "data_quality", "amount", "out_of_range", {"country": "FR"}),
        (28293, "feature", "amount", "psi", {"country": "FR"})]
    engine = PartitionMonitor(parse_config({"models": {"m": SEGMENTED}}), 0, {})
    expected = engine.process_batch([(offset, e, None) for offset, e in enumerate(events)])
    assert [a["alert_id"] for a in alerts] == [a.alert_id for a in expected]
