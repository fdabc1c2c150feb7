"""Per-segment performance from delayed labels through the real label join: each prediction's segment
columns go into Redis with it (the join's Lua scripts), and the label that arrives 300 events later comes
back with them, so the segment's floor fires where the engine fed the stream's own joins fires it."""

from __future__ import annotations

import pytest

from stream_monitor.config import parse_config
from stream_monitor.join import RedisJoin, join_op, kept_columns, performance_settings
from stream_monitor.partition import PartitionMonitor
from stream_monitor.state import connect

from ..support import segment_labelled_stream, unique

pytestmark = pytest.mark.integration

TABLE = {"decisions": "partition", "reference": {"events": 5000}, "detectors": {"psi": {"window": 5000}},
         "features": {"amount": "numeric", "country": "categorical"}, "segments": {"columns": ["country"], "top_k": 3},
         "performance": {"task": "classification", "window": 1000, "floors": {"accuracy": 0.85}}}


def test_a_segments_floor_is_judged_from_labels_joined_in_redis(redis_server):
    config = parse_config({"models": {"m": TABLE}})
    settings, kept = performance_settings(config), kept_columns(config)
    joiner = RedisJoin(connect(redis_server.address), unique("segperf"), settings)
    items = segment_labelled_stream(45_000, 5)
    through_redis, expected = PartitionMonitor(config, 0, {}), PartitionMonitor(config, 0, {})
    alerts, engine = [], []
    for start in range(0, len(items), 1000):  # one join round trip per batch, as the service makes
        batch = [(start + i, event, join) for i, (event, join) in enumerate(items[start:start + 1000])]
        ops = [join_op(event, f"in|0|{offset}", settings, kept) for offset, event, _ in batch]
        results = iter(joiner.run([op for op in ops if op is not None]))
        joined = [(offset, event, next(results) if op is not None else None)
                  for (offset, event, _), op in zip(batch, ops)]
        assert all(j.other["g"]["country"] for _, _, j in joined if j is not None and j.status == "joined")
        alerts += through_redis.process_batch(joined)
        engine += expected.process_batch(batch)
    floors = [(a.offset, a.status, a.name, a.detector, a.segment) for a in alerts if a.detector == "floor"]
    assert floors == [(64_923, "firing", "accuracy", "floor", {"country": "FR"})]
    assert [a.alert_id for a in alerts] == [a.alert_id for a in engine]
