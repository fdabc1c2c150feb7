"""What the tests share, in one place (test modules import from here, never from each other).

Seeded event streams for the engine (``events``: the synthetic models decoded, ``full_stream``: every
kind of change for every detector, ``warmed_monitor``); configs (``write_config``), feeding topics
(``produce``, ``Feeder``), reading them back, waiting on stored offsets; a monitored pipeline (``Run``, ``LabelRun``) and an interrupted-vs-undisturbed pair
(``SideBySide``); probes of the HTTP endpoint; the Dockerfile's instructions; a hostile state blob.
The local processes themselves (broker, Redis, ``stream-monitor run``) are started by
:mod:`stream_monitor.demo.localstack`, which the demo and the benchmark use too.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shlex
import signal
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
import math
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import numpy as np
import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from hypothesis import settings

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import MonitorProcess, create_topics, free_port, produce_records, start_broker, \
    start_redis
from stream_monitor.events import DeadLetter, InferenceEvent, LabelEvent, RawMessage
from stream_monitor.join import JoinResult, prediction_record
from stream_monitor.logs import KAFKA_LOGGER
from stream_monitor.merge import PartitionPartials
from stream_monitor.partition import PartitionMonitor
from stream_monitor.reference import build_reference
from stream_monitor.state import StateStore, connect
from stream_monitor.synthetic import GENERATORS, generate

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"

FAST_CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 50}


def examples(full: int) -> int:
    """A property test's example count: ``full`` under ``HYPOTHESIS_PROFILE=thorough`` (max_examples 100),
    a quarter of it under the default quick profile (max_examples 25), never fewer than 10."""
    return max(10, full * settings.default.max_examples // 100)


def logged(settings: dict[str, Any]) -> dict[str, Any]:
    """Kafka client settings whose librdkafka log lines go through Python logging (on the logger the
    service uses), as the service's own clients do, instead of straight to stderr: a test producer
    pointed at a stopped or unreachable broker does not print its reconnect lines over the test run."""
    return {**settings, "logger": logging.getLogger(KAFKA_LOGGER)}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(value)


def write_config(path: Path, *, bootstrap: str, redis_url: str, input_topic: str, alert_topic: str,
                 dead_letter_topic: str, group_id: str, namespace: str, models: dict[str, dict],
                 service: dict | None = None, consumer: dict | None = None, redis_cluster: bool = False,
                 extra: str = "") -> Path:
    """A TOML config for one test run (consumer tuned for the local broker's slow joins); ``redis_cluster``:
    ``redis_url`` names a node of a Redis Cluster; ``extra``: TOML tables appended as they are. A model
    table without ``decisions`` is written with ``decisions = "partition"``: the runs that do not say
    test per-partition decisions (partitions and offsets on the alerts, per-partition episodes), never
    the product's default; a model-level run says ``"decisions": "model"``."""
    lines = ["[kafka]", f"bootstrap_servers = {toml_value(bootstrap)}", f"group_id = {toml_value(group_id)}",
             f"input_topics = {toml_value([input_topic])}", f"alert_topic = {toml_value(alert_topic)}",
             f"dead_letter_topic = {toml_value(dead_letter_topic)}", "", "[kafka.consumer]"]
    lines += [f'"{k}" = {toml_value(v)}' for k, v in {**FAST_CONSUMER, **(consumer or {})}.items()]
    lines += ["", "[redis]", f"url = {toml_value(redis_url)}", f"namespace = {toml_value(namespace)}"]
    lines += ["cluster = true"] if redis_cluster else []
    lines += ["", "[service]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in {"metrics_port": 0, **(service or {})}.items()]
    for model_id, model in models.items():
        model = {"decisions": "partition", **model}
        lines += ["", f"[models.{model_id}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in model.items() if key != "detectors"]
        if "detectors" in model:
            lines += [f"[models.{model_id}.detectors]"] + [f"{k} = {toml_value(v)}"
                                                           for k, v in model["detectors"].items()]
    path.write_text("\n".join(lines) + "\n" + (f"\n{extra}\n" if extra else ""))
    return path


def produce(bootstrap: str, topic: str, records: Iterable[tuple[int | None, bytes | None, bytes | None, list | None]],
            rate: float | None = None) -> dict[int, int]:
    """Produce (partition, key, value, headers) in order; returns the end offset of each partition."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    return produce_records(producer, topic, records, rate=rate)


class Feeder(threading.Thread):
    """Produces records at a steady rate in the background (so interruptions happen mid-stream).

    ``hold_at``: after that many records the feeder waits for :meth:`release` before producing the
    rest, so a test can be sure an interruption lands while part of the stream is still unproduced
    (whatever the machine's speed). :meth:`result` releases it.
    """

    def __init__(self, bootstrap: str, topic: str, records: list, rate: float, hold_at: int | None = None):
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, records, rate)
        self.hold_at = hold_at
        self.released = threading.Event()
        if hold_at is None:
            self.released.set()
        self.ends: dict[int, int] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        bootstrap, topic, records, rate = self.args
        try:
            records = list(records)
            cut = len(records) if self.hold_at is None else min(self.hold_at, len(records))
            ends = produce(bootstrap, topic, records[:cut], rate=rate)
            self.released.wait()
            for partition, end in produce(bootstrap, topic, records[cut:], rate=rate).items():
                ends[partition] = max(ends.get(partition, 0), end)
            self.ends = ends
        except BaseException as exc:  # noqa: BLE001 - reported by result()
            self.error = exc

    def release(self) -> None:
        """Let a held feeder produce the rest of its records."""
        self.released.set()

    def result(self, timeout: float = 120.0) -> dict[int, int]:
        self.release()
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.ends is not None, "feeder did not finish"
        return self.ends


def read_topic(bootstrap: str, topic: str, partitions: int, idle: float = 2.0, timeout: float = 60.0) -> list[Any]:
    """Every message of a topic from the beginning (no group), until ``idle`` seconds pass without one once
    every partition has been read to its end at least once (a loaded machine's first fetch can take longer
    than ``idle``: an idle wait before it would return nothing)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False,
                         "fetch.wait.max.ms": 50, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    messages = []
    at_end: set[int] = set()
    started = last = time.monotonic()
    deadline = started + timeout
    try:
        # a partition that never reports its end (a topic never created) stops holding the read after 15 s
        while time.monotonic() < deadline and (time.monotonic() - last < idle or len(at_end) < partitions
                                               and time.monotonic() - started < max(idle, 15.0)):
            batch = consumer.consume(500, 0.2)
            for message in batch:
                if message.error() is None:
                    messages.append(message)
                    last = time.monotonic()
                elif message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
    finally:
        consumer.close()
    return messages


def alerts_of(messages: list) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in messages]


def store_for(redis_url: str, namespace: str, group_id: str, cluster: bool = False) -> StateStore:
    return StateStore(connect(redis_url, cluster), namespace, group_id)


def is_cluster(redis_server) -> bool:
    """Whether a Redis fixture (``redis_server``, ``redis_cluster``, ``redis_target``) is a Redis Cluster."""
    return bool(getattr(redis_server, "cluster", False))


def keys_by_master(client, namespace: str) -> dict[str, int]:
    """How many keys of ``namespace`` each master of a Redis Cluster holds (SCAN on every primary)."""
    return {node.name: sum(1 for _ in client.scan_iter(match=f"{namespace}:*", count=1000, target_nodes=node))
            for node in client.get_primaries()}


def namespace_contents(client: redis.Redis, namespace: str) -> dict[bytes, tuple]:
    """Every key of one run's namespace with its content (the Redis server is shared by all tests)."""
    out: dict[bytes, tuple] = {}
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = ("hash", client.hgetall(key))
        elif kind == b"set":
            out[key] = ("set", client.smembers(key))
        else:
            out[key] = (kind, client.dump(key))
    return out


def wait_for_offsets(store: StateStore, topic: str, ends: dict[int, int], timeout: float = 90.0,
                     processes: Iterable[MonitorProcess] = ()) -> None:
    """Until the stored next offset of every partition reaches its end offset."""
    deadline = time.monotonic() + timeout
    stored: dict[int, int | None] = {}
    while time.monotonic() < deadline:
        try:
            stored = {p: stored_offset(store, topic, p) for p in ends}
        except (redis.BusyLoadingError, redis.ConnectionError):  # a test restarting Redis: it is loading
            time.sleep(0.1)
            continue
        if all(stored[p] is not None and stored[p] >= end for p, end in ends.items()):
            return
        for process in processes:
            if process.process.poll() is not None:
                raise AssertionError(f"monitor exited early ({process.process.returncode}):\n{process.log()[-3000:]}")
        time.sleep(0.1)
    logs = "\n".join(p.log()[-2000:] for p in processes)
    raise AssertionError(f"stored offsets {stored} did not reach {ends} within {timeout:.0f} s\n{logs}")


def stored_offset(store: StateStore, topic: str, partition: int) -> int | None:
    value = store.client.hget(store.key(topic, partition), "offset")
    return None if value is None else int(value)


def final_states(store: StateStore, topic: str, partitions: Iterable[int]) -> dict[int, tuple[int, dict]]:
    """(next offset, decoded snapshot) of each partition."""
    return {p: store.load(topic, p) for p in partitions}


# --- a monitored pipeline; an interrupted run beside an undisturbed one ----------------------------------------


MODEL = {"decisions": "partition",
         "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}
MODELS = {"fraud": MODEL, "churn": MODEL, "stable": MODEL}
SERVICE = {"checkpoint_interval_events": 500, "checkpoint_interval_seconds": 0.5}
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


class Run:
    """Topics, group and namespace of one monitored pipeline; several runs can share an input topic."""

    def __init__(self, broker, redis_server, tmp_path, input_topic: str, partitions: int, name: str,
                 service: dict | None = None, models: dict | None = None, extra: str = ""):
        """``extra``: TOML tables appended to the config as they are."""
        self.broker, self.tmp_path, self.name = broker, tmp_path, name
        self.input_topic, self.partitions = input_topic, partitions
        self.alert_topic, self.dead_letter_topic = unique(f"alerts-{name}"), unique(f"dlq-{name}")
        self.group_id, self.namespace = unique(f"group-{name}"), unique(f"ns-{name}")
        create_topics(broker.address, {self.alert_topic: 1, self.dead_letter_topic: 1})
        self.config = write_config(tmp_path / f"{name}.toml", bootstrap=broker.address,
                                   redis_url=redis_server.address, input_topic=input_topic,
                                   alert_topic=self.alert_topic, dead_letter_topic=self.dead_letter_topic,
                                   group_id=self.group_id, namespace=self.namespace, models=models or MODELS,
                                   service={**SERVICE, **(service or {})}, redis_cluster=is_cluster(redis_server),
                                   extra=extra)
        self.store = store_for(redis_server.address, self.namespace, self.group_id, is_cluster(redis_server))
        self._count = 0

    def start(self, monitors: list, env: dict | None = None) -> MonitorProcess:
        self._count += 1
        process = MonitorProcess(self.config, self.tmp_path / f"{self.name}-{self._count}.log", env)
        monitors.append(process)
        return process

    def alerts(self) -> list[dict]:
        return alerts_of(read_topic(self.broker.address, self.alert_topic, 1))

    def dead_letters(self) -> list:
        return read_topic(self.broker.address, self.dead_letter_topic, 1)

    def states(self):
        return final_states(self.store, self.input_topic, range(self.partitions))


def lines(events) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def two_model_stream(count: int, partitions: int) -> list[tuple]:
    """fraud and churn interleaved, each drifting part-way, spread round-robin over the partitions."""
    fraud = lines(generate("fraud", count, seed=2, drift_at=count // 3))
    churn = lines(generate("churn", count, seed=2, drift_at=count // 2))
    records = []
    for i, (f, c) in enumerate(zip(fraud, churn)):
        records.append(((2 * i) % partitions, b"fraud", f, None))
        records.append(((2 * i + 1) % partitions, b"churn", c, None))
    return records


def assert_same_outcome(interrupted: Run, uninterrupted: Run) -> None:
    got, want = interrupted.alerts(), uninterrupted.alerts()
    assert want, "the uninterrupted run raised alerts"
    assert {a["alert_id"] for a in got} == {a["alert_id"] for a in want}
    assert interrupted.states() == uninterrupted.states()


class SideBySide:
    """One stream fed at a steady rate to a new topic, watched by two groups: ``run``, which the test
    interrupts, and ``clean``, which nothing disturbs. ``finish`` checks they end the same."""

    def __init__(self, broker, redis_server, tmp_path, monitors, *, events: int, partitions: int, rate: float,
                 run_redis=None, service: dict | None = None, extra=None, hold_at: int | None = None):
        """``extra``: a function of a run's name ("interrupted", "clean") → TOML tables appended to its config;
        ``hold_at``: the feeder holds the rest of the stream after that many records (:class:`Feeder`)."""
        self.monitors = monitors
        self.topic = unique("inference")
        self.partitions = partitions
        create_topics(broker.address, {self.topic: partitions})
        self.feeder = Feeder(broker.address, self.topic, two_model_stream(events, partitions), rate=rate,
                             hold_at=hold_at)
        self.run = Run(broker, run_redis or redis_server, tmp_path, self.topic, partitions, "interrupted",
                       service=service, extra=extra("interrupted") if extra else "")
        self.clean = Run(broker, redis_server, tmp_path, self.topic, partitions, "clean",
                         extra=extra("clean") if extra else "")
        self.clean_process = self.clean.start(monitors)

    def start(self, env: dict | None = None) -> MonitorProcess:
        return self.run.start(self.monitors, env)

    def underway(self, at_least: int) -> MonitorProcess:
        """One instance of ``run`` started, the stream flowing, and ``at_least`` offsets of partition 0 stored."""
        process = self.start()
        self.feeder.start()
        self.progress(at_least, [process])
        return process

    def stopped_short(self) -> bool:
        """Whether the interrupted group's stored offsets are short of the stream's end (the
        interruption left work to do), once the whole stream has been produced."""
        ends = self.feeder.result(timeout=180)
        return any((stored_offset(self.run.store, self.topic, p) or 0) < end for p, end in ends.items())

    def progress(self, at_least: int, processes, partitions=(0,)) -> None:
        """Until ``run`` has stored at least this offset in the given partitions."""
        wait_for_offsets(self.run.store, self.topic, {p: at_least for p in partitions}, processes=processes)

    def finish(self, processes) -> dict[int, int]:
        """Let the stream end, wait for both groups, stop everything cleanly, compare."""
        ends = self.feeder.result(timeout=180)
        wait_for_offsets(self.run.store, self.topic, ends, processes=processes, timeout=180)
        wait_for_offsets(self.clean.store, self.topic, ends, processes=[self.clean_process])
        for process in [*processes, self.clean_process]:
            assert process.terminate() == 0, process.log()[-3000:]
        assert_same_outcome(self.run, self.clean)
        return ends


# --- outages: a broker or Redis of the test's own, and waiting on what the service says ----------------------


def wait_until(condition, what: str, process: MonitorProcess, timeout: float = 60.0) -> float:
    """Polls ``condition`` until true; returns the seconds it took. Fails if the monitor exited or
    ``timeout`` passed (saying ``what`` did not happen)."""
    started = time.monotonic()
    while not condition():
        assert process.process.poll() is None, f"monitor exited ({process.process.returncode}):\n{process.log()[-3000:]}"
        assert time.monotonic() - started < timeout, f"{what} did not happen within {timeout:.0f} s:\n" \
                                                     f"{process.log()[-3000:]}"
        time.sleep(0.05)
    return time.monotonic() - started


class OwnRedis:
    """A redis-server of the test's own, to pause, kill, stop, restart or reconfigure (the session's
    stays untouched); passed where a ``redis_server`` is expected. As a context manager it is resumed
    and stopped at the end, whatever the test did to it."""

    def __init__(self, tmp_path: Path, persistent: bool = False, extra: tuple[str, ...] = ()):
        self.dir = tmp_path / "own-redis"
        self.dir.mkdir(exist_ok=True)
        self.persistent = persistent
        self.server = start_redis(str(self.dir), persistent=persistent, extra=extra)
        self.port = int(self.server.address.rsplit(":", 1)[1].split("/")[0])

    @property
    def address(self) -> str:
        return self.server.address

    def client(self):
        import redis  # noqa: PLC0415 - only the tests that reconfigure their Redis need a client

        return redis.Redis.from_url(self.address)

    def pause(self) -> None:
        os.kill(self.server.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.server.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: gone without a word (and, unless persistent, without its data)."""
        os.kill(self.server.pid, signal.SIGKILL)
        self.server.process.wait(5)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """A new redis-server on the same port and directory (its data back only if persistent)."""
        self.server = start_redis(str(self.dir), port=self.port, persistent=self.persistent)

    def __enter__(self) -> "OwnRedis":
        return self

    def __exit__(self, *exc) -> None:
        if self.server.process.poll() is None:
            self.resume()
        self.stop()


class OwnBroker:
    """A broker of the test's own on a fixed port, to restart empty (memory only: every topic, group and
    offset goes). As a context manager it closes the test's monitors first (a consumer must not outlive
    its broker), then stops the broker."""

    def __init__(self, tmp_path: Path, monitors: list):
        self.tmp_path, self.monitors, self.port = tmp_path, monitors, free_port()
        self.server = start_broker(str(tmp_path), port=self.port)

    @property
    def address(self) -> str:
        return self.server.address

    def pause(self) -> None:
        os.kill(self.server.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.server.pid, signal.SIGCONT)

    def restart_empty(self, topics: dict[str, int]) -> None:
        """Stopped and started again on the same port, with ``topics`` created anew."""
        self.server.stop()
        self.server = start_broker(str(self.tmp_path), port=self.port)
        create_topics(self.address, topics)

    def __enter__(self) -> "OwnBroker":
        return self

    def __exit__(self, *exc) -> None:
        for process in self.monitors:
            process.close()
        if self.server.process.poll() is None:
            self.resume()
        self.server.stop()


def outage_pair(broker, redis_server, tmp_path, monitors, run_redis=None) -> tuple["SideBySide", MonitorProcess]:
    """The outage tests' stream (12,000 events of two drifting models over 2 partitions at 4,000/s) watched
    by an interrupted run (on ``run_redis`` or ``broker``) and a clean one, underway: 3,000 offsets of
    partition 0 stored by the interrupted run's one instance."""
    pair = SideBySide(broker, redis_server, tmp_path, monitors, events=12_000, partitions=2, rate=4000,
                      run_redis=run_redis)
    return pair, pair.underway(3000)


# --- the HTTP endpoint ----------------------------------------


def probe(port: int, path: str) -> tuple[int, dict] | None:
    """(status, JSON body), or None while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
    except OSError:
        return None


# --- labels on their own topic ----------------------------------------


CREDIT = {"decisions": "partition", "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}},
          "performance": {"task": "classification", "window": 500, "floors": {"accuracy": 0.7}}}
def split(events):
    inference = [e for e in events if "features" in e]
    labels = [e for e in events if "features" not in e]
    return inference, labels


def pairs_counted(store, topics_partitions) -> int:
    total = 0
    for topic, partitions in topics_partitions.items():
        for state in final_states(store, topic, range(partitions)).values():
            if state is not None:
                model = state[1]["models"].get("credit")
                if model and model["performance"]:
                    total += model["performance"]["pairs_seen"]
    return total


class LabelRun:
    def __init__(self, broker, redis_server, tmp_path, name, inference_topic, label_topic):
        self.broker, self.tmp_path, self.name = broker, tmp_path, name
        self.alert_topic, self.group_id, self.namespace = unique("alerts"), unique("group"), unique("ns")
        create_topics(broker.address, {self.alert_topic: 1})
        self.config = write_config(tmp_path / f"{name}.toml", bootstrap=broker.address, redis_url=redis_server.address,
                                   input_topic=inference_topic, alert_topic=self.alert_topic,
                                   dead_letter_topic=unique("dlq"), group_id=self.group_id,
                                   namespace=self.namespace, models={"credit": CREDIT}, service=SERVICE,
                                   redis_cluster=is_cluster(redis_server))
        text = self.config.read_text().replace(f'input_topics = ["{inference_topic}"]',
                                               f'input_topics = ["{inference_topic}", "{label_topic}"]')
        self.config.write_text(text)
        self.store = store_for(redis_server.address, self.namespace, self.group_id, is_cluster(redis_server))
        self.count = 0

    def start(self, monitors, env: dict | None = None) -> MonitorProcess:
        self.count += 1
        process = MonitorProcess(self.config, self.tmp_path / f"{self.name}-{self.count}.log", env)
        monitors.append(process)
        return process

    def alerts(self):
        return alerts_of(read_topic(self.broker.address, self.alert_topic, 1))


# --- a hostile state blob (the old pickle format) ----------------------------------------


class WritesMarker:
    """What an attacker would store: unpickling it calls ``os.system`` (here: writes a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"id > {self.marker}",)


def crafted_pickle(marker: Path) -> bytes:
    """A blob in the old state format (zlib'd pickle) whose loading would run a command."""
    return zlib.compress(pickle.dumps({"format": 4, "models": {}, "x": WritesMarker(marker)}, protocol=5), 1)


# --- the Dockerfile ----------------------------------------


def dockerfile_instructions():
    """[(INSTRUCTION, argument text)] of the Dockerfile: continuation lines joined, comment lines dropped."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also between the lines of one instruction
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        name, _, args = pending.partition(" ")
        out.append((name.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return out


def dockerfile_env():
    """The variables set by the Dockerfile's ENV instructions (KEY=VALUE form)."""
    values = {}
    for name, args in dockerfile_instructions():
        if name == "ENV":
            values.update(item.split("=", 1) for item in shlex.split(args))
    return values


# --- seeded streams for the engine ----------------------------------------------------------------------------

EVENTS_PARTITION = 3  # the partition the decoded synthetic events say they come from


def decoded(doc: dict, offset: int = 0, known: frozenset[str] = frozenset(GENERATORS)) -> InferenceEvent | LabelEvent:
    """One message value decoded as the service decodes it (it must decode)."""
    out = decode(RawMessage("ml.inference", EVENTS_PARTITION, offset, orjson.dumps(doc)), known)
    assert not isinstance(out, DeadLetter), out
    return out


@lru_cache(maxsize=None)
def events(model: str, count: int, drift_at: int | None = None, until: int | None = None) -> tuple:
    """``count`` decoded events of a synthetic model (fraud, churn, stable), drifting from ``drift_at``
    (back to normal from ``until``, when given)."""
    return tuple(decoded(doc, i) for i, doc in enumerate(generate(model, count, drift_at=drift_at, until=until)))


def warmed_monitor(count: int = 3000) -> PartitionMonitor:
    """A partition monitor of fraud (reference from its first 1,000 events) that has seen ``count`` events."""
    monitor = PartitionMonitor(parse_config({"models": {"fraud": {"decisions": "partition",
                                                                  "reference": {"events": 1000}}}}), 0, {})
    monitor.process_batch([(o, e, None) for o, e in enumerate(events("fraud", count))])
    return monitor


CATEGORIES = ["a", "b", "c", "d", "e"]
MIX = [0.4, 0.3, 0.15, 0.1, 0.05]
NEW_MIX = [0.2, 0.3, 0.2, 0.15, 0.15]
FULL_MODEL = {"decisions": "partition", "reference": {"events": 1000},
              "detectors": {"psi": {"window": 1000}, "resolve_after": 1500, "cooldown": 1000,
                            "latency": {"p95_ceiling_ms": 40.0}}}


def full_stream(length: int = 14_000) -> list[InferenceEvent | LabelEvent]:
    """Inference events (x numeric, c categorical, score, latency) and label events, with every kind of
    change: a mean shift, a category mix change with unseen categories, missing values, strings,
    values off the range, slow responses and a label mix change."""
    rng = np.random.default_rng(11)
    out: list[InferenceEvent | LabelEvent] = []
    for i in range(length):
        phase = i // 1000
        x: object = float(rng.normal(1.0 if 6 <= phase < 9 else 0.0, 1.0))
        if phase == 3 and i % 20 == 0:
            x = None
        elif phase == 4 and i % 40 == 0:
            x = "n/a"
        elif phase == 10 and i % 50 == 0:
            x = 99.0
        c = str(rng.choice(CATEGORIES, p=NEW_MIX if phase >= 7 else MIX))
        if phase == 5 and i % 30 == 0:
            c = f"new-{i}"
        latency = float(rng.lognormal(2.3, 0.3)) * (5 if phase == 8 else 1)
        score = 1 / (1 + math.exp(-(x if isinstance(x, float) else 0.0)))
        out.append(InferenceEvent(f"e{i}", "m", 1_795_800_000_000 + i, {"x": x, "c": c}, score, None, latency))
        out.append(LabelEvent(f"e{i}", "m", None, int(rng.random() < (0.5 if phase >= 9 else 0.2))))
    return out


# --- pictures: a PNG read back (what headless Chromium wrote), without an image library ---------------------

def png_pixels(data: bytes) -> np.ndarray:
    """A non-interlaced 8-bit RGB or RGBA PNG (what Chromium writes) as an (height, width, channels) array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unsupported PNG: {header}"
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = zlib.decompress(b"".join(chunks))
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).copy()
        if kind == 1:  # Sub: a running sum per channel
            line = np.cumsum(line.reshape(width, channels), axis=0, dtype=np.uint8).reshape(stride)
        elif kind == 2:  # Up
            line = line + prior
        elif kind in (3, 4):  # Average, Paeth: byte by byte
            cur = bytearray(line.tobytes())
            up = prior.tobytes()
            for i in range(stride):
                a = cur[i - channels] if i >= channels else 0
                b = up[i]
                if kind == 3:
                    cur[i] = (cur[i] + ((a + b) >> 1)) & 255
                else:
                    c = up[i - channels] if i >= channels else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            line = np.frombuffer(bytes(cur), dtype=np.uint8)
        out[y] = line
        prior = line
    return out.reshape(height, width, channels)


def colours(png: bytes) -> dict[int, int]:
    """Pixels per colour (0xRRGGBB) of a PNG."""
    rgb = png_pixels(png)[..., :3].astype(np.int64)
    values, counts = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


# --- the V2 protobuf messages Seldon Core v2 writes to Kafka, encoded by hand (no generated code) ----------


def pb_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def pb_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, messages, packed numbers, bytes)."""
    return pb_varint(number << 3 | 2) + pb_varint(len(payload)) + payload


def pb_tensor(name: str, datatype: str, shape: list[int], contents: bytes = b"") -> bytes:
    """An InferInputTensor / InferOutputTensor (the same numbers); ``contents``: an InferTensorContents."""
    out = pb_field(1, name.encode()) + pb_field(2, datatype.encode())
    out += pb_field(3, b"".join(pb_varint(d) for d in shape))
    return out + (pb_field(5, contents) if contents else b"")


# --- decisions = "model" without I/O: one model's stream spread over partitions, their partials ------------
# (tests/unit/test_merge.py, tests/unit/test_model_incidents.py)

MERGE_MODEL = "fraud"
MERGE_WINDOW = 1000
MERGE_SETTINGS = {"decisions": "model", "reference": {"source": "stored"}, "merge_bucket_seconds": 1.0,
                  "merge_lateness_seconds": 1.0, "detectors": {"psi": {"window": MERGE_WINDOW}}}
MERGE_CONFIG = parse_config({"models": {MERGE_MODEL: MERGE_SETTINGS}})
MERGE_BUCKET_MS = 1000


def merge_decoded(doc, partition=0, offset=0):
    out = decode(RawMessage("in", partition, offset, orjson.dumps(doc)), frozenset([MERGE_MODEL]))
    assert not isinstance(out, DeadLetter), out
    return out


@lru_cache(maxsize=None)
def merge_reference():
    return build_reference(MERGE_MODEL, [merge_decoded(d) for d in generate(MERGE_MODEL, 4000, seed=7)], None,
                           source="stored")


@lru_cache(maxsize=None)
def merge_stream(count: int, drift_at: int | None):
    return tuple(merge_decoded(d) for d in generate(MERGE_MODEL, count, seed=1, drift_at=drift_at))


def spread(events, partitions: int):
    """Keyed by event id, as a producer keyed by event id spreads them (crc32 as a stand-in hash)."""
    out = {p: [] for p in range(partitions)}
    for event in events:
        out[zlib.crc32(event.event_id.encode()) % partitions].append(event)
    return out


def merge_monitor(partition: int = 0) -> PartitionMonitor:
    return PartitionMonitor(MERGE_CONFIG, partition, {MERGE_MODEL: merge_reference()})


def merge_feed(m: PartitionMonitor, events, cuts=None, start=0):
    """Events in batches (``cuts``: batch sizes drawn from this random generator, else all in one)."""
    items = [(start + i, e, None) for i, e in enumerate(events)]
    alerts = []
    i = 0
    while i < len(items):
        size = len(items) if cuts is None else cuts.randint(1, 300)
        alerts.extend(m.process_batch(items[i:i + size]))
        i += size
    return alerts


def merge_partials_of(m: PartitionMonitor, topic="in"):
    mark = m.merge_marks()[MERGE_MODEL]
    return PartitionPartials(topic, m.partition, mark["watermark"], mark["idle"], mark["partials"])


def run_partitions(by_partition, finish=True):
    out = []
    for p, events in sorted(by_partition.items()):
        m = merge_monitor(p)
        assert merge_feed(m, events) == []  # window decisions and point episodes are the merge's
        if finish:
            m.go_idle()
        out.append(merge_partials_of(m))
    return out


# --- a segmented stream (tests/unit/test_segments.py, tests/integration/test_segments.py) ---------------

COUNTRIES = ("DE", "US", "FR", "GB", "IT", "ES", "NL", "PL")
SHARES = (0.35, 0.25, 0.15, 0.10, 0.06, 0.04, 0.03, 0.02)  # FR carries 15 % of the traffic
FEATURES_BY_COUNTRY = {"amount": "numeric", "income": "numeric", "country": "categorical"}


def segmented_json(event: InferenceEvent) -> dict[str, Any]:
    """A :func:`segmented_stream` event as its producer writes it."""
    return {"event_id": event.event_id, "model_id": event.model_id, "timestamp": event.timestamp_ms / 1000,
            "features": dict(event.features)}


def segmented_stream(count: int, seed: int, spread_from: int | None = None, scale: float = 1.6,
                     missing: float = 0.0) -> list[InferenceEvent]:
    """Seeded events: amount and income N(0, 1) in every country; from ``spread_from`` on, FR's amount is
    spread ``scale`` times wider (its mean unchanged: the rank and normal-score detectors cannot see it);
    ``missing``: the share of events without a country."""
    rng = np.random.default_rng(seed)
    countries = rng.choice(len(COUNTRIES), size=count, p=SHARES)
    absent = rng.random(count) < missing
    amounts, incomes = rng.normal(size=count), rng.normal(size=count)
    out = []
    for i in range(count):
        country = None if absent[i] else COUNTRIES[countries[i]]
        amount = float(amounts[i]) * (scale if spread_from is not None and i >= spread_from and country == "FR" else 1)
        out.append(InferenceEvent(f"e{i}", "m", 1_700_000_000_000 + i,
                                  {"amount": round(amount, 4), "income": round(float(incomes[i]), 4),
                                   "country": country}))
    return out


def stored_status(monkeypatch, models: dict, next_offset: int) -> None:
    """``stream-monitor status`` over one stored partition (ml.inference 0) whose summary holds ``models``:
    Redis, its label join and the broker replaced by stand-ins that return what the command formats."""
    from stream_monitor import cli, join, state

    class Client:
        def register_script(self, _):
            return lambda **_: None

    class Store:
        def __init__(self, *_):
            self.client = Client()

        def partition_rows(self):
            return [{"topic": "ml.inference", "partition": 0, "next_offset": next_offset, "saved_at_ms": None,
                     "dead_letters": 0, "dead_letter_reasons": {}, "models": models}]

    class Join:
        def __init__(self, *_):
            pass

        def lag(self, _):
            return dict.fromkeys(("awaiting", "expired", "evicted", "labels_waiting", "labels_evicted", "dropped",
                                  "bytes"), 0)

    monkeypatch.setattr(state, "StateStore", Store)
    monkeypatch.setattr(join, "RedisJoin", Join)
    monkeypatch.setattr(cli, "_client", lambda config: None)
    monkeypatch.setattr(cli, "_end_offsets", lambda config, partitions: {})


def run_model(monitor, items: list[tuple], batch: int) -> list:
    """(offset, event, join) items through a ``ModelMonitor`` (partition 0) in batches of ``batch``; the
    alerts in the order of one event at a time."""
    from stream_monitor.partition import _in_event_order

    alerts = []
    for start in range(0, len(items), batch):
        chunk = [(j, offset, event, join) for j, (offset, event, join) in enumerate(items[start:start + batch])]
        alerts += _in_event_order(monitor.process_batch(chunk, 0))
    return alerts


# --- fairness: a labelled stream whose groups part at a known event (tests/unit/test_fairness.py,
# tests/integration/test_fairness_join.py) ------------------------------------------------------------------

FAIRNESS_METRICS = ["demographic_parity", "equal_opportunity", "equalized_odds"]
FAIRNESS_GAP_AT, FAIRNESS_EVENTS = 11_000, 30_000


def labelled_stream(seed: int = 2, delay: int = 300, step_ms: int = 1_000, gap_at: int | None = FAIRNESS_GAP_AT,
                    events: int = FAIRNESS_EVENTS) -> list[tuple]:
    """Scored predictions whose labels come ``delay`` events later (through the join: the label event carries
    the prediction's record with its groups), one event every ``step_ms``. Both groups are favourable half the
    time throughout (parity holds); from ``gap_at`` on (never: ``None``), F's predictions agree with the truth
    only 60 % of the time (M's: 90 %), so F's true-positive rate falls from 0.9 to 0.6 and its false-positive
    rate rises from 0.1 to 0.4."""
    rng = np.random.default_rng(seed)
    out: list[tuple] = []
    waiting: list[tuple] = []
    for k in range(events):
        gender = "F" if rng.random() < 0.5 else "M"
        truth = int(rng.random() < 0.5)
        right = rng.random() < (0.6 if gender == "F" and gap_at is not None and k >= gap_at else 0.9)
        positive = truth if right else 1 - truth
        score = float(0.5 + 0.4 * rng.random()) if positive else float(0.4 * rng.random())
        event = InferenceEvent(f"e{k}", "credit", step_ms * k, {"gender": gender, "x": float(rng.normal())}, score,
                               None)
        out.append((len(out), event, None))
        waiting.append((event, truth))
        if len(waiting) > delay:
            first, label = waiting.pop(0)
            record = prediction_record(first.score, None, first.timestamp_ms, {"gender": first.features["gender"]})
            out.append((len(out), LabelEvent(first.event_id, "credit", step_ms * k, label),
                        JoinResult("joined", record)))
    return out


def fairness_alerts(alerts) -> list[tuple]:
    return [(a.offset, a.status, a.name, a.detector, a.severity) for a in alerts if a.signal == "fairness"]


# --- the label join's seeded corpus and a settable clock ------------------------------------------------------

JOIN_MODELS = {"credit": 40, "fraud": 15}  # model: how many event ids a join corpus draws from


def join_corpus(seed: int, batches: int, label_sizes: list[int] | None = None) -> list[tuple[float, list]]:
    """Batches of label-join ops with the time each is run at: labels before and after their prediction, the
    same message again (a replay: same identity) and another message with the same event id (a duplicate),
    clock jumps past every ttl. ``label_sizes``: half the predictions carry a payload of one of these sizes
    (to fill byte budgets); None: every payload is small."""
    from stream_monitor.join import JoinOp

    rng = random.Random(seed)
    now, out = 1_800_000_000.0, []
    for b in range(batches):
        now += rng.choice([0.05, 0.2, 1.0, 1.0, 9.0, 25.0]) if b else 0.0
        ops = []
        for _ in range(rng.randint(1, 40)):
            model = rng.choice(list(JOIN_MODELS))
            event_id = f"{model[0]}{rng.randrange(JOIN_MODELS[model])}"
            offset = rng.choice([0, 0, 0, 1])  # mostly the same message again, sometimes a duplicate
            if rng.random() < 0.55:
                label: object = 1
                if label_sizes is not None:
                    label = "x" * (rng.choice(label_sizes) if rng.random() < 0.5 else 1)
                ops.append(JoinOp("prediction", model, event_id, {"score": round(rng.random(), 4), "label": label,
                                                                  "t": b}, f"inf|0|{event_id}/{offset}"))
            else:
                ops.append(JoinOp("label", model, event_id, {"label": rng.randrange(2), "t": b},
                                  f"lab|0|{event_id}/{offset}"))
        out.append((now, ops))
    return out


class Clock:
    """A clock the test sets (``clock.now = ...``), for what takes a ``clock`` callable."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- segments with labels: one segment's accuracy drops at a known event (tests/unit/test_segment_performance.py)

SEGMENT_DROP_AT = 30_000


def segment_labelled_stream(count: int, seed: int, drop_at: int | None = SEGMENT_DROP_AT, delay: int = 300,
                            kept: bool = True) -> list[tuple]:
    """(event, join) items: :func:`segmented_stream`'s countries (FR 15 % of the traffic) with a score whose
    prediction is right 92 % of the time in every country; from ``drop_at`` on FR's only 70 % (the model's
    accuracy falls from 0.92 to about 0.887). Each label comes ``delay`` events later, joined to its
    prediction's record (with its country when ``kept``)."""
    rng = np.random.default_rng(seed)
    countries = rng.choice(len(COUNTRIES), size=count, p=SHARES)
    out: list[tuple] = []
    waiting: list[tuple] = []
    for k in range(count):
        country = COUNTRIES[countries[k]]
        truth = int(rng.random() < 0.5)
        right = rng.random() < (0.70 if country == "FR" and drop_at is not None and k >= drop_at else 0.92)
        positive = truth if right else 1 - truth
        score = round(float(0.5 + 0.5 * rng.random()) if positive else float(0.5 * rng.random()), 4)
        time = 1_700_000_000_000 + k
        event = InferenceEvent(f"e{k}", "m", time, {"amount": round(float(rng.normal()), 4), "country": country},
                               score, None)
        out.append((event, None))
        waiting.append((event, truth))
        if len(waiting) > delay:
            first, label = waiting.pop(0)
            record = prediction_record(first.score, None, first.timestamp_ms,
                                       {"country": first.features["country"]} if kept else None)
            out.append((LabelEvent(first.event_id, "m", time, label), JoinResult("joined", record)))
    return out


def model_cluster(cfg, items: list[tuple], partitions: int, cut: int = 1000, restart_every: int | None = None,
                  model: str = "m"):
    """decisions = "model" without I/O: (event, join) items keyed by event id over ``partitions``
    partitions; each partition reads ``cut`` items at a time (restarted from its stored state every
    ``restart_every`` batches), its closed partials saved, then the model's merge (its warm-up reference
    first, when it has none). Returns (alerts, merge state)."""
    from stream_monitor.merge import merge_step, model_reference, reference_step
    from stream_monitor.state import decode_state, encode_state

    references: dict = {}
    monitors = [PartitionMonitor(cfg, p, {}, references) for p in range(partitions)]
    mine = [[item for item in items if zlib.crc32(item[0].event_id.encode()) % partitions == p]
            for p in range(partitions)]
    store: list[dict] = [{} for _ in range(partitions)]
    marks: list = [(None, False)] * partitions
    state, alerts, batches = None, [], 0
    while True:
        for p, monitor in enumerate(monitors):
            start = monitor.next_offset or 0
            batch = [(start + i, e, join) for i, (e, join) in enumerate(mine[p][start:start + cut])]
            if batch and not monitor.waiting:
                monitor.process_batch(batch)
                batches += 1
            elif not batch:
                monitor.go_idle()
            mark = monitor.merge_marks()[model]
            store[p].update(mark["partials"])
            monitor.partials_saved({model: mark})
            marks[p] = (mark["watermark"], mark["idle"])
            if restart_every and batches % restart_every == 0:
                again = PartitionMonitor(cfg, p, {}, references)
                again.restore(decode_state(encode_state(monitor.snapshot(pending=False))))
                monitors[p] = again
        parts = [PartitionPartials("in", p, *marks[p], dict(store[p])) for p in range(partitions)]
        settings = cfg.models[model]
        if model_reference(state) is None:
            result = reference_step(settings, state, parts, 1000)
            if result is not None:
                state = result.state
                references[model] = model_reference(state)
                for monitor in monitors:
                    monitor.adopt()
        else:
            result = merge_step(settings, model_reference(state), state, parts, 1000)
            state = result.state
            alerts.extend(result.alerts)
        if result is not None:
            for (_, p), buckets in result.consumed.items():
                for bucket in buckets:
                    store[p].pop(bucket, None)
        if all(m.idle and m.next_offset == len(mine[p]) for p, m in enumerate(monitors)) \
                and model_reference(state) is not None and not any(store):
            return alerts, state


def merged_alerts(run, processes, model: str, counts: dict, counts_of, timeout: float = 120.0) -> list[dict]:
    """Until ``model``'s merge state in ``run``'s Redis has decided ``counts`` windows (``counts_of(state)``,
    e.g. features, labels, pairs), failing at once when a monitor exits; then every process stopped
    cleanly and ``run``'s alerts."""
    from stream_monitor.state import MergeStore

    merges = MergeStore(run.store)
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = merges.load(model)
        if state is not None and counts_of(state) == counts:
            break
        for process in processes:
            if process.process.poll() is not None:
                raise AssertionError(f"monitor exited early:\n{process.log()[-3000:]}")
        time.sleep(0.1)
    assert state is not None and counts_of(state) == counts, (state and counts_of(state), counts)
    for process in processes:
        assert process.terminate() == 0, process.log()[-3000:]
    return run.alerts()


def joined_items(config, docs: list[dict], topic: str = "ml.inference") -> tuple:
    """Inference and label documents as (offset, event, join) items of one partition, each label joined to its
    prediction by an in-memory join with ``config``'s performance settings (as ``run`` joins them in Redis)."""
    from stream_monitor.join import MemoryJoin, join_op, performance_settings

    settings = performance_settings(config)
    joiner = MemoryJoin(settings)
    items = []
    for offset, doc in enumerate(docs):
        event = decode(RawMessage(topic, 0, offset, orjson.dumps(doc)), frozenset(config.models))
        assert not isinstance(event, DeadLetter), event
        op = join_op(event, f"t|0|{offset}", settings)
        items.append((offset, event, joiner.run([op])[0] if op else None))
    return tuple(items)


def fed_in_batches(monitor, items, rng: random.Random | None = None, most: int = 300) -> list:
    """(offset, event, join) items through ``monitor.process_batch``: whole, or in batches of 1 to ``most``
    drawn from ``rng``; the alerts."""
    alerts, i = [], 0
    while i < len(items):
        size = len(items) if rng is None else rng.randint(1, most)
        alerts.extend(monitor.process_batch(items[i:i + size]))
        i += size
    return alerts


def assert_cuts_and_a_restore_change_nothing(make, items, most: int, seeds: int = 3):
    """A monitor from ``make()`` fed ``items`` whole ends in the same snapshot as ones fed in random batches
    (of up to ``most``) and restored from their stored state at a random offset, for each seed; the whole
    run's monitor."""
    from stream_monitor.state import decode_state, encode_state

    whole = make()
    fed_in_batches(whole, items)
    for seed in range(seeds):
        rng = random.Random(seed)
        at = rng.randrange(1, len(items))
        first = make()
        fed_in_batches(first, items[:at], rng, most)
        resumed = make()
        resumed.restore(decode_state(encode_state(first.snapshot())))
        fed_in_batches(resumed, items[at:], rng, most)
        assert resumed.snapshot() == whole.snapshot(), at
    return whole
