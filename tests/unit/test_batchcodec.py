"""The batch decode (compiled scanner + the codec as fallback) gives exactly what the codec gives, message by
message: the same events (to the type and sign of every value and the key order of the features) and the
same dead letters (reason and text)."""

from __future__ import annotations

import json
import random

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_monitor import jsonscan
from stream_monitor.batchcodec import Features, column_values, decode_batch
from stream_monitor.codec import decode
from stream_monitor.events import DeadLetter, InferenceEvent, RawMessage

MODELS = frozenset({"fraud", "churn"})
KAFKA_TS = 1_795_812_291_623


def strict(value):
    """A value with its type: 1 and 1.0, 0.0 and -0.0 differ."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, dict) or isinstance(value, Features):
        return ("object", [(k, strict(v)) for k, v in value.items()])
    return (type(value).__name__, repr(value))


def canonical(decoded):
    if isinstance(decoded, DeadLetter):
        return ("dead_letter", decoded.reason, decoded.error)
    if isinstance(decoded, InferenceEvent):
        numbers = None if decoded.numbers is None else [repr(x) for x in np.frombuffer(decoded.numbers).tolist()]
        mine = [strict(v) for v in decoded[:7]]
        if decoded.numbers is not None:  # the float64 copy: the numbers of the features, in the layout's order
            assert list(decoded.layout) == list(decoded.features)
            assert numbers == [repr(float(v)) if v.__class__ in (int, float) else "nan"
                               for v in decoded.features.values()]
        return ("inference", mine)
    return (type(decoded).__name__, [strict(v) for v in decoded])


def raws(values, timestamp_ms=KAFKA_TS):
    return [RawMessage("ml.inference", 3, 40 + i, v if isinstance(v, (bytes, type(None))) else orjson.dumps(v),
                       timestamp_ms=timestamp_ms) for i, v in enumerate(values)]


def same(messages, **limits):
    """decode_batch == decode of each, strictly; the batch's decoded messages."""
    fast = decode_batch(messages, MODELS, **limits)
    slow = [decode(m, MODELS, **limits) for m in messages]
    assert [canonical(d) for d in fast] == [canonical(d) for d in slow]
    return fast


PLAIN = {"event_id": "e1", "model_id": "fraud", "timestamp": 1795812290.123,
         "features": {"amount": 12.5, "age": 41, "country": "DE", "vip": True, "note": None},
         "prediction": {"score": 0.91}, "latency_ms": 3.5}


def plain(i: int) -> bytes:
    return orjson.dumps({**PLAIN, "event_id": f"e{i}"})


ODD = [
    # escapes and unicode: in ids, keys, values
    rb'{"event_id": "e\u00e9", "model_id": "fraud", "features": {"a": 1.5}}',
    '{"event_id": "é✓𝄞", "model_id": "fraud", "features": {"größe": "München", "a": 2}}'.encode(),
    rb'{"event_id": "e1", "model_id": "fr\u0061ud", "features": {"a": 1}}',
    rb'{"event_id": "e1", "model_id": "fraud", "features": {"a\nb": 1}}',
    rb'{"event_id": "e1", "model_id": "fraud", "features": {"a": "x\"y"}}',
    rb'{"event_id": "e1", "model_id": "fraud", "features": {"a": "\ud800"}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": "\xff"}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": "\xed\xa0\x80"}}',  # a surrogate in UTF-8
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": "\xc0\xaf"}}',  # overlong
    b'{"event_id": "e\xe2\x82", "model_id": "fraud", "features": {"a": 1}}',  # cut short
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": "tab\there"}}',
    # duplicate keys: the last wins in the codec
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1, "a": 2}}',
    b'{"event_id": "e1", "event_id": "e2", "model_id": "fraud", "features": {"a": 1}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "features": {"b": 2}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": 0.5, "prediction": {"score": 1}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"score": 0.1, "score": 0.2}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1, "b": 2, "c": 3, "b": 4}}',
    # big and odd numbers
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 123456789012345678901234567890}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 18446744073709551616}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": -9223372036854775809}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 999999999999999999}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 9999999999999999999}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1e400}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": -1e400}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1e-400}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 5e-324, "b": 2.2250738585072011e-308}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1.7976931348623157e308, "b": 1.7976931348623159e308}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1E5, "b": 1e+05, "c": 1.5e-3, "d": 0.1e1, "e": 0e5}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": -0.0, "b": -0, "c": 0, "d": -0e3, "e": 0.0}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 0.30000000000000004, "b": 9007199254740993}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1.00000000000000000000001, "b": 0.1000000000000000055511151231257827}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 01}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1.}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": .5}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": +1}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1e}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": NaN, "b": Infinity}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": -}}',
    # nested values: refused by the codec
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": [1, 2]}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": {"b": 1}}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": [1, 2]}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": [0.5]}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"score": {"p": 1}}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "extra": {"deep": [1]}}',
    # whitespace everywhere, and none
    b' \t\r\n{ "event_id" : "e1" ,\n"model_id"\t:\t"fraud" , "features" : { "a" : 1 , "b" : "x" } } \n',
    b'{"event_id":"e1","model_id":"fraud","features":{"a":1,"b":null,"c":false}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}} x',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1},}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1,}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1} ',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a" 1}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": tru}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": nulll}}',
    # missing fields, wrong types, refused values
    b'{"model_id": "fraud", "features": {"a": 1}}',
    b'{"event_id": "", "model_id": "fraud", "features": {"a": 1}}',
    b'{"event_id": null, "model_id": "fraud", "features": {"a": 1}}',
    b'{"event_id": 7, "model_id": "fraud", "features": {"a": 1}}',
    b'{"event_id": "e1", "features": {"a": 1}}',
    b'{"event_id": "e1", "model_id": "nobody", "features": {"a": 1}}',
    b'{"event_id": "e1", "model_id": "", "features": {"a": 1}}',
    b'{"event_id": "e1", "model_id": "fraud"}',
    b'{"event_id": "e1", "model_id": "fraud", "label": 1}',
    b'{"event_id": "e1", "model_id": "fraud", "label": "yes", "timestamp": "2026-11-27T20:44:50Z"}',
    b'{"event_id": "e1", "model_id": "fraud", "label": [1]}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "label": 1}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": null}',
    b'{"event_id": "e1", "model_id": "fraud", "features": "a=1"}',
    b'{}', b'[]', b'[1, 2]', b'"text"', b'12', b'null', b'', b'{', b'not json',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": 1795812290}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": 1795812290.0005}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": 1795812290.0015}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": 1795812290.0025}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": -62135596800.5}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": 253402300800}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": 1e300}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": 1895812290}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": "2026-11-27T20:44:50.123Z"}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": "2026-11-27T20:44:50"}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": "2027-11-27T20:44:50Z"}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": "yesterday"}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": true}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "timestamp": null}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": 1}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": "yes"}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": true}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": null}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"score": 1}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"score": "high"}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"score": true}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"label": 1e15}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"label": 2.0, "score": null}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"label": true}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"label": "fraud", "score": 0.7}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "prediction": {"label": "x", "other": 1}}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "latency_ms": -1}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "latency_ms": -0.0}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "latency_ms": 4}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "latency_ms": "4"}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "latency_ms": false}',
    b'{"event_id": "e1", "model_id": "fraud", "features": {"a": 1}, "unknown": 5, "other": "x"}',
    orjson.dumps({"event_id": "x" * 257, "model_id": "fraud", "features": {"a": 1}}),
    orjson.dumps({"event_id": "x" * 256, "model_id": "fraud", "features": {"a": 1}}),
    orjson.dumps({"event_id": "é" * 129, "model_id": "fraud", "features": {"a": 1}}),
    orjson.dumps({"event_id": "e1", "model_id": "fraud", "features": {f"f{i}": i for i in range(1_001)}}),
    orjson.dumps({"event_id": "e1", "model_id": "fraud", "features": {f"f{i}": i for i in range(1_000)}}),
    None,
]


def test_odd_inputs_decode_as_the_codec_decodes_them():
    messages = raws([plain(i) for i in range(4)] + ODD + [plain(9)])
    fast = same(messages)
    assert sum(isinstance(d.features, Features) for d in fast if isinstance(d, InferenceEvent)) >= 5  # the fast path ran


def test_each_odd_input_alone_among_usual_ones():
    """An odd message in a batch of usual ones, at each place: the others are unaffected."""
    for odd in ODD:
        for place in (0, 3, 6):
            values = [plain(i) for i in range(6)]
            values.insert(place, odd)
            same(raws(values))


def test_limits_and_the_kafka_timestamp():
    values = [plain(i) for i in range(5)] + ODD
    same(raws(values), max_bytes=200, max_features=3, max_event_id_bytes=4, max_ahead_ms=1_000)
    same(raws(values, timestamp_ms=None))
    same(raws(values, timestamp_ms=KAFKA_TS - 10_000_000), max_ahead_ms=0)
    same(raws(values, timestamp_ms=KAFKA_TS - 10_000_000))


def test_features_read_like_the_dict():
    numbers = {"amount": 12.5, "age": 41, "rate": -0.0}
    docs = [orjson.dumps({**PLAIN, "event_id": f"e{i}", "features": numbers}) for i in range(5)]
    features = decode_batch(raws(docs), MODELS)[0].features
    assert isinstance(features, Features)  # all numbers: a mapping over the batch's arrays
    assert features == numbers and numbers == features and features != {"amount": 12.5}
    assert list(features) == list(numbers) and len(features) == 3 and list(features.items()) == list(numbers.items())
    assert features.get("age") == 41 and features.get("missing") is None and features["amount"] == 12.5
    assert "rate" in features and "nope" not in features
    assert repr(features) == repr(numbers) and dict(features) == numbers
    import copy
    import pickle
    assert pickle.loads(pickle.dumps(features)) == numbers and copy.deepcopy(features) == numbers
    events = decode_batch(raws([plain(i) for i in range(5)]), MODELS)
    assert events[0].features == PLAIN["features"] and isinstance(events[0].features, Features)  # mixed too
    for name in (*PLAIN["features"], "absent"):  # a column of the batch at once: what each mapping gives
        column = column_values(events, name)
        assert [strict(v) for v in column] == [strict(e.features.get(name)) for e in events]
        assert [strict(v) for v in column] == [strict(PLAIN["features"].get(name))] * 5
    assert column_values(events[:2] + [decode(raws([plain(0)])[0], MODELS)], "age") is None  # not one batch's
    event = events[0]
    assert np.frombuffer(event.numbers).tolist()[:2] == [12.5, 41.0]  # the numbers in bulk, NaN for the others
    assert np.isnan(np.frombuffer(event.numbers)[2:]).all() and event.layout == tuple(PLAIN["features"])


def test_one_layout_and_several():
    same_order = [orjson.dumps({"event_id": f"e{i}", "model_id": "churn", "features": {"x": i * 0.5, "y": -i}})
                  for i in range(6)]
    orders = [orjson.dumps({"event_id": f"e{i}", "model_id": "churn",
                            "features": dict(reversed(list({"x": 1.5, "y": i, "z": 2.0}.items()))
                                             if i % 2 else {"x": 1.5, "y": i, "z": 2.0})}) for i in range(6)]
    for values in (same_order, orders, same_order + orders):
        fast = same(raws(values))
        assert all(isinstance(e.features, Features) and e.numbers is not None for e in fast)
    many = [orjson.dumps({"event_id": "e", "model_id": "churn", "features": {f"k{i}": 1.0}})
            for i in range(jsonscan.MAX_LAYOUTS + 5)]  # past the scanner's layouts: the codec's
    same(raws(many))


def test_the_scanners_doubles_are_the_correctly_rounded_ones():
    rng = random.Random(11)
    texts = []
    for _ in range(20_000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 19))).lstrip("0") or "1"
        point = rng.randint(0, len(digits))
        text = digits[:point] + ("." + digits[point:] if point < len(digits) else "")
        texts.append(text if text[0] != "." else "0" + text)
        texts.append(f"{digits[0]}.{digits[1:] or '0'}e{rng.randint(-330, 310)}")
        texts.append(repr(rng.uniform(-1, 1) * 10 ** rng.randint(-300, 300)))
    buf = np.frombuffer(" ".join(texts).encode(), dtype=np.uint8)
    position = 0
    converted = 0
    for text in texts:
        kind, x, integer, end = jsonscan._number(buf, position, len(buf), jsonscan.POWERS_OF_FIVE)
        assert end == position + len(text)
        if kind == jsonscan.FLOAT:
            assert repr(x) == repr(float(text)), text
            converted += 1
        elif kind == jsonscan.INT:
            assert integer == int(text) and repr(x) == repr(float(int(text))), text
        elif "." in text or "e" in text:  # left to the codec: outside the normal doubles only
            assert not 2.2250738585072014e-308 <= abs(float(text)) < float("inf"), text
        else:
            assert len(text.lstrip("-")) > 18, text  # an integer of more than 18 digits
        position += len(text) + 1
    assert converted > 40_000


scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2 ** 70), 2 ** 70),
    st.text(max_size=6), st.booleans(), st.none(), st.sampled_from([0.1, -0.0, 1e-320, 1e300, 2 ** 53 + 1]))
names = st.text(max_size=5)
documents = st.fixed_dictionaries(
    {"event_id": st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["", None, 5])),
     "model_id": st.sampled_from(["fraud", "churn", "nobody", ""])},
    optional={"timestamp": st.one_of(st.floats(1.7e9, 1.8e9), st.integers(1_700_000_000, 1_800_000_000),
                                     st.sampled_from(["2026-11-27T20:44:50Z", "soon", None, True, 1e20])),
              "features": st.one_of(st.dictionaries(names, scalars, max_size=8),
                                    st.dictionaries(names, st.lists(scalars, max_size=2), max_size=2)),
              "prediction": st.one_of(scalars, st.fixed_dictionaries({}, optional={"score": scalars,
                                                                                   "label": scalars})),
              "latency_ms": scalars, "label": scalars, "other": scalars})


def spelled(doc, style: int) -> bytes:
    if style == 0:
        try:
            return orjson.dumps(doc)
        except TypeError:  # an integer past 64 bits
            style = 1
    return json.dumps(doc, ensure_ascii=style == 1, separators=(", ", ": ") if style == 2 else (",", ":")).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(documents, st.integers(0, 3)), min_size=1, max_size=12))
def test_generated_events_decode_as_the_codec_decodes_them(docs):
    values = [plain(i) for i in range(4)] + [spelled(doc, style) for doc, style in docs]
    same(raws(values))


def test_a_batchs_events_read_after_the_next_batch_is_decoded():
    """The scanner's arrays are reused from batch to batch: what an event keeps is its own."""
    first = [orjson.dumps({"event_id": f"a{i}", "model_id": "fraud", "features": {"x": i + 0.5, "n": i}})
             for i in range(6)]
    second = [orjson.dumps({"event_id": f"b{i}", "model_id": "churn", "features": {"y": "s", "x": -1.0, "n": 7}})
              for i in range(9)]
    early = decode_batch(raws(first), MODELS)
    decode_batch(raws(second), MODELS)
    assert [dict(e.features) for e in early] == [{"x": i + 0.5, "n": i} for i in range(6)]
    assert [np.frombuffer(e.numbers).tolist() for e in early] == [[i + 0.5, float(i)] for i in range(6)]
