"""Drivers: the features that moved most in the window of a model-wide alert.

A prediction or performance alert (and, once wired, estimated-performance and
multivariate alerts) names the features whose PSI rose most in the same window,
weighed by how strongly each is associated with the score in the reference
(normalised mutual information of their reference bins). Pure functions of
plain values; the alert id never depends on them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, Sequence

from .events import Alert

SIGNALS = frozenset({"prediction", "performance", "estimated_performance", "multivariate"})
LISTED = 5  # drivers carried by an alert
NAMED = 3  # of those, at most this many named in its message
MOVED = 0.1  # a feature's PSI from which the message calls it a driver
JOINT_SAMPLE = 5000  # warm-up events whose features and score are kept together for the association
JOINT_VALUES = 1_000_000  # and at most this many values of them in all (a wide model keeps fewer events)


def rank(psis: Mapping[str, float], association: Mapping[str, float] | None,
         listed: int = LISTED) -> tuple[dict, ...]:
    """The features ranked by PSI × association (PSI alone when the reference has no association),
    ties broken by name; each as ``{"name", "psi", "association"}``."""
    def weight(name: str) -> float:
        psi = psis[name]
        if association is None:
            return psi
        return psi * association.get(name, 0.0)

    names = sorted((n for n, v in psis.items() if v is not None and math.isfinite(v)),
                   key=lambda n: (-weight(n), -psis[n], n))
    return tuple({"name": n, "psi": float(psis[n]),
                  "association": None if association is None or n not in association else float(association[n])}
                 for n in names[:listed])


def message_tail(drivers: Sequence[Mapping]) -> str:
    """What the alert's message adds: the top drivers that moved, or that none did."""
    moved = [d for d in drivers if d["psi"] >= MOVED][:NAMED]
    if not moved:
        return f"; no feature moved in its last closed window (every PSI < {MOVED:g})" if drivers else ""
    return "; drivers: " + ", ".join(f"{d['name']} (PSI {d['psi']:.2g})" for d in moved)


def attach(alert: Alert, drivers: Sequence[Mapping]) -> Alert:
    """``alert`` carrying ``drivers`` and naming them in its message; its id unchanged."""
    return replace(alert, drivers=tuple(drivers), message=alert.message + message_tail(drivers))


def normalised_mutual_information(pairs: Sequence[tuple[int, int]]) -> float:
    """NMI (I / sqrt(H(x) H(y)), I bias-corrected) of paired bin indices; 0 when either side is constant,
    independent-looking or there are no pairs."""
    n = len(pairs)
    if not n:
        return 0.0
    joint: dict[tuple[int, int], int] = {}
    xs: dict[int, int] = {}
    ys: dict[int, int] = {}
    for x, y in pairs:
        joint[(x, y)] = joint.get((x, y), 0) + 1
        xs[x] = xs.get(x, 0) + 1
        ys[y] = ys.get(y, 0) + 1

    def entropy(counts: Mapping) -> float:
        return -sum(c / n * math.log(c / n) for c in counts.values())

    hx, hy = entropy(xs), entropy(ys)
    if hx <= 0 or hy <= 0:
        return 0.0
    mi = sum(c / n * math.log(c * n / (xs[x] * ys[y])) for (x, y), c in joint.items())
    mi -= (len(joint) - len(xs) - len(ys) + 1) / (2 * n)  # Miller-Madow: the plug-in's bias on a small sample
    return max(0.0, min(1.0, mi / math.sqrt(hx * hy)))
