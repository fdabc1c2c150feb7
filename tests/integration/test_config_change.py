"""A config change under running state: settings saved with each model's state; what no longer fits is
re-baselined, not misread; the state of a model the config does not know is kept as it is."""

from __future__ import annotations

import logging
import pickle
from functools import lru_cache

import orjson
import pytest

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import DeadLetter, RawMessage
from stream_monitor.partition import PartitionMonitor, fingerprint, model_settings
from stream_monitor.state import decode_state, encode_state
from stream_monitor.synthetic import generate

PARTITION = 1


def config(window: int = 5000, models=("stable",), **extra):
    model = {"decisions": "partition",
             "reference": {"events": 1000}, "detectors": {"psi": {"window": window}, "resolve_after": 2000}}
    for key, value in extra.items():
        model[key] = value
    return parse_config({"models": {m: model for m in models}})


@lru_cache(maxsize=None)
def stream(model: str, count: int, drift_at: int | None = None) -> tuple:
    known = frozenset({"fraud", "stable", "churn"})
    out = []
    for i, doc in enumerate(generate(model, count, drift_at=drift_at)):
        event = decode(RawMessage("ml.inference", PARTITION, i, orjson.dumps(doc)), known)
        assert not isinstance(event, DeadLetter)
        out.append(event)
    return tuple(out)


def feed(monitor: PartitionMonitor, events, start: int) -> list:
    """In batches of 500, as the service feeds a partition (the alerts do not depend on the cut)."""
    items = [(offset, event, None) for offset, event in enumerate(events, start=start)]
    return [a for first in range(0, len(items), 500) for a in monitor.process_batch(items[first:first + 500])]


def restart(monitor: PartitionMonitor, new_config) -> PartitionMonitor:
    fresh = PartitionMonitor(new_config, PARTITION, {})
    fresh.restore(decode_state(encode_state(monitor.snapshot())))
    return fresh


def test_shrinking_the_psi_window_raises_no_alert_on_stationary_data(caplog):
    """psi.window 5000 → 1000 under running state: the window detectors restart (they were read with the
    new size and raised false critical alerts); ADWIN and Page-Hinkley keep their state; not one alert."""
    events = stream("stable", 16_000)
    before = PartitionMonitor(config(5000), PARTITION, {})
    assert feed(before, events[:8000], 0) == []  # 7,000 events into windows of 5,000: 2,000 in the open one
    caplog.set_level(logging.WARNING, logger="stream_monitor")
    after = restart(before, config(1000))
    assert list(after.rebaselined) == ["stable"]
    assert after.rebaselined["stable"] == (
        "model stable: detector config changed since the state was saved (detectors.psi.window 5000 → 1000): "
        "PSI, KS, data-quality restarted")
    assert [r.getMessage() for r in caplog.records] == [f"partition {PARTITION}: {after.rebaselined['stable']}"]
    old_columns = before.snapshot()["models"]["stable"]["columns"]
    new_columns = after.snapshot()["models"]["stable"]["columns"]
    for name, column in new_columns.items():
        assert column["detectors"]["adwin"] == old_columns[name]["detectors"]["adwin"]
        assert column["detectors"]["page_hinkley"] == old_columns[name]["detectors"]["page_hinkley"]
        assert column["detectors"]["psi"] != old_columns[name]["detectors"]["psi"]
    assert after.models["stable"].reference == before.models["stable"].reference  # the baseline itself holds
    assert feed(after, events[8000:], 8000) == []
    assert after.models["stable"].events == 16_000


def test_the_restored_windows_are_what_the_new_size_expects():
    """The restarted PSI window closes at its new size: 1,000 events after the restart, not earlier."""
    events = stream("stable", 9000)
    before = PartitionMonitor(config(5000), PARTITION, {})
    feed(before, events[:3500], 0)
    after = restart(before, config(1000))
    column = after.models["stable"].columns[0]
    assert column.psi.window == 1000 and "psi" not in column.last_statistic
    feed(after, events[3500:4499], 3500)
    assert "psi" not in column.last_statistic
    feed(after, events[4499:4500], 4499)
    assert "psi" in column.last_statistic


def test_an_unchanged_config_restores_exactly_and_says_nothing(caplog):
    events = stream("fraud", 6000, 3000)
    whole = PartitionMonitor(config(1000, models=("fraud",)), PARTITION, {})
    expected = feed(whole, events, 0)
    caplog.set_level(logging.WARNING, logger="stream_monitor")
    first = PartitionMonitor(config(1000, models=("fraud",)), PARTITION, {})
    alerts = feed(first, events[:3500], 0)
    second = restart(first, config(1000, models=("fraud",)))
    # nothing at WARNING or above (the level set above; an incident's INFO line, opened by the first
    # 3,500 events, may reach caplog when another test of the worker left that logger at INFO)
    assert second.rebaselined == {} and [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    alerts += feed(second, events[3500:], 3500)
    assert [a.alert_id for a in alerts] == [a.alert_id for a in expected] and expected
    assert second.snapshot() == whole.snapshot()


def test_a_model_unknown_to_the_config_survives_byte_for_byte_and_comes_back(caplog):
    """m2's state (2,000 events and its reference) is kept by an instance without m2, written back
    unchanged at every save, and continued by one that knows m2 again: the alerts of an uninterrupted run."""
    both = config(1000, models=("fraud", "stable"))
    only_stable = config(1000, models=("stable",))
    fraud, stable = stream("fraud", 6000, 3000), stream("stable", 6000)
    interleaved = [e for pair in zip(fraud, stable) for e in pair]
    whole = PartitionMonitor(both, PARTITION, {})
    expected = feed(whole, interleaved, 0)
    assert any(a.model_id == "fraud" for a in expected)

    first = PartitionMonitor(both, PARTITION, {})
    alerts = feed(first, interleaved[:4000], 0)
    saved = first.snapshot()
    stored = encode_state(saved)  # what Redis holds
    fraud_bytes = pickle.dumps(decode_state(stored)["models"]["fraud"])
    caplog.set_level(logging.WARNING, logger="stream_monitor")
    without = PartitionMonitor(only_stable, PARTITION, {})
    without.restore(decode_state(stored))
    again = PartitionMonitor(only_stable, PARTITION, {})
    again.restore(decode_state(encode_state(without.snapshot())))  # rollback-style restore: said once
    again.restore(again.snapshot())
    assert set(without.models) == {"stable"} and without.summary()["unconfigured_models"] == ["fraud"]
    kept_lines = [r.getMessage() for r in caplog.records if "kept as it is" in r.getMessage()]
    assert kept_lines == [f"partition {PARTITION}: the state of model fraud (2000 events) is kept as it is and "
                          "written back unchanged: this config does not know the model (its events are "
                          "dead-lettered as unknown_model)"] * 2  # two monitors; again's second restore: silent
    # the stable events go on; fraud's would be dead-lettered (skip); two saves later fraud's state is intact
    for offset in range(4000, 4010):
        if interleaved[offset].model_id == "stable":
            without.process(interleaved[offset], offset)
    without = restart(without, only_stable)
    assert pickle.dumps(without.snapshot()["models"]["fraud"]) == fraud_bytes
    assert without.snapshot()["models"]["fraud"] == saved["models"]["fraud"]
    # once per monitor (an assignment), not at every restore
    assert len([r for r in caplog.records if "kept as it is" in r.getMessage()]) == 3

    back = PartitionMonitor(both, PARTITION, {})
    state = without.snapshot()
    state["models"]["stable"] = saved["models"]["stable"]  # compare with the uninterrupted run: stable as saved
    state["next_offset"] = 4000
    back.restore(decode_state(encode_state(state)))
    assert back.rebaselined == {} and "unconfigured_models" not in back.summary()
    alerts += feed(back, interleaved[4000:], 4000)
    assert [a.alert_id for a in alerts] == [a.alert_id for a in expected]
    assert back.snapshot() == whole.snapshot()


@pytest.mark.parametrize("change", [{"features": {"x": "numeric"}}, {"decisions": "partition",
                                                                     "reference": {"events": 500}}])
def test_a_changed_reference_setting_warms_the_model_up_again(change):
    """A warm-up reference built under other reference settings (features, reference.events, bins…) is not
    the baseline the config asks for: the model warms up again from the next events."""
    events = stream("stable", 4000)
    before = PartitionMonitor(config(1000), PARTITION, {})
    feed(before, events[:2000], 0)
    changed = parse_config({"models": {"stable": {**{"decisions": "partition", "reference": {"events": 1000},
                                                     "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}},
                                                  **change}}})
    after = restart(before, changed)
    model = after.models["stable"]
    assert "the warm-up (a new reference from the next" in after.rebaselined["stable"]
    assert model.reference is None and model.columns == [] and model.events == 2000
    warmup = changed.models["stable"].reference.events
    feed(after, events[2000:2000 + warmup], 2000)
    assert model.reference is not None and model.reference.events == warmup
    if "features" in change:
        assert list(model.reference.features) == ["x"]
        assert sorted(before.models["stable"].reference.features) != ["x"]


def test_a_changed_performance_setting_restarts_only_performance():
    events = stream("stable", 3000)
    before = PartitionMonitor(config(1000), PARTITION, {})
    feed(before, events[:2000], 0)
    after = restart(before, config(1000, performance={"task": "classification", "window": 500}))
    assert after.rebaselined["stable"] == (
        "model stable: detector config changed since the state was saved (performance.task \"\" → classification; "
        "performance.window 1000 → 500): performance restarted")
    assert after.snapshot()["models"]["stable"]["columns"] == before.snapshot()["models"]["stable"]["columns"]


@pytest.mark.parametrize("detectors,restarted,named", [
    ({"adwin": {"delta": 1e-4}}, {"adwin"}, "ADWIN"),
    ({"page_hinkley": {"threshold": 40.0}}, {"page_hinkley"}, "Page-Hinkley"),
    ({"ks": {"threshold": 0.2}}, {"ks"}, "KS"),
    ({"psi": {"window": 1000, "critical": 0.5}}, {"psi"}, "PSI"),
    ({"psi": {"window": 1000}, "cooldown": 100}, {"psi", "ks", "adwin", "page_hinkley", "quality"},
     "PSI, KS, data-quality, ADWIN, Page-Hinkley"),
])
def test_only_the_detectors_whose_settings_changed_restart(detectors, restarted, named):
    events = stream("fraud", 5000, 3000)
    before = PartitionMonitor(config(1000, models=("fraud",)), PARTITION, {})
    feed(before, events[:4200], 0)
    model = {"decisions": "partition",
             "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}
    model["detectors"] = {**model["detectors"], **detectors}
    after = restart(before, parse_config({"models": {"fraud": model}}))
    assert after.rebaselined["fraud"].endswith(f": {named} restarted")
    old = before.snapshot()["models"]["fraud"]["columns"]["feature:amount"]
    new = after.snapshot()["models"]["fraud"]["columns"]["feature:amount"]
    for part in ("psi", "ks", "adwin", "page_hinkley", "quality"):
        if part in restarted:
            assert new["detectors"][part] != old["detectors"][part], part
        else:
            assert new["detectors"][part] == old["detectors"][part], part
    episodes = {"quality": ("missing", "type_mismatch", "non_finite", "out_of_range")}
    for part in ("adwin", "page_hinkley"):  # firing at 4200 (the drift at 3000): a restart forgets the episode
        names = episodes.get(part, (part,))
        for name in names:
            assert (new["episodes"][name] == old["episodes"][name]) == (part not in restarted), name


def test_the_fingerprint_is_canonical():
    """The same settings give the same fingerprint, whatever order the config listed them in."""
    a = parse_config({"models": {"m": {"features": {"a": "numeric", "b": "categorical"}}}}).models["m"]
    b = parse_config({"models": {"m": {"features": {"b": "categorical", "a": "numeric"}}}}).models["m"]
    assert fingerprint(model_settings(a)) == fingerprint(model_settings(b))
    c = parse_config({"models": {"m": {"features": {"a": "numeric"}}}}).models["m"]
    assert fingerprint(model_settings(a)) != fingerprint(model_settings(c))


def test_a_stored_reference_model_restarts_its_detectors_from_the_stored_reference():
    """source = "stored" and psi.bins changed: every detector starts afresh from the stored profile (the
    one the instance was given), not from the copy in the saved state."""
    from stream_monitor.reference import build_reference

    events = stream("stable", 3000)
    old_profile = build_reference("stable", list(events[:1000]), None, bins=10)
    new_profile = build_reference("stable", list(events[1000:2000]), None, bins=5)
    model = {"decisions": "partition", "reference": {"source": "stored"}, "detectors": {"psi": {"window": 1000}}}
    before = PartitionMonitor(parse_config({"models": {"stable": model}}), PARTITION, {"stable": old_profile})
    feed(before, events[:1500], 0)
    model["detectors"]["psi"]["bins"] = 5
    after = PartitionMonitor(parse_config({"models": {"stable": model}}), PARTITION, {"stable": new_profile})
    after.restore(decode_state(encode_state(before.snapshot())))
    assert after.rebaselined["stable"] == (
        "model stable: detector config changed since the state was saved (detectors.psi.bins 10 → 5): every "
        "detector (from the stored reference) restarted")
    assert after.models["stable"].reference == new_profile
    assert all(c.psi.window == 1000 and "psi" not in c.last_statistic for c in after.models["stable"].columns)
    assert feed(after, events[1500:], 1500) == []


# --- through the service: real broker, real Redis, `stream-monitor run` --------------------------------------


def test_the_service_keeps_an_unconfigured_models_state_and_rebaselines_a_changed_window(broker, redis_server,
                                                                                          tmp_path, monitors):
    """An instance without model churn and with psi.window 5000 → 1000 resumes a partition saved by one
    with both models: churn's state (1,500 events and its reference) survives its saves unchanged, the
    stable model's windows restart (one log line, stream_monitor_rebaselined_total) and raise no alert;
    an instance that knows churn again continues it."""
    import urllib.request

    from stream_monitor.demo.localstack import create_topics, free_port

    from ..support import produce, read_topic, unique, wait_for_offsets, write_config
    from ..support import Run

    topic = unique("config-change")
    create_topics(broker.address, {topic: 1})

    def docs(model: str, start: int, count: int) -> list:
        return [(0, model.encode(), orjson.dumps(d), None) for d in generate(model, count, start=start)]

    def model(window: int) -> dict:
        return {"decisions": "partition", "reference": {"events": 1000}, "detectors": {"psi": {"window": window}}}

    both = Run(broker, redis_server, tmp_path, topic, 1, "both", models={"stable": model(5000),
                                                                          "churn": model(5000)})
    ends = produce(broker.address, topic, [r for pair in zip(docs("stable", 0, 1500), docs("churn", 0, 1500))
                                           for r in pair])
    first = both.start(monitors)
    wait_for_offsets(both.store, topic, ends, processes=[first])
    assert first.terminate() == 0
    _, saved = both.store.load(topic, 0)
    assert saved["models"]["churn"]["events"] == 1500

    port = free_port()
    write_config(tmp_path / "only-stable.toml", bootstrap=broker.address, redis_url=redis_server.address,
                 input_topic=topic, alert_topic=both.alert_topic, dead_letter_topic=both.dead_letter_topic,
                 group_id=both.group_id, namespace=both.namespace, models={"stable": model(1000)},
                 service={"checkpoint_interval_events": 500, "checkpoint_interval_seconds": 0.5,
                          "metrics_port": port})
    only_stable = both.__class__.__new__(both.__class__)
    only_stable.__dict__.update(both.__dict__, config=tmp_path / "only-stable.toml", name="only-stable", _count=0)
    stable, churn = docs("stable", 1500, 2500), docs("churn", 1500, 100)
    ends = produce(broker.address, topic, [r for pair in zip(stable, churn) for r in pair] + stable[100:])
    second = only_stable.start(monitors)
    wait_for_offsets(both.store, topic, ends, processes=[second])
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert second.terminate() == 0
    _, state = both.store.load(topic, 0)
    assert state["models"]["churn"] == saved["models"]["churn"]
    assert state["models"]["stable"]["events"] == 1500 + 2500
    log = second.log()
    assert log.count("the state of model churn (1500 events) is kept as it is") == 1, log[-3000:]
    assert log.count("model stable: detector config changed since the state was saved "
                     "(detectors.psi.window 5000 → 1000): PSI, KS, data-quality restarted") == 1, log[-3000:]
    assert 'stream_monitor_rebaselined_total{model="stable"} 1.0' in metrics
    assert both.alerts() == []
    letters = read_topic(broker.address, both.dead_letter_topic, 1)
    assert len(letters) == 100 and all(b"unknown_model" in m.value() for m in letters)

    ends = produce(broker.address, topic, docs("churn", 1600, 200))
    third = both.start(monitors)
    wait_for_offsets(both.store, topic, ends, processes=[third])
    assert third.terminate() == 0
    _, state = both.store.load(topic, 0)
    assert state["models"]["churn"]["events"] == 1700
    assert "kept as it is" not in third.log()
