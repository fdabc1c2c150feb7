"""Drivers: the features that moved most in the window of a prediction or performance alert."""

from __future__ import annotations

import math
import random
from functools import lru_cache

import msgspec
import pytest

from stream_monitor import drivers
from stream_monitor.config import parse_config
from stream_monitor.events import Alert
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import ReferenceProfile, build_reference

from ..support import decoded

ALERT = Alert(status="firing", severity="critical", model_id="fraud", signal="prediction", name="score",
              detector="psi", statistic=0.49, threshold=0.25, reference={}, current={}, partition=3, offset=42,
              event_time_ms=None, message="PSI of fraud.prediction.score is 0.49 (critical ≥ 0.25)")


# --- pure: ranking, message, attach ----------------------------------------------------------------

def test_rank_weighs_psi_by_association_and_breaks_ties_by_name():
    psis = {"amount": 1.9, "country": 0.74, "age": 2.5, "zip": 0.74, "id": 0.74}
    association = {"amount": 0.4, "country": 0.5, "age": 0.01, "zip": 0.5, "id": 0.5}
    ranked = drivers.rank(psis, association)
    assert [d["name"] for d in ranked] == ["amount", "country", "id", "zip", "age"]
    assert ranked[0] == {"name": "amount", "psi": 1.9, "association": 0.4}


def test_rank_without_association_is_by_psi_alone():
    ranked = drivers.rank({"b": 0.3, "a": 0.3, "c": 2.0}, None)
    assert [(d["name"], d["association"]) for d in ranked] == [("c", None), ("a", None), ("b", None)]


def test_rank_keeps_the_top_five_and_drops_unknown_values():
    psis = {f"f{i}": float(i) for i in range(8)} | {"nan": math.nan}
    assert [d["name"] for d in drivers.rank(psis, None)] == ["f7", "f6", "f5", "f4", "f3"]


def test_message_names_the_top_drivers_that_moved():
    ranked = drivers.rank({"amount": 1.9, "country": 0.74, "age": 0.02}, {"amount": 0.3, "country": 0.2, "age": 0.9})
    assert drivers.message_tail(ranked) == "; drivers: amount (PSI 1.9), country (PSI 0.74)"
    assert drivers.message_tail(drivers.rank({"age": 0.02}, None)) == \
        "; no feature moved in its last closed window (every PSI < 0.1)"
    assert drivers.message_tail(()) == ""


def test_attach_keeps_the_alert_id():
    ranked = drivers.rank({"amount": 1.9, "country": 0.74}, None)
    alert = drivers.attach(ALERT, ranked)
    assert alert.alert_id == ALERT.alert_id
    assert alert.message == ALERT.message + "; drivers: amount (PSI 1.9), country (PSI 0.74)"
    record = alert.to_dict(0)
    assert record["drivers"] == [{"name": "amount", "psi": 1.9, "association": None},
                                 {"name": "country", "psi": 0.74, "association": None}]
    assert "drivers" not in ALERT.to_dict(0)


def test_normalised_mutual_information():
    assert drivers.normalised_mutual_information([(i % 4, i % 4) for i in range(400)]) == pytest.approx(1.0)
    rng = random.Random(1)
    independent = [(rng.randrange(4), rng.randrange(4)) for _ in range(20_000)]
    assert drivers.normalised_mutual_information(independent) < 0.01
    assert drivers.normalised_mutual_information([(0, i % 3) for i in range(30)]) == 0.0
    assert drivers.normalised_mutual_information([]) == 0.0


# --- the reference's association -------------------------------------------------------------------

def doc(i: int, shifted: bool, rng: random.Random) -> dict:
    """Two features that move the score (a, b), one that moves it but stays put (c), one unrelated (d)."""
    shift = 1.5 if shifted else 0.0
    a, b = rng.gauss(shift, 1.0), rng.gauss(shift, 1.0)
    c, d = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
    country = rng.choice(["DE", "FR", "US"])
    score = 1 / (1 + math.exp(-(a + b + c + rng.gauss(0.0, 0.3))))
    return {"event_id": f"m-{i}", "model_id": "drivers", "timestamp": 1_795_000_000 + i * 0.01,
            "features": {"a": a, "b": b, "c": c, "d": d, "country": country},
            "prediction": {"score": round(score, 4)}}


@lru_cache(maxsize=None)
def stream(count: int = 6000, shift_at: int = 3000) -> tuple:
    rng = random.Random(7)
    return tuple(decoded(doc(i, i >= shift_at, rng), i, frozenset({"drivers"})) for i in range(count))


CONFIG = parse_config({"models": {"drivers": {"decisions": "partition",
                                              "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}}})


def test_the_reference_keeps_each_features_association_with_the_score():
    profile = build_reference("drivers", stream()[:1000], None)
    association = profile.association
    assert set(association) == {"a", "b", "c", "d", "country"}
    assert min(association["a"], association["b"], association["c"]) > 5 * max(association["d"],
                                                                                association["country"])
    again = ReferenceProfile.from_dict(profile.to_dict())
    assert again.association == association


def test_a_reference_stored_without_association_still_loads():
    stored = build_reference("drivers", stream()[:1000], None).to_dict()
    del stored["association"]
    assert ReferenceProfile.from_dict(stored).association is None


# --- the engine -----------------------------------------------------------------------------------

def run_batches(sizes: list[int], restore_at: int | None = None) -> list[Alert]:
    events_ = stream()
    monitor = PartitionMonitor(CONFIG, 0, {})
    alerts, start, i = [], 0, 0
    while start < len(events_):
        if restore_at is not None and start >= restore_at:
            saved = monitor.snapshot()
            monitor = PartitionMonitor(CONFIG, 0, {})
            monitor.restore(saved)
            restore_at = None
        size = sizes[i % len(sizes)]
        alerts += monitor.process_batch([(o, events_[o], None) for o in range(start, min(start + size, len(events_)))])
        start += size
        i += 1
    return alerts


@lru_cache(maxsize=None)
def one_at_a_time() -> tuple[Alert, ...]:
    return tuple(run_batches([1]))


def test_the_prediction_alert_names_the_two_features_that_moved():
    alerts = one_at_a_time()
    psi = [a for a in alerts if (a.signal, a.name, a.detector, a.status) == ("prediction", "score", "psi", "firing")]
    assert psi and psi[0].offset == 3999
    top = psi[0].drivers
    assert sorted(d["name"] for d in top[:2]) == ["a", "b"]
    assert all(d["psi"] > 0.5 for d in top[:2]) and all(d["psi"] < 0.1 for d in top[2:])
    assert "; drivers: " in psi[0].message and "c (PSI" not in psi[0].message
    # only firing prediction and performance alerts carry them; feature alerts never do
    assert all(a.drivers is None for a in alerts if a.signal == "feature" or a.status == "resolved")
    assert all(a.drivers is not None for a in alerts if a.signal == "prediction" and a.status == "firing")


@pytest.mark.parametrize("sizes", [[1000], [3, 299, 50, 4000], [7, 1]])
def test_drivers_are_the_same_across_batch_cuts(sizes):
    assert run_batches(sizes) == list(one_at_a_time())


def test_drivers_are_the_same_after_a_restore_mid_stream():
    assert run_batches([250], restore_at=3500) == list(one_at_a_time())


def test_the_engines_alerts_with_drivers_fit_the_alert_schema():
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from jsonschema import Draft202012Validator  # noqa: PLC0415

    schema = json.loads((Path(__file__).parents[2] / "schemas" / "alert.json").read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    carrying = [a for a in one_at_a_time() if a.drivers is not None]
    assert carrying
    for alert in carrying:
        assert [e.message for e in validator.iter_errors(alert.to_dict(0))] == []


def test_a_performance_alert_carries_the_drivers_of_its_offset():
    """Labels joined at each prediction; from event 3000 the inputs shift and a third of the labels turn:
    the performance alert carries the features' PSIs of their latest window closed at or before it."""
    from stream_monitor.join import JoinResult  # noqa: PLC0415

    rng = random.Random(3)
    items = []
    for o, event in enumerate(stream()):
        truth = int(event.score >= 0.5)
        if o >= 3000 and rng.random() < 0.35:
            truth = 1 - truth
        items.append((o, event, JoinResult("joined", {"label": truth, "t": None})))

    def run(size: int) -> list[Alert]:
        monitor = PartitionMonitor(CONFIG, 0, {})
        return [a for s in range(0, len(items), size) for a in monitor.process_batch(items[s:s + size])]

    alerts = run(1)
    performance = [a for a in alerts if a.signal == "performance" and a.status == "firing"]
    assert performance and all(a.drivers is not None for a in performance)
    first = performance[0]  # ADWIN on the error stream, before the first window after the change closes
    assert 3000 < first.offset < 3999
    assert {d["name"] for d in first.drivers} == {"a", "b", "c", "d", "country"}
    assert all(d["psi"] < 0.1 for d in first.drivers)  # the window closed at 2999: before the change
    assert first.message.endswith("; no feature moved in its last closed window (every PSI < 0.1)")
    assert run(777) == alerts


def test_model_level_decisions_carry_the_merged_windows_drivers():
    """decisions = "model": the merged window's prediction alert names the features of the same window."""
    from stream_monitor.replay import replay_rows  # noqa: PLC0415

    config = parse_config({"models": {"drivers": {
        "decisions": "model", "reference": {"source": "stored"}, "merge_bucket_seconds": 1.0,
        "merge_lateness_seconds": 1.0, "detectors": {"psi": {"window": 1000}}}}})
    reference = build_reference("drivers", stream()[:1000], None, source="stored")
    alerts = list(replay_rows(config, list(enumerate(stream())), {"drivers": reference}))
    psi = [a for a in alerts if (a.signal, a.name, a.detector, a.status) == ("prediction", "score", "psi", "firing")]
    assert psi and psi[0].partition is None
    assert sorted(d["name"] for d in psi[0].drivers[:2]) == ["a", "b"]
    assert all(d["association"] is not None for d in psi[0].drivers)
    assert all(a.drivers is None for a in alerts if a.signal == "feature")


def test_a_warm_up_restored_mid_way_measures_the_same_association():
    from stream_monitor.reference import WarmupSummary  # noqa: PLC0415

    whole, first = WarmupSummary(None), WarmupSummary(None)
    for event in stream()[:1000]:
        whole.add(event)
    for event in stream()[:400]:
        first.add(event)
    second = WarmupSummary(None)
    second.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot())))
    for event in stream()[400:1000]:
        second.add(event)
    assert second.build("drivers").association == whole.build("drivers").association


def test_a_model_level_warm_up_reference_measures_the_association_too():
    """decisions = "model" with a warm-up reference: the merged warm-up keeps the partitions' joint samples."""
    from stream_monitor.replay import replay_rows  # noqa: PLC0415

    config = parse_config({"models": {"drivers": {
        "decisions": "model", "reference": {"events": 1000}, "merge_bucket_seconds": 1.0,
        "merge_lateness_seconds": 1.0, "detectors": {"psi": {"window": 1000}}}}})
    alerts = list(replay_rows(config, list(enumerate(stream())), {}))
    psi = [a for a in alerts if (a.signal, a.name, a.detector, a.status) == ("prediction", "score", "psi", "firing")]
    assert psi and psi[0].partition is None
    assert sorted(d["name"] for d in psi[0].drivers[:2]) == ["a", "b"]
    assert all(d["association"] is not None for d in psi[0].drivers)
