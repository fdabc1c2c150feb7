"""What one label-join operation costs in Redis, and where that cost goes.

Starts a redis-server (stopped by pid at the end), then sends batches of join operations of one model
the way `stream-monitor run` does (`RedisJoin.run`, one call per polled batch): predictions of a
seeded stream, with the labels of half of them arriving a batch later. Shown per operation:

- wall time of `RedisJoin.run` (this process + the round trip + Redis),
- Redis CPU per operation (`INFO commandstats`: the scripts' `usec` over the operations sent),
- the script calls and round trips per batch,

and, as floors on the same server: an empty script per operation (the per-call overhead of
EVALSHA), and one pipelined HSET per operation of a record of the same size (the cost of the bytes).

    .venv/bin/python bench/join_ops.py              # 40 batches of 1,000 operations
    .venv/bin/python bench/join_ops.py --batch 500 --batches 20

Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import orjson

from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import start_redis
from stream_monitor.join import JoinOp, RedisJoin, performance_settings, prediction_record, label_record
from stream_monitor.state import connect


def workload(batches: int, batch: int) -> list[list[JoinOp]]:
    """`batches` batches: each `batch` predictions (about 2/3) and the labels of half of the previous
    batch's predictions (about 1/3), as a topic carrying both would deliver them."""
    out, previous = [], []
    for b in range(batches):
        predictions = [JoinOp("prediction", "m", f"e{b}-{i}", prediction_record(round(0.37 * i % 1, 4), None,
                                                                               1_700_000_000_000 + i), f"in|0|{b}-{i}")
                       for i in range(batch * 2 // 3)]
        labels = [JoinOp("label", "m", op.event_id, label_record(i % 2, 1_700_000_000_500 + i), f"lab|0|{op.event_id}")
                  for i, op in enumerate(previous[::2])]
        ops = predictions + labels
        out.append(ops[:batch])
        previous = predictions
    return out


def script_usec(client) -> tuple[int, int]:
    stats = client.info("commandstats")
    calls = sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    usec = sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    return calls, usec


def measure_join(client, batches: list[list[JoinOp]]) -> dict[str, float]:
    settings = performance_settings(parse_config({"models": {"m": {"performance": {"task": "classification"}}}}))
    joiner = RedisJoin(client, f"bench{time.monotonic_ns()}", settings)
    joiner.run(batches[0])  # the scripts loaded
    client.config_resetstat()
    ops = sum(len(b) for b in batches[1:])
    started = time.perf_counter()
    statuses: dict[str, int] = {}
    for batch in batches[1:]:
        for result in joiner.run(batch):
            statuses[result.status] = statuses.get(result.status, 0) + 1
    wall = time.perf_counter() - started
    calls, usec = script_usec(client)
    return {"ops": ops, "wall_us": wall / ops * 1e6, "redis_us": usec / ops,
            "calls_per_batch": calls / len(batches[1:]),
            **{f"n_{k}": v for k, v in statuses.items()}}


def measure_floor(client, batches: list[list[JoinOp]]) -> dict[str, float]:
    """An empty script per operation (EVALSHA's own cost), then a pipelined HSET of the record per operation."""
    empty = client.register_script("return 1")
    ops = sum(len(b) for b in batches)
    client.config_resetstat()
    started = time.perf_counter()
    for batch in batches:
        pipe = client.pipeline(transaction=False)
        for op in batch:
            empty(keys=[f"floor:{{m}}:{op.event_id}"], args=[orjson.dumps(op.record), op.me], client=pipe)
        pipe.execute()
    empty_wall = (time.perf_counter() - started) / ops * 1e6
    _, empty_usec = script_usec(client)
    client.config_resetstat()
    started = time.perf_counter()
    for batch in batches:
        pipe = client.pipeline(transaction=False)
        for op in batch:
            pipe.hset(f"floor:{{m}}:{op.event_id}", mapping={"p": orjson.dumps(op.record), "n": 300})
        pipe.execute()
    hset_wall = (time.perf_counter() - started) / ops * 1e6
    hset_usec = client.info("commandstats").get("cmdstat_hset", {}).get("usec", 0)
    record = sum(len(orjson.dumps(op.record)) for b in batches for op in b) / ops
    return {"empty_script_wall_us": empty_wall, "empty_script_redis_us": empty_usec / ops,
            "hset_wall_us": hset_wall, "hset_redis_us": hset_usec / ops, "record_bytes": record}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--batch", type=int, default=1000, help="operations per batch (the service's batch_size)")
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    redis = start_redis(tempfile.mkdtemp(prefix="sm-join-bench-"))
    try:
        client = connect(redis.address)
        batches = workload(args.batches + 1, args.batch)
        join = measure_join(client, batches)
        floor = measure_floor(client, batches)
    finally:
        redis.stop()
    print(f"{join['ops']:,} join operations in batches of {args.batch:,} "
          f"({', '.join(f'{k[2:]} {v:,}' for k, v in join.items() if k.startswith('n_'))})")
    print(f"  RedisJoin.run      {join['wall_us']:7.1f} µs/op wall, {join['redis_us']:6.1f} µs/op Redis CPU, "
          f"{join['calls_per_batch']:,.0f} script calls per batch, 1 round trip per batch")
    print(f"  empty script/op    {floor['empty_script_wall_us']:7.1f} µs/op wall, "
          f"{floor['empty_script_redis_us']:6.1f} µs/op Redis CPU (EVALSHA's own cost)")
    print(f"  HSET of record/op  {floor['hset_wall_us']:7.1f} µs/op wall, "
          f"{floor['hset_redis_us']:6.1f} µs/op Redis CPU "
          f"(record {floor['record_bytes']:.0f} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
