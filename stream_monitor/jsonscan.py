"""A compiled scanner for the common event shape: a batch of JSON messages → per-column arrays.

One call reads every message of a batch (their bytes concatenated, with each one's start and end) and,
for each message that has the common shape — one flat object with ``event_id``, ``model_id``,
``timestamp``, a flat ``features`` object of numbers, short strings, booleans and nulls, ``prediction``
(a number, a string or ``{"score": …, "label": …}``) and ``latency_ms`` — writes what it holds into
arrays: each field's kind, number and byte span, each feature's key span, kind, number and value span,
and the batch's distinct feature key orders ("layouts"). Numbers are converted exactly as a correctly
rounded parser does (Clinger's exact path, else the Eisel-Lemire algorithm with a 128-bit table of
powers of five).

Anything else is marked *unusual* and left to :mod:`stream_monitor.codec` as it is: a string escape,
a control character, invalid UTF-8, a nested value, a duplicate key, an integer of more than 18 digits,
a number of more than 19 significant digits or outside the normal range of a double, ``-0``, a label
event, a value the codec refuses (a wrong type, an empty id, a timestamp out of range or ahead of its
Kafka message, a negative latency…). The scanner never decides a dead letter: it only vouches for the
messages it fully understood.

Like :mod:`stream_monitor.detectors.kernels`, a compiled leaf that imports nothing of the package,
compiled on first use and cached next to this file.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Top-level fields (the rows of the per-message field arrays)
EVENT_ID, MODEL_ID, TIMESTAMP, PREDICTION, SCORE, LABEL, LATENCY = 0, 1, 2, 3, 4, 5, 6
FIELDS = 7

# Value kinds
ABSENT, FLOAT, INT, STRING, TRUE, FALSE, NULL, OBJECT = 0, 1, 2, 3, 4, 5, 6, 7

MAX_LAYOUTS = 64  # distinct feature key orders per batch; a message past them is unusual

_SMALLEST_POWER = -342
_LARGEST_POWER = 308


def _powers_of_five() -> np.ndarray:
    """The 128-bit truncated powers of five 5^q for q in [-342, 308], as (high, low) uint64 pairs (the table
    of the Eisel-Lemire algorithm, generated as fast_float's script does)."""
    out = []
    for q in range(_SMALLEST_POWER, 0):
        power5 = 5 ** -q
        z = power5.bit_length()
        if (1 << (z - 1)) == power5:  # never for q < 0; kept for the script's exact `while (1<<z) < power5`
            z -= 1
        b = z + 127 if q >= -27 else 2 * z + 128
        c = 2 ** b // power5 + 1
        while c >= 1 << 128:
            c //= 2
        out.append(c)
    for q in range(0, _LARGEST_POWER + 1):
        power5 = 5 ** q
        while power5 < 1 << 127:
            power5 *= 2
        while power5 >= 1 << 128:
            power5 //= 2
        out.append(power5)
    return np.array([[c >> 64, c & 0xFFFFFFFFFFFFFFFF] for c in out], dtype=np.uint64)


POWERS_OF_FIVE = _powers_of_five()
_EXACT_POWERS = np.array([10.0 ** i for i in range(23)])
_KEYS = [b"event_id", b"model_id", b"timestamp", b"prediction", b"latency_ms", b"features", b"label"]
KEY_BYTES = np.frombuffer(b"".join(_KEYS), dtype=np.uint8).copy()
KEY_STARTS = np.cumsum([0] + [len(k) for k in _KEYS]).astype(np.int64)
_SCORE_KEY = np.frombuffer(b"score", dtype=np.uint8).copy()
_LABEL_KEY = np.frombuffer(b"label", dtype=np.uint8).copy()
_U64 = np.uint64


@njit(cache=True, inline="always")
def _mul128(a, b):
    """(high, low) of the 128-bit product of two uint64."""
    mask = _U64(0xFFFFFFFF)
    s32 = _U64(32)
    a_lo, a_hi = a & mask, a >> s32
    b_lo, b_hi = b & mask, b >> s32
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    p3 = a_hi * b_hi
    middle = (p0 >> s32) + (p1 & mask) + (p2 & mask)
    low = (p0 & mask) | (middle << s32)
    high = p3 + (p1 >> s32) + (p2 >> s32) + (middle >> s32)
    return high, low


@njit(cache=True, inline="always")
def _leading_zeros(w):
    n = 0
    top = _U64(1) << _U64(63)
    while (w & top) == _U64(0):
        w = w << _U64(1)
        n += 1
    return n


@njit(cache=True)
def to_double(w, q, powers):
    """The double nearest w · 10^q (w a uint64 of at most 19 digits, not 0), correctly rounded; NaN when it is
    not a normal double (then the message is unusual)."""
    if q >= -22 and q <= 22 and w <= _U64(9007199254740992):  # Clinger: both exact, one rounding
        value = float(w)
        if q >= 0:
            return value * _EXACT_POWERS[q]
        return value / _EXACT_POWERS[-q]
    if q < _SMALLEST_POWER or q > _LARGEST_POWER:
        return np.nan
    lz = _leading_zeros(w)
    w = w << _U64(lz)
    index = q - _SMALLEST_POWER
    high, low = _mul128(w, powers[index, 0])
    precision_mask = _U64(0xFFFFFFFFFFFFFFFF) >> _U64(55)
    if (high & precision_mask) == precision_mask:
        high2, _ = _mul128(w, powers[index, 1])
        low = low + high2
        if high2 > low:
            high = high + _U64(1)
    upperbit = np.int64(high >> _U64(63))
    shift = upperbit + 64 - 52 - 3
    mantissa = high >> _U64(shift)
    power2 = (((152170 + 65536) * q) >> 16) + 63 + upperbit - lz + 1023
    if power2 <= 0:
        return np.nan  # subnormal: left to the codec
    if low <= _U64(1) and q >= -4 and q <= 23 and (mantissa & _U64(3)) == _U64(1):
        if (mantissa << _U64(shift)) == high:
            mantissa = mantissa & ~_U64(1)
    mantissa = mantissa + (mantissa & _U64(1))
    mantissa = mantissa >> _U64(1)
    if mantissa >= (_U64(2) << _U64(52)):
        mantissa = _U64(1) << _U64(52)
        power2 += 1
    if power2 >= 0x7FF:
        return np.nan
    return math.ldexp(float(mantissa), power2 - 1075)


@njit(cache=True, inline="always")
def _skip_ws(buf, i, end):
    while i < end:
        c = buf[i]
        if c == 32 or c == 10 or c == 13 or c == 9:
            i += 1
        else:
            break
    return i


@njit(cache=True)
def _string(buf, i, end):
    """The end (past the closing quote) of the string whose opening quote is at ``i``; -1 when it holds an
    escape, a control character or invalid UTF-8, or does not end."""
    i += 1
    while i < end:
        c = buf[i]
        if c == 34:
            return i + 1
        if c == 92 or c < 32:
            return -1
        if c < 128:
            i += 1
            continue
        # UTF-8: the well-formed sequences of the Unicode standard (no overlong form, no surrogate)
        if c >= 0xC2 and c <= 0xDF:
            n = 1
            lo, hi = 0x80, 0xBF
        elif c == 0xE0:
            n = 2
            lo, hi = 0xA0, 0xBF
        elif (c >= 0xE1 and c <= 0xEC) or c == 0xEE or c == 0xEF:
            n = 2
            lo, hi = 0x80, 0xBF
        elif c == 0xED:
            n = 2
            lo, hi = 0x80, 0x9F
        elif c == 0xF0:
            n = 3
            lo, hi = 0x90, 0xBF
        elif c >= 0xF1 and c <= 0xF3:
            n = 3
            lo, hi = 0x80, 0xBF
        elif c == 0xF4:
            n = 3
            lo, hi = 0x80, 0x8F
        else:
            return -1
        if i + n >= end:
            return -1
        second = buf[i + 1]
        if second < lo or second > hi:
            return -1
        for k in range(2, n + 1):
            more = buf[i + k]
            if more < 0x80 or more > 0xBF:
                return -1
        i += n + 1
    return -1


@njit(cache=True)
def _number(buf, i, end, powers):
    """(kind, float value, int value, end) of the JSON number at ``i``; kind ABSENT when it is not one this
    scanner converts (not a number, more than 18 integer digits, more than 19 significant digits, ``-0``,
    out of the normal range)."""
    start = i
    negative = False
    if i < end and buf[i] == 45:
        negative = True
        i += 1
    if i >= end:
        return ABSENT, 0.0, 0, i
    c = buf[i]
    if c < 48 or c > 57:
        return ABSENT, 0.0, 0, i
    w = _U64(0)
    digits = 0  # significant digits read into w
    exponent = 0
    if c == 48:
        i += 1
        if i < end and buf[i] >= 48 and buf[i] <= 57:
            return ABSENT, 0.0, 0, i  # a leading zero: not JSON
    else:
        while i < end and buf[i] >= 48 and buf[i] <= 57:
            if digits >= 19:
                return ABSENT, 0.0, 0, i
            w = w * _U64(10) + _U64(buf[i] - 48)
            digits += 1
            i += 1
    integer = True
    if i < end and buf[i] == 46:
        integer = False
        i += 1
        if i >= end or buf[i] < 48 or buf[i] > 57:
            return ABSENT, 0.0, 0, i
        while i < end and buf[i] >= 48 and buf[i] <= 57:
            d = buf[i] - 48
            if digits == 0 and d == 0:
                exponent -= 1  # a leading zero of the fraction
            else:
                if digits >= 19:
                    return ABSENT, 0.0, 0, i
                w = w * _U64(10) + _U64(d)
                digits += 1
                exponent -= 1
            i += 1
    if i < end and (buf[i] == 101 or buf[i] == 69):
        integer = False
        i += 1
        exponent_negative = False
        if i < end and (buf[i] == 43 or buf[i] == 45):
            exponent_negative = buf[i] == 45
            i += 1
        if i >= end or buf[i] < 48 or buf[i] > 57:
            return ABSENT, 0.0, 0, i
        e = 0
        while i < end and buf[i] >= 48 and buf[i] <= 57:
            if e > 100000:
                return ABSENT, 0.0, 0, i
            e = e * 10 + (buf[i] - 48)
            i += 1
        exponent += -e if exponent_negative else e
    if integer:
        if digits > 18:
            return ABSENT, 0.0, 0, i
        if digits == 0 and negative:
            return ABSENT, 0.0, 0, i  # -0
        value = np.int64(w)
        if negative:
            value = -value
        return INT, float(value), value, i
    if digits == 0:
        return FLOAT, -0.0 if negative else 0.0, 0, i
    if exponent >= -22 and exponent <= 22 and w <= _U64(9007199254740992):  # Clinger's exact path, here
        x = float(w)
        x = x * _EXACT_POWERS[exponent] if exponent >= 0 else x / _EXACT_POWERS[-exponent]
        return FLOAT, -x if negative else x, 0, i
    x = to_double(w, exponent, powers)
    if x != x:
        return ABSENT, 0.0, 0, i
    return FLOAT, -x if negative else x, 0, i


@njit(cache=True)
def _scalar(buf, i, end, powers):
    """(kind, number, int, value start, value end) of the scalar at ``i``; kind ABSENT: not one this scanner
    reads (an object, an array, an unusual number or string)."""
    c = buf[i]
    if c == 34:
        j = _string(buf, i, end)
        if j < 0:
            return ABSENT, 0.0, 0, i, i
        return STRING, np.nan, 0, i + 1, j
    if c == 116:
        if i + 4 <= end and buf[i + 1] == 114 and buf[i + 2] == 117 and buf[i + 3] == 101:
            return TRUE, np.nan, 0, i, i + 4
        return ABSENT, 0.0, 0, i, i
    if c == 102:
        if i + 5 <= end and buf[i + 1] == 97 and buf[i + 2] == 108 and buf[i + 3] == 115 and buf[i + 4] == 101:
            return FALSE, np.nan, 0, i, i + 5
        return ABSENT, 0.0, 0, i, i
    if c == 110:
        if i + 4 <= end and buf[i + 1] == 117 and buf[i + 2] == 108 and buf[i + 3] == 108:
            return NULL, np.nan, 0, i, i + 4
        return ABSENT, 0.0, 0, i, i
    kind, x, n, j = _number(buf, i, end, powers)
    return kind, x, n, i, j


@njit(cache=True, inline="always")
def _same(buf, a, b, length):
    for k in range(length):
        if buf[a + k] != buf[b + k]:
            return False
    return True


@njit(cache=True, inline="always")
def _is_key(buf, s, e, keys, key_starts, which):
    a, b = key_starts[which], key_starts[which + 1]
    if e - s != b - a:
        return False
    for k in range(b - a):
        if buf[s + k] != keys[a + k]:
            return False
    return True


@njit(cache=True, inline="always")
def _is_word(buf, s, e, word):
    if e - s != len(word):
        return False
    for k in range(len(word)):
        if buf[s + k] != word[k]:
            return False
    return True


@njit(cache=True)
def _top_key(buf, s, e, keys, key_starts):
    for which in range(len(key_starts) - 1):
        if _is_key(buf, s, e, keys, key_starts, which):
            return which
    return -1


@njit(cache=True)
def _prediction_object(buf, i, end, powers, m, kinds, numbers, ints, spans):
    """The object ``{"score": …, "label": …}`` at ``i`` (either may be absent, nothing else) into the
    SCORE and LABEL slots of message ``m``; its end, or -1."""
    i = _skip_ws(buf, i + 1, end)
    if i < end and buf[i] == 125:
        return i + 1
    while True:
        if i >= end or buf[i] != 34:
            return -1
        j = _string(buf, i, end)
        if j < 0:
            return -1
        if _is_word(buf, i + 1, j - 1, _SCORE_KEY):
            slot = SCORE
        elif _is_word(buf, i + 1, j - 1, _LABEL_KEY):
            slot = LABEL
        else:
            return -1
        if kinds[m, slot] != ABSENT:
            return -1  # a duplicate key
        i = _skip_ws(buf, j, end)
        if i >= end or buf[i] != 58:
            return -1
        i = _skip_ws(buf, i + 1, end)
        if i >= end:
            return -1
        kind, x, n, s, j = _scalar(buf, i, end, powers)
        if kind == ABSENT:
            return -1
        kinds[m, slot], numbers[m, slot], ints[m, slot] = kind, x, n
        spans[m, slot, 0], spans[m, slot, 1] = s, j - 1 if kind == STRING else j
        i = _skip_ws(buf, j, end)
        if i >= end:
            return -1
        if buf[i] == 125:
            return i + 1
        if buf[i] != 44:
            return -1
        i = _skip_ws(buf, i + 1, end)


@njit(cache=True)
def _hash(buf, s, e):
    h = _U64(14695981039346656037)
    for k in range(s, e):
        h = (h ^ _U64(buf[k])) * _U64(1099511628211)
    return h


@njit(cache=True)
def _features(buf, i, end, powers, first, capacity, value_kinds, value_numbers, value_ints, value_spans, key_spans):
    """The flat object at ``i`` into the value arrays from index ``first``; (its end, its count), end -1 when
    it is not flat or too long for the arrays."""
    count = 0
    i = _skip_ws(buf, i + 1, end)
    if i < end and buf[i] == 125:
        return i + 1, 0
    while True:  # the hot loop: the common cases written out here (a call costs more than a byte's work)
        if i >= end or buf[i] != 34:
            return -1, 0
        j = i + 1
        while j < end:
            c = buf[j]
            if c == 34 or c == 92 or c < 32 or c >= 128:
                break
            j += 1
        if j < end and buf[j] == 34:
            j += 1
        else:  # an escape, a control character, UTF-8: the full check
            j = _string(buf, i, end)
            if j < 0:
                return -1, 0
        v = first + count
        if v >= capacity:
            return -1, 0
        key_spans[v, 0], key_spans[v, 1] = i + 1, j - 1
        i = j
        if i < end and buf[i] != 58:
            i = _skip_ws(buf, i, end)
        if i >= end or buf[i] != 58:
            return -1, 0
        i += 1
        if i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
            i = _skip_ws(buf, i, end)
        if i >= end:
            return -1, 0
        c = buf[i]
        if c == 45 or (c >= 48 and c <= 57):
            kind, x, n, j = _number(buf, i, end, powers)
            s = i
        elif c == 34:
            j = i + 1
            while j < end:
                c = buf[j]
                if c == 34 or c == 92 or c < 32 or c >= 128:
                    break
                j += 1
            if j < end and buf[j] == 34:
                j += 1
            else:
                j = _string(buf, i, end)
                if j < 0:
                    return -1, 0
            kind, x, n, s = STRING, np.nan, 0, i + 1
        else:
            kind, x, n, s, j = _scalar(buf, i, end, powers)
        if kind == ABSENT:
            return -1, 0
        value_kinds[v], value_numbers[v], value_ints[v] = kind, x, n
        value_spans[v, 0], value_spans[v, 1] = s, j - 1 if kind == STRING else j
        count += 1
        i = j
        if i < end and buf[i] != 44 and buf[i] != 125:
            i = _skip_ws(buf, i, end)
        if i >= end:
            return -1, 0
        if buf[i] == 125:
            return i + 1, count
        if buf[i] != 44:
            return -1, 0
        i += 1
        if i < end and buf[i] != 34:
            i = _skip_ws(buf, i, end)


@njit(cache=True)
def _same_keys(buf, key_spans, a, b, count):
    for k in range(count):
        sa, ea = key_spans[a + k, 0], key_spans[a + k, 1]
        sb, eb = key_spans[b + k, 0], key_spans[b + k, 1]
        if ea - sa != eb - sb or not _same(buf, sa, sb, ea - sa):
            return False
    return True


@njit(cache=True)
def _distinct_keys(buf, key_spans, first, count):
    hashes = np.empty(count, dtype=np.uint64)
    for k in range(count):
        hashes[k] = _hash(buf, key_spans[first + k, 0], key_spans[first + k, 1])
    order = np.argsort(hashes)
    for k in range(1, count):
        a, b = order[k - 1], order[k]
        if hashes[a] == hashes[b]:
            sa, ea = key_spans[first + a, 0], key_spans[first + a, 1]
            sb, eb = key_spans[first + b, 0], key_spans[first + b, 1]
            if ea - sa == eb - sb and _same(buf, sa, sb, ea - sa):
                return False
    return True


@njit(cache=True)
def _message(buf, i, end, powers, keys, key_starts, m, kinds, numbers, ints, spans,
             first, capacity, value_kinds, value_numbers, value_ints, value_spans, key_spans):
    """One message into the arrays; its feature count, or -1 when it is unusual."""
    i = _skip_ws(buf, i, end)
    if i >= end or buf[i] != 123:
        return -1
    i = _skip_ws(buf, i + 1, end)
    count = -1  # no features member yet
    if i < end and buf[i] == 125:
        return -1  # {}: the codec names what is missing
    while True:
        if i >= end or buf[i] != 34:
            return -1
        j = _string(buf, i, end)
        if j < 0:
            return -1
        which = _top_key(buf, i + 1, j - 1, keys, key_starts)
        i = _skip_ws(buf, j, end)
        if i >= end or buf[i] != 58:
            return -1
        i = _skip_ws(buf, i + 1, end)
        if i >= end:
            return -1
        if which == 5:  # features
            if count >= 0:
                return -1
            if buf[i] != 123:
                return -1
            j, count = _features(buf, i, end, powers, first, capacity, value_kinds, value_numbers, value_ints,
                                 value_spans, key_spans)
            if j < 0:
                return -1
        elif which == 6:  # label: a label event, the codec's
            return -1
        elif which == 3 and buf[i] == 123:  # prediction: an object
            if kinds[m, PREDICTION] != ABSENT:
                return -1
            kinds[m, PREDICTION] = OBJECT
            j = _prediction_object(buf, i, end, powers, m, kinds, numbers, ints, spans)
            if j < 0:
                return -1
        else:
            kind, x, n, s, j = _scalar(buf, i, end, powers)
            if kind == ABSENT:
                return -1
            if which >= 0:
                slot = which if which < 4 else LATENCY
                if kinds[m, slot] != ABSENT:
                    return -1  # a duplicate key
                kinds[m, slot], numbers[m, slot], ints[m, slot] = kind, x, n
                spans[m, slot, 0], spans[m, slot, 1] = s, j - 1 if kind == STRING else j
        i = _skip_ws(buf, j, end)
        if i >= end:
            return -1
        if buf[i] == 125:
            i = _skip_ws(buf, i + 1, end)
            if i != end:
                return -1  # something after the object
            return count
        if buf[i] != 44:
            return -1
        i = _skip_ws(buf, i + 1, end)


@njit(cache=True)
def scan(buf, starts, ends, kafka_ms, max_ahead_ms, max_features, max_event_id_bytes, min_ms, max_ms, powers,
         keys, key_starts, kinds, numbers, ints, spans, times, usual, firsts, counts, layouts,
         value_kinds, value_numbers, value_ints, value_spans, key_spans, layout_firsts, layout_counts):
    """Every message of the batch into the arrays; the number of layouts. ``usual[m]``: message ``m`` has the
    common shape (its fields in row ``m``, its features from ``firsts[m]``, ``counts[m]`` of them, in
    layout ``layouts[m]``); ``times[m]``: its numeric timestamp in epoch milliseconds. ``kafka_ms``: each
    message's Kafka timestamp (``min_ms - 1``: none)."""
    n = len(starts)
    capacity = len(value_kinds)
    first = 0
    n_layouts = 0
    last_layout = -1
    for m in range(n):
        usual[m] = False
        count = _message(buf, starts[m], ends[m], powers, keys, key_starts, m, kinds, numbers, ints, spans,
                         first, capacity, value_kinds, value_numbers, value_ints, value_spans, key_spans)
        if count < 0 or count > max_features:
            continue
        # what the codec checks, read here so that a message is usual only when the codec takes it as it is
        if kinds[m, EVENT_ID] != STRING or kinds[m, MODEL_ID] != STRING:
            continue
        id_bytes = spans[m, EVENT_ID, 1] - spans[m, EVENT_ID, 0]
        if id_bytes == 0 or id_bytes > max_event_id_bytes or spans[m, MODEL_ID, 1] == spans[m, MODEL_ID, 0]:
            continue
        kind = kinds[m, TIMESTAMP]
        if kind == FLOAT or kind == INT:
            if kind == INT:
                if abs(ints[m, TIMESTAMP]) > 9_000_000_000_000_000:
                    continue
                ms = ints[m, TIMESTAMP] * 1000
            else:
                product = numbers[m, TIMESTAMP] * 1000
                if not (product > -9.0e18 and product < 9.0e18):
                    continue
                ms = np.int64(np.rint(product))  # Python's round(): half to even
            if ms < min_ms or ms > max_ms:
                continue
            if max_ahead_ms and kafka_ms[m] >= min_ms and ms - kafka_ms[m] > max_ahead_ms:
                continue
            times[m] = ms
        elif kind != ABSENT and kind != NULL and kind != STRING:
            continue
        kind = kinds[m, PREDICTION]
        if kind == TRUE or kind == FALSE:
            continue
        if kind == OBJECT:
            score = kinds[m, SCORE]
            if score != ABSENT and score != NULL and score != FLOAT and score != INT:
                continue
        kind = kinds[m, LATENCY]
        if kind != ABSENT and kind != NULL:
            if kind != FLOAT and kind != INT:
                continue
            if numbers[m, LATENCY] < 0:
                continue
        # the feature key order: one of the batch's layouts, or a new one (whose keys must be distinct)
        layout = -1
        if last_layout >= 0 and layout_counts[last_layout] == count and \
                _same_keys(buf, key_spans, layout_firsts[last_layout], first, count):
            layout = last_layout
        else:
            for candidate in range(n_layouts):
                if layout_counts[candidate] == count and \
                        _same_keys(buf, key_spans, layout_firsts[candidate], first, count):
                    layout = candidate
                    break
        if layout < 0:
            if n_layouts >= len(layout_firsts) or not _distinct_keys(buf, key_spans, first, count):
                continue
            layout = n_layouts
            layout_firsts[layout], layout_counts[layout] = first, count
            n_layouts += 1
        last_layout = layout
        usual[m] = True
        firsts[m], counts[m], layouts[m] = first, count, layout
        first += count
    return n_layouts


@njit(cache=True)
def intern(buf, spans):
    """Each span's string as an index into the distinct ones (compared byte for byte), and where each
    distinct one first is: (ids, firsts, count)."""
    n = len(spans)
    size = 16
    while size < 2 * n:
        size *= 2
    table = np.full(size, -1, dtype=np.int64)  # slot → distinct id
    ids = np.empty(n, dtype=np.int64)
    firsts = np.empty(n, dtype=np.int64)
    count = 0
    mask = _U64(size - 1)
    for k in range(n):
        s, e = spans[k, 0], spans[k, 1]
        slot = np.int64(_hash(buf, s, e) & mask)
        while True:
            held = table[slot]
            if held < 0:
                table[slot] = count
                firsts[count] = k
                ids[k] = count
                count += 1
                break
            a, b = spans[firsts[held], 0], spans[firsts[held], 1]
            if b - a == e - s and _same(buf, a, s, e - s):
                ids[k] = held
                break
            slot = (slot + 1) & (size - 1)
    return ids, firsts[:count], count
