"""The label join's former Redis layout (a key per entry, with its own PEXPIRE, and a sorted set per list), as
stream_monitor/join.py had it before its entries moved into per-model hashes and lists: the tests write with
it to check that the current layout gives the same results on a corpus and that `RedisJoin` moves a model's
former entries over. A copy, frozen: never imported by the service."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import orjson

from stream_monitor.config import PerformanceConfig
from stream_monitor.join import JoinOp, JoinResult

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


class FormerRedisJoin:
    """The former join in Redis (standalone Redis only here); one pipelined round trip per batch of messages, one script call per model in it
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
