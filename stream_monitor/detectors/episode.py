"""Alert episodes: one ``firing`` per change, one ``resolved`` once it settles.

Level detectors (PSI, KS, data quality, p95) fire when a window reaches the
warning level and resolve only when a window falls below ``hysteresis`` ×
warning (so a value hovering at the line does not flap). Limit detectors
(a performance metric's floor or ceiling) fire while the metric is past its
limit and resolve as soon as it is back within it. Point detectors
(ADWIN, Page-Hinkley) fire at a detection; detections while firing are
absorbed, never re-announced. A point episode ends in one of two ways:

- ``resolve_after=None`` (a column's ADWIN and Page-Hinkley): only when the
  column is back within its reference, judged by the column's window
  statistics (:meth:`Episode.settled`, called where its windows close): the
  episode resolves at the first window close that lies wholly after its last
  detection and whose statistics are all below their resolve levels. A point
  detector adapts to a new level within a few thousand values and goes quiet;
  quiet is not the same as back to normal, so quiet alone never resolves it.
- an integer (the error stream of performance, which has no window of its
  own): after ``resolve_after`` values without another detection.

After a resolution, ``cooldown`` values must pass before the same detector
may fire again.

>>> e = Episode(resolve_after=3, cooldown=2)
>>> [e.detected(), e.tick(), e.detected(), e.tick(), e.tick(), e.tick(), e.detected(), e.tick(), e.tick(), e.detected()]
[Transition(status='firing', severity='warning'), None, None, None, None, Transition(status='resolved', severity='warning'), None, None, None, Transition(status='firing', severity='warning')]
>>> e = Episode(hysteresis=0.8)
>>> [e.level(v, 0.1, 0.25) for v in (0.3, 0.09, 0.07)]
[Transition(status='firing', severity='critical'), None, Transition(status='resolved', severity='critical')]

Judged by the windows: a window of 4 values back within the reference resolves only once it lies wholly
after the last detection.

>>> e = Episode(resolve_after=None)
>>> e.detected(), e.ticks(2), e.settled(4, True), e.ticks(2), e.settled(4, False), e.settled(4, True)
(Transition(status='firing', severity='warning'), None, None, None, None, Transition(status='resolved', severity='warning'))
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Transition(NamedTuple):
    status: str  # "firing" | "resolved"
    severity: str  # "warning" | "critical"


class Episode:
    def __init__(self, resolve_after: int | None = 5_000, cooldown: int = 0, hysteresis: float = 0.8):
        self.resolve_after = resolve_after
        self.cooldown = cooldown
        self.hysteresis = hysteresis
        self.firing = False
        self.severity = "warning"
        self._quiet = 0
        self._cooling = 0
        self.last_alert_id: str | None = None

    def level(self, value: float, warning: float, critical: float) -> Transition | None:
        """A level detector's new value → the episode's transition, if any."""
        if not self.firing:
            if value >= warning and self._cooling == 0:
                self.firing = True
                self.severity = "critical" if value >= critical else "warning"
                return Transition("firing", self.severity)
            return None
        if value < warning * self.hysteresis:
            return self._resolve()
        return None

    def limit(self, breached: bool, severity: str = "critical") -> Transition | None:
        """A limit detector's new reading: past its limit (``breached``) fires, unless the episode is
        firing or cooling down; back within it resolves a firing episode at once (no hysteresis).

        >>> e = Episode(cooldown=1)
        >>> [t and t.status for t in (e.limit(True), e.limit(True), e.limit(False), e.limit(True))]
        ['firing', None, 'resolved', None]
        """
        if not self.firing:
            return self.detected(severity) if breached else None
        return None if breached else self._resolve()

    def detected(self, severity: str = "warning") -> Transition | None:
        """A point detector signalled a change at this value."""
        self._quiet = 0
        if self.firing or self._cooling:
            return None
        self.firing = True
        self.severity = severity
        return Transition("firing", severity)

    def tick(self) -> Transition | None:
        """One value without a detection: counts down the cooldown, resolves a quiet point episode."""
        if self._cooling:
            self._cooling -= 1
        if not self.firing:
            return None
        self._quiet += 1
        if self.resolve_after is None or self._quiet < self.resolve_after:
            return None
        return self._resolve()

    def settled(self, span: int, within: bool) -> Transition | None:
        """The column's windows of ``span`` values closed at this value (after its :meth:`tick` or
        :meth:`detected`); ``within``: their statistics are all below their resolve levels. A firing
        episode whose last detection came before the window began (``span`` values or more ago)
        resolves: the column is back within its reference."""
        if self.firing and within and self._quiet >= span:
            return self._resolve()
        return None

    def quiet_tick(self) -> None:
        """One value for a level detector: only the cooldown moves."""
        if self._cooling:
            self._cooling -= 1

    def quiet_ticks(self, count: int) -> None:
        """``count`` values for a level detector with no window closing: :meth:`quiet_tick` ``count`` times."""
        self._cooling = max(0, self._cooling - count)

    def ticks(self, count: int) -> tuple[int, Transition] | None:
        """``count`` values without a detection, in one step: :meth:`tick` ``count`` times. A firing
        episode that has been quiet for ``resolve_after`` values by then resolves: (the index of that
        value within the ``count``, the transition); else ``None``.

        >>> e = Episode(resolve_after=3, cooldown=5)
        >>> e.detected(), e.ticks(10), e.snapshot()["cooling"]
        (Transition(status='firing', severity='warning'), (2, Transition(status='resolved', severity='warning')), 0)
        """
        if self.firing and self.resolve_after is not None and self.resolve_after - self._quiet <= count:
            at = self.resolve_after - self._quiet - 1
            transition = self._resolve()
            self._cooling = max(0, self._cooling - (count - at - 1))
            return at, transition
        if self.firing:
            self._quiet += count
        else:
            self._cooling = max(0, self._cooling - count)
        return None

    def _resolve(self) -> Transition:
        self.firing = False
        self._quiet = 0
        self._cooling = self.cooldown
        return Transition("resolved", self.severity)

    def snapshot(self) -> dict[str, Any]:
        return {"firing": self.firing, "severity": self.severity, "quiet": self._quiet, "cooling": self._cooling,
                "last_alert_id": self.last_alert_id}

    def restore(self, state: dict[str, Any]) -> None:
        self.firing = state["firing"]
        self.severity = state["severity"]
        self._quiet = state["quiet"]
        self._cooling = state["cooling"]
        self.last_alert_id = state["last_alert_id"]
