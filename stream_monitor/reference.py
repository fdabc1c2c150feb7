"""Reference profiles: what "normal" looks like for one model.

Numeric values are binned at reference quantiles, with one open bin below the
reference minimum and one above the maximum; categorical values keep the
``top_k`` most frequent categories plus ``__other__``. A numeric profile also
keeps the reference's permille quantiles (for the rank transform), its
percentile distribution function (for KS), and every column its data-quality
base rates (missing, type mismatches, unseen categories). A model's numeric features
also get a joint reference (:mod:`stream_monitor.detectors.multivariate`), fitted on
row-aligned values of the warm-up: a bounded sample of at most MAX_JOINT_ROWS rows.

>>> ref = NumericReference.build([1.0, 2.0, 3.0, 4.0], bins=2)
>>> ref.edges, [ref.bin_index(x) for x in (0.0, 1.0, 2.5, 4.0, 9.0)]
([1.0, 2.5, 4.0], [0, 1, 1, 2, 3])
>>> CategoricalReference.build(["DE", "DE", "FR", "US"], top_k=2).categories
['DE', 'FR']
"""

from __future__ import annotations

import difflib
import hashlib
import math
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .codec import category
from .detectors.multivariate import JointReference, fit_joint
from .errors import ReferenceProfileError
from .drivers import JOINT_SAMPLE, JOINT_VALUES, normalised_mutual_information
from .events import InferenceEvent, LabelEvent

OTHER = "__other__"
RANK_GRID_STEPS = 1000  # permille quantiles for the rank transform
KS_GRID_STEPS = 100  # percentile points for the KS sketch
MAX_CATEGORIES = 10_000  # categories remembered for the "unseen category" check
MAX_CATEGORY_CHARS = 256  # a longer category value is remembered cut (see :func:`category_key`)
MAX_NAME_CHARS = 256  # a longer feature name never becomes an inferred column
MAX_JOINT_FEATURES = 20  # numeric features whose row-aligned values the warm-up keeps for the joint reference
MAX_JOINT_ROWS = 20_000  # rows of them it keeps (the first ones)
MAX_REFERENCE_PAIRS = 20_000  # labelled predictions a stored reference keeps to calibrate the estimated performance


def cut(text: str, limit: int = MAX_CATEGORY_CHARS) -> str:
    """``text`` if it has at most ``limit`` characters, else its start, "…" and 16 hex digits of its
    sha256: as long as ``limit``, deterministic, and distinct long values stay distinct.

    >>> cut("x" * 300, 24)
    'xxxxxxx…0d4e2ca9e9cbced7'
    """
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:limit - 17]}…{digest}"


def category_key(value: Any) -> str:
    """The category a reference remembers for ``value``: its JSON spelling, cut to MAX_CATEGORY_CHARS."""
    key = category(value)
    return key if len(key) <= MAX_CATEGORY_CHARS else cut(key)


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
    overflow: int = 0  # values past the categories a warm-up remembers: "seen" is incomplete
    kind: str = "categorical"
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _seen: frozenset = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({c: i for i, c in enumerate(self.categories)})
        object.__setattr__(self, "_seen", frozenset(self.seen) | frozenset(self.categories))

    @classmethod
    def build(cls, values: Iterable[Any], top_k: int = 20, missing: int = 0) -> "CategoricalReference":
        counts: dict[str, int] = {}
        for value in values:
            key = category_key(value)
            counts[key] = counts.get(key, 0) + 1
        return cls.from_counts(counts, top_k, missing)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], top_k: int = 20, missing: int = 0,
                    overflow: int = 0) -> "CategoricalReference":
        """From each category's count (``overflow``: values of categories not counted one by one)."""
        total = sum(counts.values()) + overflow
        if total == 0:
            raise ReferenceProfileError("a categorical reference needs at least one value")
        ranked = sorted(counts, key=lambda c: (-counts[c], c))
        top = ranked[:top_k]
        other = total - sum(counts[c] for c in top)
        return cls(categories=top, proportions=[counts[c] / total for c in top] + [other / total], events=total,
                   missing=missing, seen=sorted(ranked[:MAX_CATEGORIES]),
                   singletons=sum(1 for c in counts.values() if c == 1), overflow=overflow)

    def bin_index(self, value: Any) -> int:
        return self._index.get(category_key(value), len(self.categories))

    def is_seen(self, value: Any) -> bool:
        return self.overflow > 0 or len(self._seen) >= MAX_CATEGORIES or category_key(value) in self._seen

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": "categorical", "categories": self.categories, "proportions": self.proportions,
             "events": self.events, "missing": self.missing, "seen": self.seen, "singletons": self.singletons}
        if self.overflow:
            d["overflow"] = self.overflow
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CategoricalReference":
        return cls(categories=list(d["categories"]), proportions=list(d["proportions"]), events=d.get("events", 0),
                   missing=d.get("missing", 0), seen=list(d.get("seen", [])), singletons=d.get("singletons", 0),
                   overflow=d.get("overflow", 0))


ColumnReference = NumericReference | CategoricalReference


def column_from_dict(d: Mapping[str, Any]) -> ColumnReference:
    return NumericReference.from_dict(d) if d["kind"] == "numeric" else CategoricalReference.from_dict(d)


def _association(d: Any) -> dict[str, float] | None:
    if d is None:
        return None
    if not isinstance(d, Mapping):
        raise ReferenceProfileError("malformed reference profile: association is not an object")
    return {str(n): float(v) for n, v in d.items()}


def _pairs(d: Mapping[str, Any]) -> tuple[tuple[float, str | None, str], ...]:
    scores, predicted, labels = d["scores"], d["predicted"], d["labels"]
    if not len(scores) == len(predicted) == len(labels):
        raise ReferenceProfileError("malformed reference pairs: their lists differ in length")
    return tuple((float(s), None if p is None else str(p), str(t)) for s, p, t in zip(scores, predicted, labels))


def _optional(d: Mapping[str, Any], key: str, build):
    return None if d.get(key) is None else build(d[key])


@dataclass(frozen=True)
class SegmentReferences:
    """A reference's per-segment profiles (``[models.<id>.segments]``, :mod:`stream_monitor.segments`):
    each of the ``top`` segments (a tuple of values of ``columns``, ``None`` for a missing value) with
    the profile built from its own reference events, most frequent first, and the ``rest``'s profile
    (every other value; ``None`` when no reference event fell there)."""

    columns: tuple[str, ...]
    top_k: int
    min_events: int
    top: tuple[tuple[tuple[str | None, ...], "ReferenceProfile"], ...]
    rest: "ReferenceProfile | None" = None

    def fits(self, columns: Sequence[str], top_k: int, min_events: int) -> bool:
        """Whether these profiles were built for those settings."""
        return (self.columns, self.top_k, self.min_events) == (tuple(columns), top_k, min_events)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "top_k": self.top_k, "min_events": self.min_events,
                "top": [{"values": list(values), "profile": profile.to_dict()} for values, profile in self.top],
                "rest": None if self.rest is None else self.rest.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SegmentReferences":
        return cls(columns=tuple(d["columns"]), top_k=int(d["top_k"]), min_events=int(d["min_events"]),
                   top=tuple((tuple(t["values"]), ReferenceProfile.from_dict(t["profile"])) for t in d["top"]),
                   rest=_optional(d, "rest", ReferenceProfile.from_dict))


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-column references of one model: features, prediction, latency, and ground-truth labels."""

    model_id: str
    events: int
    features: Mapping[str, ColumnReference]
    score: NumericReference | None = None
    predicted_label: CategoricalReference | None = None
    latency: NumericReference | None = None
    # a regression model's numeric labels are numeric (:meth:`LabelSummary.build`); every other model's categorical
    labels: ColumnReference | None = None
    version: int = 0
    source: str = "warmup"
    # per feature, how strongly its reference bins go with the score's (normalised mutual information);
    # None for a reference stored before it was kept: drivers are then ranked by PSI alone
    association: Mapping[str, float] | None = None
    joint: JointReference | None = None  # None: no joint test (fewer than two numeric features, or an older reference)
    # labelled predictions (score, predicted label's category or None, true label's category) of a stored
    # reference built with labels: they calibrate the estimated performance from the start; None: none
    pairs: tuple[tuple[float, str | None, str], ...] | None = None
    segments: SegmentReferences | None = None  # None: no per-segment profiles (none configured, or an older reference)

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

    def with_labels(self, labels: ColumnReference | None) -> "ReferenceProfile":
        return replace(self, labels=labels)

    def to_dict(self) -> dict[str, Any]:
        def opt(ref):
            return None if ref is None else ref.to_dict()

        out = {"model_id": self.model_id, "version": self.version, "source": self.source, "events": self.events,
               "features": {n: r.to_dict() for n, r in sorted(self.features.items())},
               "score": opt(self.score), "predicted_label": opt(self.predicted_label),
               "latency": opt(self.latency), "labels": opt(self.labels)}
        if self.association is not None:
            out["association"] = {n: float(v) for n, v in sorted(self.association.items())}
        if self.joint is not None:
            out["joint"] = self.joint.to_dict()
        if self.pairs is not None:
            out["pairs"] = {"scores": [p[0] for p in self.pairs], "predicted": [p[1] for p in self.pairs],
                            "labels": [p[2] for p in self.pairs]}
        if self.segments is not None:
            out["segments"] = self.segments.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReferenceProfile":
        try:
            return cls(model_id=d["model_id"], events=d["events"], version=d.get("version", 0),
                       source=d.get("source", "stored"),
                       features={n: column_from_dict(r) for n, r in d["features"].items()},
                       score=_optional(d, "score", NumericReference.from_dict),
                       predicted_label=_optional(d, "predicted_label", CategoricalReference.from_dict),
                       latency=_optional(d, "latency", NumericReference.from_dict),
                       labels=_optional(d, "labels", column_from_dict),
                       association=_association(d.get("association")),
                       joint=_optional(d, "joint", JointReference.from_dict),
                       pairs=_optional(d, "pairs", _pairs),
                       segments=_optional(d, "segments", SegmentReferences.from_dict))
        except ReferenceProfileError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ReferenceProfileError(f"malformed reference profile: {exc!r}") from None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


_BIG_INT = 10 ** 15  # from here on an int's category differs from its float's ("1000000000000000" vs "1e+15")


@dataclass(frozen=True)
class Limits:
    """What a warm-up remembers per model (``service.max_inferred_columns`` and
    ``service.max_categories_per_column``)."""

    max_inferred_columns: int = 100
    max_categories: int = 10_000


class ColumnSummary:
    """What a reference needs of one column's values, in memory bounded by the reference's event count.

    ``kind`` "numeric": the finite numbers (float64); "categorical": each category's count, at most
    ``max_categories`` of them (values of further categories are counted together in ``overflow``);
    ``None`` (kind inferred): numbers as for "numeric", until the first value that is not a number
    turns the summary categorical. ``present`` counts the values that were not null.
    """

    __slots__ = ("kind", "max_categories", "present", "appears", "numbers", "counts", "overflow", "fixes",
                 "nonfinite")

    def __init__(self, kind: str | None, max_categories: int = 10_000):
        self.kind = kind
        self.max_categories = max_categories
        self.present = 0
        self.appears = 0  # events that had the key (null or not): what feature inference counts
        self.numbers = array("d")
        self.counts: dict[str, int] = {}
        self.overflow = 0
        self.fixes: list[tuple[str, str]] = []  # inferred kind: (float's category, int's category) of big ints
        self.nonfinite: dict[str, int] = {}  # categories of the non-finite numbers (an inferred kind turns them into categories)

    def add(self, value: Any) -> None:
        """One value that is not ``None``."""
        self.present += 1
        kind = self.kind
        if kind == "categorical":
            self._count(category_key(value))
            return
        cls = value.__class__
        if cls is float or (cls is not bool and isinstance(value, (int, float))):
            if math.isfinite(value):
                self.numbers.append(float(value))
                if kind is None and cls is not float and not -_BIG_INT < value < _BIG_INT:
                    self.fixes.append((category(float(value)), category(value)))
            else:  # counted for a model-level warm-up's share too (its data quality after the reference)
                key = category(value)
                self.nonfinite[key] = self.nonfinite.get(key, 0) + 1
        elif kind is None:  # the first value that is not a number: the column is categorical
            self._become_categorical()
            self._count(category_key(value))

    def _count(self, key: str) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += 1
        elif len(counts) < self.max_categories:
            counts[key] = 1
        else:
            self.overflow += 1

    def _become_categorical(self) -> None:
        numbers, fixes, nonfinite = self.numbers, self.fixes, self.nonfinite
        self.kind, self.numbers, self.fixes, self.nonfinite = "categorical", array("d"), [], {}
        corrections: dict[str, int] = {}
        for wrong, right in fixes:
            corrections[wrong] = corrections.get(wrong, 0) + 1
            self._count(right)
        for x in numbers.tolist():
            key = category(x)
            if corrections.get(key):
                corrections[key] -= 1
            else:
                self._count(key)
        for key, count in nonfinite.items():
            for _ in range(count):
                self._count(key)

    def numeric(self, events: int, bins: int) -> "NumericReference | None":
        if not self.numbers:
            return None
        return NumericReference.build(self.numbers, bins, missing=events - self.present,
                                      mismatches=self.present - len(self.numbers))

    def categorical(self, events: int, top_k: int) -> "CategoricalReference | None":
        if not self.present:
            return None
        if self.kind != "categorical":  # configured categorical columns are; inferred ones may not be yet
            self._become_categorical()
        return CategoricalReference.from_counts(self.counts, top_k, missing=events - self.present,
                                                overflow=self.overflow)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": self.kind, "present": self.present, "appears": self.appears,
                "numbers": self.numbers.tobytes(), "counts": dict(self.counts), "overflow": self.overflow,
                "fixes": list(self.fixes), "nonfinite": dict(self.nonfinite)}

    @classmethod
    def from_snapshot(cls, d: Mapping[str, Any], max_categories: int) -> "ColumnSummary":
        out = cls(d["kind"], max_categories)
        out.present, out.appears, out.overflow = d["present"], d["appears"], d["overflow"]
        out.numbers.frombytes(d["numbers"])
        out.counts, out.fixes, out.nonfinite = dict(d["counts"]), list(d["fixes"]), dict(d["nonfinite"])
        return out

    def absorb(self, other: "ColumnSummary") -> None:
        """Add ``other``'s values after this one's: as if one summary had seen both in that order (exact
        while neither has reached ``max_categories``)."""
        if other.kind == "categorical" and self.kind is None:
            self._become_categorical()
        elif self.kind == "categorical" and other.kind is None:
            other = ColumnSummary.from_snapshot(other.snapshot(), other.max_categories)
            other._become_categorical()
        self.present += other.present
        self.appears += other.appears
        self.overflow += other.overflow
        self.numbers.extend(other.numbers)
        self.fixes.extend(other.fixes)
        for key, count in other.nonfinite.items():
            self.nonfinite[key] = self.nonfinite.get(key, 0) + count
        counts = self.counts
        for key, count in other.counts.items():
            if key in counts:
                counts[key] += count
            elif len(counts) < self.max_categories:
                counts[key] = count
            else:
                self.overflow += count


MIN_INFERRED_SHARE = 0.01
MAX_UNTRACKED_COUNTED = 10_000  # distinct untracked feature names counted one by one
UNTRACKED_SAMPLES = 5


class WarmupSummary:
    """A model's warm-up: per column what :func:`build_reference` needs, not the events.

    With configured feature kinds only those features are summarised. Otherwise the first
    ``limits.max_inferred_columns`` feature names, in order of first appearance (names over
    MAX_NAME_CHARS never), are; further names are not tracked but counted (``untracked``, up to
    MAX_UNTRACKED_COUNTED distinct ones) with a few examples. Memory and snapshot size are
    bounded: per column at most ``events`` float64 numbers or ``limits.max_categories`` categories
    of at most MAX_CATEGORY_CHARS characters.
    """

    def __init__(self, feature_kinds: Mapping[str, str] | None, limits: Limits = Limits()):
        self.feature_kinds = None if feature_kinds is None else dict(feature_kinds)
        self.limits = limits
        self.events = 0
        cap = limits.max_categories
        if feature_kinds is None:
            self.features: dict[str, ColumnSummary] = {}
        else:
            self.features = {name: ColumnSummary(kind, cap) for name, kind in feature_kinds.items()}
        self.score = ColumnSummary("numeric", cap)
        self.predicted_label = ColumnSummary("categorical", cap)
        self.latency = ColumnSummary("numeric", cap)
        # the first JOINT_SAMPLE events' target and tracked features (at most JOINT_VALUES values in all)
        self.driver_sample: list[tuple[Any, dict[str, Any]]] = []
        self.driver_sample_values = 0
        self.untracked: set[bytes] = set()  # 8-byte digests of the names not tracked
        self.untracked_samples: list[str] = []
        self._known_untracked: set[str] = set()  # the names themselves, this process only (a fast path)
        # row-aligned values of the first MAX_JOINT_FEATURES numeric names (configured: in name order;
        # inferred: in order of first appearance as a number), for the joint reference
        self.joint_names: list[str] = [] if feature_kinds is None else sorted(
            n for n, kind in feature_kinds.items() if kind == "numeric")[:MAX_JOINT_FEATURES]
        self.joint_rows: list[list[float | None]] = []

    def __len__(self) -> int:
        return self.events

    def add(self, event: InferenceEvent) -> None:
        self.events += 1
        features = event.features
        columns = self.features
        if self.feature_kinds is not None:
            for name, column in columns.items():
                value = features.get(name)
                if value is not None:
                    column.add(value)
        else:
            room = self.limits.max_inferred_columns - len(columns)
            for name, value in features.items():
                column = columns.get(name)
                if column is None:
                    if room <= 0 or len(name) > MAX_NAME_CHARS:
                        self._untracked(name)
                        continue
                    column = columns[name] = ColumnSummary(None, self.limits.max_categories)
                    room -= 1
                column.appears += 1
                if value is not None:
                    column.add(value)
        if len(self.driver_sample) < JOINT_SAMPLE and self.driver_sample_values < JOINT_VALUES:
            target = event.score if event.score is not None else event.predicted_label
            if target is not None:
                kept = {n: _sampled(v) for n, v in features.items() if v is not None and n in columns}
                self.driver_sample.append((_sampled(target), kept))
                self.driver_sample_values += 1 + len(kept)
        if len(self.joint_rows) < MAX_JOINT_ROWS:
            self._joint_row(features)
        if event.score is not None:
            self.score.add(event.score)
        if event.predicted_label is not None:
            self.predicted_label.add(event.predicted_label)
        if event.latency_ms is not None:
            self.latency.add(event.latency_ms)

    def _joint_row(self, features: Mapping[str, Any]) -> None:
        names = self.joint_names
        if self.feature_kinds is None and len(names) < MAX_JOINT_FEATURES:
            for name, value in features.items():
                if is_number(value) and name not in names and len(name) <= MAX_NAME_CHARS:
                    names.append(name)
                    if len(names) == MAX_JOINT_FEATURES:
                        break
        row = []
        for name in names:
            value = features.get(name)
            row.append(float(value) if is_finite_number(value) else None)
        self.joint_rows.append(row)

    def joint(self, numeric: Sequence[str], max_features: int) -> JointReference | None:
        """The joint reference of the first ``max_features`` of the ``numeric`` features (in name order)
        whose row-aligned values were kept; ``None`` when there are fewer than two."""
        names = sorted(n for n in self.joint_names if n in set(numeric))[:max_features]
        if len(names) < 2:
            return None
        where = [self.joint_names.index(n) for n in names]
        rows = np.full((len(self.joint_rows), len(names)), np.nan)
        for r, row in enumerate(self.joint_rows):
            for c, i in enumerate(where):
                if i < len(row) and row[i] is not None:
                    rows[r, c] = row[i]
        return fit_joint(names, rows)

    def _untracked(self, name: str) -> None:
        if name in self._known_untracked:
            return
        if len(self._known_untracked) < MAX_UNTRACKED_COUNTED:
            self._known_untracked.add(name)
        if len(self.untracked) < MAX_UNTRACKED_COUNTED:
            self.untracked.add(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest())
        if len(self.untracked_samples) < UNTRACKED_SAMPLES:
            sample = cut(name, 64)
            if sample not in self.untracked_samples:
                self.untracked_samples.append(sample)

    def build(self, model_id: str, bins: int = 10, top_k: int = 20, source: str = "warmup",
              labels: "LabelSummary | None" = None, joint_features: int = 10, task: str = "") -> "ReferenceProfile":
        """The reference profile: exactly what :func:`build_reference` gives for the same events
        (within the limits). ``task``: the model's configured performance task ("" : told by the
        predictions), which says whether numeric labels are numbers (:func:`numeric_labels`)."""
        n = self.events
        if not n:
            raise ReferenceProfileError(f"no inference events of model {model_id!r} to build a reference from")
        columns = self.features
        if self.feature_kinds is None:
            least = max(2, math.ceil(MIN_INFERRED_SHARE * n))
            kept = sorted((name for name, c in columns.items() if c.appears >= least),
                          key=lambda name: (-columns[name].appears, name))
            kinds = {name: "numeric" if columns[name].kind is None else "categorical" for name in kept}
        else:
            kinds = self.feature_kinds
        features: dict[str, ColumnReference] = {}
        for name, kind in sorted(kinds.items()):
            column = columns[name]
            ref = column.numeric(n, bins) if kind == "numeric" else column.categorical(n, top_k)
            if ref is not None:
                features[name] = ref
        score, predicted = self.score.numeric(n, bins), self.predicted_label.categorical(n, top_k)
        return ReferenceProfile(
            model_id=model_id, events=n, features=features, source=source,
            score=score, predicted_label=predicted, latency=self.latency.numeric(n, bins),
            labels=None if labels is None else labels.build(top_k, bins, numeric_labels(task, score, predicted)),
            association=self._association(features, score or predicted),
            joint=self.joint([n for n, r in features.items() if isinstance(r, NumericReference)], joint_features))

    def _association(self, features: Mapping[str, ColumnReference],
                     target: ColumnReference | None) -> dict[str, float] | None:
        """Per feature, the NMI of its reference bins with the target's (the score, else the predicted
        label) over the joint sample; None without a target."""
        if target is None:
            return None
        usable = [(_bin(target, t), values) for t, values in self.driver_sample]
        usable = [(t, values) for t, values in usable if t is not None]
        out = {}
        for name, ref in features.items():
            pairs = [(b, t) for t, values in usable if name in values and (b := _bin(ref, values[name])) is not None]
            out[name] = round(normalised_mutual_information(pairs), 6)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"events": self.events, "features": {n: c.snapshot() for n, c in self.features.items()},
                "score": self.score.snapshot(), "predicted_label": self.predicted_label.snapshot(),
                "latency": self.latency.snapshot(), "untracked": sorted(self.untracked),
                "joint": _joint_columns(self.driver_sample),
                "untracked_samples": list(self.untracked_samples),
                "joint_names": list(self.joint_names), "joint_rows": [list(r) for r in self.joint_rows]}

    def absorb(self, other: "WarmupSummary") -> None:
        """Add ``other``'s events after this one's (a model-level warm-up: the partitions' bucket summaries
        in bucket order). The same summary as one that saw both streams in that order, while no limit is
        reached; with limits, still a pure function of the summaries and their order."""
        self.events += other.events
        if self.feature_kinds is not None:
            for name, column in self.features.items():
                if name in other.features:
                    column.absorb(other.features[name])
        else:
            for name, column in other.features.items():
                held = self.features.get(name)
                if held is None:
                    if len(self.features) >= self.limits.max_inferred_columns:
                        self._untracked(name)
                        continue
                    held = self.features[name] = ColumnSummary(None, self.limits.max_categories)
                held.absorb(column)
        for name in ("score", "predicted_label", "latency"):
            getattr(self, name).absorb(getattr(other, name))
        for row in other.joint_rows:  # the joint test's rows: the first events, in the same order
            if len(self.joint_rows) >= MAX_JOINT_ROWS:
                break
            self._joint_row({n: v for n, v in zip(other.joint_names, row) if v is not None})
        for target, values in other.driver_sample:  # the drivers' sample: the first events, in the same order
            if len(self.driver_sample) >= JOINT_SAMPLE or self.driver_sample_values >= JOINT_VALUES:
                break
            kept = {n: v for n, v in values.items() if n in self.features}
            self.driver_sample.append((target, kept))
            self.driver_sample_values += 1 + len(kept)
        for digest in other.untracked:
            if len(self.untracked) < MAX_UNTRACKED_COUNTED:
                self.untracked.add(digest)
        for sample in other.untracked_samples:
            if len(self.untracked_samples) < UNTRACKED_SAMPLES and sample not in self.untracked_samples:
                self.untracked_samples.append(sample)

    def to_data(self) -> dict[str, Any]:
        """The snapshot as JSON-safe data (numbers as lists, digests as hex): what a partial carries."""
        d = self.snapshot()
        for column in (*d["features"].values(), d["score"], d["predicted_label"], d["latency"]):
            column["numbers"] = array("d", column["numbers"]).tolist()
            column["fixes"] = [list(f) for f in column["fixes"]]
        d["untracked"] = [digest.hex() for digest in d["untracked"]]
        return d

    @classmethod
    def from_data(cls, d: Mapping[str, Any], feature_kinds: Mapping[str, str] | None,
                  limits: Limits = Limits()) -> "WarmupSummary":
        def column(c: Mapping[str, Any]) -> dict[str, Any]:
            return {**c, "numbers": array("d", c["numbers"]).tobytes(), "fixes": [tuple(f) for f in c["fixes"]]}

        out = cls(feature_kinds, limits)
        out.restore({**d, "features": {n: column(c) for n, c in d["features"].items()},
                     **{name: column(d[name]) for name in ("score", "predicted_label", "latency")},
                     "untracked": [bytes.fromhex(h) for h in d["untracked"]]})
        return out

    def restore(self, d: Mapping[str, Any]) -> None:
        """Continue a snapshot taken with the same feature kinds and limits."""
        cap = self.limits.max_categories
        self.events = d["events"]
        self.features = {n: ColumnSummary.from_snapshot(c, cap) for n, c in d["features"].items()}
        for name in ("score", "predicted_label", "latency"):
            setattr(self, name, ColumnSummary.from_snapshot(d[name], cap))
        self.untracked = set(d["untracked"])
        self.untracked_samples = list(d["untracked_samples"])
        self.driver_sample = _joint_rows(d.get("joint"))
        self.driver_sample_values = sum(1 + len(values) for _, values in self.driver_sample)
        self._known_untracked = set()
        if "joint_names" in d:  # a warm-up saved before the joint sample starts one now
            self.joint_names = list(d["joint_names"])
            self.joint_rows = [list(r) for r in d["joint_rows"]]


class LabelSummary:
    """A label warm-up: each label's count (bounded like a categorical column). A regression's labels
    become a numeric reference, read back from their categories (:func:`label_numbers`)."""

    def __init__(self, limits: Limits = Limits()):
        self.labels = ColumnSummary("categorical", limits.max_categories)
        self.events = 0

    def __len__(self) -> int:
        return self.events

    def add(self, label: Any) -> None:
        self.events += 1
        if label is not None:
            self.labels.add(label)

    def build(self, top_k: int = 20, bins: int = 10, numeric: bool = False) -> "ColumnReference | None":
        """The label reference: the categories' (a label's JSON spelling: the label 1.0 is the category
        "1"), or with ``numeric`` (the model is a regression) :func:`numeric_label_reference`'s."""
        if not self.events:
            return None
        if numeric:
            built = numeric_label_reference(self.labels.counts, self.events, self.labels.overflow, bins)
            if built is not None:
                return built
        return self.labels.categorical(self.events, top_k)

    def snapshot(self) -> dict[str, Any]:
        return {"events": self.events, "labels": self.labels.snapshot()}

    def restore(self, d: Mapping[str, Any]) -> None:
        self.events = d["events"]
        self.labels = ColumnSummary.from_snapshot(d["labels"], self.labels.max_categories)


def label_numbers(counts: Mapping[str, int]) -> tuple[list[float], int, int]:
    """Labels counted by category as numbers (a number's category, its JSON spelling, reads back exactly):
    (the finite numbers, in the order of ``counts``; how many were not finite; how many were not numbers).

    >>> label_numbers({"1": 2, "2.5": 1, "nan": 1, "yes": 3})
    ([1.0, 1.0, 2.5], 1, 3)
    """
    numbers: list[float] = []
    nonfinite = mismatches = 0
    for key, count in counts.items():
        try:
            value = float(key)
        except ValueError:
            mismatches += count
            continue
        if math.isfinite(value):
            numbers.extend([value] * count)
        else:
            nonfinite += count
    return numbers, nonfinite, mismatches


def numeric_label_reference(counts: Mapping[str, int], events: int, overflow: int, bins: int
                            ) -> "NumericReference | None":
    """A regression's label reference from its labels' category counts (``events`` labels, null ones among
    them; ``overflow``: labels past the categories counted one by one, whose values are not known): on
    ``bins`` quantile bins, like a numeric feature's; ``None`` when some label is not a number (the labels
    are then categories) or none is finite."""
    numbers, nonfinite, mismatches = label_numbers(counts)
    if mismatches or not numbers:
        return None
    present = sum(counts.values())
    return NumericReference.build(numbers, bins, missing=events - present - overflow, mismatches=nonfinite)


def _joint_columns(rows: Sequence[tuple[Any, Mapping[str, Any]]]) -> dict[str, Any]:
    """The joint sample column by column (what a snapshot keeps): the targets, and per feature its
    values aligned with them (None where the event had none)."""
    names = sorted({n for _, values in rows for n in values})
    return {"targets": [t for t, _ in rows],
            "features": {n: [values.get(n) for _, values in rows] for n in names}}


def _joint_rows(d: Mapping[str, Any] | None) -> list[tuple[Any, dict[str, Any]]]:
    if not d:
        return []
    columns = d["features"]
    return [(t, {n: v[i] for n, v in columns.items() if v[i] is not None}) for i, t in enumerate(d["targets"])]


def _sampled(value: Any) -> Any:
    """What the joint sample keeps of a value: a number as it is, anything else as its category key."""
    finite = value.__class__ is int or (value.__class__ is float and math.isfinite(value))
    return value if finite else category_key(value)


def _bin(ref: ColumnReference, value: Any) -> int | None:
    """``value``'s bin in ``ref`` (None for a value a numeric reference cannot bin)."""
    if isinstance(ref, NumericReference):
        return ref.bin_index(float(value)) if is_finite_number(value) else None
    return ref.bin_index(value)


def numeric_labels(task: str, score: NumericReference | None, predicted_label: CategoricalReference | None) -> bool:
    """Whether a model's labels are judged as numbers: its task is regression, configured (``task``) or
    told by its reference's predictions as :func:`stream_monitor.performance.infer_task` tells it (no
    predicted label and a score outside [0, 1]).

    >>> numeric_labels("", NumericReference.build([0.5, 3.0]), None), numeric_labels("classification", None, None)
    (True, False)
    """
    if task:
        return task == "regression"
    return predicted_label is None and score is not None and not (0.0 <= score.minimum and score.maximum <= 1.0)


def build_labels_reference(labels: Sequence[LabelEvent], top_k: int = 20, limits: Limits = Limits(),
                           bins: int = 10, numeric: bool = False) -> ColumnReference | None:
    summary = LabelSummary(limits)
    for event in labels:
        summary.add(event.label)
    return summary.build(top_k, bins, numeric)


def build_reference(model_id: str, events: Iterable[InferenceEvent], feature_kinds: Mapping[str, str] | None,
                    bins: int = 10, top_k: int = 20, source: str = "warmup",
                    labels: Sequence[LabelEvent] = (), limits: Limits = Limits(),
                    joint_features: int = 10, task: str = "") -> ReferenceProfile:
    """Profile a model's events. Kinds not given are inferred: numbers → numeric, else categorical.

    Inferred features are those present in at least 1 % of the events (and twice), among the
    first ``limits.max_inferred_columns`` names to appear: stray keys do not become columns.
    The events pass through a :class:`WarmupSummary`, as in the service's warm-up.
    """
    summary = WarmupSummary(feature_kinds, limits)
    scored: dict[str, tuple[float, str | None]] = {}  # with labels: each scored event's prediction, by event id
    for event in events:
        summary.add(event)
        if labels and is_finite_number(event.score):
            scored.setdefault(event.event_id, (float(event.score), None if event.predicted_label is None
                                               else category_key(event.predicted_label)))
    label_summary = None
    pairs: list[tuple[float, str | None, str]] = []
    if labels:
        label_summary = LabelSummary(limits)
        for label in labels:
            label_summary.add(label.label)
            prediction = scored.pop(label.event_id, None)  # a label joins its event once
            if prediction is not None and len(pairs) < MAX_REFERENCE_PAIRS:
                pairs.append((*prediction, category_key(label.label)))
    profile = summary.build(model_id, bins, top_k, source, labels=label_summary, joint_features=joint_features,
                            task=task)
    return replace(profile, pairs=tuple(pairs)) if pairs else profile


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
