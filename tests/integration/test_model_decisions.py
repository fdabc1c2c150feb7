"""Model-level decisions through the real broker and Redis: a model keyed by event id over 4 partitions
announces a change once, with the same alert ids whatever the number of instances (1, 2, 4), a SIGKILL
and the rebalance after it, all equal to what the engine decides in process; a stationary model raises
nothing and an empty partition holds nothing back."""

from __future__ import annotations

import subprocess
import sys
import time
import zlib
from collections import Counter

import orjson

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import create_topics
from stream_monitor.events import RawMessage
from stream_monitor.merge import PartitionPartials, merge_step, reference_step
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import build_reference
from stream_monitor.state import SAVED, STALE, MergeStore, ReferenceStore, StateStore, connect
from stream_monitor.synthetic import generate

from ..support import Feeder, Run, merged_alerts, namespace_contents, \
    produce, read_topic, unique, validator, wait_for_offsets

PARTITIONS = 4
EVENTS = 6000  # 60 s of event time at 100 events/s: six model windows of 1000
DRIFT_AT = 3000
MODEL = {"decisions": "model", "reference": {"source": "stored"}, "merge_lateness_seconds": 1.0,
         "merge_idle_seconds": 1.0, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}
SERVICE = {"checkpoint_interval_events": 200, "checkpoint_interval_seconds": 0.3}


def keyed_by_event_id(events) -> list[tuple]:
    """(partition, key, value, headers) as a producer keyed by event id spreads them."""
    return [(zlib.crc32(e["event_id"].encode()) % PARTITIONS, e["event_id"].encode(), orjson.dumps(e), None)
            for e in events]


def reference():
    events = [decode(RawMessage("r", 0, i, orjson.dumps(d)), frozenset(["fraud"]))
              for i, d in enumerate(generate("fraud", 4000, seed=7))]
    return build_reference("fraud", events, None, source="stored")


def pipeline(broker, redis_server, tmp_path, topic, name) -> Run:
    run = Run(broker, redis_server, tmp_path, topic, PARTITIONS, name, service=SERVICE, models={"fraud": MODEL})
    ReferenceStore(run.store.client, run.namespace).store(reference())
    return run


def wait_for_windows(run: Run, windows: int, processes, timeout: float = 120.0) -> dict:
    """Until the model's merge state in Redis has decided ``windows`` windows."""
    merges = MergeStore(run.store)
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = merges.load("fraud")
        if state is not None and state["windows"] >= windows:
            return state
        for process in processes:
            if process.process.poll() is not None:
                raise AssertionError(f"monitor exited early:\n{process.log()[-3000:]}")
        time.sleep(0.1)
    logs = "\n".join(p.log()[-2000:] for p in processes)
    raise AssertionError(f"merge state {state and {k: state[k] for k in ('windows', 'last_bucket', 'through')}} {state and state['window'] and {k: v for k, v in state['window'].items() if k != 'columns'}} "
                         f"did not reach {windows} windows\n{logs}")


def finish(run: Run, processes, windows: int = EVENTS // 1000) -> list[dict]:
    state = wait_for_windows(run, windows, processes)
    assert state["windows"] == windows
    for process in processes:
        assert process.terminate() == 0, process.log()[-3000:]
    return run.alerts()


def expected_alert_ids(records, first_offsets: dict[int, int] | None = None) -> set[str]:
    """What the engine decides in process on the same partitions and offsets (``first_offsets``: where a
    partition's records start, 0 unless given)."""
    return {a.alert_id for a in engine_merge(records, first_offsets=first_offsets).alerts}


def engine_merge(records, model: dict = MODEL, retraining: bool = False, first_offsets: dict[int, int] | None = None):
    """The engine's merge, in process, of the same partitions and offsets (one step)."""
    config = parse_config({"models": {"fraud": model}})
    profile = reference()
    parts = []
    for p in range(PARTITIONS):
        monitor = PartitionMonitor(config, p, {"fraud": profile})
        mine = [value for partition, _, value, _ in records if partition == p]
        start = (first_offsets or {}).get(p, 0)
        if start:
            monitor.skip(start - 1)
        monitor.process_batch([(offset, decode(RawMessage("t", p, offset, value), frozenset(["fraud"])), None)
                               for offset, value in enumerate(mine, start)])
        monitor.go_idle()
        mark = monitor.merge_marks()["fraud"]
        parts.append(PartitionPartials("t", p, mark["watermark"], True, mark["partials"]))
    return merge_step(config.models["fraud"], profile, None, parts, 1000, retraining=retraining)


def announced_once(alerts: list[dict]) -> None:
    firing = Counter((a["signal"], a["name"], a["detector"]) for a in alerts if a["status"] == "firing")
    assert firing[("feature", "amount", "psi")] == 1
    assert set(firing.values()) == {1}, firing  # one firing per (signal, name, detector), not one per partition


def test_four_instances_announce_the_change_once_with_the_ids_the_engine_decides(broker, redis_server, tmp_path,
                                                                                 monitors):
    """Four instances, one partition each, decide what the engine decides in process over the same partitions
    (the next test holds one instance, and two with a SIGKILL, to the same ids)."""
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    records = keyed_by_event_id(generate("fraud", EVENTS, seed=1, drift_at=DRIFT_AT))
    produce(broker.address, topic, records)
    four = pipeline(broker, redis_server, tmp_path, topic, "four")
    started = time.monotonic()
    alerts = finish(four, [four.start(monitors) for _ in range(4)])
    print(f"4 instances over {EVENTS} events: {time.monotonic() - started:.1f} s")
    announced_once(alerts)
    assert {a["alert_id"] for a in alerts} == expected_alert_ids(records)
    window = [a for a in alerts if a["partition"] is None]
    assert window and all(a["offset"] is None and sum(a["window"]["events"].values()) >= 1000 for a in window)
    schema = validator("alert.json")
    for alert in alerts:
        schema.validate(alert)  # model-level ones too: partition and offset null, with their window
    psi = next(a for a in window if (a["name"], a["detector"], a["status"]) == ("amount", "psi", "firing"))
    assert sorted(psi["window"]["events"]) == [f"{topic}|{p}" for p in range(PARTITIONS)]
    shown = status(four, "--json")["model_decisions"]["fraud"]
    assert shown["windows"] == 6 and {"feature|amount|psi", "feature|amount|ks"} <= {
        e["episode"] for e in shown["episodes"] if e["firing"]}  # the drift lasts to the end


def status(run: Run, *args: str):
    done = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(run.config), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout) if args else done.stdout


def wait_for_log(process, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.log():
        if time.monotonic() > deadline or process.process.poll() is not None:
            raise AssertionError(f"{text!r} not in the log:\n{process.log()[-3000:]}")
        time.sleep(0.1)


def kill_the_merger_mid_stream(run: Run, records, monitors, at: int = 300):
    """Two instances share the partitions; ``records`` are fed at 1,500/s and, once every partition has
    stored ``at`` offsets, the instance that merges the model is SIGKILLed (its partitions and the merge
    move to the other). The survivor, once the feed has ended."""
    topic = run.input_topic
    first = run.start(monitors)
    wait_for_log(first, f"assigned {topic}[")
    second = run.start(monitors)
    wait_for_log(second, f"assigned {topic}[")  # the group has two members: the partitions are shared
    feeder = Feeder(run.broker.address, topic, records, rate=1500)
    feeder.start()
    wait_for_offsets(run.store, topic, {p: at for p in range(PARTITIONS)}, processes=[first, second])
    assert feeder.is_alive(), "killed mid-stream"
    merge_partition = zlib.crc32(b"fraud") % PARTITIONS
    merger, survivor = (second, first) if f"assigned {topic}[{merge_partition}]" in second.log() else (first, second)
    merger.kill()
    feeder.result()
    return survivor


def test_a_sigkill_of_the_merger_and_the_rebalance_after_it_change_no_alert_id(broker, redis_server, tmp_path,
                                                                               monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    records = keyed_by_event_id(generate("fraud", EVENTS, seed=1, drift_at=DRIFT_AT))
    clean = pipeline(broker, redis_server, tmp_path, topic, "clean")
    run = pipeline(broker, redis_server, tmp_path, topic, "interrupted")
    clean_processes = [clean.start(monitors)]
    started = time.monotonic()
    survivor = kill_the_merger_mid_stream(run, records, monitors)
    alerts_run = finish(run, [survivor])
    alerts_clean = finish(clean, clean_processes)
    print(f"1 instance, and 2 with a SIGKILL, over {EVENTS} events: {time.monotonic() - started:.1f} s")
    announced_once(alerts_clean)
    assert {a["alert_id"] for a in alerts_run} == {a["alert_id"] for a in alerts_clean}
    assert {a["alert_id"] for a in alerts_clean} == expected_alert_ids(records)


RETRAINING = {"min_drifted_features": 2, "cooldown_seconds": 0}


def retraining_pipeline(broker, redis_server, tmp_path, topic, name) -> tuple[Run, str]:
    """A pipeline with its own retraining topic; the model asks at 2 features drifted critically."""
    requests = unique(f"retrain-{name}")
    create_topics(broker.address, {requests: 1})
    extra = (f'[retraining]\ntopic = "{requests}"\n\n[models.fraud.retraining]\n'
             + "".join(f"{k} = {v}\n" for k, v in RETRAINING.items()))
    run = Run(broker, redis_server, tmp_path, topic, PARTITIONS, name, service=SERVICE, models={"fraud": MODEL},
              extra=extra)
    ReferenceStore(run.store.client, run.namespace).store(reference())
    return run, requests


def test_a_sigkill_of_the_merger_right_after_a_retraining_request_repeats_its_id_and_loses_none(
        broker, redis_server, tmp_path, monitors):
    """The model-level drift asks for retraining once, from the merge: the request the engine makes, with the
    incident every alert of the change carries. A SIGKILL of the merging instance right after it handed the
    request to the producer (before the merge state that made it is saved), then a restart: the same request
    id again, no other, and the same alert ids as the clean run."""
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    records = keyed_by_event_id(generate("fraud", EVENTS, seed=1, drift_at=DRIFT_AT))
    produce(broker.address, topic, records)
    engine = engine_merge(records, {**MODEL, "retraining": RETRAINING}, retraining=True)
    [want] = [r.request_id for r in engine.requests]
    incident = engine.requests[0].incident
    clean, clean_requests = retraining_pipeline(broker, redis_server, tmp_path, topic, "clean")
    run, run_requests = retraining_pipeline(broker, redis_server, tmp_path, topic, "interrupted")
    clean_processes = [clean.start(monitors)]
    merger = run.start(monitors, env={"STREAM_MONITOR_CRASH_AT": "after_request:1"})
    while merger.process.poll() is None:
        merger.process.wait(60)
    assert merger.process.returncode == -9, f"expected a SIGKILL, got {merger.process.returncode}"
    assert f"incident {incident[:12]} on model fraud: 4 columns drifted" in merger.log()  # killed before its request's line
    alerts_run = finish(run, [run.start(monitors)])
    alerts_clean = finish(clean, clean_processes)
    assert {a["alert_id"] for a in alerts_run} == {a["alert_id"] for a in alerts_clean} == expected_alert_ids(records)

    check = validator("retraining_request.json")
    clean_seen = [orjson.loads(m.value()) for m in read_topic(broker.address, clean_requests, 1)]
    run_seen = [orjson.loads(m.value()) for m in read_topic(broker.address, run_requests, 1)]
    for request in clean_seen + run_seen:
        check.validate(request)
    assert [r["request_id"] for r in clean_seen] == [want]  # undisturbed: once
    assert {r["request_id"] for r in run_seen} == {want}  # after the SIGKILL: the same id, maybe twice, no other
    print(f"request {want[:12]}: published {len(run_seen)} time(s) by the run with a SIGKILL, once by the clean one")
    [request] = clean_seen
    assert request["reason"] == "drift" and request["evidence"]["drifted_features"] == ["amount", "country"]
    assert request["incident"] == incident
    assert {a.get("incident") for a in alerts_clean} == {a.get("incident") for a in alerts_run} == {incident}
    shown = status(run, "--json")["model_decisions"]["fraud"]
    assert [r["request_id"] for r in shown["retraining"]] == [want]
    assert [(i["incident"], i["state"]) for i in shown["incidents"]] == [(incident, "open")]
    assert f"retraining request {want[:12]}" in status(run)


def test_a_stationary_model_raises_nothing_and_an_empty_partition_holds_nothing_back(broker, redis_server,
                                                                                     tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    events = generate("fraud", 4000, seed=5)
    records = [(p % (PARTITIONS - 1), key, value, headers)  # partition 3 never gets a message
               for p, key, value, headers in keyed_by_event_id(events)]
    produce(broker.address, topic, records)
    run = pipeline(broker, redis_server, tmp_path, topic, "stationary")
    process = run.start(monitors)
    assert finish(run, [process], windows=4) == []
    assert "no model-level episode firing" in status(run)


def test_partials_are_saved_with_the_state_capped_and_never_by_a_zombie(redis_server):
    store = StateStore(connect(redis_server.address), unique("ns"), "g")
    partial = {"events": 1, "columns": {}, "firings": []}
    mark = {"watermark": 5_000, "idle": False, "partials": {1: partial, 2: partial, 3: partial}, "cap": 4}
    assert store.save("t", 0, 10, {"format": 4, "models": {}}, {}, merge={"fraud": mark}) == SAVED
    key = store.partials_key("t", 0, "fraud")
    assert sorted(store.client.hkeys(key)) == [b"1", b"2", b"3", b"idle", b"wm"]
    later = {**mark, "watermark": 9_000, "partials": {4: partial, 5: partial, 6: partial}}
    assert store.save("t", 0, 20, {"format": 4, "models": {}}, {}, merge={"fraud": later}) == SAVED
    assert store.dropped == {"fraud": 2}  # the cap keeps the newest 4 unmerged buckets
    assert sorted(int(b) for b in store.client.hkeys(key) if b.isdigit()) == [3, 4, 5, 6]
    assert store.client.hget(key, "wm") == b"9000"
    zombie = {**mark, "watermark": 99_000, "partials": {7: partial}}
    assert store.save("t", 0, 15, {"format": 4, "models": {}}, {}, merge={"fraud": zombie}) == STALE
    assert store.client.hget(key, "wm") == b"9000" and not store.client.hexists(key, "7")


def test_the_merge_state_only_moves_forward(redis_server):
    merges = MergeStore(StateStore(connect(redis_server.address), unique("ns"), "g"))
    assert merges.save("fraud", {"step": 1, "windows": 1})
    assert not merges.save("fraud", {"step": 1, "windows": 9})  # a merger that lost the race
    assert merges.save("fraud", {"step": 2, "windows": 2})
    assert not merges.save("fraud", {"step": 1, "windows": 0})  # a zombie with an old state
    assert merges.load("fraud") == {"step": 2, "windows": 2}


# --- the model's warm-up reference ------------------------------------------------------------------

SHARE = 500
WARMUP_MODEL = {**MODEL, "reference": {"source": "warmup", "events": SHARE}}


def expected_with_warm_up(records) -> tuple[str, set[str], int]:
    """What the engine decides in process: each partition's share, the model's reference from them, then
    every partition on to its end (reference id, alert ids, windows)."""
    config = parse_config({"models": {"fraud": WARMUP_MODEL}})
    model = config.models["fraud"]
    built: dict = {}
    monitors = [PartitionMonitor(config, p, {}, built) for p in range(PARTITIONS)]
    items = []
    for p, monitor in enumerate(monitors):
        mine = [value for partition, _, value, _ in records if partition == p]
        items.append([(offset, decode(RawMessage("t", p, offset, value), frozenset(["fraud"])), None)
                      for offset, value in enumerate(mine)])
        monitor.process_batch(items[p])
        assert monitor.waiting == ["fraud"]

    stored: dict[int, dict] = {p: {} for p in range(PARTITIONS)}  # the partials keys

    def partials():
        out = []
        for monitor in monitors:
            mark = monitor.merge_marks()["fraud"]
            monitor.partials_saved({"fraud": mark})
            stored[monitor.partition].update(mark["partials"])
            out.append(PartitionPartials("t", monitor.partition, mark["watermark"], monitor.idle,
                                         dict(stored[monitor.partition])))
        return out

    result = reference_step(model, None, partials(), 1000)
    for (_, p), buckets in result.consumed.items():
        for bucket in buckets:
            del stored[p][bucket]
    built["fraud"] = result.reference
    for p, monitor in enumerate(monitors):
        monitor.process_batch(items[p][monitor.next_offset:])
        monitor.go_idle()
    merged = merge_step(model, result.reference, result.state, partials(), 1000)
    return result.state["reference_id"], {a.alert_id for a in merged.alerts}, merged.state["windows"]


def warm_up_pipeline(broker, redis_server, tmp_path, topic, name) -> Run:
    return Run(broker, redis_server, tmp_path, topic, PARTITIONS, name, service=SERVICE,
               models={"fraud": WARMUP_MODEL})


def test_the_models_warm_up_reference_and_its_alerts_are_the_same_for_one_instance_and_two_with_a_sigkill(
        broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    records = keyed_by_event_id(generate("fraud", EVENTS, seed=1, drift_at=DRIFT_AT))
    reference_id, expected, windows = expected_with_warm_up(records)
    assert expected and windows >= 3
    clean = warm_up_pipeline(broker, redis_server, tmp_path, topic, "warm-clean")
    run = warm_up_pipeline(broker, redis_server, tmp_path, topic, "warm-interrupted")
    # every partition's share is in the log before the instances start: a partition that is empty when it is
    # assigned goes idle, and one that receives its share while the merge builds the reference (idleness is
    # the one input that depends on wall time, docs/MODEL_DECISIONS.md) may be left out of it
    ahead = EVENTS // 2
    produce(broker.address, topic, records[:ahead])
    survivor = kill_the_merger_mid_stream(run, records[ahead:], monitors)  # the merger builds the reference
    clean_processes = [clean.start(monitors)]
    alerts_run = finish(run, [survivor], windows)
    alerts_clean = finish(clean, clean_processes, windows)
    for one in (run, clean):
        assert MergeStore(one.store).load("fraud")["reference_id"] == reference_id, one.name
    assert {a["alert_id"] for a in alerts_clean} == expected
    assert {a["alert_id"] for a in alerts_run} == expected
    announced_once(alerts_clean)
    log = clean_processes[0].log()
    assert f"model fraud: reference {reference_id[:12]} built" in log and "until the model's reference is built" in log
    assert len(expected) >= 4, expected  # found the drift after the warm-up
    shown = status(clean, "--json")["model_decisions"]["fraud"]["reference"]
    assert shown["id"] == reference_id and shown["events"] >= SHARE
    assert f"model reference {reference_id[:12]}: " in status(clean)


def test_state_export_and_import_carry_the_models_reference_partials_and_merge_state(
        broker, redis_target, tmp_path, monitors):
    """Disaster recovery with decisions = "model": the export holds the partitions' states with their
    unmerged partials and the model's merge state (its warm-up reference, episodes, open window); after
    the run's keys are gone and the file is imported, Redis holds exactly what it held, and the run
    finishes with the reference and the alert ids of an undisturbed one."""
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    records = keyed_by_event_id(generate("fraud", EVENTS, seed=1, drift_at=DRIFT_AT))
    reference_id, expected, windows = expected_with_warm_up(records)
    run = Run(broker, redis_target, tmp_path, topic, PARTITIONS, "dr-model", service=SERVICE,
              models={"fraud": WARMUP_MODEL})
    produce(broker.address, topic, records[:EVENTS // 2])
    first = run.start(monitors)
    before_stop = wait_for_windows(run, 1, [first])
    assert first.terminate() == 0, first.log()[-3000:]

    export = tmp_path / "state.jsonl"
    done = subprocess.run([sys.executable, "-m", "stream_monitor", "state", "export", "-c", str(run.config),
                           "--output", str(export)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"exported {PARTITIONS} partitions and the merge state of 1 models" in done.stdout
    exported = [orjson.loads(line) for line in export.read_bytes().splitlines()]
    assert [r["merge"] for r in exported if "merge" in r] == ["fraud"]
    assert exported[-1].get("merge") == "fraud", "the merge state comes after the partitions"

    client = run.store.client
    before = namespace_contents(client, run.namespace)
    kept = {k: v for k, v in before.items() if b":join:" not in k and b":history:" not in k}
    assert any(b":merge:" in k for k in kept)
    client.delete(*before)  # the disaster (one key at a time on a cluster: keys of many slots)
    assert namespace_contents(client, run.namespace) == {}
    done = subprocess.run([sys.executable, "-m", "stream_monitor", "state", "import", "-c", str(run.config),
                           "--input", str(export)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"imported {PARTITIONS} partitions and the merge state of 1 models" in done.stdout
    assert namespace_contents(client, run.namespace) == kept, "the import restores exactly what was exported"
    assert MergeStore(run.store).load("fraud")["windows"] >= before_stop["windows"]

    produce(broker.address, topic, records[EVENTS // 2:])
    second = run.start(monitors)
    alerts = finish(run, [second], windows)
    assert "until the model's reference is built" not in second.log(), "the reference came back with the import"
    assert MergeStore(run.store).load("fraud")["reference_id"] == reference_id
    assert {a["alert_id"] for a in alerts} == expected


def test_one_event_a_year_ahead_is_a_dead_letter_and_holds_no_model_window_back(broker, redis_server, tmp_path,
                                                                                monitors):
    """An event whose time is a year ahead of its message's (a clock error) would carry its partition's
    watermark a year ahead, and the model's windows would wait a year for that partition's events. It is
    dead-lettered (`timestamp_ahead`) instead: every window is decided, with the ids of the stream without
    it."""
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    events = generate("fraud", EVENTS, seed=1, drift_at=DRIFT_AT)
    records = keyed_by_event_id(events)
    future = {**events[10], "event_id": "from-the-future", "timestamp": events[10]["timestamp"] + 365 * 86_400}
    run = pipeline(broker, redis_server, tmp_path, topic, "future")
    produce(broker.address, topic, [(0, b"from-the-future", orjson.dumps(future), None)] + records)
    alerts = finish(run, [run.start(monitors)])
    [letter] = [orjson.loads(m.value()) for m in run.dead_letters()]
    assert (letter["reason"], letter["partition"], letter["offset"]) == ("timestamp_ahead", 0, 0)
    assert "ahead of its Kafka message" in letter["error"]
    assert {a["alert_id"] for a in alerts} == expected_alert_ids(records, {0: 1})
    announced_once(alerts)


# --- labels and realized performance ----------------------------------------------------------------

LABELLED_MODEL = {**MODEL, "reference": {"source": "stored", "events": 2000},
                  "performance": {"window": 1000, "floors": {"accuracy": 0.7}}}
FLIP_AT = 3000


def with_labels(events, flip_at: int = FLIP_AT, delay: int = 50) -> list[dict]:
    """Each inference event and, ``delay`` events (0.5 s) later, its label: the prediction itself until
    ``flip_at``, then its opposite (the model is wrong from there: accuracy 1 → 0, and the labels' own
    distribution moves)."""
    out, waiting = [], []
    for i, event in enumerate(events):
        out.append(event)
        predicted = event["prediction"]["label"]
        waiting.append((i + delay, {"event_id": event["event_id"], "model_id": "fraud",
                                    "label": predicted if i < flip_at else 1 - predicted,
                                    "timestamp": round(event["timestamp"] + delay * 0.01, 3)}))
        while waiting and waiting[0][0] <= i:
            out.append(waiting.pop(0)[1])
    return out + [label for _, label in waiting]


def expected_with_labels(records) -> tuple[set[str], dict]:
    """What the engine decides in process, the label join shared by the partitions as Redis shares it:
    (alert ids, the merge state's window counts)."""
    from stream_monitor.join import MemoryJoin, join_op, performance_settings  # noqa: PLC0415

    config = parse_config({"models": {"fraud": LABELLED_MODEL}})
    settings = performance_settings(config)
    join = MemoryJoin(settings)
    profile = reference()
    parts = []
    for p in range(PARTITIONS):
        monitor = PartitionMonitor(config, p, {"fraud": profile})
        items = []
        for offset, value in enumerate(value for partition, _, value, _ in records if partition == p):
            event = decode(RawMessage("t", p, offset, value), frozenset(["fraud"]))
            op = join_op(event, f"t|{p}|{offset}", settings)
            items.append((offset, event, join.run([op])[0] if op else None))
        monitor.process_batch(items)
        monitor.go_idle()
        mark = monitor.merge_marks()["fraud"]
        parts.append(PartitionPartials("t", p, mark["watermark"], True, mark["partials"]))
    result = merge_step(config.models["fraud"], profile, None, parts, 1000)
    return {a.alert_id for a in result.alerts}, counts_of(result.state)


def counts_of(state) -> dict:
    return {"windows": state["windows"], "labels": (state.get("labels") or {}).get("windows", 0),
            "performance": (state.get("performance") or {}).get("windows", 0)}


def finish_labelled(run: Run, processes, counts: dict, timeout: float = 120.0) -> list[dict]:
    """Until the merge state has decided ``counts`` windows (features, labels, performance); the alerts."""
    return merged_alerts(run, processes, "fraud", counts, counts_of, timeout)


def test_labels_and_performance_are_decided_once_for_the_model_by_one_instance_and_two_with_a_sigkill(
        broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    records = keyed_by_event_id(with_labels(generate("fraud", EVENTS, seed=1)))  # a label on its event's partition
    expected, counts = expected_with_labels(records)
    assert counts["labels"] >= 3 and counts["performance"] >= 5

    def labelled_pipeline(name: str) -> Run:
        run = Run(broker, redis_server, tmp_path, topic, PARTITIONS, name, service=SERVICE,
                  models={"fraud": LABELLED_MODEL})
        ReferenceStore(run.store.client, run.namespace).store(reference())
        return run

    clean, run = labelled_pipeline("labels-clean"), labelled_pipeline("labels-interrupted")
    clean_processes = [clean.start(monitors)]
    survivor = kill_the_merger_mid_stream(run, records, monitors, at=600)  # labels are joined by then
    alerts_run = finish_labelled(run, [survivor], counts)
    alerts_clean = finish_labelled(clean, clean_processes, counts)
    assert {a["alert_id"] for a in alerts_clean} == expected
    assert {a["alert_id"] for a in alerts_run} == expected
    firing = Counter((a["signal"], a["name"], a["detector"]) for a in alerts_clean if a["status"] == "firing")
    assert firing[("performance", "accuracy", "floor")] == 1 and firing[("label", "label", "psi")] == 1
    assert firing[("performance", "error_rate", "adwin")] == 1 and set(firing.values()) == {1}
    schema = validator("alert.json")
    for alert in alerts_clean:
        schema.validate(alert)
    floor = next(a for a in alerts_clean if a["detector"] == "floor")
    assert floor["partition"] is None and sorted(floor["window"]["events"]) == [f"{topic}|{p}" for p in range(4)]
    assert floor["drivers"]


# --- keyed by model id: each model on one partition of four ----------------------------------------------

KEYED = {"fraud": WARMUP_MODEL, "churn": WARMUP_MODEL}  # decisions = "model", warm-up references
KEYED_ON = {"fraud": 1, "churn": 3}  # their merges belong to partitions 2 and 0, which stay empty


def keyed_by_model_id() -> list[tuple]:
    """fraud (drifting at DRIFT_AT) and churn (stationary) interleaved in time, each on its own partition as a
    producer keyed by model id puts it; partitions 0 and 2 never get a message."""
    fraud = generate("fraud", EVENTS, seed=1, drift_at=DRIFT_AT)
    churn = generate("churn", EVENTS, seed=2)
    return [(KEYED_ON[e["model_id"]], e["model_id"].encode(), orjson.dumps(e), None)
            for pair in zip(fraud, churn) for e in pair]


def expected_keyed_by_model_id(records) -> dict[str, tuple[str, set[str], int]]:
    """What the engine decides in process, per model: (reference id, alert ids, windows). The empty partitions
    are idle; a partition waiting for its model's reference holds back no model it has never seen."""
    config = parse_config({"models": KEYED})
    known = frozenset(KEYED)
    built: dict = {}
    monitors = [PartitionMonitor(config, p, {}, built) for p in range(PARTITIONS)]
    items = [[(offset, decode(RawMessage("t", p, offset, value), known), None)
              for offset, value in enumerate(value for partition, _, value, _ in records if partition == p)]
             for p in range(PARTITIONS)]
    for p, monitor in enumerate(monitors):
        monitor.process_batch(items[p])
        if not items[p]:
            monitor.go_idle()
    assert {m: monitors[p].waiting for m, p in KEYED_ON.items()} == {m: [m] for m in KEYED}
    stored: dict[tuple[str, int], dict] = {(m, p): {} for m in KEYED for p in range(PARTITIONS)}

    def partials(model: str):
        out = []
        for monitor in monitors:
            mark = monitor.merge_marks()[model]
            monitor.partials_saved({model: mark})
            stored[model, monitor.partition].update(mark["partials"])
            out.append(PartitionPartials("t", monitor.partition, mark["watermark"], mark["idle"],
                                         dict(stored[model, monitor.partition])))
        return out

    states = {}
    for model in KEYED:
        result = reference_step(config.models[model], None, partials(model), 1000)
        assert result is not None, f"{model}: no reference, a partition holds it back"
        for (_, p), buckets in result.consumed.items():
            for bucket in buckets:
                del stored[model, p][bucket]
        built[model], states[model] = result.reference, result.state
    for p, monitor in enumerate(monitors):
        monitor.process_batch(items[p][monitor.next_offset or 0:])
        monitor.go_idle()
    out = {}
    for model in KEYED:
        merged = merge_step(config.models[model], built[model], states[model], partials(model), 1000)
        out[model] = (states[model]["reference_id"], {a.alert_id for a in merged.alerts}, merged.state["windows"])
    return out


def test_models_keyed_by_model_id_are_decided_while_they_stream_and_empty_partitions_hold_nothing_back(
        broker, redis_server, tmp_path, monitors):
    """Two models keyed by model id, each on one partition of four (neither on the partition its merge belongs
    to, two partitions empty), both warming up at once: each model's reference is built while the other's
    partition waits for its own, the model's windows are decided while its traffic still streams, a drift is
    announced once within a window of it, and one instance and two give the engine's reference and alert ids."""
    topic = unique("inference")
    create_topics(broker.address, {topic: PARTITIONS})
    records = keyed_by_model_id()
    expected = expected_keyed_by_model_id(records)
    assert expected["fraud"][1] and expected["fraud"][2] >= 4 and expected["churn"][1] == set()
    one = Run(broker, redis_server, tmp_path, topic, PARTITIONS, "keyed-one", service=SERVICE, models=KEYED)
    two = Run(broker, redis_server, tmp_path, topic, PARTITIONS, "keyed-two", service=SERVICE, models=KEYED)
    processes = {"keyed-one": [one.start(monitors)], "keyed-two": [two.start(monitors), two.start(monitors)]}
    for run in (one, two):
        for process in processes[run.name]:
            wait_for_log(process, f"assigned {topic}[")
    feeder = Feeder(broker.address, topic, records, rate=600)  # 20 s of traffic
    feeder.start()
    for run in (one, two):
        wait_for_windows(run, 2, processes[run.name])
        assert feeder.is_alive(), f"{run.name}: the model's windows were decided only once its traffic had ended"
    feeder.result()
    for run in (one, two):
        merges = MergeStore(run.store)
        for model in KEYED:
            reference_id, want, windows = expected[model]
            deadline = time.monotonic() + 120
            while (merges.load(model) or {}).get("windows", 0) < windows and time.monotonic() < deadline:
                time.sleep(0.1)
            state = merges.load(model)
            assert (state["reference_id"], state["windows"]) == (reference_id, windows), (run.name, model)
        for process in processes[run.name]:
            assert process.terminate() == 0, process.log()[-3000:]
        alerts = run.alerts()
        assert {a["alert_id"] for a in alerts} == expected["fraud"][1] | expected["churn"][1], run.name
        assert {a["model_id"] for a in alerts} == {"fraud"}
        announced_once(alerts)
        psi = next(a for a in alerts if (a["name"], a["detector"], a["status"]) == ("amount", "psi", "firing"))
        drift_bucket = int(generate("fraud", DRIFT_AT + 1, seed=1)[DRIFT_AT]["timestamp"])
        # decided on the window the drift falls in or the next (a window: 1,000 events, 10 s of the model's)
        assert psi["window"]["last_bucket"] >= drift_bucket >= psi["window"]["first_bucket"] - 10, psi["window"]
        for p in (0, 2):  # never read: marked idle by their owner for every model
            for model in KEYED:
                assert run.store.client.hget(run.store.partials_key(topic, p, model), "idle") == b"1"
