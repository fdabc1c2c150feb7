"""The label join: a label event meets its inference event by (model_id, event_id), wherever each lands.

Both sides go through Redis (any topic, partition or instance). Whichever
arrives second completes the pair, and the pair is counted by exactly one
message, recorded in Redis as ``joined`` = that message's identity
(topic|partition|offset). That makes the join effectively-once across
crashes: a message processed again after a crash finds itself recorded and
counts the pair again (its partition's state was restored from before the
first time), while any other message finds the pair taken and counts nothing.

Every script is safe to run again: a batch whose pipeline failed half-way (Redis
unreachable, or refusing writes) is sent again as a whole, and a message finding
itself recorded as ``joined`` gets the same answer as the first time. The only
count a repeat can change is ``dropped`` (a prediction over the cap is counted
each time it is refused). A Redis refusing writes refuses a script at its first
write that needs memory, and each script writes with HSET/HINCRBY before
anything else (ZREM, PEXPIRE need none), so a refused script changes nothing.

Keys of one model share a hash tag, so each script touches one Redis Cluster slot:

- ``ns:join:{model}:p:<event_id>`` — hash: ``p`` (the prediction, JSON), ``joined``;
  kept ``prediction_ttl_seconds`` while unlabelled, ``joined_retention_seconds`` after.
- ``ns:join:{model}:l:<event_id>`` — a label that came first: ``l`` (JSON), ``joined``;
  kept ``label_wait_seconds``.
- ``ns:join:{model}:pending`` — sorted set of unlabelled predictions by expiry
  (the cap on pending predictions and the count of those that never got a label).
- ``ns:join:{model}:stats`` — hash: ``expired`` (never labelled), ``dropped`` (over the cap).
- ``ns:join:{model}:marker`` — written (SETNX) by every join step, first thing: a step
  that finds it missing although this process saw it before tells that Redis lost
  the join's data (restarted empty, flushed); :class:`RedisJoin` reports it
  (``on_lost``) and the join goes on with what arrives from then on.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Sequence

import orjson

from .config import PerformanceConfig

_PREDICTION = """
local pred, label, pending, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local fresh = redis.call('SETNX', KEYS[5], '1')
local record, me, ttl, cap, now, event_id = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local expired = redis.call('ZCOUNT', pending, '-inf', now)
if expired > 0 then
  redis.call('HINCRBY', stats, 'expired', expired)
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
end
local joined = redis.call('HGET', pred, 'joined')
if not joined then
  if redis.call('EXISTS', pred) == 0 and redis.call('ZCARD', pending) >= cap then
    redis.call('HINCRBY', stats, 'dropped', 1)
    return {fresh, 'dropped'}
  end
  redis.call('HSET', pred, 'p', record)
  redis.call('PEXPIRE', pred, ttl)
  redis.call('ZADD', pending, now + ttl, event_id)
end
local early = redis.call('HGET', label, 'l')
if early then
  local taken = redis.call('HGET', label, 'joined')
  if (not taken) or taken == me then
    redis.call('HSET', label, 'joined', me)
    redis.call('HSET', pred, 'joined', me)
    redis.call('PEXPIRE', pred, tonumber(ARGV[7]))
    redis.call('ZREM', pending, event_id)
    return {fresh, 'joined', early}
  end
  return {fresh, 'taken'}
end
if joined and joined ~= me then return {fresh, 'taken'} end
return {fresh, 'pending'}
"""

_LABEL = """
local pred, label, pending = KEYS[1], KEYS[2], KEYS[3]
local fresh = redis.call('SETNX', KEYS[4], '1')
local record, me, wait, retention, event_id = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local stored = redis.call('HGET', pred, 'p')
if stored then
  local taken = redis.call('HGET', pred, 'joined')
  if (not taken) or taken == me then
    redis.call('HSET', pred, 'joined', me)
    redis.call('PEXPIRE', pred, retention)
    redis.call('ZREM', pending, event_id)
    return {fresh, 'joined', stored}
  end
  return {fresh, 'taken'}
end
local taken = redis.call('HGET', label, 'joined')
if taken and taken ~= me then return {fresh, 'taken'} end
redis.call('HSET', label, 'l', record)
redis.call('PEXPIRE', label, wait)
return {fresh, 'pending'}
"""


# Predictions whose wait for a label is over: counted as expired and removed, in one step.
_EXPIRE = """
local expired = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
if expired > 0 then
  redis.call('HINCRBY', KEYS[2], 'expired', expired)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
return expired
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


def prediction_record(score: float | None, label: Any, timestamp_ms: int | None) -> dict[str, Any]:
    return {"score": score, "label": label, "t": timestamp_ms}


def label_record(label: Any, timestamp_ms: int | None) -> dict[str, Any]:
    return {"label": label, "t": timestamp_ms}


class RedisJoin:
    """The join in Redis; one pipelined round trip per batch of messages."""

    def __init__(self, client, namespace: str, settings: dict[str, PerformanceConfig],
                 on_lost: Callable[[str], None] | None = None):
        self.client = client
        self.namespace = namespace
        self.settings = settings
        self.on_lost = on_lost  # called with a model id whose join data vanished from Redis
        self._seen: set[str] = set()  # models whose marker this process has found or written
        self._prediction = client.register_script(_PREDICTION)
        self._label = client.register_script(_LABEL)
        self._expire = client.register_script(_EXPIRE)

    def _keys(self, model_id: str, event_id: str) -> list[str]:
        base = f"{self.namespace}:join:{{{model_id}}}"
        return [f"{base}:p:{event_id}", f"{base}:l:{event_id}", f"{base}:pending", f"{base}:stats", f"{base}:marker"]

    def run(self, ops: Sequence[JoinOp]) -> list[JoinResult]:
        if not ops:
            return []
        now = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        for op in ops:
            cfg = self.settings[op.model_id]
            keys = self._keys(op.model_id, op.event_id)
            record = orjson.dumps(op.record)
            if op.kind == "prediction":
                self._prediction(keys=keys, client=pipe,
                                 args=[record, op.me, int(cfg.prediction_ttl_seconds * 1000), cfg.max_pending, now,
                                       op.event_id, int(cfg.joined_retention_seconds * 1000)])
            else:
                self._label(keys=[*keys[:3], keys[4]], client=pipe,
                            args=[record, op.me, int(cfg.label_wait_seconds * 1000),
                                  int(cfg.joined_retention_seconds * 1000), op.event_id])
        replies = pipe.execute()
        for op, reply in zip(ops, replies):
            if int(reply[0]) and op.model_id in self._seen and self.on_lost is not None:
                self.on_lost(op.model_id)
            self._seen.add(op.model_id)
        return [_result(reply[1:]) for reply in replies]

    def lag(self, model_id: str) -> dict[str, int]:
        """Predictions awaiting a label, and those that expired unlabelled or were dropped over the cap."""
        base = f"{self.namespace}:join:{{{model_id}}}"
        self._expire(keys=[f"{base}:pending", f"{base}:stats"], args=[int(time.time() * 1000)])
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(f"{base}:pending")
        pipe.hgetall(f"{base}:stats")
        awaiting, stats = pipe.execute()
        return {"awaiting": int(awaiting), "expired": int(stats.get(b"expired", 0)),
                "dropped": int(stats.get(b"dropped", 0))}


def _result(reply: list) -> JoinResult:
    status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    other = orjson.loads(reply[1]) if len(reply) > 1 else None
    return JoinResult(status, other)


class MemoryJoin:
    """The same join in memory, for ``replay`` (one process, one file; no expiry)."""

    def __init__(self, settings: dict[str, PerformanceConfig]):
        self.settings = settings
        self._predictions: dict[tuple[str, str], dict[str, Any]] = {}
        self._labels: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending: dict[str, int] = {}

    def run(self, ops: Sequence[JoinOp]) -> list[JoinResult]:
        return [self._one(op) for op in ops]

    def _one(self, op: JoinOp) -> JoinResult:
        key = (op.model_id, op.event_id)
        pred, early = self._predictions.get(key), self._labels.get(key)
        if op.kind == "prediction":
            if pred is None:
                if self._pending.get(op.model_id, 0) >= self.settings[op.model_id].max_pending:
                    return JoinResult("dropped")
                pred = self._predictions[key] = {"p": op.record}
                self._pending[op.model_id] = self._pending.get(op.model_id, 0) + 1
            if early is not None:
                if early.get("joined") in (None, op.me):
                    self._joined(op.model_id, pred, op.me)
                    early["joined"] = op.me
                    return JoinResult("joined", early["l"])
                return JoinResult("taken")
            if pred.get("joined") not in (None, op.me):
                return JoinResult("taken")
            return JoinResult("pending")
        if pred is not None:
            if pred.get("joined") in (None, op.me):
                self._joined(op.model_id, pred, op.me)
                return JoinResult("joined", pred["p"])
            return JoinResult("taken")
        if early is not None and early.get("joined") not in (None, op.me):
            return JoinResult("taken")
        self._labels[key] = {"l": op.record}
        return JoinResult("pending")

    def _joined(self, model_id: str, pred: dict[str, Any], me: str) -> None:
        if "joined" not in pred:
            self._pending[model_id] -= 1
        pred["joined"] = me


def join_op(event, me: str, settings: dict[str, PerformanceConfig]) -> JoinOp | None:
    """The join operation an event needs (``None`` for models without a performance task)."""
    cfg = settings.get(event.model_id)
    if cfg is None or not cfg.task:
        return None
    if hasattr(event, "features"):
        if event.score is None and event.predicted_label is None:
            return None
        return JoinOp("prediction", event.model_id, event.event_id,
                      prediction_record(event.score, event.predicted_label, event.timestamp_ms), me)
    return JoinOp("label", event.model_id, event.event_id, label_record(event.label, event.timestamp_ms), me)


def performance_settings(config) -> dict[str, PerformanceConfig]:
    return {model_id: model.performance for model_id, model in config.models.items() if model.performance.task}
