"""Compile (or load from numba's on-disk cache) every detector kernel before the first batch.

Apart from :mod:`kernels` so that the compiled leaf imports nothing of the
package: this module drives the kernels through the detector wrappers that
use them, with the same argument types a production batch passes, so a batch
never adds a second compiled signature (``tests/unit/test_kernels.py`` checks it).
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .drift import AdwinDetector, PageHinkleyDetector

KERNELS = (kernels.adwin_batch, kernels.page_hinkley_batch, kernels.numeric_indices, kernels.tumble)


def warm_up() -> None:
    """Compile every kernel now, so the first batch does not wait (run before joining the group)."""
    values = np.array([0.25, 0.75])
    AdwinDetector().update_many(values)
    PageHinkleyDetector().update_many(values)
    cells = np.zeros(2, dtype=np.int64)
    kernels.tumble(cells, np.zeros(1, dtype=np.int64), 0, 1, np.zeros((2, 1), dtype=np.int64),
                   np.zeros(2, dtype=np.int64))
    out = np.empty(2)
    kernels.numeric_indices(values, values, values, values, 0.01, cells, cells.copy(), out, out.copy())


def signatures() -> dict[str, int]:
    """How many compiled signatures each kernel holds (one each after :func:`warm_up`)."""
    return {kernel.__name__: len(kernel.signatures) for kernel in KERNELS}
