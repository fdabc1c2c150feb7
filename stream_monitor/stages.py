"""Where the time goes: seconds per stage of the loop, cheap enough to stay on in production.

The service adds its stages (consume, decode, join, detect, produce, checkpoint,
and merge for models with model-level decisions); the detector engine adds one
entry per detector kind inside ``detect`` (and ``sketch``: a model-level
model's partial sketches). The
totals are exported as ``stream_monitor_stage_seconds_total`` and read by
``bench/throughput.py``.

>>> clock = StageClock()
>>> started = clock.add("decode", clock.now() - 0.5)
>>> round(clock.seconds["decode"], 1)
0.5
"""

from __future__ import annotations

from collections import defaultdict
from time import perf_counter


class StageClock:
    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._exported: dict[str, float] = {}

    now = staticmethod(perf_counter)

    def add(self, stage: str, started: float) -> float:
        """Charge the time since ``started`` to ``stage``; returns now (the next stage's start)."""
        now = perf_counter()
        self.seconds[stage] += now - started
        return now

    def since_export(self) -> dict[str, float]:
        """Seconds per stage added since the previous call (for a Prometheus counter)."""
        out = {}
        for stage, total in self.seconds.items():
            delta = total - self._exported.get(stage, 0.0)
            if delta > 0:
                out[stage] = delta
                self._exported[stage] = total
        return out


CLOCK = StageClock()  # the process's clock: one service per process
