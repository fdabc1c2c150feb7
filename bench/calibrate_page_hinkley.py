"""Simulate river's Page-Hinkley (alpha = 1, two-sided) on standard-normal input and print
false alarms per 10^6 values for a grid of (delta, threshold).

The detectors see reference-normal scores, so on unchanged data their input is
N(0, 1) whatever the feature's distribution (less variable for discrete data):
one table serves every feature. `stream_monitor/calibration.py` holds its result;
run this to regenerate it:  .venv/bin/python bench/calibrate_page_hinkley.py

``--check DELTA THRESHOLD [--values N]`` runs one long false-alarm run instead
(streams of 200,000 values, generated in chunks so memory stays small): how the
table's rows below its first ones, and the thresholds extrapolated from them
for small per-test budgets, were checked.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from stream_monitor.calibration import page_hinkley_alarms

LENGTH = 200_000


def check(delta: float, threshold: float, values: int, seed: int) -> None:
    """False alarms in ``values`` N(0, 1) values, as streams of LENGTH values, 1,000 streams at a time."""
    rng = np.random.default_rng(seed)
    streams, chunk = 1_000, 10_000
    alarms, done, started = 0, 0, time.perf_counter()
    while done < values:
        rows = (row for _ in range(LENGTH // chunk) for row in rng.normal(size=(chunk, streams)))
        alarms += int(page_hinkley_alarms(rows, delta, threshold, streams=streams).sum())
        done += streams * LENGTH
    rate = alarms / done * 1e6
    upper = (alarms + 3) / done * 1e6 if alarms == 0 else rate + 2 * (alarms ** 0.5) / done * 1e6
    print(f"delta {delta}  threshold {threshold}  alarms {alarms}  values {done:.1e}  per_million {rate:.4f}"
          f"  (about ≤ {upper:.4f})  {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", nargs=2, type=float, metavar=("DELTA", "THRESHOLD"))
    parser.add_argument("--values", type=float, default=2e9)
    parser.add_argument("--seed", type=int, default=20261202)
    args = parser.parse_args()
    if args.check:
        check(args.check[0], args.check[1], int(args.values), args.seed)
        return
    rng = np.random.default_rng(20261127)
    grid = {0.125: [30, 40, 50, 60, 70], 0.25: [15, 20, 25, 30, 35], 0.5: [8, 10, 12, 14, 16], 1.0: [4, 5, 6, 7, 8]}
    streams, length = 200, LENGTH
    print("delta  threshold  alarms  values  per_million")
    for delta, thresholds in grid.items():
        for threshold in thresholds:
            alarms = int(page_hinkley_alarms(rng.normal(size=(length, streams)), delta, threshold).sum())
            print(f"{delta:5}  {threshold:9}  {alarms:6}  {streams * length:.0e}  {alarms / (streams * length) * 1e6:.3f}",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
