"""The score-only performance estimate: calibration, expected metrics, floors, windows (stream_monitor/cbpe.py)."""

import numpy as np

from stream_monitor.cbpe import (Calibration, EstimatedWindow, budget_z, expected_metrics, predicted_positive,
                                 reference_floors)


def _reference(n=20000, seed=1):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    scores = 1 / (1 + np.exp(-(truth * 2 - 1) * 2.5 - rng.normal(0, 1, n)))  # a sure classifier
    return scores, truth


def by_score(scores, threshold=0.5):
    """Predictions without a predicted label: (score, score >= threshold)."""
    return [(s, s >= threshold) for s in scores]


def test_calibrated_estimate_tracks_realized_accuracy():
    scores, truth = _reference()
    c = Calibration.fit(scores, truth)
    window = EstimatedWindow(c, 5000)
    estimates = window.add_many(by_score(scores))
    realized = 1 - np.mean((scores >= 0.5) != truth)
    assert [j for j, _ in estimates] == [4999, 9999, 14999, 19999]
    assert all(abs(m["accuracy"] - realized) < 0.02 for _, m in estimates)


def test_unsure_region_falls_below_floor_and_stationary_stays_above():
    scores, truth = _reference()
    c = Calibration.fit(scores, truth)
    floors = reference_floors(c, scores, scores >= 0.5, 1000, budget_z(1.0, 1000))
    quiet = EstimatedWindow(c, 1000).add_many(by_score(_reference(seed=2)[0]))
    assert all(m[k] >= floors[k]["floor"] for _, m in quiet for k in m)
    unsure = np.random.default_rng(3).uniform(0.4, 0.6, 1000)  # the scores of a region it is less sure of
    (_, shifted), = EstimatedWindow(c, 1000).add_many(by_score(unsure))
    assert shifted["accuracy"] < floors["accuracy"]["floor"]


def test_batch_cut_and_snapshot_restore_give_the_same_estimates():
    scores, truth = _reference(n=3000)
    c = Calibration.fit(scores, truth)
    whole = [m for _, m in EstimatedWindow(c, 700).add_many(by_score(scores))]
    first = EstimatedWindow(c, 700)
    cut = [m for _, m in first.add_many(by_score(scores[:1234]))]
    second = EstimatedWindow(Calibration.from_dict(c.to_dict()), 700)
    second.restore(first.snapshot())
    cut += [m for _, m in second.add_many(by_score(scores[1234:]))]
    assert cut == whole


def test_a_predicted_label_decides_the_predicted_class_not_the_score():
    """A model that says 1 from a score of 0.3 on: its predictions of score 0.4 are positives, right 40 % of
    the time (counting score >= 0.5 as the positive class said 60 %)."""
    c = Calibration.fit([0.4] * 10 + [0.9] * 10, [1, 1, 1, 1, 0, 0, 0, 0, 0, 0] + [1] * 10, bins=2)
    scores = np.array([0.4] * 100)
    labelled = np.array([predicted_positive(0.4, 1, "1", 0.5) for _ in scores])
    assert labelled.all()
    assert round(expected_metrics(c.probability(scores), labelled)["accuracy"], 6) == 0.4
    unlabelled = np.array([predicted_positive(0.4, None, "1", 0.5) for _ in scores])
    assert round(expected_metrics(c.probability(scores), unlabelled)["accuracy"], 6) == 0.6
    # without a predicted label, the model's decision threshold decides
    assert predicted_positive(0.4, None, "1", 0.3) and not predicted_positive(0.2, None, "1", 0.3)
    assert predicted_positive(0.9, "no", "yes", 0.5) is False and predicted_positive(0.1, True, "true", 0.5)
