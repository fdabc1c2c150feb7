"""One corrupt state key does not take the group down, and a crafted state runs nothing.

A partition whose stored state cannot be loaded (garbage, an offset that is no integer, a pickle
with a payload) is quarantined by a real `stream-monitor run`: ERROR line, metric, status entry; its
messages wait (or are dead-lettered), its key is left as it is, the other partition is processed to
the end, the process stays up; deleting the key lifts the quarantine. `state import` refuses a
crafted or malformed file as a whole (exit 2, nothing written). Real broker, real Redis."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest

from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.state import SAVED, encode_state
from stream_monitor.synthetic import generate

from ..support import crafted_pickle, lines, produce, read_topic, Run, unique, wait_for_offsets, warmed_monitor

EVENTS = 1500  # per partition


def scrape(port: int, name: str) -> float | None:
    """The value of an unlabelled metric (``None`` while nothing listens yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_until(what: str, check, process, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert process.process.poll() is None, f"run exited ({process.process.returncode}):\n{process.log()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:.0f} s:\n{process.log()[-3000:]}")


def two_partitions(broker) -> tuple[str, dict[int, int]]:
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    records = [(p, b"stable", value, None) for p in (0, 1) for value in lines(generate("stable", EVENTS, seed=5 + p))]
    return topic, produce(broker.address, topic, records)


def corruptions(tmp_path) -> dict[str, dict[str, bytes]]:
    return {"garbage state": {"offset": b"700", "state": b"\x00garbage\xff" * 10},
            "offset abc": {"offset": b"abc", "state": encode_state({"format": 4, "models": {}})},
            "crafted pickle": {"offset": b"700", "state": crafted_pickle(tmp_path / "marker")}}


@pytest.mark.parametrize("corruption, redis_target", [("garbage state", "standalone"), ("offset abc", "standalone"),
                                                      ("crafted pickle", "standalone"), ("garbage state", "cluster")],
                         indirect=["redis_target"])
def test_a_corrupt_key_quarantines_its_partition_and_the_other_goes_on(corruption, broker, redis_target, tmp_path,
                                                                      monitors):
    topic, ends = two_partitions(broker)
    port = free_port()
    run = Run(broker, redis_target, tmp_path, topic, 2, "q",
              service={"metrics_port": port, "quarantine_recheck_seconds": 0.5}, models={"stable": {
                  "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}})
    client, key = run.store.client, run.store.key(topic, 0)
    fields = corruptions(tmp_path)[corruption]
    client.hset(key, mapping=fields)
    client.sadd(run.store.index_key, f"{topic}|0")
    process = run.start(monitors)

    wait_for_offsets(run.store, topic, {1: ends[1]}, processes=[process])  # the other partition: to its end
    wait_until("the quarantine metric", lambda: scrape(port, "stream_monitor_quarantined_partitions") == 1.0, process)
    log = process.log()
    assert f"QUARANTINED {topic}[0]: its stored state cannot be loaded: {key}: field " in log
    problem = {"garbage state": "field 'state': not a stored state of this version",
               "offset abc": "field 'offset' is 'abc', not a non-negative integer",
               "crafted pickle": "field 'state': stored state is in the old pickle format, which this version "
                                 "refuses to load (it could run code)"}[corruption]
    assert problem in log
    assert scrape(port, "stream_monitor_quarantines_total") == 1.0
    assert {k.decode(): v for k, v in client.hgetall(key).items()} == fields, "the evidence is kept as it was"
    assert not (tmp_path / "marker").exists(), "the payload never ran"
    assert "Traceback" not in log
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as response:
        status = orjson.loads(response.read())
    [shown] = [p for p in status["partitions"] if p["partition"] == 0]
    assert shown["quarantined"]["key"] == key and problem in shown["quarantined"]["problem"]

    client.delete(key)  # the operator's fix: rebuild the partition from the log
    wait_for_offsets(run.store, topic, {0: ends[0]}, processes=[process])
    assert f"quarantine of {topic}[0] lifted: its state key was deleted" in process.log()
    assert scrape(port, "stream_monitor_quarantined_partitions") == 0.0
    assert process.terminate() == 0, process.log()[-3000:]
    states = run.states()
    assert {p: (offset, state["models"]["stable"]["events"]) for p, (offset, state) in states.items()} == {
        0: (ends[0], EVENTS), 1: (ends[1], EVENTS)}
    assert not (tmp_path / "marker").exists()


def test_dead_letter_mode_sends_the_quarantined_partitions_messages_to_the_dead_letter_topic(
        broker, redis_target, tmp_path, monitors):
    topic, ends = two_partitions(broker)
    run = Run(broker, redis_target, tmp_path, topic, 2, "qd", service={"on_corrupt_state": "dead_letter"},
              models={"stable": {"decisions": "partition",
                                 "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}})
    fields = corruptions(tmp_path)["crafted pickle"]
    client, key = run.store.client, run.store.key(topic, 0)
    client.hset(key, mapping=fields)
    process = run.start(monitors)
    wait_for_offsets(run.store, topic, {1: ends[1]}, processes=[process])
    expected = ends[0] - 700  # from the stored offset on

    def dead_letters():
        letters = [orjson.loads(m.value()) for m in read_topic(broker.address, run.dead_letter_topic, 1, idle=0.5)]
        return letters if len(letters) >= expected else None

    letters = wait_until("the dead letters", dead_letters, process)
    assert len(letters) == expected
    assert {d["reason"] for d in letters} == {"quarantined_partition"}
    assert sorted(d["offset"] for d in letters) == list(range(700, ends[0]))
    assert all(d["partition"] == 0 and key in d["error"] for d in letters)
    assert {k.decode(): v for k, v in client.hgetall(key).items()} == fields
    assert not (tmp_path / "marker").exists()
    assert process.terminate() == 0, process.log()[-3000:]


# --- state import validates the whole file before it writes anything -------------------------------------------


def import_file(run: Run, path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_monitor", "state", "import", "-c", str(run.config),
                           "--input", str(path)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def exported(broker, redis_target, tmp_path) -> tuple[Run, list[dict]]:
    """A real state saved and exported (`state export`) from one group, and a fresh group to import into
    (on one redis-server, and on the Redis Cluster)."""
    source = Run(broker, redis_target, tmp_path, "t", 1, "source")
    monitor = warmed_monitor()
    assert source.store.save("t", 0, monitor.next_offset, monitor.snapshot(), {"partition": 0}) == SAVED
    out = tmp_path / "export.jsonl"
    done = subprocess.run([sys.executable, "-m", "stream_monitor", "state", "export", "-c", str(source.config),
                           "--output", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["partition"] for r in records] == [0]
    return Run(broker, redis_target, tmp_path, "t", 1, "target"), records


def write_records(path, records) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def test_state_import_of_an_export_restores_it_exactly(exported, tmp_path):
    target, records = exported
    path = tmp_path / "good.jsonl"
    write_records(path, records)
    done = import_file(target, path)
    assert done.returncode == 0 and "imported 1 partitions" in done.stdout, done.stderr
    offset, snapshot = target.store.load("t", 0)
    monitor = warmed_monitor()
    assert (offset, snapshot) == (monitor.next_offset, monitor.snapshot())


def crafted(record: dict, tmp_path, **fields: bytes) -> dict:
    changed = {k: base64.b64encode(v).decode() for k, v in fields.items()}
    return {**record, "partition": 1, "fields": {**record["fields"], **changed}}


@pytest.mark.parametrize("bad, problem", [
    ("pickle", "field 'state': stored state is in the old pickle format, which this version refuses to load"),
    ("offset", "field 'offset' is 'abc', not a non-negative integer"),
    ("reference", "field 'ref:"),
    ("json", "not JSON"),
    ("base64", "is not base64"),
    ("partials", "field '7' of the partials of model 'stable' on t[1] is not a watermark, an idle flag or a bucket's partial"),
    ("merge", "the merge state of model 'stable' has no 'state' field holding a merge state"),
])
def test_state_import_refuses_a_bad_file_and_writes_nothing(bad, problem, exported, tmp_path):
    target, [good] = exported
    marker = tmp_path / "marker"
    ref = next(f for f in good["fields"] if f.startswith("ref:"))
    second = {"pickle": lambda: orjson.dumps(crafted(good, tmp_path, state=crafted_pickle(marker))),
              "offset": lambda: orjson.dumps(crafted(good, tmp_path, offset=b"abc")),
              "reference": lambda: orjson.dumps(crafted(good, tmp_path, **{ref: crafted_pickle(marker)})),
              "json": lambda: b'{"topic": "t", "partition": 1, "fields": ',
              "base64": lambda: orjson.dumps({**good, "partition": 1, "fields": {"offset": "!!"}}),
              "partials": lambda: orjson.dumps({**good, "partition": 1,
                                                "partials": {"stable": {"7": base64.b64encode(b"[1").decode()}}}),
              "merge": lambda: orjson.dumps({"merge": "stable", "fields": {"state": base64.b64encode(b"[]").decode()}}),
              }[bad]()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(orjson.dumps(good) + b"\n" + second + b"\n")
    done = import_file(target, path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"stream-monitor: {path} line 2") and problem in line and "nothing was imported" in line
    assert "Traceback" not in done.stderr
    client = target.store.client
    assert client.exists(target.store.key("t", 0), target.store.key("t", 1), target.store.index_key) == 0
    assert not marker.exists(), "the payload never ran"


def test_importing_a_good_export_lifts_the_quarantine_and_the_partition_resumes_where_it_was(
        broker, redis_server, tmp_path, monitors):
    topic, ends = two_partitions(broker)
    port = free_port()
    run = Run(broker, redis_server, tmp_path, topic, 2, "qi",
              service={"metrics_port": port, "quarantine_recheck_seconds": 0.5},
              models={"stable": {"decisions": "partition",
                                 "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}}}})
    first = run.start(monitors)
    wait_for_offsets(run.store, topic, ends, processes=[first])
    assert first.terminate() == 0, first.log()[-3000:]
    backup = tmp_path / "backup.jsonl"
    done = subprocess.run([sys.executable, "-m", "stream_monitor", "state", "export", "-c", str(run.config),
                           "--output", str(backup)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "exported 2 partitions" in done.stdout, done.stderr
    before = run.states()

    key = run.store.key(topic, 0)
    run.store.client.hset(key, "state", b"\x00garbage")  # the key goes bad while no one owns it
    second = run.start(monitors)
    wait_until("the quarantine metric", lambda: scrape(port, "stream_monitor_quarantined_partitions") == 1.0, second)
    more = produce(broker.address, topic, [(p, b"stable", value, None) for p in (0, 1)
                                           for value in lines(generate("stable", 200, seed=9 + p))])
    wait_for_offsets(run.store, topic, {1: more[1]}, processes=[second])
    assert run.store.client.hget(key, "state") == b"\x00garbage", "nothing written while quarantined"

    only = tmp_path / "partition-0.jsonl"  # partition 1 is live: its backup is older than what it has now
    only.write_bytes(b"".join(line + b"\n" for line in backup.read_bytes().splitlines()
                              if orjson.loads(line)["partition"] == 0))
    done = subprocess.run([sys.executable, "-m", "stream_monitor", "state", "import", "-c", str(run.config),
                           "--input", str(only)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "imported 1 partitions" in done.stdout, done.stderr
    wait_for_offsets(run.store, topic, {0: more[0]}, processes=[second])
    assert f"quarantine of {topic}[0] lifted: its stored state loads now; resuming at offset {ends[0]}" in second.log()
    assert second.terminate() == 0, second.log()[-3000:]
    after = run.states()
    assert after[0][1]["models"]["stable"]["events"] == before[0][1]["models"]["stable"]["events"] + 200
    assert after[1][1]["models"]["stable"]["events"] == before[1][1]["models"]["stable"]["events"] + 200
