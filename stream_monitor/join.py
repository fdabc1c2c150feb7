"""The label join: a label event meets its inference event by (model_id, event_id), wherever each lands.

Both sides go through Redis (any topic, partition or instance). Whichever
arrives second completes the pair, and the pair is counted by exactly one
message, recorded in Redis as ``joined`` = that message's identity
(topic|partition|offset). That makes the join effectively-once across
crashes: a message processed again after a crash finds itself recorded and
counts the pair again (its partition's state was restored from before the
first time), while any other message finds the pair taken and counts nothing.

A batch's steps of one model go to Redis in one script call (``_BATCH``; one per
``MAX_STEPS`` steps), which runs them in order, each with its own time, keys and
arguments and the same logic as if it were a call of its own, so a batch gives
exactly what one call per step gives (tests/integration/test_join_batch.py);
what one call costs besides its steps (the call itself, encoding and parsing
its arguments and reply) is paid once per model per batch, not once per step.

Every step is safe to run again: a batch whose pipeline failed half-way (Redis
unreachable, or refusing writes) is sent again as a whole, and a message finding
itself recorded as ``joined`` gets the same answer as the first time. A Redis
refusing writes refuses a script at its first write that needs memory, and each
call's first write is that SETNX; once a script has written, Redis lets it
finish, so a call is applied whole or not at all (a call stopped midway by a
slot moving under it, below, is sent again whole: its steps already applied
give the same answers again).

What the join keeps is bounded per model, in entries and in bytes, and the
oldest entries make room for new ones, so a new prediction can always be joined:

- ``max_pending`` unlabelled predictions: the next one evicts the oldest pending
  prediction, which counts as never labelled (``expired``, and ``evicted``).
- ``max_pending_bytes``: every entry records its estimated size (``n``: key,
  member, record and Redis's per-entry overhead, measured at about 260 bytes) and
  the scripts keep the model's total in ``stats.bytes`` as they add and delete
  entries, so reading it costs one HGET. An entry that would take the total past
  the budget first evicts, oldest first, joined pairs (kept only to recognise
  replays), then labels still waiting for their prediction (``labels_evicted``),
  then pending predictions (never labelled, ``evicted``). An entry bigger than the
  whole budget is not stored (``dropped``).

Eviction forgets an entry for good, so the counts of losses are at-least-once:
a message processed again after a crash may store an evicted prediction again,
and it counts again if it is evicted or expires again. Stored again, it is the
newest entry, so under a full cap such a replay can push out predictions that
are younger than it (only those evicted since the last checkpoint come back).
Pairs are never counted twice: a pair is counted only by the message recorded
as ``joined``.

Expiry is done by the scripts, not by Redis: each entry is also in a sorted set by
its expiry time, and every step removes (and subtracts) up to 512 expired entries
of each set. Redis's own key expiry (the entry's time plus an hour) only cleans
up after a service that was stopped; an entry gone that way is subtracted at its
estimated size, and the total is reset to 0 when no entry is left.

Keys of one model share a hash tag, so each script touches one Redis Cluster
slot. Each call passes in KEYS the keys it knows beforehand (the model's sets,
stats and marker, each step's prediction and label); the entries it evicts or
expires are found in the sets as it runs, so their keys are derived from the
model's prefix (ARGV[1], the same hash tag): on a cluster they are always in
the slot of KEYS[1], on the node the script runs on. The one moment that
differs is a live resharding of that very slot: a derived key already moved
makes Redis stop the script where it is (redis-py then sees redirections that
do not settle); the service treats that as the cluster being unavailable, waits
and sends the step again whole once the slot has moved, and a step run again
converges (what was removed stays removed; the byte total uses the estimate for
an entry already gone). Each script reads an entry before it deletes it, so
when the first entry it meets has moved, it stops before changing anything but
the marker (the SETNX a step does first).

- ``ns:join:{model}:p:<event_id>`` — hash: ``p`` (the prediction, JSON), ``n``, ``joined``;
  kept ``prediction_ttl_seconds`` while unlabelled, ``joined_retention_seconds`` after.
- ``ns:join:{model}:l:<event_id>`` — a label that came first: ``l`` (JSON), ``n``, ``joined``;
  kept ``label_wait_seconds``.
- ``ns:join:{model}:pending`` — sorted set of unlabelled predictions by expiry
  (the cap on pending predictions and the count of those that never got a label).
- ``ns:join:{model}:labels`` — sorted set of labels waiting for their prediction, by expiry.
- ``ns:join:{model}:done`` — sorted set of joined predictions, by the end of their retention.
- ``ns:join:{model}:stats`` — hash: ``expired`` (never labelled, evictions included),
  ``evicted`` (pending predictions evicted for room), ``labels_evicted``, ``dropped``
  (bigger than the budget by themselves) and ``bytes`` (the estimated size of all entries).
- ``ns:join:{model}:marker`` — written (SETNX) by every join step, first thing: a step
  that finds it missing although this process saw it before tells that Redis lost
  the join's data (restarted empty, flushed); :class:`RedisJoin` reports it
  (``on_lost``) and the join goes on with what arrives from then on.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import orjson
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from .config import PerformanceConfig
from .events import InferenceEvent
from .oip import OipHalf

ENTRY_OVERHEAD = 256  # bytes Redis spends on one entry besides its key, member and record (measured ~260)
GRACE_MS = 3_600_000  # Redis's own expiry of an entry: this long after the scripts' (which delete it first)
EXPIRE_BATCH = 512  # expired entries of each set removed per step
# Each step of one RedisJoin gets a later time than the one before, by at least this much (a float
# score still tells 1 µs apart at today's epoch milliseconds), so the entries of one batch, stored
# in the same millisecond, are evicted in the order they came rather than by event id.
TICK_MS = 0.001
# The most steps of one model one script call runs (a bigger batch takes more calls, in the same round trip): a
# script holds Redis while it runs, and this many steps take it some milliseconds.
MAX_STEPS = 1000

# Shared by the scripts. KEYS: pending, stats, labels, done; ``base``: the model's key prefix (ARGV[1]), ``now``:
# the time (ms) of the step being run. ``floors[set]``: a number no score of that set is below (unknown: nil), kept
# by ``zadd`` (the only way the scripts add to a set; removing only raises a set's lowest score), so that a step
# whose time is before it knows, without asking Redis, that nothing of that set has expired.
_FUNCTIONS = """
local pending, stats, labels, done = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, now = ARGV[1], tonumber(ARGV[2])
local OVERHEAD = %(overhead)d
local floors = {}
local function zadd(set, score, member)
  redis.call('ZADD', set, score, member)
  score = tonumber(score)
  if floors[set] and score < floors[set] then floors[set] = score end
end
local function remove(key, member)
  local n = tonumber(redis.call('HGET', key, 'n')) or (#key + #member + OVERHEAD)
  redis.call('DEL', key)
  return n
end
-- stats.bytes as this call last read or wrote it (only the scripts write it, and a script runs alone)
local used = nil
local function bytes()
  if used == nil then used = tonumber(redis.call('HGET', stats, 'bytes')) or 0 end
  return used
end
local function add_bytes(n)
  used = redis.call('HINCRBY', stats, 'bytes', n)
  return used
end
local function release(n)
  if n ~= 0 and add_bytes(-n) < 0 then
    redis.call('HSET', stats, 'bytes', 0)
    used = 0
  end
end
local function expire(set, prefix, counter, limit)
  local gone = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, limit)
  if #gone == 0 then return 0 end
  local freed = 0
  for _, member in ipairs(gone) do freed = freed + remove(base .. prefix .. member, member) end
  redis.call('ZREM', set, unpack(gone))
  release(freed)
  if counter then redis.call('HINCRBY', stats, counter, #gone) end
  return #gone
end
local function evict(set, prefix, count, counter)
  local gone = redis.call('ZPOPMIN', set, count)
  local freed, evicted = 0, 0
  for i = 1, #gone, 2 do
    freed = freed + remove(base .. prefix .. gone[i], gone[i])
    evicted = evicted + 1
  end
  if evicted > 0 then
    release(freed)
    if counter then redis.call('HINCRBY', stats, counter, evicted) end
    if set == pending then redis.call('HINCRBY', stats, 'expired', evicted) end
  end
  return freed
end
local function make_room(n, budget)
  local total = bytes()
  while total + n > budget do
    if redis.call('ZCARD', done) > 0 then total = total - evict(done, ':p:', 1, nil)
    elseif redis.call('ZCARD', labels) > 0 then total = total - evict(labels, ':l:', 1, 'labels_evicted')
    elseif redis.call('ZCARD', pending) > 0 then total = total - evict(pending, ':p:', 1, 'evicted')
    else return end
  end
end
-- make room while the entries of this event id are out of the sets (so they are never the ones evicted)
local function make_room_around(n, budget, event_id)
  if bytes() + n <= budget then return end
  local scores = {}
  for _, set in ipairs({pending, labels, done}) do
    scores[set] = redis.call('ZSCORE', set, event_id)
    if scores[set] then redis.call('ZREM', set, event_id) end
  end
  make_room(n, budget)
  for _, set in ipairs({pending, labels, done}) do
    if scores[set] then zadd(set, scores[set], event_id) end
  end
end
local function store(key, set, field, value, n, ttl)
  redis.call('HSET', key, field, value, 'n', n)
  add_bytes(n)
  redis.call('PEXPIRE', key, ttl + %(grace)d)
  zadd(set, now + ttl, string.sub(key, #base + 4))
end
local function grow(key, extra)
  redis.call('HINCRBY', key, 'n', extra)
  add_bytes(extra)
end
""" % {"overhead": ENTRY_OVERHEAD, "grace": GRACE_MS}

# One script call runs a batch's steps of one model, in order, each as if it were a call of its own: the same
# logic per step, given that step's time, keys and arguments; what is carried from one step to the next is only
# in Redis, but for ``floors`` (exact: it only ever skips a ZRANGEBYSCORE that would find nothing).
# KEYS: the shared four, then the marker, then per step its prediction and label (step i: KEYS[4 + 2i], KEYS[5 + 2i]).
# ARGV: the prefix, budget, cap, a prediction's ttl, a label's ttl, retention (ms); then the steps, one JSON array
# of [kind ('p' or 'l'), now, record (JSON text), me, event_id] (one argument to encode and decode, not five a step).
# Returns one JSON array: [fresh (1: the marker was missing), then per step its status, or the other side's record
# (JSON text, which begins with '{') when it joined].
_BATCH = """
local fresh = redis.call('SETNX', KEYS[5], '1')
""" + _FUNCTIONS + """
local budget, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local ttls = {p = tonumber(ARGV[4]), l = tonumber(ARGV[5])}
local retention = tonumber(ARGV[6])
local pred, label, record, me, event_id, ttl
local function expire_due(set, prefix, counter, limit)
  local floor = floors[set]
  if floor and floor > now then return end
  expire(set, prefix, counter, limit)
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  floors[set] = first[2] and tonumber(first[2]) or math.huge
end
local function expire_all(limit)
  expire_due(pending, ':p:', 'expired', limit)
  expire_due(labels, ':l:', nil, limit)
  expire_due(done, ':p:', nil, limit)
end
-- the pair joined by this message: the prediction (and the label that came first, if any) record it.
-- pred_joined, label_joined: their 'joined' as the step read it (making room never evicts this event id's entries)
local function join_pair(pred_joined, with_label, label_joined)
  local extra = 0
  if not pred_joined then extra = extra + #me + 8 end
  if with_label and not label_joined then extra = extra + #me + 8 end
  if extra > 0 then make_room_around(extra, budget, event_id) end
  if not pred_joined then
    redis.call('HSET', pred, 'joined', me)
    grow(pred, #me + 8)
  end
  if with_label and not label_joined then
    redis.call('HSET', label, 'joined', me)
    grow(label, #me + 8)
  end
  redis.call('PEXPIRE', pred, retention + %(grace)d)
  redis.call('ZREM', pending, event_id)
  zadd(done, now + retention, event_id)
end
local function prediction_step()
  local found = redis.call('HMGET', pred, 'joined', 'n')  -- every entry has its 'n': none, no entry
  local joined = found[1]
  if not joined and not found[2] then
    local n = #pred + #event_id + #record + OVERHEAD
    if n > budget then
      redis.call('HINCRBY', stats, 'dropped', 1)
      return {'dropped'}
    end
    local over = redis.call('ZCARD', pending) - cap + 1
    if over > 0 then evict(pending, ':p:', over, 'evicted') end
    make_room_around(n, budget, event_id)
    store(pred, pending, 'p', record, n, ttl)
  end
  local waiting = redis.call('HMGET', label, 'l', 'joined')
  local early = waiting[1]
  if early then
    local taken = waiting[2]
    if (not taken) or taken == me then
      join_pair(joined, true, taken)
      return {'joined', early}
    end
    return {'taken'}
  end
  if joined and joined ~= me then return {'taken'} end
  return {'pending'}
end
local function label_step()
  local found = redis.call('HMGET', pred, 'p', 'joined')
  local stored = found[1]
  if stored then
    local taken = found[2]
    if (not taken) or taken == me then
      join_pair(taken, false, nil)
      return {'joined', stored}
    end
    return {'taken'}
  end
  local taken = redis.call('HGET', label, 'joined')
  if taken and taken ~= me then return {'taken'} end
  local n = #label + #event_id + #record + OVERHEAD
  if n > budget then
    redis.call('HINCRBY', stats, 'dropped', 1)
    return {'dropped'}
  end
  if redis.call('EXISTS', label) == 1 then  -- the same label again (a replay or a duplicate): the newest is kept
    redis.call('ZREM', labels, event_id)
    release(remove(label, event_id))
  end
  make_room_around(n, budget, event_id)
  store(label, labels, 'l', record, n, ttl)
  return {'pending'}
end
local out = {fresh}
for i, step in ipairs(cjson.decode(ARGV[7])) do
  local kind = step[1]
  now, record, me, event_id = step[2], step[3], step[4], step[5]
  pred, label, ttl = KEYS[4 + 2 * i], KEYS[5 + 2 * i], ttls[kind]
  expire_all(%(batch)d)
  local result
  if kind == 'p' then result = prediction_step() else result = label_step() end
  out[i + 1] = result[2] or result[1]
end
return cjson.encode(out)
""" % {"batch": EXPIRE_BATCH, "grace": GRACE_MS}

# Entries whose time is over, removed (predictions counted as never labelled); then the figures.
_EXPIRE = _FUNCTIONS + """
for _ = 1, 100 do
  local gone = expire(pending, ':p:', 'expired', 4096) + expire(labels, ':l:', nil, 4096)
  if gone + expire(done, ':p:', nil, 4096) == 0 then
    break
  end
end
if redis.call('ZCARD', pending) + redis.call('ZCARD', labels) + redis.call('ZCARD', done) == 0 then
  redis.call('HSET', stats, 'bytes', 0)  -- no entry left: whatever the estimate of vanished ones said
end
return {redis.call('ZCARD', pending), redis.call('ZCARD', labels),
        redis.call('HMGET', stats, 'expired', 'dropped', 'evicted', 'labels_evicted', 'bytes')}
"""


class JoinOp(NamedTuple):
    """One side of a pair arriving: ``kind`` is "prediction" or "label"; ``record`` what it brings."""

    kind: str
    model_id: str
    event_id: str
    record: dict[str, Any]
    me: str  # topic|partition|offset of the message


class JoinResult(NamedTuple):
    status: str  # joined | pending | taken | dropped
    other: dict[str, Any] | None = None  # the other side's record when joined


def prediction_record(score: float | None, label: Any, timestamp_ms: int | None,
                      groups: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A prediction as the join keeps it; ``groups``: its protected attributes' values (fairness), if any."""
    record = {"score": score, "label": label, "t": timestamp_ms}
    if groups:
        record["g"] = dict(groups)
    return record


def label_record(label: Any, timestamp_ms: int | None) -> dict[str, Any]:
    return {"label": label, "t": timestamp_ms}


class RedisJoin:
    """The join in Redis; one pipelined round trip per batch of messages, one script call per model in it
    (per ``MAX_STEPS`` of its steps). ``clock``: the time in seconds (the tests give their own)."""

    def __init__(self, client, namespace: str, settings: dict[str, PerformanceConfig],
                 on_lost: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time):
        self.client = client
        self.clock = clock
        self.namespace = namespace
        self.settings = settings
        self.on_lost = on_lost  # called with a model id whose join data vanished from Redis
        self._seen: set[str] = set()  # models whose marker this process has found or written
        self._last = 0.0  # the time (ms) given to the latest step: strictly increasing, see TICK_MS
        self._batch = client.register_script(_BATCH)
        self._expire = client.register_script(_EXPIRE)
        self._cluster = isinstance(client, RedisCluster)
        self._loaded = False  # on a Redis Cluster: the scripts were loaded on every primary (see _run_on_cluster)

    @property
    def models_seen(self) -> frozenset[str]:
        """The models this process has run steps for."""
        return frozenset(self._seen)

    def _base(self, model_id: str) -> str:
        return f"{self.namespace}:join:{{{model_id}}}"

    def _keys(self, model_id: str, event_id: str) -> list[str]:
        base = self._base(model_id)
        return [f"{base}:pending", f"{base}:stats", f"{base}:labels", f"{base}:done", f"{base}:marker",
                f"{base}:p:{event_id}", f"{base}:l:{event_id}"]

    def run(self, ops: Sequence[JoinOp]) -> list[JoinResult]:
        """The ops' results, in their order. Each op gets its own time (strictly increasing, see TICK_MS);
        the ops of one model go to Redis in their order, in one script call (or one per MAX_STEPS), which
        runs each as the step it would be alone; models share nothing, so their calls are independent."""
        if not ops:
            return []
        now = max(self.clock() * 1000, self._last + TICK_MS)
        by_model: dict[str, list[int]] = {}
        times = []
        for i, op in enumerate(ops):
            now = max(now, self._last + TICK_MS)
            self._last = now
            times.append(now)
            by_model.setdefault(op.model_id, []).append(i)
        calls, owners = [], []  # owners: per call, its model and the indexes of its ops
        for model_id, indexes in by_model.items():
            cfg = self.settings[model_id]
            base = self._base(model_id)
            for start in range(0, len(indexes), MAX_STEPS):
                chunk = indexes[start:start + MAX_STEPS]
                keys = [f"{base}:pending", f"{base}:stats", f"{base}:labels", f"{base}:done", f"{base}:marker"]
                steps = []
                for i in chunk:
                    op = ops[i]
                    keys += (f"{base}:p:{op.event_id}", f"{base}:l:{op.event_id}")
                    steps.append(("p" if op.kind == "prediction" else "l", times[i], orjson.dumps(op.record).decode(),
                                  op.me, op.event_id))
                calls.append((self._batch, keys, [
                    base, cfg.max_pending_bytes, cfg.max_pending, int(cfg.prediction_ttl_seconds * 1000),
                    int(cfg.label_wait_seconds * 1000), int(cfg.joined_retention_seconds * 1000), orjson.dumps(steps)]))
                owners.append((model_id, chunk))
        if self._cluster:
            replies = self._run_on_cluster(calls)
        else:
            pipe = self.client.pipeline(transaction=False)
            for script, keys, args in calls:
                script(keys=keys, client=pipe, args=args)
            replies = pipe.execute()
        results: list[JoinResult | None] = [None] * len(ops)
        for (model_id, chunk), reply in zip(owners, replies):
            fresh, *steps = orjson.loads(reply)
            if fresh and model_id in self._seen and self.on_lost is not None:
                self.on_lost(model_id)
            self._seen.add(model_id)
            for i, step in zip(chunk, steps):
                results[i] = JoinResult("joined", orjson.loads(step)) if step[:1] == "{" else JoinResult(step)
        return results  # type: ignore[return-value]

    def _run_on_cluster(self, calls: list[tuple[Any, list[str], list]]) -> list:
        """The batch on a Redis Cluster, still one pipelined round trip (per node). redis-py's cluster
        pipeline takes no script objects and loads no scripts: each step is queued as a plain EVALSHA,
        routed by its keys' slot (the keys of one model share a hash tag, so its steps keep their order on
        one node), after the scripts were loaded on every primary; a node that answers NOSCRIPT (a new
        primary after a failover, a restarted one) gets them again and the batch is sent again whole, as
        every step is safe to run again. The pipeline is not a transaction, and nothing here needs one."""
        for attempt in (0, 1):
            if attempt or not self._loaded:
                for script in (self._batch, self._expire):
                    script.sha = self.client.script_load(script.script)
                self._loaded = True
            pipe = self.client.pipeline(transaction=False)
            for script, keys, args in calls:
                # the node named: left to find it, redis-py's cluster pipeline asks a server for the keys of
                # every EVALSHA first (COMMAND GETKEYS, one round trip each: 4× slower measured). A MOVED
                # reply is still followed, and updates the slot map this reads.
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args,
                                     target_nodes=self.client.get_node_from_key(keys[0]))
            try:
                return pipe.execute()
            except NoScriptError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def lag(self, model_id: str) -> dict[str, int]:
        """What the join of a model holds and has lost, after removing what expired.

        ``awaiting``: predictions waiting for a label; ``labels_waiting``: labels waiting for their
        prediction; ``expired``: predictions never labelled (expired or evicted); ``evicted``: of those,
        evicted to make room (``max_pending``, ``max_pending_bytes``); ``labels_evicted``; ``dropped``:
        entries bigger than the whole byte budget, not stored; ``bytes``: the estimated Redis memory
        of all its entries (kept by the scripts: one round trip whatever the size)."""
        base = self._base(model_id)
        awaiting, waiting, stats = self._expire(
            keys=[f"{base}:pending", f"{base}:stats", f"{base}:labels", f"{base}:done"],
            args=[base, int(self.clock() * 1000)])
        expired, dropped, evicted, labels_evicted, used = (int(v or 0) for v in stats)
        return {"awaiting": int(awaiting), "expired": expired, "dropped": dropped, "evicted": evicted,
                "labels_waiting": int(waiting), "labels_evicted": labels_evicted, "bytes": used}


class MemoryJoin:
    """The same join in memory, for ``replay`` (one process, one file; no expiry, no byte budget):
    past ``max_pending`` the oldest pending prediction is evicted, as in Redis."""

    def __init__(self, settings: dict[str, PerformanceConfig]):
        self.settings = settings
        self._predictions: dict[tuple[str, str], dict[str, Any]] = {}
        self._labels: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending: dict[str, OrderedDict[str, None]] = {}  # per model, oldest first
        self.evicted: dict[str, int] = {}

    def run(self, ops: Sequence[JoinOp]) -> list[JoinResult]:
        return [self._one(op) for op in ops]

    def _one(self, op: JoinOp) -> JoinResult:
        key = (op.model_id, op.event_id)
        pred, early = self._predictions.get(key), self._labels.get(key)
        if op.kind == "prediction":
            if pred is None:
                pending = self._pending.setdefault(op.model_id, OrderedDict())
                while len(pending) >= self.settings[op.model_id].max_pending:
                    oldest, _ = pending.popitem(last=False)
                    del self._predictions[(op.model_id, oldest)]
                    self.evicted[op.model_id] = self.evicted.get(op.model_id, 0) + 1
                pred = self._predictions[key] = {"p": op.record}
                pending[op.event_id] = None
            if early is not None:
                if early.get("joined") in (None, op.me):
                    self._joined(op.model_id, op.event_id, pred, op.me)
                    early["joined"] = op.me
                    return JoinResult("joined", early["l"])
                return JoinResult("taken")
            if pred.get("joined") not in (None, op.me):
                return JoinResult("taken")
            return JoinResult("pending")
        if pred is not None:
            if pred.get("joined") in (None, op.me):
                self._joined(op.model_id, op.event_id, pred, op.me)
                return JoinResult("joined", pred["p"])
            return JoinResult("taken")
        if early is not None and early.get("joined") not in (None, op.me):
            return JoinResult("taken")
        self._labels[key] = {"l": op.record}
        return JoinResult("pending")

    def _joined(self, model_id: str, event_id: str, pred: dict[str, Any], me: str) -> None:
        self._pending.get(model_id, {}).pop(event_id, None)
        pred["joined"] = me


def join_op(event, me: str, settings: dict[str, PerformanceConfig],
            attributes: Mapping[str, Sequence[str]] | None = None) -> JoinOp | None:
    """The join operation an event needs (``None`` for models whose performance is turned off).
    ``attributes``: per model its protected attributes (:func:`fairness_attributes`), kept with the
    prediction so a later label knows its groups."""
    cfg = settings.get(event.model_id)
    if cfg is None or not cfg.enabled:
        return None
    if hasattr(event, "features"):
        if event.score is None and event.predicted_label is None:
            return None
        names = () if attributes is None else attributes.get(event.model_id, ())
        groups = {name: event.features.get(name) for name in names}
        return JoinOp("prediction", event.model_id, event.event_id,
                      prediction_record(event.score, event.predicted_label, event.timestamp_ms, groups), me)
    return JoinOp("label", event.model_id, event.event_id, label_record(event.label, event.timestamp_ms), me)


def fairness_attributes(config) -> dict[str, tuple[str, ...]]:
    """The models with protected attributes (``[models.<id>.fairness] attributes``) and their names."""
    return {model_id: tuple(model.fairness.attributes) for model_id, model in config.models.items()
            if model.fairness.attributes}


def performance_settings(config) -> dict[str, PerformanceConfig]:
    """The models whose labels are joined: every model unless ``[models.<id>.performance] enabled = false``."""
    return {model_id: model.performance for model_id, model in config.models.items() if model.performance.enabled}


# --- the request/response pairing of Open Inference Protocol messages (stream_monitor/oip.py) ----------------
# The same join, under its own prefix (``ns:oip:join:{model}:…``, the model's hash tag): a request's row is the
# "prediction" side, its response's row the "label" side, so whichever half comes second completes the row and
# the pair is counted by exactly that message, recorded as ``joined`` (crash-safe as above). What never meets its
# other half expires after ``oip.pair_wait_seconds`` (a request counts in ``expired``) or is evicted under
# ``oip.max_pending`` / ``oip.max_pending_bytes``.


def pair_settings(config) -> dict[str, PerformanceConfig]:
    """Every model's pairing bounds, from its ``[models.<id>.oip]``."""
    out = {}
    for model_id, model in config.models.items():
        oip = model.oip
        out[model_id] = PerformanceConfig(
            label_wait_seconds=oip.pair_wait_seconds, prediction_ttl_seconds=oip.pair_wait_seconds,
            joined_retention_seconds=oip.pair_wait_seconds, max_pending=oip.max_pending,
            max_pending_bytes=oip.max_pending_bytes)
    return out


def pair_ops(half: OipHalf, me: str) -> list[JoinOp]:
    """The pairing steps of one message's half: one per row."""
    if half.kind == "request":
        return [JoinOp("prediction", half.model_id, event_id, {"f": row, "t": half.timestamp_ms}, me)
                for event_id, row in zip(half.event_ids(), half.rows)]
    return [JoinOp("label", half.model_id, event_id, {"s": score, "l": label, "t": half.timestamp_ms}, me)
            for event_id, (score, label) in zip(half.event_ids(), half.rows)]


def paired_events(half: OipHalf, results: Sequence[JoinResult]) -> list[InferenceEvent]:
    """The rows this message completed, as inference events (the request's features and time, the
    response's prediction); rows still waiting for their other half, or taken, give nothing."""
    events = []
    for event_id, row, result in zip(half.event_ids(), half.rows, results):
        if result.status != "joined":
            continue
        other = result.other
        if half.kind == "request":
            features, timestamp, score, label = row, half.timestamp_ms, other["s"], other["l"]
        else:
            features, timestamp = other["f"], other["t"]
            (score, label) = row
        if timestamp is None:
            timestamp = other["t"] if half.kind == "request" else half.timestamp_ms
        numbers = layout = None
        if features and all(v.__class__ in (int, float) for v in features.values()):
            numbers, layout = array("d", features.values()), tuple(features)
        events.append(InferenceEvent(event_id, half.model_id, timestamp, features, score, label, None,
                                     numbers, layout))
    return events
