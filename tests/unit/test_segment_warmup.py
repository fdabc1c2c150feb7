"""Segments with the model's warm-up reference (decisions = "model"): each partition's warm-up share keeps
per-segment summaries in its bucket partials, the merge builds each top segment's profile from the same
buckets the model's reference takes, and the segments are decided over all partitions: the same segments,
profiles and alert ids whatever the partitioning, a shift confined to one segment announced for it alone,
a stationary stream quiet."""

from __future__ import annotations

from functools import lru_cache

from stream_monitor.config import parse_config
from stream_monitor.merge import model_reference

from ..support import FEATURES_BY_COUNTRY as FEATURES, model_cluster, segmented_stream as stream

FR = {"country": "FR"}


def config(segments: dict | None = None):
    table = {"decisions": "model", "reference": {"events": 5000}, "detectors": {"psi": {"window": 5000}},
             "features": FEATURES, "merge_bucket_seconds": 1.0, "merge_lateness_seconds": 1.0}
    if segments is not None:
        table["segments"] = segments
    return parse_config({"models": {"m": table}})


BY_COUNTRY = {"columns": ["country"], "top_k": 3}


def cluster(cfg, events, partitions: int, cut: int = 1000, restart_every: int | None = None):
    return model_cluster(cfg, [(e, None) for e in events], partitions, cut, restart_every)


def pinned(alerts) -> list[tuple]:
    return [(a.status, a.signal, a.name, a.detector, a.segment, a.window["first_bucket"] % 1000,
             a.window["last_bucket"] % 1000) for a in alerts]


@lru_cache(maxsize=None)
def spread(partitions: int, cut: int = 1000, restart_every: int | None = None):
    return cluster(config(BY_COUNTRY), stream(110_000, 7, spread_from=50_000), partitions, cut, restart_every)


def test_the_warm_up_reference_carries_the_top_segments_profiles_whatever_the_partitioning():
    _, one = spread(1)
    _, three = spread(3)
    assert one["reference"]["segments"] == three["reference"]["segments"]
    reference = model_reference(one)
    assert reference.source == "warmup" and reference.events == 5000
    assert [(values, p.events) for values, p in reference.segments.top] == [
        (("DE",), 1808), (("US",), 1203), (("FR",), 736)]
    assert reference.segments.rest.events == 1253


def test_a_shift_confined_to_a_segment_is_announced_for_it_alone_with_the_same_ids_for_1_and_3_partitions():
    one, _ = spread(1)
    three, _ = spread(3)
    # FR's segment windows of 5,000 of its events (about 33 buckets); the one from event 39,000 to 72,999
    # (the change at 50,000) fires PSI and the out-of-range rate, the next one KS; nothing model-wide
    assert pinned(one) == [("firing", "data_quality", "amount", "out_of_range", FR, 39, 72),
                           ("firing", "feature", "amount", "psi", FR, 39, 72),
                           ("firing", "feature", "amount", "ks", FR, 73, 106)]
    assert round(one[1].statistic, 3) == 0.238 and one[1].window["last_bucket"] % 1000 == 72
    assert [a.alert_id for a in three] == [a.alert_id for a in one]


def test_batch_cuts_and_restarts_change_nothing():
    three, state = spread(3)
    again, other = spread(3, 613, restart_every=7)
    assert [a.alert_id for a in again] == [a.alert_id for a in three]
    assert other["reference"] == state["reference"]


def test_without_segments_the_same_shift_raises_nothing():
    alerts, _ = cluster(config(), stream(110_000, 7, spread_from=50_000), 3)
    assert alerts == []


def test_a_stationary_segmented_stream_stays_quiet():
    alerts, state = cluster(config({"columns": ["country"], "top_k": 10}), stream(60_000, 11), 3)
    assert alerts == []
    assert len(model_reference(state).segments.top) == 7  # DE, US, FR, GB, IT, ES, NL; PL under 100
    assert state["windows"] == 10  # model windows of 5,000 events after the reference's 5 buckets
    decided = {key.split("|")[1] for key in state["episodes"] if key.startswith("segment|")}
    # DE, US, FR and GB filled windows of 5,000 of their events; the smaller ones not yet in 55,000 events
    assert decided == {'{"country":"%s"}' % c for c in ("DE", "US", "FR", "GB")}
