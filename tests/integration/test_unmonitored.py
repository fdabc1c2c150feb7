"""A configured feature that cannot be monitored is never dropped without a word: refused at
``reference build`` and at start (stored reference), loud when a warm-up reference lacks it."""

from __future__ import annotations

import csv
import time
import urllib.request

import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stream_monitor.app import Service
from stream_monitor.cli import main
from stream_monitor.config import parse_config
from stream_monitor.errors import ConfigError
from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.metrics import Metrics
from stream_monitor.reference import build_reference, unmonitored_columns, why_unmonitored
from stream_monitor.state import ReferenceStore, connect
from stream_monitor.synthetic import generate

from ..support import produce, Run, unique, wait_for_offsets

FEATURES = {"amount": "numeric", "age": "numeric", "country": "categorical", "income": "numeric"}


def fraud_events(count: int = 1000, seed: int = 1) -> list[dict]:
    return generate("fraud", count, seed=seed)


def decoded(docs):
    from stream_monitor.codec import decode
    from stream_monitor.events import RawMessage
    return [decode(RawMessage("t", 0, i, orjson.dumps(d)), {"fraud"}) for i, d in enumerate(docs)]


# --- the pure check --------------------------------------------------------------------------------------


def test_unmonitored_columns_are_the_configured_features_without_a_profile():
    docs = fraud_events(200)
    for d in docs:
        d["features"]["Income"] = 1000.0
        d["features"]["note"] = "text"
    profile = build_reference("fraud", decoded(docs), {**FEATURES, "note": "numeric"})
    assert unmonitored_columns(profile, {**FEATURES, "note": "numeric"}) == ["income", "note"]
    assert unmonitored_columns(profile, None) == []  # inferred features are what the reference has
    assert why_unmonitored("income", "numeric", profile.features) == \
        "the reference has features age, amount, country"  # only configured features are profiled
    assert why_unmonitored("income", "numeric", ["Income", "age"]).endswith("did you mean 'Income'?")
    assert why_unmonitored("incme", "numeric", ["income", "age"]).endswith("did you mean 'income'?")
    assert "did you mean" not in why_unmonitored("zzz", "numeric", ["income", "age"])
    assert why_unmonitored("note", "numeric", ["note"], {"note": 200}, 200) == \
        "is in 200 of the 200 reference events but none has a numeric value"


# --- reference build ----------------------------------------------------------------------------------


def write_config(tmp_path, features: dict, source: str = "stored", extra: str = "") -> str:
    body = ", ".join(f'{k} = "{v}"' for k, v in features.items())
    path = tmp_path / "config.toml"
    path.write_text(f'{extra}\n[models.fraud]\nreference = {{ source = "{source}" }}\nfeatures = {{ {body} }}\n')
    return str(path)


def write_csv(path, docs, rename: dict | None = None) -> None:
    rename = rename or {}
    names = sorted(docs[0]["features"])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "model_id", *(rename.get(n, n) for n in names), "score"])
        for d in docs:
            writer.writerow([d["event_id"], d["model_id"], *(d["features"][n] for n in names), d["prediction"]["score"]])


def test_reference_build_refuses_a_csv_whose_header_misspells_a_configured_feature(tmp_path, capsys):
    """`Amount` in the header, `amount` configured: used to build a reference with "0 rows rejected"."""
    config = write_config(tmp_path, {"amount": "numeric", "country": "categorical"})
    write_csv(tmp_path / "ref.csv", fraud_events(), rename={"amount": "Amount"})
    code = main(["reference", "build", "-c", config, "--model", "fraud", "--input", str(tmp_path / "ref.csv"),
                 "--no-store", "--output", str(tmp_path / "ref.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "models.fraud.features.amount (numeric) cannot be monitored: is in none of the 1,000 reference events" in err
    assert "the reference has features Amount, age, country, is_new" in err
    assert "did you mean 'Amount'?" in err and "no reference stored" in err
    assert not (tmp_path / "ref.json").exists()


def test_reference_build_refuses_a_typo_in_features(tmp_path, capsys):
    config = write_config(tmp_path, {"amount": "numeric", "contry": "categorical"})
    path = tmp_path / "ref.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(d) for d in fraud_events()))
    code = main(["reference", "build", "-c", config, "--model", "fraud", "--input", str(path),
                 "--no-store", "--output", str(tmp_path / "ref.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "models.fraud.features.contry (categorical) cannot be monitored" in err
    assert "did you mean 'country'?" in err


def test_reference_build_of_a_good_file_still_works(tmp_path, capsys):
    config = write_config(tmp_path, {"amount": "numeric", "country": "categorical"})
    write_csv(tmp_path / "ref.csv", fraud_events())
    code = main(["reference", "build", "-c", config, "--model", "fraud", "--input", str(tmp_path / "ref.csv"),
                 "--no-store", "--output", str(tmp_path / "ref.json")])
    assert code == 0, capsys.readouterr().err
    assert "1000 events, 2 features" in capsys.readouterr().out


# --- at start, with a stored reference ----------------------------------------------------------------


def test_start_refuses_a_stored_reference_without_a_configured_feature(redis_server):
    """The reference was built before `income` was added to the config: refused, naming the key."""
    namespace = unique("ns")
    profile = build_reference("fraud", decoded(fraud_events()), {"amount": "numeric", "country": "categorical"},
                              source="stored")
    ReferenceStore(connect(redis_server.address), namespace).store(profile)
    config = parse_config({"redis": {"url": redis_server.address, "namespace": namespace},
                           "models": {"fraud": {"decisions": "partition",
                                                "reference": {"source": "stored"}, "features": FEATURES}}})
    with pytest.raises(ConfigError) as refused:
        Service(config, Metrics(CollectorRegistry()))
    assert refused.value.key == "models.fraud.features.age"
    assert "stored reference of 'fraud' (version 1) has no profile of it" in str(refused.value)
    assert "also without a reference: income" in str(refused.value)
    assert "reference build --model fraud" in str(refused.value)


# --- a warm-up reference: loud, counted, on the status -------------------------------------------------


def scrape(port: int, family: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            if f.name == family for s in f.samples}


def test_warmup_reference_without_a_configured_feature_is_reported(broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    port = free_port()
    model = {"decisions": "partition",
             "reference": {"events": 300}, "features": {"amount": "numeric", "Income": "numeric"},
             "detectors": {"psi": {"window": 300}}}
    run = Run(broker, redis_server, tmp_path, topic, 2, "unmonitored", models={"fraud": model},
              service={"metrics_port": port})
    process = run.start(monitors)
    ends = produce(broker.address, topic, [(p, b"fraud", orjson.dumps(d), None)
                                           for p in (0, 1) for d in fraud_events(1000, seed=p)])
    wait_for_offsets(run.store, topic, ends, processes=[process])
    deadline = time.monotonic() + 30
    gauge = {}
    while time.monotonic() < deadline and not gauge:
        gauge = scrape(port, "stream_monitor_unmonitored_columns")
        time.sleep(0.1)
    assert gauge == {(("model", "fraud"),): 1.0}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as response:
        assert orjson.loads(response.read())["models"]["fraud"]["unmonitored"] == ["Income"]
    assert process.terminate() == 0
    errors = [line for line in process.log().splitlines() if "NOT MONITORED" in line]
    assert len(errors) == 1, errors  # once per model, although both partitions built a reference
    assert "models.fraud.features.Income" in errors[0] and "ERROR" in errors[0]
    assert all(summary["models"]["fraud"]["unmonitored"] == ["Income"]
               for _, _, _, summary, _ in run.store.summaries())
    status = main_output(["status", "-c", str(run.config)])
    assert "NOT MONITORED: configured features Income have no profile in the reference" in status


def main_output(argv: list[str]) -> str:
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "stream_monitor", *argv], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout
