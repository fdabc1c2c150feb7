"""Open Inference Protocol (V2) messages → one half of a request/response pair per message (errors as data).

KServe's payload logger writes each request and each response as its own
CloudEvent (Kafka binding: headers ``ce_id``, ``ce_type`` =
``org.kubeflow.serving.inference.request`` | ``….response``, ``ce_source``,
``ce_time``, ``ce_inferenceservicename`` …; the body is the V2 JSON). Seldon
Core v2 writes them to ``seldon.<namespace>.model.<model>.inputs`` and
``….outputs``. Either way the two halves of one call arrive as separate
messages; :mod:`join` pairs them in Redis by request id and the pair becomes
one :class:`~stream_monitor.events.InferenceEvent` per row.

How a message is read (``schemas/oip.json`` is the accepted subset; a value that does not start like JSON is
read as the V2 protobuf ``ModelInferRequest`` / ``ModelInferResponse``, which Seldon writes to Kafka, with
typed or raw contents):

- a CloudEvent written whole as JSON (structured mode: ``specversion``, ``data``
  or ``data_base64``) gives its attributes as the headers would, and its data;
- request or response: the ``ce_type`` header's last word, else the Seldon
  topic's ``inputs``/``outputs``, else the body (``outputs`` → response,
  ``inputs`` → request);
- the model: the ``ce_inferenceservicename`` header, else the Seldon topic's
  model, else ``model_name``; matched against each model's ``oip.served_as``
  (default: its id);
- the request id: the ``ce_id`` header, else ``x-request-id``, else the body's
  ``id``, else the message key; row ``i`` of a batch (shape ``[B, …]``) is the
  event ``<request id>/<i>`` (label events name it so);
- the event time: ``ce_time``, else the Kafka timestamp;
- request tensors → features: shape ``[B]`` or ``[B, 1]`` is one feature (the
  tensor's name, or ``oip.rename``), ``[B, n]`` is n features named by
  ``oip.columns``; response tensors → the prediction's ``score`` and ``label``
  (``oip.score``, ``oip.label``, or the first floating / other output).

>>> half = decode(RawMessage("t", 0, 0, b'{"id": "r1", "model_name": "iris", "inputs": [{"name": "x", '
...     b'"shape": [2], "datatype": "FP32", "data": [1.5, 2]}]}'), {"iris": OipConfig()})
>>> half.kind, half.event_ids(), half.rows
('request', ['r1/0', 'r1/1'], ({'x': 1.5}, {'x': 2.0}))
"""

from __future__ import annotations

import base64
import re
import struct
from datetime import datetime, timezone
from math import isfinite, prod
from typing import Any, Mapping, NamedTuple

import orjson

from .codec import category, size_refusal, time_ahead
from .config import OipConfig
from .events import DeadLetter, RawMessage

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
_SELDON_TOPIC = re.compile(r"\.model\.(?P<model>[^.]+)\.(?P<side>inputs|outputs)$")
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_INTS = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
DATATYPES = _FLOATS | _INTS | {"BOOL", "BYTES"}
MAX_ROWS = 100_000  # rows of one message at most (a bigger batch is refused: shape_mismatch)


class OipHalf(NamedTuple):
    """One half of a call: a request's rows of features, or a response's rows of (score, label)."""

    kind: str  # "request" | "response"
    model_id: str
    request_id: str
    timestamp_ms: int | None
    rows: tuple  # request: feature dicts; response: (score, label) pairs

    def event_ids(self) -> list[str]:
        return [event_id(self.request_id, i) for i in range(len(self.rows))]


def event_id(request_id: str, row: int) -> str:
    """The event id of row ``row`` of a request (deterministic: a replay gives the same ids)."""
    return f"{request_id}/{row}"


class _Refused(Exception):
    def __init__(self, reason: str, error: str):
        self.letter = DeadLetter(reason, error)


def decode(message: RawMessage, models: Mapping[str, OipConfig], max_bytes: int = 1_048_576,
           max_event_id_bytes: int = 256, max_features: int = 1_000,
           max_ahead_ms: int = 3_600_000) -> OipHalf | DeadLetter:
    """One OIP message → its half of a pair, or why not; never raises for bad input.
    ``models``: model id → its ``[models.<id>.oip]``; ``max_ahead_ms`` as for :func:`codec.decode`."""
    value = message.value
    refused = size_refusal(value, max_bytes)
    if refused is not None:
        return refused
    try:
        doc = None
        if value.lstrip()[:1] in _JSON_STARTS:
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                # a protobuf message may begin with a byte that reads as whitespace (b"\n": field 1, a string)
                if value[:1] in _JSON_STARTS:
                    reason = "not_utf8" if "UTF-8" in str(exc) else "not_json"
                    return DeadLetter(reason, f"cannot parse JSON (an Open Inference Protocol message is V2 JSON "
                                              f"or protobuf): {exc}")
        if doc is None:
            doc = _protobuf(value, _kind(_headers(message.headers).get("type"), _SELDON_TOPIC.search(message.topic),
                                         None))
        if not isinstance(doc, dict):
            return DeadLetter("not_object", f"expected a JSON object (an Open Inference Protocol request or "
                                            f"response), got {_type_name(doc)}")
        return _half(message, doc, models, max_event_id_bytes, max_features, max_ahead_ms)
    except _Refused as refused:
        return refused.letter


def _half(message: RawMessage, doc: dict[str, Any], models: Mapping[str, OipConfig],
          max_event_id_bytes: int, max_features: int = 1_000, max_ahead_ms: int = 3_600_000) -> OipHalf:
    headers = _headers(message.headers)
    if "specversion" in doc and ("data" in doc or "data_base64" in doc):  # a CloudEvent in structured mode
        doc, attributes = _structured(doc)
        headers = {**headers, **attributes}
    seldon = _SELDON_TOPIC.search(message.topic)
    kind = _kind(headers.get("type"), seldon, doc)
    served = headers.get("inferenceservicename") or (seldon["model"] if seldon else None) or doc.get("model_name")
    if not isinstance(served, str) or not served:
        raise _Refused("missing_field", "no model name: neither a ce_inferenceservicename header, a Seldon topic "
                                        "(seldon.<namespace>.model.<model>.inputs|outputs) nor a 'model_name'")
    names = {cfg.served_as or model_id: model_id for model_id, cfg in models.items()}
    model_id = names.get(served)
    if model_id is None:
        known = ", ".join(repr(n) for n in sorted(names)[:10])
        raise _Refused("unknown_model", f"model {served[:200]!r} is not the served name of a configured model "
                                        f"(models.<id>.oip.served_as, default the model id; known: [{known}])")
    request_id = headers.get("id") or headers.get("x-request-id") or doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _Refused("wrong_type", f"id must be a string, got {_type_name(request_id)}")
    if request_id is None and message.key:
        request_id = message.key.decode("utf-8", "replace")
    if not isinstance(request_id, str) or not request_id:
        raise _Refused("missing_field", "no request id: neither a ce_id or x-request-id header, an 'id' nor a "
                                        "message key")
    if len(request_id.encode("utf-8", "surrogatepass")) + 7 > max_event_id_bytes:
        raise _Refused("event_id_too_long", f"request id is {len(request_id.encode('utf-8', 'surrogatepass'))} "
                                            f"bytes; with its row suffix over the limit of {max_event_id_bytes} "
                                            "(service.max_event_id_bytes)")
    timestamp_ms = _time(headers.get("time"), message.timestamp_ms, max_ahead_ms)
    cfg = models[model_id]
    field = "inputs" if kind == "request" else "outputs"
    tensors = _tensors(doc, field)
    rows = _features(tensors, cfg, max_features) if kind == "request" else _predictions(tensors, cfg)
    return OipHalf(kind, model_id, request_id, timestamp_ms, rows)


def _structured(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The V2 body and the attributes of a CloudEvent written whole as JSON (structured content mode)."""
    attributes = {k: v for k, v in event.items() if k not in ("data", "data_base64") and isinstance(v, str)}
    data = event.get("data")
    try:
        if "data_base64" in event:
            data = orjson.loads(base64.b64decode(str(event["data_base64"]), validate=True))
        elif isinstance(data, str):
            data = orjson.loads(data)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise _Refused("not_json", f"the CloudEvent's data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Refused("not_object", f"the CloudEvent's data must be a JSON object (an Open Inference Protocol "
                                     f"request or response), got {_type_name(data)}")
    return data, attributes


def _headers(headers) -> dict[str, str]:
    """CloudEvents attributes (``ce_x`` of the Kafka binding or ``ce-x`` of HTTP, as ``x``) and
    ``x-request-id``; names compare without case, the first of a name wins."""
    out: dict[str, str] = {}
    for name, data in headers:
        lowered = name.lower()
        if lowered.startswith(("ce_", "ce-")):
            lowered = lowered[3:]
        elif lowered != "x-request-id":
            continue
        if lowered not in out and data is not None:
            out[lowered] = data.decode("utf-8", "replace")
    return out


def _kind(ce_type: str | None, seldon, doc: dict[str, Any] | None) -> str:
    if ce_type is not None:
        if ce_type.endswith(".request"):
            return "request"
        if ce_type.endswith(".response"):
            return "response"
        raise _Refused("wrong_type", f"ce_type {ce_type[:200]!r} is neither an inference request nor a response "
                                     f"({REQUEST_TYPE!r}, {RESPONSE_TYPE!r})")
    if seldon is not None:
        return "request" if seldon["side"] == "inputs" else "response"
    if doc is None:
        raise _Refused("missing_field", "a protobuf message says neither whether it is a request or a response: "
                                        "it needs a ce_type header or a Seldon topic (….inputs, ….outputs)")
    if "outputs" in doc:
        return "response"
    if "inputs" in doc:
        return "request"
    raise _Refused("missing_field", "an Open Inference Protocol message needs 'inputs' (a request) or 'outputs' "
                                    "(a response)")


def _time(text: str | None, kafka_timestamp_ms: int | None, max_ahead_ms: int = 3_600_000) -> int | None:
    if text is None:
        return kafka_timestamp_ms
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Refused("wrong_type", f"ce_time must be an RFC 3339 time, got {text[:80]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    epoch_ms = int(moment.timestamp() * 1000)
    ahead = time_ahead(epoch_ms, kafka_timestamp_ms, max_ahead_ms, "ce_time")
    if ahead is not None:
        raise _Refused("timestamp_ahead", ahead)
    return epoch_ms


class _Tensor(NamedTuple):
    name: str
    datatype: str
    batch: int
    width: int  # 1 for shape [B] or [B, 1]
    data: list


def _tensors(doc: dict[str, Any], field: str) -> list[_Tensor]:
    items = doc.get(field)
    if not isinstance(items, list) or not items:
        raise _Refused("missing_field", f"'{field}' must be a non-empty array of tensors, got "
                                        f"{_type_name(items) if field in doc else 'nothing'}")
    tensors: list[_Tensor] = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        if not isinstance(item, dict):
            raise _Refused("wrong_type", f"{where} must be an object, got {_type_name(item)}")
        for key in ("name", "shape", "datatype", "data"):
            if key not in item:
                raise _Refused("missing_field", f"{where} has no '{key}'")
        name, shape, datatype = item["name"], item["shape"], item["datatype"]
        if not isinstance(name, str) or not name:
            raise _Refused("wrong_type", f"{where}.name must be a non-empty string")
        where = f"{field} tensor {name[:200]!r}"
        if datatype not in DATATYPES:
            raise _Refused("wrong_datatype", f"{where}: datatype {str(datatype)[:80]!r} is not one of "
                                             f"{', '.join(sorted(DATATYPES))}")
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise _Refused("shape_mismatch", f"{where}: shape must be [batch] or [batch, n] of sizes >= 0, got "
                                             f"{str(shape)[:80]}")
        if shape[0] > MAX_ROWS:
            raise _Refused("shape_mismatch", f"{where}: a batch of {shape[0]} rows, over the limit of {MAX_ROWS}")
        data = _flat(item["data"], where)
        if len(data) != prod(shape):
            raise _Refused("shape_mismatch", f"{where}: shape {shape} holds {prod(shape)} values, data has "
                                             f"{len(data)}")
        _check_values(data, datatype, where)
        tensors.append(_Tensor(name, datatype, shape[0], shape[1] if len(shape) == 2 else 1, data))
    batches = {t.batch for t in tensors}
    if len(batches) > 1:
        raise _Refused("shape_mismatch", f"{field}: tensors disagree on the batch size (first dimension): "
                                         f"{', '.join(f'{t.name[:50]!r} {t.batch}' for t in tensors[:10])}")
    return tensors


def _flat(data: Any, where: str) -> list:
    """The values of ``data`` (flat, or nested rows as V2 JSON allows), row-major."""
    if not isinstance(data, list):
        raise _Refused("wrong_type", f"{where}: data must be an array, got {_type_name(data)}")
    if not any(isinstance(v, list) for v in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                if len(stack) > 8:
                    raise _Refused("shape_mismatch", f"{where}: data nested deeper than 8 levels")
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _check_values(data: list, datatype: str, where: str) -> None:
    if datatype in _FLOATS:
        ok = all(v.__class__ in (int, float) for v in data)
        wanted = "numbers"
    elif datatype in _INTS:
        ok = all(v.__class__ is int for v in data)
        wanted = "integers"
    elif datatype == "BOOL":
        ok = all(v.__class__ is bool for v in data)
        wanted = "booleans"
    else:
        ok = all(v.__class__ is str for v in data)
        wanted = "strings"
    if not ok:
        bad = next(v for v in data if not _fits(v, datatype))
        raise _Refused("wrong_datatype", f"{where}: datatype {datatype} holds {wanted}, got {_type_name(bad)} "
                                         f"{str(bad)[:80]}")


def _fits(value: Any, datatype: str) -> bool:
    if datatype in _FLOATS:
        return value.__class__ in (int, float)
    if datatype in _INTS:
        return value.__class__ is int
    return value.__class__ is (bool if datatype == "BOOL" else str)


def _features(tensors: list[_Tensor], cfg: OipConfig, max_features: int = 1_000) -> tuple[dict[str, Any], ...]:
    batch = tensors[0].batch
    columns: list[tuple[str, _Tensor, int]] = []  # feature name, its tensor, its column
    for tensor in tensors:
        names = cfg.columns.get(tensor.name)
        if names is not None:
            if len(names) != tensor.width:
                raise _Refused("shape_mismatch", f"inputs tensor {tensor.name[:200]!r} has {tensor.width} columns, "
                                                 f"oip.columns names {len(names)}")
        elif tensor.width == 1:
            names = (cfg.rename.get(tensor.name, tensor.name),)
        else:
            raise _Refused("unknown_tensor", f"inputs tensor {tensor.name[:200]!r} has {tensor.width} columns and "
                                             f"oip.columns does not name them (oip.columns.\"{tensor.name[:200]}\" "
                                             "= [feature names])")
        columns.extend((name, tensor, column) for column, name in enumerate(names))
    if len(columns) > max_features:
        raise _Refused("too_many_features", f"{len(columns)} features per row, over the limit of {max_features} "
                                            "(service.max_features_per_event)")
    seen: set[str] = set()
    for name, tensor, _ in columns:
        if name in seen:
            raise _Refused("unknown_tensor", f"feature {name[:200]!r} is given by two input columns (the second "
                                             f"in tensor {tensor.name[:200]!r})")
        seen.add(name)
    rows = []
    for row in range(batch):
        rows.append({name: _value(tensor.data[row * tensor.width + column], tensor.datatype)
                     for name, tensor, column in columns})
    return tuple(rows)


def _value(value: Any, datatype: str) -> Any:
    """A feature's value; a NaN or infinite float (protobuf can carry them, JSON cannot) is a missing value."""
    if datatype in _FLOATS:
        value = float(value)
        return value if isfinite(value) else None
    return value


def _predictions(tensors: list[_Tensor], cfg: OipConfig) -> tuple[tuple[float | None, str | None], ...]:
    by_name = {t.name: t for t in tensors}
    score = _output(by_name, cfg.score, "oip.score", lambda t: t.datatype in _FLOATS, tensors)
    label = _output(by_name, cfg.label, "oip.label", lambda t: t.datatype not in _FLOATS, tensors)
    if score is None and label is None:
        raise _Refused("unknown_tensor", f"no output gives a score or a label (outputs: "
                                         f"{', '.join(repr(t.name[:50]) for t in tensors[:10])}; set oip.score or "
                                         "oip.label)")
    if score is not None and score.width == 0:
        raise _Refused("shape_mismatch", f"outputs tensor {score.name[:200]!r} is the score but has no columns")
    if label is not None and label.width != 1:
        raise _Refused("shape_mismatch", f"outputs tensor {label.name[:200]!r} is the label but has "
                                         f"{label.width} columns (a label is one value per row)")
    if score is not None and score.datatype in ("BOOL", "BYTES"):
        raise _Refused("wrong_datatype", f"outputs tensor {score.name[:200]!r} is the score but its datatype is "
                                         f"{score.datatype} (a score is a number)")
    rows = []
    for row in range(tensors[0].batch):
        value = None if score is None else float(score.data[row * score.width + score.width - 1])
        if value is not None and not isfinite(value):
            value = None
        rows.append((value, None if label is None else category(label.data[row])))
    return tuple(rows)


def _output(by_name: dict[str, _Tensor], configured: str, key: str, default, tensors: list[_Tensor]) -> _Tensor | None:
    if configured:
        tensor = by_name.get(configured)
        if tensor is None:
            raise _Refused("unknown_tensor", f"the response has no output {configured[:200]!r} ({key}); outputs: "
                                             f"{', '.join(repr(t.name[:50]) for t in tensors[:10])}")
        return tensor
    return next((t for t in tensors if default(t)), None)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


# --- the V2 protobuf messages (ModelInferRequest, ModelInferResponse), as Seldon Core v2 writes them to Kafka ----
# Read by hand from the wire format (no generated code): the fields this service uses, the rest skipped.
# Request and response share their numbers but for the tensors' list: a request's inputs are field 5 and its raw
# contents field 7; a response's outputs field 5 and its raw contents field 6.

_JSON_STARTS = frozenset((b"{", b"[", b'"'))
_RAW_FORMATS = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b", "INT16": "h",
                "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d"}
# InferTensorContents: field → (how its packed values are read, whether it is varint-encoded)
_CONTENTS = {1: ("bool", True), 2: ("int32", True), 3: ("int64", True), 4: ("uint", True), 5: ("uint", True),
             6: ("<f", False), 7: ("<d", False), 8: ("bytes", False)}


def _protobuf(value: bytes, kind: str) -> dict[str, Any]:
    try:
        return _message(value, kind)
    except (IndexError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise _Refused("not_json", f"cannot parse: neither JSON nor an Open Inference Protocol protobuf "
                                   f"message ({type(exc).__name__}: {exc})") from None


def _fields(data: bytes):
    """(field number, wire type, value) of a protobuf message: an int for varints, bytes otherwise."""
    at, end = 0, len(data)
    while at < end:
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            item, at = _varint(data, at)
        elif wire == 1:
            item, at = data[at:at + 8], at + 8
        elif wire == 2:
            size, at = _varint(data, at)
            item, at = data[at:at + size], at + size
        elif wire == 5:
            item, at = data[at:at + 4], at + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if at > end or number == 0:
            raise ValueError("truncated or malformed message")
        yield number, wire, item


def _varint(data: bytes, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _message(data: bytes, kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    tensors, raw = [], []
    raw_field = 7 if kind == "request" else 6
    for number, wire, item in _fields(data):
        if number == 1 and wire == 2:
            doc["model_name"] = item.decode("utf-8")
        elif number == 3 and wire == 2:
            doc["id"] = item.decode("utf-8")
        elif number == 5 and wire == 2:
            tensors.append(_tensor(item))
        elif number == raw_field and wire == 2:
            raw.append(item)
    for index, blob in enumerate(raw[:len(tensors)]):
        tensors[index]["data"] = _raw(blob, tensors[index].get("datatype"))
    if not doc.get("id"):
        doc.pop("id", None)
    doc["inputs" if kind == "request" else "outputs"] = tensors
    return doc


def _tensor(data: bytes) -> dict[str, Any]:
    tensor: dict[str, Any] = {"shape": []}
    for number, wire, item in _fields(data):
        if number == 1 and wire == 2:
            tensor["name"] = item.decode("utf-8")
        elif number == 2 and wire == 2:
            tensor["datatype"] = item.decode("utf-8")
        elif number == 3:
            tensor["shape"].extend(_signed(v) for v in (_packed_varints(item) if wire == 2 else [item]))
        elif number == 5 and wire == 2:
            tensor["data"] = _contents(item)
    return tensor


def _contents(data: bytes) -> list:
    values: list = []
    for number, wire, item in _fields(data):
        how = _CONTENTS.get(number)
        if how is None:
            continue
        reading, varint = how
        if reading == "bytes":
            values.append(item.decode("utf-8", "replace"))
        elif varint:
            found = _packed_varints(item) if wire == 2 else [item]
            if reading == "bool":
                values.extend(bool(v) for v in found)
            elif reading == "uint":
                values.extend(found)
            else:
                values.extend(_signed(v) for v in found)
        else:
            if len(item) % struct.calcsize(reading):
                raise ValueError(f"packed {reading} values of {len(item)} bytes")
            values.extend(x for (x,) in struct.iter_unpack(reading, item))
    return values


def _packed_varints(data: bytes) -> list[int]:
    out, at = [], 0
    while at < len(data):
        value, at = _varint(data, at)
        out.append(value)
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _raw(blob: bytes, datatype: Any) -> list:
    """A tensor's raw contents (little-endian, row-major; BYTES: each element after its 4-byte length)."""
    if datatype == "BYTES":
        out, at = [], 0
        while at < len(blob):
            (size,) = struct.unpack_from("<I", blob, at)
            out.append(blob[at + 4:at + 4 + size].decode("utf-8", "replace"))
            at += 4 + size
        return out
    code = _RAW_FORMATS.get(datatype)
    if code is None:
        raise _Refused("wrong_datatype", f"raw contents of datatype {str(datatype)[:80]!r}")
    if len(blob) % struct.calcsize(code):
        raise _Refused("shape_mismatch", f"raw contents of {len(blob)} bytes are not whole {datatype} values")
    return [x for (x,) in struct.iter_unpack("<" + code, blob)]
