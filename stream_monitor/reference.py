"""Reference profiles: what "normal" looks like for one model (CONTRACT §8).

Numeric values are binned at reference quantiles, with one open bin below the
reference minimum and one above the maximum; categorical values keep the
``top_k`` most frequent categories plus ``__other__``.

>>> ref = NumericReference.build([1.0, 2.0, 3.0, 4.0], bins=2)
>>> ref.edges, [ref.bin_index(x) for x in (0.0, 1.0, 2.5, 4.0, 9.0)]
([1.0, 2.5, 4.0], [0, 1, 1, 2, 3])
>>> CategoricalReference.build(["DE", "DE", "FR", "US"], top_k=2).categories
['DE', 'FR']
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .codec import category
from .errors import ReferenceProfileError
from .events import InferenceEvent

OTHER = "__other__"


@dataclass(frozen=True)
class NumericReference:
    edges: list[float]
    proportions: list[float]  # len(edges) + 1 bins: below min, inner bins, above max
    mean: float
    std: float
    minimum: float
    maximum: float
    kind: str = "numeric"

    @classmethod
    def build(cls, values: Sequence[float], bins: int = 10) -> "NumericReference":
        data = np.asarray(values, dtype=float)
        if data.size == 0:
            raise ReferenceProfileError("a numeric reference needs at least one value")
        edges = sorted(set(np.quantile(data, np.linspace(0.0, 1.0, bins + 1)).tolist()))
        if len(edges) == 1:
            edges.append(math.nextafter(edges[0], math.inf))
        counts = np.zeros(len(edges) + 1)
        for x in data:
            counts[_numeric_bin(edges, float(x))] += 1
        std = float(data.std())
        return cls(edges=edges, proportions=(counts / data.size).tolist(), mean=float(data.mean()),
                   std=std if std > 0 else 1.0, minimum=float(data.min()), maximum=float(data.max()))

    def bin_index(self, value: float) -> int:
        return _numeric_bin(self.edges, value)

    def standardise(self, value: float) -> float:
        """The value as a z-score against the reference (what ADWIN and Page-Hinkley see)."""
        return (value - self.mean) / self.std

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "numeric", "edges": self.edges, "proportions": self.proportions, "mean": self.mean,
                "std": self.std, "min": self.minimum, "max": self.maximum}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NumericReference":
        return cls(edges=list(d["edges"]), proportions=list(d["proportions"]), mean=d["mean"], std=d["std"],
                   minimum=d["min"], maximum=d["max"])


def _numeric_bin(edges: Sequence[float], value: float) -> int:
    index = bisect_left(edges, value)
    return 1 if index == 0 and value == edges[0] else index


@dataclass(frozen=True)
class CategoricalReference:
    categories: list[str]
    proportions: list[float]  # len(categories) + 1: the last is __other__
    kind: str = "categorical"
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({c: i for i, c in enumerate(self.categories)})

    @classmethod
    def build(cls, values: Iterable[Any], top_k: int = 20) -> "CategoricalReference":
        counts: dict[str, int] = {}
        total = 0
        for value in values:
            key = category(value)
            counts[key] = counts.get(key, 0) + 1
            total += 1
        if total == 0:
            raise ReferenceProfileError("a categorical reference needs at least one value")
        top = sorted(counts, key=lambda c: (-counts[c], c))[:top_k]
        other = total - sum(counts[c] for c in top)
        return cls(categories=top, proportions=[counts[c] / total for c in top] + [other / total])

    def bin_index(self, value: Any) -> int:
        return self._index.get(category(value), len(self.categories))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "categorical", "categories": self.categories, "proportions": self.proportions}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CategoricalReference":
        return cls(categories=list(d["categories"]), proportions=list(d["proportions"]))


ColumnReference = NumericReference | CategoricalReference


def column_from_dict(d: Mapping[str, Any]) -> ColumnReference:
    return NumericReference.from_dict(d) if d["kind"] == "numeric" else CategoricalReference.from_dict(d)


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-column references of one model: features, prediction score and predicted label."""

    model_id: str
    events: int
    features: Mapping[str, ColumnReference]
    score: NumericReference | None = None
    predicted_label: CategoricalReference | None = None
    version: int = 0
    source: str = "warmup"

    def columns(self) -> list[tuple[str, str, ColumnReference]]:
        """(signal, name, reference) for every monitored column, in a stable order."""
        out: list[tuple[str, str, ColumnReference]] = [("feature", n, r) for n, r in sorted(self.features.items())]
        if self.score is not None:
            out.append(("prediction", "score", self.score))
        if self.predicted_label is not None:
            out.append(("prediction", "label", self.predicted_label))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "version": self.version, "source": self.source, "events": self.events,
                "features": {n: r.to_dict() for n, r in sorted(self.features.items())},
                "score": None if self.score is None else self.score.to_dict(),
                "predicted_label": None if self.predicted_label is None else self.predicted_label.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReferenceProfile":
        try:
            return cls(model_id=d["model_id"], events=d["events"], version=d.get("version", 0),
                       source=d.get("source", "stored"),
                       features={n: column_from_dict(r) for n, r in d["features"].items()},
                       score=None if d.get("score") is None else NumericReference.from_dict(d["score"]),
                       predicted_label=None if d.get("predicted_label") is None
                       else CategoricalReference.from_dict(d["predicted_label"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ReferenceProfileError(f"malformed reference profile: {exc!r}") from None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_reference(model_id: str, events: Sequence[InferenceEvent], feature_kinds: Mapping[str, str] | None,
                    bins: int = 10, top_k: int = 20, source: str = "warmup") -> ReferenceProfile:
    """Profile a model's events. Kinds not given are inferred: numbers → numeric, else categorical."""
    if not events:
        raise ReferenceProfileError(f"no inference events of model {model_id!r} to build a reference from")
    columns: dict[str, list[Any]] = {}
    for event in events:
        for name, value in event.features.items():
            if value is not None:
                columns.setdefault(name, []).append(value)
    kinds = dict(feature_kinds) if feature_kinds is not None else {
        name: "numeric" if all(is_number(v) for v in values) else "categorical"
        for name, values in columns.items()}
    features: dict[str, ColumnReference] = {}
    for name, kind in sorted(kinds.items()):
        values = columns.get(name, [])
        if kind == "numeric":
            numbers = [float(v) for v in values if is_number(v)]
            if numbers:
                features[name] = NumericReference.build(numbers, bins)
        elif values:
            features[name] = CategoricalReference.build(values, top_k)
    scores = [e.score for e in events if e.score is not None and math.isfinite(e.score)]
    labels = [e.predicted_label for e in events if e.predicted_label is not None]
    return ReferenceProfile(
        model_id=model_id, events=len(events), features=features, source=source,
        score=NumericReference.build(scores, bins) if scores else None,
        predicted_label=CategoricalReference.build(labels, top_k) if labels else None)
