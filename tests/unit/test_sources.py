"""Reading events from JSON lines, CSV and Parquet files (pure file I/O under tmp_path)."""

from __future__ import annotations

import csv
import gzip
import math
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_monitor.codec import decode
from stream_monitor.errors import StreamMonitorError
from stream_monitor.events import InferenceEvent, LabelEvent, RawMessage
from stream_monitor.sources import SourceError, read_events
from stream_monitor.synthetic import generate

MODELS = {"fraud", "churn"}
FEATURES = ["amount", "age", "country", "is_new"]
COLUMNS = ["event_id", "model_id", "timestamp", *FEATURES, "score", "prediction_label", "latency_ms"]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return generate("fraud", 200, seed=1)


def flat(doc: dict) -> dict:
    """A synthetic event as one flat row: features as columns, prediction.score → score, ..."""
    return {"event_id": doc["event_id"], "model_id": doc["model_id"], "timestamp": doc["timestamp"],
            **doc["features"], "score": doc["prediction"]["score"],
            "prediction_label": doc["prediction"]["label"], "latency_ms": doc["latency_ms"]}


def write_jsonl(path, docs, opener=open) -> None:
    with opener(path, "wb") as out:
        for doc in docs:
            out.write(orjson.dumps(doc) + b"\n")


def write_csv(path, rows: list[dict], columns=COLUMNS, opener=open) -> None:
    with opener(path, "wt", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_text(path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))


def read(path, **kwargs) -> list[tuple[int, object]]:
    return list(read_events(path, MODELS, **kwargs))


def expected_events(docs) -> list[InferenceEvent]:
    events = [decode(RawMessage("t", 0, i, orjson.dumps(doc)), MODELS) for i, doc in enumerate(docs)]
    assert all(isinstance(event, InferenceEvent) for event in events)
    return events


def errors(rows) -> list[tuple[int, str]]:
    return [(line, item.reason) for line, item in rows if isinstance(item, SourceError)]


# --- the same data in every format -----------------------------------------------------------------

def test_all_formats_give_the_same_inference_events(tmp_path, docs):
    write_jsonl(tmp_path / "events.jsonl", docs)
    write_csv(tmp_path / "events.csv", [flat(doc) for doc in docs])
    pq.write_table(pa.Table.from_pylist([flat(doc) for doc in docs]), tmp_path / "events.parquet")

    jsonl = read(tmp_path / "events.jsonl")
    csv_rows = read(tmp_path / "events.csv")
    parquet = read(tmp_path / "events.parquet")

    expected = expected_events(docs)
    assert [event for _, event in jsonl] == expected
    assert [event for _, event in csv_rows] == expected
    assert [event for _, event in parquet] == expected
    # row numbers: lines for JSONL, lines for CSV (header is line 1), 1-based rows for Parquet
    assert [line for line, _ in jsonl] == list(range(1, 201))
    assert [line for line, _ in csv_rows] == list(range(2, 202))
    assert [line for line, _ in parquet] == list(range(1, 201))
    # the types survive the CSV round trip
    first = csv_rows[0][1]
    assert isinstance(first.features["is_new"], bool)
    assert isinstance(first.features["amount"], float)
    assert isinstance(first.features["country"], str)
    assert first.predicted_label in {"0", "1"} and first.timestamp_ms == 1_795_800_000_000


def test_gzip_variants_read_like_the_plain_files(tmp_path, docs):
    write_jsonl(tmp_path / "events.jsonl.gz", docs, opener=gzip.open)
    write_jsonl(tmp_path / "events.ndjson.gz", docs, opener=gzip.open)
    write_csv(tmp_path / "events.csv.gz", [flat(doc) for doc in docs], opener=gzip.open)
    expected = expected_events(docs)
    for name in ("events.jsonl.gz", "events.ndjson.gz", "events.csv.gz"):
        assert [event for _, event in read(tmp_path / name)] == expected, name


@pytest.mark.parametrize("name", ["events.json", "events.NDJSON", "EVENTS.JSONL"])
def test_json_lines_suffixes(tmp_path, docs, name):
    write_jsonl(tmp_path / name, docs[:5])
    assert [event for _, event in read(str(tmp_path / name))] == expected_events(docs[:5])


@pytest.mark.parametrize("name", ["events.pq", "events.PARQUET"])
def test_parquet_suffixes(tmp_path, docs, name):
    pq.write_table(pa.Table.from_pylist([flat(doc) for doc in docs[:5]]), tmp_path / name)
    assert [event for _, event in read(tmp_path / name)] == expected_events(docs[:5])


def test_parquet_with_features_and_prediction_structs(tmp_path, docs):
    """The JSON documents themselves as a table: `features` and `prediction` are struct columns."""
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "nested.parquet")
    assert [event for _, event in read(tmp_path / "nested.parquet")] == expected_events(docs)


def test_parquet_streams_over_many_row_groups_and_batches(tmp_path, monkeypatch):
    docs = generate("churn", 1000, seed=3)
    pq.write_table(pa.Table.from_pylist([flat_churn(doc) for doc in docs]), tmp_path / "big.parquet",
                   row_group_size=128)
    monkeypatch.setattr("stream_monitor.sources._PARQUET_BATCH_ROWS", 100)
    rows = read(tmp_path / "big.parquet")
    assert [line for line, _ in rows] == list(range(1, 1001))
    assert [event for _, event in rows] == expected_events(docs)


def flat_churn(doc: dict) -> dict:
    return {"event_id": doc["event_id"], "model_id": doc["model_id"], "timestamp": doc["timestamp"],
            **doc["features"], "prediction_score": doc["prediction"]["score"],
            "prediction": doc["prediction"]["label"], "latency_ms": doc["latency_ms"]}


# --- bad rows are data, and the read goes on ------------------------------------------------------

def test_bad_jsonl_lines_become_source_errors_with_their_line(tmp_path, docs):
    good = orjson.dumps(docs[0]).decode()
    lines = [
        good,                                                                      # 1
        "{not json",                                                               # 2
        "[1, 2]",                                                                  # 3
        "",                                                                        # 4 blank: skipped
        '{"model_id": "fraud", "features": {}}',                                   # 5
        '{"event_id": "x", "model_id": "other", "features": {}}',                  # 6
        '{"event_id": "x", "model_id": "fraud", "features": [1]}',                 # 7
        '{"event_id": "x", "model_id": "fraud", "features": {"a": 1}, "latency_ms": -1}',  # 8
        "   ",                                                                     # 9 blank: skipped
        '{"event_id": "x", "model_id": "fraud", "label": 1}',                      # 10
        orjson.dumps(docs[1]).decode(),                                            # 11
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")                  # 12: not UTF-8
    rows = read(path)
    assert [line for line, _ in rows] == [1, 2, 3, 5, 6, 7, 8, 10, 11, 12]
    assert errors(rows) == [(2, "not_json"), (3, "not_object"), (5, "missing_field"), (6, "unknown_model"),
                            (7, "wrong_type"), (8, "wrong_type"), (12, "not_utf8")]
    assert rows[-3][1] == LabelEvent("x", "fraud", None, 1)
    assert rows[-2][1] == expected_events(docs[1:2])[0]
    error = rows[1][1]
    assert error.line == 2 and "JSON" in error.error


def test_jsonl_line_over_the_size_limit_is_rejected_without_stopping(tmp_path, docs):
    big = {**docs[0], "features": {"blob": "x" * 5000}}
    path = tmp_path / "big.jsonl"
    write_jsonl(path, [docs[0], big, docs[1]])
    rows = read(path, max_bytes=1000)
    assert errors(rows) == [(2, "too_large")]
    assert [line for line, _ in rows] == [1, 2, 3]
    assert isinstance(rows[2][1], InferenceEvent)
    # the limit applies to the line's bytes, without its line end
    one = tmp_path / "one.jsonl"
    write_jsonl(one, [docs[0]])
    size = len(orjson.dumps(docs[0]))
    assert errors(read(one, max_bytes=size)) == []
    assert errors(read(one, max_bytes=size - 1)) == [(1, "too_large")]


def test_bad_csv_rows_become_source_errors_with_their_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"event_id,model_id,timestamp,amount,score,latency_ms\n"     # 1
        b"e1,fraud,1795800000.5,12.5,0.5,3\n"                         # 2
        b"e2,other,,1,,\n"                                             # 3 unknown model
        b",fraud,,1,,\n"                                               # 4 empty event_id
        b"e4,fraud,yesterday,1,,\n"                                    # 5 bad timestamp
        b"e5,fraud,,1,high,\n"                                         # 6 score not a number
        b"e6,fraud,,1,,-2\n"                                           # 7 negative latency
        b"e7,fraud,,1,,,surplus\n"                                     # 8 more cells than columns
        b"\n"                                                          # 9 blank: skipped
        b",,,,,\n"                                                     # 10 empty cells only: skipped
        b"e10,fraud,,\xff\xfe,,\n"                                     # 11 not UTF-8
        b'"e11\nsecond line",fraud,,2,0.25,\n'                         # 12-13 quoted line break
        b"e13,fraud,2026-11-27T20:44:50.123Z,3,,\n")                   # 14
    rows = read(path)
    assert errors(rows) == [(3, "unknown_model"), (4, "missing_field"), (5, "wrong_type"), (6, "wrong_type"),
                            (7, "wrong_type"), (8, "not_csv"), (11, "not_utf8")]
    events = {line: item for line, item in rows if not isinstance(item, SourceError)}
    assert events == {
        2: InferenceEvent("e1", "fraud", 1_795_800_000_500, {"amount": 12.5}, 0.5, None, 3.0),
        12: InferenceEvent("e11\nsecond line", "fraud", None, {"amount": 2}, 0.25, None, None),
        14: InferenceEvent("e13", "fraud", 1_795_812_290_123, {"amount": 3}, None, None, None),
    }
    assert all(item.line == line for line, item in rows if isinstance(item, SourceError))


def test_csv_cell_types(tmp_path):
    path = tmp_path / "cells.csv"
    write_text(path, "event_id,model_id,a,b,c,d,e,f,g,h,i,j\n"
                     "007,fraud,3,-2.5,TRUE,false,DE,,inf,1e999,1e3,123456789012345678901234\n")
    [(line, event)] = read(path)
    assert line == 2
    assert event.event_id == "007"  # ids stay text
    assert event.features == {"a": 3, "b": -2.5, "c": True, "d": False, "e": "DE", "f": None, "g": "inf",
                              "h": "1e999", "i": 1000.0, "j": 1.2345678901234568e23}
    assert type(event.features["a"]) is int


def test_csv_prediction_aliases_and_bom(tmp_path):
    path = tmp_path / "aliases.csv"
    path.write_bytes("\ufeffevent_id,model_id,x,prediction_score,prediction\n"
                     "e1,fraud,1,0.75,yes\n"
                     "e2,fraud,2,,3\n".encode("utf-8"))
    assert [event for _, event in read(path)] == [
        InferenceEvent("e1", "fraud", None, {"x": 1}, 0.75, "yes", None),
        InferenceEvent("e2", "fraud", None, {"x": 2}, None, "3", None),
    ]


def test_bad_parquet_rows_become_source_errors(tmp_path):
    table = pa.table({
        "event_id": ["e1", None, "e3", "e4", "e5"],
        "model_id": ["fraud", "fraud", "other", "fraud", "fraud"],
        "amount": [1.0, 2.0, 3.0, math.nan, 5.0],
        "score": [0.1, 0.2, 0.3, 0.4, math.nan],
        "latency_ms": [1.0, 2.0, 3.0, -4.0, None],
    })
    pq.write_table(table, tmp_path / "bad.parquet")
    rows = read(tmp_path / "bad.parquet")
    assert errors(rows) == [(2, "missing_field"), (3, "unknown_model"), (4, "wrong_type")]
    assert rows[0][1] == InferenceEvent("e1", "fraud", None, {"amount": 1.0}, 0.1, None, 1.0)
    assert rows[4][1] == InferenceEvent("e5", "fraud", None, {"amount": 5.0}, None, None, None)  # NaN → missing


def test_parquet_integer_ids_and_timestamp_column(tmp_path):
    table = pa.table({
        "event_id": pa.array([1, 2], pa.int64()),
        "model_id": ["fraud", "fraud"],
        "timestamp": pa.array([1_795_812_290_123, None], pa.timestamp("ms", tz="UTC")),
        "amount": [1.5, None],
    })
    pq.write_table(table, tmp_path / "ids.parquet")
    assert [event for _, event in read(tmp_path / "ids.parquet")] == [
        InferenceEvent("1", "fraud", 1_795_812_290_123, {"amount": 1.5}),
        InferenceEvent("2", "fraud", None, {"amount": None}),
    ]


# --- label rows -----------------------------------------------------------------------------------

def test_csv_label_rows(tmp_path):
    path = tmp_path / "mixed.csv"
    write_text(path, "event_id,model_id,timestamp,amount,country,score,label\n"
                     "e1,fraud,1795800000,12.5,DE,0.9,\n"      # inference
                     "e1,fraud,1795800060,,,,1\n"              # label: no feature values
                     "e2,fraud,,,,0.3,true\n"                  # label: a score is no feature
                     "e3,fraud,,4,,,0\n"                       # a feature value → inference, label unused
                     "e4,fraud,,,,,\n")                        # nothing at all → inference with missing features
    assert [event for _, event in read(path)] == [
        InferenceEvent("e1", "fraud", 1_795_800_000_000, {"amount": 12.5, "country": "DE"}, 0.9),
        LabelEvent("e1", "fraud", 1_795_800_060_000, 1),
        LabelEvent("e2", "fraud", None, True),
        InferenceEvent("e3", "fraud", None, {"amount": 4, "country": None}),
        InferenceEvent("e4", "fraud", None, {"amount": None, "country": None}),
    ]


def test_label_only_files_in_every_format(tmp_path):
    labels = [{"event_id": f"fraud-1-{i}", "label": i % 2} for i in range(4)]
    write_csv(tmp_path / "labels.csv", labels, columns=["event_id", "label"])
    pq.write_table(pa.Table.from_pylist(labels), tmp_path / "labels.parquet")
    write_jsonl(tmp_path / "labels.jsonl", [{**label, "model_id": "fraud"} for label in labels])
    expected = [LabelEvent(f"fraud-1-{i}", "fraud", None, i % 2) for i in range(4)]
    assert [event for _, event in read(tmp_path / "labels.csv", model_id="fraud")] == expected
    assert [event for _, event in read(tmp_path / "labels.parquet", model_id="fraud")] == expected
    assert [event for _, event in read(tmp_path / "labels.jsonl")] == expected


def test_parquet_label_rows_with_a_features_struct(tmp_path):
    table = pa.Table.from_pylist([
        {"event_id": "e1", "model_id": "fraud", "features": {"amount": 1.0}, "label": None},
        {"event_id": "e1", "model_id": "fraud", "features": {"amount": None}, "label": 1},
        {"event_id": "e2", "model_id": "fraud", "features": None, "label": 0},
    ])
    pq.write_table(table, tmp_path / "labels.parquet")
    assert [event for _, event in read(tmp_path / "labels.parquet")] == [
        InferenceEvent("e1", "fraud", None, {"amount": 1.0}),
        LabelEvent("e1", "fraud", None, 1),
        LabelEvent("e2", "fraud", None, 0),
    ]


# --- model_id and event_id columns ----------------------------------------------------------------

def test_missing_model_id_column_without_model_id_gives_an_error_per_row(tmp_path, docs):
    rows = [{k: v for k, v in flat(doc).items() if k != "model_id"} for doc in docs[:3]]
    columns = [c for c in COLUMNS if c != "model_id"]
    write_csv(tmp_path / "nomodel.csv", rows, columns=columns)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nomodel.parquet")
    for name, first in (("nomodel.csv", 2), ("nomodel.parquet", 1)):
        result = read(tmp_path / name)
        assert errors(result) == [(first + i, "missing_field") for i in range(3)], name
        assert "model_id" in result[0][1].error


def test_missing_model_id_column_with_model_id(tmp_path, docs):
    rows = [{k: v for k, v in flat(doc).items() if k != "model_id"} for doc in docs[:3]]
    columns = [c for c in COLUMNS if c != "model_id"]
    write_csv(tmp_path / "nomodel.csv", rows, columns=columns)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nomodel.parquet")
    for name in ("nomodel.csv", "nomodel.parquet"):
        assert [event for _, event in read(tmp_path / name, model_id="fraud")] == expected_events(docs[:3])
        assert {item.reason for _, item in read(tmp_path / name, model_id="unknown")} == {"unknown_model"}


def test_model_id_argument_does_not_override_a_model_id_column(tmp_path, docs):
    rows = [flat(doc) for doc in docs[:2]] + [{**flat(docs[2]), "model_id": "churn"}]
    write_csv(tmp_path / "two.csv", rows)
    models = [event.model_id for _, event in read(tmp_path / "two.csv", model_id="fraud")]
    assert models == ["fraud", "fraud", "churn"]  # rows of other models are still yielded


def test_missing_event_id_column_numbers_the_rows(tmp_path):
    write_text(tmp_path / "noid.csv", "model_id,amount\nfraud,1\nfraud,2\n")
    pq.write_table(pa.table({"model_id": ["fraud", "fraud"], "amount": [1, 2]}), tmp_path / "noid.parquet")
    assert [event.event_id for _, event in read(tmp_path / "noid.csv")] == ["row-2", "row-3"]
    assert [event.event_id for _, event in read(tmp_path / "noid.parquet")] == ["row-1", "row-2"]


# --- the file itself ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["events.txt", "events.xlsx", "events.gz", "events", "events.parquet.gz"])
def test_unsupported_suffix_is_refused_at_once_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(StreamMonitorError, match=name.replace(".", r"\.")):
        read_events(path, MODELS)


def test_missing_file_is_refused_at_once(tmp_path):
    with pytest.raises(StreamMonitorError, match=r"cannot read .*absent\.jsonl"):
        read_events(tmp_path / "absent.jsonl", MODELS)


def test_corrupt_files_raise_naming_the_file(tmp_path, docs):
    (tmp_path / "bad.jsonl.gz").write_bytes(b"this is not gzip")
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    write_jsonl(tmp_path / "cut.jsonl.gz", docs, opener=gzip.open)
    data = (tmp_path / "cut.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    for name in ("bad.jsonl.gz", "bad.parquet", "cut.jsonl.gz"):
        with pytest.raises(StreamMonitorError, match=name.replace(".", r"\.")):
            read(tmp_path / name)


def test_csv_needs_a_header_row(tmp_path):
    write_text(tmp_path / "empty.csv", "")
    write_text(tmp_path / "dupes.csv", "event_id,x,x\ne1,1,2\n")
    with pytest.raises(StreamMonitorError, match=r"empty\.csv.*header"):
        read(tmp_path / "empty.csv")
    with pytest.raises(StreamMonitorError, match=r"dupes\.csv.*duplicate"):
        read(tmp_path / "dupes.csv")


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(StreamMonitorError, match=r"reading Parquet needs pyarrow: pip install "
                                                 r"'stream-monitor\[parquet\]'"):
        read_events(tmp_path / "x.parquet", MODELS)
