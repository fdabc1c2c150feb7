"""What an alert says: its reference and current payloads and its message, per detector kind (a column's
detectors, then a model's performance detectors).

Pure functions of plain values (no detector state), so the words of every
alert are in one place. The detector adapters (:mod:`stream_monitor.adapters`)
call them when an episode fires or resolves.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from . import severity
from .detectors.episode import Transition
from .reference import OTHER, ColumnReference, NumericReference

QUALITY_WORDS = {"missing": "missing rate", "type_mismatch": "type-mismatch rate", "non_finite": "non-finite rate",
                 "out_of_range": "share outside the reference range",
                 "unseen_category": "share of unseen categories"}

Description = tuple[dict[str, Any], dict[str, Any], str]  # reference payload, current payload, message
# A point episode's end: per window statistic of the column (detector, value, resolve level), and the window's size
WindowVerdict = tuple[tuple[tuple[str, float, float], ...], int] | tuple[()]
WINDOW_WORDS = {"psi": "PSI", "ks": "KS"}


def window_message(what: str, label: str, transition: Transition, value: float, warning: float, critical: float,
                   events: int) -> str:
    """A window statistic's firing (with the level it reached) or resolution."""
    if transition.status == "firing":
        level = critical if transition.severity == "critical" else warning
        return f"{what} of {label} is {value:.3g} ({transition.severity} ≥ {level:.3g}) over the last {events} events"
    return f"{what} of {label} is back to {value:.3g} (< {warning:.3g}) over the last {events} events"


def psi_description(ref: ColumnReference, label: str, transition: Transition, value: float, warning: float,
                    critical: float, counts: Sequence[int] | None) -> Description:
    counts = counts or []
    total = sum(counts) or 1
    if isinstance(ref, NumericReference):
        reference = {"edges": ref.edges, "proportions": ref.proportions}
    else:
        reference = {"categories": ref.categories + [OTHER], "proportions": ref.proportions}
    current = {"proportions": [c / total for c in counts], "events": total}
    return reference, current, window_message("PSI", label, transition, value, warning, critical, total)


def joint_description(features: Sequence[str], reference_events: int, tested: int, label: str,
                      transition: Transition, value: float, warning: float, critical: float,
                      top: Sequence[Sequence[Any]] | None, window: int) -> Description:
    """The joint test's alert: the pairs whose correlation moved most, the top three in the message."""
    moved = [{"features": [first, second], "reference": before, "current": now}
             for first, second, before, now in (top or [])]
    reference = {"features": list(features), "events": reference_events, "tested": tested}
    current = {"events": window, "correlations": moved}
    message = window_message("Hotelling T² of the correlations", label, transition, value, warning, critical,
                             window)
    if transition.status == "firing" and moved:
        message += "; moved most: " + ", ".join(
            f"corr({m['features'][0]}, {m['features'][1]}) {m['reference']:.2f} → {m['current']:.2f}" for m in moved)
    return reference, current, message


def ks_description(ref: NumericReference, label: str, transition: Transition, value: float, warning: float,
                   critical: float, window: int) -> Description:
    reference = {"quantiles": {"p5": ref.ks_grid[5], "p50": ref.ks_grid[50], "p95": ref.ks_grid[95]}}
    return reference, {"events": window}, window_message("KS", label, transition, value, warning, critical, window)


def quality_description(check: str, ref: ColumnReference, label: str, transition: Transition, value: float,
                        warning: float, critical: float, window: int) -> Description:
    reference: dict[str, Any] = {"missing": ref.missing, "events": ref.events}
    if isinstance(ref, NumericReference):
        reference.update(min=ref.minimum, max=ref.maximum, type_mismatches=ref.mismatches)
    else:
        reference.update(categories=len(ref.seen), singletons=ref.singletons)
    current = {"rate": value, "events": window}
    return reference, current, window_message(QUALITY_WORDS[check], label, transition, value, warning, critical,
                                              window)


def p95_description(model_id: str, transition: Transition, value: float, ceiling: float,
                    window: int) -> Description:
    text = (f"p95 latency of {model_id} is {value:g} ms, above the ceiling of {ceiling:g} ms, "
            f"over the last {window} events")
    if transition.status == "resolved":
        text = f"p95 latency of {model_id} is back to {value:g} ms (ceiling {ceiling:g} ms)"
    return {"p95_ceiling_ms": ceiling}, {"p95_ms": value, "events": window}, text


def _point_reference(ref: NumericReference) -> dict[str, Any]:
    return {"mean": ref.mean, "std": ref.std, "median": ref.grid[len(ref.grid) // 2] if ref.grid else None}


def _point_resolved(detector: str, label: str, back: WindowVerdict) -> str:
    if not back:
        return f"{detector} on {label}: resolved"
    statistics, window = back
    shown = ", ".join(f"{WINDOW_WORDS.get(name, name)} {value:.3g} < {level:.3g}" for name, value, level in statistics)
    return f"{detector} on {label}: back within its reference over the last {window} values ({shown}), resolved"


def _point_current(current: dict[str, Any], transition: Transition, back: WindowVerdict) -> dict[str, Any]:
    if transition.status == "resolved" and back:
        current["back_within"] = {"events": back[1], **{name: value for name, value, _ in back[0]}}
    return current


def _quantile(ref: NumericReference, rank: float) -> float | None:
    """The reference's value at ``rank`` (its permille grid, interpolated)."""
    grid = ref.grid
    if not grid:
        return None
    at = min(max(rank, 0.0), 1.0) * (len(grid) - 1)
    low = int(at)
    high = min(low + 1, len(grid) - 1)
    return grid[low] + (grid[high] - grid[low]) * (at - low)


def adwin_description(ref: NumericReference, label: str, transition: Transition, mean_rank: float, window: int,
                      back: WindowVerdict = (), level: float | None = None) -> Description:
    """``level``: at a firing, the mean reference rank of the new sub-window (the values after the change);
    ``back``: at a resolution, the window statistics that found the column back within its reference."""
    current: dict[str, Any] = {"window_mean_rank": mean_rank, "window": window}
    if transition.status == "resolved":
        return _point_reference(ref), _point_current(current, transition, back), _point_resolved("adwin", label, back)
    if level is None:
        message = (f"ADWIN saw {label} move: over the last {window} values its mean reference rank "
                   f"is {mean_rank:.2f} (0.50 when unchanged)")
        return _point_reference(ref), current, message
    shift = severity.rank_shift(level)
    near = _quantile(ref, level)
    current.update(level_rank=level, shift_sd=shift, level=near)
    edge = 1.0 / max(ref.events, 1)
    where = (f"beyond the reference's maximum {ref.maximum:.4g}" if level >= 1.0 - edge else
             f"beyond the reference's minimum {ref.minimum:.4g}" if level <= edge else
             f"around the reference's {100 * level:.1f}th percentile, {near:.4g}")
    message = (f"ADWIN saw {label} move: since the change its values' mean reference rank is {level:.3f} "
               f"(0.50 when unchanged; {where}), a shift of about {shift:.1f} reference standard deviations "
               f"({transition.severity})")
    return _point_reference(ref), current, message


def page_hinkley_description(ref: NumericReference, label: str, transition: Transition, deviation: float,
                             threshold: float, back: WindowVerdict = (), level: float | None = None) -> Description:
    """``level``: at a firing, the mean of the values since the change began, in the column's units;
    ``back``: at a resolution, the window statistics that found the column back within its reference."""
    current: dict[str, Any] = {"cumulative_deviation": deviation}
    if transition.status == "resolved":
        return (_point_reference(ref), _point_current(current, transition, back),
                _point_resolved("page_hinkley", label, back))
    message = (f"Page-Hinkley saw a mean shift in {label}: cumulative deviation of normal scores "
               f"{deviation:.1f} > {threshold:g}")
    if level is not None:
        shift = severity.shift_in_sd(level, ref.mean, ref.std)
        current.update(level=level, shift_sd=shift)
        message = (f"Page-Hinkley saw a mean shift in {label}: its mean since the change began is {level:.4g} "
                   f"(reference {ref.mean:.4g} ± {ref.std:.3g}, {shift:.1f} standard deviations, "
                   f"{transition.severity}); cumulative deviation of normal scores {deviation:.1f} > {threshold:g}")
    return _point_reference(ref), current, message


# --- performance (joined prediction/label pairs) ---------------------------------------------------------------

def _performance_resolved(subject: str, model_id: str, resolve_after: int) -> str:
    return f"{subject} of {model_id}: no further change for {resolve_after} pairs, resolved"


def error_rate_description(model_id: str, transition: Transition, error_rate: float, before: float, pairs: int,
                           resolve_after: int) -> Description:
    """Classification: ADWIN saw the 0/1 error rate rise. ``error_rate``: at a firing, the rate after the
    change (the new sub-window's), else the window's; ``before``: the window's rate before the pair; the
    size of the rise is Cohen's h between the two (:mod:`stream_monitor.severity`)."""
    effect = severity.rate_effect(error_rate, before)
    message = (f"error rate of {model_id} rose to {error_rate:.3g} since the change (was {before:.3g}; "
               f"{effect:.2f} on Cohen's h, {transition.severity}): the model got worse (concept drift)")
    if transition.status == "resolved":
        message = _performance_resolved("error_rate", model_id, resolve_after)
    return {"error_rate": before}, {"error_rate": error_rate, "effect": effect, "pairs": pairs}, message


def absolute_error_description(model_id: str, transition: Transition, deviation: float, threshold: float,
                               resolve_after: int, errors: tuple[float, float] = (math.nan, math.nan),
                               level: float | None = None) -> Description:
    """Regression: Page-Hinkley saw the absolute error rise against the first pairs' errors (``errors``:
    their mean and standard deviation; ``level``: at a firing, the mean absolute error since the change
    began)."""
    mean, std = errors
    reference = {"threshold": threshold, "mean": mean, "std": std}
    current: dict[str, Any] = {"cumulative_deviation": deviation}
    message = (f"absolute error of {model_id} rose: Page-Hinkley cumulative deviation {deviation:.1f} "
               f"> {threshold:g} (concept drift)")
    if transition.status == "resolved":
        message = _performance_resolved("absolute_error", model_id, resolve_after)
    elif level is not None:
        shift = severity.shift_in_sd(level, mean, std)
        current.update(absolute_error=level, shift_sd=shift)
        message = (f"absolute error of {model_id} rose to {level:.4g} on average since the change began "
                   f"(reference {mean:.4g} ± {std:.3g}, {shift:.1f} standard deviations, {transition.severity}); "
                   f"Page-Hinkley cumulative deviation {deviation:.1f} > {threshold:g} (concept drift)")
    return reference, current, message


def limit_description(model_id: str, metric: str, kind: str, transition: Transition, value: float, limit: float,
                      pairs: int) -> Description:
    """A rolling metric past its floor (``kind`` "floor") or ceiling, or back within it."""
    side = "below its floor" if kind == "floor" else "above its ceiling"
    message = (f"{metric} of {model_id} is {value:.3g}, {side} {limit:g}, over the last {pairs} "
               "labelled predictions")
    if transition.status == "resolved":
        message = f"{metric} of {model_id} is back to {value:.3g} (limit {limit:g})"
    return {kind: limit}, {metric: value, "pairs": pairs}, message
