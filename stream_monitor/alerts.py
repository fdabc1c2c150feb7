"""What a column's alert says: its reference and current payloads and its message, per detector kind.

Pure functions of plain values (no detector state), so the words of every
alert are in one place. The detector adapters (:mod:`stream_monitor.adapters`)
call them when an episode fires or resolves.
"""

from __future__ import annotations

from typing import Any, Sequence

from . import severity
from .detectors.episode import Transition
from .reference import OTHER, ColumnReference, NumericReference

QUALITY_WORDS = {"missing": "missing rate", "type_mismatch": "type-mismatch rate", "non_finite": "non-finite rate",
                 "out_of_range": "share outside the reference range",
                 "unseen_category": "share of unseen categories"}

Description = tuple[dict[str, Any], dict[str, Any], str]  # reference payload, current payload, message


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


def _point_resolved(detector: str, label: str, resolve_after: int) -> str:
    return f"{detector} on {label}: no change for {resolve_after} values, resolved"


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
                      resolve_after: int, level: float | None = None) -> Description:
    """``level``: at a firing, the mean reference rank of the new sub-window (the values after the change)."""
    current: dict[str, Any] = {"window_mean_rank": mean_rank, "window": window}
    if transition.status == "resolved":
        return _point_reference(ref), current, _point_resolved("adwin", label, resolve_after)
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
                             threshold: float, resolve_after: int, level: float | None = None) -> Description:
    """``level``: at a firing, the mean of the values since the change began, in the column's units."""
    current: dict[str, Any] = {"cumulative_deviation": deviation}
    if transition.status == "resolved":
        return _point_reference(ref), current, _point_resolved("page_hinkley", label, resolve_after)
    message = (f"Page-Hinkley saw a mean shift in {label}: cumulative deviation of normal scores "
               f"{deviation:.1f} > {threshold:g}")
    if level is not None:
        shift = severity.shift_in_sd(level, ref.mean, ref.std)
        current.update(level=level, shift_sd=shift)
        message = (f"Page-Hinkley saw a mean shift in {label}: its mean since the change began is {level:.4g} "
                   f"(reference {ref.mean:.4g} ± {ref.std:.3g}, {shift:.1f} standard deviations, "
                   f"{transition.severity}); cumulative deviation of normal scores {deviation:.1f} > {threshold:g}")
    return _point_reference(ref), current, message
