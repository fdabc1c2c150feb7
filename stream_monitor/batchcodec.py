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
from functools import partial
from itertools import repeat
from operator import attrgetter
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
    """A batch's feature values as the Python objects the codec's parse gives (built once, on first read,
    in bulk: each distinct string decoded once)."""

    __slots__ = ("_objects", "_numbers", "_kinds", "_ints", "_spans", "_buf", "_at_ints", "_at_strings", "slots")

    def __init__(self, numbers: np.ndarray, kinds: np.ndarray, ints: np.ndarray, spans: np.ndarray, buf: bytes):
        self._objects = None
        self._numbers, self._kinds, self._buf = numbers, kinds, buf
        self._at_ints, self._at_strings = np.flatnonzero(kinds == js.INT), np.flatnonzero(kinds == js.STRING)
        self._ints, self._spans = ints[self._at_ints], spans[self._at_strings]  # the scratch is reused
        self.slots: dict[tuple[int, str], int | None] = {}  # (id of a layout, name) → its place in the layout

    def column(self, at: np.ndarray) -> list[Any]:
        """The values at positions ``at`` as the codec's parse gives them (one column of a batch's events)."""
        kinds = self._kinds[at]
        out = np.empty(len(at), dtype=object)
        out[:] = self._numbers[at]
        ints = kinds == js.INT
        if ints.any():
            out[ints] = self._ints[np.searchsorted(self._at_ints, at[ints])]
        strings = kinds == js.STRING
        if strings.any():
            spans = self._spans[np.searchsorted(self._at_strings, at[strings])]
            ids, firsts, _ = js.intern(np.frombuffer(self._buf, dtype=np.uint8), spans)
            distinct = np.empty(len(firsts), dtype=object)
            distinct[:] = [self._buf[a:b].decode() for a, b in spans[firsts].tolist()]
            out[strings] = distinct[ids]
        out[kinds == js.TRUE] = True
        out[kinds == js.FALSE] = False
        out[kinds == js.NULL] = None
        return out.tolist()

    def objects(self) -> list[Any]:
        if self._objects is None:
            kinds = self._kinds
            objects = np.empty(len(kinds), dtype=object)
            objects[:] = self._numbers  # Python floats (NaN where not a number, replaced below)
            objects[kinds == js.INT] = self._ints  # Python ints
            strings = kinds == js.STRING
            if strings.any():
                ids, firsts, _ = js.intern(np.frombuffer(self._buf, dtype=np.uint8), self._spans)
                spans, buf = self._spans, self._buf
                distinct = np.empty(len(firsts), dtype=object)
                distinct[:] = [buf[a:b].decode() for a, b in spans[firsts].tolist()]
                objects[strings] = distinct[ids]
            objects[kinds == js.TRUE] = True
            objects[kinds == js.FALSE] = False
            objects[kinds == js.NULL] = None
            self._objects = objects.tolist()
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
    """The usual messages of ``scanned`` decoded into ``out`` (the others left ``None``): each field built
    for the whole batch in one pass, so that no Python code runs per event but building its fields."""
    chosen = [messages[i] for i in scanned]
    s, buf, n_layouts = scan_batch([m.value for m in chosen], [m.timestamp_ms for m in chosen], max_features,
                                   max_event_id_bytes, max_ahead_ms)
    n = len(chosen)
    usual = np.flatnonzero(s.usual[:n])
    if not len(usual):
        return
    firsts, counts = s.firsts[usual], s.counts[usual]
    used = int((firsts + counts).max())
    value_numbers = s.value_numbers[:used].copy()  # the scratch is reused: what events keep is copied
    value_kinds = s.value_kinds[:used].copy()
    layouts = [tuple(buf[a:b].decode() for a, b in s.key_spans[first:first + count].tolist())
               for first, count in zip(s.layout_firsts[:n_layouts].tolist(), s.layout_counts[:n_layouts].tolist())]
    kinds, numbers, spans = s.kinds[usual], s.numbers[usual], s.spans[usual]
    text = buf.decode("ascii") if buf.isascii() else None  # then a string is a slice of it

    def strings(field: int) -> list[str]:
        pairs = spans[:, field].tolist()
        if text is not None:
            return [text[a:b] for a, b in pairs]
        return [buf[a:b].decode() for a, b in pairs]

    event_ids = strings(js.EVENT_ID)
    model_ids = strings(js.MODEL_ID)
    # the timestamp: epoch numbers converted by the scanner, strings here, else the Kafka message's
    kind = kinds[:, js.TIMESTAMP]
    times = s.times[usual].tolist()
    for j in np.flatnonzero((kind != js.FLOAT) & (kind != js.INT)).tolist():
        raw = chosen[usual[j]]
        if kind[j] == js.STRING:
            a, b = spans[j, js.TIMESTAMP].tolist()
            try:
                times[j] = _timestamp(buf[a:b].decode(), raw.timestamp_ms, max_ahead_ms)
            except _Invalid:
                times[j] = _REFUSED
        else:
            times[j] = raw.timestamp_ms
    # the prediction: a number, a string, or {"score": …, "label": …}
    kind = kinds[:, js.PREDICTION]
    score_kind = np.where(kind == js.OBJECT, kinds[:, js.SCORE], kind)
    score_number = np.where(kind == js.OBJECT, numbers[:, js.SCORE], numbers[:, js.PREDICTION])
    scores = _numbers_or_none(score_kind, score_number)
    labels: list[Any] = [None] * len(usual)
    for j in np.flatnonzero(kind == js.STRING).tolist():
        a, b = spans[j, js.PREDICTION].tolist()
        labels[j] = buf[a:b].decode()
    label_kind = np.where(kind == js.OBJECT, kinds[:, js.LABEL], js.ABSENT)
    for j in np.flatnonzero((label_kind != js.ABSENT) & (label_kind != js.NULL)).tolist():
        labels[j] = category(_scalar(int(label_kind[j]), float(numbers[j, js.LABEL]), int(s.ints[usual[j], js.LABEL]),
                                     buf, spans[j, js.LABEL].tolist()))
    latencies = _numbers_or_none(kinds[:, js.LATENCY], numbers[:, js.LATENCY])
    # the features: a mapping over the batch's values each, and when they are all numbers their float64 row
    event_layouts = s.layouts[usual]
    values = _Values(value_numbers, value_kinds, s.value_ints[:used], s.value_spans[:used], buf)
    names = [layouts[k] for k in event_layouts.tolist()]
    features = list(map(Features, repeat(values), firsts.tolist(), names))
    rows: list[Any] = [None] * len(usual)
    layout_of: list[Any] = [None] * len(usual)
    # every event with features has its float64 row: NaN where a value is not a number (a mixed event's
    # numbers stay in bulk; the engine reads the others a column at a time: column_values)
    if n_layouts == 1 and counts.all():  # one key order: one matrix, a row each
        rows = list(value_numbers.reshape(len(usual), int(counts[0])))
        layout_of = names
    else:
        view = memoryview(value_numbers)
        for j, first, count in zip(np.flatnonzero(counts).tolist(), firsts[counts > 0].tolist(),
                                   counts[counts > 0].tolist()):
            rows[j], layout_of[j] = view[first:first + count], names[j]
    for j in np.flatnonzero(counts == 0).tolist():
        features[j] = {}
    events = map(_EVENT, zip(event_ids, model_ids, times, features, scores, labels, latencies, rows, layout_of))
    for j, event in zip(usual.tolist(), events):
        if event[1] in known_models and event[2] is not _REFUSED:  # else the codec's dead letter
            out[scanned[j]] = event


_REFUSED = object()
_EVENT = partial(tuple.__new__, InferenceEvent)


def _numbers_or_none(kind: np.ndarray, number: np.ndarray) -> list[float | None]:
    """Each value as a float where its kind is a number, else None."""
    values = number.tolist()
    for j in np.flatnonzero((kind != js.FLOAT) & (kind != js.INT)).tolist():
        values[j] = None
    return values


def column_values(events: Sequence[InferenceEvent], name: str) -> list[Any] | None:
    """``[e.features.get(name) for e in events]`` read from the batch's arrays in one go, when every event's
    features are a :class:`Features` of one batch and one layout; else ``None``."""
    if not events:
        return None
    features = list(map(_FEATURES, events))  # C-level passes: a Python loop here would cost what it saves
    if set(map(type, features)) != {Features} or len(set(map(id, map(_BATCH, features)))) != 1 \
            or len(set(map(id, map(_LAYOUT, features)))) != 1:
        return None
    batch, layout = features[0]._batch, features[0]._layout
    key = (id(layout), name)
    slot = batch.slots.get(key, -1)
    if slot == -1:
        slot = batch.slots[key] = layout.index(name) if name in layout else None
    if slot is None:
        return [None] * len(events)
    return batch.column(np.fromiter(map(_FIRST, features), dtype=np.int64, count=len(features)) + slot)


_FEATURES, _BATCH, _LAYOUT, _FIRST = (attrgetter(a) for a in ("features", "_batch", "_layout", "_first"))


def warm_up() -> None:
    """Compile the scanner now (or load it from numba's cache): before the first batch, not in it."""
    decode_batch([RawMessage("", 0, i, b'{"event_id":"e","model_id":"m","timestamp":1.5,"features":{"a":0.5}}')
                  for i in range(FAST_MIN_BATCH)], {"m"})


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
