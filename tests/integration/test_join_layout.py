"""The label join's layout (per model: hashes by event id, lists in arrival order, a few bulk commands per
batch) against the former one (a key per entry and a sorted set per list): the same results and figures on a
seeded corpus; a model's former entries moved over on first touch; the Redis commands of a batch do not
grow with its steps. Against the session's real Redis."""

from __future__ import annotations

from stream_monitor.config import parse_config
from stream_monitor.join import STAMP_BASE, JoinOp, RedisJoin, performance_settings
from stream_monitor.state import connect

from ..support import JOIN_MODELS as MODELS, Clock, join_corpus, unique
from .former_join import FormerRedisJoin


def settings(**bounds):
    performance = {"task": "classification", "max_pending": 10, "prediction_ttl_seconds": 20,
                   "label_wait_seconds": 8, "joined_retention_seconds": 12, **bounds}
    return performance_settings(parse_config({"models": {m: {"performance": performance} for m in MODELS}}))


def corpus(seed: int, batches: int = 80) -> list[tuple[float, list[JoinOp]]]:
    """Batches of ops with the time each is run at: labels before and after their prediction, the same message
    again (a replay) and another message with the same event id (a duplicate), evictions at the cap of 10,
    clock jumps past every ttl. No byte budget is reached (the two layouts estimate bytes differently)."""
    return join_corpus(seed, batches)


def figures(joiner) -> dict[str, dict[str, int]]:
    out = {}
    for model in MODELS:
        lag = joiner.lag(model)
        del lag["bytes"]  # estimated differently by the two layouts
        out[model] = lag
    return out


def test_the_layout_gives_what_the_former_gave_on_a_corpus(redis_server):
    client = connect(redis_server.address)
    clock = Clock()
    current = RedisJoin(client, unique("now"), settings(), clock=clock)
    former = FormerRedisJoin(client, unique("before"), settings(), clock=clock)
    statuses: dict[str, int] = {}
    for seed in (3, 7, 11):
        for now, ops in corpus(seed):
            clock.now = now
            results = current.run(ops)
            assert results == former.run(ops)
            for result in results:
                statuses[result.status] = statuses.get(result.status, 0) + 1
            assert figures(current) == figures(former)
    # the corpus reaches every case it is about
    assert statuses == {"joined": 1421, "pending": 1104, "taken": 2261}
    assert figures(current) == {
        "credit": {"awaiting": 0, "expired": 211, "dropped": 0, "evicted": 77, "labels_waiting": 21,
                   "labels_evicted": 0},
        "fraud": {"awaiting": 0, "expired": 47, "dropped": 0, "evicted": 0, "labels_waiting": 5, "labels_evicted": 0}}


def former_keys(client, namespace: str) -> set[str]:
    """The keys of the former layout left in a namespace: its sorted sets and its per-entry keys."""
    names = {k.decode() for k in client.scan_iter(f"{namespace}:*", count=1000)}
    return {name for name in names
            if name.endswith(("}:pending", "}:labels", "}:done")) or ":p:" in name or ":l:" in name}


def test_a_models_former_entries_are_moved_over_on_first_touch_and_the_join_goes_on_as_before(redis_server,
                                                                                          monkeypatch):
    """Half a corpus joined in the former layout; then the current one takes over the same namespace (in
    chunks of 7 entries, so a move takes many calls) and runs the other half: every result and figure is what
    the former layout gives running the whole corpus, and nothing of the former layout is left."""
    monkeypatch.setattr("stream_monitor.join.MIGRATE_CHUNK", 7)
    client = connect(redis_server.address)
    clock = Clock()
    namespace = unique("upgraded")
    upgraded = FormerRedisJoin(client, namespace, settings(), clock=clock)
    reference = FormerRedisJoin(client, unique("former"), settings(), clock=clock)
    batches = corpus(5)
    for now, ops in batches[:40]:
        clock.now = now
        assert upgraded.run(ops) == reference.run(ops)
    assert former_keys(client, namespace), "the former layout holds entries"
    current = RedisJoin(client, namespace, settings(), clock=clock)
    current._last = round(upgraded._last * 1000) + STAMP_BASE
    moved = 0
    for now, ops in batches[40:]:
        clock.now = now
        assert current.run(ops) == reference.run(ops)
        moved += 1
        if moved == 1:
            assert former_keys(client, namespace) == set(), "moved before the first step"
        assert figures(current) == figures(reference)


def commands(client) -> int:
    """Redis commands run so far, the scripts' own calls and INFO excluded (those a script issues count)."""
    return sum(v["calls"] for k, v in client.info("commandstats").items()
               if k not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_info", "cmdstat_script|exists"))


def test_the_redis_commands_of_a_batch_do_not_grow_with_its_steps(redis_server):
    """What a batch's script issues is a few bulk reads and writes per hash and list: 20 predictions and 1,000
    (then 500 labels joining, and 500 waiting for a prediction) take about the same number of Redis commands."""
    client = connect(redis_server.address)
    joiner = RedisJoin(client, unique("ns"), settings(max_pending=10_000))
    joiner._move_former(["credit"])
    counts = []
    for ops in ([JoinOp("prediction", "credit", f"a{i}", {"score": 0.5, "t": i}, f"p|0|{i}") for i in range(20)],
                [JoinOp("prediction", "credit", f"b{i}", {"score": 0.5, "t": i}, f"p|0|{i}") for i in range(1000)],
                [JoinOp("label", "credit", f"{kind}{i}", {"label": 1, "t": i}, f"l|0|{i}")
                 for kind in "bc" for i in range(500)]):
        before = commands(client)
        joiner.run(ops)
        counts.append(commands(client) - before)
    # the marker's SETNX, 4 HMGETs, a chunk read per list, the writes per hash and list, stats, 7 PEXPIREs
    assert counts == [19, 21, 23], counts
