"""A batch of messages → the same decoded events and dead letters as :func:`codec.decode` of each, faster.

The compiled scanner (:mod:`stream_monitor.jsonscan`) reads the whole batch at once into per-column
arrays; each message of the common shape becomes its :class:`InferenceEvent` without a parsed document:
its features are a :class:`Features` mapping over the batch's arrays (a dict is built only when a
value is read from it) and, when they are all numbers, their float64 copy is a slice of the batch's one
array. Every other message — unusual in any way the scanner does not vouch for — goes through
:func:`codec.decode`, so every dead letter's reason and text are what they always were.

>>> from stream_monitor.events import RawMessage
>>> raws = [RawMessage("ml.inference", 0, 7, b'{"event_id": "e1", "model_id": "fraud", "features": {"amount": 3}}'),
...         RawMessage("ml.inference", 0, 8, b'[1, 2]')]
>>> decoded = decode_batch(raws, {"fraud"})
>>> dict(decoded[0].features), decoded[1]
({'amount': 3}, DeadLetter(reason='not_object', error='expected a JSON object, got array'))
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Collection, Iterator, Sequence

import numpy as np

from . import jsonscan as js
from .codec import _MAX_MS, _MIN_MS, Decoded, _Invalid, _timestamp, category, decode, size_refusal
from .events import InferenceEvent, RawMessage

FAST_MIN_BATCH = 4  # fewer messages than this: the codec, one by one (the scanner's fixed cost is not worth it)


class Features(Mapping):
    """An event's features as a read-only mapping over its batch's arrays (the dict the codec would give,
    built on first read)."""

    __slots__ = ("_values", "_batch", "_first", "_layout")

    def __init__(self, batch: "_Values", first: int, layout: tuple[str, ...]):
        self._values = None
        self._batch, self._first, self._layout = batch, first, layout

    def _dict(self) -> dict[str, Any]:
        values = self._values
        if values is None:
            objects = self._batch.objects()
            values = self._values = dict(zip(self._layout, objects[self._first:self._first + len(self._layout)]))
            self._batch = None
        return values

    def __getitem__(self, name: str) -> Any:
        return self._dict()[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._dict().get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)

    def keys(self):
        return self._dict().keys()

    def items(self):
        return self._dict().items()

    def values(self):
        return self._dict().values()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._dict() == (other._dict() if isinstance(other, Features) else dict(other.items()))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._dict())

    def __reduce__(self):  # pickles (and copies) as the dict it stands for
        return dict, (self._dict(),)


class _Values:
    """A batch's feature values as the Python objects the codec's parse gives (built once, on first read)."""

    __slots__ = ("_objects", "_numbers", "_others", "_kinds", "_ints", "_spans", "_buf")

    def __init__(self, numbers: np.ndarray, kinds: np.ndarray, ints: np.ndarray, spans: np.ndarray, buf: bytes):
        self._objects = None
        self._numbers, self._buf = numbers, buf
        self._others = np.flatnonzero(kinds != js.FLOAT)  # what is not a float: kept (the scratch is reused)
        self._kinds, self._ints, self._spans = kinds[self._others], ints[self._others], spans[self._others]

    def objects(self) -> list[Any]:
        if self._objects is None:
            objects = self._numbers.tolist()
            buf = self._buf
            for index, kind, integer, (a, b) in zip(self._others.tolist(), self._kinds.tolist(), self._ints.tolist(),
                                                    self._spans.tolist()):
                if kind == js.INT:
                    objects[index] = integer
                elif kind == js.STRING:
                    objects[index] = buf[a:b].decode()
                else:
                    objects[index] = _CONSTANTS[kind]
            self._objects = objects
            self._numbers = self._kinds = self._ints = self._spans = self._buf = None
        return self._objects


_CONSTANTS = {js.TRUE: True, js.FALSE: False, js.NULL: None}


class _Scan:
    """The scanner's arrays for a batch of ``n`` messages with at most ``capacity`` feature values (scratch,
    reused from batch to batch: what an event keeps is copied out)."""

    def __init__(self, n: int, capacity: int):
        self.n, self.capacity = n, capacity
        self.kinds = np.zeros((n, js.FIELDS), dtype=np.int8)
        self.numbers = np.zeros((n, js.FIELDS))
        self.ints = np.zeros((n, js.FIELDS), dtype=np.int64)
        self.spans = np.zeros((n, js.FIELDS, 2), dtype=np.int64)
        self.times = np.zeros(n, dtype=np.int64)
        self.usual = np.zeros(n, dtype=np.bool_)
        self.firsts = np.zeros(n, dtype=np.int64)
        self.counts = np.zeros(n, dtype=np.int64)
        self.layouts = np.zeros(n, dtype=np.int64)
        self.value_kinds = np.zeros(capacity, dtype=np.int8)
        self.value_numbers = np.zeros(capacity)
        self.value_ints = np.zeros(capacity, dtype=np.int64)
        self.value_spans = np.zeros((capacity, 2), dtype=np.int64)
        self.key_spans = np.zeros((capacity, 2), dtype=np.int64)
        self.layout_firsts = np.zeros(js.MAX_LAYOUTS, dtype=np.int64)
        self.layout_counts = np.zeros(js.MAX_LAYOUTS, dtype=np.int64)


_scratch = threading.local()


def _arrays(n: int, capacity: int) -> _Scan:
    held = getattr(_scratch, "scan", None)
    if held is None or held.n < n or held.capacity < capacity:
        held = _scratch.scan = _Scan(max(n, getattr(held, "n", 0)), max(capacity, getattr(held, "capacity", 0)))
    else:
        held.kinds[:n] = 0  # ABSENT
    return held


def scan_batch(values: Sequence[bytes], kafka_ms: Sequence[int | None], max_features: int, max_event_id_bytes: int,
               max_ahead_ms: int) -> tuple[_Scan, bytes, int]:
    """The scanner over ``values`` (none empty): its arrays (rows past ``len(values)`` are stale), the batch's
    bytes, its number of layouts."""
    buf = b"".join(values)
    data = np.frombuffer(buf, dtype=np.uint8)
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    none = _MIN_MS - 1
    kafka = np.fromiter((none if t is None else t for t in kafka_ms), dtype=np.int64, count=len(values))
    s = _arrays(len(values), len(buf) // 5 + len(values))  # a feature takes 5 bytes at least: "":0,
    layouts = js.scan(data, starts, ends, kafka, max_ahead_ms, max_features, max_event_id_bytes, _MIN_MS, _MAX_MS,
                      js.POWERS_OF_FIVE, js.KEY_BYTES, js.KEY_STARTS, s.kinds, s.numbers, s.ints, s.spans, s.times,
                      s.usual, s.firsts, s.counts, s.layouts, s.value_kinds, s.value_numbers, s.value_ints,
                      s.value_spans, s.key_spans, s.layout_firsts, s.layout_counts)
    return s, buf, layouts


def decode_batch(messages: Sequence[RawMessage], known_models: Collection[str], max_bytes: int = 1_048_576,
                 max_features: int = 1_000, max_event_id_bytes: int = 256,
                 max_ahead_ms: int = 3_600_000) -> list[Decoded]:
    """``[codec.decode(m, …) for m in messages]``, the common shape read by the compiled scanner."""
    out: list[Decoded | None] = [None] * len(messages)
    scanned: list[int] = []
    for index, message in enumerate(messages):
        refused = size_refusal(message.value, max_bytes)
        if refused is not None:
            out[index] = refused
        else:
            scanned.append(index)
    if len(scanned) >= FAST_MIN_BATCH:
        _fast(messages, scanned, out, known_models, max_features, max_event_id_bytes, max_ahead_ms)
    for index, decoded in enumerate(out):
        if decoded is None:
            out[index] = decode(messages[index], known_models, max_bytes, max_features, max_event_id_bytes,
                                max_ahead_ms)
    return out  # type: ignore[return-value]


def _fast(messages: Sequence[RawMessage], scanned: list[int], out: list, known_models: Collection[str],
          max_features: int, max_event_id_bytes: int, max_ahead_ms: int) -> None:
    """The usual messages of ``scanned`` decoded into ``out`` (the others left ``None``)."""
    chosen = [messages[i] for i in scanned]
    s, buf, n_layouts = scan_batch([m.value for m in chosen], [m.timestamp_ms for m in chosen], max_features,
                                   max_event_id_bytes, max_ahead_ms)
    n = len(chosen)
    usual = np.flatnonzero(s.usual[:n])
    if not len(usual):
        return
    used = int((s.firsts[usual] + s.counts[usual]).max())
    value_numbers = s.value_numbers[:used].copy()
    value_kinds = s.value_kinds[:used]
    layouts = []
    for first, count in zip(s.layout_firsts[:n_layouts].tolist(), s.layout_counts[:n_layouts].tolist()):
        layouts.append(tuple(buf[a:b].decode() for a, b in s.key_spans[first:first + count].tolist()))
    numeric_kinds = (value_kinds == js.FLOAT) | (value_kinds == js.INT)
    # per event: are all its features numbers (a prefix-sum over the values)
    numeric_before = np.concatenate(([0], np.cumsum(numeric_kinds)))
    firsts, counts = s.firsts[usual], s.counts[usual]
    all_numeric = ((numeric_before[firsts + counts] - numeric_before[firsts]) == counts) & (counts > 0)
    numbers_view = memoryview(value_numbers)
    values = _Values(value_numbers, value_kinds, s.value_ints[:used], s.value_spans[:used], buf)
    models: dict[bytes, str | None] = {}
    kinds = s.kinds[usual].tolist()
    numbers = s.numbers[usual].tolist()
    spans = s.spans[usual].tolist()
    times = s.times[usual].tolist()
    for m, first, count, layout, numeric, kind, number, span, time in zip(
            usual.tolist(), firsts.tolist(), counts.tolist(), s.layouts[usual].tolist(), all_numeric.tolist(),
            kinds, numbers, spans, times):
        raw = chosen[m]
        a, b = span[js.MODEL_ID]
        model_bytes = buf[a:b]
        model_id = models.get(model_bytes, "")
        if model_id == "":
            model_id = models[model_bytes] = _known(model_bytes, known_models)
        if model_id is None:
            continue  # unknown (or not UTF-8): the codec's dead letter
        a, b = span[js.EVENT_ID]
        event_id = buf[a:b].decode()
        k = kind[js.TIMESTAMP]
        if k == js.FLOAT or k == js.INT:
            timestamp_ms = time
        elif k == js.STRING:
            a, b = span[js.TIMESTAMP]
            try:
                timestamp_ms = _timestamp(buf[a:b].decode(), raw.timestamp_ms, max_ahead_ms)
            except _Invalid:
                continue
        else:
            timestamp_ms = raw.timestamp_ms
        score = predicted_label = None
        k = kind[js.PREDICTION]
        if k == js.FLOAT or k == js.INT:
            score = number[js.PREDICTION]
        elif k == js.STRING:
            a, b = span[js.PREDICTION]
            predicted_label = buf[a:b].decode()
        elif k == js.OBJECT:
            k = kind[js.SCORE]
            if k == js.FLOAT or k == js.INT:
                score = number[js.SCORE]
            k = kind[js.LABEL]
            if k != js.ABSENT and k != js.NULL:
                predicted_label = category(_scalar(k, number[js.LABEL], s.ints[m, js.LABEL], buf, span[js.LABEL]))
        k = kind[js.LATENCY]
        latency = number[js.LATENCY] if k == js.FLOAT or k == js.INT else None
        if count:
            names = layouts[layout]
            features: Any = Features(values, first, names)
            event_numbers = numbers_view[first:first + count] if numeric else None
            event_layout = names if numeric else None
        else:
            features, event_numbers, event_layout = {}, None, None
        out[scanned[m]] = InferenceEvent(event_id, model_id, timestamp_ms, features, score, predicted_label, latency,
                                         event_numbers, event_layout)


def _known(model_bytes: bytes, known_models: Collection[str]) -> str | None:
    model_id = model_bytes.decode()
    return model_id if model_id in known_models else None


def _scalar(kind: int, number: float, integer: Any, buf: bytes, span: Sequence[int]) -> Any:
    if kind == js.FLOAT:
        return number
    if kind == js.INT:
        return int(integer)
    if kind == js.STRING:
        return buf[span[0]:span[1]].decode()
    return _CONSTANTS[kind]
