"""Alert episodes: one ``firing`` per change, one ``resolved`` once it settles.

Level detectors (PSI) fire when a window's value reaches the warning level
and resolve when a window falls below it again. Point detectors (ADWIN,
Page-Hinkley) fire at a detection and resolve after ``resolve_after`` events
without another one; detections while firing are absorbed, never re-announced.

>>> e = Episode(resolve_after=3)
>>> [e.detected(), e.tick(), e.detected(), e.tick(), e.tick(), e.tick(), e.tick()]
[Transition(status='firing', severity='warning'), None, None, None, None, Transition(status='resolved', severity='warning'), None]
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Transition(NamedTuple):
    status: str  # "firing" | "resolved"
    severity: str  # "warning" | "critical"


class Episode:
    def __init__(self, resolve_after: int = 5_000):
        self.resolve_after = resolve_after
        self.firing = False
        self.severity = "warning"
        self._quiet = 0
        self.last_alert_id: str | None = None

    def level(self, value: float, warning: float, critical: float) -> Transition | None:
        """A level detector's new value → the episode's transition, if any."""
        if value >= warning and not self.firing:
            self.firing = True
            self.severity = "critical" if value >= critical else "warning"
            return Transition("firing", self.severity)
        if value < warning and self.firing:
            self.firing = False
            return Transition("resolved", self.severity)
        return None

    def detected(self, severity: str = "warning") -> Transition | None:
        """A point detector signalled a change at this event."""
        self._quiet = 0
        if self.firing:
            return None
        self.firing = True
        self.severity = severity
        return Transition("firing", severity)

    def tick(self) -> Transition | None:
        """One event without a detection; resolves a quiet episode."""
        if not self.firing:
            return None
        self._quiet += 1
        if self._quiet < self.resolve_after:
            return None
        self.firing = False
        self._quiet = 0
        return Transition("resolved", self.severity)

    def snapshot(self) -> dict[str, Any]:
        return {"firing": self.firing, "severity": self.severity, "quiet": self._quiet,
                "last_alert_id": self.last_alert_id}

    def restore(self, state: dict[str, Any]) -> None:
        self.firing = state["firing"]
        self.severity = state["severity"]
        self._quiet = state["quiet"]
        self.last_alert_id = state["last_alert_id"]
