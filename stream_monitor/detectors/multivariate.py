"""Joint drift: a Hotelling-type test of the standardized features' first and second moments per window.

Fitted once on reference rows of ``k`` numeric features (:func:`fit_joint`): their mean and standard
deviation give standardized values ``z``; each row then has ``k + k(k+1)/2`` terms ``z_i`` and
``z_i·z_j − δ_ij`` (i ≤ j), whose reference mean ``μ`` and covariance ``S`` are estimated on the same
rows. A window of ``n`` rows has term mean ``m``; on data drawn like the reference,

    T² = (m − μ)ᵀ S⁻¹ (m − μ) / (1/n + 1/N)

is about χ² with as many degrees of freedom as ``S`` has rank (``N``: the reference rows). A
correlation that appears while every marginal stays the same moves the ``z_i·z_j`` terms, which no
per-column test sees.

The window's sums are kept in fixed point (int64, 2⁻²⁰ per unit), so they are exact: however a stream
is cut into batches, and in whatever order partitions' sums are added, a window gives the same T².

>>> rng = np.random.default_rng(1)
>>> joint = fit_joint(["a", "b"], rng.standard_normal((4000, 2)))
>>> joint.terms, joint.rank
(5, 5)
>>> w = JointWindow(joint, window=2000)
>>> quiet = w.add_many(rng.standard_normal((2000, 2)))
>>> len(quiet), quiet[0][0], quiet[0][1] < 30
(1, 1999, True)
>>> x = rng.standard_normal((2000, 2)); x[:, 1] = 0.6 * x[:, 0] + 0.8 * x[:, 1]
>>> w.add_many(x)[0][1] > 300
True
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from ..errors import ReferenceProfileError

SCALE = float(2 ** 20)  # fixed point of the window sums
TERM_LIMIT = 1e4  # a term is clipped to ±this before it is summed (a 100-sd value): sums stay far from overflow
MIN_ROWS = 200  # fewer complete reference rows than this: no joint reference
RANK_TOLERANCE = 1e-9  # eigenvalues of S below this share of the largest are not tested (e.g. a 0/1 feature's z²)


class JointReference(NamedTuple):
    """What the joint test reads from the reference (see the module's docstring)."""

    names: tuple[str, ...]  # the features, in the order of ``z``
    mean: tuple[float, ...]
    std: tuple[float, ...]
    term_mean: tuple[float, ...]  # μ
    whitening: tuple[tuple[float, ...], ...]  # W (rank × terms): WᵀW = S⁺, so (m − μ)ᵀS⁺(m − μ) = |W(m − μ)|²
    term_std: tuple[float, ...]  # √S_tt: each term's shift in its own units, for the message
    events: int  # N

    @property
    def terms(self) -> int:
        return len(self.term_mean)

    @property
    def rank(self) -> int:
        return len(self.whitening)

    def pairs(self) -> list[tuple[int, int]]:
        """Each term as (i, j): (i, −1) for ``z_i``, (i, j) for ``z_i·z_j − δ_ij``."""
        k = len(self.names)
        return [(i, -1) for i in range(k)] + [(i, j) for i in range(k) for j in range(i, k)]

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": list(self.mean), "std": list(self.std),
                "term_mean": list(self.term_mean), "whitening": [list(r) for r in self.whitening],
                "term_std": list(self.term_std), "events": self.events}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JointReference":
        try:
            joint = cls(tuple(d["names"]), tuple(map(float, d["mean"])), tuple(map(float, d["std"])),
                        tuple(map(float, d["term_mean"])), tuple(tuple(map(float, r)) for r in d["whitening"]),
                        tuple(map(float, d["term_std"])), int(d["events"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReferenceProfileError(f"malformed joint reference: {exc!r}") from None
        k = len(joint.names)
        if not (len(joint.mean) == len(joint.std) == k and joint.terms == k + k * (k + 1) // 2
                and len(joint.term_std) == joint.terms and all(len(r) == joint.terms for r in joint.whitening)):
            raise ReferenceProfileError("malformed joint reference: its arrays do not fit its features")
        return joint


def terms(z: np.ndarray) -> np.ndarray:
    """Rows of standardized values (n × k) → their terms (n × (k + k(k+1)/2))."""
    k = z.shape[1]
    i, j = np.triu_indices(k)
    products = z[:, i] * z[:, j] - (i == j)
    return np.concatenate([z, products], axis=1)


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
    t = np.clip(terms((rows - mean) / std), -TERM_LIMIT, TERM_LIMIT)
    term_mean = t.mean(axis=0)
    cov = np.cov(t, rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    kept = values > RANK_TOLERANCE * max(values.max(), 1e-300)
    whitening = (vectors[:, kept] / np.sqrt(values[kept])).T
    return JointReference(tuple(names), tuple(mean.tolist()), tuple(std.tolist()), tuple(term_mean.tolist()),
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
        self._mu = np.asarray(joint.term_mean)
        self._w = np.asarray(joint.whitening).reshape(joint.rank, joint.terms)
        self.count = 0
        self.sums = np.zeros(joint.terms, dtype=np.int64)
        self.skipped = 0
        self.last_value: float | None = None
        self.last_top: list | None = None

    def fixed_terms(self, rows: np.ndarray) -> np.ndarray:
        """Complete rows (n × k, in the reference's feature order) → their terms in fixed point."""
        t = np.clip(terms((rows - self._mean) / self._std), -TERM_LIMIT, TERM_LIMIT)
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
        """T² of a window's fixed-point sums over ``count`` rows, and its three terms that moved most in
        their own standard deviations: [(feature, other feature or None, reference mean, window mean)]."""
        shift = np.asarray(sums, dtype=np.float64) / (SCALE * count) - self._mu
        whitened = self._w @ shift
        value = float(whitened @ whitened / (1 / count + 1 / self.joint.events))
        scaled = np.abs(shift) / np.maximum(np.asarray(self.joint.term_std), 1e-12)
        names = self.joint.names
        top = []
        for t in np.argsort(-scaled, kind="stable")[:3].tolist():
            i, j = self.joint.pairs()[t]
            top.append([names[i], None if j < 0 else names[j], float(self._mu[t]), float(self._mu[t] + shift[t])])
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
