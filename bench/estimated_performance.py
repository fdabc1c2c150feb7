"""How far the performance estimated from scores alone is from the realized performance, on NannyML's
synthetic car-loan dataset (a public dataset of a calibrated loan-default classifier: 50,000 reference rows
with labels, 50,000 analysis rows whose labels are given apart; its analysis half drifts into regions where
the model is less sure).

The data are read from the files inside the `nannyml` wheel; nothing of nannyml is imported or run. Either
have nannyml installed (the `bench` extra: `pip install -e .[bench]`), or download just its wheel:

    python -m pip download --no-deps nannyml -d /tmp/nannyml
    .venv/bin/python bench/estimated_performance.py --wheel /tmp/nannyml/nannyml-*.whl
    .venv/bin/python bench/estimated_performance.py --window 5000 --reference-pairs 5000

The first ``--reference-pairs`` reference rows calibrate the scores (as the first joined pairs do in the
service); then the rest of the reference and the analysis rows are estimated in tumbling windows, with no
labels, and each window's estimate is printed beside the realized metric (from the labels), with the
windows whose estimate fell below the floor. Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from stream_monitor.cbpe import METRICS, EstimatedPerformance, expected_metrics, predicted_positive
from stream_monitor.config import EstimatedPerformanceConfig

DATA = "nannyml/datasets/data/"
FILES = ("synthetic_car_loan_reference.csv", "synthetic_car_loan_analysis.csv",
         "synthetic_car_loan_analysis_target.csv")


def read_files(wheel: str | None) -> dict[str, list[dict[str, str]]]:
    """The three car-loan CSVs, from the given wheel or the installed nannyml package's files."""
    if wheel:
        with zipfile.ZipFile(wheel) as z:
            texts = {name: z.read(DATA + name).decode() for name in FILES}
    else:
        spec = importlib.util.find_spec("nannyml")  # finds the package without importing it
        if spec is None or spec.origin is None:
            sys.exit("nannyml is not installed: install the bench extra, or pass --wheel (see the docstring)")
        folder = Path(spec.origin).parent / "datasets" / "data"
        texts = {name: (folder / name).read_text() for name in FILES}
    return {name: list(csv.DictReader(io.StringIO(text))) for name, text in texts.items()}


def realized(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """The realized metrics: the confusion matrix of the true labels (``expected_metrics`` of certain ones)."""
    return expected_metrics(truth.astype(np.float64), predicted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", help="a downloaded nannyml wheel to read the data from")
    parser.add_argument("--window", type=int, default=5000, help="predictions per window (NannyML's chunk size)")
    parser.add_argument("--reference-pairs", type=int, default=5000, help="reference pairs that calibrate")
    parser.add_argument("--budget", type=float, default=0.1, help="false alarms per million events")
    args = parser.parse_args(argv)
    files = read_files(args.wheel)
    reference, analysis = files[FILES[0]], files[FILES[1]]
    targets = {row["id"]: row["repaid"] for row in files[FILES[2]]}

    def rows(table, truth_of):
        scores = np.array([float(r["y_pred_proba"]) for r in table])
        predicted = np.array([predicted_positive(s, r["y_pred"], "1", 0.5) for s, r in zip(scores, table)])
        truth = np.array([truth_of(r) for r in table], dtype=np.int64)
        return scores, predicted, truth

    ref = rows(reference, lambda r: int(float(r["repaid"])))
    ana = rows(analysis, lambda r: int(float(targets[r["id"]])))
    config = EstimatedPerformanceConfig(window=args.window, reference_pairs=args.reference_pairs)
    estimator = EstimatedPerformance("car_loan", config, args.budget)
    for s, p, t in zip(*(a[:args.reference_pairs] for a in ref)):
        estimator.add_pair(s, p, t)
    stream = [np.concatenate([r[args.reference_pairs:], a]) for r, a in zip(ref, ana)]
    scores, predicted, truth = stream
    start_of_analysis = len(ref[0]) - args.reference_pairs
    windows = estimator.windows.add_many(list(zip(scores.tolist(), predicted.tolist())))
    floors = estimator.floors
    print(f"car-loan: calibrated on {args.reference_pairs:,} reference pairs; windows of {args.window:,}; "
          f"floors " + ", ".join(f"{m} {floors[m]['floor']:.3f}" for m in METRICS))
    print(f"{'window':>14} {'part':>9} " + " ".join(f"{m + ' est/real':>20}" for m in METRICS) + "  below floor")
    errors = {m: [] for m in METRICS}
    for end, estimate in windows:
        first = end + 1 - args.window
        real = realized(truth[first:end + 1], predicted[first:end + 1])
        part = "reference" if end < start_of_analysis else "analysis" if first >= start_of_analysis else "both"
        below = [m for m in METRICS if estimate[m] < floors[m]["floor"]]
        for m in METRICS:
            errors[m].append(abs(estimate[m] - real[m]))
        print(f"{first:>6}-{end:<7} {part:>9} " + " ".join(f"{estimate[m]:>9.3f} / {real[m]:<8.3f}" for m in METRICS)
              + "  " + (", ".join(below) or "-"))
    print("absolute error of the estimate, mean (max) over the windows: " +
          ", ".join(f"{m} {np.mean(errors[m]):.4f} ({np.max(errors[m]):.4f})" for m in METRICS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
