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
It sets `fetch.queue.backoff.ms` = 10: with librdkafka's default (1,000 ms) a
consumer that empties its 100,000-message prefetch queue in well under a second
(this one does, ~600k/s) waits a second for each refill, which capped it at
~120k events/s once the topic held more than 100,000 events. The service keeps
the default: it takes over a second to drain that queue, so the refill comes in
time (its six stages account for most of its window, see below).
Both run after the instance has stopped, (a) on the N measured events.

Scaling (F = 20), measured on live production so that the group's join cannot
overlap the window: a topic of P partitions (P = 1 and P = 2) holds only the
warm-ups (5,000 events per partition, each its own seed) when P `run` instances
of one group start. The script waits until the group has settled: replaying
each instance's log (`assigned TOPIC[p]: ...`, `revoked ...`, `lost ...`) every
instance owns exactly one partition and together they own all P, and every
partition's stored offset is ≥ 5,000 (its warm-up was processed and
checkpointed). Only then does this process produce the measured events (N/P per
partition, interleaved) and the padding, pre-serialised, as fast as its producer
goes; the clock starts when production starts and stops when the last partition
stores an offset ≥ 5,000 + N/P. Events timed = every partition's stored offset
at that moment (interpolated between its own checkpoints for the partitions that
finished earlier; exact for the last one) minus the warm-up, so the rate counts
what was done, not only N. The padding makes those checkpoints count-triggered.
How long the production took (to the last delivery report) is shown next to the
window, so a reader sees whether the producer could have been the limit; it
runs in this process, on the same 2 cores; the CPU this process (mostly the producer), the
broker and Redis used during the window is shown too. Both rows are measured this way, so
'vs one' compares like with like; the first table's F = 20 rate (pre-produced
data) is shown beside them, and so is the rate from the end of production to the
end of the window (each partition's offset interpolated at both ends), the part
in which the producer no longer shares the cores; the target uses the whole
window. The assignment changes logged during the window
must be 0 (the group stayed put).

One model keyed by event id (F = 20), `decisions = "model"`: a topic of 4
partitions, each event keyed by its event id and sent to partition crc32(id) % 4
(what librdkafka's default partitioner does with a key), so the one model's
events spread over all four. The model's reference is a stored one:
`stream-monitor reference build` itself (a subprocess of the CLI) stores it,
from 5,000 seeded events of the same distribution, before the instances start
(so no warm-up is in the timed window).
The topic then holds a lead-in (~1,000 events per partition) and 1, then 2,
instances of one group start (their own metrics ports); once the group has
settled (each instance owns as many partitions, all owned) and every partition
has stored its lead-in, the measured events (N over the 4 partitions) and the
padding are produced and timed as above. The headline is the rate once
production had ended (each partition's offset interpolated from the last
delivery report to the end of the window: the producer no longer shares the
cores); the ratio of that rate, 2 instances over 1, is the target. Where the time
goes is summed over the instances between a scrape just before production and
one after the window closed: `merge` (a loop stage of the instance that owns the
model's merge: reading the partials, deciding the model's windows, saving its
state) and `detect › sketch` (every partition adding its events to the partial
sketches) are the model-level merge's cost; the merging instance's own shares
are shown beside.

The workload is realistic by default, as model servers write events: every
value a full-precision float64 (17-19 characters), an epoch timestamp with
microseconds, three categorical features after the numeric ones and 1 % of the
numeric values null (see events()). `--rounded` gives every case the former
workload (values rounded to 4 decimals, no timestamp, numeric features only);
one F = 20 case of the other workload is run for comparison either way
(`--no-comparison` skips it). The targets are read on the chosen workload.

The label join is on by default in the service; here it is off (the model's
`[performance] enabled = false`) unless --join is given, except in the join's
own cases (`--no-join-cases` skips them): the same F = 20 stream with the join
on (task = classification), without labels and with a label event for every
second prediction LABEL_DELAY events after it, beside the join-off case. Their
table gives the cost per prediction (the window's seconds, and the instance's
CPU, over its inference events: label events are a cost of their predictions)
against the join-off case, and what Redis was asked meanwhile (INFO ALL read
right after each window's two scrapes; this script's own offset polls taken
out): round trips (socket writes), EVALSHA calls per join op, Redis CPU and
bytes per event, and the bytes per joined label beyond the join-off case.

Last, the inputs of docs/CAPACITY.md (CPU per event as a fixed part plus a part
per column, through the F = 20 and F = 100 cases; the checkpoint's cost per
checkpoint per column; Redis traffic and memory per column; the join's costs,
the Redis-only ones from the --join-cost measurement) and the projection
project() makes from them for 1,000,000 events/s over 10,000 models of 50
features.

Nothing is asserted on timings: the targets table says PASS or MISS.

    make bench                                   # or: .venv/bin/python bench/throughput.py
    .venv/bin/python bench/throughput.py --quick # a smoke run (20,000 events per case)
    .venv/bin/python bench/throughput.py --events 400000   # default 200,000
    .venv/bin/python bench/throughput.py --merged-only     # only the model keyed by event id, 1 vs 2 instances
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import re
import sys
import tempfile
import subprocess
import threading
import time
import urllib.request
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families
from river import drift

from stream_monitor.config import ServiceConfig
from stream_monitor.demo.localstack import MonitorProcess

WARMUP = 5_000
DEFAULT_EVENTS = 200_000
QUICK_EVENTS = 20_000
FEATURES = (20, 100)
SCALE_FEATURES = 20
CHECKPOINT_EVENTS = ServiceConfig().checkpoint_interval_events  # the default (not overridden here)
BATCH = ServiceConfig().batch_size
PADDING = 2 * CHECKPOINT_EVENTS + 2 * BATCH  # keeps the monitor busy past the end of the window
FAST_CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 50}
LOOP_STAGES = ("consume", "decode", "join", "detect", "produce", "checkpoint")
MERGE_STAGE = "merge"  # a loop stage too, exported only by an instance that merges a model's partials
MERGED_PARTITIONS = 4  # the model keyed by event id: its topic's partitions
LEAD = 1_000  # about this many events per partition before the instances start (the group settles on them)
REFERENCE_EVENTS = 5_000  # the stored reference's events (`stream-monitor reference build`)
ALERTS, DEAD_LETTERS = "bench.alerts", "bench.dead-letters"
LABEL_DELAY = 500  # inference events between a prediction and its label (with --labels)
POLL = 0.01  # seconds between reads of the stored offsets
LOAD_EVERY = 0.25  # seconds between reads of the machine's CPU counters

# Targets of issues #6 and #16.
TARGET_NAIVE_RATIO = 2.0
TARGET_DECODE_SHARE = 0.35  # of the decode-only consumer (b), F = 20
TARGET_F100_RATE = 30_000
TARGET_JOIN_COST = 1.5  # labels for half the predictions, joined: at most this × the cost per prediction without
TARGET_SCALING = 1.7
TARGET_CHECKPOINT_SHARE = 0.10
TARGET_STATE_BYTES = 8192


# --- workload and baselines (pure; tests/unit/test_bench.py runs them) ------------------------------------


CATEGORIES = {"country": ("DE", "FR", "US", "GB", "ES", "IT", "PL", "NL"), "device": ("ios", "android", "web"),
              "plan": ("free", "pro", "team", "enterprise")}  # realistic events' categorical features
NULL_RATE = 0.01  # realistic events: each numeric value is null with this probability
START_TIME = 1_764_720_000.0  # realistic events' first timestamp (epoch seconds, 2025-12-03T00:00:00Z)
EVENT_RATE = 20_000  # realistic events' timestamps advance by this many events per second on average


def events(features: int, count: int, seed: int = 1, labels_every: int = 0, rounded: bool = False) -> list[bytes]:
    """`count` seeded, stationary inference events of model `m`: feature j ~ N(j, 1 + j % 3), score ~ U(0, 1).

    Realistic by default, as model servers write them: every value a full-precision float64 (its shortest
    repr, 17-19 characters), an epoch `timestamp` in seconds with microseconds (advancing EVENT_RATE events
    per second on average), the categorical features of CATEGORIES after the numeric ones, and each numeric
    value null with probability NULL_RATE. `rounded`: the former workload (values rounded to 4 decimals, no
    timestamp, numeric features only), kept for comparison.
    With `labels_every` = k > 0, every k-th prediction also gets its label event (1 with probability its
    score, so the error stream is stationary), LABEL_DELAY inference events after it (timestamped likewise
    unless `rounded`)."""
    rng = random.Random(seed)
    labels = random.Random(seed + 1_000_000)
    out, scores = [], []
    now = START_TIME
    for i in range(count):
        if rounded:
            values = {f"f{j}": round(rng.gauss(j, 1 + j % 3), 4) for j in range(features)}
            score = round(rng.random(), 4)
            doc = {"event_id": f"e{seed}-{i}", "model_id": "m", "features": values, "prediction": {"score": score}}
        else:
            now += rng.expovariate(EVENT_RATE)
            values = {f"f{j}": None if rng.random() < NULL_RATE else rng.gauss(j, 1 + j % 3) for j in range(features)}
            for name, choices in CATEGORIES.items():
                values[name] = choices[min(int(rng.expovariate(1.0)), len(choices) - 1)]  # skewed, stationary
            score = rng.random()
            doc = {"event_id": f"e{seed}-{i}", "model_id": "m", "timestamp": round(now, 6), "features": values,
                   "prediction": {"score": score}}
        out.append(orjson.dumps(doc))
        if labels_every:
            scores.append((score, now))
            late = i - LABEL_DELAY
            if late >= 0 and late % labels_every == 0:
                label = {"event_id": f"e{seed}-{late}", "model_id": "m",
                         "label": int(labels.random() < scores[late][0])}
                if not rounded:
                    label["timestamp"] = round(now, 6)
                out.append(orjson.dumps(label))
    return out


def offset_after(lines: list[bytes], inference: int) -> int:
    """The offset just past the `inference`-th inference event of `lines` (label events interleaved)."""
    seen = 0
    for offset, line in enumerate(lines):
        seen += b'"features"' in line
        if seen == inference:
            return offset + 1
    return len(lines)


def naive_rate(lines: list[bytes], features: int) -> float:
    """Baseline (a): orjson.loads per event, river's ADWIN and PageHinkley (defaults) per numeric feature
    (the first `features`; a null is skipped, a categorical feature is not looked at)."""
    adwins = [drift.ADWIN() for _ in range(features)]
    hinkleys = [drift.PageHinkley() for _ in range(features)]
    started = time.perf_counter()
    for line in lines:
        doc = orjson.loads(line)
        for j, value in zip(range(features), doc["features"].values()):
            if value is not None:
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


def live_window(timelines: dict[int, Timeline], begun: float, start: int | dict[int, int],
                targets: dict[int, int]) -> Window:
    """Events/s of all partitions together from `begun` (production started; every partition had stored
    exactly `start` (one offset for all, or one per partition) and had nothing more to read) to the moment
    the last partition stores an offset ≥ its target. Events = each partition's stored offset then
    (interpolated between its own checkpoints) − its start."""
    starts = start if isinstance(start, dict) else dict.fromkeys(timelines, start)
    closed = max(timelines[p][first_at_least(timelines[p], targets[p])][0] for p in timelines)
    done = sum(value_at(timelines[p], closed) - starts[p] for p in timelines)
    return Window(done, closed - begun, begun)


def busy_window(timelines: dict[int, Timeline], opened: float, closed: float) -> Window | None:
    """Events/s of all partitions together between two moments at which they were all busy, each
    partition's stored offset interpolated between its own checkpoints (None for an empty span)."""
    if closed <= opened:
        return None
    done = sum(value_at(timeline, closed) - value_at(timeline, opened) for timeline in timelines.values())
    return Window(done, closed - opened, opened)


_CHANGE = re.compile(r": (assigned|revoked|lost) (.*)$")


def ownership(log: str, topic: str) -> tuple[set[int], int]:
    """Replays one instance's log: the partitions of `topic` it owns after its last complete line, and
    how many assignment changes it logged (`assigned T[p]: ...`, `revoked T[p], ...`/`revoked nothing`,
    `lost T[p], ... without a clean revoke`; 'revoked nothing' is not a change)."""
    partition = re.compile(re.escape(topic) + r"\[(\d+)\]")
    owned: set[int] = set()
    changes = 0
    for line in log[:log.rfind("\n") + 1].splitlines():  # a line still being written is ignored
        match = _CHANGE.search(line)
        if match is None:
            continue
        kind, rest = match.groups()
        if kind == "assigned":
            found = partition.match(rest)
            if found is not None:
                owned.add(int(found.group(1)))
                changes += 1
        else:
            gone = {int(p) for p in partition.findall(rest.split(" without ", 1)[0])}
            owned -= gone
            changes += bool(gone)
    return owned, changes


def settled(logs: list[str], topic: str, partitions: int, per_instance: int = 1) -> list[set[int]] | None:
    """Each instance's partitions if the group has settled (every instance owns exactly `per_instance`
    partitions, no partition is owned twice and together they own all `partitions`), else None."""
    owned = [ownership(log, topic)[0] for log in logs]
    if (all(len(o) == per_instance for o in owned) and sum(map(len, owned)) == partitions
            and set().union(*owned) == set(range(partitions))):
        return owned
    return None


def keyed_by_event_id(lines: list[bytes], partitions: int) -> dict[int, list[tuple[bytes, bytes]]]:
    """(key, event) per partition, in order: the key is the event id and the partition crc32(key) % P
    (what librdkafka's default partitioner does with a key), so one model's events spread over all P."""
    out: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(partitions)}
    for line in lines:
        key = orjson.loads(line)["event_id"].encode()
        out[zlib.crc32(key) % partitions].append((key, line))
    return out


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


def loop_stages(stages: dict[str, float]) -> tuple[str, ...]:
    """The loop's stages: the six, and merge when the service exported it (a model-level merge ran)."""
    return LOOP_STAGES + ((MERGE_STAGE,) if MERGE_STAGE in stages else ())


def stage_rows(before: dict[str, float], after: dict[str, float]) -> list[tuple[str, float, float]]:
    """(name, seconds, share of the loop's time) per loop stage in the window between two scrapes;
    any other stage (a detector kind of the engine) follows detect as '  detect › name'."""
    delta = {stage: after.get(stage, 0.0) - before.get(stage, 0.0) for stage in after}
    stages = loop_stages(delta)
    total = sum(delta.get(stage, 0.0) for stage in stages) or 1.0
    rows = []
    for stage in stages:
        rows.append((stage, delta.get(stage, 0.0), delta.get(stage, 0.0) / total))
        if stage == "detect":
            inner = sorted((s for s in delta if s not in stages), key=lambda s: -delta[s])
            rows += [(f"detect › {s}", delta[s], delta[s] / total) for s in inner]
    return rows


# --- processes ---------------------------------------------------------------------------------------


class Monitor(MonitorProcess):
    """One `python -m stream_monitor run -c CONFIG` subprocess (the tests' and demo's), with what the
    benchmark reads of it."""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"monitor exited early ({self.process.returncode}):\n{self.log()[-3000:]}")

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")


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
    its broker, Redis and monitors), to show when the machine was shared, and those used by the `pids`
    given at construction (this script, the broker and Redis: the producer's side of a live run)."""

    def __init__(self, store, topic: str, partitions: list[int], pids: list[int]):
        super().__init__(daemon=True)
        self.store, self.topic, self.pids = store, topic, pids
        self.timelines: dict[int, Timeline] = {p: [] for p in partitions}
        self.load: list[tuple[float, float]] = []
        self.stack_pids = list(pids)
        self.stack_load: list[tuple[float, float]] = []
        self.ours: list[tuple[float, float]] = []  # CPU seconds of every pid (the stack's and the monitors')
        self.polls: list[tuple[float, int]] = []  # (time, round trips) of this watch's reads so far
        self.poll_bytes = (0, 0)  # what one poll costs Redis on the wire: request, reply (RESP, estimated)
        self._halt = threading.Event()

    def other_cores(self, window: Window) -> float:
        """Cores used on average by other processes during `window`."""
        used = value_at(self.load, window.start + window.seconds) - value_at(self.load, window.start)
        return used / window.seconds

    def stack_cores(self, window: Window) -> float:
        """Cores used on average by this script, the broker and Redis during `window`."""
        used = value_at(self.stack_load, window.start + window.seconds) - value_at(self.stack_load, window.start)
        return used / window.seconds

    def monitor_cores(self, window: Window) -> float:
        """Cores used on average by the monitors (the pids added after construction) during `window`."""
        def used(series: list[tuple[float, float]]) -> float:
            return value_at(series, window.start + window.seconds) - value_at(series, window.start)
        return (used(self.ours) - used(self.stack_load)) / window.seconds

    def run(self) -> None:
        keys = {p: self.store.key(self.topic, p) for p in self.timelines}
        self.poll_bytes = (sum(len(f"*3\r\n$4\r\nHGET\r\n${len(k)}\r\n{k}\r\n$6\r\noffset\r\n") for k in keys.values()),
                           12 * len(keys))  # an HGET per partition and its bulk reply ($5\r\n12345\r\n)
        polled = 0
        next_load = 0.0
        while not self._halt.is_set():
            if time.monotonic() >= next_load:
                busy, ours = cpu_seconds(self.pids)
                self.load.append((time.monotonic(), busy - ours))
                self.ours.append((time.monotonic(), ours))
                self.stack_load.append((time.monotonic(), cpu_seconds(self.stack_pids)[1]))
                next_load = time.monotonic() + LOAD_EVERY
            pipe = self.store.client.pipeline(transaction=False)
            for key in keys.values():
                pipe.hget(key, "offset")
            values = pipe.execute()
            now = time.monotonic()
            polled += 1
            self.polls.append((now, polled))
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


def write_config(stack: Stack, path: Path, topic: str, group: str, metrics_port: int, join: bool = False,
                 by_model: bool = False) -> Path:
    """The default model config but per-partition decisions (the scenarios measured before model-level
    decisions were the default); only the connection, the consumer's timeouts and the metrics port are set
    (the label join is on by default: without `join` the model's performance table turns it off, with
    `join` it sets task = "classification"; with `by_model`, model-level decisions on a stored reference
    instead of the warm-up's)."""
    reference = ('reference = { source = "stored" }\ndecisions = "model"' if by_model
                 else f'reference = {{ source = "warmup", events = {WARMUP} }}\ndecisions = "partition"')
    performance = "\n[models.m.performance]\n" + ('task = "classification"\n' if join else "enabled = false\n")
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
{reference}
{performance}""")
    return path


def new_producer(bootstrap: str):
    """A producer already connected to the broker (its metadata fetched), so that sending starts at once."""
    from confluent_kafka import Producer  # noqa: PLC0415

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 1_048_576})
    producer.list_topics(timeout=30)
    return producer


def send_all(producer, topic: str, batches: dict[int, list[bytes] | list[tuple[bytes, bytes]]]) -> dict[int, int]:
    """Every event of each partition, in order, the partitions interleaved event by event (so that they
    fill at the same pace); returns when every message is acknowledged, with each partition's end offset.
    An event is its bytes (keyed by the model id) or (key, bytes)."""
    from stream_monitor.demo.localstack import produce_records  # noqa: PLC0415

    longest = max((len(lines) for lines in batches.values()), default=0)
    interleaved = ((partition, *(lines[i] if isinstance(lines[i], tuple) else (b"m", lines[i])), None)
                   for i in range(longest) for partition, lines in batches.items() if i < len(lines))
    return produce_records(producer, topic, interleaved, poll_every=1000 * max(len(batches), 1), flush_timeout=120)


def produce(bootstrap: str, topic: str, batches: dict[int, list[bytes]]) -> dict[int, int]:
    """Every event of each partition, in order; returns each partition's end offset."""
    return send_all(new_producer(bootstrap), topic, batches)


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


@dataclass
class RedisCounters:
    """Redis's own counters at one moment (one INFO ALL): commands, CPU, bytes and socket reads/writes."""
    when: float  # monotonic time of the read
    calls: dict[str, int]  # commandstats calls per command (scripts' inner commands counted too)
    usec: dict[str, int]
    cpu: float  # used_cpu_user + used_cpu_sys, seconds
    net_in: int
    net_out: int
    reads: int  # total_reads_processed: ~ one per request round trip (more for a request over 16 KiB)
    writes: int  # total_writes_processed: ~ one per reply round trip


def redis_counters(client) -> RedisCounters:
    info = client.info("all")
    calls = {k[len("cmdstat_"):]: v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}
    usec = {k[len("cmdstat_"):]: v["usec"] for k, v in info.items() if k.startswith("cmdstat_")}
    return RedisCounters(time.monotonic(), calls, usec, info["used_cpu_user"] + info["used_cpu_sys"],
                         info["total_net_input_bytes"], info["total_net_output_bytes"],
                         info.get("total_reads_processed", 0), info.get("total_writes_processed", 0))


@dataclass
class RedisTraffic:
    """What the monitor asked of Redis between two counter reads, the benchmark's own polls taken out (the
    two INFO calls remain: a few kB, one round trip each)."""
    calls: dict[str, int]
    cpu: float
    bytes_in: int
    bytes_out: int
    round_trips: int

    @property
    def scripts(self) -> int:
        return self.calls.get("evalsha", 0) + self.calls.get("eval", 0)


def redis_traffic(before: RedisCounters, after: RedisCounters, watch: "OffsetWatch") -> RedisTraffic:
    def polled(when: float) -> int:
        i = bisect.bisect_right([t for t, _ in watch.polls], when)
        return watch.polls[i - 1][1] if i else 0
    polls = polled(after.when) - polled(before.when)
    calls = {k: v - before.calls.get(k, 0) for k, v in after.calls.items()}
    calls["hget"] = calls.get("hget", 0) - polls * len(watch.timelines)
    calls = {k: v for k, v in calls.items() if v > 0 and k != "info"}
    request, reply = watch.poll_bytes
    return RedisTraffic(calls, after.cpu - before.cpu, after.net_in - before.net_in - polls * request,
                        after.net_out - before.net_out - polls * reply, after.writes - before.writes - polls)


def stop_all(monitors: list[Monitor]) -> None:
    """SIGTERM each instance; each must exit 0."""
    codes = [monitor.terminate(timeout=60.0) for monitor in monitors]
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
    rounded: bool = False  # the former workload (see events())
    join: bool = False
    labels: bool = False
    inference: int = 0  # inference events in the window
    label_events: int = 0  # label events in the window
    checkpoints: int = 0  # checkpoint intervals in the window
    monitor_cores: float = 0.0  # CPU of the instance during the window
    redis: RedisTraffic | None = None  # what the instance asked of Redis during the window
    event_bytes: float = 0.0  # mean size of an inference event of the window

    @property
    def case(self) -> str:
        return (f"F={self.features}" + (", rounded" if self.rounded else "")
                + (", join on" if self.join else "") + (", labels for half" if self.labels else ""))

    @property
    def columns(self) -> int:
        """The columns the default config monitors: the features (numeric and categorical) and the score."""
        return self.features + 1 + (0 if self.rounded else len(CATEGORIES))

    @property
    def cpu_us_per_event(self) -> float:
        """The instance's CPU per message of the window (inference and label events)."""
        return self.monitor_cores * self.window.seconds / self.window.events * 1e6


def timeout_for(events_count: int) -> float:
    return 120 + events_count / 500


def run_single(stack: Stack, features: int, lines: list[bytes], measured: int, join: bool = False,
               rounded: bool = False, labels: bool = False) -> SingleResult:
    """One instance on a one-partition topic holding `lines` (warm-up, measured events, padding); the window
    opens at the first checkpoint past the warm-up's WARMUP inference events (label events may be between)."""
    from stream_monitor.demo.localstack import create_topics, free_port  # noqa: PLC0415
    from stream_monitor.state import StateStore, connect  # noqa: PLC0415

    tag = uuid.uuid4().hex[:6]
    topic, group = f"bench.f{features}.{tag}", f"bench-f{features}-{tag}"
    create_topics(stack.bootstrap, {topic: 1})
    end = produce(stack.bootstrap, topic, {0: lines})[0]
    store = StateStore(connect(stack.redis_url), group, group)
    port = free_port()
    config = write_config(stack, stack.workdir / f"{group}.toml", topic, group, port, join)
    watch = OffsetWatch(store, topic, [0], list(stack.pids))
    warm = offset_after(lines, WARMUP)
    watch.start()
    monitor = None
    try:
        monitor = Monitor(config, stack.workdir / f"{group}.log")
        watch.pids.append(monitor.process.pid)
        timeout = timeout_for(len(lines))
        start, before = scrape_at_checkpoint(port, watch, warm, monitor, timeout)
        redis_before = redis_counters(store.client)
        stop, after = scrape_at_checkpoint(port, watch, warm + measured, monitor, timeout)
        redis_after = redis_counters(store.client)
        watch.wait_for(0, end, [monitor], timeout)  # every event processed and stored
        timeline = watch.timelines[0]
        (t0, o0), (t1, o1) = timeline[start], timeline[stop]
        if o1 >= end:
            print(f"note: F={features}: the window reached the end of the topic; its last interval may be idle")
        window = Window(o1 - o0, t1 - t0, t0)
        window.other_cores = watch.other_cores(window)
        rates = interval_rates(timeline[start:stop + 1])
        window.spread = (min(rates), max(rates))
        monitor_cores = watch.monitor_cores(window)
        traffic = redis_traffic(redis_before, redis_after, watch)
        peak = monitor.peak_rss_bytes()
        state, memory = redis_bytes(store, topic, 0)
        stop_all([monitor])
    finally:
        watch.stop()
        if monitor is not None:
            monitor.close()
    alerts = monitor.log().count("FIRING")
    inference = [line for line in lines[o0:o1] if b'"features"' in line]
    result = SingleResult(features, window, stage_rows(before.stages, after.stages), peak, state, memory, alerts,
                          rounded=rounded, join=join, labels=labels, inference=len(inference),
                          label_events=(o1 - o0) - len(inference), checkpoints=stop - start,
                          monitor_cores=monitor_cores, redis=traffic,
                          event_bytes=sum(map(len, inference)) / max(len(inference), 1))
    if not join:  # the join cases' stream is the no-join case's: same baselines
        result.decode_only = decode_only_rate(stack.bootstrap, topic, end)
        result.naive = naive_rate([line for line in lines[warm:warm + measured] if b'"features"' in line], features)
    delete_topic(stack.bootstrap, topic)
    return result


def decode_only_rate(bootstrap: str, topic: str, end: int) -> float:
    """Baseline (b): a consumer of its own group reads the topic from the beginning in batches of 500 and
    only orjson.loads each message; timed from the first batch received to the last message."""
    from confluent_kafka import Consumer  # noqa: PLC0415

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-decode-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **FAST_CONSUMER,
                         "fetch.queue.backoff.ms": 10})  # see the module docstring
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
class LiveResult:
    instances: int
    window: Window
    produced: int  # measured events + padding, all partitions
    production: float  # seconds from the first produce() to the last delivery report
    assignments: list[str]  # per instance, when the clock started
    joining_revokes: int  # revocations logged before the clock started
    changes: int  # assignment changes logged while the clock ran (0: the group stayed put)
    drained: list[int]  # partitions that had processed all their events before the clock stopped
    stack_cores: float = 0.0  # CPU of this script (the producer), the broker and Redis during the window
    after_production: Window | None = None  # from the end of production to the end of the window


def wait_settled(monitors: list[Monitor], watch: OffsetWatch, topic: str, partitions: int,
                 timeout: float, starts: dict[int, int] | None = None) -> list[set[int]]:
    """Until every instance owns its share of the partitions (each as many, all owned) and every
    partition's stored offset is ≥ the warm-up (or its own `starts`): each instance's partitions."""
    starts = starts or dict.fromkeys(range(partitions), WARMUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owners = settled([monitor.log() for monitor in monitors], topic, partitions, partitions // len(monitors))
        timelines = watch.timelines
        if owners is not None and all(timelines[p] and timelines[p][-1][1] >= starts[p] for p in timelines):
            return owners
        for monitor in monitors:
            monitor.check_alive()
        time.sleep(0.05)
    raise RuntimeError(f"the group did not settle within {timeout:.0f} s: "
                       f"{[sorted(ownership(m.log(), topic)[0]) for m in monitors]}, stored "
                       f"{ {p: tl[-1:] for p, tl in watch.timelines.items()} }")


def wait_past_targets(watch, partitions, targets: dict[int, int], ends: dict[int, int], monitors,
                      timeout: float) -> float:
    """Until every partition has reached its target offset, and each one's progress at the moment the last
    got there is known (a checkpoint after it, or the partition's end); that moment."""
    for p in partitions:
        watch.wait_for(p, targets[p], monitors, timeout)
    closed = max(watch.timelines[p][first_at_least(watch.timelines[p], targets[p])][0] for p in partitions)
    deadline = time.monotonic() + timeout
    while not all(watch.timelines[p][-1][0] >= closed or watch.timelines[p][-1][1] >= ends[p] for p in partitions):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no checkpoint after the window closed within {timeout:.0f} s")
        for monitor in monitors:
            monitor.check_alive()
        time.sleep(POLL)
    return closed


def run_live(stack: Stack, instances: int, measured: int, rounded: bool = False) -> LiveResult:
    """`instances` instances in one group on a topic of as many partitions, holding only the warm-ups when
    they start; once the group has settled, N/instances measured events per partition (and the padding)
    are produced, timed from the start of production (see the module docstring)."""
    from stream_monitor.demo.localstack import create_topics  # noqa: PLC0415
    from stream_monitor.state import StateStore, connect  # noqa: PLC0415

    tag = uuid.uuid4().hex[:6]
    topic, group = f"bench.live{instances}.{tag}", f"bench-live{instances}-{tag}"
    partitions = list(range(instances))
    share = measured // instances
    create_topics(stack.bootstrap, {topic: instances})
    streams = {p: events(SCALE_FEATURES, WARMUP + share + PADDING, seed=10 + p, rounded=rounded) for p in partitions}
    producer = new_producer(stack.bootstrap)
    send_all(producer, topic, {p: lines[:WARMUP] for p, lines in streams.items()})
    rest = {p: lines[WARMUP:] for p, lines in streams.items()}
    del streams
    store = StateStore(connect(stack.redis_url), group, group)
    config = write_config(stack, stack.workdir / f"{group}.toml", topic, group, 0)
    watch = OffsetWatch(store, topic, partitions, list(stack.pids))
    watch.start()
    monitors: list[Monitor] = []
    try:
        for i in range(1, instances + 1):
            monitors.append(Monitor(config, stack.workdir / f"{group}-{i}.log"))
            watch.pids.append(monitors[-1].process.pid)
        timeout = timeout_for(WARMUP * instances + measured)
        owners = wait_settled(monitors, watch, topic, instances, timeout)
        before = [ownership(monitor.log(), topic)[1] for monitor in monitors]
        joining_revokes = sum(1 for monitor in monitors for line in monitor.log().splitlines()
                              if "revoked " in line and "revoked nothing" not in line)
        begun = time.monotonic()
        ends = send_all(producer, topic, rest)
        production = time.monotonic() - begun
        targets = {p: WARMUP + share for p in partitions}
        closed = wait_past_targets(watch, partitions, targets, ends, monitors, timeout)
        window = live_window(watch.timelines, begun, WARMUP, targets)
        window.other_cores = watch.other_cores(window)
        stack_cores = watch.stack_cores(window)
        after_production = busy_window(watch.timelines, begun + production, window.start + window.seconds)
        drained = [p for p in partitions if value_at(watch.timelines[p], closed) >= ends[p]]
        after = [ownership(monitor.log(), topic)[1] for monitor in monitors]  # before SIGTERM: it revokes
        stop_all(monitors)
    finally:
        watch.stop()
        for monitor in monitors:
            monitor.close()
    delete_topic(stack.bootstrap, topic)
    assignments = [", ".join(f"{topic}[{p}]" for p in sorted(owned)) for owned in owners]
    return LiveResult(instances, window, sum(len(lines) for lines in rest.values()), production, assignments,
                      joining_revokes, sum(after) - sum(before), drained, stack_cores, after_production)


@dataclass
class MergedResult:
    """One model keyed by event id over MERGED_PARTITIONS partitions, model-level decisions."""
    instances: int
    window: Window  # from the start of production
    after_production: Window | None  # from the end of production to the end of the window: the headline
    produced: int
    production: float
    assignments: list[str]
    changes: int
    stages: list[tuple[str, float, float]]  # all instances together, between the scrapes around the window
    merger_stages: list[tuple[str, float, float]]  # the instance that merges the model's partials
    merges: float  # merge steps that merged buckets (stream_monitor_merge_buckets_total, all instances)
    alerts: int
    drained: list[int]
    stack_cores: float = 0.0
    monitor_cores: float = 0.0  # CPU of the instances together during the window after production
    owners: list[set[int]] = field(default_factory=list)  # each instance's partitions
    redis: RedisTraffic | None = None  # from just before production to after the window closed
    checkpoints: int = 0  # stored offsets (checkpoints of all partitions) in that span
    processed: float = 0.0  # events processed in that span (all partitions)


def build_stored_reference(config: Path, workdir: Path, rounded: bool = False) -> str:
    """The model's reference stored in Redis by `stream-monitor reference build` itself (a subprocess of
    the CLI, as an operator runs it), from REFERENCE_EVENTS seeded events of the same distribution."""
    source = workdir / "reference.jsonl"
    source.write_bytes(b"\n".join(events(SCALE_FEATURES, REFERENCE_EVENTS, seed=99, rounded=rounded)) + b"\n")
    done = subprocess.run([sys.executable, "-m", "stream_monitor", "reference", "build", "-c", str(config),
                           "--model", "m", "--input", str(source)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"reference build failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def scrape_all(ports: list[int]) -> list[dict[str, float]]:
    return [scrape(port).stages for port in ports]


def merge_buckets(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "stream_monitor_merge_buckets_total")


def summed(stages: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for one in stages:
        for name, seconds in one.items():
            out[name] = out.get(name, 0.0) + seconds
    return out


def run_merged(stack: Stack, instances: int, measured: int, join: bool = False, rounded: bool = False) -> MergedResult:
    """`instances` instances of one group on a MERGED_PARTITIONS-partition topic of one 20-feature model
    keyed by event id, `decisions = "model"` on a stored reference. The topic holds only a lead-in (~LEAD
    events per partition) when they start; once the group has settled and every partition has stored its
    lead-in, the measured events and the padding are produced, timed as in run_live."""
    from stream_monitor.demo.localstack import create_topics, free_port  # noqa: PLC0415
    from stream_monitor.state import StateStore, connect  # noqa: PLC0415

    tag = uuid.uuid4().hex[:6]
    topic, group = f"bench.merged{instances}.{tag}", f"bench-merged{instances}-{tag}"
    partitions = list(range(MERGED_PARTITIONS))
    lead_count = LEAD * MERGED_PARTITIONS
    # one instance reads its four partitions unevenly: a padding as large as the measured events keeps
    # every partition busy until the slowest one reaches its target
    lines = events(SCALE_FEATURES, lead_count + measured + max(PADDING * MERGED_PARTITIONS, measured), seed=40,
                   rounded=rounded)
    lead = keyed_by_event_id(lines[:lead_count], MERGED_PARTITIONS)
    body = keyed_by_event_id(lines[lead_count:lead_count + measured], MERGED_PARTITIONS)
    padding = keyed_by_event_id(lines[lead_count + measured:], MERGED_PARTITIONS)
    del lines
    starts = {p: len(lead[p]) for p in partitions}
    targets = {p: starts[p] + len(body[p]) for p in partitions}
    rest = {p: body[p] + padding[p] for p in partitions}
    create_topics(stack.bootstrap, {topic: MERGED_PARTITIONS})
    ports = [free_port() for _ in range(instances)]
    configs = [write_config(stack, stack.workdir / f"{group}-{i + 1}.toml", topic, group, port, join, by_model=True)
               for i, port in enumerate(ports)]
    print(f"  {build_stored_reference(configs[0], stack.workdir, rounded)}", flush=True)
    producer = new_producer(stack.bootstrap)
    send_all(producer, topic, lead)
    store = StateStore(connect(stack.redis_url), group, group)
    watch = OffsetWatch(store, topic, partitions, list(stack.pids))
    watch.start()
    monitors: list[Monitor] = []
    try:
        for i, config in enumerate(configs):
            monitors.append(Monitor(config, stack.workdir / f"{group}-{i + 1}.log"))
            watch.pids.append(monitors[-1].process.pid)
        timeout = timeout_for(lead_count + measured)
        owners = wait_settled(monitors, watch, topic, MERGED_PARTITIONS, timeout, starts)
        before = [ownership(monitor.log(), topic)[1] for monitor in monitors]
        scraped = scrape_all(ports)
        redis_before = redis_counters(store.client)
        begun = time.monotonic()
        ends = send_all(producer, topic, rest)
        production = time.monotonic() - begun
        closed = wait_past_targets(watch, partitions, targets, ends, monitors, timeout)
        after_scrape = scrape_all(ports)
        redis_after = redis_counters(store.client)
        merges = sum(merge_buckets(port) for port in ports)
        window = live_window(watch.timelines, begun, starts, targets)
        window.other_cores = watch.other_cores(window)
        stack_cores = watch.stack_cores(window)
        after_production = busy_window(watch.timelines, begun + production, window.start + window.seconds)
        if after_production is not None:
            after_production.other_cores = watch.other_cores(after_production)
        monitor_cores = watch.monitor_cores(after_production or window)
        traffic = redis_traffic(redis_before, redis_after, watch)
        saves = sum(1 for p in partitions for t, _ in watch.timelines[p] if begun <= t <= redis_after.when)
        processed = sum(value_at(watch.timelines[p], redis_after.when) - starts[p] for p in partitions)
        drained = [p for p in partitions if value_at(watch.timelines[p], closed) >= ends[p]]
        after = [ownership(monitor.log(), topic)[1] for monitor in monitors]  # before SIGTERM: it revokes
        stop_all(monitors)
    finally:
        watch.stop()
        for monitor in monitors:
            monitor.close()
    delete_topic(stack.bootstrap, topic)
    merger = next((i for i, a in enumerate(after_scrape) if MERGE_STAGE in a), 0)
    assignments = [", ".join(f"{topic}[{p}]" for p in sorted(owned)) for owned in owners]
    return MergedResult(instances, window, after_production, sum(len(v) for v in rest.values()), production,
                        assignments, sum(after) - sum(before), stage_rows(summed(scraped), summed(after_scrape)),
                        stage_rows(scraped[merger], after_scrape[merger]), merges,
                        sum(monitor.log().count("FIRING") for monitor in monitors), drained, stack_cores,
                        monitor_cores, owners, traffic, saves, processed)


# --- report --------------------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass(frozen=True)
class Case:
    """One single-instance case: a workload and whether the label join runs (and labels come)."""
    features: int
    rounded: bool = False
    join: bool = False
    labels: bool = False


def single_cases(args: argparse.Namespace) -> list[Case]:
    """The single-instance cases of a run: F = 20 and F = 100 on the chosen workload (--join, --labels as
    given), then F = 20 on the other workload (realistic vs rounded; --no-comparison skips it), then the join's
    cost at F = 20 (--no-join-cases skips it): the same stream with the join on, without labels and with
    labels for half the predictions, beside the first case with the join off."""
    if getattr(args, "join_only", False):  # --join-only: the join's three cases alone
        return [Case(SCALE_FEATURES, args.rounded, join, labels) for join, labels in
                ((False, False), (True, False), (True, True))]
    main = [Case(f, args.rounded, args.join, args.labels) for f in FEATURES]
    cases = list(main)
    if not args.no_comparison:
        cases.append(Case(SCALE_FEATURES, not args.rounded, args.join, args.labels))
    if not args.no_join_cases:
        for case in (Case(SCALE_FEATURES, args.rounded, False, False), Case(SCALE_FEATURES, args.rounded, True, False),
                     Case(SCALE_FEATURES, args.rounded, True, True)):
            if case not in cases:
                cases.append(case)
    return cases


def join_rows(results: list[SingleResult]) -> list[tuple[SingleResult, dict[str, float]]]:
    """The F = 20 cases of the join's cost (same workload), each with what it costs beside the case with the
    join off: seconds and CPU per prediction and their ratios, Redis round trips and script calls, bytes."""
    off = next((r for r in results if r.features == SCALE_FEATURES and not r.join and not r.labels
                and r.redis is not None), None)
    if off is None:
        return []
    rows = []
    for r in results:
        if r.features != SCALE_FEATURES or r.rounded != off.rounded or r.redis is None or r.window.events <= 0:
            continue
        per_prediction = r.window.seconds / max(r.inference, 1)
        cpu_per_prediction = r.monitor_cores * r.window.seconds / max(r.inference, 1)
        base, base_cpu = off.window.seconds / max(off.inference, 1), off.monitor_cores * off.window.seconds / max(off.inference, 1)
        scale = r.inference / max(off.inference, 1)  # the join-off case's traffic for as many predictions
        checkpoint_scripts = off.redis.scripts / max(off.checkpoints, 1)
        ops = r.inference + r.label_events if r.join else 0
        extra_bytes = (r.redis.bytes_in + r.redis.bytes_out) - (off.redis.bytes_in + off.redis.bytes_out) * scale
        rows.append((r, {
            "us_per_prediction": per_prediction * 1e6,
            "cpu_us_per_prediction": cpu_per_prediction * 1e6,
            "ratio": per_prediction / base if base else 0.0,
            "cpu_ratio": cpu_per_prediction / base_cpu if base_cpu else 0.0,
            "round_trips_per_1000": r.redis.round_trips / r.window.events * 1000,
            "extra_round_trips_per_1000": (r.redis.round_trips - off.redis.round_trips * scale) / r.window.events * 1000,
            "scripts_per_op": (r.redis.scripts - checkpoint_scripts * r.checkpoints) / ops if ops else 0.0,
            "redis_cpu_us": r.redis.cpu / r.window.events * 1e6,
            "bytes_in": r.redis.bytes_in / r.window.events,
            "bytes_out": r.redis.bytes_out / r.window.events,
            "bytes_per_label": extra_bytes / r.label_events if r.label_events else 0.0,
            "bytes_per_prediction": extra_bytes / r.inference if r.join and r.inference else 0.0,
            "join_share": next((share for name, _, share in r.stages if name == "join"), 0.0),
        }))
    return rows


def report(results: list[SingleResult], live: list[LiveResult], measured: int) -> None:
    print(f"\n### End to end, one instance, one partition ({WARMUP:,} warm-up events not timed; "
          f"~{measured:,} measured)\n")
    print("Workload: realistic events (full-precision floats, an epoch timestamp, "
          f"{len(CATEGORIES)} categorical features, {NULL_RATE:.0%} of numeric values null) unless 'rounded' "
          "(values rounded to 4 decimals, no timestamp, numeric only). Events timed count label events too.\n")
    print("| case | event bytes | events timed | seconds | service events/s | slowest–fastest checkpoint interval | "
          "naive loop (a) events/s | decode-only consumer (b) events/s | service / (a) | service / (b) | "
          "instance CPU (cores) | CPU taken by others (cores) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        baselines = (f"{r.naive:,.0f} | {r.decode_only:,.0f} | {r.window.rate / r.naive:.2f} | "
                     f"{r.window.rate / r.decode_only:.3f}" if r.naive and r.decode_only else "– | – | – | –")
        print(f"| {r.case} | {r.event_bytes:,.0f} | {r.window.events:,.0f} | {r.window.seconds:.2f} | "
              f"{r.window.rate:,.0f} | {r.window.spread[0]:,.0f}–{r.window.spread[1]:,.0f} | {baselines} | "
              f"{r.monitor_cores:.2f} | {r.window.other_cores:.2f} |")
    print("\n| case | columns (numeric + categorical) | peak RSS of the instance MiB | stored state blob bytes | "
          "per column | Redis MEMORY USAGE of the state hash | per column | alerts fired |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.case} | {r.columns} | {r.peak_rss / 2**20:,.0f} | {r.state_bytes:,} | "
              f"{r.state_bytes / r.columns:,.0f} | {r.memory_usage:,} | {r.memory_usage / r.columns:,.0f} | {r.alerts} |")

    print("\n### Where the time goes (stream_monitor_stage_seconds_total, same window)\n")
    print("| stage | " + " | ".join(f"{r.case} s | share" for r in results) + " |")
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
    covered = [f"{r.case}: the six stages add up to {sum(s for n, s, _ in r.stages if n in LOOP_STAGES):.2f} s "
               f"of the {r.window.seconds:.2f} s window" for r in results]
    print("\nShares are of the loop's six stages; 'detect › …' rows are the engine's parts of detect. "
          + "; ".join(covered) + ".")

    joins = join_rows(results)
    if len(joins) > 1:
        print(f"\n### The label join end to end (F = {SCALE_FEATURES}; the same stream; through the broker and Redis)\n")
        print("| case | events/s | µs per prediction | vs join off | instance CPU vs join off | join stage share | "
              "Redis round trips per 1,000 events | of them the join's | join script calls per op | "
              "Redis CPU µs per event | Redis bytes in / out per event | Redis bytes per joined label |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r, c in joins:
            print(f"| {r.case} | {r.window.rate:,.0f} | {c['us_per_prediction']:.1f} | {c['ratio']:.2f}× | "
                  f"{c['cpu_ratio']:.2f}× | {c['join_share']:.1%} | {c['round_trips_per_1000']:.2f} | "
                  + (f"{c['extra_round_trips_per_1000']:.2f} | {c['scripts_per_op']:.4f} | " if r.join else "– | – | ")
                  + f"{c['redis_cpu_us']:.2f} | {c['bytes_in']:,.0f} / {c['bytes_out']:,.0f} | "
                  + (f"{c['bytes_per_label']:,.0f} |" if r.label_events else "– |"))
        print("\nPer prediction: the window's seconds (or the instance's CPU) over its inference events, so label "
              "events are a cost of their predictions. The join's round trips and bytes: this case's Redis traffic "
              "minus the join-off case's for as many predictions (its checkpoints); script calls per op: the join's "
              "EVALSHA calls over its ops (a prediction or a label arriving), the checkpoints' taken out.")

    if live:  # (skipped with --single-only)
        single = next(r for r in results if r.features == SCALE_FEATURES)
        one = live[0].window.rate
        print(f"\n### Two instances, two partitions vs one (F = {SCALE_FEATURES}; live production, "
              "timed from its start)\n")
        print("| instances | partitions | events timed | seconds | events/s | vs one | events produced (measured + "
              "padding) | production s | production events/s | CPU of this process (producer), broker and Redis (cores) | "
              "CPU taken by others (cores) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in live:
            print(f"| {r.instances} | {r.instances} | {r.window.events:,.0f} | {r.window.seconds:.2f} | "
                  f"{r.window.rate:,.0f} | {r.window.rate / one:.2f} | {r.produced:,} | {r.production:.2f} | "
                  f"{r.produced / r.production:,.0f} | {r.stack_cores:.2f} | {r.window.other_cores:.2f} |")
        print(f"\nThe same single instance on pre-produced data (first table): {single.window.rate:,.0f} events/s.")
        tails = [r.after_production for r in live]
        if all(tails):
            print("Once production had ended (the producer no longer sharing the cores), to the same end: "
                  + "; ".join(f"{r.instances} instance(s) {t.events:,.0f} events in {t.seconds:.2f} s = {t.rate:,.0f} "
                              f"events/s" for r, t in zip(live, tails))
                  + f" ({tails[-1].rate / tails[0].rate:.2f}× one"
                  + ("; under a second: too short to mean much" if min(t.seconds for t in tails) < 1 else "")
                  + "). The targets use the whole window.")
        for r in live:
            print(f"{r.instances} instance(s), when the clock started: "
                  + "; ".join(f"instance {i + 1}: {a}" for i, a in enumerate(r.assignments))
                  + f"; revocations while joining: {r.joining_revokes}; assignment changes while timed: {r.changes}")
        for r in live:
            if r.changes:
                print(f"\nnote: {r.instances} instance(s): the group rebalanced while the clock ran; that rate is not "
                      "steady state.")
            if r.drained:
                print(f"\nnote: {r.instances} instance(s): partition(s) {r.drained} ran out of events before the "
                      "clock stopped; their idle time is counted.")
            if r.production > 0.8 * r.window.seconds:
                print(f"\nnote: {r.instances} instance(s): production took {r.production:.2f} s of the "
                      f"{r.window.seconds:.2f} s window: the producer may have been the limit.")

    busiest = max([r.window.other_cores for r in results] + [r.window.other_cores for r in live])
    if busiest > 0.1:
        print(f"\nnote: processes this benchmark did not start (and the hypervisor's steal) took up to {busiest:.2f} "
              f"of the {os.cpu_count()} cores on average during a timed window: rates measured then are lower than "
              "on an idle machine.")

    main = [r for r in results if r.rounded == results[0].rounded and r.join == results[0].join
            and r.labels == results[0].labels]
    by_f = {r.features: r for r in main}
    f20, f100 = by_f[20], by_f.get(100)  # (no F = 100 with --join-only)
    checkpoint = {r.features: next(share for name, _, share in r.stages if name == "checkpoint") for r in main}
    state = {r.features: r.state_bytes / r.columns for r in main}
    print(f"\n### Targets (issues #6 and #16; {'rounded' if f20.rounded else 'realistic'} events)\n")
    print("| target | measured | result |")
    print("|---|---|---|")
    ratio = f20.window.rate / f20.naive
    print(f"| F=20 end to end ≥ {TARGET_NAIVE_RATIO:.1f}× naive loop (a) | {ratio:.2f}× | "
          f"{mark(ratio >= TARGET_NAIVE_RATIO)} |")
    share = f20.window.rate / f20.decode_only
    print(f"| F=20 end to end ≥ {TARGET_DECODE_SHARE:.0%} of the decode-only consumer (b) | {share:.1%} | "
          f"{mark(share >= TARGET_DECODE_SHARE)} |")
    if f100 is not None:
        print(f"| F=100 end to end ≥ {TARGET_F100_RATE:,} events/s | {f100.window.rate:,.0f} | "
              f"{mark(f100.window.rate >= TARGET_F100_RATE)} |")
    labelled = next((c for r, c in joins if r.labels), None)
    if labelled is not None:
        print(f"| labels for half the predictions, joined: ≤ {TARGET_JOIN_COST}× the cost per prediction without "
              f"(join off) | {labelled['ratio']:.2f}× (instance CPU {labelled['cpu_ratio']:.2f}×) | "
              f"{mark(labelled['ratio'] <= TARGET_JOIN_COST)} |")
    if live:
        scaling = live[1].window.rate / live[0].window.rate
        print(f"| two instances ≥ {TARGET_SCALING}× one | {scaling:.2f}× | {mark(scaling >= TARGET_SCALING)} |")
    worst = max(checkpoint.values())
    print(f"| checkpoint stage ≤ {TARGET_CHECKPOINT_SHARE:.0%} of the time | "
          + ", ".join(f"F={f}: {s:.1%}" for f, s in checkpoint.items())
          + f" | {mark(worst <= TARGET_CHECKPOINT_SHARE)} |")
    print(f"| serialised state ≤ {TARGET_STATE_BYTES:,} bytes per column | "
          + ", ".join(f"F={f}: {s:,.0f}" for f, s in state.items())
          + f" | {mark(max(state.values()) <= TARGET_STATE_BYTES)} |")


def idle_instances(owners: list[set[int]], drained: list[int]) -> list[int]:
    """The instances (1-based) all of whose partitions had run out of events."""
    return [i + 1 for i, owned in enumerate(owners) if owned and owned <= set(drained)]


def merge_share(rows: list[tuple[str, float, float]]) -> tuple[float, float]:
    """(share of the loop's time in the merge stage, share in building the partial sketches)."""
    shares = {name: share for name, _, share in rows}
    return shares.get(MERGE_STAGE, 0.0), shares.get("detect › sketch", 0.0)


def report_merged(merged: list[MergedResult]) -> None:
    """The model keyed by event id: 1 vs 2 instances, the merge's share of the time, the target."""
    print(f"\n### One model keyed by event id over {MERGED_PARTITIONS} partitions, decisions = \"model\" "
          f"(F = {SCALE_FEATURES}; stored reference; live production)\n")
    print("| instances | events timed | seconds from the start of production | events/s | events/s once "
          "production had ended | seconds after production | vs one (after production) | production s | "
          "CPU of this process (producer), broker and Redis (cores) | CPU taken by others (cores) | "
          "instances' CPU after production (cores) | events per instance CPU second | CPU taken by others "
          "after production (cores) | merge steps' buckets | alerts fired |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    first = merged[0].after_production
    for r in merged:
        tail = r.after_production
        print(f"| {r.instances} | {r.window.events:,.0f} | {r.window.seconds:.2f} | {r.window.rate:,.0f} | "
              + (f"{tail.rate:,.0f} | {tail.seconds:.2f} | " if tail else "– | – | ")
              + (f"{tail.rate / first.rate:.2f} | " if tail and first else "– | ")
              + f"{r.production:.2f} | {r.stack_cores:.2f} | {r.window.other_cores:.2f} | {r.monitor_cores:.2f} | "
              + (f"{tail.rate / r.monitor_cores:,.0f} | {tail.other_cores:.2f} | " if tail and r.monitor_cores
                 else "– | – | ")
              + f"{r.merges:,.0f} | {r.alerts} |")
    for r in merged:
        print(f"{r.instances} instance(s), when the clock started: "
              + "; ".join(f"instance {i + 1}: {a}" for i, a in enumerate(r.assignments))
              + f"; assignment changes while timed: {r.changes}")
    print("\nWhere the time goes (stream_monitor_stage_seconds_total of every instance, summed, between the "
          "scrape just before production and the one after the window closed; 'detect › sketch' is every "
          "partition building its partial sketches, 'merge' the merging instance merging them and deciding):\n")
    print("| stage | " + " | ".join(f"{r.instances} inst. s | {r.instances} inst. share" for r in merged)
          + " | " + " | ".join(f"merging instance of {r.instances}: share" for r in merged) + " |")
    print("|---|" + "---|---|" * len(merged) + "---|" * len(merged))
    names: list[str] = []
    for r in merged:
        names += [name for name, _, _ in r.stages if name not in names]
    for name in names:
        cells = []
        for r in merged:
            row = next((row for row in r.stages if row[0] == name), None)
            cells.append(f"{row[1]:.2f} | {row[2]:.1%}" if row else "– | –")
        for r in merged:
            row = next((row for row in r.merger_stages if row[0] == name), None)
            cells.append(f"{row[2]:.1%}" if row else "–")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for r in merged:
        if r.changes:
            print(f"\nnote: {r.instances} instance(s): the group rebalanced while the clock ran.")
        if r.drained:
            print(f"\nnote: {r.instances} instance(s): partition(s) {r.drained} ran out of events before the "
                  "clock stopped (an instance is idle only when all of its partitions did: "
                  f"{idle_instances(r.owners, r.drained) or 'none'}).")
        if r.after_production is None or r.after_production.seconds < 1:
            print(f"\nnote: {r.instances} instance(s): under a second after production ended: too short to mean "
                  "much (more --events).")
    print("\nOn a machine with cores to spare one instance uses up to one core and two up to two; 'events per "
          "instance CPU second' is what the service does with the CPU it got.")
    if len(merged) > 1 and all(r.after_production for r in merged):
        scaling = merged[-1].after_production.rate / merged[0].after_production.rate
        merge, sketch = merge_share(merged[-1].stages)
        print("\n| target | measured | result |\n|---|---|---|")
        print(f"| keyed by event id: two instances ≥ {TARGET_SCALING}× one (once production had ended) | "
              f"{scaling:.2f}× | {mark(scaling >= TARGET_SCALING)} |")
        print(f"| the model-level merge's share of the time (2 instances: merge / sketches) | "
              f"{merge:.1%} / {sketch:.1%} | (shown) |")


# --- main ------------------------------------------------------------------------------------------------


# --- the label join's cost, and the inputs of docs/CAPACITY.md (--join-cost; Redis only, no broker) ----------


def join_workload(count: int, labels_every: int, seed: int = 1) -> list:
    """The join ops of `count` predictions of model `m` (each a score), every `labels_every`-th one followed by
    its label LABEL_DELAY predictions later (0: no labels), each with its message's identity."""
    from stream_monitor.join import JoinOp, label_record, prediction_record  # noqa: PLC0415

    rng = random.Random(seed)
    ops, offset = [], 0
    for i in range(count):
        ops.append(JoinOp("prediction", "m", f"e{seed}-{i}", prediction_record(round(rng.random(), 4), None, None),
                          f"bench|0|{offset}"))
        offset += 1
        late = i - LABEL_DELAY
        if labels_every and late >= 0 and late % labels_every == 0:
            ops.append(JoinOp("label", "m", f"e{seed}-{late}", label_record(1, None), f"bench|0|{offset}"))
            offset += 1
    return ops


@dataclass
class JoinCost:
    """What the join of one stream cost, per op (a prediction or a label arriving) and per batch."""

    ops: int
    batches: int
    wall_us: float  # per op, the client's wait for its batch included
    client_cpu_us: float  # per op, this process (building the calls, parsing the replies)
    script_us: float  # per op, Redis's time in the join's script calls (INFO commandstats)
    commands_per_batch: float  # Redis commands the scripts issue per batch (commandstats calls, scripts excluded)
    request_bytes: float  # per op, what Redis read (INFO stats total_net_input_bytes)
    reply_bytes: float  # per op, what Redis wrote back
    memory_per_pending: float  # Redis used_memory per prediction still held (pending or joined)


def measure_join(redis_url: str, labels_every: int, count: int, layout: str = "current") -> JoinCost:
    """One stream's join through a fresh namespace, in batches of BATCH ops, as the service sends it."""
    from stream_monitor.config import parse_config  # noqa: PLC0415
    from stream_monitor.join import RedisJoin, performance_settings  # noqa: PLC0415
    from stream_monitor.state import connect  # noqa: PLC0415

    client = connect(redis_url)
    settings = performance_settings(parse_config({"models": {"m": {"performance": {"task": "classification"}}}}))
    namespace = f"bench-join-{uuid.uuid4().hex[:6]}"
    if layout == "current":
        joiner = RedisJoin(client, namespace, settings)
    else:  # the former layout, from the tests' frozen copy
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.integration.former_join import FormerRedisJoin  # noqa: PLC0415
        joiner = FormerRedisJoin(client, namespace, settings)
    ops = join_workload(count, labels_every)
    joiner.run(ops[:1])  # scripts loaded, the former layout looked for
    memory_before = client.info("memory")["used_memory"]
    client.config_resetstat()
    net = client.info("stats")
    wall = cpu = 0.0
    batches = 0
    for start in range(1, len(ops), BATCH):
        batch = ops[start:start + BATCH]
        began, cpu_began = time.perf_counter(), time.process_time()
        joiner.run(batch)
        wall += time.perf_counter() - began
        cpu += time.process_time() - cpu_began
        batches += 1
    stats = client.info("commandstats")
    script = sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    commands = sum(v["calls"] for k, v in stats.items()
                   if k not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_info", "cmdstat_script|exists"))
    after = client.info("stats")  # bytes Redis read and wrote, its two INFO calls included (~a few kB)
    sent = after["total_net_input_bytes"] - net["total_net_input_bytes"]
    received = after["total_net_output_bytes"] - net["total_net_output_bytes"]
    held = sum(op.kind == "prediction" for op in ops)
    measured = len(ops) - 1
    memory = client.info("memory")["used_memory"] - memory_before
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        client.delete(key)
    return JoinCost(measured, batches, wall / measured * 1e6, cpu / measured * 1e6, script / measured,
                    commands / batches, sent / measured, received / measured, memory / held)


def report_join_cost(redis_url: str, count: int) -> dict[str, JoinCost]:
    """The join's cost without labels and with labels for half the predictions, in both layouts."""
    costs = {}
    for layout in ("former", "current"):
        for labels_every in (0, 2):
            costs[f"{layout}, labels {'for half' if labels_every else 'none'}"] = \
                measure_join(redis_url, labels_every, count, layout)
    print(f"\nThe label join alone ({count:,} predictions, batches of {BATCH}; Redis only; per op = a prediction "
          "or a label arriving):\n")
    print("| layout, labels | ops | wall µs/op | client CPU µs/op | Redis script µs/op | Redis commands/batch | "
          "request B/op | reply B/op | Redis bytes per prediction held |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, c in costs.items():
        print(f"| {name} | {c.ops:,} | {c.wall_us:.1f} | {c.client_cpu_us:.1f} | {c.script_us:.1f} | "
              f"{c.commands_per_batch:,.0f} | {c.request_bytes:.0f} | {c.reply_bytes:.0f} | {c.memory_per_pending:.0f} |")
    return costs


@dataclass
class CapacityInputs:
    """The measured inputs of docs/CAPACITY.md's projection (one run's): per event, per column, per checkpoint."""
    workload: str  # "realistic" or "rounded"
    cpu_fixed_us: float  # the instance's CPU per event, the part that does not grow with the columns
    cpu_column_us: float  # ... and per monitored column (a straight line through F = 20 and F = 100)
    checkpoint_fixed_ms: float  # the checkpoint stage per checkpoint, fixed part
    checkpoint_column_ms: float  # ... per column of the partition's state
    checkpoint_round_trips: float  # Redis round trips per checkpoint (F = 20; the state save's)
    checkpoint_bytes_column: float  # bytes sent to Redis per checkpoint per column
    state_bytes_column: float  # the stored state blob per column (F = 100)
    redis_bytes_column: float  # Redis MEMORY USAGE of the partition's hash per column (reference profile included)
    event_bytes_fixed: float  # an inference event's bytes, fixed part
    event_bytes_feature: float  # ... per feature
    join_us_per_prediction: float  # the label join's extra instance time per prediction (labels for half)
    join_redis_us_per_op: float  # Redis CPU per join op (a prediction or a label)
    join_bytes_per_label: float  # Redis traffic per joined label (its two predictions' writes included)
    join_memory_per_prediction: float  # Redis memory per prediction held (pending or joined)
    alerts_per_million: float  # alerts fired per 10^6 events of the stationary windows
    merge_bytes_per_event: float = 0.0  # decisions = "model": Redis traffic per event (partials on checkpoints)
    redis_cpu_us: float = 0.0  # Redis CPU per event end to end, join off
    redis_cpu_join_us: float = 0.0  # ... with the join on and labels for half the predictions


def fit(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
    """(intercept, slope) of the straight line through two points (slope 0 and the mean for one x)."""
    if x1 == x0:
        return (y0 + y1) / 2, 0.0
    slope = (y1 - y0) / (x1 - x0)
    return y0 - slope * x0, slope


def capacity_inputs(results: list[SingleResult], costs: dict[str, "JoinCost"],
                    merged: list["MergedResult"] | None = None) -> CapacityInputs | None:
    """The projection's inputs from a run's join-off F = 20 and F = 100 cases of one workload, its join cases
    and the Redis-only join measurement (None without both F cases)."""
    if not results:
        return None
    plain = [r for r in results if not r.join and not r.labels and r.rounded == results[0].rounded]
    by_f = {r.features: r for r in plain}
    if 20 not in by_f or 100 not in by_f:
        return None
    small, big = by_f[20], by_f[100]

    def checkpoint_ms(r: SingleResult) -> float:
        seconds = next((s for name, s, _ in r.stages if name == "checkpoint"), 0.0)
        return seconds / max(r.checkpoints, 1) * 1000

    cpu = fit(small.columns, small.cpu_us_per_event, big.columns, big.cpu_us_per_event)
    ckpt = fit(small.columns, checkpoint_ms(small), big.columns, checkpoint_ms(big))
    sent = [(r.redis.bytes_in / max(r.checkpoints, 1)) / r.columns for r in (small, big) if r.redis]
    size = fit(small.features, small.event_bytes, big.features, big.event_bytes)
    joins = {("labels" if r.labels else "none"): c for r, c in join_rows(results) if r.join}
    labelled = joins.get("labels")
    current = costs.get("current, labels for half")
    windows = sum(r.window.events for r in plain)
    merge_bytes = 0.0
    if merged:
        m = merged[-1]
        if m.redis is not None and m.processed:
            merge_bytes = (m.redis.bytes_in + m.redis.bytes_out) / m.processed
    off_cpu = small.monitor_cores * small.window.seconds / max(small.inference, 1) * 1e6
    return CapacityInputs(
        workload="rounded" if small.rounded else "realistic", cpu_fixed_us=cpu[0], cpu_column_us=cpu[1],
        checkpoint_fixed_ms=ckpt[0], checkpoint_column_ms=ckpt[1],
        checkpoint_round_trips=small.redis.round_trips / max(small.checkpoints, 1) if small.redis else 0.0,
        checkpoint_bytes_column=sum(sent) / len(sent) if sent else 0.0,
        state_bytes_column=big.state_bytes / big.columns, redis_bytes_column=big.memory_usage / big.columns,
        event_bytes_fixed=size[0], event_bytes_feature=size[1],
        join_us_per_prediction=max(labelled["cpu_us_per_prediction"] - off_cpu, 0.0) if labelled else 0.0,
        join_redis_us_per_op=current.script_us if current else 0.0,
        join_bytes_per_label=labelled["bytes_per_label"] if labelled else 0.0,
        join_memory_per_prediction=current.memory_per_pending if current else 0.0,
        alerts_per_million=sum(r.alerts for r in plain) / windows * 1e6 if windows else 0.0,
        merge_bytes_per_event=merge_bytes,
        redis_cpu_us=small.redis.cpu / small.window.events * 1e6 if small.redis else 0.0,
        redis_cpu_join_us=labelled["redis_cpu_us"] if labelled else 0.0)


@dataclass
class Projection:
    rate: float  # events/s, all models
    models: int
    features: int
    columns: int  # per model: the features and the score
    cpu_us_per_event: float
    detect_cores: float  # the instances' CPU for the events (decode, detect, join excluded)
    checkpoint_cores: float  # the instances' CPU for checkpoints
    join_cores: float  # the instances' extra CPU for the label join
    instances: int
    partitions: int
    checkpoints_per_second: float  # all partitions
    checkpoint_bytes_per_second: float  # to Redis
    state_bytes: float  # Redis memory of every model's state (references included)
    join_bytes: float  # Redis memory of the predictions held
    redis_bytes: float  # both, with Redis's headroom
    redis_cores: float  # Redis CPU for the events (checkpoints and the join included)
    shards: int
    broker_bytes_per_second: float  # produced (each event once; replication and consumers multiply it)
    alerts_per_second: float


def project(inputs: CapacityInputs, rate: float = 1_000_000, models: int = 10_000, features: int = 50,
            checkpoint_events: int = CHECKPOINT_EVENTS, checkpoint_seconds: float = 5.0, label_share: float = 0.5,
            label_delay: float = 3_600.0, prediction_ttl: float = 7 * 86_400.0, retention: float = 86_400.0,
            join_budget: float = 256 * 2**20, core_use: float = 0.7, shard_bytes: float = 25e9,
            shard_cpu: float = 0.5) -> Projection:
    """What `rate` events/s over `models` models of `features` numeric features each needs, from one run's
    inputs (docs/CAPACITY.md explains each step). Models keyed by model id (decisions = "partition"): each
    partition's state holds its models, all of which a checkpoint re-encodes and writes; a partition
    checkpoints every `checkpoint_events` events or `checkpoint_seconds`, whichever comes first. Labels come
    for `label_share` of the predictions, `label_delay` after them; the join holds a labelled prediction until
    its label and then `retention` (joined_retention_seconds), an unlabelled one `prediction_ttl`, each model
    within `join_budget` bytes (max_pending_bytes; the defaults are the service's). An instance is planned at
    `core_use` of its one core; a Redis shard at `shard_bytes` of memory and `shard_cpu` of its core."""
    columns = features + 1
    cpu = inputs.cpu_fixed_us + inputs.cpu_column_us * columns
    detect = rate * cpu / 1e6
    join = rate * inputs.join_us_per_prediction / 1e6 if label_share else 0.0

    # instances = partitions (one each): a checkpoint re-encodes its partition's models, so the checkpoints'
    # CPU falls as the partitions grow (fewer models each) until the timer, not the event count, triggers them
    def checkpoint_cores(partitions: int) -> float:
        per_second = max(rate / partitions / checkpoint_events, 1 / checkpoint_seconds)
        checkpoint_ms = inputs.checkpoint_fixed_ms + inputs.checkpoint_column_ms * models / partitions * columns
        return partitions * per_second * checkpoint_ms / 1000

    partitions = 1
    while (detect + join + checkpoint_cores(partitions)) / core_use > partitions and partitions < 10_000_000:
        partitions += 1 if partitions < 1000 else partitions // 1000
    instances = partitions
    checkpoint = checkpoint_cores(partitions)
    checkpoints = partitions * max(rate / partitions / checkpoint_events, 1 / checkpoint_seconds)
    checkpoint_bytes = checkpoints * inputs.checkpoint_bytes_column * columns * models / partitions
    state = models * columns * inputs.redis_bytes_column
    per_model = rate / models * (label_share * (label_delay + retention) + (1 - label_share) * prediction_ttl)
    held = models * min(per_model * inputs.join_memory_per_prediction, join_budget) if label_share else 0.0
    redis = (state + held) * 1.3  # fragmentation and rewrite headroom
    redis_cores = rate * (inputs.redis_cpu_join_us if label_share else inputs.redis_cpu_us) / 1e6
    shards = max(-(-int(redis) // int(shard_bytes)), -(-int(redis_cores * 1000) // int(shard_cpu * 1000)), 1)
    size = inputs.event_bytes_fixed + inputs.event_bytes_feature * features
    return Projection(rate, models, features, columns, cpu, detect, checkpoint, join, instances, partitions,
                      checkpoints, checkpoint_bytes, state, held, redis, redis_cores, shards, rate * size,
                      rate * inputs.alerts_per_million / 1e6)


def report_capacity(results: list["SingleResult"], costs: dict[str, JoinCost],
                    merged: list["MergedResult"] | None = None) -> None:
    """The measured inputs of docs/CAPACITY.md's projection, from this run, and the projection itself."""
    inputs = capacity_inputs(results, costs, merged)
    if inputs is None:
        print("\nCapacity inputs: need the join-off F = 20 and F = 100 cases of one workload.")
        return
    print(f"\n### Capacity inputs (docs/CAPACITY.md; {inputs.workload} events; redo the projection with these)\n")
    print("| input | value |\n|---|---|")
    rows = [
        ("instance CPU per event, fixed part (µs)", f"{inputs.cpu_fixed_us:.2f}"),
        ("instance CPU per event per column (µs)", f"{inputs.cpu_column_us:.3f}"),
        ("checkpoint per checkpoint, fixed part (ms)", f"{inputs.checkpoint_fixed_ms:.2f}"),
        ("checkpoint per checkpoint per column of the partition (ms)", f"{inputs.checkpoint_column_ms:.4f}"),
        ("Redis round trips per checkpoint interval (all the instance's, join off)",
         f"{inputs.checkpoint_round_trips:.2f}"),
        ("Redis bytes sent per checkpoint interval per column (all the instance sent)",
         f"{inputs.checkpoint_bytes_column:,.0f}"),
        ("stored state per column (bytes)", f"{inputs.state_bytes_column:,.0f}"),
        ("Redis memory per column, reference included (bytes)", f"{inputs.redis_bytes_column:,.0f}"),
        ("inference event bytes: fixed + per feature", f"{inputs.event_bytes_fixed:,.0f} + "
                                                       f"{inputs.event_bytes_feature:.1f}"),
        ("label join: extra instance CPU per prediction, labels for half (µs)", f"{inputs.join_us_per_prediction:.2f}"),
        ("label join: Redis CPU per op (µs, Redis only)", f"{inputs.join_redis_us_per_op:.2f}"),
        ("label join: Redis bytes per joined label (end to end)", f"{inputs.join_bytes_per_label:,.0f}"),
        ("label join: Redis memory per prediction held (bytes)", f"{inputs.join_memory_per_prediction:,.0f}"),
        ("Redis CPU per event end to end (µs): join off / labels for half joined",
         f"{inputs.redis_cpu_us:.2f} / {inputs.redis_cpu_join_us:.2f}"),
        ("alerts per 10^6 events (stationary windows)", f"{inputs.alerts_per_million:.2f}"),
        ("decisions = \"model\": Redis bytes per event (2 instances, 4 partitions)",
         f"{inputs.merge_bytes_per_event:,.1f}" if inputs.merge_bytes_per_event else "– (not run)"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    both = [project(inputs), project(inputs, label_share=0.0)]
    p = both[0]
    print(f"\nProjection (bench/throughput.py project()): {p.rate:,.0f} events/s over {p.models:,} models of "
          f"{p.features} features ({p.columns} columns each), keyed by model id, default checkpoints; with labels "
          "for half the predictions (an hour later; the join's retention and budgets at their defaults), and "
          "without the join:\n")
    print("| quantity | labels for half | no join |\n|---|---|---|")
    for name, value in [
        ("instance CPU per event (µs)", lambda p: f"{p.cpu_us_per_event:.1f}"),
        ("cores: events / checkpoints / label join", lambda p: f"{p.detect_cores:,.1f} / {p.checkpoint_cores:,.1f} / "
                                                                f"{p.join_cores:,.1f}"),
        ("instances (one core each, planned at 70 %) = partitions", lambda p: f"{p.instances:,}"),
        ("checkpoints per second, all partitions", lambda p: f"{p.checkpoints_per_second:,.0f}"),
        ("checkpoint traffic to Redis (MB/s)", lambda p: f"{p.checkpoint_bytes_per_second / 1e6:,.0f}"),
        ("Redis memory: state / predictions held / total with headroom (GB)",
         lambda p: f"{p.state_bytes / 1e9:,.1f} / {p.join_bytes / 1e9:,.1f} / {p.redis_bytes / 1e9:,.1f}"),
        ("Redis CPU (cores)", lambda p: f"{p.redis_cores:,.1f}"),
        ("Redis Cluster shards (each ≤ 25 GB and ≤ half a core)", lambda p: f"{p.shards:,}"),
        ("broker: produced (MB/s; ×3 replication, ×1 per consumer group)",
         lambda p: f"{p.broker_bytes_per_second / 1e6:,.0f}"),
        ("alerts per second (stationary)", lambda p: f"{p.alerts_per_second:.2f}"),
    ]:
        print(f"| {name} | " + " | ".join(value(p) for p in both) + " |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `measured` is the events per case (--quick's or --events')."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="measured events per case")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_EVENTS:,} events per case")
    parser.add_argument("--join", action="store_true",
                        help="give the model a performance table (task = classification) and its label join "
                             "(off otherwise: enabled = false)")
    parser.add_argument("--labels", action="store_true",
                        help="with --join: every second prediction gets its label event, "
                             f"{LABEL_DELAY} inference events later (events timed count both kinds)")
    parser.add_argument("--rounded", action="store_true",
                        help="the former workload for every case (values rounded to 4 decimals, no timestamp, numeric "
                             "features only); the comparison case is then the realistic one")
    parser.add_argument("--no-comparison", action="store_true",
                        help="skip the F = 20 case on the other workload (rounded, or realistic with --rounded)")
    parser.add_argument("--no-join-cases", action="store_true",
                        help="skip the label join's cost end to end (F = 20 with the join on, without labels and "
                             "with labels for half the predictions)")
    parser.add_argument("--single-only", action="store_true", help="skip the live-production scaling cases")
    parser.add_argument("--join-cost", action="store_true",
                        help="only the label join against Redis (no broker): its cost per op in the current and the "
                             "former layout, without labels and with labels for half the predictions")
    parser.add_argument("--capacity", action="store_true",
                        help="(always on now) print the measured inputs of docs/CAPACITY.md")
    parser.add_argument("--join-only", action="store_true",
                        help="only the label join's three F = 20 cases (no scaling, merged or capacity report)")
    parser.add_argument("--merged-only", action="store_true",
                        help="only the model keyed by event id over "
                             f"{MERGED_PARTITIONS} partitions (decisions = \"model\"), 1 vs 2 instances")
    args = parser.parse_args(argv)
    if args.labels and not args.join:
        parser.error("--labels needs --join")
    if args.merged_only and args.single_only:
        parser.error("--merged-only and --single-only exclude each other")
    args.measured = QUICK_EVENTS if args.quick else args.events
    if args.join_only:
        if args.merged_only or args.no_join_cases:
            parser.error("--join-only runs the join's cases alone")
        args.single_only = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    measured = args.measured

    from stream_monitor.demo.localstack import create_topics, start_broker, start_redis  # noqa: PLC0415

    workdir = Path(tempfile.mkdtemp(prefix="sm-bench-"))
    print(f"end-to-end throughput: {measured:,} measured events per case, logs in {workdir}", flush=True)
    started = []
    try:
        if args.join_cost:
            started.append(start_redis(str(workdir)))
            report_join_cost(started[-1].address, measured)
            return 0
        started.append(start_broker(str(workdir)))
        started.append(start_redis(str(workdir)))
        stack = Stack(started[0].address, started[1].address, workdir, [os.getpid(), started[0].pid, started[1].pid])
        create_topics(stack.bootstrap, {ALERTS: 1, DEAD_LETTERS: 1})
        results = []
        for case in () if args.merged_only else single_cases(args):
            begun = time.monotonic()
            lines = events(case.features, WARMUP + measured + PADDING, labels_every=2 if case.labels else 0,
                           rounded=case.rounded)
            results.append(run_single(stack, case.features, lines, measured, case.join, case.rounded, case.labels))
            r = results[-1]
            print(f"{r.case}: {r.window.rate:,.0f} events/s end to end "
                  f"({r.window.rate * r.inference / r.window.events:,.0f} inference events/s; join "
                  f"{'on' if case.join else 'off'}, labels {'for half the predictions' if case.labels else 'none'}; "
                  f"{time.monotonic() - begun:.0f} s for this case)", flush=True)
        live = []
        for instances in () if args.single_only or args.merged_only else (1, 2):
            begun = time.monotonic()
            live.append(run_live(stack, instances, measured, args.rounded))
            print(f"{instances} instance(s), live production: {live[-1].window.rate:,.0f} events/s "
                  f"({time.monotonic() - begun:.0f} s for this case)", flush=True)
        merged = []
        for instances in () if args.single_only else (1, 2):
            begun = time.monotonic()
            merged.append(run_merged(stack, instances, measured, args.join, args.rounded))
            tail = merged[-1].after_production
            print(f"{instances} instance(s), one model keyed by event id over {MERGED_PARTITIONS} partitions: "
                  f"{merged[-1].window.rate:,.0f} events/s from the start of production (join "
                  f"{'on' if args.join else 'off'})"
                  + (f", {tail.rate:,.0f} once it had ended" if tail else "")
                  + f" ({time.monotonic() - begun:.0f} s for this case)", flush=True)
        if results:
            report(results, live, measured)
        if merged:
            report_merged(merged)
        if results and not args.join_only:  # (not with --merged-only)
            report_capacity(results, report_join_cost(stack.redis_url, measured), merged)
    finally:
        for process in reversed(started):
            process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
