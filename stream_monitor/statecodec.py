"""The stored form of a partition's state and of its reference profiles: data only, versioned.

A blob is ``MAGIC`` (6 bytes) + a format version (1 byte) + zlib-compressed msgpack. msgpack holds
None, bools, ints, floats, strings, bytes, lists and str-keyed maps as they are; what it has no type
for is written as a msgpack extension whose payload is itself msgpack, so a blob can only ever
describe data:

====  ============================  ==============================================
ext   Python value                  payload
====  ============================  ==============================================
1     ``tuple``                     the items
2     ``dict`` with other keys      the pairs, flattened ``[k0, v0, k1, v1, …]``
3     ``numpy.ndarray``             ``[dtype, shape, raw bytes]`` (C order)
4     numpy scalar                  ``[dtype, raw bytes]``
5     ``set`` / 6 ``frozenset``     the items
====  ============================  ==============================================

``dtype`` is one of :data:`DTYPES` (bool, fixed-size ints and floats, little-endian); nothing in a
blob names a Python type, module or callable, so decoding one runs no code whatever it holds. Values
come back exactly: a tuple as a tuple, ``np.float64`` as ``np.float64``, dict keys in their order.

Blobs of the format before this one were zlib-compressed pickles. They are refused, never unpickled
(anyone able to write such a blob could make the reader run code): :class:`OldFormat` says so.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import msgspec
import numpy as np

MAGIC = b"SMSTAT"
VERSION = 1
# Decompressed size at which a blob is refused (a zlib bomb would otherwise take the memory).
MAX_DECODED_BYTES = 512 * 1024 * 1024

DTYPES = frozenset(["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4", "<f8"])
_TUPLE, _MAP, _ARRAY, _SCALAR, _SET, _FROZENSET = 1, 2, 3, 4, 5, 6
_PLAIN = (type(None), bool, int, float, str, bytes)
_ENCODER = msgspec.msgpack.Encoder()


class CodecError(ValueError):
    """A blob that is not a state of this format (the caller names the key)."""


class OldFormat(CodecError):
    """A blob in the old pickle format."""


def _dtype(array_or_scalar: Any) -> str:
    dtype = array_or_scalar.dtype.newbyteorder("<") if array_or_scalar.dtype.byteorder == ">" else array_or_scalar.dtype
    name = dtype.str
    if name not in DTYPES:
        raise CodecError(f"cannot store a numpy value of dtype {array_or_scalar.dtype} (stored: {sorted(DTYPES)})")
    return name


def _pack(value: Any, canonical: bool = False) -> Any:
    """``value`` as plain msgpack types and extensions (``canonical``: str-keyed maps in key order)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list:
        return [_pack(v, canonical) for v in value]
    if kind is dict:
        if all(type(k) is str for k in value):
            items = sorted(value.items()) if canonical else value.items()
            return {k: _pack(v, canonical) for k, v in items}
        items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0]))) if canonical else value.items()
        return _ext(_MAP, [x for k, v in items for x in (_pack(k, canonical), _pack(v, canonical))])
    if kind is tuple:
        return _ext(_TUPLE, [_pack(v, canonical) for v in value])
    if kind is np.ndarray:
        dtype = _dtype(value)
        return _ext(_ARRAY, [dtype, list(value.shape), np.ascontiguousarray(value, dtype=dtype).tobytes()])
    if isinstance(value, np.generic):
        dtype = _dtype(value)
        return _ext(_SCALAR, [dtype, np.asarray(value, dtype=dtype).tobytes()])
    if kind is set or kind is frozenset:
        items = sorted(value, key=repr) if canonical else value
        return _ext(_SET if kind is set else _FROZENSET, [_pack(v, canonical) for v in items])
    # a subclass of a plain type (e.g. an IntEnum) or anything else: not data this format holds
    raise CodecError(f"cannot store a value of type {kind.__module__}.{kind.__qualname__}")


def _ext(code: int, payload: Any) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(code, _ENCODER.encode(payload))


def _list(value: Any, what: str, length: int | None = None) -> list:
    if type(value) is not list or (length is not None and len(value) != length):
        raise CodecError(f"malformed {what}")
    return value


def _ext_hook(code: int, data: memoryview) -> Any:
    value = _DECODER.decode(data)
    if code == _TUPLE:
        return tuple(_list(value, "tuple"))
    if code == _MAP:
        flat = _list(value, "map")
        if len(flat) % 2:
            raise CodecError("malformed map: an odd number of items")
        return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    if code == _ARRAY:
        dtype, shape, raw = _list(value, "array", 3)
        if dtype not in DTYPES:
            raise CodecError(f"an array of dtype {dtype!r}, not one of {sorted(DTYPES)}")
        if type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape) or type(raw) is not bytes:
            raise CodecError("malformed array")
        if int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize != len(raw):
            raise CodecError(f"an array of shape {shape} and dtype {dtype} with {len(raw)} bytes")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if code == _SCALAR:
        dtype, raw = _list(value, "numpy scalar", 2)
        if dtype not in DTYPES or type(raw) is not bytes or len(raw) != np.dtype(dtype).itemsize:
            raise CodecError("malformed numpy scalar")
        return np.frombuffer(raw, dtype=dtype)[0]
    if code == _SET:
        return set(_list(value, "set"))
    if code == _FROZENSET:
        return frozenset(_list(value, "frozenset"))
    raise CodecError(f"unknown extension type {code}")


_DECODER = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def encode(value: Any) -> bytes:
    """``value`` (a tree of the types in the table above) as a blob."""
    return MAGIC + bytes([VERSION]) + zlib.compress(_ENCODER.encode(_pack(value)), 1)


def decode(blob: bytes) -> Any:
    """The value of a blob; :class:`OldFormat` for a pickle of the old format, :class:`CodecError` for
    anything else that is not a blob of this format. Runs no code from the blob."""
    blob = bytes(blob)
    if not blob.startswith(MAGIC):
        if _is_old_pickle(blob):
            raise OldFormat("stored state is in the old pickle format, which this version refuses to load "
                            "(it could run code)")
        raise CodecError(f"not a stored state of this version (no {MAGIC.decode()} header; "
                         f"starts with {blob[:8]!r})")
    version = blob[len(MAGIC):len(MAGIC) + 1]
    if version != bytes([VERSION]):
        raise CodecError(f"stored state has format version {version[0] if version else 'none'}; this version "
                         f"reads version {VERSION}")
    try:
        inflater = zlib.decompressobj()
        packed = inflater.decompress(blob[len(MAGIC) + 1:], MAX_DECODED_BYTES)
        if inflater.unconsumed_tail:
            raise CodecError(f"stored state decompresses to more than {MAX_DECODED_BYTES} bytes")
        if not inflater.eof:
            raise CodecError("stored state is truncated (its compressed stream does not end)")
        return _DECODER.decode(packed)
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - zlib, msgpack, numpy: any corruption is a CodecError
        raise CodecError(f"stored state cannot be decoded: {type(exc).__name__}: {exc}") from None


def _is_old_pickle(blob: bytes) -> bool:
    """A zlib stream whose content starts with a pickle protocol marker (only its first bytes are inflated)."""
    try:
        head = zlib.decompressobj().decompress(blob, 2)
    except zlib.error:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def digest(value: Any) -> str:
    """A content id of ``value``: sha256 of its canonical msgpack form (str-keyed maps sorted), first 24
    hex digits. Equal data gives equal ids however its dicts were built."""
    return hashlib.sha256(_ENCODER.encode(_pack(value, canonical=True))).hexdigest()[:24]
