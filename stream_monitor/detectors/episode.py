"""Alert episodes: one ``firing`` per change, one ``resolved`` once it settles.

Level detectors (PSI, KS, data quality, p95) fire when a window reaches the
warning level and resolve only when a window falls below ``hysteresis`` ×
warning (so a value hovering at the line does not flap). Point detectors
(ADWIN, Page-Hinkley) fire at a detection and resolve after ``resolve_after``
values without another one; detections while firing are absorbed, never
re-announced. After a resolution, ``cooldown`` values must pass before the
same detector may fire again.

>>> e = Episode(resolve_after=3, cooldown=2)
>>> [e.detected(), e.tick(), e.detected(), e.tick(), e.tick(), e.tick(), e.detected(), e.tick(), e.tick(), e.detected()]
[Transition(status='firing', severity='warning'), None, None, None, None, Transition(status='resolved', severity='warning'), None, None, None, Transition(status='firing', severity='warning')]
>>> e = Episode(hysteresis=0.8)
>>> [e.level(v, 0.1, 0.25) for v in (0.3, 0.09, 0.07)]
[Transition(status='firing', severity='critical'), None, Transition(status='resolved', severity='critical')]
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Transition(NamedTuple):
    status: str  # "firing" | "resolved"
    severity: str  # "warning" | "critical"


class Episode:
    def __init__(self, resolve_after: int = 5_000, cooldown: int = 0, hysteresis: float = 0.8):
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
        if self._quiet < self.resolve_after:
            return None
        return self._resolve()

    def quiet_tick(self) -> None:
        """One value for a level detector: only the cooldown moves."""
        if self._cooling:
            self._cooling -= 1

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
