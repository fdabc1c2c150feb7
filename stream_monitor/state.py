"""The Redis store: a partition's detector state and its next offset, saved in one atomic step.

Layout (``ns`` = ``redis.namespace``; the ``{…}`` hash tag keeps one
partition's keys in one Redis Cluster slot):

- ``ns:{group|topic|partition}:state`` — hash: ``offset`` (next offset to read),
  ``epoch`` (which log ``offset`` counts in, see below; absent = 0), ``state`` (zlib-compressed pickle of the partition snapshot), ``summary``
  (JSON for ``status``), ``saved_at`` (epoch ms), and one ``ref:<id>`` field per
  reference profile the snapshot uses (zlib JSON, ``<id>`` a hash of its
  content). References are immutable and ~20× the size of the detector state,
  so they are written once, in the same atomic step as the first state that
  uses them, and the snapshot only names them; fields no state names any
  more are removed by the save that stops naming them.
- ``ns:partitions:{group}`` — set of ``topic|partition`` that have state (an index).
- ``ns:reference:{model}`` — the stored reference profile (JSON) with its version.

Fencing. A save is refused (STALE) when the stored state is newer, so an owner
that lost the partition without noticing (a zombie) cannot overwrite the
progress of the new owner. "Newer" compares ``(epoch, offset)``: offsets only
grow within one log, but when the log moved under the stored offset (the topic
was recreated, a memory-only broker restarted, retention deleted what the
offset pointed to) the owner reads again from the earliest retained message,
with offsets lower than the stored one. It then starts a new epoch
(:meth:`StateStore.new_epoch`, the stored epoch + 1); its saves, at lower
offsets, win over the old log's state, and a zombie still saving in the old
epoch is refused.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace
import time
import zlib
from typing import Any, Iterator, Mapping

import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .errors import StateError
from .reference import ReferenceProfile

# A Redis that refuses writes (out of memory, read-only replica, MISCONF) refuses a script at its first
# write that needs memory, and once a script has written it runs to the end: so every script here writes
# with HSET (or another command that needs memory) before anything else (HDEL, ZREM, PEXPIRE need none),
# and a refused save changes nothing; the caller retries it as a whole.
# Write only if no newer state is stored: a fenced-out (zombie) owner cannot
# overwrite the progress of the partition's new owner.
# ARGV[5] = 1 when this process has stored or loaded the partition's state before: if the key is
# gone, Redis lost its data (restarted empty, flushed) and the caller must know (-1).
# ARGV[6] = the epoch of the log ARGV[1] counts in: state is newer when its (epoch, offset) is greater.
# ARGV[7] = how many reference ids the state names; they follow, then (id, blob) pairs of references
# to write. A named reference neither stored nor sent: nothing is written (-2; the caller sends all).
_SAVE = """
local current = redis.call('HGET', KEYS[1], 'offset')
local epoch, mine = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0'), tonumber(ARGV[6])
if current and (epoch > mine or (epoch == mine and tonumber(current) > tonumber(ARGV[1]))) then return 0 end
local named = tonumber(ARGV[7])
local sent = {}
for i = 8 + named, #ARGV, 2 do sent['ref:' .. ARGV[i]] = ARGV[i + 1] end
local keep = {}
for i = 8, 7 + named do
  local field = 'ref:' .. ARGV[i]
  keep[field] = true
  if not sent[field] and redis.call('HEXISTS', KEYS[1], field) == 0 then return -2 end
end
for field, blob in pairs(sent) do redis.call('HSET', KEYS[1], field, blob) end
redis.call('HSET', KEYS[1], 'offset', ARGV[1], 'state', ARGV[2], 'summary', ARGV[3], 'saved_at', ARGV[4],
           'epoch', ARGV[6])
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 4) == 'ref:' and not keep[field] then redis.call('HDEL', KEYS[1], field) end
end
if (not current) and ARGV[5] == '1' then return -1 end
return 1
"""

SAVED, STALE, LOST, MISSING_REFERENCES = 1, 0, -1, -2
_REFERENCE_FIELDS = ("reference", "label_reference")  # of each model in a partition snapshot


def connect(url: str) -> redis.Redis:
    """A client with short timeouts and a few quick retries; longer outages are the caller's
    (:func:`stream_monitor.app.Service._redis`: logged, counted, bounded)."""
    return redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def encode_state(snapshot: Mapping[str, Any]) -> bytes:
    return zlib.compress(pickle.dumps(dict(snapshot), protocol=5), 1)


def decode_state(blob: bytes) -> dict[str, Any]:
    try:
        return pickle.loads(zlib.decompress(blob))
    except Exception as exc:  # noqa: BLE001 - any corruption is a StateError
        raise StateError(f"stored partition state cannot be decoded: {exc!r}") from None


def _named_references(snapshot: Mapping[str, Any]) -> list[str]:
    return sorted({model[field]["$ref"] for model in snapshot.get("models", {}).values()
                   for field in _REFERENCE_FIELDS if isinstance(model.get(field), dict) and "$ref" in model[field]})


def _split_references(snapshot: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The snapshot with each reference profile replaced by ``{"$ref": id}``, and the profiles (pickled)
    by id."""
    references: dict[str, Any] = {}
    models = {}
    for model_id, model in snapshot.get("models", {}).items():
        model = dict(model)
        for field in _REFERENCE_FIELDS:
            profile = model.get(field)
            if profile is not None:
                blob = pickle.dumps(profile, protocol=5)
                ref = hashlib.sha256(blob).hexdigest()[:24]
                references[ref] = blob
                model[field] = {"$ref": ref}
        models[model_id] = model
    return {**snapshot, "models": models}, references


def _resolve_references(snapshot: dict[str, Any], references: Mapping[str, Any]) -> None:
    for model in snapshot.get("models", {}).values():
        for field in _REFERENCE_FIELDS:
            if isinstance(model.get(field), dict) and "$ref" in model[field]:
                model[field] = references[model[field]["$ref"]]


class StateStore:
    def __init__(self, client: redis.Redis, namespace: str, group_id: str):
        self.client = client
        self.namespace = namespace
        self.group_id = group_id
        self._save = client.register_script(_SAVE)
        self._written: dict[str, set[str]] = {}  # per state key: reference ids known to be stored beside it
        self._epochs: dict[str, int] = {}  # per state key: the epoch this process loaded, saved or started

    def key(self, topic: str, partition: int) -> str:
        return f"{self.namespace}:{{{self.group_id}|{topic}|{partition}}}:state"

    @property
    def index_key(self) -> str:
        return f"{self.namespace}:partitions:{{{self.group_id}}}"

    def load(self, topic: str, partition: int) -> tuple[int, dict[str, Any]] | None:
        """(next offset, snapshot) of a partition, or ``None`` if nothing is stored."""
        key = self.key(topic, partition)
        offset, blob, epoch = self.client.hmget(key, ["offset", "state", "epoch"])
        if offset is None or blob is None:
            return None
        self._epochs[key] = int(epoch or 0)
        snapshot = decode_state(blob)
        named = _named_references(snapshot)
        if named:
            blobs = self.client.hmget(key, [f"ref:{ref}" for ref in named])
            missing = [ref for ref, part in zip(named, blobs) if part is None]
            if missing:
                raise StateError(f"the state of {topic}[{partition}] names reference profiles {missing} "
                                 "that are not stored beside it")
            _resolve_references(snapshot, {ref: decode_state(part) for ref, part in zip(named, blobs)})
        self._written[key] = set(named)
        return int(offset), snapshot

    def save(self, topic: str, partition: int, next_offset: int, snapshot: Mapping[str, Any],
             summary: Mapping[str, Any], existed: bool = False) -> int:
        """Atomically store state and next offset: SAVED; STALE if newer state was already stored;
        LOST if ``existed`` (this process stored or loaded it before) but the key was gone."""
        key = self.key(topic, partition)
        state, references = _split_references(snapshot)
        written = self._written.setdefault(key, set())
        head = [next_offset, encode_state(state), orjson.dumps(summary), int(time.time() * 1000),
                1 if existed else 0, self._epochs.get(key, 0), len(references), *references]
        self.client.sadd(self.index_key, f"{topic}|{partition}")
        for send in ([r for r in references if r not in written], list(references)):
            parts = [item for ref in send for item in (ref, zlib.compress(references[ref], 1))]
            outcome = int(self._save(keys=[key], args=head + parts))
            if outcome != MISSING_REFERENCES:  # else: written elsewhere or lost; send them all
                break
        if outcome in (SAVED, LOST):
            self._written[key] = set(references)
        return outcome

    def epoch(self, topic: str, partition: int) -> int:
        return self._epochs.get(self.key(topic, partition), 0)

    def new_epoch(self, topic: str, partition: int) -> int:
        """The partition's log moved: from now on its offsets count in a new log (see Fencing above)."""
        key = self.key(topic, partition)
        self._epochs[key] = self._epochs.get(key, 0) + 1
        return self._epochs[key]

    def partitions(self) -> list[tuple[str, int]]:
        members = self.client.smembers(self.index_key)
        out = []
        for member in members:
            topic, _, partition = member.decode().rpartition("|")
            out.append((topic, int(partition)))
        return sorted(out)

    def summaries(self) -> Iterator[tuple[str, int, int, dict[str, Any], int]]:
        """(topic, partition, next offset, summary, saved_at ms) of every stored partition."""
        for topic, partition in self.partitions():
            offset, summary, saved_at = self.client.hmget(self.key(topic, partition),
                                                          ["offset", "summary", "saved_at"])
            if offset is not None:
                yield topic, partition, int(offset), orjson.loads(summary or b"{}"), int(saved_at or 0)


class ReferenceStore:
    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self.namespace = namespace

    def key(self, model_id: str) -> str:
        return f"{self.namespace}:reference:{{{model_id}}}"

    def store(self, profile: ReferenceProfile) -> ReferenceProfile:
        """Store a profile under the next version number; returns it with that version."""
        key = self.key(profile.model_id)
        version = int(self.client.hincrby(key, "version_counter", 1))
        stored = replace(profile, version=version, source="stored")
        self.client.hset(key, mapping={"profile": orjson.dumps(stored.to_dict()), "version": version})
        return stored

    def version(self, model_id: str) -> int | None:
        value = self.client.hget(self.key(model_id), "version")
        return None if value is None else int(value)

    def load(self, model_id: str) -> ReferenceProfile | None:
        blob = self.client.hget(self.key(model_id), "profile")
        return None if blob is None else ReferenceProfile.from_dict(orjson.loads(blob))
