"""The stored state format: data only and versioned. Every snapshot shape comes back exactly; a pickle
(the old format, or a crafted one) is refused without being unpickled; garbage is a StateError naming
the key; reference ids are a digest of the profile's data. Pure: no Redis, no broker."""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest

from stream_monitor import statecodec
from stream_monitor.config import parse_config
from stream_monitor.errors import StateError
from stream_monitor.partition import PartitionMonitor
from stream_monitor.state import _split_references, check_fields, decode_state, encode_state

from ..support import FULL_MODEL, WritesMarker, crafted_pickle, full_stream


def same(a, b) -> bool:
    """Equal values of equal types all the way down (numpy arrays by dtype, shape and content)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) and type(k) is type(kb) for k, kb in zip(a, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (set, frozenset)):
        return a == b
    if isinstance(a, (float, np.floating)) and a != a:
        return b != b and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    return a == b


SHAPES = {
    "plain": {"none": None, "true": True, "int": -(2**63), "big": 2**64 - 1, "float": 0.1, "str": "ü\n\x00",
              "bytes": b"\x00\xff", "empty": {}, "list": []},
    "tuples": {"pair": (1, "a"), "nested": ((1, 2.5), [(None,)]), "empty": ()},
    "int keys": {"counts": {3: 10, -1: 2, 0: 0}, "mixed": {1: "a", "1": "b", (2, 3): None, 1.5: True}},
    "arrays": {dtype: (np.arange(6) % 3).astype(dtype).reshape(2, 3) for dtype in
               ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")},
    "odd arrays": {"empty": np.zeros((0, 4)), "scalar": np.array(7.0), "fortran": np.asfortranarray(np.ones((3, 2))),
                   "big endian": np.arange(3, dtype=">f8"), "strided": np.arange(10.0)[::3]},
    "numpy scalars": {"f8": np.float64(0.1), "i8": np.int64(-5), "b": np.bool_(True), "f4": np.float32(1.5)},
    "non-finite": {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf"), "-0": -0.0,
                   "np nan": np.float64("nan")},
    "sets": {"set": {1, 2, "a"}, "frozen": frozenset({(1, 2)})},
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_round_trips_exactly(shape):
    value = {"format": 4, "models": {}, "shape": SHAPES[shape]}
    back = decode_state(encode_state(value))
    expected = {**value, "shape": {k: (np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<"))
                                       if isinstance(v, np.ndarray) and v.dtype.byteorder == ">" else v)
                                   for k, v in SHAPES[shape].items()}}
    assert same(back, expected), (back, expected)


def test_a_snapshot_of_every_detector_round_trips_exactly():
    """The snapshot of a monitor running every detector (PSI, KS, ADWIN, Page-Hinkley, data quality,
    p95, label column, performance with its joins pending) survives the format byte for byte."""
    config = parse_config({"models": {"m": FULL_MODEL}})
    monitor = PartitionMonitor(config, 5, {})
    monitor.process_batch([(offset, event, None) for offset, event in enumerate(full_stream()[:12_000])])
    snapshot = monitor.snapshot()
    assert same(decode_state(encode_state(snapshot)), snapshot)
    stripped, references = _split_references(snapshot)
    assert len(references) == 2  # the feature reference and the label reference
    for ref, profile in references.items():
        assert same(statecodec.decode(statecodec.encode(profile)), profile)


def test_values_that_are_not_data_cannot_be_stored():
    with pytest.raises(statecodec.CodecError, match="WritesMarker"):
        statecodec.encode({"x": WritesMarker(Path("/nonexistent"))})
    with pytest.raises(statecodec.CodecError, match="dtype"):
        statecodec.encode({"x": np.array(["a"], dtype=object)})


def test_the_old_pickle_format_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "marker"
    with pytest.raises(StateError) as refused:
        decode_state(crafted_pickle(marker), "ns:{g|t|3}:state: field 'state'")
    message = str(refused.value)
    assert message.startswith("ns:{g|t|3}:state: field 'state': stored state is in the old pickle format, which this "
                              "version refuses to load (it could run code)")
    assert "deleting the key" in message and "state import" in message
    assert not marker.exists()


def test_a_pickle_as_a_reference_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "marker"
    state = encode_state({"format": 4, "models": {"m": {"reference": {"$ref": "abc"}}}})
    with pytest.raises(StateError, match=r"^k: field 'ref:abc': stored state is in the old pickle format"):
        check_fields("k", {"offset": b"10", "state": state, "ref:abc": crafted_pickle(marker)})
    assert not marker.exists()


GOOD = encode_state({"format": 4, "models": {}})


@pytest.mark.parametrize("fields, problem", [
    ({"offset": b"abc", "state": GOOD}, "field 'offset' is 'abc', not a non-negative integer"),
    ({"offset": b"-1", "state": GOOD}, "field 'offset' is '-1', not a non-negative integer"),
    ({"offset": b"5", "epoch": b"x", "state": GOOD}, "field 'epoch' is 'x', not a non-negative integer"),
    ({"offset": b"5"}, "no 'state' field"),
    ({"offset": b"5", "state": b"garbage"}, "field 'state': not a stored state of this version"),
    ({"offset": b"5", "state": zlib.compress(b"garbage")}, "field 'state': not a stored state of this version"),
    ({"offset": b"5", "state": GOOD[:7] + b"\x01\x02"}, "field 'state': stored state cannot be decoded"),
    ({"offset": b"5", "state": GOOD[:-3]}, "field 'state': stored state is truncated"),
    ({"offset": b"5", "state": statecodec.MAGIC + b"\x09" + GOOD[7:]}, "format version 9; this version reads version 1"),
    ({"offset": b"5", "state": encode_state({"format": 4})}, "the snapshot has no map of models"),
    ({"offset": b"5", "state": statecodec.MAGIC + b"\x01" + zlib.compress(b"\x93\x01\x02\x03")}, "is a list"),
    ({"offset": b"5", "state": encode_state({"format": 4, "models": {"m": {"reference": {"$ref": "r1"}}}})},
     "names reference profiles ['r1'] that are not stored beside it"),
])
def test_malformed_fields_are_a_state_error_naming_the_key(fields, problem):
    with pytest.raises(StateError) as refused:
        check_fields("ns:{g|t|0}:state", fields)
    assert str(refused.value).startswith("ns:{g|t|0}:state: ")
    assert problem in str(refused.value)


@pytest.mark.parametrize("payload", [
    statecodec.msgspec.msgpack.Ext(3, statecodec._ENCODER.encode(["|O", [1], b"\x00" * 8])),  # object dtype
    statecodec.msgspec.msgpack.Ext(3, statecodec._ENCODER.encode(["<f8", [2], b"\x00" * 8])),  # size mismatch
    statecodec.msgspec.msgpack.Ext(2, statecodec._ENCODER.encode([1])),  # odd map
    statecodec.msgspec.msgpack.Ext(2, statecodec._ENCODER.encode([[1], 2])),  # unhashable key
    statecodec.msgspec.msgpack.Ext(99, b"\xc0"),  # unknown extension
])
def test_malformed_extensions_are_refused(payload):
    blob = statecodec.MAGIC + bytes([statecodec.VERSION]) + zlib.compress(statecodec._ENCODER.encode({"x": payload}))
    with pytest.raises(statecodec.CodecError):
        statecodec.decode(blob)


def test_a_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(statecodec, "MAX_DECODED_BYTES", 1000)
    with pytest.raises(statecodec.CodecError, match="more than 1000 bytes"):
        statecodec.decode(encode_state({"format": 4, "models": {}, "pad": "x" * 5000}))


def test_reference_ids_are_a_digest_of_the_profiles_data():
    """The same data gives the same id however its dicts were built; different data a different id."""
    profile = {"features": {"a": {"edges": [0.0, 1.0]}, "b": {"counts": {1: 2}}}, "events": 5}
    reordered = {"events": 5, "features": {"b": {"counts": {1: 2}}, "a": {"edges": [0.0, 1.0]}}}
    assert statecodec.digest(profile) == statecodec.digest(reordered)
    assert statecodec.digest(profile) != statecodec.digest({**profile, "events": 6})
    assert statecodec.digest({"x": float("nan")}) != statecodec.digest({"x": None})
    assert statecodec.digest({"x": (1, 2)}) != statecodec.digest({"x": [1, 2]})
    snapshot = {"format": 4, "models": {"m": {"reference": profile, "label_reference": None}}}
    stripped, references = _split_references(snapshot)
    assert stripped["models"]["m"]["reference"] == {"$ref": statecodec.digest(profile)}
    assert list(references) == [statecodec.digest(profile)]
    assert len(statecodec.digest(profile)) == 24


def test_the_remembered_reference_id_is_the_digest():
    """The save path's shortcut (:func:`stream_monitor.state._reference_id`) gives the digest itself,
    for data marshal knows and for data it does not (numpy), and a changed profile a new id."""
    from stream_monitor.state import _reference_id  # noqa: PLC0415

    profile = {"features": {"a": {"edges": [0.0, 1.0, float("nan")]}}, "events": 5}
    assert _reference_id(profile) == _reference_id(dict(profile)) == statecodec.digest(profile)
    changed = {**profile, "features": {"a": {"edges": [0.0, 1.0, 2.0]}}}
    assert _reference_id(changed) == statecodec.digest(changed) != statecodec.digest(profile)
    with_array = {"x": np.arange(3.0)}
    assert _reference_id(with_array) == statecodec.digest(with_array)
