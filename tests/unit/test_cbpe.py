"""The score-only performance estimate: calibration, expected metrics, floors, windows (stream_monitor/cbpe.py)."""

import numpy as np

from stream_monitor.cbpe import Calibration, EstimatedWindow, budget_z, reference_floors


def _reference(n=20000, seed=1):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    scores = 1 / (1 + np.exp(-(truth * 2 - 1) * 2.5 - rng.normal(0, 1, n)))  # a sure classifier
    return scores, truth


def test_calibrated_estimate_tracks_realized_accuracy():
    scores, truth = _reference()
    c = Calibration.fit(scores, truth)
    window = EstimatedWindow(c, 5000)
    estimates = window.add_many(scores)
    realized = 1 - np.mean((scores >= 0.5) != truth)
    assert [j for j, _ in estimates] == [4999, 9999, 14999, 19999]
    assert all(abs(m["accuracy"] - realized) < 0.02 for _, m in estimates)


def test_unsure_region_falls_below_floor_and_stationary_stays_above():
    scores, truth = _reference()
    c = Calibration.fit(scores, truth)
    floors = reference_floors(c, scores, 1000, budget_z(1.0, 1000))
    quiet = EstimatedWindow(c, 1000).add_many(_reference(seed=2)[0])
    assert all(m[k] >= floors[k]["floor"] for _, m in quiet for k in m)
    unsure = np.random.default_rng(3).uniform(0.4, 0.6, 1000)  # the scores of a region it is less sure of
    (_, shifted), = EstimatedWindow(c, 1000).add_many(unsure)
    assert shifted["accuracy"] < floors["accuracy"]["floor"]


def test_batch_cut_and_snapshot_restore_give_the_same_estimates():
    scores, truth = _reference(n=3000)
    c = Calibration.fit(scores, truth)
    whole = [m for _, m in EstimatedWindow(c, 700).add_many(scores)]
    first = EstimatedWindow(c, 700)
    cut = [m for _, m in first.add_many(scores[:1234])]
    second = EstimatedWindow(Calibration.from_dict(c.to_dict()), 700)
    second.restore(first.snapshot())
    cut += [m for _, m in second.add_many(scores[1234:])]
    assert cut == whole
