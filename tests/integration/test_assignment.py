"""Group membership paths the guarantees rest on, through the real broker and Redis: the shipped
cooperative-sticky assignment (incremental assign and revoke) and partitions lost without a revoke
(a member paused past its session timeout). Each ends exactly like an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from ..support import SERVICE, SideBySide, write_config

pytestmark = pytest.mark.slow

COOPERATIVE = {"partition.assignment.strategy": "cooperative-sticky"}


def reconfigure(pair: SideBySide, redis_server, consumer: dict, service: dict | None = None) -> None:
    """The interrupted group's config with other consumer settings (before any of its instances starts)."""
    run = pair.run
    write_config(run.config, bootstrap=run.broker.address, redis_url=redis_server.address,
                 input_topic=run.input_topic, alert_topic=run.alert_topic, dead_letter_topic=run.dead_letter_topic,
                 group_id=run.group_id, namespace=run.namespace, models=_models(),
                 service={**SERVICE, **(service or {})}, consumer=consumer)


def _models() -> dict:
    from ..support import MODELS
    return MODELS


def wait_for_log(process, pattern: str, timeout: float = 60.0, count: int = 1) -> list[str]:
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        found = re.findall(pattern, process.log())
        if len(found) >= count:
            return found
        if process.process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} ×{count} not in the log within {timeout:.0f} s (found {found}):\n"
                         f"{process.log()[-3000:]}")


def test_cooperative_sticky_join_mid_stream_then_leave(broker, redis_server, tmp_path, monitors):
    """deploy/config.toml's strategy: the joining instance takes half the partitions incrementally (the
    first keeps the other half without a pause), then the first leaves; nothing lost or repeated."""
    pair = SideBySide(broker, redis_server, tmp_path, monitors, events=16_000, partitions=4, rate=2500)
    reconfigure(pair, redis_server, COOPERATIVE)
    first = pair.start()
    pair.feeder.start()
    pair.progress(2000, [first], partitions=range(4))
    joining = pair.start()
    revoked = wait_for_log(first, r"revoked (\S.*)")
    assert len(revoked[0].split(", ")) == 2, f"an incremental revoke of half the partitions: {revoked}"
    wait_for_log(joining, r"assigned \S+\[\d\]", count=2)
    pair.progress(5000, [first, joining], partitions=range(4))
    assert first.terminate() == 0, first.log()[-3000:]
    wait_for_log(joining, r"assigned \S+\[\d\]", count=4)
    pair.finish([joining])


def test_partitions_lost_by_a_paused_member_do_not_overwrite_the_new_owner(broker, redis_server, tmp_path, monitors):
    """One of two instances is SIGSTOPped past its session timeout: the group gives its partitions to
    the other, which carries on from the stored state. Resumed, the paused one finds them lost and must
    not save over the new owner's progress; the outcome equals the uninterrupted run."""
    pair = SideBySide(broker, redis_server, tmp_path, monitors, events=16_000, partitions=4, rate=2000)
    a, b = pair.start(), pair.start()
    pair.feeder.start()
    pair.progress(2000, [a, b], partitions=range(4))
    assigned_to_a = len(re.findall(r"assigned \S+\[\d\]", a.log()))
    os.kill(b.pid, signal.SIGSTOP)
    try:
        wait_for_log(a, r"assigned \S+\[\d\]", count=assigned_to_a + 2, timeout=90)  # b's two, after the timeout
        pair.progress(6000, [a], partitions=range(4))
    finally:
        os.kill(b.pid, signal.SIGCONT)
    wait_for_log(b, r"lost \S.*without a clean revoke|revoked \S", timeout=90)
    pair.finish([a, b])
