"""Hostile input: whatever bytes arrive, a message is processed or dead-lettered; nothing raises.

Pure: the codec and :class:`PartitionMonitor` driven the way ``app.Service._handle`` drives them,
without its ``except Exception`` safety net, so any exception that escapes here is a bug. Every
dead letter must carry a reason from ``schemas/dead_letter.json`` and its record must validate;
every alert raised on the way must serialise to a valid ``schemas/alert.json`` document; the
partition state must survive the Redis round trip (``encode_state`` → ``decode_state`` → ``restore``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import DeadLetter, RawMessage, dead_letter_record
from stream_monitor.partition import PartitionMonitor
from stream_monitor.state import decode_state, encode_state
from stream_monitor.synthetic import generate

from ..support import examples

# ±1e308 among the warm-up values overflow numpy's mean/std of the reference (reported; no exception).
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
MODELS = {m: {"decisions": "partition",
              "reference": {"events": 50}, "detectors": {"psi": {"window": 50}}} for m in ("fraud", "stable")}
CONFIG = parse_config({"models": MODELS})
KNOWN = frozenset(MODELS)
DEFAULT_MAX = 1_048_576
NOW_MS = 1_795_812_290_123


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


DEAD_LETTER_SCHEMA = _validator("dead_letter.json")
ALERT_SCHEMA = _validator("alert.json")
REASONS = frozenset(DEAD_LETTER_SCHEMA.schema["properties"]["reason"]["enum"])

VALID = {m: [orjson.dumps(e) for e in generate(m, 400, seed=11, drift_at=150)] for m in MODELS}


class Harness:
    """One partition fed like ``Service._handle`` feeds it, minus the catch-all."""

    def __init__(self, max_bytes: int = DEFAULT_MAX, check_records: bool = True, max_features: int = 1_000,
                 max_ahead_ms: int = 3_600_000):
        self.monitor = PartitionMonitor(CONFIG, 0, {})
        self.max_bytes = max_bytes
        self.max_features = max_features
        self.max_ahead_ms = max_ahead_ms
        self.check_records = check_records
        self.offset = 0
        self.letters: list[DeadLetter] = []
        self.alerts = 0

    def raw(self, value: bytes | None) -> RawMessage:
        return RawMessage(topic="ml.inference", partition=0, offset=self.offset, value=value, key=b"k",
                          headers=(("trace", b"t"), ("empty", None)), timestamp_ms=NOW_MS + self.offset)

    def feed(self, value: bytes | None) -> DeadLetter | None:
        raw = self.raw(value)
        decoded = decode(raw, KNOWN, self.max_bytes, self.max_features, max_ahead_ms=self.max_ahead_ms)
        outcome = None
        if isinstance(decoded, DeadLetter):
            assert decoded.reason in REASONS, decoded
            assert isinstance(decoded.error, str) and decoded.error
            if self.check_records:
                record = orjson.loads(orjson.dumps(dead_letter_record(raw, decoded, NOW_MS)))
                DEAD_LETTER_SCHEMA.validate(record)
            self.monitor.skip(raw.offset)
            self.letters.append(decoded)
            outcome = decoded
        else:
            self._process([(raw.offset, decoded, None)])
        assert self.monitor.next_offset == raw.offset + 1
        self.offset += 1
        return outcome

    def feed_batch(self, values: list[bytes]) -> None:
        """Messages that must decode, handed to the partition in one batch as the service hands a
        batch's events (the alerts do not depend on the cut: tests/unit/test_partition.py)."""
        items = []
        for value in values:
            raw = self.raw(value)
            decoded = decode(raw, KNOWN, self.max_bytes, self.max_features, max_ahead_ms=self.max_ahead_ms)
            assert not isinstance(decoded, DeadLetter), decoded
            items.append((raw.offset, decoded, None))
            self.offset += 1
        self._process(items)
        assert self.monitor.next_offset == self.offset

    def _process(self, items: list) -> None:
        for alert in self.monitor.process_batch(items):
            ALERT_SCHEMA.validate(orjson.loads(orjson.dumps(alert.to_dict(NOW_MS))))
            self.alerts += 1

    def valid(self, model: str, start: int, stop: int) -> None:
        """Ordinary traffic of ``model`` around the hostile messages, in one batch."""
        self.feed_batch(VALID[model][start:stop])

    def round_trip(self) -> None:
        """The partition state as the checkpoint stores it, and as the next owner restores it."""
        saved = decode_state(encode_state(self.monitor.snapshot()))
        restored = PartitionMonitor(CONFIG, 0, {})
        restored.restore(saved)
        assert same(restored.snapshot(), saved), "snapshot → Redis → restore → snapshot changes the state"


def same(a, b) -> bool:
    """Structural equality where NaN equals NaN (a detector statistic may legitimately be NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def through_a_stream(hostile: list[bytes | None], max_bytes: int = DEFAULT_MAX) -> Harness:
    """Hostile messages during the warm-up (they may become part of the reference), after it, and
    while detectors are deciding; valid traffic around them; then the state round trip."""
    harness = Harness(max_bytes)
    for model in MODELS:
        harness.valid(model, 0, 20)
    for value in hostile:
        harness.feed(value)
    for model in MODELS:
        harness.valid(model, 20, 60)  # warm-up complete: reference built
    for value in hostile:
        harness.feed(value)
    for model in MODELS:
        harness.valid(model, 60, 220)  # drift at 150: windows close, detectors fire
    for value in hostile:
        harness.feed(value)
    harness.round_trip()
    return harness


# --- strategies -----------------------------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson.dumps can write
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e308, -1e308, 5e-324, -0.0])
SCALARS = st.none() | st.booleans() | INT64 | FLOATS | st.text(max_size=30)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
FEATURE_NAMES = st.sampled_from(["amount", "age", "country", "is_new", "x", "color"]) | st.text(max_size=12)
TIMESTAMPS = (JSON_VALUES | st.sampled_from(["2026-11-27T20:44:50.123Z", "0001-01-01T00:00:00+01:00",
                                             "9999-12-31T23:59:59.999-01:00", "2026-02-30T00:00:00Z", "", "now",
                                             -62135596800, 253402300800, 1e308, -1e308])
              | st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()))


def _wrong_or_right(right: st.SearchStrategy) -> st.SearchStrategy:
    return right | JSON_VALUES


EVENT_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "event_id": _wrong_or_right(st.text(min_size=0, max_size=12)),
        "model_id": _wrong_or_right(st.sampled_from(["fraud", "stable", "", "nobody"])),
        "timestamp": TIMESTAMPS,
        "features": _wrong_or_right(st.dictionaries(FEATURE_NAMES, _wrong_or_right(SCALARS), max_size=8)),
        "prediction": _wrong_or_right(SCALARS | st.fixed_dictionaries(
            {}, optional={"score": _wrong_or_right(FLOATS), "label": _wrong_or_right(SCALARS)})),
        "latency_ms": _wrong_or_right(FLOATS),
        "label": JSON_VALUES,
    })


def _required_ids(doc: dict) -> st.SearchStrategy:
    """Event-shaped documents mostly carry valid ids, so the deeper fields get exercised."""
    return st.fixed_dictionaries({"event_id": st.text(min_size=1, max_size=8),
                                  "model_id": st.sampled_from(["fraud", "stable"])}).map(lambda ids: {**doc, **ids})


EVENT_SHAPED = EVENT_DOCS | EVENT_DOCS.flatmap(_required_ids)
HYPOTHESIS = settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- properties --------------------------------------------------------------------------------------------------


@HYPOTHESIS
@given(st.lists(st.none() | st.binary(max_size=300), min_size=1, max_size=6))
def test_random_bytes_are_processed_or_dead_lettered(messages):
    through_a_stream(messages)


@HYPOTHESIS
@given(st.lists(JSON_VALUES.map(orjson.dumps), min_size=1, max_size=6))
def test_random_json_documents_are_processed_or_dead_lettered(messages):
    through_a_stream(messages)


@HYPOTHESIS
@given(st.lists(EVENT_SHAPED.map(orjson.dumps), min_size=1, max_size=6))
def test_event_shaped_documents_with_every_field_of_every_type(messages):
    through_a_stream(messages)


@HYPOTHESIS
@given(st.lists(EVENT_SHAPED.map(orjson.dumps), min_size=1, max_size=3), st.data())
def test_byte_level_corruption_of_event_documents(messages, data):
    """Flip, drop or insert bytes (invalid UTF-8, truncation) in otherwise event-shaped documents."""
    corrupted = []
    for value in messages:
        buf = bytearray(value)
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(buf)))
            action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
            byte = data.draw(st.sampled_from([0x80, 0xbf, 0xc0, 0xc3, 0xe2, 0xed, 0xf0, 0xf8, 0xff, 0x00, 0x22, 0x5c]))
            if action == "insert" or at == len(buf):
                buf.insert(at, byte)
            elif action == "flip":
                buf[at] = byte
            else:
                del buf[at]
        corrupted.append(bytes(buf))
    through_a_stream(corrupted)


WARMUP_EVENTS = st.fixed_dictionaries(
    {"event_id": st.text(min_size=1, max_size=8), "model_id": st.just("stable"),
     "features": st.dictionaries(st.sampled_from(["x", "color", "amount", ""]), SCALARS, max_size=4)},
    optional={"timestamp": TIMESTAMPS, "latency_ms": FLOATS | INT64,
              "prediction": SCALARS | st.fixed_dictionaries({}, optional={"score": FLOATS | INT64, "label": SCALARS})})


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WARMUP_EVENTS.map(orjson.dumps), min_size=50, max_size=70))
def test_a_warm_up_made_of_strange_but_decodable_events(messages):
    """The reference itself is built from hostile values (extreme, constant, mixed types, missing),
    then ordinary traffic is compared with it."""
    harness = Harness()
    for value in messages:
        harness.feed(value)
    harness.valid("stable", 0, 220)
    for value in messages[:10]:
        harness.feed(value)
    harness.round_trip()


# --- named hostile messages ----------------------------------------------------------------------------------------


def _event(features: dict | str | bytes = b'{"x": 1.0, "color": "red"}', **fields: bytes) -> bytes:
    parts = {b"event_id": b'"e-1"', b"model_id": b'"stable"', **{k.encode(): v for k, v in fields.items()}}
    body = b", ".join(b'"%s": %s' % (k, v) for k, v in parts.items())
    features = features if isinstance(features, bytes) else orjson.dumps(features)
    return b"{" + body + b', "features": ' + features + b"}"


DEEP = 5_000
MB = 1024 * 1024
NAMED = {
    "deep lists": b"[" * DEEP + b"]" * DEEP,
    "deep objects": b'{"a": ' * DEEP + b"1" + b"}" * DEEP,
    "deep feature value": _event(b'{"x": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
    "deep prediction": _event(prediction=b'{"score": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
    "deep label": b'{"event_id": "e", "model_id": "stable", "label": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "huge numbers": _event(b'{"x": 1e308, "color": -1e308, "age": 1208925819614629174706176}'),
    "2**80 everywhere": _event(b'{"x": 1208925819614629174706176}', timestamp=b"1208925819614629174706176",
                               latency_ms=b"1208925819614629174706176",
                               prediction=b'{"score": 1208925819614629174706176, "label": 1208925819614629174706176}'),
    "-2**80 latency": _event(latency_ms=b"-1208925819614629174706176"),
    "1e308 timestamp": _event(timestamp=b"1e308"),
    "-1e308 timestamp": _event(timestamp=b"-1e308"),
    "1e308 latency": _event(latency_ms=b"1e308"),
    "1e308 score": _event(prediction=b"1e308"),
    "-1e308 score object": _event(prediction=b'{"score": -1e308, "label": 1e308}'),
    "overflowing literal": _event(b'{"x": 1e400}'),
    "200-digit integer": _event(b'{"x": ' + b"9" * 200 + b"}"),
    "NaN token": _event(b'{"x": NaN}'),
    "Infinity token": _event(b'{"x": Infinity}'),
    "-Infinity token": _event(b'{"x": -Infinity}'),
    "NaN score": _event(prediction=b"NaN"),
    "NaN string": _event({"x": "NaN", "color": "Infinity"}),
    "invalid UTF-8 in a value": _event(b'{"color": "\xff\xfe"}'),
    "invalid UTF-8 in a key": _event(b'{"\xc3\x28": 1}'),
    "overlong UTF-8": _event(b'{"color": "\xc0\xaf"}'),
    "UTF-8 surrogate bytes": _event(b'{"color": "\xed\xa0\x80"}'),
    "lone surrogate escape": _event(b'{"color": "\\ud800"}'),
    "escaped NUL": _event(b'{"color": "\\u0000", "\\u0000": 1}'),
    "UTF-16 document": '{"event_id": "e", "model_id": "stable", "features": {}}'.encode("utf-16"),
    "UTF-8 BOM": b"\xef\xbb\xbf" + _event(),
    "duplicate keys": b'{"event_id": "a", "event_id": "b", "model_id": "fraud", "model_id": "stable", '
                      b'"features": {"x": 1, "x": "one"}, "features": {"x": 2, "x": 3}}',
    "duplicate keys to a wrong type": b'{"event_id": "a", "model_id": "stable", "features": {"x": 1}, "features": 7}',
    "empty event_id": _event(event_id=b'""'),
    "empty model_id": _event(model_id=b'""'),
    "null event_id": _event(event_id=b"null"),
    "empty feature name": _event({"": 1.0}),
    "empty object": b"{}",
    "trailing garbage": _event() + b"garbage",
    "two documents": _event() + b"\n" + _event(),
    "whitespace only": b" \n\t ",
    "NUL bytes": b"\x00" * 64,
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_hostile_message(name):
    harness = through_a_stream([NAMED[name]])
    assert len(harness.letters) in (0, 3), "the same message is treated alike each time"


@pytest.mark.parametrize("field", ["event_id", "model_id"])
def test_empty_ids_are_dead_lettered(field):
    letter = Harness().feed(_event(**{field: b'""'}))
    assert letter is not None and letter.reason in ("missing_field", "wrong_type"), letter


def test_deep_nesting_is_dead_lettered_not_a_recursion_error():
    for name in ("deep lists", "deep objects", "deep feature value", "deep prediction", "deep label"):
        letter = Harness().feed(NAMED[name])
        assert letter is not None, f"{name}: dead-lettered"


def test_huge_strings():
    """1 MB+ strings: over the default limit → too_large; under a raised limit → processed or dead-lettered."""
    big = "Z" * (MB + 10)
    cases = [_event({"color": big}), _event({big: 1.0}), _event(event_id=orjson.dumps(big)),
             _event(model_id=orjson.dumps(big)), _event(prediction=orjson.dumps({"label": big})),
             _event(timestamp=orjson.dumps(big)),
             b'{"event_id": "e", "model_id": "stable", "label": ' + orjson.dumps(big) + b"}"]
    for value in cases:
        letter = Harness().feed(value)
        assert letter is not None and letter.reason == "too_large", letter
    through_a_stream(cases, max_bytes=4 * MB)


WIDE = _event({f"f{i}": i * 0.5 if i % 2 else f"v{i}" for i in range(20_000)})


def _after_warm_up(odd_one: bytes, max_features: int) -> Harness:
    """Both models warmed up, three ``odd_one`` messages, ordinary traffic, and the state through a
    checkpoint and restore."""
    harness = Harness(max_features=max_features)
    for model in MODELS:
        harness.valid(model, 0, 60)
    for _ in range(3):
        harness.feed(odd_one)
    for model in MODELS:
        harness.valid(model, 60, 220)
    harness.round_trip()
    return harness


@pytest.mark.parametrize("max_features,stand_in", [(1_000, b"[1]"), (20_000, _event({}))],
                         ids=["dead-lettered", "processed"])
def test_twenty_thousand_features_after_the_warm_up(max_features, stand_in):
    """Dead-lettered (over service.max_features_per_event), or processed with the 20,000 features the
    reference does not know ignored: either way the partition ends in exactly the state of the same
    stream with, in their place, messages that carry nothing (one refused, one without features).
    Counted, not timed."""
    wide, plain = _after_warm_up(WIDE, max_features), _after_warm_up(stand_in, max_features)
    assert len(wide.letters) == len(plain.letters) == (3 if max_features < 20_000 else 0)
    for model_id in MODELS:
        assert _column_names(wide.monitor, model_id) == _column_names(plain.monitor, model_id), model_id
    assert same(wide.monitor.snapshot(), plain.monitor.snapshot())
    assert len(encode_state(wide.monitor.snapshot())) == len(encode_state(plain.monitor.snapshot()))


def _column_names(monitor: PartitionMonitor, model_id: str) -> list[tuple[str, str]]:
    return [(column.signal, column.name) for column in monitor.models[model_id].columns]


def _warm_up_after(events: int, per_event: int) -> PartitionMonitor:
    """A partition whose warm-up starts with ``events`` events of ``per_event`` distinct new features,
    then takes 1,000 ordinary events of two models."""
    harness = Harness(check_records=False)
    for e in range(events):
        harness.feed(_event({f"f{e}-{i}": i * 0.5 for i in range(per_event)}))
    model = harness.monitor.models.get("stable")  # none when the wide events were dead-lettered
    if model is not None:
        assert len(model.warmup.features) <= CONFIG.service.max_inferred_columns, "the warm-up tracks every name"
    harness.valid("stable", 0, 50)
    for model in ("stable", "fraud"):
        harness.valid(model, 50, 400)
    for value in VALID["stable"][:300]:
        harness.feed(value)
    return harness.monitor


@pytest.mark.timeout(120)  # a stall fails here rather than holding the tier for minutes
@pytest.mark.parametrize("events,per_event", [(1, 20_000), (40, 500)],
                         ids=["one event with 20000 features", "40 events with 500 new features each"])
def test_twenty_thousand_features_in_the_warm_up_do_not_stall_the_partition(events, per_event):
    """The service never stalls on bad input. Feature names the config does not fix are inferred from
    the warm-up events; wide events among them must not turn every later event of that partition into
    20,000 column updates, nor its checkpoint into a 20,000-column state: the warm-up tracks at most
    ``service.max_inferred_columns`` names, and the partition ends with no more columns and no larger a
    snapshot than the same stream without the wide events. Counted, not timed (a wall-clock budget
    failed on a loaded machine)."""
    wide, plain = _warm_up_after(events, per_event), _warm_up_after(0, 0)
    for model_id in ("stable", "fraud"):
        assert len(wide.models[model_id].columns) <= len(plain.models[model_id].columns)
    assert len(encode_state(wide.snapshot())) <= len(encode_state(plain.snapshot()))


@pytest.mark.parametrize("timestamp", [-62135596800, "0001-01-01T00:00:00Z", "0999-12-31T23:59:59.999Z",
                                       253402300799.999, "9999-12-31T23:59:59.999Z"])
def test_alerts_at_the_edges_of_the_timestamp_range(timestamp):
    """Event times the codec accepts (years 1..9999) appear in alerts as valid RFC 3339 (four-digit years).
    Times far ahead of the Kafka message's are accepted only with service.max_timestamp_ahead_seconds = 0."""
    harness = Harness(max_ahead_ms=0)
    values = []
    for value in VALID["fraud"][:300]:
        event = orjson.loads(value)
        event["timestamp"] = timestamp
        values.append(orjson.dumps(event))
    harness.feed_batch(values)
    assert harness.alerts > 0, "the drift at 150 raised alerts, each validated against alert.json"


def test_categories_keep_the_state_bounded():
    """100,000 distinct categories after the warm-up: the checkpointed snapshot stays small."""
    harness = Harness()
    harness.valid("stable", 0, 50)
    before = len(encode_state(harness.monitor.snapshot()))
    base = orjson.loads(VALID["stable"][60])
    for first in range(0, 100_000, 1000):
        batch = []
        for i in range(first, first + 1000):
            base["event_id"] = f"c-{i}"
            base["features"]["color"] = f"category-{i:06d}-{'x' * (i % 40)}"
            batch.append(orjson.dumps(base))
        harness.feed_batch(batch)
    after = len(encode_state(harness.monitor.snapshot()))
    bound = 64 * 1024
    print(f"snapshot after the warm-up {before} bytes, after 100,000 distinct categories {after} bytes")
    assert after < bound, f"snapshot grew from {before} to {after} bytes"
