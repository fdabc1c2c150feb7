"""Reference profiles: what "normal" looks like for one model (CONTRACT §8).

Numeric values are binned at reference quantiles, with one open bin below the
reference minimum and one above the maximum; categorical values keep the
``top_k`` most frequent categories plus ``__other__``. A numeric profile also
keeps the reference's permille quantiles (for the rank transform), its
percentile distribution function (for KS), and every column its data-quality
base rates (missing, type mismatches, unseen categories).

>>> ref = NumericReference.build([1.0, 2.0, 3.0, 4.0], bins=2)
>>> ref.edges, [ref.bin_index(x) for x in (0.0, 1.0, 2.5, 4.0, 9.0)]
([1.0, 2.5, 4.0], [0, 1, 1, 2, 3])
>>> CategoricalReference.build(["DE", "DE", "FR", "US"], top_k=2).categories
['DE', 'FR']
"""

from __future__ import annotations

import difflib
import math
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .codec import category
from .errors import ReferenceProfileError
from .events import InferenceEvent, LabelEvent

OTHER = "__other__"
RANK_GRID_STEPS = 1000  # permille quantiles for the rank transform
KS_GRID_STEPS = 100  # percentile points for the KS sketch
MAX_CATEGORIES = 10_000  # categories remembered for the "unseen category" check


@dataclass(frozen=True)
class NumericReference:
    edges: list[float]
    proportions: list[float]  # len(edges) + 1 bins: below min, inner bins, above max
    mean: float
    std: float
    minimum: float
    maximum: float
    events: int = 0  # values the profile was built from
    missing: int = 0  # events where the column was absent or null
    mismatches: int = 0  # events where it was not a finite number
    grid: list[float] = field(default_factory=list)  # quantiles at k / RANK_GRID_STEPS
    ks_grid: list[float] = field(default_factory=list)  # quantiles at k / KS_GRID_STEPS
    ks_cdf: list[float] = field(default_factory=list)  # reference share ≤ each ks_grid point
    kind: str = "numeric"

    @classmethod
    def build(cls, values: Sequence[float], bins: int = 10, missing: int = 0, mismatches: int = 0
              ) -> "NumericReference":
        data = np.sort(np.asarray(values, dtype=float))
        if data.size == 0:
            raise ReferenceProfileError("a numeric reference needs at least one value")
        edges = sorted(set(np.quantile(data, np.linspace(0.0, 1.0, bins + 1)).tolist()))
        if len(edges) == 1:
            edges.append(math.nextafter(edges[0], math.inf))
        counts = np.zeros(len(edges) + 1)
        for x in data:
            counts[_numeric_bin(edges, float(x))] += 1
        with np.errstate(over="ignore", invalid="ignore"):
            mean, std = float(data.mean()), float(data.std())
        if not (math.isfinite(mean) and math.isfinite(std)):  # only messages use them
            mean, std = float(np.median(data)), 1.0
        ks_grid = np.quantile(data, np.linspace(0.0, 1.0, KS_GRID_STEPS + 1))
        ks_cdf = np.searchsorted(data, ks_grid, side="right") / data.size
        return cls(edges=edges, proportions=(counts / data.size).tolist(), mean=mean,
                   std=std if std > 0 else 1.0, minimum=float(data[0]), maximum=float(data[-1]),
                   events=int(data.size), missing=missing, mismatches=mismatches,
                   grid=np.quantile(data, np.linspace(0.0, 1.0, RANK_GRID_STEPS + 1)).tolist(),
                   ks_grid=ks_grid.tolist(), ks_cdf=ks_cdf.tolist())

    def bin_index(self, value: float) -> int:
        return _numeric_bin(self.edges, value)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "numeric", "edges": self.edges, "proportions": self.proportions, "mean": self.mean,
                "std": self.std, "min": self.minimum, "max": self.maximum, "events": self.events,
                "missing": self.missing, "mismatches": self.mismatches, "grid": self.grid,
                "ks_grid": self.ks_grid, "ks_cdf": self.ks_cdf}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NumericReference":
        if not d.get("grid") or not d.get("ks_grid"):
            raise ReferenceProfileError("numeric reference without quantile grids (made by an older version): "
                                        "rebuild it with `stream-monitor reference build`")
        return cls(edges=list(d["edges"]), proportions=list(d["proportions"]), mean=d["mean"], std=d["std"],
                   minimum=d["min"], maximum=d["max"], events=d.get("events", 0), missing=d.get("missing", 0),
                   mismatches=d.get("mismatches", 0), grid=list(d.get("grid", [])),
                   ks_grid=list(d.get("ks_grid", [])), ks_cdf=list(d.get("ks_cdf", [])))


def _numeric_bin(edges: Sequence[float], value: float) -> int:
    index = bisect_left(edges, value)
    return 1 if index == 0 and value == edges[0] else index


@dataclass(frozen=True)
class CategoricalReference:
    categories: list[str]
    proportions: list[float]  # len(categories) + 1: the last is __other__
    events: int = 0
    missing: int = 0
    seen: list[str] = field(default_factory=list)  # every category of the reference (up to MAX_CATEGORIES)
    singletons: int = 0  # categories seen once: Good-Turing's estimate of the unseen share
    kind: str = "categorical"
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _seen: frozenset = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({c: i for i, c in enumerate(self.categories)})
        object.__setattr__(self, "_seen", frozenset(self.seen) | frozenset(self.categories))

    @classmethod
    def build(cls, values: Iterable[Any], top_k: int = 20, missing: int = 0) -> "CategoricalReference":
        counts: dict[str, int] = {}
        total = 0
        for value in values:
            key = category(value)
            counts[key] = counts.get(key, 0) + 1
            total += 1
        if total == 0:
            raise ReferenceProfileError("a categorical reference needs at least one value")
        ranked = sorted(counts, key=lambda c: (-counts[c], c))
        top = ranked[:top_k]
        other = total - sum(counts[c] for c in top)
        return cls(categories=top, proportions=[counts[c] / total for c in top] + [other / total], events=total,
                   missing=missing, seen=sorted(ranked[:MAX_CATEGORIES]),
                   singletons=sum(1 for c in counts.values() if c == 1))

    def bin_index(self, value: Any) -> int:
        return self._index.get(category(value), len(self.categories))

    def is_seen(self, value: Any) -> bool:
        return len(self._seen) >= MAX_CATEGORIES or category(value) in self._seen

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "categorical", "categories": self.categories, "proportions": self.proportions,
                "events": self.events, "missing": self.missing, "seen": self.seen, "singletons": self.singletons}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CategoricalReference":
        return cls(categories=list(d["categories"]), proportions=list(d["proportions"]), events=d.get("events", 0),
                   missing=d.get("missing", 0), seen=list(d.get("seen", [])), singletons=d.get("singletons", 0))


ColumnReference = NumericReference | CategoricalReference


def column_from_dict(d: Mapping[str, Any]) -> ColumnReference:
    return NumericReference.from_dict(d) if d["kind"] == "numeric" else CategoricalReference.from_dict(d)


def _optional(d: Mapping[str, Any], key: str, build):
    return None if d.get(key) is None else build(d[key])


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-column references of one model: features, prediction, latency, and ground-truth labels."""

    model_id: str
    events: int
    features: Mapping[str, ColumnReference]
    score: NumericReference | None = None
    predicted_label: CategoricalReference | None = None
    latency: NumericReference | None = None
    labels: CategoricalReference | None = None
    version: int = 0
    source: str = "warmup"

    def columns(self) -> list[tuple[str, str, ColumnReference]]:
        """(signal, name, reference) for every monitored column of inference events, in a stable order."""
        out: list[tuple[str, str, ColumnReference]] = [("feature", n, r) for n, r in sorted(self.features.items())]
        if self.score is not None:
            out.append(("prediction", "score", self.score))
        if self.predicted_label is not None:
            out.append(("prediction", "label", self.predicted_label))
        if self.latency is not None:
            out.append(("latency", "latency_ms", self.latency))
        return out

    def with_labels(self, labels: CategoricalReference | None) -> "ReferenceProfile":
        return replace(self, labels=labels)

    def to_dict(self) -> dict[str, Any]:
        def opt(ref):
            return None if ref is None else ref.to_dict()

        return {"model_id": self.model_id, "version": self.version, "source": self.source, "events": self.events,
                "features": {n: r.to_dict() for n, r in sorted(self.features.items())},
                "score": opt(self.score), "predicted_label": opt(self.predicted_label),
                "latency": opt(self.latency), "labels": opt(self.labels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReferenceProfile":
        try:
            return cls(model_id=d["model_id"], events=d["events"], version=d.get("version", 0),
                       source=d.get("source", "stored"),
                       features={n: column_from_dict(r) for n, r in d["features"].items()},
                       score=_optional(d, "score", NumericReference.from_dict),
                       predicted_label=_optional(d, "predicted_label", CategoricalReference.from_dict),
                       latency=_optional(d, "latency", NumericReference.from_dict),
                       labels=_optional(d, "labels", CategoricalReference.from_dict))
        except ReferenceProfileError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ReferenceProfileError(f"malformed reference profile: {exc!r}") from None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def _numeric(values: list[Any], events: int, bins: int) -> NumericReference | None:
    numbers = [float(v) for v in values if is_finite_number(v)]
    if not numbers:
        return None
    present = sum(1 for v in values if v is not None)
    return NumericReference.build(numbers, bins, missing=events - present, mismatches=present - len(numbers))


def _categorical(values: list[Any], events: int, top_k: int) -> CategoricalReference | None:
    present = [v for v in values if v is not None]
    return CategoricalReference.build(present, top_k, missing=events - len(present)) if present else None


def build_labels_reference(labels: Sequence[LabelEvent], top_k: int = 20) -> CategoricalReference | None:
    return _categorical([e.label for e in labels], len(labels), top_k)


MAX_INFERRED_FEATURES = 1_000
MIN_INFERRED_SHARE = 0.01


def build_reference(model_id: str, events: Sequence[InferenceEvent], feature_kinds: Mapping[str, str] | None,
                    bins: int = 10, top_k: int = 20, source: str = "warmup",
                    labels: Sequence[LabelEvent] = ()) -> ReferenceProfile:
    """Profile a model's events. Kinds not given are inferred: numbers → numeric, else categorical.

    Inferred features are those present in at least 1 % of the events (and twice), the
    ``MAX_INFERRED_FEATURES`` most frequent at most: stray keys do not become columns.
    """
    if not events:
        raise ReferenceProfileError(f"no inference events of model {model_id!r} to build a reference from")
    seen: dict[str, int] = {}
    for event in events:
        for name in event.features:
            seen[name] = seen.get(name, 0) + 1
    if feature_kinds is None:
        least = max(2, math.ceil(MIN_INFERRED_SHARE * len(events)))
        kept = sorted((n for n, c in seen.items() if c >= least), key=lambda n: (-seen[n], n))[:MAX_INFERRED_FEATURES]
    else:
        kept = list(feature_kinds)
    columns: dict[str, list[Any]] = {name: [] for name in kept}
    for event in events:
        for name, values in columns.items():
            values.append(event.features.get(name))
    kinds = dict(feature_kinds) if feature_kinds is not None else {
        name: "numeric" if all(is_number(v) for v in values if v is not None) else "categorical"
        for name, values in columns.items()}
    n = len(events)
    features: dict[str, ColumnReference] = {}
    for name, kind in sorted(kinds.items()):
        values = columns.get(name, [None] * n)
        ref = _numeric(values, n, bins) if kind == "numeric" else _categorical(values, n, top_k)
        if ref is not None:
            features[name] = ref
    return ReferenceProfile(
        model_id=model_id, events=n, features=features, source=source,
        score=_numeric([e.score for e in events], n, bins),
        predicted_label=_categorical([e.predicted_label for e in events], n, top_k),
        latency=_numeric([e.latency_ms for e in events], n, bins),
        labels=build_labels_reference(labels, top_k))


# --- configured columns that a reference cannot monitor ---------------------------------------


def unmonitored_columns(profile: ReferenceProfile, features: Mapping[str, str] | None) -> list[str]:
    """The configured features (``models.<id>.features``) that ``profile`` has no reference of: absent
    from every event it was built from, or without one value of their kind (text in a numeric
    column). Their drift would never be reported. Features inferred from the reference (``None``)
    are monitored by definition.

    >>> profile = build_reference("m", [InferenceEvent("e", "m", None, {"Income": 1.0, "age": 2.0})],
    ...                           {"income": "numeric", "age": "numeric"})
    >>> unmonitored_columns(profile, {"income": "numeric", "age": "numeric"})
    ['income']
    >>> unmonitored_columns(profile, None)
    []
    """
    if features is None:
        return []
    return sorted(name for name in features if name not in profile.features)


def why_unmonitored(name: str, kind: str, available: Iterable[str], seen: Mapping[str, int] | None = None,
                    events: int | None = None) -> str:
    """Why configured feature ``name`` has no reference, for an error message: what the reference data
    has instead (``available``: its feature names) and the closest name, if one is close.

    ``seen``: how many reference events carried each feature name (known at ``reference build``).

    >>> why_unmonitored("income", "numeric", ["Income", "age"])
    "the reference has features Income, age; did you mean 'Income'?"
    >>> why_unmonitored("age", "numeric", ["age"], {"age": 3}, 3)
    'is in 3 of the 3 reference events but none has a numeric value'
    """
    available = sorted(set(available) - {name})
    if seen is not None and seen.get(name):
        return f"is in {seen[name]:,} of the {events:,} reference events but none has a {kind} value"
    head = f"is in none of the {events:,} reference events; " if seen is not None and events is not None else ""
    shown = ", ".join(available[:20]) + (f" … ({len(available):,} in all)" if len(available) > 20 else "")
    text = f"{head}the reference has " + (f"features {shown}" if available else "no features")
    close = _close_match(name, available)
    return text + (f"; did you mean {close!r}?" if close else "")


def _close_match(name: str, candidates: Sequence[str]) -> str | None:
    lowered = {c.lower(): c for c in candidates}
    if name.lower() in lowered:
        return lowered[name.lower()]
    found = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.75)
    return lowered[found[0]] if found else None
