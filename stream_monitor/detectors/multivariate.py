"""Joint drift: a Hotelling-type test of the features' pairwise correlations per window.

Fitted once on reference rows of ``k`` numeric features (:func:`fit_joint`): their mean and standard
deviation standardize each value (``z``), and their correlations ``ρ_ij`` (i < j) are the reference's
dependence structure. A window of ``n`` rows has its own correlations ``r_ij`` (from its sums of
``z_i`` and ``z_i·z_j``, which is why they are computed from exactly additive sums); to first order
``r_ij − ρ_ij`` is the window mean of ``ψ_ij = z_i·z_j − ρ_ij (z_i² + z_j²)/2``, whose covariance ``S``
is estimated on the reference rows. On data whose dependence is like the reference's,

    T² = (r − ρ)ᵀ S⁻¹ (r − ρ) / (1/n + 1/N)

is about χ² with as many degrees of freedom as ``S`` has rank (``N``: the reference rows). A
correlation that appears while every marginal stays the same moves ``r``, which no per-column test
sees; a change of one feature's location or scale alone does not (the per-column detectors do).

The window's sums are kept in fixed point (int64, 2⁻¹⁶ per unit), so they are exact: however a stream
is cut into batches, and in whatever order partitions' sums are added, a window gives the same T².

>>> rng = np.random.default_rng(1)
>>> joint = fit_joint(["a", "b", "c"], rng.standard_normal((4000, 3)))
>>> len(joint.correlation), joint.rank
(3, 3)
>>> w = JointWindow(joint, window=2000)
>>> quiet = w.add_many(3 + 2 * rng.standard_normal((2000, 3)))  # every marginal moved, the correlations not
>>> len(quiet), quiet[0][0], quiet[0][1] < 30
(1, 1999, True)
>>> x = rng.standard_normal((2000, 3)); x[:, 1] = 0.6 * x[:, 0] + 0.8 * x[:, 1]
>>> w.add_many(x)[0][1] > 300
True
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from ..errors import ReferenceProfileError

SCALE = float(2 ** 16)  # fixed point of the window sums
Z_LIMIT = 1e3  # a standardized value is clipped to ±this (a 1,000-sd value): a row's terms stay below 2¹⁶·10⁶,
# so the int64 sums of up to 10⁸ rows cannot overflow
MIN_ROWS = 200  # fewer complete reference rows than this: no joint reference
RANK_TOLERANCE = 1e-9  # eigenvalues of S below this share of the largest are not tested


class JointReference(NamedTuple):
    """What the joint test reads from the reference (see the module's docstring)."""

    names: tuple[str, ...]  # the features, in the order of ``z``
    mean: tuple[float, ...]
    std: tuple[float, ...]
    correlation: tuple[float, ...]  # ρ of each pair (i < j, row by row)
    whitening: tuple[tuple[float, ...], ...]  # W (rank × pairs): WᵀW = S⁺, so (r − ρ)ᵀS⁺(r − ρ) = |W(r − ρ)|²
    spread: tuple[float, ...]  # √S_tt of each pair: its correlation's shift in its own units, for the message
    events: int  # N

    @property
    def rank(self) -> int:
        return len(self.whitening)

    def pairs(self) -> list[tuple[int, int]]:
        k = len(self.names)
        return [(i, j) for i in range(k) for j in range(i + 1, k)]

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": list(self.mean), "std": list(self.std),
                "correlation": list(self.correlation), "whitening": [list(r) for r in self.whitening],
                "spread": list(self.spread), "events": self.events}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JointReference":
        try:
            joint = cls(tuple(d["names"]), tuple(map(float, d["mean"])), tuple(map(float, d["std"])),
                        tuple(map(float, d["correlation"])), tuple(tuple(map(float, r)) for r in d["whitening"]),
                        tuple(map(float, d["spread"])), int(d["events"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReferenceProfileError(f"malformed joint reference: {exc!r}") from None
        k, pairs = len(joint.names), len(joint.correlation)
        if not (k >= 2 and len(joint.mean) == len(joint.std) == k and pairs == k * (k - 1) // 2
                and len(joint.spread) == pairs and all(len(r) == pairs for r in joint.whitening)):
            raise ReferenceProfileError("malformed joint reference: its arrays do not fit its features")
        return joint


def terms(z: np.ndarray) -> np.ndarray:
    """Rows of standardized values (n × k) → what a window sums: ``z_i`` and ``z_i·z_j`` (i ≤ j)."""
    i, j = np.triu_indices(z.shape[1])
    return np.concatenate([z, z[:, i] * z[:, j]], axis=1)


def fit_joint(names: Sequence[str], rows: np.ndarray) -> JointReference | None:
    """The joint reference of complete rows (N × k; rows with a non-finite value are left out), or
    ``None`` when fewer than two features vary or fewer than MIN_ROWS rows are complete."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(names):
        return None
    rows = rows[np.isfinite(rows).all(axis=1)]
    if len(rows) < MIN_ROWS:
        return None
    std = rows.std(axis=0)
    varies = std > 0
    if varies.sum() < 2:
        return None
    rows, std = rows[:, varies], std[varies]
    names = [n for n, v in zip(names, varies) if v]
    mean = rows.mean(axis=0)
    z = np.clip((rows - mean) / std, -Z_LIMIT, Z_LIMIT)
    i, j = np.triu_indices(len(names), 1)
    rho = (z[:, i] * z[:, j]).mean(axis=0)
    psi = z[:, i] * z[:, j] - rho * (z[:, i] ** 2 + z[:, j] ** 2) / 2
    cov = np.atleast_2d(np.cov(psi, rowvar=False))
    values, vectors = np.linalg.eigh(cov)
    kept = values > RANK_TOLERANCE * max(values.max(), 1e-300)
    whitening = (vectors[:, kept] / np.sqrt(values[kept])).T
    return JointReference(tuple(names), tuple(mean.tolist()), tuple(std.tolist()), tuple(rho.tolist()),
                          tuple(tuple(r) for r in whitening.tolist()),
                          tuple(np.sqrt(np.maximum(np.diag(cov), 0)).tolist()), len(rows))


class JointWindow:
    """Tumbling windows of ``window`` complete rows; ``add_many`` returns each closed window's T².

    A row with a non-finite value is skipped (counted in :attr:`skipped`). The open window's state is
    its row count and the int64 sums of its terms (exactly additive across batches and partitions).
    """

    def __init__(self, joint: JointReference, window: int):
        self.joint = joint
        self.window = window
        self._mean = np.asarray(joint.mean)
        self._std = np.asarray(joint.std)
        self._rho = np.asarray(joint.correlation)
        self._w = np.asarray(joint.whitening).reshape(joint.rank, len(joint.correlation))
        k = len(joint.names)
        self._k = k
        self._upper = np.triu_indices(k)
        self._pairs = np.triu_indices(k, 1)
        self.count = 0
        self.sums = np.zeros(k + k * (k + 1) // 2, dtype=np.int64)
        self.skipped = 0
        self.last_value: float | None = None
        self.last_top: list | None = None

    def fixed_terms(self, rows: np.ndarray) -> np.ndarray:
        """Complete rows (n × k, in the reference's feature order) → their terms in fixed point."""
        t = terms(np.clip((rows - self._mean) / self._std, -Z_LIMIT, Z_LIMIT))
        return np.rint(t * SCALE).astype(np.int64)

    def add_many(self, rows: np.ndarray) -> list[tuple[int, float, list]]:
        """A batch of rows (n × k); per window closed: the index of its last row in the batch, its T²
        and its top terms (:meth:`statistic`)."""
        rows = np.asarray(rows, dtype=np.float64)
        complete = np.isfinite(rows).all(axis=1)
        where = complete.nonzero()[0]
        self.skipped += len(rows) - len(where)
        if not len(where):
            return []
        fixed = self.fixed_terms(rows[where])
        out = []
        start = 0
        while start < len(where):
            take = min(self.window - self.count, len(where) - start)
            self.sums += fixed[start:start + take].sum(axis=0)
            self.count += take
            start += take
            if self.count == self.window:
                value, top = self.statistic(self.sums, self.count)
                self.last_value, self.last_top = value, top
                out.append((int(where[start - 1]), value, top))
                self.count = 0
                self.sums = np.zeros_like(self.sums)
        return out

    def statistic(self, sums: np.ndarray, count: int) -> tuple[float, list]:
        """T² of a window's fixed-point sums over ``count`` rows, and the three pairs whose correlation
        moved most in their own standard deviations: [(feature, other feature, reference ρ, window r)]."""
        m = np.asarray(sums, dtype=np.float64) / (SCALE * count)
        k = self._k
        mean = m[:k]
        second = np.zeros((k, k))
        second[self._upper] = m[k:]
        cov = second - np.outer(mean, mean)
        var = np.diag(cov).copy()
        i, j = self._pairs
        scale = np.sqrt(np.maximum(var[i] * var[j], 0))
        r = np.where(scale > 0, cov[i, j] / np.where(scale > 0, scale, 1), self._rho)  # a constant window: no evidence
        shift = r - self._rho
        whitened = self._w @ shift
        value = float(whitened @ whitened / (1 / count + 1 / self.joint.events))
        scaled = np.abs(shift) / np.maximum(np.asarray(self.joint.spread), 1e-12)
        names = self.joint.names
        top = [[names[int(i[t])], names[int(j[t])], float(self._rho[t]), float(r[t])]
               for t in np.argsort(-scaled, kind="stable")[:3].tolist()]
        return value, top

    def snapshot(self) -> dict[str, Any]:
        return {"count": self.count, "sums": self.sums.tolist(), "skipped": self.skipped,
                "last_value": self.last_value, "last_top": self.last_top}

    def restore(self, state: dict[str, Any]) -> None:
        self.count = state["count"]
        self.sums = np.asarray(state["sums"], dtype=np.int64)
        self.skipped = state["skipped"]
        self.last_value = state["last_value"]
        self.last_top = state["last_top"]
