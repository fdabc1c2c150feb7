"""Joint drift (signal ``multivariate``): a correlation that appears while every feature's own
distribution stays the same is caught, and stationary streams stay quiet. Seeded, pure, no I/O."""

from __future__ import annotations

import numpy as np
import pytest

from stream_monitor.config import ModelConfig, parse_config
from stream_monitor.detectors.multivariate import JointWindow, fit_joint
from stream_monitor.events import InferenceEvent
from stream_monitor.partition import ModelMonitor
from stream_monitor.reference import ReferenceProfile, build_reference
from stream_monitor.state import decode_state, encode_state

REFERENCE = 5000
WINDOW = 5000


def model(**detectors) -> ModelConfig:
    return parse_config({"models": {"m": {"decisions": "partition", "detectors": detectors}}}).models["m"]


def rows(rng: np.random.Generator, n: int, d: int, rho: float = 0.0) -> np.ndarray:
    """n rows of d standard normal features; features 0 and 1 correlated ``rho`` (marginals unchanged)."""
    x = rng.standard_normal((n, d))
    x[:, 1] = rho * x[:, 0] + np.sqrt(1 - rho * rho) * x[:, 1]
    return x


def events(x: np.ndarray, start: int = 0) -> list[InferenceEvent]:
    names = [f"f{i}" for i in range(x.shape[1])]
    return [InferenceEvent(f"e{start + i}", "m", 1_700_000_000_000 + start + i,
                           dict(zip(names, map(float, row)))) for i, row in enumerate(x)]


def feed(monitor: ModelMonitor, stream: list[InferenceEvent], batch: int = 1000, start: int = 0) -> list:
    out = []
    for at in range(0, len(stream), batch):
        chunk = stream[at:at + batch]
        items = [(i, start + at + i, e, None) for i, e in enumerate(chunk)]
        out.extend(alert for *_, alert in sorted(monitor.process_batch(items, 0), key=lambda t: t[:3]))
    return out


def stream(seed: int = 7, d: int = 5, quiet: int = 20_000, changed: int = 20_000) -> list[InferenceEvent]:
    rng = np.random.default_rng(seed)
    return events(np.concatenate([rows(rng, REFERENCE + quiet, d), rows(rng, changed, d, rho=0.5)]))


def test_a_correlation_with_unchanged_marginals_is_caught_in_the_first_window_after_it():
    monitor = ModelMonitor(model(), None)
    alerts = feed(monitor, stream())
    assert monitor.multivariate is not None
    firing = [a for a in alerts if a.status == "firing"]
    # the change starts at offset 25,000 (5,000 warm-up, 20,000 quiet): the first window after it closes at 29,999
    assert [(a.signal, a.name, a.detector, a.offset) for a in firing] == [("multivariate", "joint", "hotelling", 29_999)]
    alert = firing[0]
    assert alert.statistic > 5 * alert.threshold  # T² ≈ 600 against ≈ 35 (5 features: 10 pairs)
    assert "corr(f0, f1) " in alert.message and "→ 0.5" in alert.message
    assert alert.current["correlations"][0]["features"] == ["f0", "f1"]
    # no per-column detector sees it: every other alert is absent
    assert {a.signal for a in alerts} == {"multivariate"}


def test_the_same_alerts_however_the_stream_is_cut_and_across_a_snapshot():
    whole = feed(ModelMonitor(model(), None), stream(), batch=5000)
    cut = feed(ModelMonitor(model(), None), stream(), batch=337)
    assert [a.alert_id for a in whole] == [a.alert_id for a in cut] and whole
    assert [a.statistic for a in whole] == [a.statistic for a in cut]  # exact: the window sums are fixed point
    events_ = stream()
    first = ModelMonitor(model(), None)
    before = feed(first, events_[:27_123], batch=1000)
    second = ModelMonitor(model(), None)
    assert second.restore(decode_state(encode_state(first.snapshot()))) is None
    after = feed(second, events_[27_123:], batch=1000, start=27_123)
    assert [a.alert_id for a in before + after] == [a.alert_id for a in whole]
    assert [a.statistic for a in before + after] == [a.statistic for a in whole]


def test_turned_off_by_config_no_joint_test_and_no_alerts():
    monitor = ModelMonitor(model(multivariate={"enabled": False}), None)
    assert feed(monitor, stream()) == []
    assert monitor.multivariate is None


def test_events_missing_a_feature_are_skipped_and_counted():
    monitor = ModelMonitor(model(), None)
    feed(monitor, stream(quiet=0, changed=0))
    incomplete = events(rows(np.random.default_rng(3), 10, 5), start=REFERENCE)
    incomplete = [e._replace(features={**e.features, "f2": None}) if i % 2 else e for i, e in enumerate(incomplete)]
    assert feed(monitor, incomplete, start=REFERENCE) == []
    assert monitor.multivariate.skipped == 5
    assert monitor.multivariate.adapters[0].detector.count == 5


def test_one_numeric_feature_has_no_joint_test_and_an_older_stored_reference_turns_it_off(caplog):
    x = rows(np.random.default_rng(1), REFERENCE, 3)
    profile = build_reference("m", events(x), None)
    assert profile.joint is not None and profile.joint.names == ("f0", "f1", "f2")
    assert ReferenceProfile.from_dict(profile.to_dict()) == profile
    older = profile.to_dict()
    del older["joint"]
    with caplog.at_level("INFO", logger="stream_monitor"):
        assert ModelMonitor(model(), ReferenceProfile.from_dict(older)).multivariate is None
    assert [r.getMessage() for r in caplog.records if "multivariate drift is off" in r.getMessage()]
    single = build_reference("m", events(x[:, :1]), None)
    assert single.joint is None and ModelMonitor(model(), single).multivariate is None


def test_at_most_max_features_are_tested():
    x = rows(np.random.default_rng(2), REFERENCE, 12)
    assert len(build_reference("m", events(x), None).joint.names) == 10
    assert build_reference("m", events(x), None, joint_features=4).joint.names == ("f0", "f1", "f10", "f11")


def test_zero_alarms_on_a_million_stationary_10_feature_events():
    """10⁶ events in 200 windows: the pure detector on 10-feature rows, pinned seed
    (bench/false_alarms.py runs the same through a whole model)."""
    rng = np.random.default_rng(11)
    joint = fit_joint([f"f{i}" for i in range(10)], rng.standard_normal((REFERENCE, 10)))
    from stream_monitor.calibration import hotelling_threshold
    threshold = hotelling_threshold(0.1, WINDOW, joint.events, joint.rank)
    window = JointWindow(joint, WINDOW)
    statistics = []
    for _ in range(200):
        statistics.extend(value for _, value, _ in window.add_many(rng.standard_normal((WINDOW, 10))))
    assert len(statistics) == 200
    assert max(statistics) < threshold
    assert 35 < float(np.mean(statistics)) < 60  # about 45 (χ²(45)) on unchanged data


@pytest.mark.parametrize("rho", [0.3, 0.5])
def test_the_pure_detector_finds_the_correlation(rho):
    rng = np.random.default_rng(5)
    joint = fit_joint([f"f{i}" for i in range(10)], rng.standard_normal((REFERENCE, 10)))
    window = JointWindow(joint, WINDOW)
    [(position, value, top)] = window.add_many(rows(rng, WINDOW, 10, rho))
    assert position == WINDOW - 1 and value > 200
    assert top[0][:2] == ["f0", "f1"] and abs(top[0][3] - rho) < 0.05


def test_a_snapshot_in_the_warm_up_keeps_the_joint_sample():
    """Restored mid-warm-up (some events missing a feature), the reference's joint part is the same."""
    events_ = stream(quiet=0, changed=0)
    events_ = [e._replace(features={**e.features, "f3": None}) if i % 97 == 0 else e for i, e in enumerate(events_)]
    whole = ModelMonitor(model(), None)
    feed(whole, events_)
    first = ModelMonitor(model(), None)
    feed(first, events_[:2_500])
    second = ModelMonitor(model(), None)
    second.restore(decode_state(encode_state(first.snapshot())))
    feed(second, events_[2_500:], start=2_500)
    assert second.reference.joint == whole.reference.joint and whole.reference.joint is not None
    assert whole.reference.joint.events == REFERENCE - len(range(0, REFERENCE, 97))


def test_the_joint_test_is_one_test_of_the_models_budget():
    """Its threshold comes from one test's share, as every other test's: the model's total is its budget."""
    from stream_monitor.calibration import hotelling_threshold, model_tests, split
    from stream_monitor.merge import model_share

    config = model()
    monitor = ModelMonitor(config, None)
    feed(monitor, stream(quiet=0, changed=0))
    joint = monitor.multivariate.reference
    # 5 numeric features (8 tests each), labels 3, performance 1, the joint test 1; no score: no estimate
    assert monitor.share == model_share(config, monitor.reference) == split(0.1, 5 * 8 + 3 + 1 + 1)
    assert monitor.share == split(0.1, model_tests([True] * 5, True, config.detectors, joint=True))
    window = config.detectors.multivariate.window
    assert monitor.multivariate.adapters[0].threshold == hotelling_threshold(monitor.share, window, joint.events,
                                                                             joint.rank)
    off = ModelMonitor(model(multivariate={"enabled": False}), None)
    feed(off, stream(quiet=0, changed=0))
    assert off.multivariate is None and off.share == split(0.1, 5 * 8 + 3 + 1)
