"""Moved to :mod:`stream_monitor.demo.localstack`; this name stays until the test modules that still
import it from here (tests/test_service.py, tests/test_checkpoint_timers.py) import the new one."""

from .demo.localstack import (  # noqa: F401
    LocalProcess,
    MonitorProcess,
    create_topics,
    free_port,
    redis_binary,
    start_broker,
    start_redis,
)
