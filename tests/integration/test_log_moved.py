"""A log that moved under the stored offset (the memory-only broker restarted, the topics were recreated):
reported, and the new log is read from its start; a normal resume at the log's end reports nothing."""

from __future__ import annotations

import urllib.request

import orjson
import pytest

from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import RawMessage
from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.partition import PartitionMonitor
from stream_monitor.synthetic import generate

from ..support import MODEL, Feeder, OwnBroker, lines, produce, Run, unique, wait_for_offsets, wait_until

pytestmark = pytest.mark.slow
MODELS = {"stable": MODEL}


def counted(run: Run) -> int:
    """Inference events of model ``stable`` counted in partition 0's saved summary."""
    summary = orjson.loads(run.store.client.hget(run.store.key(run.input_topic, 0), "summary"))
    return summary["models"]["stable"]["events"]


def expected_models(*logs: list[bytes]) -> dict:
    """The detector state after the given logs, one after the other, each read from offset 0."""
    pure = PartitionMonitor(parse_config({"models": MODELS}), 0, {})
    for log in logs:
        for offset, value in enumerate(log):
            pure.process(decode(RawMessage("t", 0, offset, value), set(MODELS)), offset)
    return pure.snapshot()["models"]


def metric(port: int, name: str) -> list[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return [line for line in text.splitlines() if line.startswith(name)]


def read_the_new_log(run: Run, process, timeout: float) -> None:
    """Until the service has stored the new log's end (1000) under epoch 1 (one log move seen)."""
    key = run.store.key(run.input_topic, 0)
    wait_until(lambda: run.store.client.hmget(key, ["epoch", "offset"]) == [b"1", b"1000"], "reading the new log",
               process, timeout=timeout)


def test_log_moved_under_the_stored_offset_is_reported_and_the_new_log_read_from_its_start(redis_server, tmp_path,
                                                                                           monitors):
    with OwnBroker(tmp_path, monitors) as broker:
        topic = unique("inference")
        create_topics(broker.address, {topic: 1})
        old, new = lines(generate("stable", 3000, seed=7)), lines(generate("stable", 1000, seed=8))
        assert produce(broker.address, topic, [(0, b"stable", v, None) for v in old]) == {0: 3000}
        metrics_port = free_port()
        run = Run(broker, redis_server, tmp_path, topic, 1, "moved", models=MODELS,
                  service={"metrics_port": metrics_port})
        first = run.start(monitors)
        wait_for_offsets(run.store, topic, {0: 3000}, processes=[first])
        assert first.terminate() == 0
        before = counted(run)

        broker.restart_empty({topic: 1, run.alert_topic: 1, run.dead_letter_topic: 1})
        assert produce(broker.address, topic, [(0, b"stable", v, None) for v in new]) == {0: 1000}
        second = run.start(monitors)
        read_the_new_log(run, second, timeout=90)
        resets = metric(metrics_port, "stream_monitor_offset_resets_total")
        assert resets == [f'stream_monitor_offset_resets_total{{partition="0",topic="{topic}"}} 1.0'], resets
        assert second.terminate() == 0
        log = second.log()
        assert (f"OFFSET OUT OF RANGE: {topic}[0]: the stored offset 3000 is outside the partition's log [0, 1000]"
                in log), log[-3000:]
        assert log.count("OFFSET OUT OF RANGE") == 1
        after = counted(run)
        print(f"\nlog moved: {before} events counted before, {after} after the 1000 events of the new log")
        assert (before, after) == (3000, 4000), "every event of the new log counted once, nothing skipped"
        (next_offset, stored), = run.states().values()
        assert next_offset == 1000
        assert stored["models"] == expected_models(old, new), "the detector state carried on over both logs"


def test_a_normal_resume_at_the_end_of_the_log_reports_no_reset(broker, redis_server, tmp_path, monitors):
    """The local broker's uncached end offset can be below the true end: resuming exactly at the end, then
    reading a stream that trickles in, must not be mistaken for a moved log."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    events = lines(generate("stable", 4000, seed=9))
    assert produce(broker.address, topic, [(0, b"stable", v, None) for v in events[:3000]]) == {0: 3000}
    run = Run(broker, redis_server, tmp_path, topic, 1, "resume", models=MODELS)
    first = run.start(monitors)
    wait_for_offsets(run.store, topic, {0: 3000}, processes=[first])
    assert first.terminate() == 0
    second = run.start(monitors)
    wait_until(lambda: "resuming at offset 3000" in second.log(), "the resume at offset 3000", second)
    feeder = Feeder(broker.address, topic, [(0, b"stable", v, None) for v in events[3000:]], rate=400)
    feeder.start()
    assert feeder.result() == {0: 4000}
    wait_for_offsets(run.store, topic, {0: 4000}, processes=[second])
    assert second.terminate() == 0
    assert "OFFSET OUT OF RANGE" not in second.log()
    assert run.store.client.hget(run.store.key(topic, 0), "epoch") == b"0"
    (next_offset, stored), = run.states().values()
    assert next_offset == 4000 and counted(run) == 4000
    assert stored["models"] == expected_models(events)


def test_policy_stop_exits_2_and_says_what_to_do(broker, redis_server, tmp_path, monitors):
    """A stored offset beyond the log's end (here written by hand) with on_offset_out_of_range = "stop"."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    assert produce(broker.address, topic, [(0, b"stable", v, None)
                                           for v in lines(generate("stable", 1500, seed=10))]) == {0: 1500}
    run = Run(broker, redis_server, tmp_path, topic, 1, "stop", models=MODELS,
              service={"on_offset_out_of_range": "stop"})
    first = run.start(monitors)
    wait_for_offsets(run.store, topic, {0: 1500}, processes=[first])
    assert first.terminate() == 0
    run.store.client.hset(run.store.key(topic, 0), "offset", 5000)
    second = run.start(monitors)
    assert second.process.wait(60) == 2
    log = second.log()
    assert f"{topic}[0]: the stored offset 5000 is outside the partition's log [0, 1500]" in log, log[-3000:]
    assert "on_offset_out_of_range = 'stop'" in log and "state import" in log
    assert run.store.client.hget(run.store.key(topic, 0), "offset") == b"5000", "nothing saved over it"


def test_on_offset_out_of_range_accepts_only_its_two_values():
    from stream_monitor.errors import ConfigError
    assert parse_config({}).service.on_offset_out_of_range == "earliest"
    assert parse_config({"service": {"on_offset_out_of_range": "stop"}}).service.on_offset_out_of_range == "stop"
    with pytest.raises(ConfigError, match="service.on_offset_out_of_range"):
        parse_config({"service": {"on_offset_out_of_range": "latest"}})


def test_log_moved_while_the_service_runs_through_the_broker_restart(redis_server, tmp_path, monitors):
    """The same with the service running all along: it loses the partition with the old broker, gets it
    back from the new one at the stored offset, reports the moved log and reads the new one."""
    with OwnBroker(tmp_path, monitors) as broker:
        topic = unique("inference")
        create_topics(broker.address, {topic: 1})
        old, new = lines(generate("stable", 3000, seed=7)), lines(generate("stable", 1000, seed=8))
        assert produce(broker.address, topic, [(0, b"stable", v, None) for v in old]) == {0: 3000}
        run = Run(broker, redis_server, tmp_path, topic, 1, "running", models=MODELS)
        process = run.start(monitors)
        wait_for_offsets(run.store, topic, {0: 3000}, processes=[process])
        broker.restart_empty({topic: 1, run.alert_topic: 1, run.dead_letter_topic: 1})
        assert produce(broker.address, topic, [(0, b"stable", v, None) for v in new]) == {0: 1000}
        read_the_new_log(run, process, timeout=120)
        assert process.terminate() == 0
        assert process.log().count(f"OFFSET OUT OF RANGE: {topic}[0]: the stored offset 3000") == 1
        assert counted(run) == 4000
        (next_offset, stored), = run.states().values()
        assert next_offset == 1000 and stored["models"] == expected_models(old, new)
