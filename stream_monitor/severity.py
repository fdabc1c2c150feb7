"""How big a change is: the size of the level after a point detector's change against the reference,
and the severity that size earns.

ADWIN and Page-Hinkley decide *that* something changed; these functions say
*how much*, from the level after the change (ADWIN: the mean of the new
sub-window; Page-Hinkley: the mean since the change began) and the reference:

- a numeric level (a feature, the score, latency, an absolute error):
  |level − reference mean| / reference standard deviation;
- a mean reference rank (what a column's ADWIN sees): the shift of a normal
  distribution that gives that mean rank, √2 · |Φ⁻¹(rank)| (0.5 → 0; a 1-sd
  shift of a normal column gives a mean rank of 0.76 → 1.0);
- an error rate: Cohen's h, |2·asin√new − 2·asin√old|, the difference on the
  scale where a rate's spread no longer depends on its level (0.001 → 0.2 is
  0.86; 0.19 → 0.8 is 1.31; 0.1 → 0.15 is 0.15).

A change of at least :data:`CRITICAL_SHIFT` standard deviations, or of an
error rate by at least :data:`CRITICAL_RATE_EFFECT`, is ``critical``; a
smaller one ``warning``. Pure functions of plain numbers.

>>> shift_in_sd(30.2, 0.0, 1.0), severity(shift_in_sd(30.2, 0.0, 1.0))
(30.2, 'critical')
>>> round(rank_shift(0.76), 2), severity(rank_shift(0.76))
(1.0, 'warning')
>>> round(rate_effect(0.2, 0.001), 2), rate_severity(0.2, 0.001), rate_severity(0.00521, 0.0011)
(0.86, 'critical', 'warning')
"""

from __future__ import annotations

import math
from statistics import NormalDist

CRITICAL_SHIFT = 3.0  # reference standard deviations between the level after a change and the reference mean
CRITICAL_RATE_EFFECT = 0.5  # Cohen's h between the error rate after a change and before it ("medium" and up)
_RANK_EDGE = 1e-9  # a mean rank of exactly 0 or 1 is read as this close to it
_NORMAL = NormalDist()


def shift_in_sd(level: float, mean: float, std: float) -> float:
    """|level − mean| in standard deviations (``std`` ≤ 0 or not finite: any difference is infinite)."""
    gap = abs(level - mean)
    if not (std > 0 and math.isfinite(std)):
        return math.inf if gap > 0 else 0.0
    return gap / std


def rank_shift(mean_rank: float) -> float:
    """The mean shift, in standard deviations, of a normal distribution whose values have ``mean_rank``
    as their mean rank in the unshifted one: √2 · |Φ⁻¹(mean_rank)|."""
    p = min(max(mean_rank, _RANK_EDGE), 1.0 - _RANK_EDGE)
    return math.sqrt(2.0) * abs(_NORMAL.inv_cdf(p))


def rate_effect(new: float, old: float) -> float:
    """Cohen's h between two rates in [0, 1]."""
    def arcsine(p: float) -> float:
        return 2.0 * math.asin(math.sqrt(min(max(p, 0.0), 1.0)))

    return abs(arcsine(new) - arcsine(old))


def severity(size_in_sd: float) -> str:
    """``critical`` from :data:`CRITICAL_SHIFT` standard deviations on, else ``warning``."""
    return "critical" if size_in_sd >= CRITICAL_SHIFT else "warning"


def rate_severity(new: float, old: float) -> str:
    """``critical`` when an error rate moved by Cohen's h ≥ :data:`CRITICAL_RATE_EFFECT`, else ``warning``."""
    return "critical" if rate_effect(new, old) >= CRITICAL_RATE_EFFECT else "warning"
