"""Logging to stderr: readable lines by default, one JSON object per line with ``--log-format json``.

The Kafka clients' own log lines (librdkafka) go through Python logging as well, on the logger
``stream_monitor.kafka`` (so they are JSON in JSON mode), with repeats held back by
:class:`RepeatFilter`. :class:`BrokerWatch` turns the clients' error and statistics callbacks
into two lines in the service's own words: the broker is unreachable (processing paused), and
it is back.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import Any, Callable

import orjson

from .config import redact

KAFKA_LOGGER = "stream_monitor.kafka"
_DIGITS = re.compile(r"\d+")


# C0 and C1 controls (newline, carriage return, tab, ESC …), DEL, and the Unicode line and paragraph
# separators: each could end a log line early, forge the next one or move a terminal's cursor.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_controls(text: str) -> str:
    """Control characters made visible as escapes, so that text from outside (a feature name, a model
    id, an error quoting a message) stays on its line and cannot fake another.

    >>> escape_controls("amount\\n2026-12-01 ERROR forged\\x1b[2J\\u2028")
    'amount\\\\n2026-12-01 ERROR forged\\\\x1b[2J\\\\u2028'
    """
    return _CONTROLS.sub(_escape_one, text)


def clean(text: str) -> str:
    """What any message puts in front of a reader: credentials redacted, control characters escaped."""
    return escape_controls(redact(text))


class TextFormatter(logging.Formatter):
    """One line per record: the message (arguments included) is redacted and its control characters
    escaped, whatever logger wrote it. A traceback keeps its lines, each indented and cleaned, so no
    line of it can pass for a record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = clean(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return "\n".join("  | " + clean(line) for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return "\n".join("  | " + clean(line) for line in stack_info.split("\n"))


# Legal unescaped inside a JSON string, yet a line break to many readers (Python's splitlines, some
# log shippers): written as \uXXXX escapes (they can only occur inside strings).
_JSON_BREAKS = re.compile("[\x80-\x9f\u2028\u2029]")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; JSON escapes the C0 controls, and C1 controls and the line and
    paragraph separators are written as escapes too."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
               "logger": record.name, "message": redact(record.getMessage())}
        if hasattr(record, "alert"):
            doc["alert_id"] = record.alert
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return _JSON_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", orjson.dumps(doc).decode())


def setup(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    threading.excepthook = _thread_failed  # a thread's traceback goes through the formatter: cleaned, one record


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("stream_monitor").error("thread %s failed", name,
                                              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


class RepeatFilter(logging.Filter):
    """The same line at most once per ``seconds``; the next one let through after that says how
    many were held back ("(repeated K times)"). "The same" ignores numbers (timings, ports, counts
    differ from one librdkafka reconnect line to the next). ``clock`` is injectable for tests."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.seconds = seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, str], list] = {}  # key → [first let through at, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, _DIGITS.sub("#", record.getMessage()))
        now = self.clock()
        with self._lock:
            held = self._seen.get(key)
            if held is not None and now - held[0] < self.seconds:
                held[1] += 1
                return False
            repeated = held[1] if held is not None else 0
            self._seen[key] = [now, 0]
            if len(self._seen) > 1000:  # bounded: forget lines not seen for a while
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.seconds}
        if repeated:
            record.msg = f"{record.getMessage()} (repeated {repeated} times)"
            record.args = None
        return True


def kafka_logger(repeat_seconds: float) -> logging.Logger:
    """The logger handed to the Kafka clients (librdkafka's ``logger`` property), rate-limited."""
    logger = logging.getLogger(KAFKA_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, RepeatFilter)]:
        logger.removeFilter(old)
    logger.addFilter(RepeatFilter(repeat_seconds))
    return logger


class BrokerWatch:
    """Whether the broker is reachable, as the Kafka clients' callbacks last said.

    ``error_cb``: ``_ALL_BROKERS_DOWN`` (or ``_RESOLVE``: the address does not resolve) → one line
    "broker unreachable … processing paused"; ``stats_cb`` (every ``statistics.interval.ms``) with
    a broker in state ``UP`` → one line "broker is back". Both run in the thread that polls the
    client (the service loop, or a flush inside it). ``down_since`` (monotonic) is read by the
    health report.
    """

    def __init__(self, bootstrap: str, log: logging.Logger | None = None,
                 on_change: Callable[[bool], None] | None = None):
        self.bootstrap = bootstrap
        self.log = log or logging.getLogger("stream_monitor.app")
        self.on_change = on_change
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.outages = 0

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def error_cb(self, error: Any) -> None:
        from confluent_kafka import KafkaError  # noqa: PLC0415 - keeps this module import-light

        code = error.code()
        if code in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self.last_error = error.str()
            if code == KafkaError._TRANSPORT:
                logging.getLogger(KAFKA_LOGGER).debug("broker connection failed: %s", error.str())
                return
            self.mark_down(error.str())
            return
        if error.fatal():
            self.log.error("Kafka client fatal error: %s", error.str())
        else:
            logging.getLogger(KAFKA_LOGGER).warning("Kafka client error: %s", error.str())

    def mark_down(self, why: str) -> None:
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.outages += 1
        self.log.error("broker unreachable at %s (%s): processing is paused until it is back; "
                       "nothing is lost, reading resumes where it stopped", self.bootstrap, why)
        if self.on_change is not None:
            self.on_change(False)

    def mark_up(self) -> None:
        if self.down_since is None:
            return
        waited = time.monotonic() - self.down_since
        self.down_since = None
        self.log.warning("broker is back at %s after %.1f s; processing resumes", self.bootstrap, waited)
        if self.on_change is not None:
            self.on_change(True)

    def stats_cb(self, stats_json: str) -> None:
        if self.down_since is None:
            return  # parse only while an outage is on: the statistics can be large
        try:
            stats = orjson.loads(stats_json)
        except orjson.JSONDecodeError:
            return
        if any(b.get("state") == "UP" for b in (stats.get("brokers") or {}).values()):
            self.mark_up()


def client_settings(settings: dict[str, Any], logger: logging.Logger, watch: BrokerWatch | None,
                    statistics_ms: int = 1000) -> dict[str, Any]:
    """Kafka client properties with the logger and (given a ``watch``) the error and statistics callbacks."""
    out = dict(settings)
    out["logger"] = logger
    out.setdefault("log.connection.close", False)  # an idle connection closed by the broker is not news
    if watch is not None:
        out["error_cb"] = watch.error_cb
        out["stats_cb"] = watch.stats_cb
        out.setdefault("statistics.interval.ms", statistics_ms)
    return out



class DeadLetterDigest:
    """Dead letters summed up by reason for one log line at most every ``seconds``:
    "dead-lettered 1,234 messages in the last 60 s: unknown_model 1,200 (e.g. model_id 'frod' …), …".
    :meth:`record` per dead letter (cheap); :meth:`flush` at each checkpoint logs when due and
    there was something new. ``clock`` is injectable for tests."""

    def __init__(self, seconds: float, log: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic,
                 sample_chars: int = 160):
        self.seconds = seconds
        self.log = log or logging.getLogger("stream_monitor.app")
        self.clock = clock
        self.sample_chars = sample_chars
        self._counts: dict[str, int] = {}
        self._samples: dict[str, str] = {}
        self._since = clock()
        self._last_line: float | None = None

    def record(self, reason: str, error: str) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + 1
        if reason not in self._samples:
            self._samples[reason] = error[:self.sample_chars]

    def line(self, now: float) -> str | None:
        if not self._counts:
            return None
        total = sum(self._counts.values())
        parts = [f"{reason} {count:,} (e.g. {self._samples[reason]})"
                 for reason, count in sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        return (f"dead-lettered {total:,} message{'s' if total != 1 else ''} in the last {now - self._since:.0f} s: "
                + ", ".join(parts))

    def flush(self, force: bool = False) -> str | None:
        """Log the summary if there is one and the last was ``seconds`` ago (the first one at once)."""
        now = self.clock()
        if not self._counts or (not force and self._last_line is not None and now - self._last_line < self.seconds):
            return None
        text = self.line(now)
        self.log.info("%s", text)
        self._counts, self._samples = {}, {}
        self._since = self._last_line = now
        return text
