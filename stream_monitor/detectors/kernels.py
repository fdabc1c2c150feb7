"""Compiled inner loops: one column's values of a batch through one detector kind.

Each kernel does, value by value and in the same floating-point order, what
the per-value code it replaces did — river's ADWIN (its Rust
``AdaptiveWindowing``, itself a line-by-line port of the Cython original) and
river's ``PageHinkley``, the reference rank and its normal score
(``statistics.NormalDist.inv_cdf``, Wichura's AS241), and the tumbling-window
counts of PSI, KS and data quality. ``tests/unit/test_kernels.py`` pins the equality
value by value against river and the standard library on seeded streams.

The kernels are compiled by numba on first use and cached next to this file
(``cache=True``), so only the first process after an install pays for it;
:func:`~stream_monitor.detectors.compile.warm_up` does it before the first batch.
This module imports nothing of the package: the detectors import it, never the
other way round.
State lives in small numpy arrays owned by the detector objects, which is also
what their snapshots store.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

ADWIN_ROWS = 64  # bucket rows: row r holds buckets of 2**r values, so the window is unbounded in practice

# ADWIN scalar slots (float64) and counters (int64)
TOTAL, VARIANCE, WIDTH, TOTAL_WIDTH = 0, 1, 2, 3
ROWS, N_BUCKETS, MAX_N_BUCKETS, TICK, N_DETECTIONS, DETECTED = 0, 1, 2, 3, 4, 5

# Page-Hinkley state slots (float64). The first seven are river's; the others (read by no decision) say
# where a change began, for its level: the running sums of the raw values and of the values, and at the
# extremes of two pairs of cumulative sums — river's (drift ``delta``) and a pair with drift LEVEL_DRIFT,
# whose extremes mark the start of a large shift closely — the count and both sums there.
PH_N, PH_MEAN, PH_UP, PH_DOWN, PH_LOWEST, PH_HIGHEST, PH_DETECTED = 0, 1, 2, 3, 4, 5, 6
PH_SUM, PH_SUM_X = 7, 8
PH_UP2, PH_DOWN2, PH_LOWEST2, PH_HIGHEST2 = 9, 10, 11, 12
PH_MARKS = 13  # 4 marks (lowest, highest, lowest2, highest2) × (count, raw sum, value sum)
PH_SLOTS = PH_MARKS + 12
LEVEL_DRIFT = 2.0  # the large-shift pair's drift, in the values' units (normal scores: standard deviations)


# --- ADWIN --------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _compress_row(totals, variances, fill, row, n_elements):
    current = fill[row]
    remaining = current - n_elements
    for i in range(remaining):
        totals[row, i] = totals[row, i + n_elements]
        variances[row, i] = variances[row, i + n_elements]
    for i in range(remaining, current):
        totals[row, i] = 0.0
        variances[row, i] = 0.0
    fill[row] = remaining


@njit(cache=True, inline="always")
def _adwin_reset(totals, variances, fill, scalars, counters):
    totals[:, :] = 0.0
    variances[:, :] = 0.0
    fill[:] = 0
    scalars[:] = 0.0
    counters[:] = 0
    counters[ROWS] = 1


@njit(cache=True, inline="always")
def _adwin_insert(value, totals, variances, fill, scalars, counters, max_buckets):
    slot = fill[0]
    totals[0, slot] = value
    variances[0, slot] = 0.0
    fill[0] = slot + 1
    counters[N_BUCKETS] += 1
    if counters[N_BUCKETS] > counters[MAX_N_BUCKETS]:
        counters[MAX_N_BUCKETS] = counters[N_BUCKETS]
    width = scalars[WIDTH] + 1.0
    scalars[WIDTH] = width
    incremental_variance = 0.0
    if width > 1.0:
        delta_v = value - scalars[TOTAL] / (width - 1.0)
        incremental_variance = (width - 1.0) * delta_v * delta_v / width
    scalars[VARIANCE] += incremental_variance
    scalars[TOTAL] += value
    # merge the two oldest buckets of a full row into the next row, as far as it goes
    row = 0
    while fill[row] == max_buckets + 1:
        n1 = math.ldexp(1.0, row)
        t0, t1 = totals[row, 0], totals[row, 1]
        v0, v1 = variances[row, 0], variances[row, 1]
        mu1 = t0 / n1
        mu2 = t1 / n1
        total12 = t0 + t1
        temp = n1 * 0.5 * (mu1 - mu2) * (mu1 - mu2)
        v12 = v0 + v1 + temp
        if row + 1 >= counters[ROWS]:
            counters[ROWS] += 1
            fill[row + 1] = 0
        slot = fill[row + 1]
        totals[row + 1, slot] = total12
        variances[row + 1, slot] = v12
        fill[row + 1] = slot + 1
        counters[N_BUCKETS] += 1
        _compress_row(totals, variances, fill, row, 2)
        if fill[row + 1] <= max_buckets:
            break
        row += 1


@njit(cache=True, inline="always")
def _adwin_delete_oldest(totals, variances, fill, scalars, counters):
    last = counters[ROWS] - 1
    n = math.ldexp(1.0, last)
    u = totals[last, 0]
    v = variances[last, 0]
    mu = u / n
    scalars[WIDTH] -= n
    scalars[TOTAL] -= u
    width = scalars[WIDTH]
    mu_window = scalars[TOTAL] / width
    increment = v + n * width * (mu - mu_window) * (mu - mu_window) / (n + width)
    scalars[VARIANCE] -= increment
    _compress_row(totals, variances, fill, last, 1)
    counters[N_BUCKETS] -= 1
    if fill[last] == 0:
        counters[ROWS] -= 1


@njit(cache=True, inline="always")
def _adwin_cut(n0, n1, delta_mean, delta_prime, variance_rate, second_term, min_window_length):
    """river's ``evaluate_cut``. Per scan of the window (the same expressions on the same values, so the
    same numbers): ``delta_prime`` = ln(2·ln(width)/δ), ``variance_rate`` = variance/width and
    ``second_term`` = 2/3·delta_prime."""
    m_recip = 1.0 / (n0 - min_window_length + 1.0) + 1.0 / (n1 - min_window_length + 1.0)
    epsilon = math.sqrt(2.0 * m_recip * variance_rate * delta_prime) + second_term * m_recip
    return abs(delta_mean) > epsilon


@njit(cache=True, inline="always")
def _adwin_level(totals, fill, scalars, counters, min_window_length):
    """The mean of the newest sub-window at the window's most significant split: the split (between
    buckets, oldest first) where the two sides' means differ most in standard errors,
    |mean₀ − mean₁|·√(n₀n₁/(n₀+n₁)), which for a step change is where it happened. Read-only."""
    n0 = 0.0
    u0 = 0.0
    width = scalars[WIDTH]
    total = scalars[TOTAL]
    best = -1.0
    level = total / width if width > 0.0 else 0.0
    for row in range(counters[ROWS] - 1, -1, -1):
        bucket_size = math.ldexp(1.0, row)
        for k in range(fill[row]):
            n0 += bucket_size
            u0 += totals[row, k]
            n1 = width - n0
            if n1 < min_window_length:
                return level
            if n0 >= min_window_length:
                u1 = total - u0
                z = abs(u0 / n0 - u1 / n1) * math.sqrt(n0 * n1 / width)
                if z > best:
                    best = z
                    level = u1 / n1
    return level


@njit(cache=True, inline="always")
def _adwin_detect(totals, variances, fill, scalars, counters, delta, clock, min_window_length, grace_period):
    """river's detection step; returns (change, the level after it: :func:`_adwin_level` of the window
    as it was when the first cut was found, NaN without a change)."""
    change = False
    level = math.nan
    counters[TICK] += 1
    if counters[TICK] % clock == 0 and scalars[WIDTH] > grace_period:
        reduce_width = True
        while reduce_width:
            reduce_width = False
            exit_flag = False
            cut = False
            n0 = 0.0
            n1 = scalars[WIDTH]
            u0 = 0.0
            u1 = scalars[TOTAL]
            delta_prime = math.log(2.0 * math.log(scalars[WIDTH]) / delta)
            variance_rate = scalars[VARIANCE] / scalars[WIDTH]
            second_term = 2.0 / 3.0 * delta_prime
            for row in range(counters[ROWS] - 1, -1, -1):
                if exit_flag or cut:
                    break
                bucket_size = math.ldexp(1.0, row)
                current = fill[row]
                for k in range(current):
                    n0 += bucket_size
                    n1 -= bucket_size
                    total_at = totals[row, k]
                    u0 += total_at
                    u1 -= total_at
                    if row == 0 and k == current - 1:
                        exit_flag = True
                        break
                    delta_mean = (u0 / n0) - (u1 / n1)
                    if n1 >= min_window_length and n0 >= min_window_length and _adwin_cut(
                            n0, n1, delta_mean, delta_prime, variance_rate, second_term, min_window_length):
                        reduce_width = True
                        if not change:
                            level = _adwin_level(totals, fill, scalars, counters, min_window_length)
                        change = True
                        if scalars[WIDTH] > 0.0:
                            _adwin_delete_oldest(totals, variances, fill, scalars, counters)
                            cut = True
                            break
    scalars[TOTAL_WIDTH] += scalars[WIDTH]
    if change:
        counters[N_DETECTIONS] += 1
    return change, level


@njit(cache=True)
def adwin_batch(values, totals, variances, fill, scalars, counters, delta, clock, max_buckets,
                min_window_length, grace_period, detected, means, widths, levels):
    """river's ``ADWIN.update`` for each value (a detection resets it at the next value, as river does);
    writes each value's decision, window mean (river's ``estimation``), window width and, at a
    detection, the level after the change (:func:`_adwin_level`; NaN elsewhere)."""
    for i in range(values.shape[0]):
        if counters[DETECTED]:
            _adwin_reset(totals, variances, fill, scalars, counters)
        _adwin_insert(values[i], totals, variances, fill, scalars, counters, max_buckets)
        change, level = _adwin_detect(totals, variances, fill, scalars, counters, delta, clock,
                                      float(min_window_length), float(grace_period))
        counters[DETECTED] = 1 if change else 0
        detected[i] = change
        levels[i] = level
        width = scalars[WIDTH]
        means[i] = scalars[TOTAL] / width if width != 0.0 else 0.0
        widths[i] = width


# --- Page-Hinkley -----------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _ph_mark(state, mark, n, total, total_x):
    at = PH_MARKS + 3 * mark
    state[at], state[at + 1], state[at + 2] = n, total, total_x


@njit(cache=True, inline="always")
def _ph_since(state, mark, n, total, total_x):
    """(values since the mark, their mean raw value, their mean value)."""
    at = PH_MARKS + 3 * mark
    count = n - state[at]
    if count <= 0.0:
        return 0.0, math.nan, math.nan
    return count, (total - state[at + 1]) / count, (total_x - state[at + 2]) / count


@njit(cache=True, inline="always")
def _ph_level(state, rose, n, mean, total, total_x):
    """The mean raw value since the change began: since river's sum that crossed was at its extreme,
    unless the large-shift sum of the same side, since its own extreme, shows a shift of at least 1.5 times
    its drift (then its extreme, which a large shift leaves sooner, marks the start)."""
    small, big = (0, 2) if rose else (1, 3)
    count, level, _ = _ph_since(state, small, n, total, total_x)
    count2, level2, mean_x2 = _ph_since(state, big, n, total, total_x)
    if count2 > 0.0 and abs(mean_x2 - mean) >= 1.5 * LEVEL_DRIFT:
        return level2
    return level if count > 0.0 else math.nan


@njit(cache=True)
def page_hinkley_batch(values, raw, state, min_instances, delta, threshold, alpha, mode, detected, statistics,
                       levels):
    """river's ``PageHinkley.update`` for each value; ``mode`` 0 both, 1 up, 2 down. Writes each
    value's decision and statistic (the larger cumulative deviation) and, at a detection, the level
    after the change (:func:`_ph_level`: a mean of ``raw``, the values in their own units, one per
    value; NaN elsewhere). The decisions read ``values`` only."""
    n, mean, up, down = state[PH_N], state[PH_MEAN], state[PH_UP], state[PH_DOWN]
    lowest, highest, fired = state[PH_LOWEST], state[PH_HIGHEST], state[PH_DETECTED] != 0.0
    total, total_x = state[PH_SUM], state[PH_SUM_X]
    up2, down2, lowest2, highest2 = state[PH_UP2], state[PH_DOWN2], state[PH_LOWEST2], state[PH_HIGHEST2]
    for i in range(values.shape[0]):
        x = values[i]
        if fired:
            n, mean, up, down, lowest, highest, fired = 0.0, 0.0, 0.0, 0.0, np.inf, -1.0, False
            total, total_x, up2, down2, lowest2, highest2 = 0.0, 0.0, 0.0, 0.0, np.inf, -np.inf
            state[PH_MARKS:] = 0.0
        n += 1.0
        total += raw[i]
        total_x += x
        mean += (1.0 / n) * (x - mean)
        deviation = x - mean
        up = alpha * up + deviation - delta
        down = alpha * down + deviation + delta
        up2 = alpha * up2 + deviation - LEVEL_DRIFT
        down2 = alpha * down2 + deviation + LEVEL_DRIFT
        if up < lowest:
            lowest = up
            _ph_mark(state, 0, n, total, total_x)
        if down > highest:
            highest = down
            _ph_mark(state, 1, n, total, total_x)
        if up2 < lowest2:
            lowest2 = up2
            _ph_mark(state, 2, n, total, total_x)
        if down2 > highest2:
            highest2 = down2
            _ph_mark(state, 3, n, total, total_x)
        increase = up - lowest
        decrease = highest - down
        rose = False
        if n >= min_instances:
            if mode == 1:
                fired = rose = increase > threshold
            elif mode == 2:
                fired = decrease > threshold
            else:
                rose = increase > threshold
                fired = rose or decrease > threshold
        detected[i] = fired
        statistics[i] = increase if increase >= decrease else decrease
        if fired:
            levels[i] = _ph_level(state, rose and (mode == 1 or increase >= decrease), n, mean, total, total_x)
        else:
            levels[i] = math.nan
    state[PH_N], state[PH_MEAN], state[PH_UP], state[PH_DOWN] = n, mean, up, down
    state[PH_LOWEST], state[PH_HIGHEST], state[PH_DETECTED] = lowest, highest, 1.0 if fired else 0.0
    state[PH_SUM], state[PH_SUM_X] = total, total_x
    state[PH_UP2], state[PH_DOWN2], state[PH_LOWEST2], state[PH_HIGHEST2] = up2, down2, lowest2, highest2


# --- reference ranks ----------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _bisect_left(a, x):
    lo, hi = 0, a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, inline="always")
def _bisect_right(a, x):
    lo, hi = 0, a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, inline="always")
def _inv_cdf(p):
    """``statistics.NormalDist().inv_cdf(p)`` (AS241), the same operations in the same order."""
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        num = (((((((2.5090809287301226727e+3 * r +
                     3.3430575583588128105e+4) * r +
                     6.7265770927008700853e+4) * r +
                     4.5921953931549871457e+4) * r +
                     1.3731693765509461125e+4) * r +
                     1.9715909503065514427e+3) * r +
                     1.3314166789178437745e+2) * r +
                     3.3871328727963666080e+0) * q
        den = (((((((5.2264952788528545610e+3 * r +
                     2.8729085735721942674e+4) * r +
                     3.9307895800092710610e+4) * r +
                     2.1213794301586595867e+4) * r +
                     5.3941960214247511077e+3) * r +
                     6.8718700749205790830e+2) * r +
                     4.2313330701600911252e+1) * r +
                     1.0)
        return 0.0 + (num / den) * 1.0
    r = p if q <= 0.0 else 1.0 - p
    r = math.sqrt(-math.log(r))
    if r <= 5.0:
        r = r - 1.6
        num = (((((((7.74545014278341407640e-4 * r +
                     2.27238449892691845833e-2) * r +
                     2.41780725177450611770e-1) * r +
                     1.27045825245236838258e+0) * r +
                     3.64784832476320460504e+0) * r +
                     5.76949722146069140550e+0) * r +
                     4.63033784615654529590e+0) * r +
                     1.42343711074968357734e+0)
        den = (((((((1.05075007164441684324e-9 * r +
                     5.47593808499534494600e-4) * r +
                     1.51986665636164571966e-2) * r +
                     1.48103976427480074590e-1) * r +
                     6.89767334985100004550e-1) * r +
                     1.67638483018380384940e+0) * r +
                     2.05319162663775882187e+0) * r +
                     1.0)
    else:
        r = r - 5.0
        num = (((((((2.01033439929228813265e-7 * r +
                     2.71155556874348757815e-5) * r +
                     1.24266094738807843860e-3) * r +
                     2.65321895265761230930e-2) * r +
                     2.96560571828504891230e-1) * r +
                     1.78482653991729133580e+0) * r +
                     5.46378491116411436990e+0) * r +
                     6.65790464350110377720e+0)
        den = (((((((2.04426310338993978564e-15 * r +
                     1.42151175831644588870e-7) * r +
                     1.84631831751005468180e-5) * r +
                     7.86869131145613259100e-4) * r +
                     1.48753612908506148525e-2) * r +
                     1.36929880922735805310e-1) * r +
                     5.99832206555887937690e-1) * r +
                     1.0)
    x = num / den
    if q < 0.0:
        x = -x
    return 0.0 + x * 1.0


@njit(cache=True)
def numeric_indices(values, edges, ks_grid, grid, floor, psi_bins, ks_bins, ranks, scores):
    """Per value: its PSI bin, its KS cell, its reference mid-rank and that rank's normal score
    (what ``NumericReference.bin_index``, ``bisect_left(ks_grid, value)``, ``RankTransform.rank`` and
    ``normal_score`` compute one value at a time)."""
    steps = grid.shape[0] - 1
    for i in range(values.shape[0]):
        value = values[i]
        index = _bisect_left(edges, value)
        if index == 0 and edges.shape[0] > 0 and value == edges[0]:
            index = 1
        psi_bins[i] = index
        ks_bins[i] = _bisect_left(ks_grid, value)
        low = _bisect_left(grid, value)
        high = low
        if low < grid.shape[0] and grid[low] == value:  # on the grid: find the end of its ties
            high = _bisect_right(grid, value)
        if high > low:
            u = (low + high - 1) / 2 / steps
        elif low == 0 or low > steps:
            u = 0.0 if low == 0 else 1.0
        else:
            left, right = grid[low - 1], grid[low]
            u = (low - 1 + (value - left) / (right - left)) / steps
        if u < floor:
            u = floor
        if u > 1.0 - floor:
            u = 1.0 - floor
        ranks[i] = u
        scores[i] = _inv_cdf(u)


# --- tumbling windows -----------------------------------------------------------------------------------


@njit(cache=True)
def tumble(indices, counts, n, window, closed_counts, closed_at):
    """Count ``indices`` (−1: counted in the window, in no cell) into ``counts``; each time the window
    fills, copy the counts to the next row of ``closed_counts``, its position to ``closed_at`` and
    start afresh. Returns (windows closed, values in the open window)."""
    closed = 0
    for i in range(indices.shape[0]):
        cell = indices[i]
        if cell >= 0:
            counts[cell] += 1
        n += 1
        if n >= window:
            closed_counts[closed, :] = counts
            closed_at[closed] = i
            closed += 1
            counts[:] = 0
            n = 0
    return closed, n
