"""Events from a file — JSON lines, CSV or Parquet — for ``reference build`` and ``replay``.

The format comes from the suffix: ``.jsonl``/``.ndjson``/``.json`` (one JSON object a line),
``.csv`` (header row required), ``.parquet``/``.pq``; JSON lines and CSV may be gzip-compressed
(``events.csv.gz``). Every row becomes a JSON message and goes through :func:`codec.decode`, so the
rules are exactly those of the Kafka input; a rejected row is yielded as a
:class:`SourceError` (errors as data) and the read goes on.

CSV and Parquet columns: ``event_id``, ``model_id``, ``timestamp``, ``score`` (or
``prediction_score``), ``prediction_label`` (or ``prediction``), ``latency_ms`` and ``label`` are
reserved; every other column is a feature (in Parquet also the fields of a struct column
``features``). A row with a ``label`` and no feature values is a label event. CSV cells are typed
like this:

>>> [_cell(text) for text in ("", "3", "-2.5", "1e3", "TRUE", "false", "DE", "inf")]
[None, 3, -2.5, 1000.0, True, False, 'DE', 'inf']
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import zlib
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Collection, Iterable, Iterator, NamedTuple

import orjson

from . import codec
from .batchcodec import decode_batch
from .errors import StreamMonitorError
from .events import DeadLetter, InferenceEvent, LabelEvent, RawMessage

Row = tuple[int, "InferenceEvent | LabelEvent | SourceError"]

_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_CSV_SUFFIXES = (".csv",)
_PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_MISSING = "reading Parquet needs pyarrow: pip install 'stream-monitor[parquet]'"
_PARQUET_BATCH_ROWS = 8192
_TOPIC = "file"

# Reserved columns; within a tuple the first non-empty cell wins.
_SCORE_COLUMNS = ("score", "prediction_score")
_LABEL_PREDICTION_COLUMNS = ("prediction_label", "prediction")
_RESERVED = frozenset({"event_id", "model_id", "timestamp", "latency_ms", "label", "features",
                       *_SCORE_COLUMNS, *_LABEL_PREDICTION_COLUMNS})

_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_INT64 = 2 ** 63


@dataclass(frozen=True)
class SourceError:
    """A rejected row: its 1-based row/line number and the codec's dead-letter reason."""

    line: int
    reason: str
    error: str


def read_events(path: str | os.PathLike[str], known_models: Collection[str], model_id: str | None = None,
                max_bytes: int = 1_048_576, max_features: int = 1_000) -> Iterator[Row]:
    """(row number, event or error) in file order.

    ``model_id``: for CSV/Parquet files without a ``model_id`` column, every row belongs to this
    model; rows of other models are still yielded (caller filters). Row numbers are line numbers
    for JSON lines and CSV (the header is line 1) and 1-based row indexes for Parquet.
    ``max_bytes`` and ``max_features``: the input limits of ``service.max_message_bytes`` and
    ``service.max_features_per_event``, as for a Kafka message.
    Raises :class:`StreamMonitorError` at once for an unsupported suffix or a file that cannot be
    opened, and while iterating if the file turns out unreadable (corrupt gzip or Parquet).
    """
    name = os.fspath(path)
    kind, compressed = _format(name)
    if kind == "parquet":
        parquet = _import_parquet()
    try:
        with open(name, "rb"):
            pass
    except OSError as exc:
        raise StreamMonitorError(f"cannot read {name}: {exc.strerror or exc}") from exc
    limits = _Limits(max_bytes, max_features)
    if kind == "jsonl":
        return _guard(name, _read_jsonl(name, compressed, known_models, limits))
    if kind == "csv":
        return _guard(name, _read_csv(name, compressed, known_models, model_id, limits))
    return _guard(name, _read_parquet(parquet, name, known_models, model_id, limits))


class _Limits(NamedTuple):
    max_bytes: int
    max_features: int

    def decode(self, line: int, value: bytes, known_models: Collection[str]) -> Row:
        return _result(line, codec.decode(RawMessage(_TOPIC, -1, line, value), known_models, self.max_bytes,
                                          self.max_features))


def _format(name: str) -> tuple[str, bool]:
    lower = name.lower()
    compressed = lower.endswith(".gz")
    stem = lower[:-3] if compressed else lower
    if stem.endswith(_JSONL_SUFFIXES):
        return "jsonl", compressed
    if stem.endswith(_CSV_SUFFIXES):
        return "csv", compressed
    if stem.endswith(_PARQUET_SUFFIXES):
        if compressed:
            raise StreamMonitorError(f"{name}: a gzip-compressed Parquet file is not supported "
                                     "(Parquet compresses internally); decompress it first")
        return "parquet", False
    raise StreamMonitorError(f"{name}: unsupported file type; expected .jsonl, .ndjson, .json or .csv "
                             "(optionally followed by .gz), or .parquet/.pq")


def _import_parquet():
    try:
        import pyarrow.parquet as parquet
    except ImportError as exc:
        raise StreamMonitorError(_PARQUET_MISSING) from exc
    return parquet


def _guard(name: str, rows: Iterator[Row]) -> Iterator[Row]:
    """Turns a failure of the file itself (not of a row) into a StreamMonitorError naming it."""
    try:
        yield from rows
    except StreamMonitorError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # a corrupt or truncated gzip stream, an I/O error
        raise StreamMonitorError(f"cannot read {name}: {exc}") from exc


def _open(name: str, compressed: bool):
    return gzip.open(name, "rb") if compressed else open(name, "rb")


def _result(line: int, decoded: codec.Decoded) -> Row:
    if isinstance(decoded, DeadLetter):
        return line, SourceError(line, decoded.reason, decoded.error)
    return line, decoded


# --- JSON lines -------------------------------------------------------------------------------

def _read_jsonl(name: str, compressed: bool, known_models: Collection[str], limits: _Limits,
                batch: int = 1_000) -> Iterator[Row]:
    """Each line's row, in order; lines are decoded a batch at a time, as ``run`` decodes a poll batch."""
    max_bytes = limits.max_bytes
    pending: list[RawMessage] = []

    def flush() -> Iterator[Row]:
        for message, decoded in zip(pending, decode_batch(pending, known_models, max_bytes, limits.max_features)):
            yield _result(message.offset, decoded)
        pending.clear()

    with _open(name, compressed) as stream:
        for line_no, value, size in _lines(stream, max_bytes):
            if value is None:
                yield from flush()
                yield line_no, SourceError(line_no, "too_large",
                                           f"line is {size} bytes, over the limit of {max_bytes}")
                continue
            if not value.strip():
                continue
            pending.append(RawMessage(_TOPIC, -1, line_no, value))
            if len(pending) >= batch:
                yield from flush()
    yield from flush()


def _lines(stream: io.BufferedIOBase, max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line without its end, size); value None for a line over the limit, never held whole."""
    line_no = 0
    while True:
        chunk = stream.readline(max_bytes + 2)
        if not chunk:
            return
        line_no += 1
        if chunk.endswith(b"\n") or len(chunk) <= max_bytes:
            value = chunk.rstrip(b"\r\n")
            yield line_no, value, len(value)
            continue
        size = len(chunk)
        while not chunk.endswith(b"\n"):
            chunk = stream.readline(1 << 20)
            if not chunk:
                break
            size += len(chunk)
        yield line_no, None, size - (len(chunk) - len(chunk.rstrip(b"\r\n")))


# --- rows (CSV and Parquet) ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Columns:
    """Which column plays which role; computed once from the header / schema."""

    names: tuple[str, ...]
    features: tuple[str, ...]
    has_event_id: bool
    has_model_id: bool

    @classmethod
    def of(cls, names: Iterable[str]) -> _Columns:
        names = tuple(names)
        return cls(names, tuple(n for n in names if n not in _RESERVED),
                   "event_id" in names, "model_id" in names)


def _row_event(row: dict[str, Any], row_no: int, columns: _Columns, known_models: Collection[str],
               model_id: str | None, limits: _Limits) -> Row:
    """One CSV/Parquet row → the JSON document of an inference event → the codec."""
    if not columns.has_model_id and model_id is None:
        return row_no, SourceError(row_no, "missing_field",
                                   "the file has no model_id column and no model_id was given")
    doc: dict[str, Any] = {
        "event_id": _id(row.get("event_id")) if columns.has_event_id else f"row-{row_no}",
        "model_id": _id(row.get("model_id")) if columns.has_model_id else model_id,
    }
    if row.get("timestamp") is not None:
        doc["timestamp"] = row["timestamp"]
    features: dict[str, Any] = {}
    nested = row.get("features")
    if isinstance(nested, dict):
        features.update(nested)
    elif nested is not None:
        features["features"] = nested  # not a struct: an ordinary feature that happens to be named so
    for name in columns.features:
        features[name] = row.get(name)
    label = row.get("label")
    if label is not None and all(value is None for value in features.values()):
        doc["label"] = label
    else:
        doc["features"] = features
        prediction = _prediction(row)
        if prediction:
            doc["prediction"] = prediction
        if row.get("latency_ms") is not None:
            doc["latency_ms"] = row["latency_ms"]
    try:
        value = orjson.dumps(doc)
    except orjson.JSONEncodeError as exc:
        reason = "not_utf8" if "surrogates" in str(exc) else "wrong_type"
        return row_no, SourceError(row_no, reason, f"row cannot be represented as JSON: {exc}")
    return limits.decode(row_no, value, known_models)


def _prediction(row: dict[str, Any]) -> dict[str, Any]:
    prediction: dict[str, Any] = {}
    nested = row.get("prediction")
    if isinstance(nested, dict):  # a Parquet struct {score, label}
        prediction.update((k, v) for k, v in nested.items() if v is not None)
    score = _first(row, _SCORE_COLUMNS)
    if score is not None:
        prediction["score"] = score
    label = _first(row, _LABEL_PREDICTION_COLUMNS)
    if label is not None and not isinstance(label, dict):
        prediction["label"] = label
    return prediction


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = row.get(name)
        if value is not None:
            return value
    return None


def _id(value: Any) -> Any:
    """Integer ids (common in Parquet) become strings; anything else is left to the codec."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# --- CSV ------------------------------------------------------------------------------------------

def _read_csv(name: str, compressed: bool, known_models: Collection[str], model_id: str | None,
              limits: _Limits) -> Iterator[Row]:
    with _open(name, compressed) as binary:
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            raise StreamMonitorError(f"{name}: the CSV file is empty; a header row is required") from None
        except csv.Error as exc:
            raise StreamMonitorError(f"{name}: cannot read the CSV header: {exc}") from exc
        names = [column.strip() for column in header]
        named = [column for column in names if column]
        if not named:
            raise StreamMonitorError(f"{name}: the CSV header row names no columns")
        duplicates = sorted({column for column in named if named.count(column) > 1})
        if duplicates:
            raise StreamMonitorError(f"{name}: duplicate CSV columns {duplicates}")
        columns = _Columns.of(named)
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                reason = "too_large" if "field limit" in str(exc) else "not_csv"
                yield start, SourceError(start, reason, f"cannot parse CSV: {exc}")
                continue
            if not any(cell.strip() for cell in cells):  # a blank line or one of empty cells only
                continue
            if len(cells) > len(names):
                yield start, SourceError(start, "not_csv",
                                         f"row has {len(cells)} cells, the header has {len(names)} columns")
                continue
            row = {column: (_cell(value) if column not in ("event_id", "model_id") else value or None)
                   for column, value in zip(names, cells) if column}
            yield _row_event(row, start, columns, known_models, model_id, limits)


def _cell(text: str) -> Any:
    """A CSV cell's value: empty → None, then int, finite float, true/false, else the text."""
    if text == "":
        return None
    stripped = text.strip()
    if _INT.fullmatch(stripped):
        number = int(stripped)
        return number if -_INT64 <= number < _INT64 else float(number)
    if _FLOAT.fullmatch(stripped):
        number = float(stripped)
        return number if math.isfinite(number) else text
    lowered = stripped.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return text


# --- Parquet --------------------------------------------------------------------------------------

def _read_parquet(parquet, name: str, known_models: Collection[str], model_id: str | None,
                  limits: _Limits) -> Iterator[Row]:
    import pyarrow

    try:
        source = parquet.ParquetFile(name)
    except pyarrow.ArrowException as exc:
        raise StreamMonitorError(f"cannot read {name} as Parquet: {exc}") from exc
    with source:
        names = source.schema_arrow.names
        columns = _Columns.of(names)
        batches = source.iter_batches(batch_size=_PARQUET_BATCH_ROWS)
        row_no = 0
        while True:
            try:
                batch = next(batches, None)
            except pyarrow.ArrowException as exc:
                raise StreamMonitorError(f"cannot read {name} as Parquet (after row {row_no}): {exc}") from exc
            if batch is None:
                return
            values = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for cells in zip(*values):
                row_no += 1
                row = {column: _plain(value) for column, value in zip(names, cells)}
                yield _row_event(row, row_no, columns, known_models, model_id, limits)


def _plain(value: Any) -> Any:
    """A Parquet value as JSON would carry it: NaN → None (missing), decimals → float, times → text."""
    if isinstance(value, float):
        return value if not math.isnan(value) else None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, Decimal):
        return _plain(float(value))
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return value
