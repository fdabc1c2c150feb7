"""The HTTP side on ``service.metrics_host``:``service.metrics_port``: ``/metrics`` (Prometheus),
``/`` (status page), ``/api/status`` (the page's data as JSON), ``/healthz`` (liveness) and
``/readyz`` (readiness); optional TLS and basic auth from a web config file in the format of
Prometheus' exporter-toolkit (:func:`load_web_config`).

What clients can cost is bounded (:class:`HttpServer`): a fixed number of worker threads, request
heads read without blocking by one selector thread with a deadline, a cap on open connections; the
page and ``/api/status`` are rendered once per board update and served from a cache
(:class:`PageCache`), so neither scrapes nor visitors slow the loop.

Health is judged from what the service already knows (:class:`Health`: when the loop last came
round, the group join, the last Redis failure, the broker callbacks); a health request does no
I/O of its own, so it answers at once even while the loop is stuck.

The page is rendered on the server as plain HTML with inline SVG charts: no
script, no external asset, readable at a glance; it reloads every 5 seconds.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import html
import logging
import math
import os
import queue
import re
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from statistics import NormalDist
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .board import StatusBoard
from .events import segment_words
from .report import distribution_svg
from .errors import ConfigError
from .events import format_time
from .fairness import shown as fairness_lines
from .mergejoint import estimate_range
from .metrics import HttpMetrics
from .logs import clean
from .severity import CRITICAL_RATE_EFFECT, CRITICAL_SHIFT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthFacts:
    """What the service knows at one moment (monotonic seconds; ``None``: never / not now)."""

    now: float
    started: float
    last_loop: float | None = None  # when the loop last came round
    joined: bool = False  # the consumer has completed a group join at least once
    joining_since: float | None = None  # subscribed or revoked and not assigned since
    assigned_partitions: int = 0
    redis_failed_at: float | None = None  # the last failed (and retried) Redis operation
    broker_down_since: float | None = None
    stopping: bool = False


def assess(facts: HealthFacts, max_loop_age: float, max_unassigned: float) -> tuple[bool, bool, dict[str, Any]]:
    """(live, ready, report). Not live: the loop has not come round for ``max_loop_age`` seconds
    (stuck, e.g. inside a Redis call that does not return), or a group join has lasted
    ``max_unassigned`` seconds. Not ready: not joined yet, (re)joining, paused by Redis (a
    failure since the loop last came round) or by the broker (unreachable), stopping, or not live."""
    now = facts.now
    loop_age = now - (facts.last_loop if facts.last_loop is not None else facts.started)
    joining = None if facts.joining_since is None else now - facts.joining_since
    redis_paused = facts.redis_failed_at is not None and (facts.last_loop is None
                                                          or facts.redis_failed_at >= facts.last_loop)
    broker_down = None if facts.broker_down_since is None else now - facts.broker_down_since
    problems = []
    if loop_age > max_loop_age:
        where = " (waiting for Redis)" if redis_paused else " (waiting for the broker)" if broker_down else ""
        problems.append(f"the loop has not come round for {loop_age:.0f} s{where} (limit {max_loop_age:g} s)")
    if joining is not None and joining > max_unassigned:
        problems.append(f"no partition assignment for {joining:.0f} s: the group join has not completed "
                        f"(limit {max_unassigned:g} s)")
    live = not problems
    waiting = []
    if not facts.joined or joining is not None:
        waiting.append("joining the consumer group")
    if redis_paused:
        waiting.append("paused: Redis is failing")
    if broker_down is not None:
        waiting.append(f"paused: the broker has been unreachable for {broker_down:.0f} s")
    if facts.stopping:
        waiting.append("stopping")
    ready = live and not waiting
    report = {"status": "ok" if live else "stuck", "ready": ready, "problems": problems + waiting,
              "loop_age_seconds": round(loop_age, 3), "assigned_partitions": facts.assigned_partitions,
              "joined": facts.joined, "joining_seconds": None if joining is None else round(joining, 3),
              "redis": "failing" if redis_paused else "ok",
              "broker": "ok" if broker_down is None else "unreachable",
              "broker_unreachable_seconds": None if broker_down is None else round(broker_down, 3),
              "references_loaded": True}
    return live, ready, report


class Health:
    """The service's side of the health report: it calls :meth:`tick` every loop iteration and
    :meth:`joining` / :meth:`assigned` from the rebalance callbacks; the HTTP thread calls
    :meth:`check`. Plain attribute writes and reads: no lock, nothing the loop could wait on."""

    def __init__(self, max_loop_age: float, max_unassigned: float,
                 redis_failed_at: Callable[[], float | None] = lambda: None,
                 broker_down_since: Callable[[], float | None] = lambda: None,
                 stopping: Callable[[], bool] = lambda: False):
        self.max_loop_age = max_loop_age
        self.max_unassigned = max_unassigned
        self.started = time.monotonic()
        self.last_loop: float | None = None
        self.joined = False
        self.joining_since: float | None = None
        self.assigned_partitions = 0
        self._redis_failed_at = redis_failed_at
        self._broker_down_since = broker_down_since
        self._stopping = stopping

    def tick(self) -> None:
        self.last_loop = time.monotonic()

    def joining(self) -> None:
        if self.joining_since is None:
            self.joining_since = time.monotonic()

    def assigned(self, partitions: int) -> None:
        self.assigned_partitions = partitions
        self.joined = True
        self.joining_since = None

    def facts(self) -> HealthFacts:
        return HealthFacts(now=time.monotonic(), started=self.started, last_loop=self.last_loop, joined=self.joined,
                           joining_since=self.joining_since, assigned_partitions=self.assigned_partitions,
                           redis_failed_at=self._redis_failed_at(), broker_down_since=self._broker_down_since(),
                           stopping=self._stopping())

    def check(self) -> tuple[bool, bool, dict[str, Any]]:
        return assess(self.facts(), self.max_loop_age, self.max_unassigned)


# --- the web config (exporter-toolkit's format) ------------------------------------------------------------

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH_TYPES = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                     "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_BCRYPT_HASH = re.compile(r"^\$2[aby]?\$(\d\d)\$[./A-Za-z0-9]{53}$")
_WEB_KEY = "service.web_config_file"


@dataclass(frozen=True)
class WebConfig:
    """TLS and basic auth of the HTTP endpoint, read from a YAML file in the format of Prometheus'
    exporter-toolkit (``tls_server_config``, ``basic_auth_users``). Empty: plain HTTP, no auth."""

    source: str = ""
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    users: Mapping[str, str] = field(default_factory=dict)  # username -> bcrypt hash

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (None without ``tls_server_config``); ConfigError naming the field."""
        if self.cert_file is None:
            return None
        where = f"{self.source}: tls_server_config"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.min_version]
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(_WEB_KEY, f"{where}.cert_file/key_file: cannot load {self.cert_file} with "
                              f"{self.key_file}: {getattr(exc, 'strerror', None) or exc}") from None
        context.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(_WEB_KEY, f"{where}.client_ca_file: cannot load {self.client_ca_file}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
        return context


def load_web_config(path: str | os.PathLike) -> WebConfig:
    """Read and check a web config file; paths in it are relative to the file's directory.
    Every problem is a :class:`ConfigError` naming ``service.web_config_file``, the file and the field."""
    import yaml  # noqa: PLC0415 - only when a web config is set

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(_WEB_KEY, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_WEB_KEY, f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(_WEB_KEY, f"{path}: must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - {"tls_server_config", "basic_auth_users"})
    if unknown:
        raise ConfigError(_WEB_KEY, f"{path}: {unknown[0]}: unknown key (supported: basic_auth_users, "
                          "tls_server_config)")
    fields: dict[str, Any] = {"source": str(path)}
    tls = raw.get("tls_server_config")
    if tls is not None:
        if not isinstance(tls, dict):
            raise ConfigError(_WEB_KEY, f"{path}: tls_server_config: must be a mapping")
        allowed = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version"}
        for key in tls:
            if key not in allowed:
                raise ConfigError(_WEB_KEY, f"{path}: tls_server_config.{key}: unknown key (supported: "
                                  f"{', '.join(sorted(allowed))})")
        for key in ("cert_file", "key_file"):
            if tls.get(key) is None:
                raise ConfigError(_WEB_KEY, f"{path}: tls_server_config.{key}: required")
        for key in ("cert_file", "key_file", "client_ca_file"):
            value = tls.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise ConfigError(_WEB_KEY, f"{path}: tls_server_config.{key}: must be a file name")
            file = path.parent / value
            if not file.is_file():
                raise ConfigError(_WEB_KEY, f"{path}: tls_server_config.{key}: {file}: file not found")
            fields[key] = str(file)
        for key, choices in (("client_auth_type", CLIENT_AUTH_TYPES), ("min_version", TLS_VERSIONS)):
            if key in tls:
                if tls[key] not in choices:
                    raise ConfigError(_WEB_KEY, f"{path}: tls_server_config.{key}: must be one of "
                                      f"{', '.join(choices)}, got {tls[key]!r}")
                fields[key] = tls[key]
        if fields.get("client_auth_type", "NoClientCert") != "NoClientCert" and "client_ca_file" not in fields:
            raise ConfigError(_WEB_KEY, f"{path}: tls_server_config.client_ca_file: required by client_auth_type "
                              f"{fields['client_auth_type']}")
    users = raw.get("basic_auth_users")
    if users is not None:
        if not isinstance(users, dict):
            raise ConfigError(_WEB_KEY, f"{path}: basic_auth_users: must be a mapping of user name to bcrypt hash")
        for user, hashed in users.items():
            if not isinstance(user, str) or not user or ":" in user:
                raise ConfigError(_WEB_KEY, f"{path}: basic_auth_users: user names must be non-empty strings "
                                  "without ':'")
            if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
                raise ConfigError(_WEB_KEY, f"{path}: basic_auth_users.{user}: not a bcrypt hash (make one with "
                                  "`htpasswd -nBC 10 USER` or python -c 'import bcrypt; "
                                  "print(bcrypt.hashpw(b\"PASSWORD\", bcrypt.gensalt()).decode())')")
        fields["users"] = dict(users)
    config = WebConfig(**fields)
    config.ssl_context()  # the certificate and key load, or a ConfigError now rather than at the first request
    return config


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes. bcrypt is slow on purpose (~0.1 s at cost
    10), so a successful check is remembered (a SHA-256 of user, password and hash; at most
    ``CACHE_SIZE``) and later requests cost a hash lookup. Unknown users are checked against a dummy
    hash of the same cost, so the answer takes as long as for a known one. One bcrypt at a time: a
    flood of wrong passwords costs at most one core."""

    CACHE_SIZE = 1024

    def __init__(self, users: Mapping[str, str]):
        import bcrypt  # noqa: PLC0415 - only when basic auth is configured

        self._bcrypt = bcrypt
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        cost = max((int(_BCRYPT_HASH.match(h).group(1)) for h in users.values()), default=10)
        self._dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(min(max(cost, 4), 31)))
        self._good: dict[bytes, None] = {}
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not header or not header[:6].lower() == "basic ":
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        digest = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed or b""))).digest()
        if hashed is not None and digest in self._good:
            return True
        with self._lock:
            ok = self._bcrypt.checkpw(password.encode(), hashed or self._dummy) and hashed is not None
            if ok:
                if len(self._good) >= self.CACHE_SIZE:
                    self._good.pop(next(iter(self._good)))
                self._good[digest] = None
        return ok


# --- the page cache ------------------------------------------------------------------------------------------


class PageCache:
    """The status page and ``/api/status`` rendered once per board update and served from memory.

    The cache is keyed on the board's ``version`` (bumped by every checkpoint's update, every
    alert, a new group view and a change of the shown event rate); the live lag and the health facts
    as the banner words them (:meth:`StatusBoard.live_key`) are looked at again at most once per
    ``lag_refresh_seconds`` and a change also renders anew. A page flood costs a lock and a dict
    lookup per request, not a render."""

    def __init__(self, board: StatusBoard, renders=None, lag_refresh_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._board, self._renders, self._refresh, self._clock = board, renders, lag_refresh_seconds, clock
        self._lock = threading.Lock()
        self._version: int | None = None
        self._lags: tuple = ()
        self._checked = 0.0
        self._out: dict[str, bytes] = {}
        self._snapshot: dict[str, Any] | None = None

    def get(self, fmt: str) -> bytes:
        """``fmt``: "html" (the page) or "json" (``/api/status``)."""
        with self._lock:
            now = self._clock()
            version = self._board.version
            if version != self._version or now - self._checked >= self._refresh:
                lags = self._board.live_key()
                if version != self._version or lags != self._lags:
                    self._version, self._lags, self._out, self._snapshot = version, lags, {}, None
                self._checked = now
            body = self._out.get(fmt)
            if body is None:
                if self._snapshot is None:
                    self._snapshot = self._board.snapshot()
                body = (render_page(self._snapshot).encode() if fmt == "html" else orjson.dumps(self._snapshot))
                self._out[fmt] = body
                if self._renders is not None:
                    self._renders.labels(fmt).inc()
            return body


# --- the server ----------------------------------------------------------------------------------------------

MAX_REQUEST_HEAD = 16 * 1024  # request line and headers; a longer head is refused
HTTP_CPU_SHARE = 0.25  # answering requests (all workers together) uses at most this share of a core


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class _Pending:
    __slots__ = ("sock", "accepted", "buffer", "handshaken")

    def __init__(self, sock: socket.socket, accepted: float, handshaken: bool):
        self.sock, self.accepted, self.buffer, self.handshaken = sock, accepted, b"", handshaken


class HttpServer:
    """A small HTTP/1.1 server whose cost is bounded whatever the clients do.

    One thread (``http``) accepts connections and reads request heads without blocking (and does the
    TLS handshakes), all connections in one selector: an idle connection costs a file descriptor and
    a dict entry, no thread and no CPU. A connection whose complete request head has not arrived
    ``read_timeout`` seconds after it was accepted is closed; at ``max_connections`` open ones the
    oldest waiting connection is closed to make room (so a flood of idle connections cannot keep a
    probe out). ``/healthz`` and ``/readyz`` are answered by that thread at once (they do no I/O);
    any other complete request goes to one of ``workers`` threads (started up front, a bounded queue
    in front of them; when it is full the connection is closed), which answers it with
    ``Connection: close`` (the write also bounded by ``read_timeout``). Those answers are computed
    one at a time and paced to ``HTTP_CPU_SHARE`` of a core, so the loop keeps the interpreter."""

    def __init__(self, host: str, port: int, handler: Callable[[str, str, Mapping[str, str]], Response],
                 ssl_context: ssl.SSLContext | None = None, workers: int = 4, read_timeout: float = 5.0,
                 max_connections: int = 512, backlog: int = 128, metrics=None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=backlog)
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()
        self._handler, self._ssl, self._timeout = handler, ssl_context, read_timeout
        self._max_connections, self._metrics = max_connections, metrics
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._pending: dict[socket.socket, _Pending] = {}  # insertion order = oldest first
        self._queue: queue.Queue = queue.Queue(maxsize=4 * workers)
        self._stopped = threading.Event()
        self._compute = threading.Lock()
        self._warned = -1e9
        self._threads = [threading.Thread(target=self._work, name=f"http-worker-{i}", daemon=True)
                         for i in range(workers)]
        self._threads.append(threading.Thread(target=self._loop, name="http", daemon=True))
        for thread in self._threads:
            thread.start()

    @property
    def open_connections(self) -> int:
        return len(self._pending)

    def shutdown(self) -> None:
        self._stopped.set()
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(5)
        for pending in list(self._pending.values()):
            self._close(pending, None)
        self._selector.close()
        self._listener.close()

    # the selector thread

    def _loop(self) -> None:
        tick = min(0.5, self._timeout / 4)
        while not self._stopped.is_set():
            try:
                events = self._selector.select(tick)
            except OSError:  # the selector closed under us at shutdown
                return
            for key, _ in events:
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
            self._sweep()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: make room rather than spin
                now = time.monotonic()
                if now - self._warned > 60:
                    self._warned = now
                    log.warning("HTTP endpoint cannot accept a connection: %s (closing the oldest waiting one)",
                                exc.strerror or exc)
                if not self._evict_oldest():
                    time.sleep(0.1)
                    return
                continue
            if len(self._pending) >= self._max_connections:
                self._evict_oldest()
            sock.setblocking(False)
            if self._ssl is not None:
                try:
                    sock = self._ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (OSError, ssl.SSLError):
                    self._count_closed("bad_request")
                    sock.close()
                    continue
            pending = _Pending(sock, time.monotonic(), handshaken=self._ssl is None)
            self._pending[sock] = pending
            self._selector.register(sock, selectors.EVENT_READ, pending)

    def _evict_oldest(self) -> bool:
        if not self._pending:
            return False
        self._close(next(iter(self._pending.values())), "evicted")
        return True

    def _read(self, pending: _Pending) -> None:
        sock = pending.sock
        try:
            if not pending.handshaken:
                sock.do_handshake()
                pending.handshaken = True
            while True:
                data = sock.recv(65536)
                if not data:
                    self._close(pending, None)  # the client went away
                    return
                pending.buffer += data
                if b"\r\n\r\n" in pending.buffer:
                    break
                if len(pending.buffer) > MAX_REQUEST_HEAD:
                    self._close(pending, "bad_request")
                    return
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return  # more to come (the sweep closes it if it never does)
        except (OSError, ssl.SSLError):
            self._close(pending, "bad_request")  # a failed handshake, plain HTTP on the TLS port, a reset
            return
        self._selector.unregister(sock)
        del self._pending[sock]
        if _is_probe(pending.buffer):  # answered here: a probe never waits behind other requests
            try:
                sent = sock.send(self._respond(pending.buffer))
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0  # a full socket buffer (rare for a few hundred bytes): a worker answers it
            except (OSError, ssl.SSLError):
                sent = -1
            if sent:  # answered, partly answered (the client reads nothing more) or failed
                _close_quietly(sock)
                return
        try:
            self._queue.put_nowait((sock, pending.buffer))
        except queue.Full:
            self._close(pending, "overloaded", registered=False)

    def _sweep(self) -> None:
        expired = time.monotonic() - self._timeout
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.accepted > expired:
                return
            self._close(oldest, "idle")

    def _close(self, pending: _Pending, reason: str | None, registered: bool = True) -> None:
        if registered:
            self._pending.pop(pending.sock, None)
            try:
                self._selector.unregister(pending.sock)
            except (KeyError, ValueError, OSError):
                pass
        if reason is not None:  # counted first: whoever sees the close sees the count
            self._count_closed(reason)
        _close_quietly(pending.sock)

    def _count_closed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.closed.labels(reason).inc()

    # the workers

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopped.is_set():
                if item is not None:
                    _close_quietly(item[0])
                return
            sock, head = item
            try:
                sock.settimeout(self._timeout)
                sock.sendall(self._respond(head))
            except (OSError, ssl.SSLError):
                pass
            except Exception:  # noqa: BLE001 - one bad request must not take a worker away
                log.exception("HTTP request failed")
            finally:
                _close_quietly(sock)

    def _respond(self, head: bytes) -> bytes:
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[1].startswith("/"):
            response = Response(400, "text/plain", b"bad request\n")
            method = "GET"
        else:
            method, target = parts[0], parts[1]
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if method not in ("GET", "HEAD"):
                response = Response(405, "text/plain", b"method not allowed\n", (("Allow", "GET, HEAD"),))
            elif target.split("?", 1)[0] in ("/healthz", "/readyz"):  # cheap, and a probe must not wait
                response = self._handler(method, target.split("?", 1)[0], headers)
            else:
                # One request computed at a time, and that one paced so that answering takes at most
                # HTTP_CPU_SHARE of the time: however many clients, the loop keeps most of the GIL.
                with self._compute:
                    spent = time.thread_time()
                    response = self._handler(method, target.split("?", 1)[0], headers)
                    spent = time.thread_time() - spent
                    time.sleep(min(spent * (1 / HTTP_CPU_SHARE - 1), 1.0))
        if self._metrics is not None:
            self._metrics.requests.labels(str(response.status)).inc()
        out = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}",
               f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}",
               "Cache-Control: no-store", "Connection: close"]
        out += [f"{name}: {value}" for name, value in response.headers]
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else response.body)


def _is_probe(head: bytes) -> bool:
    target = head.split(b" ", 2)[1] if head.count(b" ", 0, 64) >= 2 else b""
    return target.split(b"?", 1)[0] in (b"/healthz", b"/readyz")


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def serve(port: int, board: StatusBoard, registry, host: str = "127.0.0.1", health: Health | None = None,
          web: WebConfig | None = None, workers: int = 4, read_timeout: float = 5.0,
          max_connections: int = 512) -> HttpServer | None:
    """Start the HTTP endpoint in daemon threads (``port`` 0 = off). ``web``: TLS and basic auth.

    ``/healthz`` and ``/readyz`` answer without credentials (probes, e.g. Kubernetes', cannot send
    them; they show only whether the loop runs and why not, no model, feature or statistic);
    ``/metrics``, ``/`` and ``/api/status`` need them when ``basic_auth_users`` is set."""
    if not port:
        return None
    web = web or WebConfig()
    metrics = HttpMetrics(registry)
    cache = PageCache(board, metrics.renders)
    auth = BasicAuth(web.users) if web.users else None
    challenge = (("WWW-Authenticate", 'Basic realm="stream_monitor", charset="UTF-8"'),)

    def handle(method: str, path: str, headers: Mapping[str, str]) -> Response:
        if path in ("/healthz", "/readyz"):
            if health is None:
                return Response(200, "text/plain", b"ok\n")
            live, ready, report = health.check()
            good = live if path == "/healthz" else ready
            return Response(200 if good else 503, "application/json", orjson.dumps(report) + b"\n")
        if auth is not None and not auth.check(headers.get("authorization")):
            return Response(401, "text/plain", b"unauthorized\n", challenge)
        if path == "/metrics":
            return Response(200, CONTENT_TYPE_LATEST, generate_latest(registry))
        if path == "/api/status":
            return Response(200, "application/json", cache.get("json"))
        if path in ("/", "/index.html"):
            return Response(200, "text/html; charset=utf-8", cache.get("html"))
        return Response(404, "text/plain", b"not found\n")

    try:
        server = HttpServer(host, port, handle, ssl_context=web.ssl_context(), workers=workers,
                            read_timeout=read_timeout, max_connections=max_connections, metrics=metrics)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError("service.metrics_port", f"port {port} on {host} is already in use") from None
        raise ConfigError("service.metrics_host", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    scheme = "https" if web.cert_file else "http"
    log.info("metrics and status page on %s://%s:%d/%s", scheme, host, port,
             " (basic auth)" if auth is not None else "")
    return server


# --- the page ---------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline}
header h1{font-size:18px;margin:0}header span{color:#aab}
main{padding:16px 24px;display:grid;gap:16px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 2px #0002;padding:12px 16px}
h2{font-size:16px;margin:0 0 8px}h3{font-size:14px;margin:12px 0 4px;color:#556}
table{border-collapse:collapse;width:100%}td,th{padding:3px 8px;text-align:left;border-bottom:1px solid #eef}
th{font-weight:600;color:#556;font-size:12px;text-transform:uppercase}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.warning{color:#9a6700;font-weight:600}.critical{color:#cf222e;font-weight:700}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px}
.badge.ok{background:#dafbe1}.badge.warning{background:#fff8c5}.badge.critical{background:#ffebe9}
.muted{color:#889}.firing{background:#fff5f5}
.banner{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:baseline}.banner div{min-width:150px}
.banner b{display:block;font-size:12px;color:#556;text-transform:uppercase;font-weight:600}
.stale{color:#889;font-style:italic}
"""


def _decided_on(row: Mapping[str, Any]) -> str:
    """Where an incident or a request was decided: its partition, or the model's merge over all of them."""
    return "all partitions" if row.get("partition") is None else _fmt(row.get("partition"))


def _requests_table(snapshot: Mapping[str, Any]) -> str:
    """The models' last retraining requests ([retraining] topic): id, when (event time), reason, evidence."""
    rows = [row for _, entry in sorted(snapshot.get("models", {}).items()) for row in entry.get("retraining", ())]
    if not rows:
        return ""
    parts = ["<section><h2>Retraining requests</h2><table><tr><th>model</th><th>request</th><th>event time</th>"
             "<th>reason</th><th class=num>evidence</th><th>incident</th><th>partition</th></tr>"]
    for row in rows:
        parts.append(f"<tr><td>{_fmt(row.get('model_id'))}</td>"
                     f"<td title='{_fmt(row.get('request_id'))}'>{_fmt((row.get('request_id') or '')[:12])}</td>"
                     f"<td>{_fmt(format_time(row.get('event_time_ms')))}</td><td>{_fmt(row.get('reason'))}</td>"
                     f"<td class=num>{_fmt(row.get('evidence'))} alerts</td>"
                     f"<td title='{_fmt(row.get('incident'))}'>{_fmt((row.get('incident') or '')[:12])}</td>"
                     f"<td>{_decided_on(row)}</td></tr>")
    parts.append("</table></section>")
    return "".join(parts)


def _model_estimates(merges: dict) -> str:
    """The model-level estimated performance and joint test of each merged model: one line each."""
    lines = []
    for model_id, merge in sorted(merges.items()):
        estimate = merge.get("estimated_performance") or {}
        metrics, floors = estimate.get("metrics"), estimate.get("floors") or {}
        if metrics:
            shown = ", ".join(f"{m} {_fmt(round(v, 3))}" + (f" (reference {_fmt(round(floors[m]['mean'], 3))})"
                                                         if m in floors else "") for m, v in metrics.items())
            lines.append(f"<p>{_fmt(model_id)}: estimated {shown}, from the scores of its last model window</p>")
        elif estimate:
            lines.append(f"<p class=muted>{_fmt(model_id)}: estimated performance calibrating "
                         f"({_fmt(estimate.get('pairs'))} joined pairs so far)</p>")
        last = (merge.get("multivariate") or {}).get("last")
        if last:
            lines.append(f"<p>{_fmt(model_id)}: joint test T² {_fmt(round(last['statistic'], 1))} "
                         f"(threshold {_fmt(round(last['threshold'], 1))}) over {_fmt(last['events'])} events</p>")
    return "".join(lines)


def segments_table(segments: list[Mapping[str, Any]]) -> str:
    """A model's segments: each one's events and what of its window detectors is firing."""
    rows = ["<h3>segments</h3><table><tr><th>segment</th><th class=num>events</th>"
            "<th class=num>reference events</th><th>firing</th></tr>"]
    for row in segments:
        firing = "; ".join(f"{f['signal']} {f['name']} {f['detector']} {f['statistic']:.3g} (partition {f['partition']})"
                           for f in row["firing"] if f.get("statistic") is not None)
        state = f"<span class='badge critical'>FIRING</span> {_fmt(firing)}" if row["firing"] else \
            "<span class='badge ok'>ok</span>"
        rows.append(f"<tr{' class=firing' if row['firing'] else ''}><td>{_fmt(segment_words(row['segment']))}</td>"
                    f"<td class=num>{row['events']:,}</td><td class=num>{row['reference_events']:,}</td>"
                    f"<td>{state}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(clean(str(value)))  # credentials redacted, control characters shown as escapes


BASELINE_SPAN = 0.1  # a mean reference rank within 0.4–0.6 is a shift of under 0.36 sd: drawn close to 0.5


def sparkline(history: list, warning: float | None, critical: float | None, width: int = 220, height: int = 36,
              baseline: float | None = None, bounds: tuple[float, float] | None = None) -> str:
    """An inline SVG line of the recent statistic with its warning (amber) and critical (red) lines.

    ``baseline`` (a point detector without a threshold line, e.g. ADWIN's mean reference rank): the
    scale spans the values and the baseline only (not from 0), the baseline is a grey line and
    ``bounds`` (where a change would be graded critical) are red lines when within view; the scale spans
    at least :data:`BASELINE_SPAN` either side of the baseline. Points
    taken while the detector was firing (a third element: the severity) are marked with dots."""
    values = [point[1] for point in history]
    if not values:
        return f'<svg width="{width}" height="{height}"></svg>'
    if baseline is not None:  # at least ±BASELINE_SPAN around it: noise near the baseline stays near its line
        top = max(values + [baseline + BASELINE_SPAN])
        bottom = min(values + [baseline - BASELINE_SPAN])
    else:
        top = max(values + [v for v in (warning, critical) if v is not None and v < 10 * max(max(values), 1e-12)])
        bottom = min(values + [0.0])
    span = (top - bottom) or 1.0

    def y(v: float) -> float:
        return round(height - 2 - (v - bottom) / span * (height - 4), 1)

    step = (width - 4) / max(len(values) - 1, 1)
    points = " ".join(f"{round(2 + i * step, 1)},{y(v)}" for i, v in enumerate(values))
    levels = [(warning, "#d4a72c", "4 3"), (critical, "#cf222e", "4 3")]
    if baseline is not None:
        levels = [(baseline, "#8c959f", "")] + [(bound, "#cf222e", "4 3") for bound in (bounds or ())]
    lines = ""
    for level, colour, dashes in levels:
        if level is not None and bottom <= level <= top:
            lines += (f'<line x1="0" x2="{width}" y1="{y(level)}" y2="{y(level)}" stroke="{colour}" '
                      + (f'stroke-dasharray="{dashes}" ' if dashes else "") + 'stroke-width="1"/>')
    marks = "".join(f'<circle cx="{round(2 + i * step, 1)}" cy="{y(point[1])}" r="2" '
                    f'fill="{"#cf222e" if point[2] == "critical" else "#d4a72c"}"/>'
                    for i, point in enumerate(history) if len(point) > 2 and point[2])
    return (f'<svg width="{width}" height="{height}" role="img"><rect width="{width}" height="{height}" '
            f'fill="#fafbfc"/>{lines}<polyline fill="none" stroke="#0969da" stroke-width="1.5" '
            f'points="{points}"/>{marks}</svg>')


ADWIN_CRITICAL_RANKS = (NormalDist().cdf(-CRITICAL_SHIFT / math.sqrt(2)), NormalDist().cdf(CRITICAL_SHIFT / math.sqrt(2)))
"""The mean reference ranks whose implied shift is :data:`~stream_monitor.severity.CRITICAL_SHIFT` sd: a
change ADWIN detects to a level beyond them is graded critical (:func:`stream_monitor.severity.rank_shift`)."""


def _row_chart(row: Mapping[str, Any]) -> str:
    """A detector row's sparkline: against its warning and critical lines, or, for a point detector that
    has none (ADWIN), against its baseline with the critical bounds."""
    if row.get("threshold") is None and row.get("baseline") is not None:
        return sparkline(row.get("history", []), None, None, baseline=row["baseline"], bounds=ADWIN_CRITICAL_RANKS)
    return sparkline(row.get("history", []), row.get("threshold"), row.get("critical"))


def _row_levels(row: Mapping[str, Any]) -> tuple[str, str]:
    """The warning and critical cells of a detector row. ADWIN has no threshold on its statistic: any
    change its cut test detects fires (a warning), graded critical by the size of the change."""
    if row.get("threshold") is None and row.get("detector") == "adwin":
        if row.get("baseline") is not None:
            return ("<span title='any change ADWIN detects in the mean reference rank (0.5: as the reference)'>"
                    "any change</span>",
                    f"<span title='a change to a mean rank outside {ADWIN_CRITICAL_RANKS[0]:.3f}–"
                    f"{ADWIN_CRITICAL_RANKS[1]:.3f}'>shift ≥ {CRITICAL_SHIFT:g} sd</span>")
        return ("<span title='any rise of the error rate ADWIN detects'>any rise</span>",
                f"<span title=\"Cohen's h of the rise\">h ≥ {CRITICAL_RATE_EFFECT:g}</span>")
    return _fmt(row.get("threshold")), _fmt(row.get("critical"))


def human_duration(seconds: float) -> str:
    """A duration as a person says it.

    >>> [human_duration(s) for s in (4, 59.6, 61, 3600 * 2 + 300, 86400 * 3 + 3600 * 5)]
    ['4 s', '60 s', '1 min', '2 h 5 min', '3 d 5 h']
    """
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _clock(epoch: float | None) -> str:
    """A time of day in UTC, with the date when not today."""
    if epoch is None:
        return "–"
    stamp, today = time.gmtime(epoch), time.gmtime()
    same_day = stamp[:3] == today[:3]
    return time.strftime("%H:%M:%S UTC" if same_day else "%Y-%m-%d %H:%M:%S UTC", stamp)


def _firing_for(row: Mapping[str, Any], now: float) -> str:
    """How long a firing row has been firing: since its firing alert's detection, or (not raised here)
    at least since this instance first saw it firing."""
    since = row.get("firing_since")
    if since is None:
        return "–"
    if row.get("firing_since_exact"):
        return f"{human_duration(now - since)} <span class=muted>(since {_clock(since)})</span>"
    return (f"≥ {human_duration(now - since)} <span class=muted title='raised before this instance saw it'>"
            f"(seen here since {_clock(since)})</span>")


def _health_banner(snapshot: Mapping[str, Any]) -> str:
    """The top of the page: the lag of the partitions owned here, events/s, whether Redis and the broker
    answer, the group's view; each from what the instance already knows, a stale one marked stale."""
    health = snapshot.get("health")
    if health is None:
        return ""
    stuck = health.get("status") == "stuck"
    here = [p for p in snapshot.get("partitions", []) if p.get("owner", "here") == "here"]
    owned = snapshot.get("owned")
    count = len(owned) if owned is not None else len(here)
    lags = [p["lag"] for p in here if p.get("lag") is not None]
    unknown = count - len(lags)
    lag = (f"{sum(lags):,} messages" if lags else "–") + (f" <span class=muted>({unknown} not known yet)</span>"
                                                         if unknown and lags else "")
    lag_class = "ok" if lags and sum(lags) == 0 else ""
    rate = health.get("events_per_second")
    if health.get("rate_stale") or stuck:
        rate_cell = f"<span class=stale>stale: last measured {_clock(health.get('rate_measured_at'))}</span>"
    else:
        rate_cell = "–" if rate is None else f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
    if health.get("redis") == "failing":
        redis_cell = "<span class=critical>failing</span>"
    elif health.get("group_problem") and health.get("group_redis_failed", True):
        redis_cell = (f"<span class=critical>unreachable</span> <span class=muted>(read failed at "
                      f"{_clock(health.get('group_failed_at'))}: {_fmt(health['group_problem'])})</span>")
    elif health.get("group_stale") and health.get("group_read_at") is not None:
        redis_cell = f"<span class=stale>stale: last read {_clock(health.get('group_read_at'))}</span>"
    elif health.get("redis") == "ok" or health.get("group_read_at") is not None:
        read = health.get("group_read_at")
        redis_cell = "<span class=ok>reachable</span>" + (f" <span class=muted>(read {_clock(read)})</span>"
                                                          if read is not None else "")
    else:
        redis_cell = "–"
    if health.get("broker") == "unreachable":
        broker_cell = (f"<span class=critical>unreachable</span> <span class=muted>(since "
                       f"{_clock(health.get('broker_unreachable_since'))})</span>")
    else:
        broker_cell = "<span class=ok>reachable</span>" if health.get("broker") == "ok" else "–"
    total = count + sum(1 for p in snapshot.get("partitions", []) if p.get("owner") == "group")
    group = f"{total} partition{'' if total == 1 else 's'}, {count} here"
    if health.get("group_refresh_seconds") is None:
        group += " <span class=muted>(the rest not read)</span>"
    elif health.get("group_problem") and not health.get("group_redis_failed", True):
        group += (f" <span class=stale>stale: the read failed at {_clock(health.get('group_failed_at'))}: "
                  f"{_fmt(health['group_problem'])}</span>")
    cells = [("consumer lag (here)", f"<span class={lag_class or 'num'}>{lag}</span>"), ("events/s", rate_cell),
             ("Redis", redis_cell), ("broker", broker_cell), ("group", group)]
    out = "".join(f"<div><b>{title}</b>{cell}</div>" for title, cell in cells)
    problems = health.get("problems") or []
    if stuck:
        problems = ["the figures below are stale"] + problems
    note = (f"<p class=warning>{_fmt('; '.join(problems))}</p>" if problems else "")
    return f"<section class=banner id=health>{out}</section>" + (f"<section>{note}</section>" if note else "")


def firing_pictures(snapshot: Mapping[str, Any]) -> str:
    """The bars of :func:`stream_monitor.report.distribution_svg` for each firing column (the board's
    ``pictures``), as ``stream-monitor report`` draws them."""
    pictures = snapshot.get("pictures") or []
    if not pictures:
        return ""
    cells = []
    for p in pictures[:MAX_PICTURES]:
        title = f"{p['model']}.{p['name']} ({', '.join(p['detectors'])}; partition {p['partition']})"
        cells.append(f"<div class='picture-{_fmt(p['severity'])}'>"
                     + distribution_svg(p["bins"], p["reference"], p["current"], title, width=440, height=200)
                     + "</div>")
    more = len(pictures) - MAX_PICTURES
    return ("<div class=pictures style='display:flex;flex-wrap:wrap;gap:10px;margin-top:10px'>" + "".join(cells)
            + "</div>"
            + (f"<p class=muted>{more} more firing columns: see their rows below</p>" if more > 0 else ""))


MAX_PICTURES = 12  # firing columns drawn on the page at most (critical first)


def _dead_letter_note(snapshot: Mapping[str, Any]) -> str:
    letters = snapshot.get("dead_letters") or {}
    if not letters:
        return ""
    total = sum(entry["count"] for entry in letters.values())
    top = ", ".join(f"{_fmt(reason)} {entry['count']:,}" for reason, entry in list(letters.items())[:3])
    return f" · {total:,} dead letters ({top}; see below)"


def _partition_count(snapshot: Mapping[str, Any]) -> str:
    """How many partitions this instance owns now (those not checkpointed yet included).

    >>> _partition_count({"partitions": [{"partition": 0}], "owned": [["t", 0], ["t", 1]]})
    '2 partitions'
    >>> _partition_count({"partitions": [{"partition": 0}]})
    '1 partition'
    """
    owned = snapshot.get("owned")
    count = len(owned) if owned is not None else len(snapshot.get("partitions", []))
    return f"{count} partition" + ("" if count == 1 else "s")


def _partitions_table(snapshot: Mapping[str, Any]) -> str:
    """Every partition of the group: those owned here (live lag) and the others as last saved in Redis."""
    rows = ["<section><h2>Partitions <span class=muted>· the group's, as saved in Redis; lag of those owned "
            "here</span></h2><table><tr><th>partition</th><th>owner</th><th class=num>next offset</th>"
            "<th class=num>lag</th><th class=num>dead letters</th><th>saved</th></tr>"]
    for part in snapshot.get("partitions", []):
        here = part.get("owner", "here") == "here"
        saved = part.get("saved_at_ms")
        rows.append(f"<tr><td>{_fmt(part['topic'])}[{part['partition']}]</td>"
                    f"<td>{'this instance' if here else '<span class=muted>another instance</span>'}</td>"
                    f"<td class=num>{_fmt(part.get('next_offset'))}</td><td class=num>{_fmt(part.get('lag'))}</td>"
                    f"<td class=num>{_fmt(part.get('dead_letters'))}</td>"
                    f"<td>{_clock(saved / 1000) if saved else '–'}</td></tr>")
        if part.get("problem"):
            rows.append(f"<tr><td></td><td colspan=5 class=critical>its stored state does not decode: "
                        f"{_fmt(part['problem'])}</td></tr>")
    rows.append("</table></section>")
    return "".join(rows)


def render_page(snapshot: Mapping[str, Any]) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=5>"
             f"<title>stream_monitor</title><style>{_CSS}</style></head><body>"]
    uptime = time.time() - snapshot.get("started_at", time.time())
    parts.append(f"<header><h1>stream_monitor</h1><span>{_fmt(snapshot.get('instance') or '')}</span>"
                 f"<span>{_partition_count(snapshot)} · up {uptime / 60:.0f} min"
                 f"{_dead_letter_note(snapshot)} · as of {_clock(snapshot.get('now'))}</span></header><main>")
    parts.append(_health_banner(snapshot))

    firing = [(m, row) for m, entry in snapshot.get("models", {}).items() for row in entry["detectors"] if row.get("firing")]
    parts.append("<section><h2>Firing now</h2>")
    if firing:
        parts.append("<table><tr><th>model</th><th>signal</th><th>name</th><th>detector</th><th>severity</th>"
                     "<th class=num>statistic</th><th class=num>warning</th><th class=num>critical</th>"
                     "<th>firing for</th></tr>")
        now = snapshot.get("now") or time.time()
        for model_id, row in firing:
            severity = row.get("severity") or "warning"
            parts.append(f"<tr class=firing><td>{_fmt(model_id)}</td><td>{_fmt(row['signal'])}</td>"
                         f"<td>{_fmt(row['name'])}</td><td>{_fmt(row['detector'])}</td>"
                         f"<td><span class='badge {severity}'>{severity}</span></td>"
                         f"<td class=num>{_fmt(row.get('statistic'))}</td>"
                         + "".join(f"<td class=num>{cell}</td>" for cell in _row_levels(row))
                         + f"<td>{_firing_for(row, now)}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p class=ok>Nothing is firing.</p>")
    parts.append(firing_pictures(snapshot))  # each firing column: its reference against its recent window
    parts.append("</section>")

    incidents = [row for _, entry in sorted(snapshot.get("models", {}).items()) for row in entry.get("incidents", ())]
    if incidents:  # what a model's detectors found about one change, grouped (stream_monitor/incidents.py)
        parts.append("<section><h2>Incidents</h2><table><tr><th>model</th><th>incident</th><th>state</th>"
                     "<th>partition</th><th class=num>opened at offset</th><th class=num>closed at offset</th>"
                     "<th class=num>firing alerts</th><th>drivers</th></tr>")
        for row in incidents:
            is_open = row.get("state") == "open"
            opened, closed = row.get("opened") or {}, row.get("closed") or {}
            if row.get("partition") is None:  # the model's incident, decided by its merge over every partition
                opened, closed = {}, {}
            parts.append(f"<tr{' class=firing' if is_open else ''}><td>{_fmt(row.get('model_id'))}</td>"
                         f"<td title='{_fmt(row.get('incident'))}'>{_fmt((row.get('incident') or '')[:12])}</td>"
                         f"<td><span class='badge {'critical' if is_open else 'ok'}'>{'OPEN' if is_open else 'closed'}"
                         f"</span></td><td>{_decided_on(row)}</td>"
                         f"<td class=num>{_fmt(opened.get('offset'))}</td><td class=num>{_fmt(closed.get('offset'))}</td>"
                         f"<td class=num>{_fmt(row.get('alerts'))}</td><td>{_fmt(row.get('text'))}</td></tr>")
        parts.append("</table></section>")
    parts.append(_requests_table(snapshot))

    for model_id, entry in sorted(snapshot.get("models", {}).items()):
        parts.append(f"<section><h2>{_fmt(model_id)} <span class=muted>· {entry['events']:,} events · "
                     f"{entry['labels']:,} labels</span></h2>")
        if entry.get("unmonitored"):
            parts.append(f"<p><span class='badge critical'>NOT MONITORED</span> configured features {_fmt(', '.join(entry['unmonitored']))} "
                         "have no profile in the reference (see the error log)</p>")
        performance = entry.get("performance")
        if performance and performance.get("pairs"):
            cells = " · ".join(f"<b>{_fmt(k)}</b> {_fmt(v)}" for k, v in performance.items() if k != "pairs")
            parts.append(f"<p>Performance over the last labelled predictions ({performance['pairs']:,} pairs "
                         f"joined): {cells}</p>")
        estimate = entry.get("estimated")
        if estimate and estimate.get("metrics"):
            cells = " · ".join(f"<b>{_fmt(k)}</b> {_fmt(v)}" + (" <span class='badge critical'>below its range</span>"
                                                                if v < estimate["floors"].get(k, -1) else "")
                               for k, v in estimate["metrics"].items())
            if "reference" in estimate:  # decisions = "model": the merge's, over all partitions
                parts.append(f"<p>Performance estimated from the scores over all partitions (the last of "
                             f"{estimate['windows']:,} model windows of at least {estimate['window']:,} predictions, "
                             f"no labels needed): {cells}<br><span class=muted>the reference's range: "
                             f"{_fmt(estimate_range(estimate))}</span></p>")
            else:
                parts.append(f"<p>Performance estimated from the scores (last {estimate['window']:,} predictions, "
                             f"no labels needed): {cells}</p>")
        fair = fairness_lines(entry.get("fairness") or {})
        if fair:
            parts.append("<p>Fairness over each attribute's last window (the gap between its groups' rates):<br>"
                         + "<br>".join(_fmt(line) for line in fair) + "</p>")
        lag = entry.get("label_lag")
        if lag:
            parts.append(f"<p class=muted>{lag['awaiting']:,} predictions awaiting a label · {lag['expired']:,} never "
                         f"labelled ({lag.get('evicted', 0):,} evicted for room) · {lag.get('labels_evicted', 0):,} "
                         f"early labels evicted · {lag['dropped']:,} too large to keep · join in Redis "
                         f"≈ {lag.get('bytes', 0) / 1_048_576:,.1f} MiB</p>")
        by_signal: dict[str, list] = {}
        for row in entry["detectors"]:
            by_signal.setdefault(row["signal"], []).append(row)
        quiet_checks = 0
        if "data_quality" in by_signal:  # zero-rate checks folded into one line
            rows = by_signal.pop("data_quality")
            shown = [r for r in rows if r.get("firing") or r.get("statistic")]
            quiet_checks = len(rows) - len(shown)
            if shown:
                by_signal["data_quality"] = shown
        for signal, rows in by_signal.items():
            parts.append(f"<h3>{_fmt(signal)}</h3><table><tr><th>name</th><th>detector</th><th>recent</th>"
                         "<th class=num>statistic</th><th class=num>warning</th><th class=num>critical</th><th>state</th></tr>")
            for row in rows:
                state = (row.get("severity") or "warning") if row.get("firing") else "ok"
                parts.append(f"<tr><td>{_fmt(row['name'])}</td><td>{_fmt(row['detector'])}</td>"
                             f"<td>{_row_chart(row)}</td><td class=num>{_fmt(row.get('statistic'))}</td>"
                             + "".join(f"<td class=num>{cell}</td>" for cell in _row_levels(row)) +
                             f"<td><span class='badge {state}'>{'FIRING' if state != 'ok' else 'ok'}</span></td></tr>")
            parts.append("</table>")
        if quiet_checks:
            parts.append(f"<p class=muted>{quiet_checks} data-quality checks at 0 (missing values, type mismatches, "
                         f"unseen categories …)</p>")
        if entry.get("segments"):
            parts.append(segments_table(entry["segments"]))
        parts.append("</section>")

    merges = snapshot.get("merges") or {}
    if merges:  # models whose decisions are the model's, merged by this instance
        parts.append("<section><h2>Model-level decisions <span class=muted>· merged here</span></h2><table><tr>"
                     "<th>model</th><th class=num>windows</th><th class=num>open window</th><th>firing</th></tr>")
        for model_id, merge in sorted(merges.items()):
            firing = [e for e in merge.get("episodes", []) if e.get("firing")]
            cells = ", ".join(f"<span class='badge {_fmt(e.get('severity') or 'warning')}'>"
                              f"{_fmt(e['episode'])}</span>" for e in firing) or "<span class=ok>nothing</span>"
            parts.append(f"<tr><td>{_fmt(model_id)}</td><td class=num>{_fmt(merge.get('windows'))}</td>"
                         f"<td class=num>{_fmt(merge.get('open_window_events'))} events</td><td>{cells}</td></tr>")
        parts.append("</table>" + _model_estimates(merges) + "</section>")

    parts.append("<section><h2>Recent alerts</h2><table><tr><th>detected</th><th>status</th><th>severity</th>"
                 "<th>model</th><th>message</th></tr>")
    for alert in snapshot.get("alerts", [])[:30]:
        parts.append(f"<tr><td>{_fmt(alert.get('detected_at'))}</td><td>{_fmt(alert.get('status'))}</td>"
                     f"<td class={_fmt(alert.get('severity'))}>{_fmt(alert.get('severity'))}</td>"
                     f"<td>{_fmt(alert.get('model_id'))}</td><td>{_fmt(alert.get('message'))}</td></tr>")
    parts.append("</table></section>")

    letters = snapshot.get("dead_letters") or {}
    if letters:
        total = sum(entry["count"] for entry in letters.values())
        parts.append(f"<section><h2>Dead letters <span class=muted>· {total:,} messages</span></h2><table><tr>"
                     "<th>reason</th><th class=num>count</th><th>example</th></tr>")
        for reason, entry in letters.items():
            parts.append(f"<tr><td>{_fmt(reason)}</td><td class=num>{entry['count']:,}</td>"
                         f"<td class=muted>{_fmt(entry.get('sample'))}</td></tr>")
        parts.append("</table></section>")

    parts.append(_partitions_table(snapshot))
    parts.append("</main></body></html>")
    return "".join(parts)
