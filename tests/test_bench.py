"""Smoke test of bench/throughput.py's pure helpers (no broker, no Redis; the benchmark itself is `make bench`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import orjson
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_events_are_seeded_inference_events(bench):
    lines = bench.events(5, 300, seed=3)
    assert lines == bench.events(5, 300, seed=3)
    assert lines != bench.events(5, 300, seed=4)
    doc = orjson.loads(lines[0])
    assert doc["model_id"] == "m"
    assert list(doc["features"]) == [f"f{j}" for j in range(5)]
    assert 0 <= doc["prediction"]["score"] <= 1
    assert len({orjson.loads(line)["event_id"] for line in lines}) == 300


def test_naive_baseline_runs(bench):
    assert bench.naive_rate(bench.events(10, 300), 10) > 0


def test_window_of_one_partition_is_checkpoint_to_checkpoint(bench):
    timeline = [(1.0, 3000), (2.0, 10000), (3.0, 20000), (5.0, 30000), (9.0, 32000)]
    window = bench.common_window({0: timeline}, {0: 5000}, {0: 25000})
    assert (window.events, window.seconds) == (20000, 3.0)


def test_interval_rates(bench):
    assert bench.interval_rates([(1.0, 10000), (2.0, 20000), (6.0, 30000)]) == [10000.0, 2500.0]


def test_window_of_two_partitions_interpolates_inside_the_common_span(bench):
    timelines = {0: [(0.0, 0), (1.0, 10000), (3.0, 30000), (4.0, 40000)],
                 1: [(0.0, 0), (2.0, 10000), (4.0, 30000)]}
    window = bench.common_window(timelines, {0: 5000, 1: 5000}, {0: 25000, 1: 25000})
    # from t=2 (both past 5,000) to t=3 (partition 0 past 25,000): 10,000 + 10,000 (interpolated) events
    assert window.seconds == 1.0
    assert window.events == pytest.approx(20000)


def test_stage_rows_put_engine_stages_under_detect(bench):
    text = "\n".join([
        "# TYPE stream_monitor_stage_seconds_total counter",
        'stream_monitor_stage_seconds_total{stage="consume"} 1.0',
        'stream_monitor_stage_seconds_total{stage="detect"} 6.0',
        'stream_monitor_stage_seconds_total{stage="psi"} 2.0',
        'stream_monitor_stage_seconds_total{stage="adwin"} 3.0',
        'stream_monitor_stage_seconds_total{stage="checkpoint"} 1.0',
        "# TYPE stream_monitor_checkpoints_total counter",
        "stream_monitor_checkpoints_total 4.0",
    ]) + "\n"
    scrape = bench.parse_metrics(text)
    assert scrape.checkpoints == 4
    rows = bench.stage_rows({"consume": 0.5, "detect": 2.0}, scrape.stages)
    names = [name for name, _, _ in rows]
    assert names == ["consume", "decode", "join", "detect", "detect › adwin", "detect › psi", "produce",
                     "checkpoint"]
    shares = {name: share for name, _, share in rows}
    assert shares["consume"] == pytest.approx(0.5 / 5.5)
    assert shares["detect"] == pytest.approx(4.0 / 5.5)
    assert sum(share for name, share in shares.items() if "›" not in name) == pytest.approx(1.0)
