"""Reference profiles: numeric quantile bins with open outer bins, top-k categories."""

from __future__ import annotations

import json
import math
import random
import statistics
from statistics import NormalDist

import pytest

from stream_monitor.detectors.transform import RankTransform
from stream_monitor.errors import ReferenceProfileError
from stream_monitor.events import InferenceEvent
from stream_monitor.reference import (
    KS_GRID_STEPS,
    OTHER,
    RANK_GRID_STEPS,
    CategoricalReference,
    NumericReference,
    ReferenceProfile,
    build_reference,
    column_from_dict,
)


def ev(i: int, features: dict, score: float | None = None, label: str | None = None) -> InferenceEvent:
    return InferenceEvent(f"e{i}", "m", None, features, score, label)


# --- numeric ---------------------------------------------------------------------------------------


def test_numeric_edges_are_quantiles_with_open_outer_bins():
    """bins+1 quantile edges; bin 0 below the minimum, the last bin above the maximum."""
    ref = NumericReference.build([float(x) for x in range(1, 101)], bins=4)
    assert ref.edges == [1.0, 25.75, 50.5, 75.25, 100.0]
    assert len(ref.proportions) == len(ref.edges) + 1
    assert ref.proportions == [0.0, 0.25, 0.25, 0.25, 0.25, 0.0]
    assert (ref.minimum, ref.maximum) == (1.0, 100.0)
    assert ref.mean == pytest.approx(50.5)


@pytest.mark.parametrize("value, expected", [
    (-1e9, 0), (0.999, 0),        # below the reference minimum → bin 0
    (1.0, 1),                      # exactly the minimum → the first inner bin
    (1.5, 1), (25.75, 1),          # an inner edge belongs to the bin below it
    (25.76, 2), (50.5, 2), (75.0, 3), (100.0, 4),
    (100.0001, 5), (1e12, 5),      # above the maximum → the last bin
])
def test_numeric_bin_index(value, expected):
    """bin_index places values in (edge[i-1], edge[i]], with the minimum in bin 1."""
    ref = NumericReference.build([float(x) for x in range(1, 101)], bins=4)
    assert ref.bin_index(value) == expected


def test_numeric_proportions_sum_to_one():
    """The reference's own values fill the inner bins; outer bins are empty."""
    rng = random.Random(2)
    ref = NumericReference.build([rng.lognormvariate(3, 0.6) for _ in range(1234)], bins=10)
    assert math.fsum(ref.proportions) == pytest.approx(1.0)
    assert ref.proportions[0] == ref.proportions[-1] == 0.0
    assert len(ref.edges) == 11
    assert all(p == pytest.approx(0.1, abs=0.002) for p in ref.proportions[1:-1])


def test_constant_column():
    """A constant column gets one inner bin of width one ulp and std 1 (no division by zero)."""
    ref = NumericReference.build([5.0] * 10, bins=4)
    assert ref.edges == [5.0, math.nextafter(5.0, math.inf)]
    assert ref.proportions == [0.0, 1.0, 0.0]
    assert ref.std == 1.0
    assert [ref.bin_index(x) for x in (4.9, 5.0, 5.1)] == [0, 1, 2]
    # every quantile is the constant: its rank is the middle, anything else is clipped to the ends
    assert ref.grid == [5.0] * (RANK_GRID_STEPS + 1)
    assert ref.ks_cdf == [1.0] * (KS_GRID_STEPS + 1)
    ranks = RankTransform(ref.grid, ref.events)
    assert [ranks.rank(x) for x in (4.0, 5.0, 6.0)] == [0.05, 0.5, 0.95]
    assert ranks.normal_score(5.0) == 0.0


def test_duplicate_quantiles_collapse():
    """Repeated values give fewer, distinct edges; proportions still sum to 1."""
    ref = NumericReference.build([0.0] * 80 + [1.0] * 20, bins=10)
    assert ref.edges == sorted(set(ref.edges))
    assert ref.edges[0] == 0.0 and ref.edges[-1] == 1.0
    assert math.fsum(ref.proportions) == pytest.approx(1.0)
    assert ref.proportions[ref.bin_index(0.0)] == pytest.approx(0.8)


def test_numeric_summary_and_quantile_grids():
    """Mean and (population) std, the permille rank grid and the percentile KS grid with its CDF."""
    values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    ref = NumericReference.build(values, bins=2, missing=3, mismatches=1)
    assert (ref.mean, ref.std) == (5.0, 2.0)
    assert (ref.events, ref.missing, ref.mismatches) == (8, 3, 1)
    assert len(ref.grid) == RANK_GRID_STEPS + 1 and (ref.grid[0], ref.grid[-1]) == (2.0, 9.0)
    assert ref.grid == sorted(ref.grid)
    assert len(ref.ks_grid) == len(ref.ks_cdf) == KS_GRID_STEPS + 1
    assert (ref.ks_grid[0], ref.ks_grid[-1]) == (2.0, 9.0)
    # share of reference values ≤ each grid point
    assert ref.ks_cdf == [sum(v <= g for v in values) / 8 for g in ref.ks_grid]
    assert ref.ks_cdf[0] == 0.125 and ref.ks_cdf[-1] == 1.0


def test_rank_transform_mid_ranks_and_clipping():
    """Ties share the middle of their quantile range; values beyond the reference are clipped."""
    ref = NumericReference.build([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], bins=2)
    ranks = RankTransform(ref.grid, ref.events)
    floor = 0.5 / 8
    assert ranks.rank(-100.0) == ranks.rank(2.0) == floor
    assert ranks.rank(100.0) == ranks.rank(9.0) == 1 - floor
    # 4.0 is the quantile for p in [1/7, 3/7] (linear interpolation): its mid-rank is 2/7
    assert ranks.rank(4.0) == pytest.approx(2 / 7, abs=1e-3)
    assert ranks.rank(5.0) == pytest.approx(4.5 / 7, abs=1e-3)
    # between grid points the rank is linear and increasing
    assert ranks.rank(4.0) < ranks.rank(4.5) < ranks.rank(5.0) < ranks.rank(6.0) < ranks.rank(7.0)
    assert ranks.normal_score(4.5) == pytest.approx(NormalDist().inv_cdf(ranks.rank(4.5)))


def test_rank_of_reference_like_data_is_uniform():
    """Fresh draws from the reference's distribution get ranks ≈ U(0, 1), even for a heavy tail."""
    rng = random.Random(5)
    ref = NumericReference.build([rng.lognormvariate(0, 2) for _ in range(5000)])
    ranks = RankTransform(ref.grid, ref.events)
    u = [ranks.rank(rng.lognormvariate(0, 2)) for _ in range(20000)]
    assert statistics.fmean(u) == pytest.approx(0.5, abs=0.01)
    assert statistics.pvariance(u) == pytest.approx(1 / 12, abs=0.003)
    z = [NormalDist().inv_cdf(x) for x in u]
    assert statistics.fmean(z) == pytest.approx(0.0, abs=0.03)
    assert statistics.pstdev(z) == pytest.approx(1.0, abs=0.03)


def test_numeric_needs_a_value():
    """No values → ReferenceProfileError."""
    with pytest.raises(ReferenceProfileError):
        NumericReference.build([], bins=10)


# --- categorical -----------------------------------------------------------------------------------


def test_categorical_top_k_and_other():
    """The top_k categories keep their share; the rest and unseen categories go to __other__."""
    values = ["DE"] * 5 + ["FR"] * 3 + ["US"] * 1 + ["GB"] * 1
    ref = CategoricalReference.build(values, top_k=2)
    assert ref.categories == ["DE", "FR"]
    assert ref.proportions == [0.5, 0.3, 0.2]
    assert math.fsum(ref.proportions) == pytest.approx(1.0)
    assert [ref.bin_index(v) for v in ("DE", "FR", "US", "GB", "JP")] == [0, 1, 2, 2, 2]


def test_categorical_without_other_values():
    """When every category fits, __other__ is present with proportion 0."""
    ref = CategoricalReference.build(["a", "b", "a"], top_k=20)
    assert ref.categories == ["a", "b"]
    assert ref.proportions[-1] == 0.0
    assert ref.bin_index("zzz") == 2


def test_categorical_ties_broken_by_name():
    """Equal counts are ordered by category name, whatever the input order."""
    values = ["c", "b", "a", "c", "b", "a", "d"]
    assert CategoricalReference.build(values, top_k=2).categories == ["a", "b"]
    assert CategoricalReference.build(list(reversed(values)), top_k=2).categories == ["a", "b"]
    assert CategoricalReference.build(values, top_k=4).categories == ["a", "b", "c", "d"]


def test_categorical_keys_use_json_spelling():
    """Booleans and numbers become their JSON spelling; 1 and 1.0 are one category."""
    ref = CategoricalReference.build([True, True, False, 1, 1.0], top_k=5)
    assert ref.categories == ["1", "true", "false"]
    assert ref.bin_index(True) == 1
    assert ref.bin_index(1.0) == 0
    assert ref.bin_index("true") == 1


def test_categorical_needs_a_value():
    """No values → ReferenceProfileError."""
    with pytest.raises(ReferenceProfileError):
        CategoricalReference.build([], top_k=5)


# --- build_reference --------------------------------------------------------------------------------


def events_for_inference() -> list[InferenceEvent]:
    return [ev(i, {"amount": float(i), "count": i, "country": ["DE", "FR"][i % 2], "flag": i % 3 == 0,
                   "mixed": i if i % 2 else "x", "nothing": None, "sometimes": None if i % 2 else 1.5},
               score=i / 100, label=str(i % 2))
            for i in range(100)]


def test_build_reference_infers_kinds():
    """numbers → numeric; strings, booleans and mixtures → categorical; all-null features dropped."""
    profile = build_reference("m", events_for_inference(), None, bins=5, top_k=3)
    kinds = {name: ref.kind for name, ref in profile.features.items()}
    assert kinds == {"amount": "numeric", "count": "numeric", "country": "categorical",
                     "flag": "categorical", "mixed": "categorical", "sometimes": "numeric"}
    assert "nothing" not in profile.features
    assert profile.events == 100
    assert profile.source == "warmup"
    assert profile.score is not None and profile.score.kind == "numeric"
    assert profile.predicted_label is not None and profile.predicted_label.categories == ["0", "1"]
    assert len(profile.features["amount"].edges) == 6  # bins honoured
    assert profile.features["mixed"].categories == ["x", "1", "11"]  # top_k honoured, ties by name


def test_build_reference_honours_configured_kinds():
    """Configured kinds win; only configured features are kept; non-numbers are ignored for numeric."""
    profile = build_reference("m", events_for_inference(),
                              {"count": "categorical", "mixed": "numeric", "nothing": "numeric",
                               "missing": "categorical"}, bins=4, top_k=3)
    assert sorted(profile.features) == ["count", "mixed"]
    assert profile.features["count"].kind == "categorical"
    mixed = profile.features["mixed"]
    assert mixed.kind == "numeric"
    assert (mixed.minimum, mixed.maximum) == (1.0, 99.0)  # only the odd numbers


def test_build_reference_counts_data_quality_base_rates():
    """Each column records how many events had it missing, and (numeric) not a finite number."""
    profile = build_reference("m", events_for_inference(), {"mixed": "numeric", "sometimes": "numeric",
                                                            "country": "categorical"})
    mixed, sometimes, country = (profile.features[n] for n in ("mixed", "sometimes", "country"))
    assert (mixed.events, mixed.missing, mixed.mismatches) == (50, 0, 50)  # the "x" strings
    assert (sometimes.events, sometimes.missing, sometimes.mismatches) == (50, 50, 0)  # the nulls
    assert (country.events, country.missing, country.seen, country.singletons) == (100, 0, ["DE", "FR"], 0)


def test_categorical_seen_and_singletons():
    """Every reference category is 'seen' (top-k or not); singletons estimate the unseen share."""
    ref = CategoricalReference.build(["a"] * 5 + ["b"] * 3 + ["c", "d"], top_k=1, missing=4)
    assert (ref.events, ref.missing, ref.singletons) == (10, 4, 2)
    assert ref.seen == ["a", "b", "c", "d"]
    assert [ref.is_seen(v) for v in ("a", "c", "d", "e")] == [True, True, True, False]
    assert ref.bin_index("c") == ref.bin_index("e") == 1  # both __other__ for PSI
    again = CategoricalReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again == ref and not again.is_seen("e") and again.is_seen("d")


def test_build_reference_without_predictions():
    """No scores and no labels → no prediction references."""
    profile = build_reference("m", [ev(i, {"x": i}) for i in range(20)], None)
    assert profile.score is None and profile.predicted_label is None
    assert [(s, n) for s, n, _ in profile.columns()] == [("feature", "x")]


def test_build_reference_needs_events():
    """No events → ReferenceProfileError naming the model."""
    with pytest.raises(ReferenceProfileError, match="fraud"):
        build_reference("fraud", [], None)


def test_columns_order_is_stable():
    """Features by name, then the prediction score, then the predicted label."""
    profile = build_reference("m", events_for_inference(), None)
    assert [(s, n) for s, n, _ in profile.columns()] == [
        ("feature", "amount"), ("feature", "count"), ("feature", "country"), ("feature", "flag"),
        ("feature", "mixed"), ("feature", "sometimes"), ("prediction", "score"), ("prediction", "label")]


# --- serialisation ---------------------------------------------------------------------------------


def test_profile_dict_round_trip_through_json():
    """to_dict → JSON → from_dict gives an equal profile that bins identically."""
    profile = build_reference("m", events_for_inference(), None, bins=5, top_k=3)
    again = ReferenceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again.to_dict() == profile.to_dict()
    assert again.features == profile.features
    assert again.score == profile.score and again.predicted_label == profile.predicted_label
    assert again.features["country"].bin_index("FR") == profile.features["country"].bin_index("FR")
    assert again.features["country"].bin_index("JP") == 2


def test_column_round_trip():
    """Each column kind round-trips on its own."""
    numeric = NumericReference.build([1.0, 2.0, 3.0], bins=2)
    categorical = CategoricalReference.build(["a", "b", "b"], top_k=1)
    assert column_from_dict(numeric.to_dict()) == numeric
    assert column_from_dict(categorical.to_dict()) == categorical
    assert categorical.to_dict() == {"kind": "categorical", "categories": ["b"], "proportions": [2 / 3, 1 / 3],
                                     "events": 3, "missing": 0, "seen": ["a", "b"], "singletons": 1}
    assert set(numeric.to_dict()) == {"kind", "edges", "proportions", "mean", "std", "min", "max", "events",
                                      "missing", "mismatches", "grid", "ks_grid", "ks_cdf"}


def test_from_dict_defaults_to_stored_source():
    """A dict without a source reads as a stored profile, version 0."""
    d = build_reference("m", events_for_inference(), None).to_dict()
    del d["source"], d["version"]
    profile = ReferenceProfile.from_dict(d)
    assert (profile.source, profile.version) == ("stored", 0)


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("model_id"),
    lambda d: d.pop("features"),
    lambda d: d["features"]["amount"].pop("kind"),
    lambda d: d["features"]["amount"].pop("edges"),
    lambda d: d["features"]["country"].pop("categories"),
    lambda d: d["features"].__setitem__("amount", "not a column"),
    lambda d: d["features"].__setitem__("amount", None),
    lambda d: d["score"].pop("mean"),
    lambda d: d.__setitem__("predicted_label", {"kind": "categorical"}),
    lambda d: d["features"]["amount"].__setitem__("edges", 5),
], ids=["no model_id", "no features", "no kind", "no edges", "no categories", "column str",
        "column null", "score no mean", "label no categories", "edges int"])
def test_malformed_dict_is_a_reference_profile_error(mutate):
    """A malformed stored profile is refused with ReferenceProfileError."""
    d = json.loads(json.dumps(build_reference("m", events_for_inference(), None).to_dict()))
    mutate(d)
    with pytest.raises(ReferenceProfileError):
        ReferenceProfile.from_dict(d)


def test_other_bucket_name():
    """The catch-all bucket is called __other__ (it appears in alerts)."""
    assert OTHER == "__other__"
