"""Each replica's status page shows the whole group: two real `stream-monitor run` instances share a
topic's two partitions (real broker, real Redis); each owns one, and each one's page and /api/status
list both partitions (its own live, the other as last saved in Redis) and the drift found on the
other instance's partition, with the health banner on top."""

from __future__ import annotations

import time
import urllib.request

import orjson
import pytest

from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.synthetic import generate

from ..support import lines, produce, Run, unique, wait_for_offsets


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read()


def group_seen(port: int) -> tuple[list, list, bool]:
    """(partitions owned here, [(partition, owner)] on the page's data, whether fraud fires there)."""
    status = orjson.loads(get(port, "/api/status"))
    firing = any(row.get("firing") for row in status["models"].get("fraud", {}).get("detectors", []))
    return (status.get("owned") or [], sorted((p["partition"], p["owner"]) for p in status["partitions"]), firing)


@pytest.mark.slow
def test_each_replica_shows_every_partition_of_the_group(broker, redis_server, tmp_path, monitors):
    topic = unique("inference")
    create_topics(broker.address, {topic: 2})
    ends = produce(broker.address, topic,
                   [(0, b"fraud", v, None) for v in lines(generate("fraud", 6000, seed=3, drift_at=2000))]
                   + [(1, b"stable", v, None) for v in lines(generate("stable", 3000, seed=3))])
    ports = free_port(), free_port()
    run = Run(broker, redis_server, tmp_path, topic, 2, "group-view")
    processes = [run.start(monitors, {"STREAM_MONITOR_SERVICE_METRICS_PORT": str(port)}) for port in ports]
    wait_for_offsets(run.store, topic, ends, processes=processes)

    views: dict[int, tuple] = {}
    deadline = time.monotonic() + 90  # a join of both members, then one group read (every 5 s)
    while time.monotonic() < deadline:
        for port in ports:
            try:
                views[port] = group_seen(port)
            except OSError:
                views.pop(port, None)
        if len(views) == 2 and all(len(owned) == 1 and [p for p, _ in seen] == [0, 1] and firing
                                   for owned, seen, firing in views.values()):
            break
        time.sleep(0.2)
    logs = "\n---\n".join(p.log()[-2000:] for p in processes)
    assert len(views) == 2, logs
    owners = {}
    for port, (owned, seen, firing) in views.items():
        assert len(owned) == 1, (port, views, logs)
        (mine,) = [partition for _, partition in owned]
        assert seen == sorted([(mine, "here"), (1 - mine, "group")]), (port, views)
        assert firing, "the fraud drift on partition 0 fires on both pages"
        owners[port] = mine
    assert sorted(owners.values()) == [0, 1], "the two instances share the partitions"

    for port in ports:
        page = get(port, "/").decode()
        assert f"{topic}[0]" in page and f"{topic}[1]" in page
        assert page.count("another instance") == 1 and page.count("<td>this instance</td>") == 1
        assert "<section class=banner id=health>" in page and "<b>group</b>2 partitions, 1 here" in page
        assert "<b>Redis</b><span class=ok>reachable</span>" in page
        assert "<th>firing for</th>" in page

    # a stored partition whose state does not decode (of a topic nobody consumes): a row saying so, not a
    # failed view
    client = run.store.client
    client.sadd(run.store.index_key, "elsewhere|7")
    client.hset(run.store.key("elsewhere", 7), mapping={"offset": "abc"})
    deadline = time.monotonic() + 30
    pages = {}
    while time.monotonic() < deadline:
        pages = {port: get(port, "/").decode() for port in ports}
        if all("its stored state does not decode" in page for page in pages.values()):
            break
        time.sleep(0.2)
    for page in pages.values():
        assert "<td>elsewhere[7]</td>" in page and "field &#x27;offset&#x27; is &#x27;abc&#x27;" in page, page[-3000:]
        assert "<b>Redis</b><span class=ok>reachable</span>" in page
    for process in processes:
        assert process.terminate() == 0, process.log()[-3000:]
