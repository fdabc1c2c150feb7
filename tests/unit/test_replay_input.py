"""``replay`` reads what ``reference build`` reads, summarises what it rejects, and fails when it
monitored nothing (the CLI in process: no broker, no Redis)."""

from __future__ import annotations

import csv
import gzip
import io
import re

import orjson
import pytest

from stream_monitor.cli import main
from stream_monitor.config import parse_config
from stream_monitor.replay import EXAMPLES_PER_REASON, Rejections, replay_alerts
from stream_monitor.synthetic import generate

MODEL = {"decisions": "partition",
         "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}
CONFIG_TOML = """
[models.fraud]
decisions = "partition"
reference = { events = 1000 }
[models.fraud.detectors]
psi = { window = 1000 }
resolve_after = 2000
"""


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return generate("fraud", 5000, drift_at=3000)


@pytest.fixture(scope="module")
def expected(docs) -> list[tuple]:
    """What replay raised before it read other formats: the JSON-lines path, line numbers from 1."""
    config = parse_config({"models": {"fraud": MODEL}})
    alerts = [(a.signal, a.name, a.detector, a.status, a.offset)
              for a in replay_alerts(config, [orjson.dumps(d) + b"\n" for d in docs], {})]
    assert len(alerts) >= 5
    return alerts


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG_TOML)
    return path


def replay(capsys, config, path, *extra: str) -> tuple[int, list[tuple], list[str]]:
    code = main(["replay", "-c", str(config), "--input", str(path), *extra])
    out, err = capsys.readouterr()
    alerts = [orjson.loads(line) for line in out.splitlines()]
    return code, [(a["signal"], a["name"], a["detector"], a["status"], a["offset"]) for a in alerts], err.splitlines()


def write_jsonl(path, docs, opener=open) -> None:
    with opener(path, "wb") as out:
        for doc in docs:
            out.write(orjson.dumps(doc) + b"\n")


def write_csv(path, docs) -> None:
    names = sorted(docs[0]["features"])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "timestamp", *names, "score", "prediction_label", "latency_ms"])
        for d in docs:
            writer.writerow([d["event_id"], d["timestamp"], *(d["features"][n] for n in names),
                             d["prediction"]["score"], d["prediction"]["label"], d["latency_ms"]])


def test_replay_of_a_good_jsonl_file_prints_the_alerts_and_exits_0(capsys, config, tmp_path, docs, expected):
    path = tmp_path / "events.jsonl"
    write_jsonl(path, docs)
    code, alerts, err = replay(capsys, config, path)
    assert code == 0
    assert alerts == expected
    assert len(err) == 1
    assert re.fullmatch(rf"{len(expected)} alerts over 5,000 events \(fraud 5,000\) in \d+\.\d\d s: [\d,]+ events/s", err[0])


def test_replay_reads_csv_like_reference_build(capsys, config, tmp_path, docs, expected):
    """No model_id column: the only configured model; offsets are CSV line numbers (the header is line 1)."""
    path = tmp_path / "events.csv"
    write_csv(path, docs)
    code, alerts, err = replay(capsys, config, path)
    assert code == 0, err
    assert alerts == [(*a[:4], a[4] + 1) for a in expected]
    assert err[-1].startswith(f"{len(expected)} alerts over 5,000 events")


def test_replay_reads_gzip_compressed_json_lines(capsys, config, tmp_path, docs, expected):
    path = tmp_path / "events.jsonl.gz"
    write_jsonl(path, docs, opener=gzip.open)
    code, alerts, err = replay(capsys, config, path)
    assert (code, alerts) == (0, expected), err


def test_replay_of_a_wrong_model_id_exits_1_with_a_bounded_summary(capsys, config, tmp_path, docs):
    path = tmp_path / "events.jsonl"
    write_jsonl(path, [dict(d, model_id="frued") for d in docs])
    code, alerts, err = replay(capsys, config, path)
    assert code == 1
    assert alerts == []
    assert len(err) == EXAMPLES_PER_REASON + 2, err  # examples, the counts, the verdict
    assert all(line.startswith(f"line {n}: unknown_model: ") for n, line in zip((1, 2, 3), err))
    assert err[-2] == "5,000 rows rejected: unknown_model 5,000"
    assert err[-1].startswith("stream-monitor: nothing was monitored: no row of ")
    assert "(models: fraud)" in err[-1]


def test_replay_of_an_empty_file_exits_1(capsys, config, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n")
    code, alerts, err = replay(capsys, config, path)
    assert (code, alerts) == (1, [])
    assert err[-1].endswith("the file is empty")


def test_replay_with_some_bad_rows_monitors_the_rest_and_counts_them(capsys, config, tmp_path, docs, expected):
    """Bad lines do not move the alerts (they keep their line numbers); examples per reason, then counts."""
    path = tmp_path / "events.jsonl"
    with open(path, "wb") as out:
        for doc in docs:
            out.write(orjson.dumps(doc) + b"\n")
        for i in range(500):
            out.write(b"not json\n" if i % 2 else orjson.dumps(dict(docs[0], model_id="x" * 100_000)) + b"\n")
    code, alerts, err = replay(capsys, config, path)
    assert (code, alerts) == (0, expected)
    assert len(err) == 2 * EXAMPLES_PER_REASON + 2, err
    assert max(len(line) for line in err) < 400, "a huge field is not repeated in full"
    assert err[-2] == "500 rows rejected: not_json 250, unknown_model 250"


def test_replay_refuses_an_unknown_model_option_and_an_unsupported_file(capsys, config, tmp_path, docs):
    path = tmp_path / "events.csv"
    write_csv(path, docs[:10])
    assert main(["replay", "-c", str(config), "--input", str(path), "--model", "nope"]) == 2
    assert "--model 'nope' is not in the config" in capsys.readouterr().err
    other = tmp_path / "events.txt"
    other.write_bytes(b"{}\n")
    assert main(["replay", "-c", str(config), "--input", str(other)]) == 2
    assert "unsupported file type" in capsys.readouterr().err


def test_rejections_show_a_few_examples_per_reason_then_counts():
    out = io.StringIO()
    rejections = Rejections(out)
    for line in range(1, 1001):
        rejections.add(line, "not_json" if line % 3 else "too_large", "e" * (1000 if line == 1 else 5))
    shown = out.getvalue().splitlines()
    assert len(shown) == 2 * EXAMPLES_PER_REASON
    assert shown[0].startswith("line 1: not_json: eee") and shown[0].endswith("… (1,000 characters)")
    assert rejections.text() == "1,000 rows rejected: not_json 667, too_large 333"


class ClosedPipe(io.StringIO):
    """stdout whose reader has gone (`stream-monitor replay … | head -1`)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(capsys, monkeypatch, config, tmp_path, docs):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["replay", "-c", str(config), "--input", str(path)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_version_names_the_package_version(capsys):
    from stream_monitor import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"stream-monitor {__version__}"
