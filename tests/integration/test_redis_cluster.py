"""The service on a real 3-master Redis Cluster (redis.cluster = true), beyond the tests parametrized over
``redis_target`` (the crash points, the label join, state export/import): the keys of one group spread over
the masters and come back through `status`, `state export` and `state import`; a cluster that reports
CLUSTERDOWN pauses processing, which resumes when it is back, and SIGTERM still stops it then; the URL's
password reaches every node, and a wrong one is refused without being printed; a slot moved to another
master (resharding) is followed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
from redis.crc import key_slot

from stream_monitor.config import parse_config
from stream_monitor.demo.localstack import create_topics, start_redis_cluster
from stream_monitor.join import JoinOp, RedisJoin, performance_settings
from stream_monitor.state import SAVED, StateStore, connect
from stream_monitor.synthetic import generate

from ..support import (SERVICE, SideBySide, final_states, keys_by_master, lines, produce, store_for, unique,
                       wait_for_offsets, write_config)

# The service's pause line. With a master stopped, a step bound for a live master gets CLUSTERDOWN
# ("Redis Cluster unavailable (the cluster is down …"), one bound for the stopped master a socket timeout
# ("Redis unreachable …"); which comes first depends on where the label join's keys (on by default) landed.
PAUSED = "processing paused"
# the label join off: these tests count and move the state's keys, and a join (on by default) would
# add one key per stored prediction
MODEL = {"stable": {"decisions": "partition", "reference": {"events": 500}, "detectors": {"psi": {"window": 500}},
                    "performance": {"enabled": False}}}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_monitor", *args], capture_output=True, text=True, timeout=60)


def test_a_groups_state_spreads_over_the_masters_and_comes_back_through_status_export_and_import(
        broker, redis_cluster, tmp_path, monitors):
    """Six partitions of a fixed group and topic name (the hash tag is {group|topic|partition}, so where
    each key lands is fixed): a real `run` stores them on all three masters, each where its slot says;
    `status` reads them all; `state export`, the keys deleted, `state import` (one transaction per slot)
    brings back exactly what was stored."""
    topic = group = "cluster-spread"
    namespace = unique("ns")  # not part of the hash tag
    create_topics(broker.address, {topic: 6})
    ends = produce(broker.address, topic, [(i % 6, b"stable", value, None)
                                           for i, value in enumerate(lines(generate("stable", 3000, seed=5)))])
    config = write_config(tmp_path / "spread.toml", bootstrap=broker.address, redis_url=redis_cluster.address,
                          input_topic=topic, alert_topic=unique("alerts"), dead_letter_topic=unique("dlq"),
                          group_id=group, namespace=namespace, models=MODEL, service=SERVICE, redis_cluster=True)
    store = store_for(redis_cluster.address, namespace, group, cluster=True)
    from stream_monitor.demo.localstack import MonitorProcess  # noqa: PLC0415

    process = MonitorProcess(config, tmp_path / "spread.log")
    monitors.append(process)
    wait_for_offsets(store, topic, ends, processes=[process])
    assert process.terminate() == 0, process.log()[-3000:]

    client = store.client
    keys = [store.key(topic, p) for p in range(6)] + [store.index_key]
    expected: dict[str, int] = {}
    for key in keys:
        node = client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        expected[node.name] = expected.get(node.name, 0) + 1
    spread = keys_by_master(client, namespace)
    assert {name: n for name, n in spread.items() if n} == expected, "each key on the master of its slot"
    assert len(expected) == 3, f"the group's keys are on every master: {spread}"
    before = final_states(store, topic, range(6))
    assert all(before[p][0] == ends[p] for p in range(6))

    status = cli("status", "-c", str(config), "--json")
    assert status.returncode == 0, status.stderr
    rows = orjson.loads(status.stdout)["partitions"]
    assert sorted((r["partition"], r["next_offset"]) for r in rows) == sorted(ends.items())

    backup = tmp_path / "backup.jsonl"
    done = cli("state", "export", "-c", str(config), "--output", str(backup))
    assert done.returncode == 0 and "exported 6 partitions" in done.stdout, done.stderr
    for node in client.get_primaries():
        for key in list(client.scan_iter(match=f"{namespace}:*", target_nodes=node)):
            client.delete(key)
    assert sum(keys_by_master(client, namespace).values()) == 0
    done = cli("state", "import", "-c", str(config), "--input", str(backup))
    assert done.returncode == 0 and "imported 6 partitions" in done.stdout, done.stderr
    assert final_states(store_for(redis_cluster.address, namespace, group, cluster=True), topic, range(6)) == before
    assert {n: c for n, c in keys_by_master(client, namespace).items() if c} == expected


def master_without(cluster, client, keys) -> int:
    """The index in ``cluster.nodes`` of a master that holds none of ``keys``."""
    taken = {client.nodes_manager.get_node_from_slot(key_slot(key.encode())).port for key in keys}
    return next(i for i, port in enumerate(cluster.ports) if port not in taken)


def flowing(pair: SideBySide, at_least: int):
    """``run`` started and assigned both partitions before the stream starts (so it is still flowing when
    the test interrupts Redis), and ``at_least`` offsets of partition 0 stored."""
    process = pair.start()
    for partition in range(pair.partitions):
        wait_for_log(process, f"assigned {pair.topic}[{partition}]")
    pair.feeder.start()
    pair.progress(at_least, [process])
    return process


def wait_for_log(process, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.log():
        assert process.process.poll() is None, process.log()[-3000:]
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout:.0f} s:\n{process.log()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.slow
def test_the_cluster_reporting_clusterdown_pauses_processing_until_it_is_back(broker, redis_server, tmp_path,
                                                                             monitors):
    """A master SIGSTOPped mid-stream: once the others mark it failed, the cluster answers CLUSTERDOWN
    (no replica takes over); the service pauses (logged, counted), resumes after SIGCONT, and ends as an
    undisturbed run does (same states, same alert ids)."""
    cluster = start_redis_cluster(str(tmp_path / "cluster"), node_timeout_ms=1000)
    try:
        pair = SideBySide(broker, redis_server, tmp_path, monitors, events=12_000, partitions=2, rate=2000,
                          run_redis=cluster)
        process = flowing(pair, 2000)
        store = pair.run.store
        # a master that holds neither the group's index nor partition 0: the saves go on reaching live nodes,
        # which answer CLUSTERDOWN
        node = cluster.nodes[master_without(cluster, store.client, [store.index_key, store.key(pair.topic, 0)])]
        os.kill(node.pid, signal.SIGSTOP)
        try:
            wait_for_log(process, PAUSED)
            deadline = time.monotonic() + 60  # still down at the next try: it stays paused, retrying, alive
            while process.log().split(PAUSED, 1)[1].count(PAUSED) < 2:
                assert process.process.poll() is None and time.monotonic() < deadline, process.log()[-3000:]
                time.sleep(0.05)
        finally:
            os.kill(node.pid, signal.SIGCONT)
        cluster.wait_ok()
        wait_for_log(process, "Redis is back")
        pair.finish([process])
    finally:
        cluster.stop()


@pytest.mark.slow
def test_sigterm_while_the_cluster_is_down_exits_0_and_a_restart_finishes(broker, redis_server, tmp_path, monitors):
    cluster = start_redis_cluster(str(tmp_path / "cluster"), node_timeout_ms=1000)
    try:
        pair = SideBySide(broker, redis_server, tmp_path, monitors, events=8000, partitions=2, rate=2000,
                          run_redis=cluster)
        process = flowing(pair, 1500)
        store = pair.run.store
        node = cluster.nodes[master_without(cluster, store.client, [store.index_key, store.key(pair.topic, 0)])]
        os.kill(node.pid, signal.SIGSTOP)
        try:
            wait_for_log(process, PAUSED)
            stopping = time.monotonic()
            assert process.terminate(timeout=15) == 0, process.log()[-3000:]
            print(f"SIGTERM during CLUSTERDOWN: exited after {time.monotonic() - stopping:.1f} s")
            assert "stopped during an outage" in process.log()
        finally:
            os.kill(node.pid, signal.SIGCONT)
        cluster.wait_ok()
        pair.finish([pair.start()])
    finally:
        cluster.stop()


def test_a_password_protected_cluster_with_the_password_in_the_url_and_a_wrong_one_refused_unprinted(
        broker, tmp_path, monitors):
    """The URL's credentials reach every node the client discovers; a wrong password stops `run` and
    `status` (exit 2, "rejected the credentials" for `run`) without ever printing it."""
    password, wrong = "cluster-pw-4c1d", "not-the-pw-77e2"
    cluster = start_redis_cluster(str(tmp_path / "cluster"), password=password)
    try:
        topic = unique("inference")
        create_topics(broker.address, {topic: 3})
        ends = produce(broker.address, topic, [(i % 3, b"stable", value, None)
                                               for i, value in enumerate(lines(generate("stable", 900, seed=3)))])
        port = cluster.ports[0]

        def config(name: str, secret: str):
            return write_config(tmp_path / f"{name}.toml", bootstrap=broker.address,
                                redis_url=f"redis://:{secret}@127.0.0.1:{port}/0", input_topic=topic,
                                alert_topic=unique("alerts"), dead_letter_topic=unique("dlq"), group_id=unique(name),
                                namespace=unique(name), models=MODEL, service=SERVICE, redis_cluster=True)

        good = config("good", password)
        from stream_monitor.config import load_config  # noqa: PLC0415
        from stream_monitor.demo.localstack import MonitorProcess  # noqa: PLC0415

        loaded = load_config(good)
        store = store_for(loaded.redis.url, loaded.redis.namespace, loaded.kafka.group_id, cluster=True)
        process = MonitorProcess(good, tmp_path / "good.log")
        monitors.append(process)
        wait_for_offsets(store, topic, ends, processes=[process])
        assert process.terminate() == 0, process.log()[-3000:]
        done = cli("state", "export", "-c", str(good), "--output", str(tmp_path / "export.jsonl"))
        assert done.returncode == 0 and "exported 3 partitions" in done.stdout, done.stderr

        bad = config("bad", wrong)
        run = cli("run", "-c", str(bad))
        status = cli("status", "-c", str(bad))
        assert run.returncode == 2 and "rejected the credentials" in run.stderr, run.stderr[-2000:]
        assert status.returncode == 2 and "Redis" in status.stderr, status.stderr[-2000:]
        for output in (run.stdout + run.stderr, status.stdout + status.stderr, process.log()):
            assert wrong not in output and password not in output
    finally:
        cluster.stop()


def first_with_slot_0(make) -> str:
    return next(make(i) for i in range(1_000_000) if key_slot(make(i).encode()) == 0)


@pytest.mark.integration  # starts its own cluster: no session fixture marks it
def test_a_slot_moved_to_another_master_between_two_batches_is_followed_and_nothing_is_lost(tmp_path):
    """Slot 0 (holding a model's label join and a partition's state) resharded to another master with
    `redis-cli --cluster reshard` between two batches: the client's next steps get MOVED, follow it, and
    find everything there (the predictions join their labels, the state loads and saves)."""
    cluster = start_redis_cluster(str(tmp_path / "cluster"))
    try:
        model = first_with_slot_0(lambda i: f"m{i}")
        group = first_with_slot_0(lambda i: f"g{i}|t|0").split("|")[0]
        client = connect(cluster.address, cluster=True)
        joiner = RedisJoin(client, "ns", performance_settings(parse_config(
            {"models": {model: {"performance": {"task": "classification"}}}})))
        store = StateStore(client, "ns", group)
        assert key_slot(store.key("t", 0).encode()) == key_slot(joiner._keys(model)[0].encode()) == 0
        predictions = [JoinOp("prediction", model, f"e{i}", {"score": 0.5, "label": 1, "t": 0}, f"t|0|{i}")
                       for i in range(5)]
        assert [r.status for r in joiner.run(predictions)] == ["pending"] * 5
        assert store.save("t", 0, 5, {"models": {}}, {"partition": 0}) == SAVED
        source = client.get_node_from_key(store.key("t", 0))
        ids = {name.split("@")[0]: node["node_id"]
               for name, node in connect(cluster.address).cluster("nodes").items()}
        target = next(port for port in cluster.ports if port != source.port)
        moved = subprocess.run(["redis-cli", "--cluster", "reshard", f"127.0.0.1:{cluster.ports[0]}",
                                "--cluster-from", ids[f"127.0.0.1:{source.port}"],
                                "--cluster-to", ids[f"127.0.0.1:{target}"], "--cluster-slots", "1", "--cluster-yes"],
                               capture_output=True, text=True, timeout=60)
        assert moved.returncode == 0 and "Moving slot 0 " in moved.stdout, moved.stdout[-2000:] + moved.stderr
        cluster.wait_ok()
        labels = [JoinOp("label", model, f"e{i}", {"label": 1, "t": 1}, f"l|0|{i}") for i in range(5)]
        assert [r.status for r in joiner.run(labels)] == ["joined"] * 5
        assert client.get_node_from_key(store.key("t", 0)).port == target, "the client learnt the new owner"
        assert joiner.lag(model)["awaiting"] == 0
        assert StateStore(client, "ns", group).load("t", 0) == (5, {"models": {}, "next_offset": 5})
        assert store.save("t", 0, 9, {"models": {}}, {"partition": 0}, existed=True) == SAVED
    finally:
        cluster.stop()


@pytest.mark.integration  # starts its own cluster: no session fixture marks it
def test_a_join_step_meeting_a_key_already_moved_mid_resharding_changes_nothing_and_goes_through_after(tmp_path):
    """A join step names every key it touches (the model's hashes and lists, under its hash tag). Slot 0 caught
    mid-migration with one of them (the predictions' hash) already on the new master: the step is refused as
    "cluster unavailable" (the service pauses and retries) before it wrote anything; once the slot has moved,
    the same step expires all three predictions, each counted once."""
    from stream_monitor.app import cluster_unavailable  # noqa: PLC0415

    cluster = start_redis_cluster(str(tmp_path / "cluster"))
    try:
        model = first_with_slot_0(lambda i: f"m{i}")
        client = connect(cluster.address, cluster=True)
        joiner = RedisJoin(client, "ns", performance_settings(parse_config(
            {"models": {model: {"performance": {"task": "classification", "prediction_ttl_seconds": 0.2}}}})))
        joiner.run([JoinOp("prediction", model, f"e{i}", {"score": 0.5, "label": 1, "t": 0}, f"t|0|{i}")
                    for i in range(3)])
        source = client.get_node_from_key(f"{{{model}}}")
        target = next(port for port in cluster.ports if port != source.port)
        old, new = connect(f"redis://127.0.0.1:{source.port}/0"), connect(f"redis://127.0.0.1:{target}/0")
        old_id, new_id = (c.execute_command("CLUSTER MYID").decode() for c in (old, new))
        new.execute_command("CLUSTER SETSLOT", 0, "IMPORTING", old_id)
        old.execute_command("CLUSTER SETSLOT", 0, "MIGRATING", new_id)
        base = joiner._base(model)
        old.execute_command("MIGRATE", "127.0.0.1", target, f"{base}:pred", 0, 5000)
        time.sleep(0.3)  # all three are past their time now
        held = {key: old.dump(key) for key in old.scan_iter(match=f"{base}:*")}
        with pytest.raises(Exception) as caught:
            joiner.lag(model)
        assert cluster_unavailable(caught.value), caught.value
        assert {key: old.dump(key) for key in old.scan_iter(match=f"{base}:*")} == held, "nothing written"
        for key in held:  # the migration ends
            old.execute_command("MIGRATE", "127.0.0.1", target, key, 0, 5000)
        for node in (new, old, *(connect(f"redis://127.0.0.1:{p}/0") for p in cluster.ports
                                 if p not in (source.port, target))):
            node.execute_command("CLUSTER SETSLOT", 0, "NODE", new_id)
        cluster.wait_ok()
        lag = joiner.lag(model)
        assert (lag["awaiting"], lag["expired"], lag["bytes"]) == (0, 3, 0)
    finally:
        cluster.stop()
