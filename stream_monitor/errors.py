"""One root error type; every error the service raises on purpose derives from it."""


class StreamMonitorError(Exception):
    """Root of every error stream_monitor raises on purpose."""


class ConfigError(StreamMonitorError):
    """The configuration is wrong; the message names the key and the problem."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config: {key}: {problem}")
        self.key = key
        self.problem = problem


class ReferenceProfileError(StreamMonitorError):
    """A reference profile is missing or cannot be built."""


class StateError(StreamMonitorError):
    """Detector state in Redis cannot be read or written."""


class PublishError(StreamMonitorError):
    """Alerts or dead letters could not be delivered to the broker."""


class ServiceError(StreamMonitorError):
    """A local service (broker, Redis) could not be started or reached."""


class StopRequested(StreamMonitorError):
    """A stop (SIGTERM/SIGINT) arrived while a wait for Redis or the broker was under way.

    The wait ends at once; the checkpoint in hand is abandoned, so Redis keeps the last consistent
    state and offset, and the events since then are processed again by the next owner (same alert ids).
    """


class AlertmanagerError(StreamMonitorError):
    """A post to Alertmanager failed: ``transient`` (unreachable, 5xx, 429: try again later) or refused
    for good (another 4xx: the same alerts would be refused again)."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient
