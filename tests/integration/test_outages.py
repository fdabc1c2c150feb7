"""Outages of Redis and of the broker mid-stream: processing pauses, resumes, loses and double-counts nothing."""

from __future__ import annotations

import time

import orjson
import pytest

from stream_monitor.demo.localstack import MonitorProcess, create_topics, free_port
from stream_monitor.synthetic import generate, labelled

from ..support import (Feeder, LabelRun, OwnBroker, OwnRedis, Run, SideBySide, lines, outage_pair, pairs_counted,
                       produce, split, stored_offset, two_model_stream, unique, wait_for_offsets, wait_until,
                       write_config)

pytestmark = pytest.mark.slow


def test_sigterm_while_start_up_waits_for_redis_ends_it_at_once(broker, tmp_path, monitors):
    """Redis does not answer while an instance starts (here: nothing listens on its port), and the
    orchestrator sends SIGTERM: the instance has consumed nothing, so it leaves at once with 0 rather
    than after ``redis_outage_seconds`` (before: the stop was only remembered, and the start-up went on
    waiting; under load a stop during the kernels' compilation waited the same way)."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    config = write_config(tmp_path / "no-redis.toml", bootstrap=broker.address,
                          redis_url=f"redis://127.0.0.1:{free_port()}/0", input_topic=topic,
                          alert_topic=unique("alerts"), dead_letter_topic=unique("dead"), group_id=unique("group"),
                          namespace=unique("ns"), models={"stable": {"features": {"x": "numeric"}}},
                          service={"redis_outage_seconds": 240})
    process = MonitorProcess(config, tmp_path / "no-redis.log")
    monitors.append(process)
    wait_until(lambda: "Redis unreachable" in process.log(), "the start-up waiting for Redis", process)
    assert process.terminate() == 0, process.log()[-3000:]
    log = process.log()
    assert "stopped during start-up (SIGTERM): nothing was consumed" in log
    assert "consuming " not in log and "Traceback" not in log


def test_redis_paused_mid_stream(broker, redis_server, tmp_path, monitors):
    """SIGSTOP Redis until the service says it paused, and 5 s beyond: the service waits (logged), then
    finishes with the uninterrupted outcome. (The first "Redis unreachable" line comes only once the
    client's own quick retries are spent, 4–12 s into the outage; a fixed 12 s pause sometimes ended first.)"""
    with OwnRedis(tmp_path) as own:
        pair, process = outage_pair(broker, redis_server, tmp_path, monitors, run_redis=own)
        own.pause()
        wait_until(lambda: "processing paused" in process.log(), "a logged pause", process)
        time.sleep(5)  # the outage goes on after the service noticed it: a pause it must sit out
        own.resume()
        pair.finish([process])
        log = process.log()
        assert "Redis unreachable" in log and "processing paused" in log and "Redis is back" in log


def test_redis_refusing_connections_then_back_with_its_data(broker, redis_server, tmp_path, monitors):
    """Redis stopped for 10 s (connections refused), restarted from its append-only file."""
    with OwnRedis(tmp_path, persistent=True) as own:
        pair, process = outage_pair(broker, redis_server, tmp_path, monitors, run_redis=own)
        own.stop()
        time.sleep(10)  # as long as the service finds connections refused
        own.restart()
        pair.finish([process])
        assert "Redis unreachable" in process.log() and "REDIS LOST" not in process.log()


def test_redis_restarted_empty_is_noticed_and_written_back(broker, redis_server, tmp_path, monitors):
    """Redis killed and restarted without its data: said loudly, the owned state is written back from
    memory, and the final outcome still equals an uninterrupted run."""
    with OwnRedis(tmp_path) as own:
        pair, process = outage_pair(broker, redis_server, tmp_path, monitors, run_redis=own)
        own.kill()
        # Redis comes back once the service has found it gone
        wait_until(lambda: "Redis unreachable" in process.log(), "the outage noticed", process, timeout=30)
        own.restart()
        pair.finish([process])
        assert "REDIS LOST ITS DATA" in process.log()


def test_broker_paused_mid_stream(redis_server, tmp_path, monitors):
    """SIGSTOP the broker for 12 s: clients reconnect and the stream finishes as if nothing happened."""
    with OwnBroker(tmp_path, monitors) as own:
        pair = SideBySide(own, redis_server, tmp_path, monitors, events=10_000, partitions=2, rate=4000)
        process = pair.underway(3000)
        own.pause()
        time.sleep(12)  # the outage's length is the point
        own.resume()
        ends = pair.finish([process])
        assert stored_offset(pair.run.store, pair.topic, 0) == ends[0]


@pytest.mark.parametrize("policy", ["rebuild", "stop"])
def test_partition_without_state_although_the_group_made_progress(policy, broker, redis_server, tmp_path, monitors):
    """Redis lost a partition's state while no instance owned it: the documented policy applies, loudly."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    ends = produce(broker.address, topic, [(0, b"fraud", v, None)
                                           for v in lines(generate("fraud", 6000, seed=4, drift_at=3000))])
    run = Run(broker, redis_server, tmp_path, topic, 1, policy, service={"on_missing_state": policy})
    first = run.start(monitors)
    wait_for_offsets(run.store, topic, ends, processes=[first])
    assert first.terminate() == 0
    before = run.states()
    for key in run.store.client.scan_iter(f"{run.namespace}:*"):  # Redis loses this run's data
        run.store.client.delete(key)
    second = run.start(monitors)
    if policy == "stop":
        assert second.process.wait(60) == 2
        assert "Redis lost its data" in second.log() and "state import" in second.log()
        return
    wait_for_offsets(run.store, topic, ends, processes=[second])
    assert second.terminate() == 0
    assert "REDIS LOST ITS DATA" in second.log() and "rebuilding it from the beginning" in second.log()
    assert run.states() == before, "rebuilt from the log: the same state"


def test_sigterm_while_redis_is_paused_exits_within_10_s_and_a_restart_finishes(broker, redis_server, tmp_path,
                                                                                 monitors):
    """SIGTERM during a Redis outage: the wait ends, the checkpoint in hand is given up (Redis keeps the last
    consistent state), exit 0 within 10 s; the next instance redoes the rest with the uninterrupted outcome."""
    with OwnRedis(tmp_path) as own:
        pair, process = outage_pair(broker, redis_server, tmp_path, monitors, run_redis=own)
        own.pause()
        wait_until(lambda: "Redis unreachable" in process.log(), "the outage noticed", process)
        started = time.monotonic()
        assert process.terminate(timeout=10) == 0, process.log()[-3000:]
        print(f"\nSIGTERM during the Redis outage: exited after {time.monotonic() - started:.1f} s")
        log = process.log()
        assert "stopped during an outage" in log and "processed again by the next owner" in log
        own.resume()
        pair.finish([pair.start()])


def test_redis_restarted_empty_under_the_label_join_is_reported(broker, redis_server, tmp_path, monitors):
    """The label join's keys vanish with Redis: said loudly once per model (ERROR line + counter), not silently."""
    with OwnRedis(tmp_path) as own:
        inference_topic, label_topic = unique("inference"), unique("labels")
        create_topics(broker.address, {inference_topic: 1, label_topic: 1})
        predictions, answers = split(labelled("credit", 12_000, seed=3, delay=400))
        feeders = [Feeder(broker.address, topic, [(0, b"credit", orjson.dumps(e), None) for e in events], 2000)
                   for topic, events in ((inference_topic, predictions), (label_topic, answers))]
        run = LabelRun(broker, own, tmp_path, "joinlost", inference_topic, label_topic)
        process = run.start(monitors)
        for feeder in feeders:
            feeder.start()
        wait_for_offsets(run.store, inference_topic, {0: 3000}, processes=[process])
        own.kill()
        own.restart()
        inference_ends, label_ends = (feeder.result() for feeder in feeders)
        wait_for_offsets(run.store, inference_topic, inference_ends, processes=[process], timeout=120)
        wait_for_offsets(run.store, label_topic, label_ends, processes=[process], timeout=120)
        assert process.terminate() == 0
        log = process.log()
        assert log.count("REDIS LOST ITS DATA: label join of model credit") == 1, log[-3000:]
        pairs = pairs_counted(run.store, {inference_topic: 1, label_topic: 1})
        print(f"\nlabel join lost with Redis: {pairs} of {len(answers)} pairs counted")


def test_redis_flushed_writes_back_partitions_that_have_nothing_new(broker, redis_server, tmp_path, monitors):
    """Redis loses its data while one partition has no new input: the first save that finds its own state
    gone makes the instance write back every partition it owns, not only the ones that changed (the idle
    one would otherwise stay missing from Redis until its next event, or for good after a crash)."""
    with OwnRedis(tmp_path) as own:
        topic = unique("inference")
        create_topics(broker.address, {topic: 2})
        ends = produce(broker.address, topic, two_model_stream(3000, 2))
        run = Run(broker, own, tmp_path, topic, 2, "flushed")
        process = run.start(monitors)
        wait_for_offsets(run.store, topic, ends, processes=[process])
        run.store.client.flushall()
        more = produce(broker.address, topic, [(0, b"fraud", v, None) for v in lines(generate("fraud", 600, seed=9))])
        wait_for_offsets(run.store, topic, {0: more[0], 1: ends[1]}, processes=[process])
        log = process.log()
        assert "REDIS LOST ITS DATA" in log and "writing back the state of 1 more partition" in log, log[-3000:]
        assert process.terminate() == 0
