"""The HTTP endpoint against hostile neighbours (loopback only): bind address, basic auth, TLS,
bounded threads and connections, and a page rendered once per update however many requests.

The page cache, the web config checks and the credential check are tested without I/O; the server
itself in this process on loopback sockets (no Kafka needed); and 1,000 idle connections against a
real `stream-monitor run` (real broker, real Redis), whose threads are read from /proc.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream_monitor.board import StatusBoard
from stream_monitor.config import load_config, parse_config
from stream_monitor.errors import ConfigError
from stream_monitor.demo.localstack import create_topics, free_port
from stream_monitor.metrics import HttpMetrics
from stream_monitor.web import BasicAuth, PageCache, load_web_config, serve

from ..support import Feeder, Run, two_model_stream, unique, wait_for_offsets

ROOT = Path(__file__).resolve().parents[2]
BASE = {"kafka": {"input_topics": ["t"]}}
# cost 4: the lowest bcrypt allows, so the tests do not wait for it (production hashes use 10 or more)
HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()


def summary(next_offset: int, statistic: float) -> dict:
    return {"next_offset": next_offset, "models": {"fraud": {"events": next_offset, "labels": 0, "detectors": [
        {"signal": "feature", "name": "amount", "detector": "psi", "statistic": statistic, "threshold": 0.1,
         "critical": 0.25, "firing": False}]}}}


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counted(board: StatusBoard) -> list[int]:
    calls = [0]
    original = board.snapshot

    def snapshot():
        calls[0] += 1
        return original()

    board.snapshot = snapshot
    return calls


# --- the page cache (no I/O) --------------------------------------------------------------------------------


def test_the_page_is_rendered_once_per_board_update_however_many_requests():
    board, clock, registry = StatusBoard("i"), Clock(), CollectorRegistry()
    metrics = HttpMetrics(registry)
    snapshots = counted(board)
    cache = PageCache(board, metrics.renders, clock=clock)

    def renders(fmt: str) -> float:
        return registry.get_sample_value("stream_monitor_status_renders_total", {"format": fmt})

    board.update({("t", 0): (summary(10, 0.01), 0)})
    pages = {cache.get("html") for _ in range(500)}
    documents = {cache.get("json") for _ in range(500)}
    assert len(pages) == 1 and len(documents) == 1
    assert (renders("html"), renders("json"), snapshots[0]) == (1, 1, 1)
    assert orjson.loads(documents.pop())["partitions"][0]["next_offset"] == 10

    board.update({("t", 0): (summary(20, 0.02), 0)})  # a checkpoint
    assert orjson.loads(cache.get("json"))["partitions"][0]["next_offset"] == 20
    for _ in range(100):
        cache.get("html")
    assert (renders("html"), renders("json"), snapshots[0]) == (2, 2, 2)

    board.alert({"alert_id": "a1", "model_id": "fraud", "message": "drift"})  # an alert
    assert b"drift" in cache.get("html")
    assert (renders("html"), snapshots[0]) == (3, 3)


def test_live_lag_is_looked_at_once_a_second_and_renders_only_when_it_moved():
    board, clock = StatusBoard("i"), Clock()
    lag = {("t", 0): 5}
    looked = [0]

    def live_lag():
        looked[0] += 1
        return dict(lag)

    board.live_lag = live_lag
    board.update({("t", 0): (summary(10, 0.01), 0)})
    snapshots = counted(board)
    cache = PageCache(board, clock=clock)
    for _ in range(50):
        cache.get("json")
    assert snapshots[0] == 1
    looked_first = looked[0]
    clock.now += 0.5
    cache.get("json")
    assert looked[0] == looked_first  # within the second: no look at all
    clock.now += 0.6
    cache.get("json")
    assert (looked[0], snapshots[0]) == (looked_first + 1, 1)  # looked, unchanged: no render
    lag[("t", 0)] = 900  # a stall: the lag grows while the board does not change
    clock.now += 1.0
    assert orjson.loads(cache.get("json"))["partitions"][0]["lag"] == 900
    assert snapshots[0] == 2


# --- the web config (no I/O beyond reading the file) --------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def problem(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert caught.value.key == "service.web_config_file"
    return str(caught.value)


def test_a_wrong_web_config_is_refused_naming_the_file_and_the_field(tmp_path):
    assert "cannot read" in problem(tmp_path / "missing.yml")
    assert "cannot read" in problem(tmp_path)  # a directory
    assert "not valid YAML" in problem(write(tmp_path / "a.yml", "tls_server_config: [\n"))
    bad_utf8 = tmp_path / "b.yml"
    bad_utf8.write_bytes(b"basic_auth_users:\n  u: \xff\n")
    assert "cannot read" in problem(bad_utf8)
    assert "http_server_config: unknown key" in problem(write(tmp_path / "c.yml", "http_server_config: {}\n"))
    assert "tls_server_config.key_file: required" in problem(
        write(tmp_path / "d.yml", "tls_server_config: {cert_file: x.crt}\n"))
    message = problem(write(tmp_path / "e.yml", "tls_server_config: {cert_file: x.crt, key_file: x.key}\n"))
    assert "tls_server_config.cert_file" in message and "file not found" in message
    write(tmp_path / "x.crt", "not a certificate")
    write(tmp_path / "x.key", "not a key")
    assert "tls_server_config.cert_file/key_file: cannot load" in problem(tmp_path / "e.yml")
    assert "tls_server_config.min_version: must be one of" in problem(write(
        tmp_path / "f.yml", "tls_server_config: {cert_file: x.crt, key_file: x.key, min_version: SSL3}\n"))
    assert "basic_auth_users.alice: not a bcrypt hash" in problem(
        write(tmp_path / "g.yml", "basic_auth_users: {alice: plaintext}\n"))
    assert "must be a mapping" in problem(write(tmp_path / "h.yml", "- a\n"))
    # the password hash never appears in a message
    assert "s3cret" not in problem(write(tmp_path / "i.yml", f"basic_auth_users: {{alice: '{HASH}'}}\nx: 1\n"))
    ok = load_web_config(write(tmp_path / "ok.yml", f"basic_auth_users: {{alice: '{HASH}'}}\n"))
    assert ok.users == {"alice": HASH} and ok.ssl_context() is None
    assert load_web_config(write(tmp_path / "empty.yml", "")).users == {}


def test_the_service_keys_are_checked_at_load(tmp_path):
    def refused(**service) -> str:
        with pytest.raises(ConfigError) as caught:
            parse_config({**BASE, "service": service})
        return f"{caught.value.key}: {caught.value.problem}"

    assert refused(metrics_host="").startswith("service.metrics_host")
    assert refused(web_workers=0).startswith("service.web_workers")
    assert refused(web_workers=1000).startswith("service.web_workers")
    assert refused(web_max_connections=0).startswith("service.web_max_connections")
    assert refused(web_read_timeout_seconds=0.0).startswith("service.web_read_timeout_seconds")
    assert refused(web_read_timeout_seconds=3600.0).startswith("service.web_read_timeout_seconds")
    toml = write(tmp_path / "c.toml",
                 f'[kafka]\ninput_topics = ["t"]\n[service]\nweb_config_file = "{tmp_path}/nope.yml"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(toml, environ={})
    assert caught.value.key == "service.web_config_file" and "nope.yml" in caught.value.problem
    with pytest.raises(ConfigError):  # from the environment too
        load_config(write(tmp_path / "d.toml", '[kafka]\ninput_topics = ["t"]\n'),
                    environ={"STREAM_MONITOR_SERVICE_WEB_CONFIG_FILE": str(tmp_path / "nope.yml")})
    config = parse_config(BASE)
    service = config.service
    assert (service.metrics_host, service.web_config_file, service.web_workers) == ("127.0.0.1", "", 4)


def test_containers_listen_on_every_interface_and_the_default_does_not():
    deployed = tomllib.loads((ROOT / "deploy" / "config.toml").read_text(encoding="utf-8"))
    assert deployed["service"]["metrics_host"] == "0.0.0.0"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    for name in ("monitor-1", "monitor-2"):
        assert compose["services"][name]["environment"]["STREAM_MONITOR_SERVICE_METRICS_HOST"] == "0.0.0.0"
    assert parse_config(BASE).service.metrics_host == "127.0.0.1"


def test_credentials_are_checked_with_bcrypt_once_and_then_from_the_cache():
    auth = BasicAuth({"alice": HASH})
    calls = [0]
    checkpw = auth._bcrypt.checkpw

    class Counting:
        @staticmethod
        def checkpw(password, hashed):
            calls[0] += 1
            return checkpw(password, hashed)

    auth._bcrypt = Counting

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert auth.check(header("alice", "s3cret")) is True
    assert all(auth.check(header("alice", "s3cret")) for _ in range(100))
    assert calls[0] == 1  # bcrypt once; then the cache
    assert auth.check(header("alice", "wrong")) is False
    assert auth.check(header("mallory", "s3cret")) is False  # unknown user: checked against a dummy hash
    assert calls[0] == 3
    for bad in (None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe").decode()):
        assert auth.check(bad) is False
    assert calls[0] == 3


# --- the server in this process, on loopback -----------------------------------------------------------------


@pytest.fixture
def served():
    """serve(...) on a free loopback port with a one-partition board; shut down afterwards."""
    servers = []

    def start(**kw):
        board = StatusBoard("here")
        board.update({("t", 0): (summary(10, 0.01), 0)})
        registry = CollectorRegistry()
        server = serve(free_port(), board, registry, **kw)
        servers.append(server)
        return server, registry

    yield start
    for server in servers:
        server.shutdown()


def get(url: str, headers: dict | None = None, context: ssl.SSLContext | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_protects_everything_but_the_probes(served, tmp_path):
    web = load_web_config(write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{HASH}'\n"))
    server, registry = served(web=web)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for path in ("/metrics", "/", "/api/status"):
        status, _, headers = get(base + path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm="), path
        assert get(base + path, basic("alice", "wrong"))[0] == 401, path
        assert get(base + path, basic("bob", "s3cret"))[0] == 401, path
        assert get(base + path, basic("alice", "s3cret"))[0] == 200, path
    assert b"stream_monitor_http_requests_total" in get(base + "/metrics", basic("alice", "s3cret"))[1]
    # probes cannot send credentials: liveness and readiness answer without
    assert get(base + "/healthz")[0] == 200 and get(base + "/readyz")[0] == 200
    assert registry.get_sample_value("stream_monitor_http_requests_total", {"code": "401"}) == 9


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_serves_https_and_refuses_plain_http(served, tmp_path):
    cert, _ = self_signed(tmp_path)
    web = load_web_config(write(tmp_path / "web.yml", "tls_server_config:\n  cert_file: server.crt\n"
                                                      "  key_file: server.key\n  min_version: TLS12\n"))
    server, registry = served(web=web)
    port = server.server_address[1]
    trusted = ssl.create_default_context(cafile=str(cert))
    status, body, _ = get(f"https://127.0.0.1:{port}/api/status", context=trusted)
    assert status == 200 and orjson.loads(body)["partitions"][0]["next_offset"] == 10
    assert get(f"https://127.0.0.1:{port}/healthz", context=trusted)[0] == 200
    # an untrusted client refuses the server; a plain-HTTP client gets no answer
    with pytest.raises(urllib.error.URLError):
        get(f"https://127.0.0.1:{port}/", context=ssl.create_default_context())
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/metrics")
        connection.getresponse()
    deadline = time.monotonic() + 10
    while registry.get_sample_value("stream_monitor_http_connections_closed_total", {"reason": "bad_request"}) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # a TLS server with a client CA requires client certificates when asked to
    assert "client_ca_file: required" in problem(write(
        tmp_path / "mtls.yml", "tls_server_config: {cert_file: server.crt, key_file: server.key, "
                               "client_auth_type: RequireAndVerifyClientCert}\n"))


def test_the_server_listens_on_the_configured_address_only(served):
    server, _ = served(host="127.0.0.1")
    host, port = server.server_address
    assert host == "127.0.0.1"
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    # 127.0.0.2 is this host too (all of 127/8 is loopback on Linux), but not the bound address
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5).close()


def test_a_port_in_use_is_a_config_error_naming_the_key(served):
    server, _ = served()
    with pytest.raises(ConfigError) as caught:
        serve(server.server_address[1], StatusBoard(), CollectorRegistry())
    assert caught.value.key == "service.metrics_port" and "already in use" in caught.value.problem


def test_past_the_connection_cap_the_oldest_waiting_connection_makes_room(served):
    server, registry = served(max_connections=10, read_timeout=30.0)
    port = server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(50)]
    try:
        started = time.monotonic()
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        print(f"/healthz behind 50 idle connections (cap 10): {time.monotonic() - started:.3f} s")
        # the first 40 (at least) were closed to make room, the newest are still open
        for sock in idle[:40]:
            assert sock.recv(1) == b""
        assert server.open_connections <= 10
        assert registry.get_sample_value("stream_monitor_http_connections_closed_total", {"reason": "evicted"}) >= 40
    finally:
        for sock in idle:
            sock.close()


def test_a_slow_request_head_is_cut_off_at_the_read_timeout(served):
    server, registry = served(read_timeout=1.0)
    port = server.server_address[1]
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        started = time.monotonic()
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        assert slow.recv(1) == b""
        print(f"a half-sent request closed after {time.monotonic() - started:.2f} s (timeout 1 s)")
        assert registry.get_sample_value("stream_monitor_http_connections_closed_total", {"reason": "idle"}) == 1
    finally:
        slow.close()
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200


# --- 1,000 idle connections against a real run ----------------------------------------------------------------


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def healthz(port: int) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started
    except OSError:
        return None, time.monotonic() - started


@pytest.mark.slow
def test_a_thousand_idle_connections_cost_no_thread_and_are_closed(broker, redis_server, tmp_path, monitors):
    """1,000 idle TCP connections to a running service: /healthz still answers within 2 s, the
    process keeps its thread count, every idle connection is closed by the server after the read
    timeout, and the stream is processed to its end meanwhile."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    port = free_port()
    run = Run(broker, redis_server, tmp_path, topic, 1, "idle",
              service={"metrics_port": port, "web_read_timeout_seconds": 3.0, "web_max_connections": 2000})
    process = run.start(monitors)
    deadline = time.monotonic() + 60
    while healthz(port)[0] != 200:
        assert process.process.poll() is None, process.log()[-3000:]
        assert time.monotonic() < deadline, process.log()[-3000:]
        time.sleep(0.1)
    before = threads_of(process.pid)

    feeder = Feeder(broker.address, topic, two_model_stream(3000, 1), rate=2000)
    feeder.start()
    idle = []
    try:
        opened = time.monotonic()
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        print(f"opened 1,000 idle connections in {time.monotonic() - opened:.2f} s")
        status, took = healthz(port)
        assert status == 200, process.log()[-3000:]
        assert took < 2.0, f"/healthz took {took:.2f} s behind 1,000 idle connections"
        print(f"/healthz behind 1,000 idle connections: {took * 1000:.0f} ms")
        during = threads_of(process.pid)
        print(f"threads: {before} before, {during} with 1,000 idle connections open")
        assert during <= before + 2
        # every idle connection is closed by the server once the read timeout has passed
        for sock in idle:
            sock.settimeout(15)
            assert sock.recv(1) == b""
        print(f"all 1,000 closed by the server {time.monotonic() - opened:.2f} s after the first was opened "
              "(read timeout 3 s)")
    finally:
        for sock in idle:
            sock.close()
    ends = feeder.result(timeout=120)
    wait_for_offsets(run.store, topic, ends, processes=[process], timeout=120)
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    closed = [line for line in scrape.splitlines()
              if line.startswith('stream_monitor_http_connections_closed_total{reason="idle"}')]
    assert closed and float(closed[0].split()[-1]) >= 1000, closed
    assert threads_of(process.pid) <= before + 2
    assert process.terminate() == 0, process.log()[-3000:]


def _flood(port: int, path: str, stop: threading.Event, counts: list[int]) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                response.read()
                counts[0] += 1
        except OSError:
            pass


def _through(run: Run, topic: str, ends: dict[int, int], process) -> float:
    """Seconds from the first stored offset to the last (the loop's pace, join and warm-up excluded)."""
    from ..support import stored_offset

    deadline = time.monotonic() + 120
    while not stored_offset(run.store, topic, 0):
        assert process.process.poll() is None and time.monotonic() < deadline, process.log()[-3000:]
        time.sleep(0.02)
    started = time.monotonic()
    wait_for_offsets(run.store, topic, ends, processes=[process], timeout=120)
    return time.monotonic() - started


@pytest.mark.slow
def test_the_loop_keeps_going_under_a_page_flood_and_renders_once_per_update(broker, redis_server, tmp_path,
                                                                              monitors):
    """The same stream through two instances, one left alone and one under a flood of page, JSON and
    scrape requests from 6 clients: both finish; under the flood the page is rendered at most once per
    board update (checkpoint or alert) plus once a second while the live lag moves. The pace of
    both is printed (the clients share the machine's cores with the service, so it is no assertion)."""
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    ends = produce_stream(broker.address, topic)
    paces = {}
    for name in ("quiet", "flooded"):
        port = free_port()
        run = Run(broker, redis_server, tmp_path, topic, 1, name, service={"metrics_port": port})
        process = run.start(monitors)
        stop, counts, clients = threading.Event(), [0], []
        if name == "flooded":
            deadline = time.monotonic() + 60
            while healthz(port)[0] is None:
                assert time.monotonic() < deadline, process.log()[-3000:]
                time.sleep(0.05)
            clients = [threading.Thread(target=_flood, args=(port, path, stop, counts), daemon=True)
                       for path in ("/", "/api/status", "/metrics") * 2]
            for thread in clients:
                thread.start()
        flood_started = time.monotonic()
        try:
            paces[name] = _through(run, topic, ends, process)
            if name == "flooded":  # the flood still going
                status, took = healthz(port)
                print(f"/healthz under the flood: {took * 1000:.0f} ms")
                assert status == 200
        finally:
            stop.set()
            for thread in clients:
                thread.join(15)
        if name == "flooded":
            elapsed = time.monotonic() - flood_started
            renders = {fmt: scraped(port, "stream_monitor_status_renders_total", format=fmt)
                       for fmt in ("html", "json")}
            updates = (scraped(port, "stream_monitor_checkpoints_total")
                       + sum(scraped_all(port, "stream_monitor_alerts_total")))
            print(f"flood: {counts[0]:,} requests in {elapsed:.1f} s; renders {renders}; "
                  f"checkpoints + alerts {updates:.0f}")
            assert counts[0] > 0
            for fmt, count in renders.items():
                assert 1 <= count <= updates + elapsed + 2, (fmt, count, updates, elapsed)
        assert process.terminate() == 0, process.log()[-3000:]
    events = sum(ends.values())
    print(f"pace: {events / paces['quiet']:,.0f} events/s quiet, {events / paces['flooded']:,.0f} events/s "
          f"under the flood ({paces['quiet'] / paces['flooded']:.0%})")


def produce_stream(bootstrap: str, topic: str) -> dict[int, int]:
    from ..support import produce

    return produce(bootstrap, topic, [(0, key, value, None) for _, key, value, _ in two_model_stream(20_000, 1)])


def scraped(port: int, family: str, **labels) -> float:
    return sum(scraped_all(port, family, **labels))


def scraped_all(port: int, family: str, **labels) -> list[float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [sample.value for metric in text_string_to_metric_families(text) for sample in metric.samples
            if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items())]


@pytest.mark.slow
def test_a_run_serves_https_with_basic_auth_from_its_web_config(broker, redis_server, tmp_path, monitors):
    """`stream-monitor run` with service.web_config_file: HTTPS only, credentials for everything but
    the probes; a wrong web config or a port in use ends the start with one line and exit 2."""
    cert, _ = self_signed(tmp_path)
    web = write(tmp_path / "web.yml", "tls_server_config: {cert_file: server.crt, key_file: server.key}\n"
                                      f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    topic = unique("inference")
    create_topics(broker.address, {topic: 1})
    port = free_port()
    run = Run(broker, redis_server, tmp_path, topic, 1, "tls", service={"metrics_port": port,
                                                                        "web_config_file": str(web)})
    process = run.start(monitors)
    trusted = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 60
    while True:
        try:
            status = get(f"https://127.0.0.1:{port}/readyz", context=trusted)[0]
        except OSError:
            status = None
        if status == 200:
            break
        assert process.process.poll() is None and time.monotonic() < deadline, process.log()[-3000:]
        time.sleep(0.1)
    assert get(f"https://127.0.0.1:{port}/metrics", context=trusted)[0] == 401
    assert get(f"https://127.0.0.1:{port}/metrics", basic("prometheus", "nope"), context=trusted)[0] == 401
    status, body, _ = get(f"https://127.0.0.1:{port}/metrics", basic("prometheus", "s3cret"), context=trusted)
    assert status == 200 and b"stream_monitor_http_requests_total" in body
    assert get(f"https://127.0.0.1:{port}/", basic("prometheus", "s3cret"), context=trusted)[0] == 200
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/healthz")
        connection.getresponse()
    assert "https://127.0.0.1:%d/ (basic auth)" % port in process.log()
    assert "s3cret" not in process.log() and HASH not in process.log()

    # the same port again: taken; a broken web config: refused before anything starts
    import sys

    busy = subprocess.run([sys.executable, "-m", "stream_monitor", "run", "-c", str(run.config)],
                          capture_output=True, text=True, timeout=120)
    assert busy.returncode == 2, busy.stderr
    assert busy.stderr.strip().splitlines()[-1] == (f"stream-monitor: config: service.metrics_port: port {port} on "
                                                    "127.0.0.1 is already in use")
    assert "Traceback" not in busy.stderr
    assert process.terminate() == 0, process.log()[-3000:]
    write(web, "tls_server_config: {cert_file: server.crt}\n")
    broken = subprocess.run([sys.executable, "-m", "stream_monitor", "run", "-c", str(run.config)],
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert broken.stderr.strip().splitlines()[-1] == (f"stream-monitor: config: service.web_config_file: {web}: "
                                                      "tls_server_config.key_file: required")
