"""A model's stored reference changes (a reload, a rollback: a new version) while its decisions are the
model's: the partitions switch at different offsets, so one model window could hold partials binned against
two references. Each partial carries the tag of the reference it was sketched against; the merge judges
against the one its state names, and at the first bucket of a newer tag drops its open windows (counted),
drops the older tag's partials from there on (counted) and judges against the newer one.

The stream: x ~ N(0, 1) at 100 events/s, then, from event 6500 on, N(2, 1), when a new reference (version 2,
built from N(2, 1)) is stored; partition 0 takes it at the change, partition 1 7.5 s later (in the middle of a bucket).
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from functools import lru_cache

import orjson

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import RawMessage
from stream_monitor.merge import PartitionPartials, initial_state, merge_step, reference_tag, tag_version
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import ReferenceProfile, build_reference
from stream_monitor.synthetic import BASE_TIME_S

MODEL = "m"
BUCKET_MS = 1000
CONFIG = parse_config({"models": {MODEL: {
    "decisions": "model", "reference": {"source": "stored"}, "merge_bucket_seconds": 1.0,
    "merge_lateness_seconds": 1.0, "detectors": {"psi": {"window": 1000}}, "performance": {"enabled": False}}}})
CHANGE = 6500
SWITCH = {0: 6500, 1: 7250}  # the global event index from which each partition holds the new reference


def event(i: int, mean: float, seed: int = 1):
    rng = random.Random(f"{seed}/{i}")
    doc = {"event_id": f"{MODEL}-{seed}-{i}", "model_id": MODEL, "timestamp": round(BASE_TIME_S + i * 0.01, 3),
           "features": {"x": round(rng.gauss(mean, 1.0), 4)}}
    return decode(RawMessage("in", 0, i, orjson.dumps(doc)), frozenset([MODEL]))


@lru_cache(maxsize=None)
def references():
    old = build_reference(MODEL, [event(i, 0.0, seed=7) for i in range(4000)], None, source="stored")
    new = build_reference(MODEL, [event(i, 2.0, seed=8) for i in range(4000)], None, source="stored")
    return dataclasses.replace(old, version=1), dataclasses.replace(new, version=2)


@lru_cache(maxsize=None)
def partials(count: int = 16000):
    """Each partition's closed partials (all of them: it went idle at the end)."""
    old, new = references()
    out = {}
    for p in (0, 1):
        monitor = PartitionMonitor(CONFIG, p, {MODEL: old})
        items = [(i, event(i, 2.0 if i >= CHANGE else 0.0)) for i in range(count)
                 if zlib.crc32(f"{MODEL}-1-{i}".encode()) % 2 == p]
        before = [(offset, e, None) for offset, (i, e) in enumerate(items) if i < SWITCH[p]]
        after = [(offset, e, None) for offset, (i, e) in enumerate(items) if i >= SWITCH[p]]
        assert monitor.process_batch(before) == []
        monitor.models[MODEL].use_reference(new)  # what the service does when it loads version 2
        assert monitor.process_batch(after) == []
        monitor.go_idle()
        out[p] = monitor.merge_marks()[MODEL]["partials"]
    return out


def t0() -> int:
    return int(BASE_TIME_S)


def parts(lo: int | None, hi: int | None, idle: bool):
    """The partitions' partials of buckets lo ≤ b < hi (relative to the first), watermark at hi."""
    out = []
    for p, held in sorted(partials().items()):
        chosen = {b: v for b, v in held.items() if (lo is None or b >= t0() + lo) and (hi is None or b < t0() + hi)}
        mark = None if hi is None else (t0() + hi + 1) * BUCKET_MS
        out.append(PartitionPartials("in", p, mark, idle, chosen))
    return out


def test_a_partition_closes_its_buckets_at_the_switch_and_tags_every_partial():
    old, new = references()
    old_tag, new_tag = reference_tag(old), reference_tag(new)
    assert tag_version(old_tag) == 1 and tag_version(new_tag) == 2 and old_tag != new_tag
    tags = {p: [(b - t0(), v["ref"], v["events"]) for b, v in sorted(held.items())] for p, held in partials().items()}
    # partition 0 switched on a bucket boundary (event 6500: bucket 65)
    assert {tag for b, tag, _ in tags[0] if b < 65} == {old_tag} and {tag for b, tag, _ in tags[0] if b >= 65} == {new_tag}
    # partition 1 in the middle of bucket 72: it closed under the old tag with the events before the switch,
    # and the rest of that second counts in bucket 73 (late: the bucket it would have been in is closed)
    assert {tag for b, tag, _ in tags[1] if b <= 72} == {old_tag} and {tag for b, tag, _ in tags[1] if b > 72} == {new_tag}
    before = sum(1 for i in range(7200, 7250) if zlib.crc32(f"{MODEL}-1-{i}".encode()) % 2 == 1)
    in_73 = sum(1 for i in range(7250, 7400) if zlib.crc32(f"{MODEL}-1-{i}".encode()) % 2 == 1)
    assert [(b, n) for b, _, n in tags[1] if b in (72, 73)] == [(72, before), (73, in_73)]
    assert sum(v["events"] for held in partials().values() for v in held.values()) == 16000


def test_the_merge_switches_at_the_first_newer_tag_and_counts_what_it_drops():
    old, new = references()
    first = merge_step(CONFIG.models[MODEL], old, None, parts(None, 60, False), BUCKET_MS)
    assert first.alerts == [] and first.state["windows"] == 6 and first.state["judged"] == {
        "tag": reference_tag(old), "profile": None}
    # the instance loaded version 2: the merge still judges against version 1 (it kept it) until bucket 65
    second = merge_step(CONFIG.models[MODEL], new, first.state, parts(60, None, True), BUCKET_MS, previous=old)
    # drift against version 1, but from bucket 65 on the events are judged against version 2, which they
    # are drawn like: quiet. Without the tags the window 60–69 would have added counts of both references.
    assert second.alerts == []
    # dropped: the open window (buckets 60–64, 500 events) and partition 1's partials of buckets 65–72
    # (sketched against version 1 until its switch at event 7250)
    stale = [v["events"] for b, v in partials()[1].items() if b - t0() >= 65 and v["ref"] == reference_tag(old)]
    assert dict(second.stale) == {"switches": 1, "windows": 1, "window_events": 500, "partials": 8,
                                  "partial_events": sum(stale)} and len(stale) == 8
    assert second.state["stale"] == dict(second.stale)
    assert second.state["judged"] == {"tag": reference_tag(new), "profile": None}
    assert second.state["windows"] == 6 + 9  # buckets 65… hold 9500 events: nine windows against version 2


def test_a_newer_tag_this_instance_does_not_hold_yet_waits():
    old, new = references()
    first = merge_step(CONFIG.models[MODEL], old, None, parts(None, 60, False), BUCKET_MS)
    waiting = merge_step(CONFIG.models[MODEL], old, first.state, parts(60, None, True), BUCKET_MS)
    assert waiting.state["last_bucket"] == t0() + 64 and all(b < t0() + 65 for v in waiting.consumed.values()
                                                              for b in v)
    assert waiting.alerts == [] and not waiting.stale
    later = merge_step(CONFIG.models[MODEL], new, waiting.state, parts(65, None, True), BUCKET_MS, previous=old)
    direct = merge_step(CONFIG.models[MODEL], new, first.state, parts(60, None, True), BUCKET_MS, previous=old)
    assert later.state["windows"] == direct.state["windows"] and dict(later.stale) == dict(direct.stale)
    assert later.state["episodes"] == direct.state["episodes"]


def test_after_a_restart_the_state_keeps_the_reference_it_judges_against():
    old, new = references()
    first = merge_step(CONFIG.models[MODEL], old, None, parts(None, 60, False), BUCKET_MS)
    # this instance holds version 2 and version 1 before it: the step merges buckets 60–64 against version 1
    step = merge_step(CONFIG.models[MODEL], new, first.state, parts(60, 65, False), BUCKET_MS, previous=old)
    assert step.state["judged"]["tag"] == reference_tag(old) and step.state["judged"]["profile"] == old.to_dict()
    saved = orjson.loads(orjson.dumps(step.state))
    # another instance (started since: it holds only version 2) goes on from the saved state
    restarted = merge_step(CONFIG.models[MODEL], new, saved, parts(65, None, True), BUCKET_MS)
    direct = merge_step(CONFIG.models[MODEL], new, first.state, parts(60, None, True), BUCKET_MS, previous=old)
    assert restarted.state["windows"] == direct.state["windows"] and restarted.alerts == direct.alerts == []
    assert restarted.state["stale"] == direct.state["stale"]


def test_state_and_partials_of_the_previous_version_still_merge():
    old, _ = references()
    untagged = [p._replace(partials={b: {k: v for k, v in part.items() if k != "ref"}
                                     for b, part in p.partials.items()}) for p in parts(None, 60, False)]
    state = {k: v for k, v in initial_state().items()}  # no "judged": saved before the tags
    plain = merge_step(CONFIG.models[MODEL], old, state, untagged, BUCKET_MS)
    tagged = merge_step(CONFIG.models[MODEL], old, None, parts(None, 60, False), BUCKET_MS)
    assert plain.state == tagged.state and plain.alerts == tagged.alerts == []


def test_a_partition_restored_after_a_newer_version_was_stored_switches_to_it():
    old, new = references()
    monitor = PartitionMonitor(CONFIG, 0, {MODEL: old})
    monitor.process_batch([(i, event(i, 0.0), None) for i in range(250)])  # buckets 0–2, 2 still open
    state = monitor.snapshot()
    again = PartitionMonitor(CONFIG, 0, {MODEL: new})  # the service now holds version 2
    again.restore(state)
    model = again.models[MODEL]
    assert model.reference is new and model.sketch.tag == reference_tag(new)
    # the restored buckets closed under version 1's tag; the next events count under version 2's
    again.process_batch([(250 + i, event(250 + i, 2.0), None) for i in range(100)])
    again.go_idle()
    held = again.merge_marks()[MODEL]["partials"]
    assert [(b - t0(), v["ref"][:1], v["events"]) for b, v in sorted(held.items())] == [
        (0, "1", 100), (1, "1", 100), (2, "1", 50), (3, "2", 100)]
    same = PartitionMonitor(CONFIG, 0, {MODEL: old})  # the same version: restored as it was
    same.restore(state)
    assert same.models[MODEL].reference.version == 1


def test_a_reference_loaded_from_redis_has_the_tag_of_the_one_built():
    for profile in references():  # what another instance loads from Redis: another object, the same tag
        loaded = ReferenceProfile.from_dict(orjson.loads(orjson.dumps(profile.to_dict())))
        assert loaded is not profile and reference_tag(loaded) == reference_tag(profile)
