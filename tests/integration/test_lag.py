"""Consumer lag on the scrape: the consumer's cached high watermark minus the next offset to process,
derived at scrape time, so a stall shows as growing lag (not "0" as of the last checkpoint).

Real broker, the run's own Redis (SIGSTOPped while input keeps arriving), `stream-monitor run`.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_monitor.demo.localstack import create_topics, free_port, start_redis
from stream_monitor.metrics import PartitionView

from ..support import Feeder, Run, two_model_stream, unique, wait_for_offsets


def test_lag_is_the_end_minus_the_next_offset():
    assert PartitionView("t", 0, next_offset=40, high_watermark=100).lag == 60
    assert PartitionView("t", 0, next_offset=100, high_watermark=100).lag == 0
    assert PartitionView("t", 0, next_offset=None, high_watermark=100, low_watermark=30).lag == 70
    assert PartitionView("t", 0, next_offset=None, high_watermark=100).lag == 100
    assert PartitionView("t", 0, next_offset=5, high_watermark=None).lag is None
    assert PartitionView("t", 0, next_offset=120, high_watermark=100).lag == 0


def scraped_lag(port: int, topic: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "stream_monitor_consumer_lag":
            return {s.labels["partition"]: s.value for s in family.samples if s.labels["topic"] == topic}
    return {}


@pytest.mark.slow
def test_lag_grows_on_the_scrape_while_redis_is_paused(broker, tmp_path, monitors):
    own = start_redis(str(tmp_path))
    try:
        topic = unique("inference")
        create_topics(broker.address, {topic: 1})
        feeder = Feeder(broker.address, topic, two_model_stream(5000, 1), rate=2000)  # 10,000 events in ~5 s
        port = free_port()
        run = Run(broker, own, tmp_path, topic, 1, "lag", service={"metrics_port": port})
        process = run.start(monitors)
        feeder.start()
        wait_for_offsets(run.store, topic, {0: 1000}, processes=[process])
        os.kill(own.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        highest = 0.0
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and highest < 3000:
                highest = max(highest, scraped_lag(port, topic).get("0", 0.0))
                time.sleep(0.1)
            print(f"lag reached {highest:.0f} within {time.monotonic() - stopped:.1f} s of the pause")
        finally:
            os.kill(own.pid, signal.SIGCONT)
        assert highest >= 3000, "the waiting events show as lag during the pause"

        ends = feeder.result(timeout=120)
        wait_for_offsets(run.store, topic, ends, processes=[process], timeout=120)
        deadline = time.monotonic() + 30
        while scraped_lag(port, topic).get("0") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scraped_lag(port, topic) == {"0": 0.0}, "caught up: no lag"
        assert process.terminate() == 0, process.log()[-3000:]
    finally:
        own.stop()
