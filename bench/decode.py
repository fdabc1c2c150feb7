"""Head to head: µs per event of the codec (orjson, one message at a time) and of the batch decode
(the compiled scanner, stream_monitor/batchcodec.py), on the events model servers write.

    python bench/decode.py [--events 20000] [--batch 500]

Workloads: 20 and 100 features at full precision (``repr`` of a float64: 17-19 characters), an epoch
timestamp, a score; "mixed": a few categorical features and some nulls among them; "rounded": values
rounded to 4 decimals and no timestamp (the throughput benchmark's former events). Each figure is the best
of a few runs over the same messages (process CPU time, the service's GC threshold): decode only, then
decode plus reading the features as the engine reads them (stacked from each event's float64 copy where
it can, else value by value). "usual": the share of messages the scanner read (the rest: the codec).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from array import array
from types import SimpleNamespace

import orjson

from stream_monitor.app import GC_YOUNG_THRESHOLD
from stream_monitor.batchcodec import decode_batch
from stream_monitor.codec import decode
from stream_monitor.events import RawMessage
from stream_monitor.partition import _feature_matrix, _values

CATEGORIES = ("DE", "FR", "US", "GB", "JP")


def events(n: int, features: int, kind: str, seed: int = 7) -> list[RawMessage]:
    rng = random.Random(seed)
    t0 = 1_795_000_000.0
    out = []
    for i in range(n):
        values: dict = {}
        for j in range(features):
            x = rng.gauss(0.0, 1.0) * 10 ** (j % 4)
            values[f"feature_{j:03d}"] = round(x, 4) if kind == "rounded" else x
        if kind == "mixed":
            values["country"] = rng.choice(CATEGORIES)
            values["device"] = rng.choice(("ios", "android", "web"))
            values["plan"] = rng.choice(("free", "pro", None))
            for j in rng.sample(range(features), 2):
                if rng.random() < 0.3:
                    values[f"feature_{j:03d}"] = None
        doc = {"event_id": f"evt-{i:09d}", "model_id": "fraud"}
        if kind != "rounded":
            doc["timestamp"] = t0 + i * 0.0137
        doc["features"] = values
        doc["prediction"] = {"score": rng.random()}
        out.append(RawMessage("ml.inference", 0, i, orjson.dumps(doc), timestamp_ms=int(t0 * 1000) + i * 14))
    return out


def matrix(decoded: list) -> list:
    """What a partition reads next, as the engine reads it: the features stacked as float64 rows
    (``partition._feature_matrix``), each column its row when usable, else its values read from the events
    (``partition._values``; the categorical columns, here ``country``, ``device`` and ``plan``)."""
    names = list(decoded[0].features)
    features = _feature_matrix(decoded, names)
    return [_values(SimpleNamespace(signal="feature", name=name, numeric=name.startswith("feature_")), decoded,
                    features, row) for row, name in enumerate(names)]


def best(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):  # CPU time of this process: other processes on the machine do not count
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)  # as the service does
    known = {"fraud"}
    decode_batch(events(8, 3, "full"), known)  # compile (or load the cache) outside the timing
    print(f"{'workload':<16}{'bytes/event':>12}{'usual':>8}{'codec µs':>10}{'batch µs':>10}{'×':>6}"
          f"{'codec+read':>12}{'batch+read':>12}{'×':>6}")
    for features, kind in ((20, "full"), (20, "mixed"), (20, "rounded"), (100, "full"), (100, "mixed"),
                           (100, "rounded")):
        raws = events(args.events, features, kind)
        batches = [raws[i:i + args.batch] for i in range(0, len(raws), args.batch)]
        slow = [[decode(m, known) for m in b] for b in batches]
        fast = [decode_batch(b, known) for b in batches]
        assert slow == fast, "the batch decode differs from the codec"
        usual = sum(not isinstance(e.numbers, array) for b in fast for e in b) / len(raws)  # read by the scanner
        per = 1e6 / len(raws)
        codec = best(lambda: [[decode(m, known) for m in b] for b in batches], args.repeat) * per
        batch = best(lambda: [decode_batch(b, known) for b in batches], args.repeat) * per
        codec_m = best(lambda: [matrix([decode(m, known) for m in b]) for b in batches], args.repeat) * per
        batch_m = best(lambda: [matrix(decode_batch(b, known)) for b in batches], args.repeat) * per
        size = sum(len(m.value) for m in raws) / len(raws)
        print(f"{f'F={features} {kind}':<16}{size:>12.0f}{usual:>8.0%}{codec:>10.2f}{batch:>10.2f}"
              f"{codec / batch:>6.2f}{codec_m:>12.2f}{batch_m:>12.2f}{codec_m / batch_m:>6.2f}")


if __name__ == "__main__":
    main()
