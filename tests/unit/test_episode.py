"""Episode's bulk stepping is the same as stepping one value at a time (pure, seeded)."""

from __future__ import annotations

import random

import pytest

from stream_monitor.detectors import Episode


def _episode(rng: random.Random) -> Episode:
    """An episode in a random state that one value at a time can reach: quiet < resolve_after, and a
    cooldown only while not firing."""
    e = Episode(resolve_after=rng.randint(1, 30), cooldown=rng.randint(0, 30), hysteresis=0.8)
    e.firing = rng.random() < 0.5
    e.severity = rng.choice(["warning", "critical"])
    state = e.snapshot()
    state["quiet"] = rng.randint(0, e.resolve_after - 1) if e.firing else 0
    state["cooling"] = 0 if e.firing else rng.randint(0, 40)
    e.restore(state)
    return e


@pytest.mark.parametrize("seed", range(200))
def test_ticks_is_tick_repeated(seed):
    rng = random.Random(seed)
    one, bulk = _episode(rng), None
    bulk = Episode(one.resolve_after, one.cooldown, one.hysteresis)
    bulk.restore(one.snapshot())
    count = rng.randint(0, 60)
    expected = None
    for i in range(count):
        transition = one.tick()
        if transition is not None:
            assert expected is None  # at most one resolution per quiet run
            expected = (i, transition)
    assert bulk.ticks(count) == expected
    assert bulk.snapshot() == one.snapshot()


@pytest.mark.parametrize("seed", range(50))
def test_quiet_ticks_is_quiet_tick_repeated(seed):
    rng = random.Random(seed)
    one = _episode(rng)
    bulk = Episode(one.resolve_after, one.cooldown, one.hysteresis)
    bulk.restore(one.snapshot())
    count = rng.randint(0, 60)
    for _ in range(count):
        one.quiet_tick()
    bulk.quiet_ticks(count)
    assert bulk.snapshot() == one.snapshot()
