"""Segments: a model's traffic cut by the values of some feature columns (``[models.<id>.segments]``).

Pure: no Kafka, no Redis. An event's *segment* is the tuple of its values of the segment columns (a
missing or null value is ``None``, a segment value like any other); :func:`segment_of` reads it. The
reference fixes which segments get detectors of their own: its warm-up keeps one summary per value
(:class:`SegmentWarmup`, at most :func:`candidate_cap` of them; later values count with the rest), and
:meth:`SegmentWarmup.build` takes the ``top_k`` most frequent values with at least ``min_events``
reference events (ties by value) and folds every other into one rest segment (:data:`REST`). Each
segment's profile is the reference built from its own events, with the model's column kinds. At run
time :class:`Segments` sends each event to its segment's index (a value the reference did not rank
goes to the rest), so a model never has more than ``top_k`` + 1 segments.

>>> segment_of({"country": "DE", "device": None}, ("country", "device"))
('DE', None)
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

from .reference import (ColumnReference, Limits, NumericReference, ReferenceProfile,
                        SegmentReferences, WarmupSummary, category_key)

REST = "__rest__"  # the segment of every value the reference did not rank in its top_k
MAX_REMEMBERED = 10_000  # raw values whose segment a run remembers (more are looked up each time)


def segment_of(features: Mapping[str, Any], columns: Sequence[str]) -> tuple[str | None, ...]:
    """An event's segment: its category of each column's value (``None``: missing or null)."""
    return tuple(None if (value := features.get(column)) is None else category_key(value) for column in columns)


def segment_object(columns: Sequence[str], values: Sequence[str | None] | None) -> dict[str, str | None]:
    """The segment as alerts carry it: column → value (``values`` ``None``: the rest, every column
    :data:`REST`)."""
    return {column: REST if values is None else value for column, value in zip(columns, values or columns)}


def candidate_cap(top_k: int) -> int:
    """How many distinct values a warm-up keeps a summary of (the first to appear); later ones count
    with the rest."""
    return max(4 * top_k, 32)


class SegmentWarmup:
    """The warm-up's per-segment summaries: one :class:`~stream_monitor.reference.WarmupSummary` per
    value among the first :func:`candidate_cap` to appear, and one for the values after those. Each
    event is in exactly one of them, so together they hold as many values as the model's own
    warm-up."""

    def __init__(self, columns: Sequence[str], top_k: int, min_events: int,
                 feature_kinds: Mapping[str, str] | None, limits: Limits = Limits()):
        self.columns = tuple(columns)
        self.top_k = top_k
        self.min_events = min_events
        self.feature_kinds = feature_kinds
        self.limits = limits
        self.candidates: dict[tuple[str | None, ...], WarmupSummary] = {}
        self.overflow = WarmupSummary(feature_kinds, limits)

    def add(self, event: Any) -> None:
        """One inference event of the warm-up (in the order the model's own warm-up sees them)."""
        values = segment_of(event.features, self.columns)
        summary = self.candidates.get(values)
        if summary is None:
            if len(self.candidates) < candidate_cap(self.top_k):
                summary = self.candidates[values] = WarmupSummary(self.feature_kinds, self.limits)
            else:
                summary = self.overflow
        summary.add(event)

    def build(self, model: ReferenceProfile, bins: int, top_categories: int) -> SegmentReferences:
        """The per-segment profiles beside the model's reference ``model``: the ``top_k`` values by
        reference events (ties by value) with at least ``min_events``, and the rest."""
        ranked = sorted(self.candidates.items(), key=lambda item: (-item[1].events, _order(item[0])))
        top = [(values, summary) for values, summary in ranked
               if summary.events >= self.min_events and REST not in values][:self.top_k]
        chosen = {values for values, _ in top}
        rest = WarmupSummary(self.feature_kinds, self.limits)
        for values, summary in ranked:
            if values not in chosen:
                rest.absorb(summary)
        rest.absorb(self.overflow)
        return SegmentReferences(
            columns=self.columns, top_k=self.top_k, min_events=self.min_events,
            top=tuple((values, profile_like(model, summary, bins, top_categories)) for values, summary in top),
            rest=profile_like(model, rest, bins, top_categories) if rest.events else None)

    def snapshot(self) -> dict[str, Any]:
        return {"candidates": [[list(values), summary.snapshot()] for values, summary in self.candidates.items()],
                "overflow": self.overflow.snapshot()}

    def to_data(self) -> dict[str, Any]:
        """The summaries as JSON-safe data (what a model-level warm-up's bucket partial carries), without
        their joint and drivers' samples (a segment's profile has neither: :func:`profile_like`)."""
        def lean(summary: WarmupSummary) -> dict[str, Any]:
            return {**summary.to_data(), "joint": None, "joint_rows": []}

        return {"candidates": [[list(values), lean(summary)] for values, summary in self.candidates.items()],
                "overflow": lean(self.overflow)}

    def restore_data(self, data: Mapping[str, Any]) -> "SegmentWarmup":
        """Continue from :meth:`to_data`'s data (taken with the same settings); returns itself."""
        self.candidates = {tuple(values): WarmupSummary.from_data(saved, self.feature_kinds, self.limits)
                           for values, saved in data["candidates"]}
        self.overflow = WarmupSummary.from_data(data["overflow"], self.feature_kinds, self.limits)
        return self

    def absorb(self, other: "SegmentWarmup") -> None:
        """Add ``other``'s summaries after this one's, value by value (a model-level warm-up: the partitions'
        bucket summaries in bucket order). Every value ``other`` kept a summary of keeps one here (no cap:
        each bucket's summaries are capped already), so the per-value counts are exact sums whatever the
        partitioning, as long as no bucket of one partition saw more than :func:`candidate_cap` values."""
        for values, summary in other.candidates.items():
            held = self.candidates.get(values)
            if held is None:
                held = self.candidates[values] = WarmupSummary(self.feature_kinds, self.limits)
            held.absorb(summary)
        self.overflow.absorb(other.overflow)

    def restore(self, state: Mapping[str, Any]) -> None:
        self.candidates = {}
        for values, saved in state["candidates"]:
            summary = self.candidates[tuple(values)] = WarmupSummary(self.feature_kinds, self.limits)
            summary.restore(saved)
        self.overflow = WarmupSummary(self.feature_kinds, self.limits)
        self.overflow.restore(state["overflow"])


def with_segments(profile: ReferenceProfile, events: Iterable[Any], model: Any, limits: Limits = Limits()
                  ) -> ReferenceProfile:
    """``profile`` (built from ``events``) with the per-segment profiles ``model``'s segments ask for
    (a :class:`~stream_monitor.config.ModelConfig`; unchanged without segments)."""
    wanted = model.segments
    if not wanted.enabled:
        return profile
    warmup = SegmentWarmup(wanted.columns, wanted.top_k, wanted.min_events, model.features, limits)
    for event in events:
        warmup.add(event)
    psi = model.detectors.psi
    return replace(profile, segments=warmup.build(profile, psi.bins, psi.top_k))


def segment_warmup_of(model: Any, limits: Limits = Limits()) -> SegmentWarmup | None:
    """An empty warm-up of ``model``'s segments (a :class:`~stream_monitor.config.ModelConfig`; ``None``
    without segments)."""
    wanted = model.segments
    if not wanted.enabled:
        return None
    return SegmentWarmup(wanted.columns, wanted.top_k, wanted.min_events, model.features, limits)


def _order(values: Sequence[str | None]) -> str:
    return json.dumps(list(values), ensure_ascii=False)


def profile_like(model: ReferenceProfile, summary: WarmupSummary, bins: int, top_categories: int) -> ReferenceProfile:
    """The profile of one segment's warm-up ``summary``, column by column of the model's reference
    ``model`` and with its kinds (a column the segment never had a value of has no profile)."""
    n = summary.events

    def like(ref: ColumnReference | None, column: Any) -> ColumnReference | None:
        if ref is None or column is None:
            return None
        if isinstance(ref, NumericReference):
            return column.numeric(n, bins)
        return column.categorical(n, top_categories)

    features = {}
    for name, ref in model.features.items():
        built = like(ref, summary.features.get(name))
        if built is not None:
            features[name] = built
    return ReferenceProfile(model_id=model.model_id, events=n, features=features, source=model.source,
                            score=like(model.score, summary.score),
                            predicted_label=like(model.predicted_label, summary.predicted_label),
                            latency=like(model.latency, summary.latency))


class Segments:
    """A reference's segments at run time: the index of each event's segment (the ``top`` in rank order,
    then the rest), each segment's object (as alerts carry it) and profile."""

    def __init__(self, references: SegmentReferences):
        self.columns = references.columns
        self.index = {values: i for i, (values, _) in enumerate(references.top)}
        self.rest = len(references.top)
        self.objects = [segment_object(self.columns, values) for values, _ in references.top]
        self.objects.append(segment_object(self.columns, None))
        self.profiles: list[ReferenceProfile | None] = [profile for _, profile in references.top]
        self.profiles.append(references.rest)
        self._known: dict[tuple[type, Any], int] = {}  # one column's raw values → their segment's index

    def __len__(self) -> int:
        return len(self.objects)

    def index_of(self, features: Mapping[str, Any]) -> int:
        """The index of the segment of one event (given by its features)."""
        return self.index.get(segment_of(features, self.columns), self.rest)

    def key_index(self, key: str) -> int | None:
        """The index of a partial's ``segment_pairs`` key: ``s<i>`` (a segment's), ``v<JSON of the values>``
        (counted before the segments were known: their segment), ``v*`` (values past a bucket's cap: the
        rest); ``None`` for another key."""
        if key.startswith("s") and key[1:].isdigit():
            return int(key[1:]) if int(key[1:]) <= self.rest else None
        if key == "v*":
            return self.rest
        if key.startswith("v"):
            return self.index.get(tuple(json.loads(key[1:])), self.rest)
        return None

    def route(self, features: Iterable[Mapping[str, Any]]) -> list[list[int]]:
        """Per segment, the positions of the events (given by their features) that belong to it."""
        out: list[list[int]] = [[] for _ in self.objects]
        index, rest, columns = self.index, self.rest, self.columns
        if len(columns) == 1:  # the common case: one column, its raw values remembered (by type: True is not 1)
            column, known = columns[0], self._known
            for position, values in enumerate(features):
                value = values.get(column)
                where = known.get((value.__class__, value))
                if where is None:
                    where = index.get(segment_of(values, columns), rest)
                    if len(known) < MAX_REMEMBERED:
                        known[(value.__class__, value)] = where
                out[where].append(position)
            return out
        for position, values in enumerate(features):
            out[index.get(segment_of(values, columns), rest)].append(position)
        return out


def monitored_columns(profile: ReferenceProfile, columns: Sequence[str],
                      latency: bool = True) -> list[tuple[str, str, ColumnReference]]:
    """The columns a segment's detectors watch: its profile's, but the segment columns themselves (one value
    per segment) and latency when its detectors are off."""
    return [(signal, name, ref) for signal, name, ref in profile.columns()
            if not (signal == "feature" and name in columns) and (latency or signal != "latency")]
