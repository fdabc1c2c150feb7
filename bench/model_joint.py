"""Joint drift decided per model (``decisions = "model"``): false alarms and detection delays through the merge.

A 10-feature model (standard normal features) keyed by event id over 4 partitions, its stored reference from
5,000 events, 1,000 events per second of event time. Each partition runs its ``PartitionMonitor``; every
100,000 events the merge (``merge_step``) takes the partials every partition has closed, as the service does.

- quiet: ``--events`` stationary events → every firing alert of the model (all columns and detectors, the
  joint test included), per 10^6 of its events;
- change: 20,000 unchanged events, then a correlation ρ between f0 and f1 (marginals unchanged) → the
  events from the change to the end of the first model window whose joint test fires, per seed.

    .venv/bin/python bench/model_joint.py [--events 1000000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_monitor.config import parse_config  # noqa: E402
from stream_monitor.events import InferenceEvent  # noqa: E402
from stream_monitor.merge import PartitionPartials, merge_step  # noqa: E402
from stream_monitor.partition import PartitionMonitor  # noqa: E402
from stream_monitor.reference import build_reference  # noqa: E402

FEATURES, PARTITIONS, PER_SECOND, REFERENCE, CHUNK = 10, 4, 1000, 5000, 100_000
START_MS = 1_800_000_000_000
CONFIG = parse_config({"models": {"m": {"decisions": "model", "reference": {"source": "stored"},
                                        "merge_lateness_seconds": 1.0}}})
MODEL = CONFIG.models["m"]
NAMES = [f"f{i}" for i in range(FEATURES)]


def rows(rng: np.random.Generator, n: int, rho: float = 0.0) -> np.ndarray:
    x = rng.standard_normal((n, FEATURES))
    x[:, 1] = rho * x[:, 0] + math.sqrt(1 - rho * rho) * x[:, 1]
    return x


def events(x: np.ndarray, start: int) -> list[InferenceEvent]:
    return [InferenceEvent(f"e{start + i}", "m", START_MS + (start + i) * 1000 // PER_SECOND, dict(zip(NAMES, row)))
            for i, row in enumerate(x.tolist())]


class Model:
    """The model's partitions and its merge."""

    def __init__(self, reference):
        self.reference = reference
        self.partitions = [PartitionMonitor(CONFIG, p, {"m": reference}) for p in range(PARTITIONS)]
        self.offsets = [0] * PARTITIONS
        self.state = None
        self.alerts = []

    def feed(self, batch: list[InferenceEvent]) -> None:
        spread = [[] for _ in range(PARTITIONS)]
        for event in batch:
            spread[zlib.crc32(event.event_id.encode()) % PARTITIONS].append(event)
        for p, mine in enumerate(spread):
            start = self.offsets[p]
            own = self.partitions[p].process_batch([(start + i, e, None) for i, e in enumerate(mine)])
            assert own == [], own  # the merge decides
            self.offsets[p] += len(mine)
        self.merge()

    def merge(self, finish: bool = False) -> None:
        if finish:
            for monitor in self.partitions:
                monitor.go_idle()
        parts = []
        for monitor in self.partitions:
            mark = monitor.merge_marks()["m"]
            parts.append(PartitionPartials("in", monitor.partition, mark["watermark"], mark["idle"], mark["partials"]))
        result = merge_step(MODEL, self.reference, self.state, parts, 1000)
        self.state = result.state
        self.alerts.extend(result.alerts)
        for monitor in self.partitions:
            mark = monitor.merge_marks()["m"]
            done = {b for (_, p), buckets in result.consumed.items() if p == monitor.partition for b in buckets}
            monitor.partials_saved({"m": {"partials": {b: x for b, x in mark["partials"].items() if b in done}}})


def reference():
    return build_reference("m", events(rows(np.random.default_rng(3), REFERENCE), -REFERENCE), None,
                           source="stored")


def quiet(n: int) -> tuple[Counter, int, float]:
    model, rng = Model(reference()), np.random.default_rng(11)
    started = time.process_time()
    for at in range(0, n, CHUNK):
        model.feed(events(rows(rng, min(CHUNK, n - at)), at))
    model.merge(finish=True)
    firing = Counter((a.signal, a.detector) for a in model.alerts if a.status == "firing")
    joint = [p for p in model.state["episodes"] if p.startswith("multivariate")]
    assert joint, "the joint test ran"
    return firing, model.state["windows"], time.process_time() - started


def change(seed: int, rho: float) -> int | None:
    model, rng = Model(reference()), np.random.default_rng([seed, int(rho * 100)])
    model.feed(events(rows(rng, 20_000), 0))
    model.feed(events(rows(rng, 60_000, rho), 20_000))
    model.merge(finish=True)
    for alert in model.alerts:
        if alert.status == "firing" and alert.signal == "multivariate":
            last_event = (alert.window["last_bucket"] + 1) * 1000 - START_MS  # ms after the first event
            return last_event * PER_SECOND // 1000 - 20_000
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    firing, windows, seconds = quiet(args.events)
    print(f"quiet: {args.events:,} stationary events of a {FEATURES}-feature model keyed by event id over "
          f"{PARTITIONS} partitions, decided per model ({windows} model windows; {seconds:.0f} CPU s): "
          f"{sum(firing.values())} false alarms ({sum(firing.values()) * 1e6 / args.events:.2f} per 10^6)"
          + ("" if not firing else ": " + ", ".join(f"{s}/{d} {c}" for (s, d), c in sorted(firing.items()))))
    for rho in (0.2, 0.5):
        delays = [change(seed, rho) for seed in range(args.seeds)]
        print(f"change: correlation 0 → {rho} between f0 and f1: the joint test fires {delays} events after the "
              f"change (to the end of the model window that fires; windows of {MODEL.detectors.multivariate.window:,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
