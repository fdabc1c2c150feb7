"""Smoke test of bench/throughput.py's pure helpers (no broker, no Redis; the benchmark itself is `make bench`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import orjson
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"


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
    lines = bench.events(5, 300, seed=3, rounded=True)
    assert lines == bench.events(5, 300, seed=3, rounded=True)
    assert lines != bench.events(5, 300, seed=4, rounded=True)
    doc = orjson.loads(lines[0])
    assert doc["model_id"] == "m"
    assert list(doc["features"]) == [f"f{j}" for j in range(5)]
    assert 0 <= doc["prediction"]["score"] <= 1
    assert len({orjson.loads(line)["event_id"] for line in lines}) == 300


def test_realistic_events_have_full_precision_timestamps_categories_and_nulls(bench):
    lines = bench.events(20, 2000, seed=3)
    assert lines == bench.events(20, 2000, seed=3) and lines != bench.events(20, 2000, seed=4)
    docs = [orjson.loads(line) for line in lines]
    assert list(docs[0]["features"]) == [f"f{j}" for j in range(20)] + list(bench.CATEGORIES)
    numbers = [v for d in docs for k, v in d["features"].items() if k.startswith("f") and v is not None]
    assert all(isinstance(v, float) for v in numbers)
    assert sum(len(repr(v)) >= 17 for v in numbers) > 0.5 * len(numbers)  # full precision, not 4 decimals
    nulls = sum(v is None for d in docs for v in d["features"].values())
    assert 0.005 < nulls / (20 * len(docs)) < 0.02
    for name, choices in bench.CATEGORIES.items():
        assert {d["features"][name] for d in docs} == set(choices)
    times = [d["timestamp"] for d in docs]
    assert times == sorted(times) and times[0] > bench.START_TIME
    assert 0.05 < times[-1] - times[0] < 0.2  # ~EVENT_RATE events per second of event time
    assert len(orjson.loads(bench.events(20, 1, rounded=True)[0])["features"]) == 20


def test_realistic_label_events_follow_their_prediction(bench):
    lines = bench.events(3, 1200, seed=2, labels_every=2)
    labels = [orjson.loads(line) for line in lines if b'"label"' in line]
    assert len(labels) == (1200 - bench.LABEL_DELAY + 1) // 2
    assert labels[0]["event_id"] == "e2-0" and "timestamp" in labels[0]
    assert bench.offset_after(lines, bench.LABEL_DELAY + 1) == bench.LABEL_DELAY + 1


def test_naive_baseline_runs(bench):
    assert bench.naive_rate(bench.events(10, 300), 10) > 0


def test_interval_rates(bench):
    assert bench.interval_rates([(1.0, 10000), (2.0, 20000), (6.0, 30000)]) == [10000.0, 2500.0]


def test_live_window_of_one_partition_runs_from_production_start_to_the_target_checkpoint(bench):
    timeline = [(1.0, 5000), (11.0, 15000), (12.0, 25000), (13.5, 35000), (14.0, 45000)]
    window = bench.live_window({0: timeline}, 10.0, 5000, {0: 30000})
    assert (window.events, window.seconds, window.start) == (30000, 3.5, 10.0)


def test_live_window_of_two_partitions_counts_the_early_one_up_to_the_late_ones_checkpoint(bench):
    timelines = {0: [(0.0, 5000), (2.0, 15000), (3.0, 25000), (4.0, 35000)],
                 1: [(1.0, 5000), (2.5, 15000), (4.5, 25000), (5.0, 35000)]}
    window = bench.live_window(timelines, 1.5, 5000, {0: 25000, 1: 25000})
    # closes at t=4.5 (partition 1 stores 25,000); partition 0 stored 35,000 at t=4.0 and nothing after
    assert window.seconds == 3.0
    assert window.events == pytest.approx(30000 + 20000)
    timelines[0].append((5.0, 45000))  # a later checkpoint: partition 0's offset at t=4.5 is interpolated
    assert bench.live_window(timelines, 1.5, 5000, {0: 25000, 1: 25000}).events == pytest.approx(35000 + 20000)


LOG = """\
2026-11-28 00:25:53,206 INFO    stream_monitor: starting (pid 758)
2026-11-28 00:25:56,000 INFO    stream_monitor.app: consuming bench.live2.ab as group bench-live2-ab
2026-11-28 00:25:59,062 INFO    stream_monitor.app: assigned bench.live2.ab[0]: no stored state, reading from the beginning
2026-11-28 00:25:59,063 INFO    stream_monitor.app: assigned bench.live2.ab[1]: no stored state, reading from the beginning
2026-11-28 00:26:02,100 INFO    stream_monitor.app: revoked bench.live2.ab[0], bench.live2.ab[1]
2026-11-28 00:26:02,200 INFO    stream_monitor.app: revoked nothing
2026-11-28 00:26:05,300 INFO    stream_monitor.app: assigned bench.live2.ab[1]: resuming at offset 5000
"""


def test_ownership_replays_assignments_and_revocations(bench):
    topic = "bench.live2.ab"
    assert bench.ownership(LOG, topic) == ({1}, 4)
    assert bench.ownership(LOG, "bench.live2.a") == (set(), 0)  # another topic (a prefix of this one)
    assert bench.ownership("", topic) == (set(), 0)
    assert bench.ownership(LOG.rsplit("\n", 2)[0] + "\n", topic) == (set(), 3)  # after the revocation
    partial = LOG + "2026-11-28 00:26:06,000 INFO    stream_monitor.app: revoked bench.live2.ab[1"
    assert bench.ownership(partial, topic) == ({1}, 4)  # a line still being written is ignored
    lost = LOG + ("2026-11-28 00:26:09,000 WARNING stream_monitor.app: lost bench.live2.ab[1] without a clean "
                  "revoke; their unsaved progress will be redone by the new owner\n")
    assert bench.ownership(lost, topic) == (set(), 5)


def test_settled_needs_one_partition_per_instance_and_all_partitions_owned(bench):
    topic = "bench.live2.ab"
    other = LOG.replace("[1]: resuming", "[0]: resuming")  # this instance ends up owning partition 0
    assert bench.settled([LOG, other], topic, 2) == [{1}, {0}]
    assert bench.settled([LOG, LOG], topic, 2) is None  # both own partition 1
    before_rebalance = LOG.rsplit("\n", 4)[0] + "\n"  # the first instance still owns both
    assert bench.ownership(before_rebalance, topic)[0] == {0, 1}
    assert bench.settled([before_rebalance, ""], topic, 2) is None
    assert bench.settled([LOG], topic, 2) is None  # partition 0 unowned
    assert bench.settled([other], topic, 1) == [{0}]
    assert bench.settled([""], topic, 1) is None


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


def test_busy_window_interpolates_every_partition_at_both_ends(bench):
    timelines = {0: [(0.0, 5000), (1.0, 15000), (2.0, 25000), (3.0, 35000)],
                 1: [(0.0, 5000), (2.0, 15000), (4.0, 25000)]}
    window = bench.busy_window(timelines, 1.5, 3.0)
    # partition 0: 20,000 → 35,000; partition 1: 12,500 → 20,000
    assert window.seconds == 1.5
    assert window.events == pytest.approx(15000 + 7500)
    assert bench.busy_window(timelines, 3.0, 3.0) is None


def test_live_window_takes_a_start_per_partition(bench):
    timelines = {0: [(0.0, 900), (2.0, 10900)], 1: [(0.0, 1100), (3.0, 11100)]}
    window = bench.live_window(timelines, 1.0, {0: 900, 1: 1100}, {0: 10900, 1: 11100})
    assert (window.seconds, window.events) == (2.0, 20000)


def test_settled_with_two_partitions_per_instance(bench):
    topic = "bench.merged2.ab"
    line = "2026-11-28 00:25:59,062 INFO    stream_monitor.app: assigned {topic}[{p}]: no stored state\n"
    logs = ["".join(line.format(topic=topic, p=p) for p in pair) for pair in ((0, 1), (2, 3))]
    assert bench.settled(logs, topic, 4, per_instance=2) == [{0, 1}, {2, 3}]
    assert bench.settled([logs[0], logs[0]], topic, 4, per_instance=2) is None  # 2 and 3 unowned
    overlapping = "".join(line.format(topic=topic, p=p) for p in (1, 2))
    assert bench.settled([logs[0], overlapping], topic, 3, per_instance=2) is None  # partition 1 owned twice
    assert bench.settled(["".join(logs)], topic, 4, per_instance=4) == [{0, 1, 2, 3}]


def test_keyed_by_event_id_spreads_one_model_over_every_partition_by_its_key(bench):
    lines = bench.events(3, 2000, seed=7)
    keyed = bench.keyed_by_event_id(lines, 4)
    assert sorted(keyed) == [0, 1, 2, 3]
    assert all(len(keyed[p]) > 400 for p in keyed)  # ~500 each
    assert sorted(line for part in keyed.values() for _, line in part) == sorted(lines)
    for p, part in keyed.items():
        mine = {line for _, line in part}
        assert [line for _, line in part] == [line for line in lines if line in mine]  # in order
        for key, line in part:
            assert key == orjson.loads(line)["event_id"].encode()
            assert bench.zlib.crc32(key) % 4 == p
    assert keyed == bench.keyed_by_event_id(lines, 4)


def test_stage_rows_make_merge_a_loop_stage_and_sketch_part_of_detect(bench):
    after = {"consume": 1.0, "decode": 2.0, "join": 0.0, "detect": 4.0, "sketch": 1.0, "rank": 2.0,
             "produce": 0.5, "checkpoint": 0.5, "merge": 2.0}
    rows = bench.stage_rows({}, after)
    names = [name for name, _, _ in rows]
    assert names == ["consume", "decode", "join", "detect", "detect › rank", "detect › sketch", "produce",
                     "checkpoint", "merge"]
    shares = {name: share for name, _, share in rows}
    assert shares["merge"] == pytest.approx(2.0 / 10.0)
    assert sum(share for name, share in shares.items() if "›" not in name) == pytest.approx(1.0)
    assert bench.merge_share(rows) == (pytest.approx(0.2), pytest.approx(0.1))
    assert "merge" not in [name for name, _, _ in bench.stage_rows({}, {"detect": 1.0})]  # only when exported


def test_parse_args_of_the_merged_scenario(bench):
    assert bench.parse_args([]).measured == bench.DEFAULT_EVENTS
    args = bench.parse_args(["--quick", "--merged-only"])
    assert (args.measured, args.merged_only, args.single_only) == (bench.QUICK_EVENTS, True, False)
    assert bench.parse_args(["--events", "50000", "--merged-only", "--join"]).measured == 50000
    with pytest.raises(SystemExit):
        bench.parse_args(["--merged-only", "--single-only"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--labels"])


def test_the_merged_scenarios_config_is_model_level_on_a_stored_reference(bench, tmp_path):
    from stream_monitor.config import load_config

    stack = bench.Stack("127.0.0.1:9092", "redis://127.0.0.1:6379/0", tmp_path, [])
    merged = load_config(bench.write_config(stack, tmp_path / "m.toml", "t", "g", 9100, by_model=True))
    model = merged.models["m"]
    assert (model.decisions, model.reference.source, model.performance.enabled) == ("model", "stored", False)
    joined = load_config(bench.write_config(stack, tmp_path / "j.toml", "t", "g", 0, join=True)).models["m"]
    assert (joined.decisions, joined.reference.source, joined.performance.enabled) == ("partition", "warmup", True)


def _merged(bench, instances, rate_after, merge_share):
    window = bench.Window(40000, 4.0, 10.0)
    tail = bench.Window(rate_after * 2.0, 2.0, 12.0)
    rows = bench.stage_rows({}, {"consume": 1.0, "detect": 8.0 - 10 * merge_share, "sketch": 0.5,
                                 "merge": 10 * merge_share, "checkpoint": 1.0})
    return bench.MergedResult(instances, window, tail, 120000, 1.5, ["t[0], t[1], t[2], t[3]"], 0, rows, rows,
                              3, 0, [], 0.1, 0.9 * instances)


def test_report_of_the_merged_scenario_prints_rates_the_ratio_and_the_merge_share(bench, capsys):
    bench.report_merged([_merged(bench, 1, 10000, 0.01), _merged(bench, 2, 18000, 0.02)])
    out = capsys.readouterr().out
    assert "One model keyed by event id over 4 partitions" in out
    assert "| 2 | 40,000 | 4.00 | 10,000 | 18,000 | 2.00 | 1.80 |" in out
    assert "| 1.80 | 10,000 | 0.00 | 3 | 0 |" in out  # the instances' cores, events per CPU second, others'

    assert "two instances ≥ 1.7× one (once production had ended) | 1.80× | PASS |" in out
    assert "| merge | " in out and "| detect › sketch | " in out
    assert "merge / sketches) | 2.0% / 5.0% |" in out


def test_an_instance_is_idle_only_when_all_of_its_partitions_ran_out(bench):
    assert bench.idle_instances([{0, 1, 2, 3}], [0]) == []
    assert bench.idle_instances([{0, 1}, {2, 3}], [0, 1, 3]) == [1]
    assert bench.idle_instances([{0, 1}, {2, 3}], []) == []


def test_false_alarms_quick_reports_per_model():
    """bench/false_alarms.py --quick: the per-model table (the wide model's test count from its partitions'
    references) and the delays beside today's, in seconds (the figures of a smoke run mean nothing)."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "bench" / "false_alarms.py"
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    # budget: the two new tests are counted (the estimated performance and the joint test: 165 → 167)
    assert "Per model: a 20-feature model (+ score, latency: 167 tests) on 4 partitions" in out
    assert "| 0.1 per model (this version) | each test 0.0006 per 10^6 |" in out
    assert "per 10^6 of the model's events (target < 1)" in out
    assert "fairness (demographic_parity and equalized_odds, one test's share 0.0006 each): 0 firing alerts" in out
    assert "per model (each test 0.0006) / before (each test 0.1)" in out


def test_single_cases_add_the_other_workload_and_the_join_cases(bench):
    cases = bench.single_cases(bench.parse_args([]))
    assert cases == [bench.Case(20), bench.Case(100), bench.Case(20, rounded=True),
                     bench.Case(20, join=True), bench.Case(20, join=True, labels=True)]
    rounded = bench.single_cases(bench.parse_args(["--rounded", "--no-join-cases"]))
    assert rounded == [bench.Case(20, rounded=True), bench.Case(100, rounded=True), bench.Case(20)]
    joined = bench.single_cases(bench.parse_args(["--join", "--no-comparison"]))
    assert joined == [bench.Case(20, join=True), bench.Case(100, join=True), bench.Case(20),
                      bench.Case(20, join=True, labels=True)]


def _inputs(bench, **changes):
    inputs = bench.CapacityInputs("realistic", cpu_fixed_us=5.0, cpu_column_us=0.5, checkpoint_fixed_ms=1.0,
                                  checkpoint_column_ms=0.0, checkpoint_round_trips=2.0, checkpoint_bytes_column=1500,
                                  state_bytes_column=1400, redis_bytes_column=12000, event_bytes_fixed=170,
                                  event_bytes_feature=24.0, join_us_per_prediction=10.0, join_redis_us_per_op=10.0,
                                  join_bytes_per_label=700, join_memory_per_prediction=200, alerts_per_million=0.0,
                                  redis_cpu_us=1.0, redis_cpu_join_us=10.0)
    return __import__("dataclasses").replace(inputs, **changes) if changes else inputs


def test_projection_of_the_capacity_inputs(bench):
    p = bench.project(_inputs(bench), rate=1_000_000, models=10_000, features=50)
    assert p.columns == 51 and p.cpu_us_per_event == pytest.approx(5.0 + 0.5 * 51)
    assert (p.detect_cores, p.join_cores) == (pytest.approx(30.5), pytest.approx(10.0))
    # checkpoints: 1 ms each, every 10,000 events or 5 s: a few cores at most
    assert p.partitions == p.instances and p.instances * 0.7 >= 40.5 + p.checkpoint_cores
    assert (p.instances - 1) * 0.7 < 40.5 + p.checkpoint_cores
    assert p.state_bytes == pytest.approx(10_000 * 51 * 12000)
    # each model gets 100 events/s: half labelled an hour later and kept a day, half kept 7 days: over the
    # 256 MiB budget, which then holds it
    assert p.join_bytes == pytest.approx(10_000 * 256 * 2**20)
    assert p.redis_cores == pytest.approx(10.0) and p.shards == max(-(-int(p.redis_bytes) // int(25e9)), 20)
    assert p.broker_bytes_per_second == pytest.approx(1_000_000 * (170 + 24 * 50))
    short = bench.project(_inputs(bench), label_delay=60, retention=60, prediction_ttl=60)
    assert short.join_bytes == pytest.approx(10_000 * 100 * (0.5 * (60 + 60) + 0.5 * 60) * 200)  # labelled: wait + kept


def test_a_checkpoint_that_grows_with_the_models_of_a_partition_needs_more_partitions(bench):
    cheap = bench.project(_inputs(bench))
    costly = bench.project(_inputs(bench, checkpoint_column_ms=0.2))
    assert costly.partitions > cheap.partitions and costly.checkpoint_cores > cheap.checkpoint_cores
    assert costly.instances * 0.7 >= costly.detect_cores + costly.join_cores + costly.checkpoint_cores


def _single(bench, features, join=False, labels=False, seconds=1.0, cores=0.5, redis_cpu=0.01):
    events = 15_000 if labels else 10_000
    inference = 10_000
    stages = bench.stage_rows({}, {"decode": 0.2, "detect": 0.6, "join": 0.1 if join else 0.0,
                                   "checkpoint": 0.001 * (features + 4)})
    traffic = bench.RedisTraffic({"evalsha": 1 + (10 if join else 0)}, redis_cpu, 20_000 * (features + 4),
                                 1_000, 3)
    return bench.SingleResult(features, bench.Window(events, seconds), stages, 0, 1300 * (features + 4),
                              12_000 * (features + 4), 0, naive=1.0, decode_only=1.0, join=join, labels=labels,
                              inference=inference, label_events=events - inference, checkpoints=1,
                              monitor_cores=cores, redis=traffic, event_bytes=167 + 24 * features)


def test_capacity_inputs_come_from_the_join_off_cases_and_the_join_cases(bench):
    results = [_single(bench, 20), _single(bench, 100, seconds=4.0),
               _single(bench, 20, join=True, seconds=1.2, redis_cpu=0.08),
               _single(bench, 20, join=True, labels=True, seconds=2.0, cores=0.4, redis_cpu=0.2)]
    inputs = bench.capacity_inputs(results, {})
    # CPU per event: 50 µs at 24 columns, 200 µs at 104: 1.875 µs per column
    assert inputs.cpu_column_us == pytest.approx(150 / 80) and inputs.cpu_fixed_us == pytest.approx(50 - 24 * 150 / 80)
    assert inputs.checkpoint_column_ms == pytest.approx(1.0) and inputs.checkpoint_fixed_ms == pytest.approx(0.0)
    assert inputs.join_us_per_prediction == pytest.approx(80 - 50)  # 0.4 cores × 2 s over 10,000 predictions
    assert (inputs.redis_cpu_us, inputs.redis_cpu_join_us) == (pytest.approx(1.0), pytest.approx(0.2 / 15_000 * 1e6))
    assert inputs.state_bytes_column == 1300 and inputs.redis_bytes_column == 12_000
    assert (inputs.event_bytes_fixed, inputs.event_bytes_feature) == (pytest.approx(167), pytest.approx(24))
    assert bench.capacity_inputs(results[:1], {}) is None and bench.capacity_inputs([], {}) is None
