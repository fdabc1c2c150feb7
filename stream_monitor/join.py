"""The label join: a label event meets its inference event by (model_id, event_id), wherever each lands.

Both sides go through Redis (any topic, partition or instance). Whichever
arrives second completes the pair, and the pair is counted by exactly one
message, recorded in Redis as ``joined`` = that message's identity
(topic|partition|offset). That makes the join effectively-once across
crashes: a message processed again after a crash finds itself recorded and
counts the pair again (its partition's state was restored from before the
first time), while any other message finds the pair taken and counts nothing.

A batch's steps of one model go to Redis in one script call (``_BATCH``; one per
``MAX_STEPS`` steps), which runs them in order, each with its own time and
arguments and the same logic as if it were a call of its own, so a batch gives
exactly what one call per step gives (tests/integration/test_join_batch.py).
The call reads what its steps need in a few bulk commands first (one HMGET per
hash for all the batch's event ids), runs the steps over what it read, and
writes back what changed at the end (one HSET and one HDEL per hash, one push
per list): Redis's cost per step is a few Lua table look-ups, not a command
each. A script runs alone, so that is the same as writing as it goes.

Every step is safe to run again: a batch whose pipeline failed half-way (Redis
unreachable, or refusing writes) is sent again as a whole, and a message finding
itself recorded as ``joined`` gets the same answer as the first time. A Redis
refusing writes refuses a script at its first write that needs memory, and each
call's first write is that SETNX; once a script has written, Redis lets it
finish, so a call is applied whole or not at all.

What the join keeps is bounded per model, in entries and in bytes, and the
oldest entries make room for new ones, so a new prediction can always be joined:

- ``max_pending`` unlabelled predictions: the next one evicts the oldest pending
  prediction, which counts as never labelled (``expired``, and ``evicted``).
- ``max_pending_bytes``: the scripts keep the estimated size of everything the
  model's join holds in ``stats.bytes`` (each hash field as its id and value plus
  ``FIELD_OVERHEAD``, each list element as its length plus ``ELEMENT_OVERHEAD``,
  both measured with MEMORY USAGE), so reading it costs one HGET. An entry that
  would take the total past the budget first evicts, oldest first, joined pairs
  (kept only to recognise replays), then labels still waiting for their
  prediction (``labels_evicted``), then pending predictions (never labelled,
  ``evicted``). An entry bigger than the whole budget is not stored (``dropped``).

Eviction forgets an entry for good, so the counts of losses are at-least-once:
a message processed again after a crash may store an evicted prediction again,
and it counts again if it is evicted or expires again. Stored again, it is the
newest entry, so under a full cap such a replay can push out predictions that
are younger than it (only those evicted since the last checkpoint come back).
Pairs are never counted twice: a pair is counted only by the message recorded
as ``joined``.

The layout: per model a few hashes keyed by event id and three lists in arrival
order, all under the model's hash tag (one Redis Cluster slot, every key named
in the script's KEYS). Expiry is done by the scripts: every step removes up to
512 elements of each list whose time is over, from the list's head. An entry
that leaves its list other than from the head (a prediction joined, a label
replaced) leaves its element behind, to be dropped when it reaches the head: an
element counts only while its stamp (its expiry time: ``STAMP_BASE`` + µs, 16
digits, so stamps compare as text) equals its entry's, and the bytes of such an element stay counted until it is dropped. A
list is in time order as long as the times of its model's steps are (one
instance's always are; instances with skewed clocks, or a shorter ttl in a newer
config, make an entry wait behind an older one for at most that difference).
Each call also sets Redis's own expiry of the lists and hashes to the longest
ttl plus an hour, which only cleans up after a service that was stopped.

- ``ns:join:{model}:pred`` — hash: event id → ``<stamp> <prediction JSON>``
  (its stamp: when it expires unlabelled).
- ``ns:join:{model}:paired`` — hash: event id → ``<stamp> <me>`` for a joined prediction
  (its stamp: the end of its ``joined_retention_seconds``).
- ``ns:join:{model}:label`` — hash: event id → ``<stamp> <label JSON>`` for a label that
  came first (kept ``label_wait_seconds``); ``ns:join:{model}:label_paired``: event id → me
  once such a label was joined.
- ``ns:join:{model}:q:pending``, ``:q:labels``, ``:q:done`` — lists of ``<stamp> <event id>``:
  unlabelled predictions (the cap on pending predictions and the count of those that never got
  a label), labels waiting for their prediction, joined predictions.
- ``ns:join:{model}:stats`` — hash: ``expired`` (never labelled, evictions included),
  ``evicted`` (pending predictions evicted for room), ``labels_evicted``, ``dropped``
  (bigger than the budget by themselves), ``bytes`` (the estimated size of all of it),
  and ``pending``, ``labels``, ``done``: the entries of each list that count.
- ``ns:join:{model}:marker`` — written (SETNX) by every join step, first thing: a step
  that finds it missing although this process saw it before tells that Redis lost
  the join's data (restarted empty, flushed); :class:`RedisJoin` reports it
  (``on_lost``) and the join goes on with what arrives from then on.

The layout before this one kept a key per entry (``ns:join:{model}:p:<event id>``,
``:l:<event id>``, each with its own PEXPIRE) and a sorted set per list
(``:pending``, ``:labels``, ``:done``). :class:`RedisJoin` moves such a model's
entries into this layout the first time it touches the model (``_MIGRATE``, in
chunks, each in its order), before any step: ``run`` does it by itself.
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

FIELD_OVERHEAD = 56  # bytes Redis spends on one hash field besides its name and value (measured ~51)
ELEMENT_OVERHEAD = 4  # bytes Redis spends on one list element besides its text (measured ~2)
GRACE_MS = 3_600_000  # Redis's own expiry of the model's lists and hashes: this long after the longest ttl
EXPIRE_BATCH = 512  # expired elements of each list removed per step
# Times are whole microseconds; each step of one RedisJoin gets a later time than the one before (by 1 µs at
# least), so the entries of one batch, stored in the same millisecond, keep the order they came in. A stamp is
# a time written as STAMP_BASE + µs: 16 digits until the year 2255, so stamps compare as text.
STAMP_BASE = 10 ** 15
# The most steps of one model one script call runs (a bigger batch takes more calls, in the same round trip): a
# script holds Redis while it runs, and this many steps take it some milliseconds.
MAX_STEPS = 1000
MIGRATE_CHUNK = 2000  # entries of the former layout one migration call moves

# Shared by the scripts. KEYS: the hashes pred, paired, label, label_paired; the lists q:pending, q:labels,
# q:done; stats. A hash is read through ``cache`` (``load`` fills it in bulk, ``get`` one field at a time) and
# changed only there (``set``, ``del``); a list is read from its head in chunks (``pop``, ``peek``) and appended
# to locally (``push``); ``flush`` writes all of it back at the end of the call.
_FUNCTIONS = """
local PRED, PAIRED, LABEL, LPAIRED, STATS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[8]
local FIELD, ELEMENT, CHUNK = %(field)d, %(element)d, 256
local now, now_at = '', 0  -- the step's time: its stamp, and as a number
local cache = {[PRED] = {}, [PAIRED] = {}, [LABEL] = {}, [LPAIRED] = {}}
local dirty = {[PRED] = {}, [PAIRED] = {}, [LABEL] = {}, [LPAIRED] = {}}
local function load(hash, ids)
  local known, wanted = cache[hash], {}
  for _, id in ipairs(ids) do
    if known[id] == nil then
      known[id] = false
      wanted[#wanted + 1] = id
    end
  end
  for first = 1, #wanted, 4000 do
    local last = math.min(first + 3999, #wanted)
    local got = redis.call('HMGET', hash, unpack(wanted, first, last))
    for i = first, last do known[wanted[i]] = got[i - first + 1] end
  end
end
local function get(hash, id)
  local value = cache[hash][id]
  if value == nil then
    value = redis.call('HGET', hash, id)
    cache[hash][id] = value
  end
  return value
end
local function set(hash, id, value)
  cache[hash][id] = value
  dirty[hash][id] = true
end
local function del(hash, id)
  cache[hash][id] = false
  dirty[hash][id] = true
end
local function split(text)  -- '<stamp> <rest>' -> stamp, rest
  local space = string.find(text, ' ', 1, true)
  return string.sub(text, 1, space - 1), string.sub(text, space + 1)
end
local function stamp(ms) return string.format('%%d', math.floor(ms * 1000 + 0.5) + %(base)d) end  -- see STAMP_BASE
local NEVER = math.huge  -- after every time
-- a list: 'read' elements fetched from Redis so far, 'taken' of them popped; 'front': popped ones put back
-- (a stack, its top first); 'tail': pushed by this call (from 'tail_at' to 'tail_n' still there); 'head': the
-- first element's stamp (nil: not known)
local function list(key, hashes, count)
  return {key = key, hashes = hashes, count = count, buf = {}, at = 1, read = 0, more = true, taken = 0,
          front = {}, tail = {}, tail_at = 1, tail_n = 0, head = nil}
end
local function peek(q)
  if #q.front > 0 then return q.front[#q.front] end
  if q.at > #q.buf and q.more then
    local got = redis.call('LRANGE', q.key, q.read, q.read + CHUNK - 1)
    q.read, q.more, q.buf, q.at = q.read + #got, #got == CHUNK, got, 1
    local ids = {}
    for i, element in ipairs(got) do ids[i] = string.sub(element, string.find(element, ' ', 1, true) + 1) end
    for _, hash in ipairs(q.hashes) do load(hash, ids) end
  end
  if q.at <= #q.buf then return q.buf[q.at] end
  if q.tail_at <= q.tail_n then return q.tail[q.tail_at] end
  return nil
end
local function pop(q)
  local element = peek(q)
  if element == nil then return nil end
  q.head = nil
  if #q.front > 0 then q.front[#q.front] = nil
  elseif q.at <= #q.buf then q.at, q.taken = q.at + 1, q.taken + 1
  else q.tail_at = q.tail_at + 1 end
  return element
end
local function unpop(q, element)
  q.front[#q.front + 1] = element
  q.head = nil
end
local function push(q, element)
  q.tail_n = q.tail_n + 1
  q.tail[q.tail_n] = element
  if q.head == NEVER then q.head = nil end
end
-- the first element's time, as a number (comparing strings goes through the locale's collation: slower)
local function head_time(q)
  if q.head == nil then
    local element = peek(q)
    q.head = element and tonumber((split(element))) or NEVER
  end
  return q.head
end
local pending = list(KEYS[5], {PRED, PAIRED}, 'pending')
local labels = list(KEYS[6], {LABEL, LPAIRED}, 'labels')
local done = list(KEYS[7], {PRED, PAIRED}, 'done')
local LISTS = {pending, labels, done}
local figures = redis.call('HMGET', STATS, 'bytes', 'pending', 'labels', 'done')
local used = tonumber(figures[1]) or 0
local counts = {pending = tonumber(figures[2]) or 0, labels = tonumber(figures[3]) or 0,
                done = tonumber(figures[4]) or 0}
local added = {}  -- counters of stats to increase at the end
local function count(counter, n) added[counter] = (added[counter] or 0) + n end
local function add_bytes(n) used = used + n end
local function release(n)
  used = used - n
  if used < 0 then used = 0 end
end
-- a list that Redis emptied by itself (its expiry after a stop) has nothing that counts; nothing left: no bytes
local function settle()
  local any = false
  for _, q in ipairs(LISTS) do
    if peek(q) == nil then counts[q.count] = 0 else any = true end
  end
  if not any then used = 0 end
end
-- the event id of the entry an element stands for, or nil for an element left behind
local function live(q, element)
  local at, id = split(element)
  local value
  if q == labels then value = get(LABEL, id)
  elseif q == done then value = get(PAIRED, id)
  else
    value = get(PRED, id)
    if value and get(PAIRED, id) then value = nil end
  end
  if value and string.sub(value, 1, #at) == at and string.byte(value, #at + 1) == 32 then return id end
  return nil
end
-- an entry removed: its fields (not its element), its bytes returned
local function drop(q, id)
  local freed = 0
  local first, second = PRED, PAIRED
  if q == labels then first, second = LABEL, LPAIRED end
  for _, hash in ipairs({first, second}) do
    local value = get(hash, id)
    if value then
      freed = freed + FIELD + #id + #value
      del(hash, id)
    end
  end
  counts[q.count] = counts[q.count] - 1
  return freed
end
-- the oldest entry of a list that counts (but the event id ``keep``'s), removed, with every element left behind
-- before it; returns whether there was one
local function evict_one(q, keep)
  local aside, found = {}, false
  while true do
    local element = pop(q)
    if element == nil then break end
    local id = live(q, element)
    if id and id == keep then aside[#aside + 1] = element
    else
      release(ELEMENT + #element)
      if id then
        release(drop(q, id))
        found = true
        break
      end
    end
  end
  for i = #aside, 1, -1 do unpop(q, aside[i]) end
  return found
end
local function evict(q, n, counter)
  local evicted = 0
  for _ = 1, n do
    if not evict_one(q, nil) then break end
    evicted = evicted + 1
  end
  if evicted > 0 then
    if counter then count(counter, evicted) end
    if q == pending then count('expired', evicted) end
  end
end
-- room for n more bytes, evicting others' entries (never the event id ``keep``'s: ``mine``, per list, how many
-- of that list's entries are its)
local function make_room(n, budget, keep, mine)
  while used + n > budget do
    local q = nil
    for _, candidate in ipairs({done, labels, pending}) do
      if counts[candidate.count] - (mine[candidate.count] or 0) > 0 then
        q = candidate
        break
      end
    end
    if q == nil then return end
    if evict_one(q, keep) then
      if q == labels then count('labels_evicted', 1)
      elseif q == pending then
        count('evicted', 1)
        count('expired', 1)
      end
    else
      counts[q.count] = mine[q.count] or 0  -- nothing else there (it vanished): the count was wrong
    end
  end
end
local function make_room_around(n, budget, id)
  if used + n <= budget then return end
  local joined = get(PAIRED, id)
  make_room(n, budget, id, {pending = (get(PRED, id) and not joined) and 1 or 0, done = joined and 1 or 0,
                            labels = get(LABEL, id) and 1 or 0})
end
-- elements whose time is over, from the head (at most ``limit``): the entries that count removed
local function expire(q, counter, limit)
  local seen, gone = 0, 0
  while seen < limit and head_time(q) <= now_at do
    local element = pop(q)
    seen = seen + 1
    release(ELEMENT + #element)
    local id = live(q, element)
    if id then
      release(drop(q, id))
      gone = gone + 1
    end
  end
  if counter and gone > 0 then count(counter, gone) end
  return seen
end
local function write(command, key, args)
  for first = 1, #args, 4000 do redis.call(command, key, unpack(args, first, math.min(first + 3999, #args))) end
end
local function flush()
  for hash, ids in pairs(dirty) do
    local sets, dels = {}, {}
    for id in pairs(ids) do
      local value = cache[hash][id]
      if value then
        sets[#sets + 1] = id
        sets[#sets + 1] = value
      else dels[#dels + 1] = id end
    end
    write('HSET', hash, sets)
    write('HDEL', hash, dels)
  end
  for _, q in ipairs(LISTS) do
    if q.taken > 0 then redis.call('LTRIM', q.key, q.taken, -1) end
    write('LPUSH', q.key, q.front)
    local rest = {}
    for i = q.tail_at, q.tail_n do rest[#rest + 1] = q.tail[i] end
    write('RPUSH', q.key, rest)
  end
  redis.call('HSET', STATS, 'bytes', used, 'pending', counts.pending, 'labels', counts.labels, 'done', counts.done)
  for counter, n in pairs(added) do redis.call('HINCRBY', STATS, counter, n) end
end
""" % {"field": FIELD_OVERHEAD, "element": ELEMENT_OVERHEAD, "base": STAMP_BASE}

# One script call runs a batch's steps of one model, in order, each as if it were a call of its own: the same
# logic per step, given that step's time and arguments; what is carried from one step to the next is what a
# call of its own would find in Redis (here: in the call's cache of it, written back at the end).
# KEYS: the shared eight, then the marker. ARGV: budget, cap, Redis's own expiry of the lists and hashes (ms);
# then the steps, one JSON array of [kind ('p' or 'l'), now, value (what it would store: ``<until> <record
# JSON>``), element (``<until> <event_id>``), joined_until (the end of a pair's retention if it joins), me,
# event_id]; the times are stamps. The client builds them: in Redis's Lua, formatting a number or concatenating
# strings costs more than the rest of a step (measured).
# Returns one string, its lines: fresh (1: the marker was missing), then per step its status, or the other
# side's value (``<stamp> <record>``, which begins with a digit) when it joined.
_BATCH = """
local fresh = redis.call('SETNX', KEYS[9], '1')
""" + _FUNCTIONS + """
local budget, cap, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local steps = cjson.decode(ARGV[4])
local ids = {}
for i, step in ipairs(steps) do ids[i] = step[7] end
for _, hash in ipairs({PRED, PAIRED, LABEL, LPAIRED}) do load(hash, ids) end
settle()
local value, element, me, id, joined_until
local function joined_by(paired) return paired and select(2, split(paired)) end
-- the pair joined by this message: the prediction (and the label that came first, if any) record it.
-- paired: the prediction's 'paired' value as the step read it; label_joined: the label's, as read
local function join_pair(paired, with_label, label_joined)
  local at = joined_until
  local value, element = at .. ' ' .. me, at .. ' ' .. id
  local extra = #value + ELEMENT + #element
  if paired then extra = extra - #paired else extra = extra + FIELD + #id end
  if with_label and not label_joined then extra = extra + FIELD + #id + #me end
  make_room_around(extra, budget, id)
  set(PAIRED, id, value)
  if with_label and not label_joined then set(LPAIRED, id, me) end
  add_bytes(extra)
  push(done, element)
  if not paired then
    counts.pending = counts.pending - 1
    counts.done = counts.done + 1
  end
end
local function store(hash, q, n, value, element)
  set(hash, id, value)
  add_bytes(n)
  push(q, element)
  counts[q.count] = counts[q.count] + 1
end
local function prediction_step()
  local paired = get(PAIRED, id)
  local joined = joined_by(paired)
  if not get(PRED, id) then
    local n = FIELD + #id + #value + ELEMENT + #element
    if n > budget then
      count('dropped', 1)
      return 'dropped'
    end
    local over = counts.pending - cap + 1
    if over > 0 then evict(pending, over, 'evicted') end
    make_room_around(n, budget, id)
    store(PRED, pending, n, value, element)
  end
  local early = get(LABEL, id)
  if early then
    local taken = get(LPAIRED, id)
    if (not taken) or taken == me then
      join_pair(paired, true, taken)
      return early
    end
    return 'taken'
  end
  if joined and joined ~= me then return 'taken' end
  return 'pending'
end
local function label_step()
  local stored = get(PRED, id)
  if stored then
    local paired = get(PAIRED, id)
    local taken = joined_by(paired)
    if (not taken) or taken == me then
      join_pair(paired, false, nil)
      return stored
    end
    return 'taken'
  end
  local taken = get(LPAIRED, id)
  if taken and taken ~= me then return 'taken' end
  local n = FIELD + #id + #value + ELEMENT + #element
  if n > budget then
    count('dropped', 1)
    return 'dropped'
  end
  if get(LABEL, id) then release(drop(labels, id)) end  -- the same label again: the newest is kept
  make_room_around(n, budget, id)
  store(LABEL, labels, n, value, element)
  return 'pending'
end
local out = {fresh}
for i, step in ipairs(steps) do
  local kind = step[1]
  now, value, element, joined_until, me, id = step[2], step[3], step[4], step[5], step[6], step[7]
  now_at = tonumber(now)
  expire(pending, 'expired', %(batch)d)
  expire(labels, nil, %(batch)d)
  expire(done, nil, %(batch)d)
  if kind == 'p' then out[i + 1] = prediction_step() else out[i + 1] = label_step() end
end
flush()
for i = 1, 7 do redis.call('PEXPIRE', KEYS[i], keep) end
return table.concat(out, '\\n')
""" % {"batch": EXPIRE_BATCH}

# Entries whose time is over, removed (predictions counted as never labelled); then the figures. ARGV: now (ms).
_EXPIRE = _FUNCTIONS + """
now = ARGV[1]
now_at = tonumber(now)
settle()
for _ = 1, 100 do
  if expire(pending, 'expired', 4096) + expire(labels, nil, 4096) + expire(done, nil, 4096) == 0 then break end
end
settle()
flush()
return {counts.pending, counts.labels, redis.call('HMGET', STATS, 'expired', 'dropped', 'evicted', 'labels_evicted',
                                                  'bytes')}
"""

# The former layout's entries moved into this one, at most ARGV[2] of them, each list in its order (pending
# predictions, waiting labels, joined pairs); returns how many were moved (0: nothing is left). KEYS: the
# shared eight, then the former sorted sets pending, labels, done; ARGV[1]: the model's prefix, from which the
# former entries' keys are derived (the same hash tag). An entry whose key Redis had already expired is dropped.
_MIGRATE = _FUNCTIONS + """
local base, limit = ARGV[1], tonumber(ARGV[2])
local moved = 0
local function migrate(old, q, prefix)
  local members = redis.call('ZRANGE', old, 0, limit - moved - 1, 'WITHSCORES')
  if #members == 0 then return end
  local keys = {}
  for i = 1, #members, 2 do
    local id, at = members[i], stamp(tonumber(members[i + 1]))
    local key = base .. prefix .. id
    keys[#keys + 1] = key
    local entry = redis.call('HMGET', key, 'p', 'l', 'joined', 'n')
    release(tonumber(entry[4]) or (#key + #id + %(old_overhead)d))
    local record, joined, element = entry[1] or entry[2], entry[3], at .. ' ' .. id
    local first, second = PRED, PAIRED
    if q == labels then first, second = LABEL, LPAIRED end
    if record and (q ~= done or joined) then
      local value = at .. ' ' .. record
      local n = FIELD + #id + #value + ELEMENT + #element
      set(first, id, value)
      if joined and q ~= pending then
        local mark = joined
        if q == done then mark = at .. ' ' .. joined end
        set(second, id, mark)
        n = n + FIELD + #id + #mark
      end
      add_bytes(n)
      push(q, element)
      counts[q.count] = counts[q.count] + 1
    end
  end
  for first = 1, #keys, 4000 do redis.call('DEL', unpack(keys, first, math.min(first + 3999, #keys))) end
  redis.call('ZREMRANGEBYRANK', old, 0, #keys - 1)
  moved = moved + #keys
end
migrate(KEYS[9], pending, ':p:')
if moved < limit then migrate(KEYS[10], labels, ':l:') end
if moved < limit then migrate(KEYS[11], done, ':p:') end
flush()
return moved
""" % {"old_overhead": 256}


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


_STATUSES = {status.encode(): JoinResult(status) for status in ("pending", "taken", "dropped")}
_DIGITS = frozenset(b"0123456789")



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
        self._current: set[str] = set()  # models whose entries are in this layout (see _MIGRATE)
        self._last = 0  # the time (µs) given to the latest step: strictly increasing, see STAMP_BASE
        self._batch = client.register_script(_BATCH)
        self._expire = client.register_script(_EXPIRE)
        self._migrate = client.register_script(_MIGRATE)
        self._cluster = isinstance(client, RedisCluster)
        self._loaded = False  # on a Redis Cluster: the scripts were loaded on every primary (see _run_on_cluster)

    @property
    def models_seen(self) -> frozenset[str]:
        """The models this process has run steps for."""
        return frozenset(self._seen)

    def _base(self, model_id: str) -> str:
        return f"{self.namespace}:join:{{{model_id}}}"

    def _keys(self, model_id: str) -> list[str]:
        """The keys of a model's join, in the scripts' order (KEYS): its hashes, lists, stats and marker."""
        base = self._base(model_id)
        return [f"{base}:{name}" for name in ("pred", "paired", "label", "label_paired", "q:pending", "q:labels",
                                              "q:done", "stats", "marker")]

    def _former_keys(self, model_id: str) -> list[str]:
        """The sorted sets of the layout before this one (pending, labels, done)."""
        base = self._base(model_id)
        return [f"{base}:pending", f"{base}:labels", f"{base}:done"]

    def run(self, ops: Sequence[JoinOp]) -> list[JoinResult]:
        """The ops' results, in their order. Each op gets its own time (strictly increasing, in µs);
        the ops of one model go to Redis in their order, in one script call (or one per MAX_STEPS), which
        runs each as the step it would be alone; models share nothing, so their calls are independent."""
        if not ops:
            return []
        now = max(int(self.clock() * 1_000_000) + STAMP_BASE, self._last + 1)
        by_model: dict[str, list[int]] = {}
        times = []
        for i, op in enumerate(ops):
            now = max(now, self._last + 1)
            self._last = now
            times.append(now)
            by_model.setdefault(op.model_id, []).append(i)
        self._move_former(by_model)
        calls, owners = [], []  # owners: per call, its model and the indexes of its ops
        dumps = orjson.dumps
        for model_id, indexes in by_model.items():
            cfg = self.settings[model_id]
            keys = self._keys(model_id)
            ttls = {"prediction": int(cfg.prediction_ttl_seconds * 1_000_000),
                    "label": int(cfg.label_wait_seconds * 1_000_000)}
            retention = int(cfg.joined_retention_seconds * 1_000_000)
            limits = [cfg.max_pending_bytes, cfg.max_pending, max(*ttls.values(), retention) // 1000 + GRACE_MS]
            for start in range(0, len(indexes), MAX_STEPS):
                chunk = indexes[start:start + MAX_STEPS]
                steps = []
                for i in chunk:
                    op, at = ops[i], times[i]
                    until = str(at + ttls[op.kind])
                    steps.append(("p" if op.kind == "prediction" else "l", str(at),
                                  f"{until} {dumps(op.record).decode()}", f"{until} {op.event_id}",
                                  str(at + retention), op.me, op.event_id))
                calls.append((self._batch, keys, [*limits, dumps(steps)]))
                owners.append((model_id, chunk))
        replies = self._send(calls)
        results: list[JoinResult | None] = [None] * len(ops)
        statuses = _STATUSES
        for (model_id, chunk), reply in zip(owners, replies):
            fresh, *lines = (reply if isinstance(reply, bytes) else reply.encode()).split(b"\n")
            if fresh == b"1" and model_id in self._seen and self.on_lost is not None:
                self.on_lost(model_id)
            self._seen.add(model_id)
            for i, line in zip(chunk, lines):
                results[i] = statuses.get(line) or JoinResult("joined", orjson.loads(line.partition(b" ")[2]))
        return results  # type: ignore[return-value]

    def _send(self, calls: list[tuple[Any, list[str], list]]) -> list:
        """The calls' replies, in one pipelined round trip (per node on a cluster)."""
        if self._cluster:
            return self._run_on_cluster(calls)
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args in calls:
            script(keys=keys, client=pipe, args=args)
        return pipe.execute()

    def _move_former(self, models) -> None:
        """The entries a model still has in the former layout moved into this one, before anything else of
        this process touches the model (once per model and process; nothing to move costs one round trip)."""
        for model_id in models:
            if model_id in self._current:
                continue
            call = (self._migrate, self._keys(model_id)[:8] + self._former_keys(model_id),
                    [self._base(model_id), MIGRATE_CHUNK])
            while self._send([call])[0]:
                pass
            self._current.add(model_id)

    def _run_on_cluster(self, calls: list[tuple[Any, list[str], list]]) -> list:
        """The batch on a Redis Cluster, still one pipelined round trip (per node). redis-py's cluster
        pipeline takes no script objects and loads no scripts: each step is queued as a plain EVALSHA,
        routed by its keys' slot (the keys of one model share a hash tag, so its steps keep their order on
        one node), after the scripts were loaded on every primary; a node that answers NOSCRIPT (a new
        primary after a failover, a restarted one) gets them again and the batch is sent again whole, as
        every step is safe to run again. The pipeline is not a transaction, and nothing here needs one."""
        for attempt in (0, 1):
            if attempt or not self._loaded:
                for script in (self._batch, self._expire, self._migrate):
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
        self._move_former([model_id])
        awaiting, waiting, stats = self._send([(self._expire, self._keys(model_id)[:8],
                                                [str(int(self.clock() * 1_000_000) + STAMP_BASE)])])[0]
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
    ``attributes``: per model the feature values kept with the prediction so a later label knows them
    (:func:`kept_columns`: its protected attributes' groups, its segment)."""
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


def kept_columns(config) -> dict[str, tuple[str, ...]]:
    """Per model the feature values a prediction keeps in the join (``g``) so that its label knows them: its
    protected attributes (fairness) and its segment columns (per-segment performance), in that order."""
    out = {}
    for model_id, model in config.models.items():
        names = dict.fromkeys((*model.fairness.attributes, *model.segments.columns))
        if names:
            out[model_id] = tuple(names)
    return out


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
