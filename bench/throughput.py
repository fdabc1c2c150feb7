"""Processing throughput, in process (no broker, no Redis): events/s through the service's own
`PartitionMonitor` with every default detector on, for F = 20 and F = 100 numeric features,
against a naive loop (orjson per event + river ADWIN and PageHinkley per feature per event).

This measures the processing stage only; the end-to-end benchmark through the broker and
Redis (issue #6) is not written yet.

    .venv/bin/python bench/throughput.py [--events 20000]
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time

import orjson
from river import drift

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import RawMessage
from stream_monitor.partition import PartitionMonitor
from stream_monitor.state import encode_state


def events(features: int, count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        values = {f"f{j}": round(rng.gauss(j, 1 + j % 3), 4) for j in range(features)}
        out.append(orjson.dumps({"event_id": f"e{i}", "model_id": "m", "features": values,
                                 "prediction": {"score": round(rng.random(), 4)}}))
    return out


def service_rate(lines: list[bytes], reference: int) -> tuple[float, int]:
    config = parse_config({"models": {"m": {"reference": {"events": reference}}}})
    monitor = PartitionMonitor(config, 0, {})
    known = {"m"}
    for offset, line in enumerate(lines[:reference]):  # the warm-up builds the reference; not timed
        monitor.process(decode(RawMessage("t", 0, offset, line), known), offset)
    started = time.perf_counter()
    for offset, line in enumerate(lines[reference:], start=reference):
        monitor.process(decode(RawMessage("t", 0, offset, line), known), offset)
    rate = (len(lines) - reference) / (time.perf_counter() - started)
    return rate, len(encode_state(monitor.snapshot()))


def naive_rate(lines: list[bytes], features: int) -> float:
    adwins = [drift.ADWIN() for _ in range(features)]
    hinkleys = [drift.PageHinkley() for _ in range(features)]
    started = time.perf_counter()
    for line in lines:
        doc = orjson.loads(line)
        for j, value in enumerate(doc["features"].values()):
            adwins[j].update(value)
            hinkleys[j].update(value)
    return len(lines) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    reference = 5_000
    print("| features | service events/s | naive events/s (a) | ratio to (a) | state bytes per feature |")
    print("|---|---|---|---|---|")
    for features in (20, 100):
        lines = events(features, reference + args.events)
        rate, state = service_rate(lines, reference)
        naive = naive_rate(lines[reference:], features)
        print(f"| {features} | {rate:,.0f} | {naive:,.0f} | {rate / naive:.2f} | {state / (features + 1):,.0f} |",
              flush=True)
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
