"""Fairness on the stream: per protected attribute, the groups' rates per window and the gaps between them.

For each attribute (a feature, ``[models.<id>.fairness] attributes``) each
event falls in a **group**: one of the attribute's most frequent categories in
the model's reference (at most ``max_groups``; an attribute the reference
holds as numeric takes the first ``max_groups`` values it sees), ``__other__``
for any other value, ``__missing__`` when absent or null (shown, never
compared). Per tumbling window, per group:

- **demographic parity** (``window`` predictions): the favourable-outcome rate
  (a predicted label equal to ``favorable``, or a score at or above
  ``decision_threshold``); the gap is the largest rate minus the smallest,
  the ratio the smallest over the largest (the four-fifths rule asks ≥ 0.8);
- **equal opportunity** (``label_window`` joined pairs): the true-positive rate,
  among the pairs whose label is ``favorable``;
- **equalized odds**: the true-positive and the false-positive rate (among
  the labelled negatives); its gap is the larger of the two.

A window is **significant** when some pair of groups (each with at least
``min_group`` events counted in the rate) is further apart than ``max_gap``
by a one-sided two-proportion test of gap > ``max_gap`` (Agresti–Caffo: one
success and one failure added per group), Holm-corrected over the pairs
compared (both rates' pairs for equalized odds) at the window's share of the
model's false-alarm budget (:func:`stream_monitor.calibration.per_window`;
each (attribute, metric) is one test of the model's split). A significant
window fires the (attribute, metric) episode, ``critical`` from twice
``max_gap``; it resolves at the first window whose gap is below
``hysteresis × max_gap``.

>>> counts = np.array([[1000, 500], [1000, 200]])  # per group: events, favourable
>>> tested = compare(counts[:, 1], counts[:, 0], [True, True], max_gap=0.1, alpha=1e-6)
>>> round(tested.gap, 2), tested.rejected[0][:2]
(0.3, (0, 1))
>>> compare(np.array([500, 480]), np.array([1000, 1000]), [True, True], 0.1, 1e-6).rejected
[]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats

from . import history
from .calibration import per_window
from .codec import category
from .config import FairnessConfig
from .detectors.episode import Episode, Transition
from .events import Alert
from .reference import OTHER, CategoricalReference, ReferenceProfile

MISSING = "__missing__"
LABEL_METRICS = ("equal_opportunity", "equalized_odds")
WORDS = {"demographic_parity": "demographic parity", "equal_opportunity": "equal opportunity",
         "equalized_odds": "equalized odds"}
RATE_WORDS = {"rate": "favourable-outcome rate", "tpr": "true-positive rate", "fpr": "false-positive rate"}
# the columns of a window's counts per group
PREDICTION_COLUMNS = ("events", "favorable")
PAIR_COLUMNS = ("positives", "true_positives", "negatives", "false_positives")
SHOWN_PAIRS = 10  # rejected pairs an alert lists


class Tested(NamedTuple):
    gap: float  # the largest rate minus the smallest, over the groups compared (nan: fewer than two)
    low: int  # the group with the smallest rate
    high: int  # and the largest
    rejected: list[tuple[int, int, float, float]]  # (group, group, gap, p-value), Holm-rejected
    tests: int  # the pairs compared
    rate: int = 0  # which of the rates compared had the largest gap


def pair_p_values(hits: np.ndarray, totals: np.ndarray, eligible: Sequence[bool],
                  max_gap: float) -> list[tuple[int, int, float, float]]:
    """Per pair of eligible groups: (i, j, |rate_i − rate_j|, p-value of gap > ``max_gap``), one-sided,
    Agresti–Caffo adjusted (a rate of 0 or 1 in few events still has a spread)."""
    index = [g for g, ok in enumerate(eligible) if ok and totals[g] > 0]
    out = []
    for a, i in enumerate(index):
        for j in index[a + 1:]:
            rate_i, rate_j = hits[i] / totals[i], hits[j] / totals[j]
            gap = abs(rate_i - rate_j)
            adj_i, adj_j = (hits[i] + 1) / (totals[i] + 2), (hits[j] + 1) / (totals[j] + 2)
            se = math.sqrt(adj_i * (1 - adj_i) / (totals[i] + 2) + adj_j * (1 - adj_j) / (totals[j] + 2))
            out.append((i, j, float(gap), float(stats.norm.sf((gap - max_gap) / se))))
    return out


def holm(p_values: Sequence[float], alpha: float) -> list[int]:
    """The indices Holm's step-down procedure rejects at family-wise level ``alpha``.

    >>> holm([0.01, 0.04, 0.03], 0.05), holm([0.001, 0.2], 0.05)
    ([0], [0])
    """
    order = sorted(range(len(p_values)), key=lambda k: p_values[k])
    rejected = []
    for rank, k in enumerate(order):
        if p_values[k] > alpha / (len(p_values) - rank):
            break
        rejected.append(k)
    return rejected


def compare(hits: np.ndarray, totals: np.ndarray, eligible: Sequence[bool], max_gap: float,
            alpha: float) -> Tested:
    """One rate's groups compared: the gap and the pairs Holm rejects."""
    return compare_many([(hits, totals)], eligible, max_gap, alpha)


def compare_many(rates: Sequence[tuple[np.ndarray, np.ndarray]], eligible_of: Any, max_gap: float,
                 alpha: float) -> Tested:
    """Several rates (equalized odds: the true- and false-positive rates) in one family: the largest gap,
    the pairs Holm rejects over all of them. ``eligible_of``: per group, or per rate a list per group."""
    tests: list[tuple[int, int, float, float]] = []
    gap, low, high, widest = math.nan, -1, -1, 0
    for k, (hits, totals) in enumerate(rates):
        eligible = eligible_of[k] if len(rates) > 1 else eligible_of
        pairs = pair_p_values(hits, totals, eligible, max_gap)
        tests.extend(pairs)
        for i, j, g, _ in pairs:
            if not g <= gap:  # nan or larger
                low, high = (i, j) if hits[i] / totals[i] <= hits[j] / totals[j] else (j, i)
                gap, widest = g, k
    rejected = [tests[k] for k in holm([t[3] for t in tests], alpha)]
    return Tested(gap, low, high, rejected, len(tests), widest)


class Groups:
    """One attribute's groups: names, with ``__other__`` and ``__missing__`` first."""

    def __init__(self, categories: Sequence[str] | None, max_groups: int):
        """``categories``: the reference's (most frequent first); ``None``: the first values seen."""
        self.max_groups = max_groups
        self.fixed = categories is not None
        self.names = [OTHER, MISSING, *(list(categories or [])[:max_groups])]
        self.index = {name: k for k, name in enumerate(self.names)}

    def of(self, value: Any) -> int:
        """The group of a raw value (a number or a boolean by its JSON spelling)."""
        if value is None:
            return 1
        key = value if isinstance(value, str) else category(value)
        found = self.index.get(key)
        if found is not None:
            return found
        if self.fixed or len(self.names) - 2 >= self.max_groups:
            return 0
        self.index[key] = len(self.names)
        self.names.append(key)
        return self.index[key]

    def compared(self) -> list[bool]:
        """Which groups may be compared: every group but ``__missing__``."""
        return [k != 1 for k in range(len(self.names))]


class TumblingCounts:
    """Tumbling windows of ``window`` items; per group the sum of each item's 0/1 marks (columns)."""

    def __init__(self, window: int, columns: int):
        self.window = window
        self.counts = np.zeros((2, columns), dtype=np.int64)
        self.filled = 0
        self.closed = 0

    def add(self, groups: np.ndarray, marks: np.ndarray, size: int) -> list[tuple[int, np.ndarray]]:
        """Items in order (``groups``: each item's group; ``marks``: items × columns, 0/1); ``size``: the
        groups there are. The closed windows as (index of the item that closed it, counts: groups × columns)."""
        if self.counts.shape[0] < size:
            grown = np.zeros((size, self.counts.shape[1]), dtype=np.int64)
            grown[:self.counts.shape[0]] = self.counts
            self.counts = grown
        out = []
        start = 0
        while start < len(groups):
            stop = min(len(groups), start + self.window - self.filled)
            np.add.at(self.counts, groups[start:stop], marks[start:stop])
            self.filled += stop - start
            if self.filled == self.window:
                out.append((stop - 1, self.counts.copy()))
                self.counts[:] = 0
                self.filled = 0
                self.closed += 1
            start = stop
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "filled": self.filled, "closed": self.closed}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], dtype=np.int64).reshape(-1, self.counts.shape[1])
        self.filled = state["filled"]
        self.closed = state["closed"]


@dataclass
class AttributeMonitor:
    """One protected attribute: its groups, its prediction and pair windows, one episode per metric."""

    attribute: str
    groups: Groups
    predictions: TumblingCounts
    pairs: TumblingCounts
    episodes: dict[str, Episode]
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # per metric, the last window's findings


class Fairness:
    """One model's fairness in one partition: per attribute, windows of predictions (parity) and of joined
    pairs (opportunity, odds), each closed window judged per metric."""

    def __init__(self, model_id: str, config: FairnessConfig, reference: ReferenceProfile | None,
                 false_alarms_per_million: float, hysteresis: float = 0.8):
        self.model_id = model_id
        self.config = config
        self.hysteresis = hysteresis
        self.metrics = tuple(dict.fromkeys(config.metrics))
        self.settings = {"budget": false_alarms_per_million, "hysteresis": hysteresis}
        self.alpha = {"predictions": per_window(false_alarms_per_million, config.window),
                      "pairs": per_window(false_alarms_per_million, config.label_window)}
        self.attributes = [self._attribute(a, reference) for a in config.attributes]
        self.points = history.pending()  # each closed window's gap per metric, for the report (not saved)

    def _attribute(self, attribute: str, reference: ReferenceProfile | None) -> AttributeMonitor:
        ref = None if reference is None else reference.features.get(attribute)
        categories = ref.categories if isinstance(ref, CategoricalReference) else None
        return AttributeMonitor(attribute, Groups(categories, self.config.max_groups),
                                TumblingCounts(self.config.window, len(PREDICTION_COLUMNS)),
                                TumblingCounts(self.config.label_window, len(PAIR_COLUMNS)),
                                {m: Episode(resolve_after=None, hysteresis=self.hysteresis) for m in self.metrics})

    @property
    def wants_pairs(self) -> bool:
        return any(m in LABEL_METRICS for m in self.metrics)

    def favorable(self, score: Any, label: Any) -> bool | None:
        """Whether a prediction is favourable (``None``: it has neither a label nor a finite score)."""
        if label is not None:
            return category(label) == self.config.favorable
        if isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score):
            return score >= self.config.decision_threshold
        return None

    def add_predictions(self, values: Sequence[Mapping[str, Any]], favorable: Sequence[bool],
                        offsets: Sequence[int], partition: int,
                        times: Sequence[int | None]) -> list[tuple[int, Alert]]:
        """Predictions in order: each one's attribute values and whether it was favourable; the alerts
        as (index, alert), per window in attribute then metric order."""
        if "demographic_parity" not in self.metrics or not values:
            return []
        marks = np.ones((len(values), 2), dtype=np.int64)
        marks[:, 1] = np.fromiter(favorable, dtype=bool, count=len(values))
        out = []
        for monitor in self.attributes:
            groups = np.fromiter((monitor.groups.of(v.get(monitor.attribute)) for v in values), dtype=np.int64,
                                 count=len(values))
            for j, counts in monitor.predictions.add(groups, marks, len(monitor.groups.names)):
                alert = self._judge(monitor, "demographic_parity", counts, offsets[j], partition, times[j])
                if alert is not None:
                    out.append((j, alert))
        return sorted(out, key=lambda t: t[0])

    def add_group_indices(self, monitor: AttributeMonitor, groups: np.ndarray, favorable: np.ndarray,
                          offsets: Sequence[int], partition: int, times: Sequence[int | None]) -> list[tuple[int, Alert]]:
        """Parity over predictions already mapped to ``monitor``'s groups (vectorised; the bench and tests)."""
        marks = np.ones((len(groups), 2), dtype=np.int64)
        marks[:, 1] = favorable
        out = []
        for j, counts in monitor.predictions.add(groups, marks, len(monitor.groups.names)):
            alert = self._judge(monitor, "demographic_parity", counts, offsets[j], partition, times[j])
            if alert is not None:
                out.append((j, alert))
        return out

    def add_pairs(self, values: Sequence[Mapping[str, Any]], predicted: Sequence[bool], truth: Sequence[bool],
                  offsets: Sequence[int], partition: int, times: Sequence[int | None]) -> list[tuple[int, Alert]]:
        """Joined pairs in order: the prediction's attribute values, whether it was favourable and whether
        its label is; the alerts of equal opportunity and equalized odds as (index, alert)."""
        if not self.wants_pairs or not values:
            return []
        p = np.fromiter(predicted, dtype=bool, count=len(values))
        t = np.fromiter(truth, dtype=bool, count=len(values))
        marks = np.stack([t, t & p, ~t, ~t & p], axis=1).astype(np.int64)
        out = []
        for monitor in self.attributes:
            groups = np.fromiter((monitor.groups.of(v.get(monitor.attribute)) for v in values), dtype=np.int64,
                                 count=len(values))
            for j, counts in monitor.pairs.add(groups, marks, len(monitor.groups.names)):
                for metric in self.metrics:
                    if metric in LABEL_METRICS:
                        alert = self._judge(monitor, metric, counts, offsets[j], partition, times[j])
                        if alert is not None:
                            out.append((j, alert))
        return sorted(out, key=lambda t: t[0])

    def _judge(self, monitor: AttributeMonitor, metric: str, counts: np.ndarray, offset: int, partition: int,
               event_time_ms: int | None) -> Alert | None:
        alpha = self.alpha["predictions" if metric == "demographic_parity" else "pairs"]
        found, transition = judge(self.config, metric, monitor.groups.names, counts, alpha, monitor.episodes[metric])
        monitor.last[metric] = found
        self.points.append(window_point(self.model_id, self.config, monitor.attribute, metric, found, offset,
                                        partition, event_time_ms))
        if transition is None:
            return None
        reference, current, message = describe(self.model_id, self.config, self.hysteresis, monitor.attribute,
                                               metric, transition, found)
        alert = Alert(transition.status, transition.severity, self.model_id, "fairness", monitor.attribute, metric,
                      float(found["gap"]), self.config.max_gap, reference, current, partition, offset, event_time_ms,
                      message)
        monitor.episodes[metric].last_alert_id = alert.alert_id
        return alert

    def info(self) -> dict[str, Any]:
        """Per attribute and metric, the last window's groups, rates and gap (status, page, metrics)."""
        return {m.attribute: {"windows": {"predictions": m.predictions.closed, "pairs": m.pairs.closed},
                              "metrics": {k: dict(m.last[k]) for k in self.metrics if k in m.last}}
                for m in self.attributes}

    def rows(self) -> list[dict[str, Any]]:
        """One detector row per (attribute, metric) (the status table's shape)."""
        return [{"signal": "fairness", "name": m.attribute, "detector": metric,
                 "statistic": m.last.get(metric, {}).get("gap"), "threshold": self.config.max_gap,
                 "critical": 2 * self.config.max_gap, "firing": e.firing,
                 "severity": e.severity if e.firing else None, "last_alert_id": e.last_alert_id}
                for m in self.attributes for metric, e in m.episodes.items()]

    def firing(self) -> list[tuple[str, str]]:
        """The (attribute, metric) episodes firing now."""
        return [(m.attribute, metric) for m in self.attributes for metric, e in m.episodes.items() if e.firing]

    def snapshot(self) -> dict[str, Any]:
        return {"settings": self.settings,
                "attributes": {m.attribute: {"groups": m.groups.names[2:], "predictions": m.predictions.snapshot(),
                                             "pairs": m.pairs.snapshot(),
                                             "last": {k: m.last[k] for k in self.metrics if k in m.last},
                                             "episodes": {k: e.snapshot() for k, e in m.episodes.items()}}
                               for m in self.attributes}}

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Continue from a snapshot; ``False`` (nothing restored) when taken with other settings."""
        if dict(state["settings"]) != self.settings:
            return False
        for monitor in self.attributes:
            saved = state["attributes"].get(monitor.attribute)
            if saved is None:
                continue
            names = [OTHER, MISSING, *saved["groups"]]
            monitor.groups.names = names
            monitor.groups.index = {name: k for k, name in enumerate(names)}
            monitor.predictions.restore(saved["predictions"])
            monitor.pairs.restore(saved["pairs"])
            monitor.last = {k: dict(v) for k, v in saved["last"].items()}
            for metric, episode in monitor.episodes.items():
                if metric in saved["episodes"]:
                    episode.restore(saved["episodes"][metric])
        return True


def judge(config: FairnessConfig, metric: str, names: Sequence[str], counts: np.ndarray, alpha: float,
          episode: Episode) -> tuple[dict[str, Any], Transition | None]:
    """One closed window of one attribute and metric (``counts``: groups × columns, in ``names``' order):
    what it showed, and the episode's transition (fires when some pair is significantly more than
    ``max_gap`` apart; resolves when the gap is below ``hysteresis × max_gap``)."""
    compared = [k != 1 for k in range(len(names))]  # every group but __missing__
    if len(counts) < len(names):
        counts = np.vstack([counts, np.zeros((len(names) - len(counts), counts.shape[1]), dtype=np.int64)])
    first = [ok and counts[g, 0] >= config.min_group for g, ok in enumerate(compared)]
    if metric == "equalized_odds":
        rates = [(counts[:, 1], counts[:, 0]), (counts[:, 3], counts[:, 2])]
        eligible: Any = [first, [ok and counts[g, 2] >= config.min_group for g, ok in enumerate(compared)]]
    else:
        rates, eligible = [(counts[:, 1], counts[:, 0])], first
    tested = compare_many(rates, eligible, config.max_gap, alpha)
    found = findings(metric, names, counts, tested, alpha)
    if math.isnan(tested.gap):
        return found, None
    if episode.firing:
        return found, episode.level(tested.gap, config.max_gap, 2 * config.max_gap)
    severity = "critical" if tested.gap >= 2 * config.max_gap else "warning"
    return found, episode.detected(severity) if tested.rejected else None


def window_point(model_id: str, config: FairnessConfig, attribute: str, metric: str, found: Mapping[str, Any],
                 offset: int | None, partition: int | None, event_time_ms: int | None) -> dict[str, Any]:
    """A closed window's history point: the gap against ``max_gap``, with the groups (the report's table)."""
    point = history.window_point(model_id, "fairness", attribute, metric, found["gap"], config.max_gap,
                                 2 * config.max_gap, offset, partition, event_time_ms)
    point["groups"] = found["groups"]
    return point


def findings(metric: str, names: Sequence[str], counts: np.ndarray, tested: Tested, alpha: float) -> dict[str, Any]:
    """What a window showed for one metric: per group its counts and rates, the gap, the rejected pairs."""
    groups: dict[str, dict[str, Any]] = {}
    for g in [*range(2, len(names)), 0, 1]:  # the named groups, then __other__ and __missing__
        name = names[g]
        row = counts[g]
        if metric == "demographic_parity":
            if row[0]:
                groups[name] = {"events": int(row[0]), "favorable": int(row[1]), "rate": float(row[1] / row[0])}
        elif row[0] or row[2]:
            shown = {"positives": int(row[0]), "true_positives": int(row[1]),
                     "tpr": float(row[1] / row[0]) if row[0] else None}
            if metric == "equalized_odds":
                shown.update(negatives=int(row[2]), false_positives=int(row[3]),
                             fpr=float(row[3] / row[2]) if row[2] else None)
            groups[name] = shown
    gap = None if math.isnan(tested.gap) else float(tested.gap)
    found: dict[str, Any] = {"gap": gap, "rate": ("rate", "tpr", "fpr")[(metric != "demographic_parity")
                                                                       + tested.rate], "groups": groups, "tests": tested.tests, "alpha": alpha,
                             "events": int(counts[:, 0].sum() + (0 if metric == "demographic_parity"
                                                                 else counts[:, 2].sum())),
                             "rejected": [{"groups": [names[i], names[j]], "gap": g, "p_value": p}
                                          for i, j, g, p in tested.rejected[:SHOWN_PAIRS]]}
    if gap is not None:
        found["lowest"], found["highest"] = names[tested.low], names[tested.high]
    if metric == "demographic_parity" and gap is not None:
        rates = [groups[names[tested.low]]["rate"], groups[names[tested.high]]["rate"]]
        found["ratio"] = rates[0] / rates[1] if rates[1] > 0 else 1.0
        found["four_fifths"] = found["ratio"] >= 0.8
    return found


def describe(model_id: str, config: FairnessConfig, hysteresis: float, attribute: str, metric: str,
             transition: Transition, found: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A fairness alert's reference and current payloads and its message."""
    what = f"{WORDS[metric]} of {model_id} by {attribute}"
    unit = "predictions" if metric == "demographic_parity" else "labelled predictions"
    gap = found["gap"]
    low, high = found["lowest"], found["highest"]
    rate = found["rate"]
    if transition.status == "firing":
        best = min(r["p_value"] for r in found["rejected"])
        text = (f"{what}: the {RATE_WORDS[rate]} is {found['groups'][low][rate]:.3g} for {low} and "
                f"{found['groups'][high][rate]:.3g} for {high}, a gap of {gap:.3g} > {config.max_gap:g} "
                f"({transition.severity}; p = {best:.2g}, Holm over {found['tests']} pair{'s' if found['tests'] != 1 else ''} at "
                f"{found['alpha']:.2g})")
        if "ratio" in found:
            text += (f"; ratio {found['ratio']:.2f}, four-fifths rule "
                     f"{'met' if found['four_fifths'] else 'failed'}")
    else:
        text = f"{what}: the largest gap is back to {gap:.3g} (< {hysteresis * config.max_gap:.3g})"
    text += f" over the last {found['events']} {unit}"
    reference = {"max_gap": config.max_gap, "alpha": found["alpha"], "tests": found["tests"], "correction": "holm",
                 "min_group": config.min_group, "favorable": config.favorable}
    current = {key: value for key, value in found.items() if key not in ("alpha", "tests")}
    return reference, current, text


def shown(info: Mapping[str, Any]) -> list[str]:
    """Per attribute and metric, one line of the last window's groups (the status page and ``status``).

    >>> shown({"gender": {"windows": {"predictions": 3, "pairs": 0}, "metrics": {"demographic_parity": {
    ...     "gap": 0.3, "rate": "rate", "ratio": 0.4, "four_fifths": False, "groups": {
    ...     "F": {"events": 900, "favorable": 180, "rate": 0.2}, "M": {"events": 1000, "favorable": 500, "rate": 0.5}}}}}})
    ['gender · demographic parity: gap 0.3 (favourable-outcome rate F 0.2 of 900 · M 0.5 of 1,000), ratio 0.4 (four-fifths rule failed)']
    """
    lines = []
    for attribute, entry in info.items():
        for metric, found in (entry.get("metrics") or {}).items():
            rates = [key for key in ("rate", "tpr", "fpr") if any(key in g for g in found["groups"].values())]
            parts = []
            for key in rates:
                count = {"rate": "events", "tpr": "positives", "fpr": "negatives"}[key]
                cells = " · ".join(f"{name} {_short(g.get(key))} of {g[count]:,}" for name, g in found["groups"].items()
                                   if g.get(count))
                parts.append(f"{RATE_WORDS[key]} {cells}")
            gap = "—" if found.get("gap") is None else f"{found['gap']:.3g}"
            line = f"{attribute} · {WORDS[metric]}: gap {gap} ({'; '.join(parts)})"
            if found.get("ratio") is not None:
                line += (f", ratio {found['ratio']:.2g} (four-fifths rule "
                         f"{'met' if found['four_fifths'] else 'failed'})")
            lines.append(line)
    return lines


def _short(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"
