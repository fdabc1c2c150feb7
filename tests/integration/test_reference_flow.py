"""Stored references as a user runs them: build from CSV, show, run against it, re-reference live (on one
redis-server and on the Redis Cluster)."""

from __future__ import annotations

import csv
import subprocess
import sys
import time

import orjson

from stream_monitor.demo.localstack import create_topics
from stream_monitor.synthetic import generate

from ..support import produce, Run, stored_offset, unique, wait_for_offsets

STORED = {"decisions": "partition",
          "reference": {"source": "stored"}, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_monitor", *args], capture_output=True, text=True,
                          timeout=120)


def write_csv(path, events) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        names = sorted(events[0]["features"])
        writer.writerow(["event_id", "model_id", "timestamp", *names, "score", "prediction_label", "latency_ms"])
        for e in events:
            writer.writerow([e["event_id"], e["model_id"], e["timestamp"], *(e["features"][n] for n in names),
                             e["prediction"]["score"], e["prediction"]["label"], e["latency_ms"]])


def test_reference_from_csv_then_live_re_reference(broker, redis_target, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    run = Run(broker, redis_target, tmp_path, topic, 1, "stored", models={"fraud": STORED},
              service={"reference_poll_seconds": 0.3})

    # 1. a run refuses to start without the stored reference, naming the key
    refused = cli("run", "-c", str(run.config))
    assert refused.returncode == 2
    assert "models.fraud.reference.source" in refused.stderr and "reference build" in refused.stderr

    # 2. build version 1 from CSV (one bad row is reported, not fatal), show it, write it for replay
    before = generate("fraud", 5000, seed=7)
    write_csv(tmp_path / "v1.csv", before)
    with open(tmp_path / "v1.csv", "a") as handle:
        handle.write("bad-row,fraud,not-a-time,1,DE,true,2,0.5,1,3\n")
    built = cli("reference", "build", "-c", str(run.config), "--model", "fraud", "--input",
                str(tmp_path / "v1.csv"), "--output", str(tmp_path / "v1.json"))
    assert built.returncode == 0, built.stderr
    assert "version 1, 5000 events, 4 features" in built.stdout and "1 rows rejected" in built.stdout
    shown = cli("reference", "show", "-c", str(run.config), "--model", "fraud")
    assert shown.returncode == 0 and "amount" in shown.stdout and "country" in shown.stdout

    # 3. the service compares with it: unchanged traffic raises nothing
    process = run.start(monitors)
    ends = produce(broker.address, topic, [(0, b"fraud", orjson.dumps(e), None)
                                           for e in generate("fraud", 3000, seed=8)])
    wait_for_offsets(run.store, topic, ends, processes=[process])

    # 4. re-reference while it runs: traffic like the new reference raises nothing either
    drifted = generate("fraud", 11000, seed=9, drift_at=0)
    (tmp_path / "v2.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in drifted[:5000]))
    rebuilt = cli("reference", "build", "-c", str(run.config), "--model", "fraud", "--input",
                  str(tmp_path / "v2.jsonl"))
    assert rebuilt.returncode == 0 and "version 2" in rebuilt.stdout, rebuilt.stderr
    deadline = time.monotonic() + 30
    while "stored reference version 2" not in process.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "stored reference version 2 (was 1)" in process.log()
    ends = produce(broker.address, topic, [(0, b"fraud", orjson.dumps(e), None) for e in drifted[5000:]])
    wait_for_offsets(run.store, topic, ends, processes=[process])
    assert process.terminate() == 0
    assert run.alerts() == []
    assert stored_offset(run.store, topic, 0) == ends[0]

    # 5. the same drifted traffic against version 1 (replay with the file written in step 2) does alert
    (tmp_path / "drifted.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in drifted[5000:]))
    replayed = cli("replay", "-c", str(run.config), "--input", str(tmp_path / "drifted.jsonl"),
                   "--reference", str(tmp_path / "v1.json"))
    assert replayed.returncode == 0, replayed.stderr
    alerts = [orjson.loads(line) for line in replayed.stdout.splitlines()]
    assert {("feature", "amount", "psi"), ("feature", "country", "psi")} <= {
        (a["signal"], a["name"], a["detector"]) for a in alerts if a["status"] == "firing"}
