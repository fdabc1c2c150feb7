"""The label join sends a batch's steps of one model in one script call: on a seeded corpus (predictions
before labels and after, duplicates and replays, evictions at both bounds, expiry), that gives exactly
what one call per step gives — every result, the figures, and what Redis holds. Against the session's real
Redis, standalone and a 3-master cluster."""

from __future__ import annotations

import pytest

from stream_monitor.config import parse_config
from stream_monitor.join import JoinOp, RedisJoin, performance_settings
from stream_monitor.state import connect

from ..support import JOIN_MODELS as MODELS, Clock, is_cluster, join_corpus, unique


def settings():
    performance = {"task": "classification", "max_pending": 10, "max_pending_bytes": 65_536,
                   "prediction_ttl_seconds": 20, "label_wait_seconds": 8, "joined_retention_seconds": 12}
    return performance_settings(parse_config({"models": {m: {"performance": performance} for m in MODELS}}))


def corpus(seed: int = 7) -> list[tuple[float, list[JoinOp]]]:
    """Batches of ops with the time at which each is run: labels before and after their prediction, the same
    message again (a replay: same identity) and another message with the same event id (a duplicate), records
    of 9 and 20 kB that fill the byte budget, one bigger than the budget, and clock jumps past the ttls."""
    return join_corpus(seed, 60, label_sizes=[1, 1, 9_000, 20_000, 70_000])


def contents(client, namespace: str) -> dict[str, object]:
    """Every key of a namespace (its name without the namespace) and what it holds."""
    out: dict[str, object] = {}
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        name = key.decode()[len(namespace):]
        kind = client.type(key).decode()
        out[name] = client.hgetall(key) if kind == "hash" else client.lrange(key, 0, -1) if kind == "list" else \
            client.zrange(key, 0, -1, withscores=True) if kind == "zset" else client.get(key)
    return out


def script_calls(client) -> int:
    return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def test_a_batch_in_one_call_per_model_gives_exactly_what_one_call_per_step_gives(redis_target):
    client = connect(redis_target.address, is_cluster(redis_target))
    batched_clock, single_clock = Clock(), Clock()
    batched = RedisJoin(client, unique("batch"), settings(), clock=batched_clock)
    single = RedisJoin(client, unique("alone"), settings(), clock=single_clock)
    for joiner in (batched, single):  # a model's first touch looks for entries of the former layout, once
        joiner._move_former(MODELS)
    statuses: dict[str, int] = {}
    for now, ops in corpus():
        batched_clock.now = single_clock.now = now
        calls = script_calls(client) if not is_cluster(redis_target) else 0
        results = batched.run(ops)
        if not is_cluster(redis_target):
            assert script_calls(client) - calls == len({op.model_id for op in ops}), "one script call per model"
        assert results == [single.run([op])[0] for op in ops]
        for result in results:
            statuses[result.status] = statuses.get(result.status, 0) + 1
        assert contents(client, batched.namespace) == contents(client, single.namespace)
    # the corpus reaches every case it is about
    assert statuses == {"pending": 765, "joined": 250, "taken": 179, "dropped": 32}
    lags = {m: batched.lag(m) for m in MODELS}
    assert lags == {m: single.lag(m) for m in MODELS}
    for lag in lags.values():
        del lag["bytes"]  # the same in both; pinned without it
    assert lags == {
        "credit": {"awaiting": 10, "labels_waiting": 3, "expired": 152, "evicted": 65, "labels_evicted": 22,
                   "dropped": 19},
        "fraud": {"awaiting": 4, "labels_waiting": 4, "expired": 42, "evicted": 0, "labels_evicted": 0, "dropped": 13}}


def test_a_batch_bigger_than_one_call_takes_is_split_and_gives_the_same(redis_server, monkeypatch):
    monkeypatch.setattr("stream_monitor.join.MAX_STEPS", 7)
    client = connect(redis_server.address)
    ops = [JoinOp("prediction", "credit", f"e{i}", {"score": 0.5, "label": 1, "t": i}, f"inf|0|{i}") for i in range(30)]
    ops += [JoinOp("label", "credit", f"e{i}", {"label": 1, "t": i}, f"lab|0|{i}") for i in range(0, 40, 2)]
    joiner = RedisJoin(client, unique("ns"), settings())
    joiner._move_former(["credit"])
    calls = script_calls(client)
    results = joiner.run(ops)
    assert script_calls(client) - calls == 8, "50 steps of one model in calls of at most 7"
    # the first 20 predictions were evicted by the cap of 10: their labels wait; e20, e22, ... e28 join
    assert [r.status for r in results] == ["pending"] * 40 + ["joined"] * 5 + ["pending"] * 5
    assert [r.other for r in results[40:42]] == [{"score": 0.5, "label": 1, "t": 20},
                                                 {"score": 0.5, "label": 1, "t": 22}]
    lag = joiner.lag("credit")
    assert (lag["awaiting"], lag["labels_waiting"], lag["evicted"]) == (5, 15, 20)
