"""``stream-monitor demo``: the whole product on this machine in about a minute.

Starts the local broker and Redis on free ports, creates the topics, starts
two ``stream-monitor run`` instances in one consumer group, streams synthetic
traffic for two models (``fraud`` drifts half-way, ``churn`` later), prints
each alert as it arrives, then a summary; stops everything it started by pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from .localstack import LocalProcess, create_topics, free_port, produce_records, start_broker, start_redis
from ..state import StateStore, connect
from ..synthetic import generate, labelled

INPUT, ALERTS, DEAD_LETTERS = "ml.inference", "ml.alerts", "ml.dead-letters"
# Keyed by model id, as the README recommends: one partition per model, one per instance.
PARTITION_OF = {"fraud": 0, "churn": 1, "credit": 2}
RATE = 5_000  # events per second, all models together

CONFIG = """\
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "stream-monitor-demo"
input_topics = ["{input}"]
alert_topic = "{alerts}"
dead_letter_topic = "{dead_letters}"

[kafka.consumer]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 1000
"fetch.wait.max.ms" = 50

[redis]
url = "{redis}"
namespace = "demo"

[service]
metrics_port = 0
checkpoint_interval_seconds = 1.0

[models.fraud]
reference = {{ source = "warmup", events = 2000 }}
[models.fraud.detectors]
psi = {{ window = 2000, bins = 10, warning = 0.1, critical = 0.25 }}

[models.churn]
reference = {{ source = "warmup", events = 2000 }}
[models.churn.detectors]
psi = {{ window = 2000 }}

[models.credit]   # labels arrive 200 events after their predictions: performance and concept drift
reference = {{ source = "warmup", events = 2000 }}
performance = {{ task = "classification", window = 1000, floors = {{ accuracy = 0.7 }} }}
[models.credit.detectors]
psi = {{ window = 2000 }}
"""


def say(text: str) -> None:
    print(text, flush=True)


def run_demo(events_per_model: int = 60_000) -> int:
    workdir = tempfile.mkdtemp(prefix="stream-monitor-demo-")
    started: list[LocalProcess] = []
    monitors: list[subprocess.Popen] = []
    ok = False
    try:
        say("stream_monitor demo: local broker + Redis, two monitor instances, three models with injected drift")
        broker = start_broker(workdir)
        started.append(broker)
        redis_server = start_redis(workdir)
        started.append(redis_server)
        say(f"  broker  {broker.address} (pid {broker.pid})   redis {redis_server.address} (pid {redis_server.pid})")
        from ..detectors.compile import warm_up  # noqa: PLC0415 - compiled once here, loaded by both monitors

        warm_up()
        create_topics(broker.address, {INPUT: len(PARTITION_OF), ALERTS: 1, DEAD_LETTERS: 1})
        config_path = os.path.join(workdir, "config.toml")
        with open(config_path, "w") as handle:
            handle.write(CONFIG.format(bootstrap=broker.address, redis=redis_server.address, input=INPUT,
                                       alerts=ALERTS, dead_letters=DEAD_LETTERS))
        for i in (1, 2):
            port = free_port()
            log = open(os.path.join(workdir, f"monitor-{i}.log"), "wb")
            monitors.append(subprocess.Popen(
                [sys.executable, "-m", "stream_monitor", "run", "-c", config_path], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "STREAM_MONITOR_SERVICE_METRICS_PORT": str(port)}))
            say(f"  monitor-{i} pid {monitors[-1].pid}, metrics http://127.0.0.1:{port}/metrics")
        ok = _stream(broker.address, redis_server.address, events_per_model, monitors)
        for i, process in enumerate(monitors, start=1):
            process.terminate()
            code = process.wait(20)
            if code != 0:
                ok = False
                say(f"  monitor-{i} exited with {code}; its log: {workdir}/monitor-{i}.log")
        say("  stopped both monitors (SIGTERM: state persisted, offsets committed, group left)")
    finally:
        for process in monitors:
            if process.poll() is None:
                process.kill()
        for process in reversed(started):
            process.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"  logs kept in {workdir}")
    say("  stopped the broker and Redis" if ok else "demo FAILED")
    return 0 if ok else 1


DRIFT_AT = {"fraud": 0.5, "churn": 0.7}


def _records(events_per_model: int) -> list[tuple[str, bytes, str | None]]:
    """(model, value, note to print when it is sent) in sending order."""
    drift_at = {model: int(events_per_model * share) for model, share in DRIFT_AT.items()}
    streams = {model: generate(model, events_per_model, seed=42, drift_at=drift_at[model]) for model in DRIFT_AT}
    credit_count = events_per_model // 2
    credit = labelled("credit", credit_count, seed=42, invert_at=int(credit_count * 0.6), delay=200)
    inverted = next(k for k, e in enumerate(credit) if e["event_id"] == f"credit-42-{int(credit_count * 0.6)}")
    records = []
    sent_credit = 0
    for i in range(events_per_model):
        for model, events in streams.items():
            note = f"--- {model}: drift injected from here on (its event {i:,}) ---" if i == drift_at[model] else None
            records.append((model, orjson.dumps(events[i]), note))
        now = streams["fraud"][i]["timestamp"]  # one clock for every model: credit's events and labels
        while sent_credit < len(credit) * (i + 1) // events_per_model:  # come at half the rate, on the same clock
            note = ("--- credit: the world inverts the relation between input and label (concept drift; "
                    "inputs and predictions unchanged) ---") if sent_credit == inverted else None
            records.append(("credit", orjson.dumps({**credit[sent_credit], "timestamp": now}), note))
            sent_credit += 1
        if i % 20_000 == 9_999:  # a little bad input, to show the dead-letter path
            records.append(("fraud", b'{"event_id": "oops", "model_id": "fraud", "features": "not an object"}', None))
    return records


def _stream(bootstrap: str, redis_url: str, events_per_model: int, monitors: list[subprocess.Popen]) -> bool:
    records = _records(events_per_model)
    printer = _AlertPrinter(bootstrap)
    printer.start()
    started = time.monotonic()
    printer.t0 = started
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    monitor_exited = False

    def sending():
        nonlocal monitor_exited
        for i, (model, value, note) in enumerate(records):
            if note:
                say(f"  {time.monotonic() - started:6.1f}s  {note}")
            if i % 2000 == 0 and any(p.poll() is not None for p in monitors):
                monitor_exited = True
                return
            yield PARTITION_OF[model], model.encode(), value, None

    say(f"streaming {len(records):,} events at ~{RATE:,}/s: fraud's inputs drift at 50 %, churn's at 70 %, "
        "credit's labels turn against its predictions at 60 % (each model's first 2,000 events are its "
        "warm-up reference)\n")
    ends = produce_records(producer, INPUT, sending(), rate=RATE)
    if monitor_exited:
        say("a monitor exited early")
        return False
    produced_at = time.monotonic()
    store = StateStore(connect(redis_url), "demo", "stream-monitor-demo")
    deadline = produced_at + 60
    while time.monotonic() < deadline:
        stored = {p: store.client.hget(store.key(INPUT, p), "offset") for p in ends}
        if all(v is not None and int(v) >= ends[p] for p, v in stored.items()):
            break
        time.sleep(0.1)
    else:
        say("the monitors did not catch up within 60 s")
        return False
    caught_up = time.monotonic()
    time.sleep(1.5)
    printer.stop()
    elapsed = caught_up - started
    dead_letters = sum(summary.get("dead_letters", 0) for *_, summary, _ in store.summaries())
    counts = Counter(status for status in printer.statuses)
    say("")
    say("summary")
    say(f"  events        {len(records):,} in {elapsed:.1f} s = {len(records) / elapsed:,.0f} events/s end to end "
        f"(paced by the producer at ~{RATE:,}/s; processing capacity: make bench)")
    say(f"  caught up     {caught_up - produced_at:.2f} s after the last event was produced")
    say(f"  alerts        {counts.get('firing', 0)} firing, {counts.get('resolved', 0)} resolved, in "
        f"{len(printer.incidents)} incidents (what a model's detectors found about one change, grouped: "
        "`stream-monitor status` and the status page list them with their drivers)")
    say(f"  dead letters  {dead_letters}")
    return counts.get("firing", 0) > 0


class _AlertPrinter(threading.Thread):
    """Prints each alert of the alert topic as it arrives."""

    def __init__(self, bootstrap: str):
        super().__init__(daemon=True)
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-printer",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 50})
        self._consumer.assign([TopicPartition(ALERTS, 0, OFFSET_BEGINNING)])
        self._stopping = threading.Event()
        self.statuses: list[str] = []
        self.incidents: set[tuple[str, str]] = set()  # (model, incident id)
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._stopping.is_set():
            for message in self._consumer.consume(100, 0.2):
                if message.error() is None:
                    self._print(orjson.loads(message.value()))
        self._consumer.close()

    def _print(self, alert: dict) -> None:
        self.statuses.append(alert["status"])
        if alert.get("incident"):
            self.incidents.add((alert["model_id"], alert["incident"]))
        mark = "FIRING  " if alert["status"] == "firing" else "resolved"
        if alert.get("partition") is None:  # decided on a window of the model's events from every partition
            where = f"{sum((alert.get('window') or {}).get('events', {}).values())} events"
        else:  # a point detector's firing: the message it fired at
            where = f"p{alert['partition']}@{alert['offset']}"
        say(f"  {time.monotonic() - self.t0:6.1f}s  {mark} {alert['severity']:<8} {(alert.get('incident') or '')[:8]:<8} "
            f"{alert['model_id']:<6} {alert['signal']:<10} {alert['name']:<14} {alert['detector']:<12} "
            f"{where:<11}  {alert['message']}")

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)
