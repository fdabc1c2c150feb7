"""The Redis store: a partition's detector state and its next offset, saved in one atomic step.

Layout (``ns`` = ``redis.namespace``; the ``{…}`` hash tag keeps one
partition's keys in one Redis Cluster slot):

- ``ns:{group|topic|partition}:state`` — hash: ``offset`` (next offset to read),
  ``epoch`` (which log ``offset`` counts in, see below; absent = 0), ``state`` (the partition
  snapshot as a data-only, versioned blob: :mod:`stream_monitor.statecodec`, without the next
  offset: ``offset`` is its one copy, which :meth:`StateStore.load` puts into the snapshot it returns;
  a blob written by an older version still carries one, and the hash field wins), ``summary``
  (JSON for ``status``), ``saved_at`` (epoch ms), and one ``ref:<id>`` field per
  reference profile the snapshot uses (a blob of the same format; ``<id>`` the
  :func:`~stream_monitor.statecodec.digest` of the profile's data). References are immutable and ~20× the size of the detector state,
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

import base64
import hashlib
import marshal
import re
import time
from dataclasses import replace
from typing import Any, Container, Iterable, Iterator, Mapping, NamedTuple

import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from . import statecodec
from .errors import StateError
from .merge import PartitionPartials
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
# ARGV[7] = how many reference ids the state names; they follow ARGV[8], then the partials' pairs (below),
# then (id, blob) pairs of references to write. A named reference neither stored nor sent: nothing is
# written (-2; the caller sends all).
# ARGV[8] = per partials key (KEYS[2], KEYS[3], …, one per model with decisions = "model"): [watermark
# (a string, "" when unknown), idle (0/1), how many closed partials follow, the cap on unmerged ones];
# after the named reference ids come those partials' (bucket, blob) pairs, then the references' pairs.
# Written only with the state: a fenced-out owner writes neither. Returns {outcome, partials dropped per partials key}.
_SAVE = """
local current = redis.call('HGET', KEYS[1], 'offset')
local epoch, mine = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0'), tonumber(ARGV[6])
if current and (epoch > mine or (epoch == mine and tonumber(current) > tonumber(ARGV[1]))) then return {0} end
local named = tonumber(ARGV[7])
local heads = cjson.decode(ARGV[8])
local partials_at = 9 + named
local pairs_from = partials_at
for _, head in ipairs(heads) do pairs_from = pairs_from + 2 * head[3] end
local sent = {}
for i = pairs_from, #ARGV, 2 do sent['ref:' .. ARGV[i]] = ARGV[i + 1] end
local keep = {}
for i = 9, 8 + named do
  local field = 'ref:' .. ARGV[i]
  keep[field] = true
  if not sent[field] and redis.call('HEXISTS', KEYS[1], field) == 0 then return {-2} end
end
for field, blob in pairs(sent) do redis.call('HSET', KEYS[1], field, blob) end
redis.call('HSET', KEYS[1], 'offset', ARGV[1], 'state', ARGV[2], 'summary', ARGV[3], 'saved_at', ARGV[4],
           'epoch', ARGV[6])
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 4) == 'ref:' and not keep[field] then redis.call('HDEL', KEYS[1], field) end
end
local at, dropped = partials_at, {}
for k, head in ipairs(heads) do
  dropped[k] = 0
  local key = KEYS[k + 1]
  redis.call('HSET', key, 'idle', tostring(head[2]))
  if head[1] ~= '' then redis.call('HSET', key, 'wm', head[1]) end
  for _ = 1, head[3] do
    redis.call('HSET', key, ARGV[at], ARGV[at + 1])
    at = at + 2
  end
  local buckets = {}
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if field ~= 'wm' and field ~= 'idle' then table.insert(buckets, {tonumber(field), field}) end
  end
  if #buckets > head[4] then
    table.sort(buckets, function(a, b) return a[1] < b[1] end)
    for j = 1, #buckets - head[4] do redis.call('HDEL', key, buckets[j][2]) end
    dropped[k] = #buckets - head[4]
  end
end
table.insert(dropped, 1, ((not current) and ARGV[5] == '1') and -1 or 1)
return dropped
"""

SAVED, STALE, LOST, MISSING_REFERENCES = 1, 0, -1, -2
_REFERENCE_FIELDS = ("reference", "label_reference")  # of each model in a partition snapshot
_DIGITS = re.compile(r"[0-9]{1,19}")


def connect(url: str, cluster: bool = False) -> redis.Redis:
    """A client with short timeouts and a few quick retries; longer outages are the caller's
    (:func:`stream_monitor.app.Service._redis`: logged, counted, bounded).

    ``cluster``: a Redis Cluster, discovered through the node ``url`` names (same URL forms, credentials and
    TLS options). Its client routes each command by its keys' hash slot and follows MOVED/ASK; every
    script here passes its keys, and the keys of one script share one hash tag, so each runs on one node.
    Unlike the standalone client it reaches a node when it is created: an unreachable cluster raises here."""
    if cluster:
        return RedisCluster.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1))
    return redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


# What a Redis call may raise: the cluster client also raises errors outside RedisError (no node reachable,
# a slot no node serves).
REDIS_ERRORS = (redis.RedisError, RedisClusterException)


class CorruptState(StateError):
    """A partition's stored fields are not a state of this version (the message names the key)."""


def encode_state(snapshot: Mapping[str, Any]) -> bytes:
    return statecodec.encode(dict(snapshot))


def decode_state(blob: bytes, where: str = "stored partition state") -> dict[str, Any]:
    """A snapshot from its blob; a :class:`StateError` naming ``where`` (the key and field) for a blob of
    the old pickle format (never unpickled) or anything else that is not a snapshot of this format."""
    try:
        snapshot = statecodec.decode(blob)
    except statecodec.OldFormat as exc:
        raise CorruptState(f"{where}: {exc}: it was written by an older stream-monitor or by someone else. Rebuild "
                           "the partition from the retained log by deleting the key, or import a state exported "
                           "by this version (`stream-monitor state import`)") from None
    except statecodec.CodecError as exc:
        raise CorruptState(f"{where}: {exc}; delete the key to rebuild the partition from the retained log, or "
                           "import a good state (`stream-monitor state import`)") from None
    if not isinstance(snapshot, dict):
        raise CorruptState(f"{where}: stored state is a {type(snapshot).__name__}, not a snapshot (a map)")
    return snapshot


def _named_references(snapshot: Mapping[str, Any]) -> list[str]:
    return sorted({str(model[field]["$ref"]) for model in snapshot.get("models", {}).values()
                   for field in _REFERENCE_FIELDS if isinstance(model.get(field), dict) and "$ref" in model[field]})


_REFERENCE_IDS: dict[bytes, str] = {}  # sha256 of a profile's marshal dump → its digest (see below)


def _reference_id(profile: Any) -> str:
    """The profile's :func:`~stream_monitor.statecodec.digest`, which every save needs. Computing it
    walks the whole profile (~0.6 ms for 20 features); a profile does not change while it is used,
    so it is remembered under an exact, fast key of the same data: the sha256 of its ``marshal`` dump
    (~0.05 ms; lists, tuples, dicts, floats bit for bit). The dump is only hashed, never loaded."""
    try:
        key = hashlib.sha256(marshal.dumps(profile)).digest()
    except ValueError:  # a type marshal does not know (e.g. numpy): no shortcut
        return statecodec.digest(profile)
    ref = _REFERENCE_IDS.get(key)
    if ref is None:
        if len(_REFERENCE_IDS) >= 4096:
            _REFERENCE_IDS.clear()
        ref = _REFERENCE_IDS[key] = statecodec.digest(profile)
    return ref


def _split_references(snapshot: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The snapshot with each reference profile replaced by ``{"$ref": id}``, and the profiles by id (the
    digest of the profile's data: equal profiles share one id)."""
    references: dict[str, Any] = {}
    models = {}
    for model_id, model in snapshot.get("models", {}).items():
        model = dict(model)
        for field in _REFERENCE_FIELDS:
            profile = model.get(field)
            if profile is not None:
                ref = _reference_id(profile)
                references[ref] = profile
                model[field] = {"$ref": ref}
        models[model_id] = model
    return {**snapshot, "models": models}, references


def _resolve_references(snapshot: dict[str, Any], references: Mapping[str, Any]) -> None:
    for model in snapshot.get("models", {}).values():
        for field in _REFERENCE_FIELDS:
            if isinstance(model.get(field), dict) and "$ref" in model[field]:
                model[field] = references[str(model[field]["$ref"])]


def _reference_fields(client: redis.Redis, key: str, blob: bytes) -> dict[str, bytes]:
    """The ``ref:`` fields the state ``blob`` names (those stored; an undecodable blob names none)."""
    try:
        named = _named_references(statecodec.decode(blob))
    except Exception:  # noqa: BLE001 - check_fields says what is wrong with it
        return {}
    if not named:
        return {}
    fields = [f"ref:{ref}" for ref in named]
    return {field: part for field, part in zip(fields, client.hmget(key, fields)) if part is not None}


def _integer(key: str, field: str, value: bytes | None, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    text = "" if value is None else bytes(value).decode("ascii", "replace")
    if not _DIGITS.fullmatch(text):
        raise CorruptState(f"{key}: field {field!r} is {text[:40]!r}, not a non-negative integer; delete the key to "
                           "rebuild the partition from the retained log, or import a good state "
                           "(`stream-monitor state import`)")
    return int(text)


def check_fields(key: str, fields: Mapping[str, bytes]) -> tuple[int, dict[str, Any], list[str], int]:
    """(next offset, snapshot with its references resolved, reference ids, epoch) of a partition's stored
    fields, checked: a :class:`StateError` naming ``key`` and the field for anything that is not a state
    of this version (an old pickle, garbage, an offset that is no integer, a named reference missing or
    undecodable). Runs no code from the fields."""
    next_offset = _integer(key, "offset", fields.get("offset"))
    epoch = _integer(key, "epoch", fields.get("epoch"), default=0)
    if fields.get("state") is None:
        raise CorruptState(f"{key}: no 'state' field beside offset {next_offset}")
    snapshot = decode_state(fields["state"], f"{key}: field 'state'")
    models = snapshot.get("models")
    if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
        raise CorruptState(f"{key}: field 'state': the snapshot has no map of models")
    named = _named_references(snapshot)
    missing = [ref for ref in named if fields.get(f"ref:{ref}") is None]
    if missing:
        raise CorruptState(f"{key}: the state names reference profiles {missing} that are not stored beside it")
    references = {}
    for ref in named:
        references[ref] = decode_state(fields[f"ref:{ref}"], f"{key}: field 'ref:{ref}'")
    _resolve_references(snapshot, references)
    # The hash's offset is the one truth (the state written since carries none; an older one's copy equals it)
    snapshot["next_offset"] = next_offset
    return next_offset, snapshot, named, epoch


def _base64(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): base64.b64encode(v).decode() for k, v in fields.items()}


def _json_object(line: bytes, where: str) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{where}: not JSON ({exc}); nothing was imported") from None
    if not isinstance(record, dict):
        raise StateError(f"{where}: not a JSON object; nothing was imported")
    return record


def _decoded_fields(fields: Any, what: str, where: str) -> dict[str, bytes]:
    if not isinstance(fields, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise StateError(f"{where}: {what} must map field names to base64 strings; nothing was imported")
    decoded = {}
    for name, value in fields.items():
        try:
            decoded[name] = base64.b64decode(value, validate=True)
        except ValueError:
            raise StateError(f"{where}: field {name!r} of {what} is not base64; nothing was imported") from None
    return decoded


def _check_partials(fields: Mapping[str, bytes], what: str, where: str) -> None:
    """A partition's partials of a model: ``wm`` an integer, ``idle`` 0/1, every other field a bucket
    number holding a JSON object."""
    for name, value in fields.items():
        if name == "wm" and _DIGITS.fullmatch(value.decode("ascii", "replace").lstrip("-")):
            continue
        if name == "idle" and value in (b"0", b"1"):
            continue
        if name.lstrip("-").isdigit():
            try:
                if isinstance(orjson.loads(value), dict):
                    continue
            except orjson.JSONDecodeError:
                pass
        raise StateError(f"{where}: field {name!r} of {what} is not a watermark, an idle flag or a bucket's "
                         "partial; nothing was imported")


def _import_record(line: bytes, where: str) -> tuple[str, int, dict[str, bytes], dict[str, dict[str, bytes]]]:
    """(topic, partition, fields, partials per model) of one partition's line of a `state export` file; a
    :class:`StateError` naming ``where`` for a line that is not one."""
    record = _json_object(line, where)
    topic, partition, fields = record.get("topic"), record.get("partition"), record.get("fields")
    if not isinstance(topic, str) or not topic or "|" in topic:
        raise StateError(f"{where}: 'topic' must be a topic name, got {str(topic)[:60]!r}; nothing was imported")
    if type(partition) is not int or partition < 0:
        raise StateError(f"{where}: 'partition' must be an integer >= 0, got {str(partition)[:20]!r}; "
                         "nothing was imported")
    decoded = _decoded_fields(fields, f"'fields' of {topic}[{partition}]", where)
    raw_partials = record.get("partials", {})
    if not isinstance(raw_partials, dict) or not all(isinstance(m, str) and m for m in raw_partials):
        raise StateError(f"{where}: 'partials' of {topic}[{partition}] must map model ids to fields; "
                         "nothing was imported")
    partials = {}
    for model_id, model_fields in raw_partials.items():
        what = f"the partials of model {model_id!r} on {topic}[{partition}]"
        partials[model_id] = _decoded_fields(model_fields, what, where)
        _check_partials(partials[model_id], what, where)
    return topic, partition, decoded, partials


def _import_merge(line: bytes, where: str) -> tuple[str, dict[str, bytes]]:
    """(model id, fields) of a model's merge-state line of a `state export` file, its ``state`` checked
    to be a merge state (a JSON object with an integer ``step``)."""
    record = _json_object(line, where)
    model_id = record.get("merge")
    if not isinstance(model_id, str) or not model_id:
        raise StateError(f"{where}: 'merge' must be a model id, got {str(model_id)[:60]!r}; nothing was imported")
    what = f"the merge state of model {model_id!r}"
    fields = _decoded_fields(record.get("fields"), what, where)
    try:
        state = orjson.loads(fields.get("state", b""))
    except orjson.JSONDecodeError:
        state = None
    if not isinstance(state, dict) or type(state.get("step")) is not int:
        raise StateError(f"{where}: {what} has no 'state' field holding a merge state; nothing was imported")
    return model_id, fields


class Imported(NamedTuple):
    partitions: int
    merges: int  # models' merge states (decisions = "model")


class StateStore:
    def __init__(self, client: redis.Redis, namespace: str, group_id: str):
        self.client = client
        self.namespace = namespace
        self.group_id = group_id
        self._save = client.register_script(_SAVE)
        self._written: dict[str, set[str]] = {}  # per state key: reference ids known to be stored beside it
        self._epochs: dict[str, int] = {}  # per state key: the epoch this process loaded, saved or started
        self.dropped: dict[str, int] = {}  # per model: unmerged partials the last save's cap dropped

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
        next_offset, snapshot, named, loaded_epoch = check_fields(key, {
            "offset": offset, "state": blob, "epoch": epoch,
            **_reference_fields(self.client, key, blob)})
        self._epochs[key] = loaded_epoch
        self._written[key] = set(named)
        return next_offset, snapshot

    def partials_key(self, topic: str, partition: int, model_id: str) -> str:
        """A partition's closed partials of a model with decisions = "model", its watermark and idle flag
        (under the partition's hash tag: saved in the same step as its state)."""
        return f"{self.namespace}:{{{self.group_id}|{topic}|{partition}}}:partials:{model_id}"

    def save(self, topic: str, partition: int, next_offset: int, snapshot: Mapping[str, Any],
             summary: Mapping[str, Any], existed: bool = False,
             merge: Mapping[str, Mapping[str, Any]] | None = None) -> int:
        """Atomically store state and next offset: SAVED; STALE if newer state was already stored;
        LOST if ``existed`` (this process stored or loaded it before) but the key was gone. ``merge``:
        per model with decisions = "model" its closed partials, watermark, idle flag and cap
        (:meth:`~stream_monitor.partition.PartitionMonitor.merge_marks`), written in the same step;
        how many unmerged partials the cap dropped is then in :attr:`dropped`."""
        key = self.key(topic, partition)
        state, references = _split_references(snapshot)
        state.pop("next_offset", None)  # stored once, in the hash's offset field (load puts it back)
        written = self._written.setdefault(key, set())
        merge = merge or {}
        heads, partial_args = [], []
        for mark in merge.values():
            heads.append(["" if mark["watermark"] is None else str(mark["watermark"]), 1 if mark["idle"] else 0,
                          len(mark["partials"]), mark.get("cap", 3_600)])
            for bucket, partial in sorted(mark["partials"].items()):
                partial_args.extend((str(bucket), orjson.dumps(partial)))
        keys = [key] + [self.partials_key(topic, partition, model_id) for model_id in merge]
        head = [next_offset, encode_state(state), orjson.dumps(summary), int(time.time() * 1000),
                1 if existed else 0, self._epochs.get(key, 0), len(references), orjson.dumps(heads), *references,
                *partial_args]
        self.client.sadd(self.index_key, f"{topic}|{partition}")
        for send in ([r for r in references if r not in written], list(references)):
            parts = [item for ref in send for item in (ref, statecodec.encode(references[ref]))]
            outcome, *dropped = (int(x) for x in self._save(keys=keys, args=head + parts))
            self.dropped = dict(zip(merge, dropped))
            if outcome != MISSING_REFERENCES:  # else: written elsewhere or lost; send them all
                break
        if outcome in (SAVED, LOST):
            self._written[key] = set(references)
        return outcome

    def export_records(self, merged_models: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
        """Every stored partition as ``{"topic", "partition", "fields": {name: base64}}`` (its hash as it
        is stored: the state and references in this version's format), with ``"partials": {model:
        fields}`` of the ``merged_models`` (decisions = "model") read in the same transaction; then each
        such model's merge state as ``{"merge": model, "fields"}``. Partitions come first: a merge that
        consumes some of their partials while the export runs is exported past them, and since the merge
        state remembers what it took from each partition, nothing is merged twice or lost."""
        merged_models = list(merged_models)
        for topic, partition in self.partitions():
            pipe = self.client.pipeline(transaction=True)  # one slot: the partition's hash tag
            pipe.hgetall(self.key(topic, partition))
            for model_id in merged_models:
                pipe.hgetall(self.partials_key(topic, partition, model_id))
            fields, *partials = pipe.execute()
            if fields:
                record: dict[str, Any] = {"topic": topic, "partition": partition, "fields": _base64(fields)}
                kept = {m: _base64(f) for m, f in zip(merged_models, partials) if f}
                if kept:
                    record["partials"] = kept
                yield record
        merges = MergeStore(self)
        for model_id in merged_models:
            fields = self.client.hgetall(merges.key(model_id))
            if fields:
                yield {"merge": model_id, "fields": _base64(fields)}

    def import_lines(self, lines: Iterable[bytes], where: str) -> Imported:
        """Check every record (lines of :meth:`export_records` JSON) — each partition's state and the
        references it names decode, its offset is an integer, its partials are partials; each merge state is
        one — then write them all in one transaction, each key replaced whole (on a Redis Cluster: one per
        partition with its partials, then one per merge state, see :meth:`_import_into_cluster`);
        the first bad record is a :class:`StateError` naming ``where``, its line and the problem, and
        nothing is written. How many partitions and merge states were imported."""
        records: dict[tuple[str, int], dict[str, bytes]] = {}
        partials: dict[tuple[str, int], dict[str, dict[str, bytes]]] = {}
        merges: dict[str, dict[str, bytes]] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if line.lstrip().startswith(b'{"merge"'):
                model_id, fields = _import_merge(line, f"{where} line {number}")
                if model_id in merges:
                    raise StateError(f"{where} line {number}: the merge state of model {model_id!r} appears twice; "
                                     "nothing was imported")
                merges[model_id] = fields
                continue
            topic, partition, fields, partials[(topic, partition)] = _import_record(line, f"{where} line {number}")
            try:
                check_fields(self.key(topic, partition), fields)
            except StateError as exc:
                raise StateError(f"{where} line {number} ({topic}[{partition}]): {exc}; nothing was imported") from None
            if (topic, partition) in records:
                raise StateError(f"{where} line {number}: {topic}[{partition}] appears twice; nothing was imported")
            records[(topic, partition)] = fields
        merge_keys = {model_id: MergeStore(self).key(model_id) for model_id in merges}
        if records and is_cluster(self.client):
            self._import_into_cluster(records, partials, where)
            for model_id, fields in merges.items():  # one key each: after the partitions, as exported
                self._replace(self.client.pipeline(transaction=True), merge_keys[model_id], fields).execute()
            return Imported(len(records), len(merges))
        pipe = self.client.pipeline(transaction=True)
        for (topic, partition), fields in records.items():
            pipe.sadd(self.index_key, f"{topic}|{partition}")
            self._replace_partition(pipe, topic, partition, fields, partials[(topic, partition)])
        for model_id, fields in merges.items():
            self._replace(pipe, merge_keys[model_id], fields)
        if records or merges:
            pipe.execute()
        return Imported(len(records), len(merges))

    @staticmethod
    def _replace(pipe: Any, key: str, fields: Mapping[str, bytes]) -> Any:
        pipe.delete(key)
        if fields:
            pipe.hset(key, mapping=fields)
        return pipe

    def _replace_partition(self, pipe: Any, topic: str, partition: int, fields: Mapping[str, bytes],
                           partials: Mapping[str, Mapping[str, bytes]]) -> None:
        self._replace(pipe, self.key(topic, partition), fields)
        for model_id, model_partials in partials.items():
            self._replace(pipe, self.partials_key(topic, partition, model_id), model_partials)

    def _import_into_cluster(self, records: Mapping[tuple[str, int], Mapping[str, bytes]],
                             partials: Mapping[tuple[str, int], Mapping[str, Mapping[str, bytes]]], where: str) -> None:
        """A Redis Cluster has no transaction across hash slots, and each partition's hash has a slot of
        its own: the index first (one key), then each partition replaced in one transaction of its slot, so
        a partition is never half imported. Redis failing midway leaves the first ones imported; the
        error says so, and importing the same file again rewrites them all."""
        self.client.sadd(self.index_key, *(f"{topic}|{partition}" for topic, partition in records))
        done = 0
        for (topic, partition), fields in records.items():
            pipe = self.client.pipeline(transaction=True)
            self._replace_partition(pipe, topic, partition, fields, partials[(topic, partition)])
            try:
                pipe.execute()
            except REDIS_ERRORS as exc:
                raise StateError(f"{where}: Redis failed after {done} of {len(records)} partitions were imported "
                                 f"(at {topic}[{partition}]: {type(exc).__name__}: {exc}); each partition is "
                                 "imported whole or not at all: import the same file again") from None
            done += 1

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
            found = self._summary(topic, partition)
            if found is not None:
                yield found

    def _summary(self, topic: str, partition: int) -> tuple[str, int, int, dict[str, Any], int] | None:
        key = self.key(topic, partition)
        offset, summary, saved_at = self.client.hmget(key, ["offset", "summary", "saved_at"])
        if offset is None:
            return None
        try:
            parsed = orjson.loads(summary or b"{}")
        except orjson.JSONDecodeError:
            raise CorruptState(f"{key}: field 'summary' is not JSON") from None
        return topic, partition, _integer(key, "offset", offset), parsed, _integer(key, "saved_at", saved_at, default=0)

    def partition_rows(self, skip: Container[tuple[str, int]] = frozenset(),
                       tolerant: bool = False) -> list[dict[str, Any]]:
        """Every stored partition (but those in ``skip``) as ``status`` and the status page's group view show
        it: topic, partition, next offset, last save (epoch ms), dead letters (total and by reason) and the
        models' summaries. ``tolerant``: a partition whose fields do not decode is a row with its
        ``problem`` instead of an error."""
        rows = []
        for topic, partition in self.partitions():
            if (topic, partition) in skip:
                continue
            try:
                found = self._summary(topic, partition)
            except CorruptState as exc:
                if not tolerant:
                    raise
                rows.append({"topic": topic, "partition": partition, "next_offset": None, "saved_at_ms": 0,
                             "dead_letters": 0, "dead_letter_reasons": {}, "models": {}, "problem": str(exc)})
                continue
            if found is not None:
                _, _, offset, summary, saved_at = found
                rows.append({"topic": topic, "partition": partition, "next_offset": offset, "saved_at_ms": saved_at,
                             "dead_letters": summary.get("dead_letters", 0),
                             "dead_letter_reasons": summary.get("dead_letter_reasons", {}),
                             "models": summary.get("models", {})})
        return rows


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


# The merge state of a model moves only forward: a save whose step is not past the stored one is refused,
# so a merger that lost its partition without noticing (a zombie) cannot roll the state back.
_SAVE_MERGE = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'step') or '0')
if stored >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'step', ARGV[1], 'state', ARGV[2], 'saved_at', ARGV[3])
return 1
"""


class MergeStore:
    """Where a model's merge reads the partitions' partials and keeps its own state
    (docs/MODEL_DECISIONS.md): ``ns:merge:{model}`` and the partitions' ``…:partials:<model>`` keys."""

    def __init__(self, states: StateStore):
        self.states = states
        self.client = states.client
        self._save = self.client.register_script(_SAVE_MERGE)

    def key(self, model_id: str) -> str:
        return f"{self.states.namespace}:merge:{{{model_id}}}"

    def load(self, model_id: str) -> dict[str, Any] | None:
        blob = self.client.hget(self.key(model_id), "state")
        return None if blob is None else orjson.loads(blob)

    def save(self, model_id: str, state: Mapping[str, Any]) -> bool:
        """Store the merge state if its ``step`` is past the stored one; ``False``: refused (a newer one is
        stored)."""
        return bool(self._save(keys=[self.key(model_id)],
                               args=[state["step"], orjson.dumps(state), int(time.time() * 1000)]))

    def partials(self, model_id: str, partitions: Iterable[tuple[str, int]]) -> list[Any]:
        """Every partition's watermark, idle flag and closed partials of the model (one round trip; the
        reads need not be atomic: closed partials never change)."""
        partitions = list(partitions)
        pipe = self.client.pipeline(transaction=False)
        for topic, partition in partitions:
            pipe.hgetall(self.states.partials_key(topic, partition, model_id))
        out = []
        for (topic, partition), fields in zip(partitions, pipe.execute()):
            wm = fields.pop(b"wm", None)
            idle = fields.pop(b"idle", b"0") == b"1"
            out.append(PartitionPartials(topic, partition, None if wm is None else int(wm), idle,
                                         {int(b): orjson.loads(blob) for b, blob in fields.items()}))
        return out

    def consumed(self, model_id: str, consumed: Mapping[tuple[str, int], Iterable[int]]) -> None:
        """The merged partials leave the partitions' keys."""
        pipe = self.client.pipeline(transaction=False)
        for (topic, partition), buckets in consumed.items():
            fields = [str(b) for b in buckets]
            if fields:
                pipe.hdel(self.states.partials_key(topic, partition, model_id), *fields)
        pipe.execute()

    def mark_idle(self, topic: str, partition: int, model_ids: Iterable[str]) -> None:
        """A partition that has never read a message is idle: it holds no model window back."""
        for model_id in model_ids:
            self.client.hset(self.states.partials_key(topic, partition, model_id), "idle", "1")
