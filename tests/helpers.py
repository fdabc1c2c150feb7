"""Shared helpers of the integration tests: configs, feeding topics, reading them back, waiting."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from stream_monitor.demo.localstack import MonitorProcess, produce_records
from stream_monitor.state import StateStore, connect

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"

FAST_CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 50}


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
                 service: dict | None = None, consumer: dict | None = None) -> Path:
    """A TOML config for one test run (consumer tuned for the local broker's slow joins)."""
    lines = ["[kafka]", f"bootstrap_servers = {toml_value(bootstrap)}", f"group_id = {toml_value(group_id)}",
             f"input_topics = {toml_value([input_topic])}", f"alert_topic = {toml_value(alert_topic)}",
             f"dead_letter_topic = {toml_value(dead_letter_topic)}", "", "[kafka.consumer]"]
    lines += [f'"{k}" = {toml_value(v)}' for k, v in {**FAST_CONSUMER, **(consumer or {})}.items()]
    lines += ["", "[redis]", f"url = {toml_value(redis_url)}", f"namespace = {toml_value(namespace)}", "",
              "[service]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in {"metrics_port": 0, **(service or {})}.items()]
    for model_id, model in models.items():
        lines += ["", f"[models.{model_id}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in model.items() if key != "detectors"]
        if "detectors" in model:
            lines += [f"[models.{model_id}.detectors]"] + [f"{k} = {toml_value(v)}"
                                                           for k, v in model["detectors"].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def produce(bootstrap: str, topic: str, records: Iterable[tuple[int | None, bytes | None, bytes | None, list | None]],
            rate: float | None = None) -> dict[int, int]:
    """Produce (partition, key, value, headers) in order; returns the end offset of each partition."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    return produce_records(producer, topic, records, rate=rate)


class Feeder(threading.Thread):
    """Produces records at a steady rate in the background (so interruptions happen mid-stream)."""

    def __init__(self, bootstrap: str, topic: str, records: list, rate: float):
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, records, rate)
        self.ends: dict[int, int] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.ends = produce(*self.args[:3], rate=self.args[3])
        except BaseException as exc:  # noqa: BLE001 - reported by result()
            self.error = exc

    def result(self, timeout: float = 120.0) -> dict[int, int]:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.ends is not None, "feeder did not finish"
        return self.ends


def read_topic(bootstrap: str, topic: str, partitions: int, idle: float = 2.0, timeout: float = 60.0) -> list[Any]:
    """Every message of a topic from the beginning (no group), until ``idle`` seconds pass without one."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False,
                         "fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    messages = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last < idle:
            batch = consumer.consume(500, 0.2)
            for message in batch:
                if message.error() is None:
                    messages.append(message)
                    last = time.monotonic()
    finally:
        consumer.close()
    return messages


def alerts_of(messages: list) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in messages]


def store_for(redis_url: str, namespace: str, group_id: str) -> StateStore:
    return StateStore(connect(redis_url), namespace, group_id)


def wait_for_offsets(store: StateStore, topic: str, ends: dict[int, int], timeout: float = 90.0,
                     processes: Iterable[MonitorProcess] = ()) -> None:
    """Until the stored next offset of every partition reaches its end offset."""
    deadline = time.monotonic() + timeout
    stored: dict[int, int | None] = {}
    while time.monotonic() < deadline:
        stored = {p: stored_offset(store, topic, p) for p in ends}
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
