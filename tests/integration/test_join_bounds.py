"""The label join's bounds: entries and bytes per model, the oldest evicted for the newest, what one event may store.

The join runs against the session's real Redis; the floods go through the real broker and `stream-monitor run`.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_monitor.config import parse_config
from stream_monitor.errors import ConfigError
from stream_monitor.join import ELEMENT_OVERHEAD, FIELD_OVERHEAD, JoinOp, MemoryJoin, RedisJoin, performance_settings
from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.state import connect
from stream_monitor.synthetic import labelled
from stream_monitor.web import render_page

from ..support import MonitorProcess, final_states, produce, read_topic, store_for, unique, wait_for_offsets, \
    write_config

SCORE = {"score": 0.5, "label": 1, "t": 0}


def settings_of(**performance):
    return performance_settings(parse_config({"models": {"credit": {"performance": {"task": "classification",
                                                                                   **performance}}}}))


def prediction(i: int, me: str | None = None, prefix: str = "e") -> JoinOp:
    return JoinOp("prediction", "credit", f"{prefix}{i}", SCORE, me or f"inf|0|{i}")


def label(i: int, me: str | None = None, prefix: str = "e") -> JoinOp:
    return JoinOp("label", "credit", f"{prefix}{i}", {"label": 1, "t": 5}, me or f"lab|0|{i}")


def statuses(joiner, ops) -> list[str]:
    return [r.status for r in joiner.run(ops)]


def held(client, base: str) -> tuple[int, int, int]:
    """The joined pairs, waiting labels and pending predictions a model's join counts."""
    return tuple(int(v or 0) for v in client.hmget(f"{base}:stats", "done", "labels", "pending"))


def namespace_keys(client, namespace: str) -> set[str]:
    return {k.decode() for k in client.scan_iter(f"{namespace}:*", count=1000)}


# --- the cap on entries: the oldest make room -------------------------------------------------------------------


def test_over_the_cap_the_oldest_pending_predictions_are_evicted_and_counted_as_never_labelled(redis_server):
    settings = settings_of(max_pending=10)
    redis_join = RedisJoin(connect(redis_server.address), unique("ns"), settings)
    memory_join = MemoryJoin(settings)
    for joiner in (redis_join, memory_join):
        assert statuses(joiner, [prediction(i) for i in range(25)]) == ["pending"] * 25, "nothing is refused"
        assert statuses(joiner, [label(i) for i in (0, 14, 15, 24)]) == ["pending", "pending", "joined", "joined"], \
            "the 15 oldest were evicted; the 10 newest are joinable"
    assert memory_join.evicted == {"credit": 15}
    lag = redis_join.lag("credit")
    assert (lag["awaiting"], lag["expired"], lag["evicted"], lag["dropped"], lag["labels_waiting"]) == (8, 15, 15, 0, 2)
    assert statuses(redis_join, [prediction(0)]) == ["joined"], "an evicted prediction sent again meets its label"


def test_a_replay_after_evictions_never_counts_a_pair_twice(redis_server):
    """Predictions 0..19 evict 0..9; labels 0..19 follow; then both sides are processed again (a crash replay):
    every pair is joined by exactly one message identity, however often it is replayed."""
    joiner = RedisJoin(connect(redis_server.address), unique("ns"), settings_of(max_pending=10))
    joined_by: dict[str, set[str]] = {}
    batches = [[prediction(i) for i in range(20)], [label(i) for i in range(20)]] * 3
    batches += [[prediction(i) for i in range(20)]]
    for ops in batches:
        for op, result in zip(ops, joiner.run(ops)):
            if result.status == "joined":
                joined_by.setdefault(op.event_id, set()).add(op.me)
    assert all(len(identities) == 1 for identities in joined_by.values()), joined_by
    assert set(joined_by) == {f"e{i}" for i in range(20)}, "the evicted ones join when the prediction comes again"
    assert {next(iter(joined_by[f"e{i}"])) for i in range(10)} == {f"inf|0|{i}" for i in range(10)}
    assert {next(iter(joined_by[f"e{i}"])) for i in range(10, 20)} == {f"lab|0|{i}" for i in range(10, 20)}


def test_replays_under_a_tight_byte_budget_never_count_a_pair_twice(redis_server):
    """1,000 predictions and their labels through a 64 KiB budget (joined pairs, waiting labels and pending
    predictions all evicted in turn), each batch processed three times in a row: whatever was forgotten,
    no pair is ever joined by two messages."""
    joiner = RedisJoin(connect(redis_server.address), unique("ns"), settings_of(max_pending_bytes=65_536))
    joined_by: dict[str, set[str]] = {}
    for start in range(0, 1000, 125):
        for ops in ([prediction(i) for i in range(start, start + 125)],
                    [label(i) for i in range(max(0, start - 425), max(0, start - 300))]):
            for _ in range(3):
                for op, result in zip(ops, joiner.run(ops)):
                    if result.status == "joined":
                        joined_by.setdefault(op.event_id, set()).add(op.me)
    assert all(len(identities) == 1 for identities in joined_by.values()), joined_by
    lag = joiner.lag("credit")
    assert lag["bytes"] <= 65_536, lag
    # the figures of this sequence (they follow from the entry sizes): labels 300-425 predictions late
    # against room for about 490; a label replayed after its eviction is stored, and evicted, again
    assert (len(joined_by), lag["awaiting"], lag["evicted"], lag["labels_waiting"], lag["labels_evicted"]) == \
        (371, 425, 204, 67, 1287), (len(joined_by), lag)
    print(f"tight budget, every batch thrice: {len(joined_by)} of 1,000 pairs joined, each once; {lag}")


# --- the byte budget ----------------------------------------------------------------------------------------------


def test_the_byte_budget_evicts_joined_pairs_then_waiting_labels_then_the_oldest_predictions(redis_server):
    client = connect(redis_server.address)
    namespace = unique("ns")
    joiner = RedisJoin(client, namespace, settings_of(max_pending_bytes=65_536))
    base = f"{namespace}:join:{{credit}}"
    assert statuses(joiner, [prediction(i, prefix="j") for i in range(20)]) == ["pending"] * 20
    assert statuses(joiner, [label(i, prefix="j") for i in range(20)]) == ["joined"] * 20
    assert statuses(joiner, [label(i, prefix="early") for i in range(20)]) == ["pending"] * 20
    order = []  # what each new prediction's step evicted first
    for i in range(1000):
        before = (*held(client, base)[:2], joiner.lag("credit")["evicted"])
        assert statuses(joiner, [prediction(i)]) == ["pending"]
        after = (*held(client, base)[:2], joiner.lag("credit")["evicted"])
        for kind, b, a in zip(("joined", "label", "prediction"), before, after):
            if b != a and (not order or order[-1] != kind):
                order.append(kind)
        lag = joiner.lag("credit")
        assert lag["bytes"] <= 65_536, (i, lag)
    assert order == ["joined", "label", "prediction"], order
    lag = joiner.lag("credit")
    assert lag["labels_evicted"] == 20 and lag["labels_waiting"] == 0
    assert lag["awaiting"] + lag["evicted"] == 1000 and lag["expired"] == lag["evicted"] > 0
    assert lag["awaiting"] == held(client, base)[2] == client.hlen(f"{base}:pred") > 100
    assert statuses(joiner, [label(999)]) == ["joined"], "the newest prediction is still joinable"
    assert statuses(joiner, [label(0)]) == ["pending"], "the oldest was evicted"
    print(f"byte budget 64 KiB: {lag['awaiting']} predictions kept, {lag['evicted']} evicted, {lag['bytes']} bytes")


def test_join_bytes_follow_redis_memory_and_return_to_zero_when_everything_expired(redis_server):
    client = connect(redis_server.address)
    namespace = unique("ns")
    joiner = RedisJoin(client, namespace, settings_of(prediction_ttl_seconds=1.0, label_wait_seconds=1.0,
                                                      joined_retention_seconds=1.0))
    event_ids = [f"order-{i:06d}-6f1c0f0e-2f5e-4c8e-9d1b-{i:012d}" for i in range(1000)]
    ops = [JoinOp("prediction", "credit", e, SCORE, f"inf|0|{i}") for i, e in enumerate(event_ids)]
    assert statuses(joiner, ops) == ["pending"] * 1000
    assert statuses(joiner, [JoinOp("label", "credit", e, {"label": 0, "t": 1}, f"l|0|{i}")
                             for i, e in enumerate(event_ids[:100])]) == ["joined"] * 100
    assert statuses(joiner, [label(i, prefix="early-") for i in range(100)]) == ["pending"] * 100
    lag = joiner.lag("credit")
    measured = sum(client.memory_usage(k) or 0 for k in namespace_keys(client, namespace))
    print(f"join bytes kept by the scripts {lag['bytes']:,}, MEMORY USAGE of the keys {measured:,}")
    assert 0.6 < lag["bytes"] / measured < 1.6, (lag["bytes"], measured)
    assert (lag["awaiting"], lag["labels_waiting"]) == (900, 100)
    deadline = time.monotonic() + 30
    while joiner.lag("credit")["bytes"] and time.monotonic() < deadline:
        time.sleep(0.1)
    lag = joiner.lag("credit")
    assert (lag["bytes"], lag["awaiting"], lag["labels_waiting"], lag["expired"], lag["evicted"]) == (0, 0, 0, 900, 0)
    assert namespace_keys(client, namespace) == {f"{namespace}:join:{{credit}}:{k}" for k in ("marker", "stats")}, \
        "every entry was deleted by the scripts, none left to Redis's own expiry"


def test_an_entry_bigger_than_the_whole_budget_is_not_stored_and_counted(redis_server):
    joiner = RedisJoin(connect(redis_server.address), unique("ns"), settings_of(max_pending_bytes=65_536))
    huge = JoinOp("label", "credit", "big", {"label": "L" * 70_000, "t": 0}, "lab|0|1")
    assert statuses(joiner, [prediction(1), huge, huge]) == ["pending", "dropped", "dropped"]
    lag = joiner.lag("credit")
    assert lag["dropped"] == 2 and lag["awaiting"] == 1 and lag["bytes"] < 1_000


def test_cost_per_entry_is_its_sizes_plus_the_measured_overhead(redis_server):
    namespace = unique("ns")
    joiner = RedisJoin(connect(redis_server.address), namespace, settings_of())
    client = joiner.client
    joiner.run([prediction(7)])
    base = f"{namespace}:join:{{credit}}"
    value = client.hget(f"{base}:pred", "e7").decode()
    stamp = value.split(" ")[0]
    assert value == f"{stamp} {orjson.dumps(SCORE).decode()}"
    assert client.lrange(f"{base}:q:pending", 0, -1) == [f"{stamp} e7".encode()]
    assert joiner.lag("credit")["bytes"] == FIELD_OVERHEAD + len("e7") + len(value) + ELEMENT_OVERHEAD + len(stamp) + 3


@pytest.mark.parametrize("raw, key", [
    ({"service": {"max_event_id_bytes": 0}}, "service.max_event_id_bytes"),
    ({"models": {"credit": {"performance": {"max_pending_bytes": 1000}}}},
     "models.credit.performance.max_pending_bytes"),
    ({"models": {"credit": {"performance": {"max_pending_bytes": "big"}}}},
     "models.credit.performance.max_pending_bytes"),
])
def test_the_bounds_are_validated_naming_the_key(raw, key):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == key


def test_the_bounds_default_to_a_few_hundred_bytes_per_id_and_256_mib_per_model():
    config = parse_config({"models": {"credit": {"performance": {"task": "classification"}}}})
    assert config.service.max_event_id_bytes == 256
    assert config.models["credit"].performance.max_pending_bytes == 256 * 1024 * 1024


# --- floods through the service -------------------------------------------------------------------------------


CREDIT = {"decisions": "partition", "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}
SERVICE = {"checkpoint_interval_events": 500, "checkpoint_interval_seconds": 0.5}


class Flood:
    """One topic (one partition, so the order is exact) with predictions and labels, one `stream-monitor run`."""

    def __init__(self, broker, redis_server, tmp_path, performance: dict, service: dict | None = None):
        self.broker = broker
        self.topic, self.dead_letter_topic = unique("inference"), unique("dlq")
        self.group_id, self.namespace = unique("group"), unique("ns")
        create_topics(broker.address, {self.topic: 1, self.dead_letter_topic: 1})
        model = {**CREDIT, "performance": {"task": "classification", "window": 500, **performance}}
        self.config = write_config(tmp_path / "flood.toml", bootstrap=broker.address, redis_url=redis_server.address,
                                   input_topic=self.topic, alert_topic=unique("alerts"),
                                   dead_letter_topic=self.dead_letter_topic, group_id=self.group_id,
                                   namespace=self.namespace, models={"credit": model},
                                   service={**SERVICE, **(service or {})})
        self.store = store_for(redis_server.address, self.namespace, self.group_id)
        self.joiner = RedisJoin(self.store.client, self.namespace, performance_settings(parse_config(
            {"models": {"credit": {"performance": model["performance"]}}})))
        self.log = tmp_path / "flood.log"

    def run(self, monitors, events: list[bytes], scrape: bool = False) -> None:
        """Process ``events``; with ``scrape``, also read the join's gauges once they show the final figures."""
        ends = produce(self.broker.address, self.topic, [(0, b"credit", e, None) for e in events])
        port = free_port()
        monitor = MonitorProcess(self.config, self.log, {"STREAM_MONITOR_SERVICE_METRICS_PORT": str(port)})
        monitors.append(monitor)
        wait_for_offsets(self.store, self.topic, ends, processes=[monitor], timeout=180)
        self.gauges: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while scrape and time.monotonic() < deadline:
            lag = self.joiner.lag("credit")
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            self.gauges = {sample.name: sample.value for family in text_string_to_metric_families(text)
                           for sample in family.samples if sample.labels.get("model") == "credit"}
            if self.gauges.get("stream_monitor_predictions_evicted") == lag["evicted"] \
                    and self.gauges.get("stream_monitor_join_bytes") == lag["bytes"]:
                break
            time.sleep(0.2)
        self.status = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(self.config)],
                                     capture_output=True, text=True, timeout=60, check=True).stdout
        assert monitor.terminate() == 0

    def pairs(self) -> int:
        state = final_states(self.store, self.topic, [0])[0]
        return state[1]["models"]["credit"]["performance"]["pairs_seen"]


def every_tenth_labelled(count: int, seed: int, delay: int = 100) -> tuple[list[bytes], int]:
    """Predictions with a label for every tenth, ``delay`` predictions later."""
    events = labelled("credit", count, seed=seed, delay=delay)
    labelled_ids = {f"credit-{seed}-{i}" for i in range(0, count, 10)}
    kept = [e for e in events if "features" in e or e["event_id"] in labelled_ids]
    return [orjson.dumps(e) for e in kept], len(labelled_ids)


def test_flood_over_the_cap_the_labels_of_recent_predictions_join(broker, redis_server, tmp_path, monitors):
    """A cap of 500 pending, 5,900 predictions, every tenth labelled 100 predictions later: before, the cap
    refused the newest predictions and most labels found nothing; now every label joins."""
    flood = Flood(broker, redis_server, tmp_path, {"max_pending": 500})
    events, labels = every_tenth_labelled(5900, seed=11)
    flood.run(monitors, events)
    lag = flood.joiner.lag("credit")
    assert flood.pairs() == labels == 590, "every label met its prediction"
    # 500 pending when the last prediction came; the last 10 labels came after it
    assert lag["awaiting"] == 490 and lag["evicted"] == lag["expired"] == 5900 - 590 - 490 and lag["dropped"] == 0
    assert "490 predictions awaiting a label · 4,820 never labelled (4,820 evicted for room)" in flood.status
    print(f"cap 500, 10 % labelled: {flood.pairs()} of {labels} labels joined, {lag['evicted']} evicted")


@pytest.mark.slow
def test_flood_of_labels_with_50_kb_event_ids_is_dead_lettered_and_redis_stays_small(broker, redis_server,
                                                                                     tmp_path, monitors):
    """4,000 label events with 50 KB event ids for predictions never seen (before: +219 MiB in Redis),
    then ordinary traffic: the flood is dead-lettered and the join goes on."""
    flood = Flood(broker, redis_server, tmp_path, {})
    client = flood.store.client
    used_before = int(client.info("memory")["used_memory"])
    hostile = [orjson.dumps({"event_id": f"{i:08d}" + "x" * 50_000, "model_id": "credit", "label": 1})
               for i in range(4000)]
    events, labels = every_tenth_labelled(1500, seed=12)
    flood.run(monitors, hostile + events)
    letters = [orjson.loads(m.value()) for m in read_topic(broker.address, flood.dead_letter_topic, 1)]
    assert len(letters) == 4000 and {x["reason"] for x in letters} == {"event_id_too_long"}
    assert sorted(x["offset"] for x in letters) == list(range(4000))
    assert letters[0]["error"].startswith("event_id is 50008 bytes, over the limit of 256")
    join_keys = [k for k in namespace_keys(client, flood.namespace) if ":join:" in k]
    join_memory = sum(client.memory_usage(k) or 0 for k in join_keys)
    grown = int(client.info("memory")["used_memory"]) - used_before
    lag = flood.joiner.lag("credit")
    print(f"50 KB ids: {len(letters)} dead letters; join keys {len(join_keys)}, MEMORY USAGE {join_memory:,} B, "
          f"join bytes {lag['bytes']:,}, Redis used_memory grew {grown / 1_048_576:.2f} MiB")
    assert flood.pairs() == labels == 150, "the join went on"
    assert join_memory < 1_048_576 and lag["bytes"] < 1_048_576
    assert grown < 16 * 1_048_576, "Redis grew by MiB, not by the flood's 200 MB"


def test_flood_over_a_byte_budget_evicts_the_oldest_and_the_join_goes_on(broker, redis_server, tmp_path, monitors):
    flood = Flood(broker, redis_server, tmp_path, {"max_pending_bytes": 65_536})
    events, labels = every_tenth_labelled(3000, seed=13)
    flood.run(monitors, events, scrape=True)
    lag = flood.joiner.lag("credit")
    gauges = flood.gauges
    assert (gauges["stream_monitor_predictions_evicted"], gauges["stream_monitor_join_bytes"],
            gauges["stream_monitor_predictions_never_labelled"], gauges["stream_monitor_labels_evicted"],
            gauges["stream_monitor_predictions_awaiting_labels"]) == \
        (lag["evicted"], lag["bytes"], lag["expired"], 0, lag["awaiting"]), gauges
    assert flood.pairs() == labels == 300
    assert lag["bytes"] <= 65_536 and lag["evicted"] > 0 and lag["dropped"] == 0
    assert lag["awaiting"] + lag["evicted"] == 3000 - 300 and lag["expired"] == lag["evicted"]
    assert f"{lag['evicted']:,} evicted for room" in flood.status and "join in Redis ≈ 0.1 MiB" in flood.status
    print(f"byte budget 64 KiB: {lag['awaiting']} kept, {lag['evicted']} evicted, {lag['bytes']:,} bytes")


def test_the_status_page_shows_what_the_join_holds_and_has_evicted():
    lag = {"awaiting": 490, "expired": 4820, "dropped": 2, "evicted": 4820, "labels_waiting": 7,
           "labels_evicted": 3, "bytes": 410_799}
    page = render_page({"models": {"credit": {"events": 5900, "labels": 590, "detectors": [], "label_lag": lag}},
                        "partitions": []})
    assert ("490 predictions awaiting a label · 4,820 never labelled (4,820 evicted for room) · 3 early labels "
            "evicted · 2 too large to keep · join in Redis ≈ 0.4 MiB") in page
