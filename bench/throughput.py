"""End-to-end throughput of `stream-monitor run` through the broker and Redis (issue #6).

What runs: this script starts the local Tansu broker and a redis-server (stopped
by pid at the end, also on errors), pre-produces a seeded, stationary workload
(events with F = 20 and F = 100 numeric features plus a prediction score) to a
one-partition topic, then starts ONE `python -m stream_monitor run` subprocess
with the default model config (ADWIN, Page-Hinkley, PSI, KS and data quality
on every numeric column; a warm-up reference of 5,000 events) and the default
checkpoint interval (10,000 events or 5 s). Only the consumer is tuned for the
local broker (short session timeout, `fetch.wait.max.ms` = 50), as in the tests.

How it is timed. The service makes progress visible in one place: the next
offset it stores in Redis, atomically with the detector state, at each
checkpoint. This script polls that offset every 10 ms and records when it
changes. The clock starts at the first checkpoint at or past the warm-up
(offset ≥ 5,000: the group join, ~3 s, and the reference build are before it)
and stops at the first checkpoint at or past warm-up + N. Rate = events between
those two stored offsets / the time between them. Both ends are checkpoints, so
the window holds whole checkpoint intervals: the checkpoint cost is included in
its steady-state proportion. A padding of two checkpoint intervals is produced
after the measured events so the monitor is still busy when the clock stops
(the last checkpoint of a drained stream comes only when the 5 s timer fires,
which would count idle time).

Where the time goes: the instance exports `stream_monitor_stage_seconds_total
{stage=...}` at each checkpoint. It is scraped right after the checkpoint that
starts the window and right after the one that ends it (each scrape is checked
to belong to that checkpoint via `stream_monitor_checkpoints_total`), and the
difference is shown per stage. Stages other than consume, decode, join, detect,
produce and checkpoint come from the detector engine and are part of detect.
Peak RSS is the monitor's VmHWM just before SIGTERM; state size is the stored
state blob (and Redis' MEMORY USAGE of the partition's hash) per numeric column
(F features + the score). The instance must exit 0 on SIGTERM.

The machine may be shared: from /proc, the CPU time taken during each window
by processes this script did not start (neither it, the broker, Redis nor the
monitors) plus the hypervisor's steal is shown in cores; a rate measured while
that is high is low. The slowest and fastest checkpoint interval of the window
show how steady the rate was.

Baselines, same events, same run: (a) the naive in-process loop: orjson.loads
per event and river's ADWIN() and PageHinkley() (defaults) updated per feature;
(b) a decode-only consumer: confluent_kafka in this process, the same topic
from the beginning, consume() in batches of 500 and orjson.loads per message,
timed from the first batch received to the last message (the join excluded).
Both run after the instance has stopped, (a) on the N measured events.

Scaling (F = 20): a two-partition topic with the same N events split evenly
(each partition has its own warm-up), two `run` instances in one group. The
combined rate is taken over the common window in which both partitions are past
their first post-warm-up checkpoint and neither has reached warm-up + N/2; each
partition's offset inside it is interpolated between its own checkpoints.

Nothing is asserted on timings: the targets table says PASS or MISS.

    make bench                                   # or: .venv/bin/python bench/throughput.py
    .venv/bin/python bench/throughput.py --quick # a smoke run (20,000 events per case)
    .venv/bin/python bench/throughput.py --events 200000
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families
from river import drift

from stream_monitor.config import ServiceConfig

WARMUP = 5_000
DEFAULT_EVENTS = 100_000
QUICK_EVENTS = 20_000
FEATURES = (20, 100)
SCALE_FEATURES = 20
CHECKPOINT_EVENTS = ServiceConfig().checkpoint_interval_events  # the default (not overridden here)
BATCH = ServiceConfig().batch_size
PADDING = 2 * CHECKPOINT_EVENTS + 2 * BATCH  # keeps the monitor busy past the end of the window
FAST_CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 50}
LOOP_STAGES = ("consume", "decode", "join", "detect", "produce", "checkpoint")
ALERTS, DEAD_LETTERS = "bench.alerts", "bench.dead-letters"
POLL = 0.01  # seconds between reads of the stored offsets
LOAD_EVERY = 0.25  # seconds between reads of the machine's CPU counters

# Targets of issue #6.
TARGET_NAIVE_RATIO = 2.0
TARGET_F100_RATE = 20_000
TARGET_SCALING = 1.7
TARGET_CHECKPOINT_SHARE = 0.10
TARGET_STATE_BYTES = 8192


# --- workload and baselines (pure; tests/test_bench.py runs them) ------------------------------------


def events(features: int, count: int, seed: int = 1) -> list[bytes]:
    """`count` seeded, stationary inference events of model `m`: feature j ~ N(j, 1 + j % 3), score ~ U(0, 1)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        values = {f"f{j}": round(rng.gauss(j, 1 + j % 3), 4) for j in range(features)}
        out.append(orjson.dumps({"event_id": f"e{seed}-{i}", "model_id": "m", "features": values,
                                 "prediction": {"score": round(rng.random(), 4)}}))
    return out


def naive_rate(lines: list[bytes], features: int) -> float:
    """Baseline (a): orjson.loads per event, river's ADWIN and PageHinkley (defaults) per feature."""
    adwins = [drift.ADWIN() for _ in range(features)]
    hinkleys = [drift.PageHinkley() for _ in range(features)]
    started = time.perf_counter()
    for line in lines:
        doc = orjson.loads(line)
        for j, value in enumerate(doc["features"].values()):
            adwins[j].update(value)
            hinkleys[j].update(value)
    return len(lines) / (time.perf_counter() - started)


# --- reading the timeline and the metrics (pure) -----------------------------------------------------

Timeline = list[tuple[float, int]]  # (monotonic time, stored next offset) at each change


def first_at_least(timeline: Timeline, offset: int) -> int | None:
    """Index of the first checkpoint whose stored offset is ≥ `offset`."""
    return next((i for i, (_, stored) in enumerate(timeline) if stored >= offset), None)


def value_at(series: list[tuple[float, float]], when: float) -> float:
    """A cumulative quantity (a partition's stored offset, CPU seconds) at `when`, interpolated linearly
    between the observations around it."""
    times = [t for t, _ in series]
    i = bisect.bisect_right(times, when)
    if i == 0:
        return float(series[0][1])
    if i == len(series):
        return float(series[-1][1])
    (t0, v0), (t1, v1) = series[i - 1], series[i]
    return v0 + (v1 - v0) * (when - t0) / (t1 - t0)


@dataclass
class Window:
    events: float
    seconds: float
    start: float = 0.0  # monotonic time
    other_cores: float = 0.0  # CPU taken meanwhile by processes this benchmark did not start (and steal)
    spread: tuple[float, float] = (0.0, 0.0)  # slowest and fastest checkpoint interval, events/s

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def interval_rates(timeline: Timeline) -> list[float]:
    """Events/s of each checkpoint interval of a timeline."""
    return [(o1 - o0) / (t1 - t0) for (t0, o0), (t1, o1) in zip(timeline, timeline[1:])]


def common_window(timelines: dict[int, Timeline], starts: dict[int, int], ends: dict[int, int]) -> Window:
    """Events/s of all partitions together while all are busy: from the moment every partition has
    stored an offset ≥ its start to the moment the first one stores an offset ≥ its end."""
    opened = max(timelines[p][first_at_least(timelines[p], starts[p])][0] for p in timelines)
    closed = min(timelines[p][first_at_least(timelines[p], ends[p])][0] for p in timelines)
    done = sum(value_at(timelines[p], closed) - value_at(timelines[p], opened) for p in timelines)
    return Window(done, closed - opened, opened)


@dataclass
class Scrape:
    checkpoints: int
    stages: dict[str, float]


def parse_metrics(text: str) -> Scrape:
    stages, checkpoints = {}, 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "stream_monitor_stage_seconds_total":
                stages[sample.labels["stage"]] = sample.value
            elif sample.name == "stream_monitor_checkpoints_total":
                checkpoints = int(sample.value)
    return Scrape(checkpoints, stages)


def stage_rows(before: dict[str, float], after: dict[str, float]) -> list[tuple[str, float, float]]:
    """(name, seconds, share of the loop's time) per loop stage in the window between two scrapes;
    any other stage (a detector kind of the engine) follows detect as '  detect › name'."""
    delta = {stage: after.get(stage, 0.0) - before.get(stage, 0.0) for stage in after}
    total = sum(delta.get(stage, 0.0) for stage in LOOP_STAGES) or 1.0
    rows = []
    for stage in LOOP_STAGES:
        rows.append((stage, delta.get(stage, 0.0), delta.get(stage, 0.0) / total))
        if stage == "detect":
            inner = sorted((s for s in delta if s not in LOOP_STAGES), key=lambda s: -delta[s])
            rows += [(f"detect › {s}", delta[s], delta[s] / total) for s in inner]
    return rows


# --- processes ---------------------------------------------------------------------------------------


class Monitor:
    """One `python -m stream_monitor run -c CONFIG` subprocess, stopped by its own pid."""

    def __init__(self, config: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "stream_monitor", "run", "-c", str(config)],
                                        stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"monitor exited early ({self.process.returncode}):\n{self.log()[-3000:]}")

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (after the first log line: `run` has installed its handler by then) → exit code."""
        deadline = time.monotonic() + 15
        while self.process.poll() is None and not self.log().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds the machine has been busy or stolen by the hypervisor, CPU seconds used by `pids`)
    so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    ours = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ours += int(fields[11]) + int(fields[12])  # utime, stime
    return (user + nice + system + irq + softirq + steal) / ticks, ours / ticks


class OffsetWatch(threading.Thread):
    """Polls the stored next offset of each partition every POLL seconds and records each change; every
    LOAD_EVERY seconds it also records the CPU seconds used by processes other than `pids` (this script,
    its broker, Redis and monitors), to show when the machine was shared."""

    def __init__(self, store, topic: str, partitions: list[int], pids: list[int]):
        super().__init__(daemon=True)
        self.store, self.topic, self.pids = store, topic, pids
        self.timelines: dict[int, Timeline] = {p: [] for p in partitions}
        self.load: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def other_cores(self, window: Window) -> float:
        """Cores used on average by other processes during `window`."""
        used = value_at(self.load, window.start + window.seconds) - value_at(self.load, window.start)
        return used / window.seconds

    def run(self) -> None:
        keys = {p: self.store.key(self.topic, p) for p in self.timelines}
        next_load = 0.0
        while not self._halt.is_set():
            if time.monotonic() >= next_load:
                busy, ours = cpu_seconds(self.pids)
                self.load.append((time.monotonic(), busy - ours))
                next_load = time.monotonic() + LOAD_EVERY
            pipe = self.store.client.pipeline(transaction=False)
            for key in keys.values():
                pipe.hget(key, "offset")
            values = pipe.execute()
            now = time.monotonic()
            for p, value in zip(keys, values):
                timeline = self.timelines[p]
                if value is not None and (not timeline or timeline[-1][1] != int(value)):
                    timeline.append((now, int(value)))
            self._halt.wait(POLL)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def wait_for(self, partition: int, offset: int, monitors: list[Monitor], timeout: float) -> int:
        """Index (in the partition's timeline) of the first checkpoint with a stored offset ≥ `offset`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            index = first_at_least(self.timelines[partition], offset)
            if index is not None:
                return index
            for monitor in monitors:
                monitor.check_alive()
            time.sleep(POLL)
        raise RuntimeError(f"partition {partition} did not store offset {offset} within {timeout:.0f} s; "
                           f"stored: {self.timelines[partition][-3:]}")


@dataclass
class Stack:
    """The broker, Redis and the scratch directory of this run."""
    bootstrap: str
    redis_url: str
    workdir: Path
    pids: list[int]  # this script, the broker, Redis


def write_config(stack: Stack, path: Path, topic: str, group: str, metrics_port: int) -> Path:
    """The default model config; only the connection, the consumer's timeouts and the metrics port are set."""
    consumer = "\n".join(f'"{k}" = {v}' for k, v in FAST_CONSUMER.items())
    path.write_text(f"""\
[kafka]
bootstrap_servers = "{stack.bootstrap}"
group_id = "{group}"
input_topics = ["{topic}"]
alert_topic = "{ALERTS}"
dead_letter_topic = "{DEAD_LETTERS}"

[kafka.consumer]
{consumer}

[redis]
url = "{stack.redis_url}"
namespace = "{group}"

[service]
metrics_port = {metrics_port}

[models.m]
reference = {{ source = "warmup", events = {WARMUP} }}
""")
    return path


def produce(bootstrap: str, topic: str, batches: dict[int, list[bytes]]) -> dict[int, int]:
    """Every event of each partition, in order; returns each partition's end offset."""
    from confluent_kafka import Producer  # noqa: PLC0415

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 1_048_576})
    ends: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for partition, lines in batches.items():
        for line in lines:
            while True:
                try:
                    producer.produce(topic, line, key=b"m", partition=partition, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
    if producer.flush(120) or errors:
        raise RuntimeError(f"producing to {topic} failed: {errors[:3]}")
    return ends


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse_metrics(response.read().decode())


def scrape_at_checkpoint(port: int, watch: OffsetWatch, offset: int, monitor: Monitor,
                         timeout: float) -> tuple[int, Scrape]:
    """The first checkpoint with a stored offset ≥ `offset` whose exported stage counters could be read
    before the next checkpoint: its index in the timeline and the scrape. A scrape belongs to checkpoint
    i when it counts i + 1 checkpoints, reads the same stage counters twice and no later offset has been
    stored meanwhile (one partition: each checkpoint stores one new offset)."""
    index = watch.wait_for(0, offset, [monitor], timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        first = scrape(port)
        time.sleep(0.02)
        second = scrape(port)
        stored = len(watch.timelines[0])
        if stored > index + 1 or second.checkpoints > index + 1:
            index = stored - 1  # a later checkpoint came meanwhile: that one starts (or ends) the window
        elif first.stages == second.stages and second.checkpoints == index + 1:
            return index, second
        monitor.check_alive()  # else: the checkpoint is still exporting; scrape again
    raise RuntimeError(f"no scrape matched checkpoint {index} within {timeout:.0f} s")


def redis_bytes(store, topic: str, partition: int) -> tuple[int, int]:
    """(length of the stored state blob, MEMORY USAGE of the partition's state hash)."""
    key = store.key(topic, partition)
    return int(store.client.hstrlen(key, "state")), int(store.client.memory_usage(key, samples=0))


def stop_all(monitors: list[Monitor]) -> None:
    """SIGTERM each instance; each must exit 0."""
    codes = [monitor.terminate() for monitor in monitors]
    for monitor, code in zip(monitors, codes):
        if code != 0:
            raise RuntimeError(f"monitor pid {monitor.process.pid} exited {code} on SIGTERM:\n{monitor.log()[-3000:]}")


# --- the three measurements ----------------------------------------------------------------------------


@dataclass
class SingleResult:
    features: int
    window: Window
    stages: list[tuple[str, float, float]]
    peak_rss: int
    state_bytes: int
    memory_usage: int
    alerts: int
    naive: float = 0.0
    decode_only: float = 0.0


def timeout_for(events_count: int) -> float:
    return 120 + events_count / 500


def run_single(stack: Stack, features: int, lines: list[bytes], measured: int) -> SingleResult:
    """One instance on a one-partition topic holding `lines` (warm-up, measured events, padding)."""
    from stream_monitor.localstack import create_topics, free_port  # noqa: PLC0415
    from stream_monitor.state import StateStore, connect  # noqa: PLC0415

    tag = uuid.uuid4().hex[:6]
    topic, group = f"bench.f{features}.{tag}", f"bench-f{features}-{tag}"
    create_topics(stack.bootstrap, {topic: 1})
    end = produce(stack.bootstrap, topic, {0: lines})[0]
    store = StateStore(connect(stack.redis_url), group, group)
    port = free_port()
    config = write_config(stack, stack.workdir / f"{group}.toml", topic, group, port)
    watch = OffsetWatch(store, topic, [0], list(stack.pids))
    watch.start()
    monitor = None
    try:
        monitor = Monitor(config, stack.workdir / f"{group}.log")
        watch.pids.append(monitor.process.pid)
        timeout = timeout_for(len(lines))
        start, before = scrape_at_checkpoint(port, watch, WARMUP, monitor, timeout)
        stop, after = scrape_at_checkpoint(port, watch, WARMUP + measured, monitor, timeout)
        watch.wait_for(0, end, [monitor], timeout)  # every event processed and stored
        timeline = watch.timelines[0]
        (t0, o0), (t1, o1) = timeline[start], timeline[stop]
        if o1 >= end:
            print(f"note: F={features}: the window reached the end of the topic; its last interval may be idle")
        window = Window(o1 - o0, t1 - t0, t0)
        window.other_cores = watch.other_cores(window)
        rates = interval_rates(timeline[start:stop + 1])
        window.spread = (min(rates), max(rates))
        peak = monitor.peak_rss_bytes()
        state, memory = redis_bytes(store, topic, 0)
        stop_all([monitor])
    finally:
        watch.stop()
        if monitor is not None:
            monitor.close()
    alerts = monitor.log().count("FIRING")
    result = SingleResult(features, window, stage_rows(before.stages, after.stages), peak, state, memory, alerts)
    result.decode_only = decode_only_rate(stack.bootstrap, topic, end)
    result.naive = naive_rate(lines[WARMUP:WARMUP + measured], features)
    delete_topic(stack.bootstrap, topic)
    return result


def decode_only_rate(bootstrap: str, topic: str, end: int) -> float:
    """Baseline (b): a consumer of its own group reads the topic from the beginning in batches of 500 and
    only orjson.loads each message; timed from the first batch received to the last message."""
    from confluent_kafka import Consumer  # noqa: PLC0415

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-decode-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **FAST_CONSUMER})
    consumer.subscribe([topic])
    try:
        seen, counted, started = 0, 0, None
        deadline = time.monotonic() + timeout_for(end)
        while seen < end and time.monotonic() < deadline:
            batch = consumer.consume(500, 0.5)
            for message in batch:
                if message.error() is None:
                    orjson.loads(message.value())
                    seen += 1
            if batch and started is None:
                started = time.perf_counter()  # the join and the first batch are not counted
            elif batch:
                counted += len(batch)
        if seen < end:
            raise RuntimeError(f"decode-only consumer read {seen} of {end} messages")
        return counted / (time.perf_counter() - started)
    finally:
        consumer.close()


def delete_topic(bootstrap: str, topic: str) -> None:
    """Frees the broker's memory (every client of the topic is closed by now)."""
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # alive until the deletion is answered
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        try:
            future.result(30)
        except Exception as exc:  # noqa: BLE001 - only memory is at stake
            print(f"note: could not delete topic {topic}: {exc}")


@dataclass
class PairResult:
    window: Window
    assignments: list[str]
    revokes: int


def run_pair(stack: Stack, measured: int) -> PairResult:
    """Two instances, one group, a two-partition topic: N/2 measured events per partition."""
    from stream_monitor.localstack import create_topics  # noqa: PLC0415
    from stream_monitor.state import StateStore, connect  # noqa: PLC0415

    tag = uuid.uuid4().hex[:6]
    topic, group = f"bench.pair.{tag}", f"bench-pair-{tag}"
    half = measured // 2
    create_topics(stack.bootstrap, {topic: 2})
    ends = produce(stack.bootstrap, topic,
                   {p: events(SCALE_FEATURES, WARMUP + half + PADDING, seed=10 + p) for p in (0, 1)})
    store = StateStore(connect(stack.redis_url), group, group)
    config = write_config(stack, stack.workdir / f"{group}.toml", topic, group, 0)
    watch = OffsetWatch(store, topic, [0, 1], list(stack.pids))
    watch.start()
    monitors: list[Monitor] = []
    try:
        for i in (1, 2):
            monitors.append(Monitor(config, stack.workdir / f"{group}-{i}.log"))
            watch.pids.append(monitors[-1].process.pid)
        timeout = timeout_for(sum(ends.values()))
        for p in (0, 1):
            watch.wait_for(p, ends[p], monitors, timeout)
        window = common_window(watch.timelines, {0: WARMUP, 1: WARMUP}, {0: WARMUP + half, 1: WARMUP + half})
        window.other_cores = watch.other_cores(window)
        logs = [monitor.log() for monitor in monitors]  # before SIGTERM: stopping revokes too
        stop_all(monitors)
    finally:
        watch.stop()
        for monitor in monitors:
            monitor.close()
    assignments = [", ".join(line.split("assigned ", 1)[1].split(":")[0] for line in log.splitlines()
                             if "assigned " in line) or "nothing" for log in logs]
    revokes = sum(1 for log in logs for line in log.splitlines()
                  if "revoked " in line and "revoked nothing" not in line)
    delete_topic(stack.bootstrap, topic)
    return PairResult(window, assignments, revokes)


# --- report --------------------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(results: list[SingleResult], pair: PairResult, measured: int) -> None:
    print(f"\n### End to end, one instance, one partition ({WARMUP:,} warm-up events not timed; "
          f"~{measured:,} measured)\n")
    print("| F | events timed | seconds | service events/s | slowest–fastest checkpoint interval | naive loop (a) "
          "events/s | decode-only consumer (b) events/s | service / (a) | service / (b) | CPU taken by others "
          "(cores) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.features} | {r.window.events:,.0f} | {r.window.seconds:.2f} | {r.window.rate:,.0f} | "
              f"{r.window.spread[0]:,.0f}–{r.window.spread[1]:,.0f} | {r.naive:,.0f} | {r.decode_only:,.0f} | "
              f"{r.window.rate / r.naive:.2f} | {r.window.rate / r.decode_only:.3f} | {r.window.other_cores:.2f} |")
    print("\n| F | numeric columns | peak RSS of the instance MiB | stored state blob bytes | per numeric column | "
          "Redis MEMORY USAGE of the state hash | per numeric column | alerts fired |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        columns = r.features + 1
        print(f"| {r.features} | {columns} | {r.peak_rss / 2**20:,.0f} | {r.state_bytes:,} | "
              f"{r.state_bytes / columns:,.0f} | {r.memory_usage:,} | {r.memory_usage / columns:,.0f} | {r.alerts} |")

    print("\n### Where the time goes (stream_monitor_stage_seconds_total, same window)\n")
    print("| stage | " + " | ".join(f"F={r.features} s | F={r.features} share" for r in results) + " |")
    print("|---|" + "---|---|" * len(results))
    names = [name for name, _, _ in results[0].stages]
    for r in results[1:]:
        names += [name for name, _, _ in r.stages if name not in names]
    for name in names:
        cells = []
        for r in results:
            row = next((row for row in r.stages if row[0] == name), None)
            cells.append(f"{row[1]:.2f} | {row[2]:.1%}" if row else "– | –")
        print(f"| {name} | " + " | ".join(cells) + " |")
    covered = [f"F={r.features}: the six stages add up to {sum(s for n, s, _ in r.stages if n in LOOP_STAGES):.2f} s "
               f"of the {r.window.seconds:.2f} s window" for r in results]
    print("\nShares are of the loop's six stages; 'detect › …' rows are the engine's parts of detect. "
          + "; ".join(covered) + ".")

    single = next(r for r in results if r.features == SCALE_FEATURES)
    one = single.window.rate
    print(f"\n### Two instances, two partitions vs one (F = {SCALE_FEATURES})\n")
    print("| instances | partitions | events timed | seconds | events/s | vs one | CPU taken by others (cores) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| 1 | 1 | {single.window.events:,.0f} | {single.window.seconds:.2f} | {one:,.0f} | 1.00 | "
          f"{single.window.other_cores:.2f} |")
    print(f"| 2 | 2 | {pair.window.events:,.0f} | {pair.window.seconds:.2f} | {pair.window.rate:,.0f} | "
          f"{pair.window.rate / one:.2f} | {pair.window.other_cores:.2f} |")
    print(f"\nassignments: {'; '.join(f'instance {i + 1}: {a}' for i, a in enumerate(pair.assignments))}; "
          f"revocations: {pair.revokes}")

    busiest = max([r.window.other_cores for r in results] + [pair.window.other_cores])
    if busiest > 0.1:
        print(f"\nnote: processes this benchmark did not start (and the hypervisor's steal) took up to {busiest:.2f} "
              f"of the {os.cpu_count()} cores on average during a timed window: rates measured then are lower than "
              "on an idle machine.")

    by_f = {r.features: r for r in results}
    f20, f100 = by_f[20], by_f[100]
    checkpoint = {r.features: next(share for name, _, share in r.stages if name == "checkpoint") for r in results}
    state = {r.features: r.state_bytes / (r.features + 1) for r in results}
    print("\n### Targets (issue #6)\n")
    print("| target | measured | result |")
    print("|---|---|---|")
    ratio = f20.window.rate / f20.naive
    print(f"| F=20 end to end ≥ {TARGET_NAIVE_RATIO:.1f}× naive loop (a) | {ratio:.2f}× | "
          f"{mark(ratio >= TARGET_NAIVE_RATIO)} |")
    print(f"| F=100 end to end ≥ {TARGET_F100_RATE:,} events/s | {f100.window.rate:,.0f} | "
          f"{mark(f100.window.rate >= TARGET_F100_RATE)} |")
    scaling = pair.window.rate / one
    print(f"| two instances ≥ {TARGET_SCALING}× one | {scaling:.2f}× | {mark(scaling >= TARGET_SCALING)} |")
    worst = max(checkpoint.values())
    print(f"| checkpoint stage ≤ {TARGET_CHECKPOINT_SHARE:.0%} of the time | "
          + ", ".join(f"F={f}: {s:.1%}" for f, s in checkpoint.items())
          + f" | {mark(worst <= TARGET_CHECKPOINT_SHARE)} |")
    print(f"| serialised state ≤ {TARGET_STATE_BYTES:,} bytes per numeric column | "
          + ", ".join(f"F={f}: {s:,.0f}" for f, s in state.items())
          + f" | {mark(max(state.values()) <= TARGET_STATE_BYTES)} |")


# --- main ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="measured events per case")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_EVENTS:,} events per case")
    args = parser.parse_args()
    measured = QUICK_EVENTS if args.quick else args.events

    from stream_monitor.localstack import create_topics, start_broker, start_redis  # noqa: PLC0415

    workdir = Path(tempfile.mkdtemp(prefix="sm-bench-"))
    print(f"end-to-end throughput: {measured:,} measured events per case, logs in {workdir}", flush=True)
    started = []
    try:
        started.append(start_broker(str(workdir)))
        started.append(start_redis(str(workdir)))
        stack = Stack(started[0].address, started[1].address, workdir, [os.getpid(), started[0].pid, started[1].pid])
        create_topics(stack.bootstrap, {ALERTS: 1, DEAD_LETTERS: 1})
        results = []
        for features in FEATURES:
            begun = time.monotonic()
            lines = events(features, WARMUP + measured + PADDING)
            results.append(run_single(stack, features, lines, measured))
            print(f"F={features}: {results[-1].window.rate:,.0f} events/s end to end "
                  f"({time.monotonic() - begun:.0f} s for this case)", flush=True)
        begun = time.monotonic()
        pair = run_pair(stack, measured)
        print(f"two instances: {pair.window.rate:,.0f} events/s ({time.monotonic() - begun:.0f} s)", flush=True)
        report(results, pair, measured)
    finally:
        for process in reversed(started):
            process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
