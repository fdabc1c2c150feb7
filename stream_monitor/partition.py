"""One partition's processing: decoded events → detector updates → alerts.

Pure: no Kafka, no Redis. ``run`` and ``replay`` both drive this class, which
is why they raise the same alerts for the same events. All state lives here
and round-trips through ``snapshot()`` / ``restore()``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .config import Config, ModelConfig
from .detectors import AdwinDetector, Episode, PageHinkleyDetector, PsiWindow, Transition
from .errors import ReferenceProfileError, StateError
from .events import Alert, InferenceEvent, LabelEvent
from .reference import OTHER, CategoricalReference, ColumnReference, NumericReference, ReferenceProfile, \
    build_reference, is_number

STATE_FORMAT = 1


class ColumnMonitor:
    """Detectors of one column (a feature, the score or the predicted label) of one model."""

    def __init__(self, model: ModelConfig, signal: str, name: str, reference: ColumnReference):
        self.model_id = model.model_id
        self.signal = signal
        self.name = name
        self.reference = reference
        det = model.detectors
        self.psi_config = det.psi
        self.psi = PsiWindow(reference.proportions, det.psi.window, det.psi.epsilon)
        self.adwin: AdwinDetector | None = None
        self.page_hinkley: PageHinkleyDetector | None = None
        self.episodes: dict[str, Episode] = {"psi": Episode(det.resolve_after)}
        if isinstance(reference, NumericReference):
            if det.adwin.enabled:
                a = det.adwin
                self.adwin = AdwinDetector(a.delta, a.clock, a.max_buckets, a.min_window_length, a.grace_period)
                self.episodes["adwin"] = Episode(det.resolve_after)
            if det.page_hinkley.enabled:
                p = det.page_hinkley
                self.page_hinkley = PageHinkleyDetector(p.min_instances, p.delta, p.threshold, p.alpha)
                self.episodes["page_hinkley"] = Episode(det.resolve_after)
        self.last_statistic: dict[str, float] = {}

    @property
    def label(self) -> str:
        return f"{self.model_id}.{self.name}" if self.signal == "feature" else f"{self.model_id}.prediction.{self.name}"

    def update(self, value: Any, offset: int, partition: int, event_time_ms: int | None) -> list[Alert]:
        """Feed one value (ignored when missing or of the wrong kind)."""
        ref = self.reference
        if value is None:
            return []
        if isinstance(ref, NumericReference):
            if not is_number(value) or not math.isfinite(value):
                return []
        alerts: list[Alert] = []
        context = (offset, partition, event_time_ms)
        window_psi = self.psi.add(ref.bin_index(value))
        if window_psi is not None:
            self.last_statistic["psi"] = window_psi
            cfg = self.psi_config
            transition = self.episodes["psi"].level(window_psi, cfg.warning, cfg.critical)
            if transition is not None:
                alerts.append(self._psi_alert(transition, window_psi, *context))
        if isinstance(ref, NumericReference):
            z = ref.standardise(float(value))
            if self.adwin is not None:
                detected = self.adwin.update(z)
                self.last_statistic["adwin"] = self.adwin.window_mean
                alerts.extend(self._point("adwin", detected, self.adwin.window_mean, self.adwin.delta, *context))
            if self.page_hinkley is not None:
                detected = self.page_hinkley.update(z)  # river resets at the next update
                self.last_statistic["page_hinkley"] = self.page_hinkley.statistic
                alerts.extend(self._point("page_hinkley", detected, self.page_hinkley.statistic,
                                          self.page_hinkley.threshold, *context))
        return alerts

    # --- alerts -------------------------------------------------------------------------

    def _point(self, detector: str, detected: bool, statistic: float, threshold: float,
               offset: int, partition: int, event_time_ms: int | None) -> list[Alert]:
        episode = self.episodes[detector]
        transition = episode.detected() if detected else episode.tick()
        if transition is None:
            return []
        ref = self.reference
        assert isinstance(ref, NumericReference)
        reference = {"mean": ref.mean, "std": ref.std}
        if detector == "adwin":
            current = {"window_mean": ref.mean + statistic * ref.std, "window_mean_z": statistic,
                       "window": self.adwin.window_width if self.adwin else 0}
            what = (f"ADWIN saw the mean of {self.label} move to {current['window_mean']:.4g} "
                    f"({statistic:+.2f} reference std) over the last {current['window']} values")
        else:
            current = {"cumulative_deviation": statistic,
                       "running_mean": ref.mean + (self.page_hinkley.running_mean if self.page_hinkley else 0) * ref.std}
            what = (f"Page-Hinkley saw a mean shift in {self.label}: cumulative deviation "
                    f"{statistic:.1f} > {threshold:g}")
        if transition.status == "resolved":
            what = f"{detector} on {self.label}: no change for {episode.resolve_after} values, resolved"
        return [self._alert(episode, transition, detector, statistic, threshold, reference, current,
                            offset, partition, event_time_ms, what)]

    def _psi_alert(self, transition: Transition, value: float, offset: int, partition: int,
                   event_time_ms: int | None) -> Alert:
        cfg = self.psi_config
        ref = self.reference
        counts = self.psi.last_counts or []
        total = sum(counts) or 1
        if isinstance(ref, NumericReference):
            reference = {"edges": ref.edges, "proportions": ref.proportions}
        else:
            reference = {"categories": ref.categories + [OTHER], "proportions": ref.proportions}
        current = {"proportions": [c / total for c in counts], "events": total}
        threshold = cfg.critical if transition.severity == "critical" else cfg.warning
        if transition.status == "firing":
            what = (f"PSI of {self.label} is {value:.3g} ({transition.severity} ≥ {threshold:g}) "
                    f"over the last {total} events")
        else:
            what = f"PSI of {self.label} is back to {value:.3g} (< warning {cfg.warning:g}) over the last {total} events"
        return self._alert(self.episodes["psi"], transition, "psi", value, threshold, reference, current,
                           offset, partition, event_time_ms, what)

    def _alert(self, episode: Episode, transition: Transition, detector: str, statistic: float,
               threshold: float, reference: dict, current: dict, offset: int, partition: int,
               event_time_ms: int | None, message: str) -> Alert:
        alert = Alert(status=transition.status, severity=transition.severity, model_id=self.model_id,
                      signal=self.signal, name=self.name, detector=detector, statistic=float(statistic),
                      threshold=float(threshold), reference=reference, current=current, partition=partition,
                      offset=offset, event_time_ms=event_time_ms, message=message)
        episode.last_alert_id = alert.alert_id
        return alert

    # --- state ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"psi": self.psi.snapshot(),
                "adwin": None if self.adwin is None else self.adwin.snapshot(),
                "page_hinkley": None if self.page_hinkley is None else self.page_hinkley.snapshot(),
                "episodes": {k: e.snapshot() for k, e in self.episodes.items()},
                "last_statistic": dict(self.last_statistic)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.psi.restore(state["psi"])
        if self.adwin is not None and state["adwin"] is not None:
            self.adwin.restore(state["adwin"])
        if self.page_hinkley is not None and state["page_hinkley"] is not None:
            self.page_hinkley.restore(state["page_hinkley"])
        for key, episode_state in state["episodes"].items():
            if key in self.episodes:
                self.episodes[key].restore(episode_state)
        self.last_statistic = dict(state["last_statistic"])

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for detector, episode in self.episodes.items():
            out.append({"signal": self.signal, "name": self.name, "detector": detector,
                        "statistic": self.last_statistic.get(detector), "firing": episode.firing,
                        "severity": episode.severity if episode.firing else None,
                        "last_alert_id": episode.last_alert_id})
        return out


class ModelMonitor:
    """All columns of one model in one partition, plus its warm-up."""

    def __init__(self, config: ModelConfig, reference: ReferenceProfile | None):
        self.config = config
        self.reference: ReferenceProfile | None = None
        self.columns: list[ColumnMonitor] = []
        self.warmup: list[InferenceEvent] = []
        self.events = 0
        self.labels = 0
        if reference is not None:
            self._use(reference)

    def _use(self, reference: ReferenceProfile) -> None:
        self.reference = reference
        self.columns = [ColumnMonitor(self.config, signal, name, ref) for signal, name, ref in reference.columns()]
        self.warmup = []

    def process(self, event: InferenceEvent, offset: int, partition: int) -> list[Alert]:
        self.events += 1
        if self.reference is None:
            self.warmup.append(event)
            if len(self.warmup) >= self.config.reference.events:
                psi = self.config.detectors.psi
                self._use(build_reference(self.config.model_id, self.warmup, self.config.features,
                                          psi.bins, psi.top_k, source="warmup"))
            return []
        alerts: list[Alert] = []
        for column in self.columns:
            if column.signal == "feature":
                value = event.features.get(column.name)
            elif column.name == "score":
                value = event.score
            else:
                value = event.predicted_label
            alerts.extend(column.update(value, offset, partition, event.timestamp_ms))
        return alerts

    def snapshot(self) -> dict[str, Any]:
        return {"events": self.events, "labels": self.labels,
                "reference": None if self.reference is None else self.reference.to_dict(),
                "warmup": [_event_tuple(e) for e in self.warmup],
                "columns": {f"{c.signal}:{c.name}": c.snapshot() for c in self.columns}}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.events = state["events"]
        self.labels = state["labels"]
        if state["reference"] is not None:
            self._use(ReferenceProfile.from_dict(state["reference"]))
            for column in self.columns:
                saved = state["columns"].get(f"{column.signal}:{column.name}")
                if saved is not None:
                    column.restore(saved)
        else:
            self.reference = None
            self.columns = []
            self.warmup = [InferenceEvent(*t) for t in state["warmup"]]

    def summary(self) -> dict[str, Any]:
        return {"events": self.events, "labels": self.labels,
                "reference": None if self.reference is None else
                {"source": self.reference.source, "version": self.reference.version,
                 "events": self.reference.events},
                "warmup": len(self.warmup),
                "detectors": [row for c in self.columns for row in c.summary()]}


def _event_tuple(e: InferenceEvent) -> tuple:
    return (e.event_id, e.model_id, e.timestamp_ms, dict(e.features), e.score, e.predicted_label, e.latency_ms)


class PartitionMonitor:
    """Every model's monitors for one input partition, and the next offset to read."""

    def __init__(self, config: Config, partition: int, stored_references: Mapping[str, ReferenceProfile]):
        self.config = config
        self.partition = partition
        self.stored_references = stored_references
        self.models: dict[str, ModelMonitor] = {}
        self.next_offset: int | None = None
        self.dead_letters = 0

    def model(self, model_id: str) -> ModelMonitor:
        monitor = self.models.get(model_id)
        if monitor is None:
            model_config = self.config.models[model_id]
            reference = None
            if model_config.reference.source == "stored":
                reference = self.stored_references.get(model_id)
                if reference is None:
                    raise ReferenceProfileError(f"model {model_id!r} uses a stored reference and none is stored: "
                                                f"run `stream-monitor reference build --model {model_id}`")
            monitor = self.models[model_id] = ModelMonitor(model_config, reference)
        return monitor

    def process(self, event: InferenceEvent | LabelEvent, offset: int) -> list[Alert]:
        """Process the event at ``offset``; the alerts it raises, in a deterministic order."""
        self.next_offset = offset + 1
        monitor = self.model(event.model_id)
        if isinstance(event, LabelEvent):
            monitor.labels += 1  # the label join and performance monitors come with issue #4
            return []
        return monitor.process(event, offset, self.partition)

    def skip(self, offset: int) -> None:
        """A message at ``offset`` was dead-lettered: count it and move past it."""
        self.next_offset = offset + 1
        self.dead_letters += 1

    def snapshot(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "partition": self.partition, "next_offset": self.next_offset,
                "dead_letters": self.dead_letters,
                "models": {m: monitor.snapshot() for m, monitor in sorted(self.models.items())}}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise StateError(f"unknown state format {state.get('format')!r}")
        self.next_offset = state["next_offset"]
        self.dead_letters = state["dead_letters"]
        self.models = {}
        for model_id, model_state in state["models"].items():
            if model_id in self.config.models:
                self.model(model_id).restore(model_state)

    def summary(self) -> dict[str, Any]:
        return {"partition": self.partition, "next_offset": self.next_offset, "dead_letters": self.dead_letters,
                "models": {m: monitor.summary() for m, monitor in sorted(self.models.items())}}
