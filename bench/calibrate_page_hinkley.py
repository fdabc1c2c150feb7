"""Simulate river's Page-Hinkley (alpha = 1, two-sided) on standard-normal input and print
false alarms per 10^6 values for a grid of (delta, threshold).

The detectors see reference-normal scores, so on unchanged data their input is
N(0, 1) whatever the feature's distribution (less variable for discrete data):
one table serves every feature. `stream_monitor/calibration.py` holds its result;
run this to regenerate it:  .venv/bin/python bench/calibrate_page_hinkley.py
"""

from __future__ import annotations

import sys

import numpy as np

from stream_monitor.calibration import page_hinkley_alarms


def main() -> None:
    rng = np.random.default_rng(20261127)
    grid = {0.125: [30, 40, 50, 60, 70], 0.25: [15, 20, 25, 30, 35], 0.5: [8, 10, 12, 14, 16], 1.0: [4, 5, 6, 7, 8]}
    streams, length = 200, 200_000
    print("delta  threshold  alarms  values  per_million")
    for delta, thresholds in grid.items():
        for threshold in thresholds:
            alarms = int(page_hinkley_alarms(rng.normal(size=(length, streams)), delta, threshold).sum())
            print(f"{delta:5}  {threshold:9}  {alarms:6}  {streams * length:.0e}  {alarms / (streams * length) * 1e6:.3f}",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
