"""A column's ADWIN and Page-Hinkley episodes end when the column is back within its reference.

Judged by the column's own windows (PSI and KS): a firing point episode resolves at the first window
close that lies wholly after the detector's last detection and whose statistics are below
``hysteresis`` × their warning levels — never because the detector went quiet on a new level.
Seeded streams, pinned positions; pure (no broker, no Redis).
"""

from __future__ import annotations

import numpy as np
import pytest

from stream_monitor.config import parse_config
from stream_monitor.detectors.episode import Episode, Transition
from stream_monitor.partition import ColumnMonitor
from stream_monitor.reference import NumericReference

SHIFT_AT = 20_000  # the defaults: reference of 5,000 values, windows of 5,000 (closing at 4999, 9999, …)
POINT = ("adwin", "page_hinkley")


def column() -> ColumnMonitor:
    model = parse_config({"models": {"m": {}}}).models["m"]
    reference = NumericReference.build(np.random.default_rng(0).normal(0.0, 1.0, 5000).tolist())
    return ColumnMonitor(model, "feature", "x", reference)


def stream(seed: int, length: int, until: int | None = None) -> np.ndarray:
    values = np.random.default_rng(seed).normal(0.0, 1.0, length)
    values[SHIFT_AT:until] += 1.0
    return values


def feed(col: ColumnMonitor, values: np.ndarray, batch: int = 1000, start: int = 0) -> list:
    out = []
    for first in range(0, len(values), batch):
        chunk = values[first:first + batch]
        offsets = range(start + first, start + first + len(chunk))
        out.extend(a for _, _, a in col.update_batch(chunk, offsets, 0, [None] * len(chunk)))
    return out


def point_keys(alerts) -> list[tuple[int, str, str]]:
    return [(a.offset, a.detector, a.status) for a in alerts if a.detector in POINT]


def test_a_persistent_shift_fires_once_and_never_resolves():
    """1σ from 20,000 to the end (40,000 values on the new level): one firing each, no resolved — the
    old rule resolved each 5,000 quiet values after its detection while the shift went on."""
    alerts = feed(column(), stream(1, 60_000))
    assert point_keys(alerts) == [(20036, "page_hinkley", "firing"), (20095, "adwin", "firing")]
    assert [a.status for a in alerts].count("resolved") == 0


def test_a_shift_that_goes_back_resolves_once_after_the_return_and_does_not_fire_again():
    """1σ for 4,000 values, then back for 36,000: one firing and one resolved each. The detectors see the
    return too (inside the open episode: absorbed); the episodes resolve at 29999, the first window close
    wholly after the return, with the message saying what the windows found."""
    col = column()
    alerts = feed(col, stream(10, 60_000, until=SHIFT_AT + 4000))
    assert point_keys(alerts) == [(20047, "page_hinkley", "firing"), (20127, "adwin", "firing"),
                                  (29999, "adwin", "resolved"), (29999, "page_hinkley", "resolved")]
    resolved = [a for a in alerts if a.detector == "adwin" and a.status == "resolved"][0]
    back = resolved.current["back_within"]
    assert back["events"] == 5000 and set(back) == {"events", "psi", "ks"}
    assert back["psi"] < 0.8 * col.detectors["psi"].threshold and back["ks"] < 0.8 * col.detectors["ks"].threshold
    assert resolved.message.startswith("adwin on m.x: back within its reference over the last 5000 values (PSI ")
    assert not any(e.firing for e in col.episodes.values())


@pytest.mark.parametrize("seed", [3, 4])
def test_a_stationary_stream_raises_nothing(seed):
    assert feed(column(), stream(seed, 100_000, until=0)) == []


def test_the_end_does_not_depend_on_the_batch_cut_or_a_restore():
    """Batches of 7, 1,000 and 4,999 values, and a snapshot → restore inside the open episodes (26,000):
    the same alerts."""
    values = stream(10, 40_000, until=SHIFT_AT + 4000)
    expected = feed(column(), values)
    assert len(point_keys(expected)) == 4
    for batch in (7, 4999):
        assert feed(column(), values, batch=batch) == expected
    first = column()
    before = feed(first, values[:26_000])
    second = column()
    second.restore(first.snapshot())
    assert before + feed(second, values[26_000:], start=26_000) == expected


def test_a_detection_inside_the_window_postpones_the_end():
    """Episode.settled: a window back within the reference ends the episode only when the detector has
    not detected during it (span values or more since the last detection)."""
    episode = Episode(resolve_after=None)
    assert episode.detected() == Transition("firing", "warning")
    assert episode.ticks(10_000) is None  # quiet alone never resolves it
    assert episode.detected() is None  # absorbed, and the quiet count starts again
    assert episode.ticks(99) is None
    assert episode.settled(100, True) is None  # 99 values since the detection: the window is not wholly after it
    assert episode.tick() is None
    assert episode.settled(100, False) is None  # wholly after it, but the windows are not back
    assert episode.ticks(100) is None
    assert episode.settled(100, True) == Transition("resolved", "warning")
    assert episode.settled(100, True) is None  # not firing: nothing to end
