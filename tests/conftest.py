"""Session fixtures: a real broker (Tansu), a real redis-server and a real 3-master Redis Cluster on free
loopback ports.

If one cannot start, every test that needs it fails with the reason; nothing is skipped.
"""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import settings

from stream_monitor.demo.localstack import LocalCluster, LocalProcess, start_broker, start_redis, start_redis_cluster

# Property tests: a quarter of each test's examples by default (tests.support.examples scales the counts);
# HYPOTHESIS_PROFILE=thorough runs the full counts.
settings.register_profile("quick", max_examples=25)
settings.register_profile("thorough", max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> LocalProcess:
    process = start_broker(str(tmp_path_factory.mktemp("broker")))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> LocalProcess:
    process = start_redis(str(tmp_path_factory.mktemp("redis")))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> LocalCluster:
    """Three masters, no replicas (``redis-cli --cluster create``), once every node says cluster_state:ok."""
    cluster = start_redis_cluster(str(tmp_path_factory.mktemp("redis-cluster")))
    yield cluster
    cluster.stop()


@pytest.fixture(params=["standalone", "cluster"])
def redis_target(request):
    """The same test against a standalone redis-server and against the Redis Cluster (``redis.cluster =
    true``): ``.address`` is the URL either way, ``.cluster`` tells which."""
    return request.getfixturevalue("redis_server" if request.param == "standalone" else "redis_cluster")


@pytest.fixture
def monitors():
    """Collects MonitorProcess objects; every one still running is killed at the end of the test."""
    started = []
    yield started
    for process in started:
        process.close()


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Compile the detector kernels once, before any test starts `run` processes that would each wait
    for the compilation (it is cached on disk; a fresh clone pays ~10 s here, once)."""
    from stream_monitor.detectors.compile import warm_up

    warm_up()


INTEGRATION_FIXTURES = {"broker", "redis_server", "redis_cluster", "redis_target", "monitors"}


def pytest_collection_modifyitems(items):
    """Tests that need a real broker, Redis or `run` process are the integration tier (`-m integration`);
    the rest is the unit tier that `make test-unit` runs.

    The long tests run first (slow, then integration, then unit), so that on several workers
    (`make test` runs `pytest -n 4`) the short unit tests fill the gaps at the end instead of one
    worker starting a minute-long test when the others are done."""
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)

    def tier(item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("integration") else 2

    items.sort(key=tier)  # stable: within a tier, the collection order


@pytest.fixture
def restore_logging():
    """Tests that set up logging (logs.setup) leave the root logger as they found it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
