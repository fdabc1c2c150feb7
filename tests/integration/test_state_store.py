"""The Redis state layout against a real redis-server: reference profiles stored once
beside the state, in the same atomic step, and never lost or left behind."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import redis

from stream_monitor.config import parse_config
from stream_monitor.partition import PartitionMonitor
from stream_monitor.state import LOST, SAVED, STALE, StateStore, connect, decode_state, encode_state

from ..support import events, unique, warmed_monitor

CONFIG = parse_config({"models": {"fraud": {"decisions": "partition", "reference": {"events": 1000}}}})


def fields(client: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): len(v) for k, v in client.hgetall(key).items()}


def test_references_are_stored_once_beside_a_small_state(redis_server):
    client = connect(redis_server.address)
    store = StateStore(client, unique("ns"), "g")
    monitor = warmed_monitor()
    snapshot = monitor.snapshot()
    assert store.save("t", 0, monitor.next_offset, snapshot, {}) == SAVED
    stored = fields(client, store.key("t", 0))
    references = [f for f in stored if f.startswith("ref:")]
    assert len(references) == 1
    columns = len(snapshot["models"]["fraud"]["columns"])
    print(f"state {stored['state']} bytes for {columns} columns, reference {stored[references[0]]} bytes")
    assert stored["state"] < stored[references[0]]
    # a fresh store (another instance) loads the whole snapshot back
    assert StateStore(connect(redis_server.address), store.namespace, "g").load("t", 0) == (monitor.next_offset,
                                                                                             snapshot)


@pytest.fixture
def saved(redis_server) -> tuple[redis.Redis, StateStore, PartitionMonitor]:
    """A warmed-up partition whose state (and reference) has been saved once."""
    client = connect(redis_server.address)
    store = StateStore(client, unique("ns"), "g")
    monitor = warmed_monitor()
    assert store.save("t", 0, monitor.next_offset, monitor.snapshot(), {}) == SAVED
    return client, store, monitor


def reference_fields(client: redis.Redis, store: StateStore) -> set[bytes]:
    return {f for f in client.hkeys(store.key("t", 0)) if f.startswith(b"ref:")}


def test_a_reference_removed_behind_the_stores_back_is_sent_again(saved):
    client, store, monitor = saved
    [reference] = reference_fields(client, store)
    client.hdel(store.key("t", 0), reference)  # e.g. a hand-edited key; the store believes it is there
    assert store.save("t", 0, monitor.next_offset, monitor.snapshot(), {}) == SAVED
    assert client.hexists(store.key("t", 0), reference)
    assert store.load("t", 0)[1] == monitor.snapshot()


def test_redis_losing_its_data_is_reported_and_the_references_are_written_back(saved):
    client, store, monitor = saved
    client.delete(store.key("t", 0))
    assert store.save("t", 0, monitor.next_offset, monitor.snapshot(), {}, existed=True) == LOST
    assert store.load("t", 0)[1] == monitor.snapshot()


def test_a_new_reference_replaces_the_old_field(saved):
    client, store, monitor = saved
    before = reference_fields(client, store)
    model = monitor.models["fraud"]
    model.use_reference(replace(model.reference, version=model.reference.version + 1, source="stored"))
    store.save("t", 0, monitor.next_offset, monitor.snapshot(), {})
    after = reference_fields(client, store)
    assert len(after) == 1 and after != before
    assert store.load("t", 0)[1] == monitor.snapshot()


def test_a_new_epoch_saves_lower_offsets_and_still_fences_the_old_owner(saved):
    """After the log moved, offsets go down: the new epoch's state replaces the old log's, and an owner
    still saving in the old epoch (a zombie) is refused, whatever its offset."""
    client, store, monitor = saved
    snapshot = monitor.snapshot()
    zombie = StateStore(connect(redis_url(client)), store.namespace, "g")
    assert zombie.load("t", 0)[0] == monitor.next_offset == 3000
    assert store.save("t", 0, 2000, snapshot, {}) == STALE, "same epoch, lower offset: refused"
    assert store.new_epoch("t", 0) == 1
    assert store.save("t", 0, 1000, snapshot, {}) == SAVED
    assert client.hget(store.key("t", 0), "epoch") == b"1" and client.hget(store.key("t", 0), "offset") == b"1000"
    assert zombie.save("t", 0, 3500, snapshot, {}) == STALE, "old epoch: refused even at a higher offset"
    assert StateStore(connect(redis_url(client)), store.namespace, "g").load("t", 0)[0] == 1000
    fresh = StateStore(connect(redis_url(client)), store.namespace, "g")
    fresh.load("t", 0)
    assert fresh.epoch("t", 0) == 1 and fresh.save("t", 0, 1200, snapshot, {}) == SAVED, "a later owner goes on"


# --- two owners racing: the Lua save refuses older state ------------------------------------------------


def redis_url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_a_save_older_than_the_stored_state_is_stale_and_changes_nothing(saved):
    """A zombie owner (it lost the partition, the new owner saved further) saves its older progress."""
    client, store, monitor = saved
    key = store.key("t", 0)
    before = client.hgetall(key)
    older = warmed_monitor(2000)
    zombie = StateStore(connect(redis_url(client)), store.namespace, "g")  # another process, its own connection
    assert zombie.save("t", 0, older.next_offset, older.snapshot(), {"from": "zombie"}, existed=True) == STALE
    assert client.hgetall(key) == before
    assert store.load("t", 0) == (monitor.next_offset, monitor.snapshot())


def test_two_concurrent_savers_end_with_the_newest_state(redis_server):
    """Two owners save the same partition at once, one in order, one in a shuffled order; a watcher sees
    the stored offset only grow, and the newest state is what remains."""
    import random
    import threading

    namespace = unique("ns")
    monitor = PartitionMonitor(CONFIG, 0, {})
    stream = events("fraud", 3000)
    states = []
    for start in range(0, 3000, 250):
        monitor.process_batch([(o, stream[o], None) for o in range(start, start + 250)])
        states.append((monitor.next_offset, monitor.snapshot()))
    orders = [list(states), random.Random(7).sample(states, len(states))]
    outcomes: list[list[int]] = [[], []]
    seen: list[int] = []
    done = threading.Event()
    barrier = threading.Barrier(2)

    def saver(n: int) -> None:
        store = StateStore(connect(redis_server.address), namespace, "g")
        barrier.wait()
        for offset, snapshot in orders[n]:
            outcomes[n].append(store.save("t", 0, offset, snapshot, {"offset": offset}))

    def watcher() -> None:
        client = connect(redis_server.address)
        key = StateStore(client, namespace, "g").key("t", 0)
        while not done.is_set():
            value = client.hget(key, "offset")
            if value is not None:
                seen.append(int(value))

    threads = [threading.Thread(target=saver, args=(n,)) for n in (0, 1)]
    watching = threading.Thread(target=watcher)
    watching.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    watching.join(10)
    assert all(outcome in (SAVED, STALE) for outcome in outcomes[0] + outcomes[1])
    assert STALE in outcomes[1], "the shuffled saver met newer state"
    assert seen == sorted(seen), "the stored offset never went back"
    newest = states[-1]
    assert StateStore(connect(redis_server.address), namespace, "g").load("t", 0) == newest


def test_a_pickle_in_redis_is_refused_naming_the_key_and_never_unpickled(saved, tmp_path):
    """The state or a reference field replaced by a crafted pickle (the old format): load refuses it
    with a CorruptState naming the key and field, and the payload does not run."""
    from stream_monitor.state import CorruptState  # noqa: PLC0415

    from ..support import crafted_pickle  # noqa: PLC0415

    client, store, monitor = saved
    key = store.key("t", 0)
    marker = tmp_path / "marker"
    [reference] = reference_fields(client, store)
    good = client.hget(key, "state")
    for field in ("state", reference.decode()):
        client.hset(key, field, crafted_pickle(marker))
        with pytest.raises(CorruptState, match=rf"^{re.escape(key)}: field '{re.escape(field)}': stored state is in "
                                               "the old pickle format"):
            StateStore(client, store.namespace, "g").load("t", 0)
        client.hset(key, "state", good)
    assert not marker.exists()


def test_equal_references_get_equal_ids_in_every_partition(redis_server):
    """The reference id is a digest of the profile's data: two partitions warmed on the same events
    name the same ``ref:`` field."""
    client = connect(redis_server.address)
    store = StateStore(client, unique("ns"), "g")
    for partition in (0, 1):
        monitor = warmed_monitor()
        assert store.save("t", partition, monitor.next_offset, monitor.snapshot(), {}) == SAVED
    ids = [{f for f in client.hkeys(store.key("t", p)) if f.startswith(b"ref:")} for p in (0, 1)]
    assert ids[0] == ids[1] and len(ids[0]) == 1


def test_the_next_offset_is_stored_once_in_the_hash_and_load_puts_it_into_the_snapshot(saved):
    client, store, monitor = saved
    key = store.key("t", 0)
    blob = client.hget(key, "state")
    assert "next_offset" not in decode_state(blob)
    assert int(client.hget(key, "offset")) == monitor.next_offset == 3000
    next_offset, snapshot = store.load("t", 0)
    assert next_offset == snapshot["next_offset"] == 3000
    assert snapshot == monitor.snapshot()


def test_an_older_blob_that_carries_the_next_offset_is_read_and_the_hash_field_wins(saved):
    client, store, monitor = saved
    key = store.key("t", 0)
    old = decode_state(client.hget(key, "state"))
    old["next_offset"] = 2999  # as the previous version wrote it (a copy; the hash field is the truth)
    client.hset(key, "state", encode_state(old))
    next_offset, snapshot = StateStore(client, store.namespace, "g").load("t", 0)
    assert next_offset == snapshot["next_offset"] == 3000
    restored = PartitionMonitor(CONFIG, 0, {})
    restored.restore(snapshot)
    assert restored.next_offset == 3000 and restored.snapshot() == monitor.snapshot()
