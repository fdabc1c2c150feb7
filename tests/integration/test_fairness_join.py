"""Equal opportunity judged from delayed labels through the real label join: each prediction's protected
attributes go into Redis with it (the join's Lua scripts), and the label that arrives 300 events later comes
back with them, so the true-positive rates per group are those of the engine fed the join's results."""

from __future__ import annotations

import pytest

from stream_monitor.config import parse_config
from stream_monitor.join import RedisJoin, join_op, kept_columns, performance_settings
from stream_monitor.partition import ModelMonitor
from stream_monitor.state import connect

from ..support import FAIRNESS_METRICS as ALL, fairness_alerts as fairness, labelled_stream, run_model, unique

pytestmark = pytest.mark.integration


def test_equal_opportunity_is_judged_from_labels_joined_in_redis(redis_server):
    table = {"decisions": "partition", "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}},
             "fairness": {"attributes": ["gender"], "metrics": ALL, "window": 2000, "label_window": 1000}}
    config = parse_config({"models": {"credit": table}})
    settings, attributes = performance_settings(config), kept_columns(config)
    joiner = RedisJoin(connect(redis_server.address), unique("fair"), settings)
    joined = []
    items = labelled_stream()
    for start in range(0, len(items), 500):  # one join round trip per batch, as the service makes
        batch = items[start:start + 500]
        ops = [join_op(event, f"in|0|{offset}", settings, attributes) for offset, event, _ in batch]
        results = iter(joiner.run([op for op in ops if op is not None]))
        joined += [(offset, event, next(results) if op is not None else None)
                   for (offset, event, _), op in zip(batch, ops)]
    pairs = [j for _, _, j in joined if j is not None and j.status == "joined"]
    # every label came after its prediction: the prediction's record, with its gender, came back from Redis
    assert len(pairs) == 30_000 - 300 and all(j.other["g"]["gender"] in ("F", "M") for j in pairs)
    monitor = ModelMonitor(config.models["credit"], None)
    alerts = run_model(monitor, joined, 400)
    assert fairness(alerts) == [(25_697, "firing", "gender", "equal_opportunity", "critical"),
                                (25_697, "firing", "gender", "equalized_odds", "critical")]
    odds = next(a for a in alerts if a.detector == "equalized_odds")
    assert {"F", "M"} <= set(odds.current["groups"])
