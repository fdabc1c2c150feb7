"""Load and validate the TOML configuration.

The schema is the classes below: one typed, documented field per key
(``msgspec.Struct``s, frozen, unknown keys refused). :func:`parse_config`
converts a parsed document with it and turns a refusal into a
:class:`ConfigError` naming the key and what is wrong, e.g.

>>> parse_config({"kafka": {"input_topics": "ml.inference"}})
Traceback (most recent call last):
...
stream_monitor.errors.ConfigError: config: kafka.input_topics: must be a list of strings, got str

The rules a schema cannot say (one key against another, the Redis URL, the
librdkafka tables) are the small ``_check_*`` functions after it.
``docs/CONFIGURATION.md``'s key tables are rendered from the same fields
(``make config-docs``, :mod:`stream_monitor.configdocs`).
"""

import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import msgspec
from msgspec import Meta

from .errors import ConfigError


# --- secrets: one place knows what a credential looks like -------------------------------

# librdkafka properties whose values are credentials (any key holding "password" or "secret" is one too).
SECRET_PROPERTIES = frozenset({
    "sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem", "ssl.certificate.pem",
    "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config", "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem"})
# URL query parameters that carry credentials (redis-py passes `?password=` on to AUTH).
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pass", "pwd", "auth", "token", "secret", "access_token"})
REDACTED = "***"
_MIN_KNOWN_SECRET = 4  # shorter secrets are still redacted by form (URL, key = value), not by value
_known_secrets: set[str] = set()
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_PROPERTY_TEXT = re.compile(
    r"(?i)((?:sasl\.password|ssl\.key\.password|ssl\.keystore\.password|sasl\.oauthbearer\.client\.secret"
    r"|sasl\.oauthbearer\.config|[\w.]*(?:password|secret))[\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;)}\]]+)")


def is_secret_property(key: str) -> bool:
    """Whether a librdkafka property (or any ``key = value`` name) holds a credential.

    >>> [is_secret_property(k) for k in ("sasl.password", "sasl.username", "ssl.keystore.password")]
    [True, False, True]
    """
    lowered = key.lower()
    return lowered in SECRET_PROPERTIES or "password" in lowered or "secret" in lowered


def redact_url(url: str) -> str:
    """A URL without its credentials, for messages and logs: the password of ``user:password@``
    (a bare ``token@`` as a whole) and the value of credential query parameters.

    >>> redact_url("rediss://app:s3cret@redis.example:6380/0")
    'rediss://app:***@redis.example:6380/0'
    >>> redact_url("redis://redis.example:6379/0?password=s3cret&socket_timeout=2")
    'redis://redis.example:6379/0?password=***&socket_timeout=2'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, hash_sep, fragment = rest.partition("#")
    rest, query_sep, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        credentials, _, host = authority.rpartition("@")
        user, colon, _password = credentials.partition(":")
        authority = f"{user}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}"
    if query_sep:
        pairs = []
        for pair in query.split("&"):
            name, eq, _value = pair.partition("=")
            pairs.append(f"{name}={REDACTED}" if eq and name.lower() in SECRET_QUERY_KEYS else pair)
        query = "&".join(pairs)
    return f"{scheme}://{authority}{slash}{path}{query_sep}{query}{hash_sep}{fragment}"


def redact_properties(settings: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka properties with every credential replaced by ``***`` (to print a client's settings).

    >>> redact_properties({"sasl.username": "app", "sasl.password": "s3cret"})
    {'sasl.username': 'app', 'sasl.password': '***'}
    """
    return {key: REDACTED if is_secret_property(str(key)) else value for key, value in settings.items()}


def remember_secrets(*values: Any) -> None:
    """Secrets of the loaded config, so that :func:`redact` removes them from any text (a client's
    error message quoting a value, a traceback) whatever form they appear in."""
    for value in values:
        if isinstance(value, str) and len(value) >= _MIN_KNOWN_SECRET:
            _known_secrets.add(value)


def redact(text: str) -> str:
    """Any text with credentials removed: URLs (:func:`redact_url`), ``sasl.password=…``-like pairs,
    and the secrets of the loaded config wherever they appear. Every message that may quote config
    (logs, the status page, ``status``, errors) goes through this.

    >>> redact("Redis at redis://h:6379/0?password=s3cret failed; sasl.password=hunter22 given")
    'Redis at redis://h:6379/0?password=*** failed; sasl.password=*** given'
    """
    if not text:
        return text
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group()), text)
    lowered = text.lower()
    if "password" in lowered or "secret" in lowered or "oauthbearer" in lowered:  # a slow pattern: most lines have none
        text = _PROPERTY_TEXT.sub(lambda m: m.group(1) + REDACTED, text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _secrets_of(redis_url: str, tables: list[Mapping[str, Any]]) -> list[str]:
    from urllib.parse import parse_qsl, unquote, urlsplit  # noqa: PLC0415

    found: list[str] = []
    try:
        parts = urlsplit(redis_url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        elif parts.username and "@" in parts.netloc:
            found += [parts.username, unquote(parts.username)]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in SECRET_QUERY_KEYS]
    except ValueError:
        pass
    found += [str(v) for table in tables for k, v in table.items() if is_secret_property(str(k))]
    return found


ENV_PREFIX = "STREAM_MONITOR_"
MAX_BATCH_SIZE = 1_000_000  # confluent-kafka's consume() refuses more messages per call
MAX_POLL_TIMEOUT_SECONDS = 5.0  # a stop is noticed between polls: this bounds the reaction to SIGTERM
FeatureKind = Literal["numeric", "categorical"]
FEATURE_KINDS = typing.get_args(FeatureKind)
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "auc")
REGRESSION_METRICS = ("mae", "rmse")


# --- the schema: one field per key, its type, bounds, default and documentation -------------------
#
# A new key is one field in its table:
#     name: Annotated[int, Meta(ge=1), doc("What it does, as its row in docs/CONFIGURATION.md says it.")] = 10
# then `make config-docs`. Bounds msgspec checks (ge, gt, le, lt, min_length, pattern, Literal values) are
# refused with a message derived from them; a rule between keys goes into a _check_* function below.
# A new table is a _Table subclass and a field of that type in its parent (listed in the parent's doc
# table unless stream_monitor/configdocs.py gives it a block of its own).


def doc(meaning: str, *, checks: str = "", default: str = "", type: str = "", refusal: str = "") -> Meta:
    """A key's documentation, rendered into docs/CONFIGURATION.md: ``meaning``, and where the schema
    cannot say it, ``checks`` (what is accepted), ``default`` (words for an absent default) and
    ``type``. ``refusal`` replaces the message derived from the bounds when a value is out of them."""
    extra = {name: value for name, value in (("checks", checks), ("default", default), ("type", type),
                                              ("refusal", refusal)) if value}
    return Meta(description=meaning, extra=extra)


INTERNAL = Meta(extra={"internal": True})  # a field that is not a TOML key
NOT_EMPTY = Meta(min_length=1)
POSITIVE = Meta(gt=0)
AT_LEAST_1 = Meta(ge=1)
POSITIVE_OR_ABSENT = Annotated[float, POSITIVE] | None  # absent: derived (there is no "none" in TOML)
Property = str | int | float | bool  # a librdkafka property's value


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A TOML table: typed keys with defaults; an unknown key is refused."""


class KafkaConfig(_Table):
    bootstrap_servers: Annotated[str, NOT_EMPTY, doc(
        "Broker addresses, `host:port[,host:port…]`; becomes librdkafka's `bootstrap.servers` for the consumer, "
        "the producer and `status`.",
        checks="must not be empty; an unreachable broker pauses processing (it does not crash).")] = "127.0.0.1:9092"
    group_id: Annotated[str, NOT_EMPTY, doc(
        "Consumer group of the `run` instances (librdkafka `group.id`). It is also part of every Redis state key, "
        "so changing it starts from empty state and re-reads the input topics from the beginning.")] = "stream-monitor"
    input_topics: Annotated[tuple[Annotated[str, NOT_EMPTY], ...], Meta(min_length=1), doc(
        "Topics of inference and label events. Labels may come on the same or another listed topic.",
        checks="at least one topic; each a non-empty string.",
        refusal="must name at least one topic")] = ("ml.inference",)
    alert_topic: Annotated[str, NOT_EMPTY, doc(
        "Where alerts are published (key = `model_id`, JSON, `schemas/alert.json`).",
        checks="the topic must exist or be auto-created by the broker.")] = "ml.alerts"
    dead_letter_topic: Annotated[str, NOT_EMPTY, doc(
        "Where unprocessable input messages are published (`schemas/dead_letter.json`, original headers kept).",
        checks="the topic must exist or be auto-created by the broker.")] = "ml.dead-letters"
    input_formats: Annotated[dict[str, Literal["events", "oip"]], doc(
        "The format of an input topic, by its name: `\"events\"` (the service's own inference and label events) or "
        "`\"oip\"` (Open Inference Protocol V2 requests and responses as KServe's and Seldon's payload loggers write "
        "them; see each model's `[models.<id>.oip]`). A topic not listed here is `\"events\"`.",
        checks="each key must be one of `input_topics`; each value `\"events\"` or `\"oip\"`.", default="`{}`",
        type="table: topic → `\"events\"` | `\"oip\"`")] = {}
    consumer: Annotated[dict[str, Property], doc(
        "Consumer properties passed through to librdkafka (`security.protocol`, `sasl.*`, `ssl.*`, "
        "`session.timeout.ms`, `partition.assignment.strategy`, `client.id` …). See [librdkafka "
        "properties](#librdkafka-properties).",
        checks="values must be strings, numbers or booleans; `group.protocol = \"consumer\"` is refused.",
        type="table of librdkafka properties",
        refusal="librdkafka properties must be strings, numbers or booleans")] = {}
    producer: Annotated[dict[str, Property], doc(
        "Producer properties for alerts and dead letters, passed through to librdkafka. Security settings are "
        "**not** shared with the consumer: repeat them here.",
        checks="values must be strings, numbers or booleans.",
        type="table of librdkafka properties",
        refusal="librdkafka properties must be strings, numbers or booleans")] = {}
    sasl_username: Annotated[str, doc(
        "SASL user name of the consumer, the producer and `status`: when not empty it becomes librdkafka's "
        "`sasl.username` in both `[kafka.consumer]` and `[kafka.producer]`, over what they say. Meant for the "
        "environment (e.g. from a Kubernetes Secret), so the file need hold no credential; `security.protocol` "
        "and `sasl.mechanism` stay in the tables. `\"\"`: the tables' own `sasl.username`, if any.")] = ""
    sasl_password: Annotated[str, doc(
        "SASL password, like `kafka.sasl_username`: when not empty it becomes `sasl.password` of both client "
        "tables. Shown as `***` everywhere.")] = ""

    def __repr__(self) -> str:  # the client tables may hold credentials
        return (f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, group_id={self.group_id!r}, "
                f"input_topics={self.input_topics!r}, alert_topic={self.alert_topic!r}, "
                f"dead_letter_topic={self.dead_letter_topic!r}, consumer={redact_properties(self.consumer)!r}, "
                f"producer={redact_properties(self.producer)!r})")


class RedisConfig(_Table):
    url: Annotated[str, doc(
        "Redis server, as accepted by redis-py's `from_url` (`redis://[[user]:password@]host:port/db`, "
        "`rediss://…` for TLS, `unix:///path/to/socket?db=0`).",
        checks="must start with `redis://`, `rediss://` or `unix://`, and parse as redis-py parses it (a port that"
        " is not a number, an unknown value of a query option such as `socket_timeout` are refused at load). Its "
        "password (`user:password@` or `?password=`) is shown as `***` everywhere.")] = "redis://127.0.0.1:6379/0"
    namespace: Annotated[str, NOT_EMPTY, doc(
        "Prefix of every key the service writes (`<ns>:{<group>|<topic>|<partition>}:state`, "
        "`<ns>:partitions:{<group>}`, `<ns>:reference:{<model>}`, `<ns>:join:{<model>}:…`). Use different "
        "namespaces for deployments that share one Redis.")] = "sm"
    cluster: Annotated[bool, doc(
        "`true`: `redis.url` names any one node of a Redis Cluster (same URL forms, credentials and TLS as for one "
        "server); the client discovers the other nodes, routes each command to the node of its key's hash slot and "
        "follows redirections. Every guarantee holds there too: the keys each atomic step (a partition's save, a "
        "label-join step, a stored reference) touches share one hash tag, so each step runs on one node. A node "
        "down, a failover or slots being moved (`CLUSTERDOWN`, `TRYAGAIN`, `MOVED`/`ASK` that do not settle, no "
        "node reachable) pause processing like a Redis outage (`service.redis_outage_seconds`). `state import` "
        "writes each partition in one transaction of its own slot (a cluster has no transaction across slots): if "
        "Redis fails midway, the partitions before it are imported and the message says so; importing the file "
        "again rewrites them all. See \"Redis Cluster\" in docs/ARCHITECTURE.md.",
        checks="`redis.url` must be `redis://` or `rediss://` (no `unix://`) and select database 0 (a cluster has "
        "no other); no model id may be empty (`{}` is no hash tag)")] = False

    def __repr__(self) -> str:  # the URL may hold a password
        return (f"RedisConfig(url={redact_url(self.url)!r}, namespace={self.namespace!r}, "
                f"cluster={self.cluster!r})")


class ServiceConfig(_Table):
    metrics_port: Annotated[int, Meta(ge=0, le=65535), doc(
        "Port of the HTTP endpoint (on `service.metrics_host`): `/metrics` (Prometheus), `/` (status page), "
        "`/api/status` (JSON), `/healthz` (liveness) and `/readyz` (readiness), both 200 or 503 with a JSON body "
        "naming what is wrong (`problems`, the loop's age, the assignment, whether Redis and the broker are "
        "reachable as the last operations found them; a health request does no I/O of its own). `/readyz` is 200 "
        "once the instance has joined the group with its references loaded and while no outage pauses processing. "
        "`0` turns it off. A port already in use stops the start with a one-line error naming this key. See [The "
        "HTTP endpoint](#the-http-endpoint).")] = 9464
    metrics_host: Annotated[str, Meta(pattern=r"\S"), doc(
        "Address the HTTP endpoint listens on. The default exposes nothing beyond this host: the status page and "
        "`/api/status` list every model, feature and statistic. `0.0.0.0` listens on every interface; the "
        "container image's config (`deploy/config.toml`) and `docker-compose.yml` set it, because Prometheus "
        "scrapes from another container and a loopback address inside a container is reachable from nowhere else. "
        "Outside a container, prefer the one interface the scraper uses, and `service.web_config_file` for TLS and"
        " basic auth. An IPv6 address (e.g. `::1`) works too.",
        checks="not empty; an address this host has",
        refusal="must not be empty (127.0.0.1: this host only; 0.0.0.0: every interface)")] = "127.0.0.1"
    web_config_file: Annotated[str, doc(
        "TLS and basic auth of the HTTP endpoint: a YAML file in the format of Prometheus' exporter-toolkit web "
        "config (`tls_server_config`, `basic_auth_users`; see [The HTTP endpoint](#the-http-endpoint)). `\"\"`: "
        "plain HTTP without authentication. A relative path is relative to the current directory; the paths inside"
        " the file are relative to the file's own directory. Checked at start: a missing or unreadable file, "
        "invalid YAML, an unknown field, a missing certificate or key, a certificate that does not load, or a user"
        " whose hash is not bcrypt stops the start with a one-line error naming this key, the file and the field.",
        checks="a readable YAML file")] = ""
    web_workers: Annotated[int, Meta(ge=1, le=64), doc(
        "Threads that answer HTTP requests (started up front; never more). Connections waiting for their request "
        "cost no thread: one selector thread reads request heads without blocking and hands complete requests to "
        "the workers through a bounded queue (`4 ×` this; a request arriving while it is full is refused by "
        "closing its connection).")] = 4
    web_read_timeout_seconds: Annotated[float, Meta(gt=0, le=300), doc(
        "A connection's complete request head (request line and headers, at most 16 KiB), including a TLS "
        "handshake, must arrive within this many seconds of its accept, or the server closes it (counted in "
        "`stream_monitor_http_connections_closed_total{reason=\"idle\"}`); writing the answer is bounded by the same"
        " time. One request per connection (`Connection: close`).")] = 5.0
    web_max_connections: Annotated[int, Meta(ge=1, le=10_000), doc(
        "Open HTTP connections at most. A new connection beyond this closes the oldest one still waiting for its "
        "request (`reason=\"evicted\"`), so a flood of idle connections cannot keep a scrape or a probe out; running"
        " out of file descriptors does the same.")] = 512
    checkpoint_interval_events: Annotated[int, AT_LEAST_1, doc(
        "Checkpoint a partition (confirm deliveries, save its state + next offset to Redis, commit its offset) "
        "after this many of its input messages since its last save … (each partition has its own count and clock: "
        "saving some partitions, e.g. on a revoke, does not delay the others)")] = 10_000
    checkpoint_interval_seconds: Annotated[float, POSITIVE, doc(
        "… or this many seconds after its last save, whichever comes first (only when it changed). Bounds the work"
        " redone after a crash.")] = 5.0
    history_points: Annotated[int, Meta(ge=0, le=1_000_000), doc(
        "History kept per model for `stream-monitor report`: every closed window's statistic (with its thresholds, "
        "and for PSI the reference and current bin shares) and every alert is appended to the Redis stream "
        "`<namespace>:history:{<model>}`, capped at about this many entries (`XADD … MAXLEN ~`: the oldest go "
        "first). Written after the checkpoint by a background thread, best effort: a Redis that refuses the write "
        "never pauses processing, the points are dropped and counted (`stream_monitor_history_dropped_total`). "
        "At-least-once (a batch processed again after a crash adds its points again; the report drops the "
        "duplicates). `0` keeps no history.")] = 20_000
    max_message_bytes: Annotated[int, AT_LEAST_1, doc(
        "Input messages with a larger value are dead-lettered with reason `too_large`.")] = 1_048_576
    max_features_per_event: Annotated[int, AT_LEAST_1, doc(
        "An inference event with more features than this is dead-lettered (`too_many_features`): bounds the "
        "columns a model can grow and the work per event.")] = 1_000
    max_event_id_bytes: Annotated[int, AT_LEAST_1, doc(
        "An event whose `event_id` is longer than this many bytes (UTF-8) is dead-lettered with reason "
        "`event_id_too_long`: the id is a Redis key of the label join, so this bounds what one event can put into "
        "Redis.")] = 256
    max_timestamp_ahead_seconds: Annotated[float, Meta(ge=0), doc(
        "An event whose own time (`timestamp`, or an Open Inference Protocol message's `ce_time`) is more than "
        "this far ahead of its Kafka message's timestamp is dead-lettered with reason `timestamp_ahead`: no model "
        "server sees its events before it sends them, so such a time is a clock or time-zone error, and one "
        "event far in the future would carry a partition's event-time watermark with it and hold back every "
        "model-level window that waits for that partition (`decisions = \"model\"`). One hour, as Kafka's "
        "brokers accept by default (`log.message.timestamp.after.max.ms`); `0` turns the check off. Events "
        "without a Kafka timestamp (`replay` of a file) are not checked.")] = 3600.0
    batch_size: Annotated[int, AT_LEAST_1, doc(
        "Most messages fetched per poll; a graceful stop finishes the batch in hand.",
        checks="`1..1000000` (the most the Kafka client returns from one call; larger values would be accepted and"
        " then fail at the first poll). A very large batch also lengthens a graceful stop, which finishes it "
        "first.")] = 1_000
    poll_timeout_seconds: Annotated[float, POSITIVE, doc(
        "Longest wait for a batch when the input is idle; checkpoints, reference checks and shutdown happen "
        "between polls.",
        checks="`> 0` and at most `5`: a stop (SIGTERM) is only seen between polls, and an orchestrator kills an "
        "instance that has not stopped within its grace period (30 s by default in Kubernetes); keep it well under"
        " a second.")] = 0.2
    reference_poll_seconds: Annotated[float, POSITIVE, doc(
        "How often a running service checks Redis for a new version of each stored reference (`reference build`); "
        "a new version is used from then on, without a restart.")] = 5.0
    redis_outage_seconds: Annotated[float, POSITIVE, doc(
        "While Redis is unreachable or refuses writes (out of memory with `maxmemory-policy noeviction`, "
        "`READONLY` from a replica after a failover, `MISCONF` when it cannot persist to disk), processing pauses "
        "and every Redis step (checkpoint, label join, state load) is retried with backoff (0.2 s doubling to 5 "
        "s), logged and counted in `stream_monitor_redis_errors_total`; each step is safe to repeat, so nothing is"
        " lost or counted twice. After this long the instance exits with an error (a restarted instance waits the "
        "same way, so there is no tight crash loop). SIGTERM during the wait ends it at once: the checkpoint in "
        "hand is given up (Redis keeps the last consistent state, nothing is committed) and the instance exits 0; "
        "the next owner processes the events since that checkpoint again.",
        checks="must be `> 0` and below the consumer's `max.poll.interval.ms`")] = 120.0
    broker_outage_seconds: Annotated[float, POSITIVE, doc(
        "How long a checkpoint waits for the broker to acknowledge alerts and dead letters (logged every 5 s) "
        "before the instance exits; state is never saved ahead of undelivered alerts.")] = 120.0
    producer_stall_seconds: Annotated[float, POSITIVE, doc(
        "While alerts or dead letters wait for acknowledgement and none has been delivered for this long although "
        "the broker answers metadata requests, the producer is replaced by a new one and everything unacknowledged"
        " is sent again (logged, counted in `stream_monitor_producer_restarts_total`). An idempotent producer "
        "never recovers by itself after the broker restarts; a broker that is down or paused is simply waited for "
        "(`service.broker_outage_seconds`). A resend may repeat an alert (same `alert_id`), never lose one.")] = 10.0
    on_missing_state: Annotated[Literal["rebuild", "stop"], doc(
        "A partition assigned without state in Redis although the group has committed progress means Redis lost "
        "its data. `\"rebuild\"`: say so loudly (ERROR log, `stream_monitor_state_lost_total`) and rebuild the "
        "partition from the beginning of the retained log; `\"stop\"`: refuse to go on, so an operator can `state "
        "import` a backup first. Partitions an instance owns while Redis loses its data are written back from "
        "memory at the next checkpoint either way.")] = "rebuild"
    max_inferred_columns: Annotated[int, AT_LEAST_1, doc(
        "For a model whose config lists no `features`: how many feature names its warm-up tracks, per partition — "
        "the first names to appear, in the order they appear (deterministic). Further names are not tracked and "
        "never become columns; they are counted (distinct names, up to 10,000) and reported: "
        "`stream_monitor_untracked_columns{model}`, `untracked_columns` and a few `untracked_examples` in the "
        "model's status, and one WARNING line per model and partition when its reference is built. Configured "
        "`features` are always tracked, however many there are. Of the tracked names, those present in at least 1 "
        "% of the warm-up's events (and twice) become columns.")] = 100
    max_categories_per_column: Annotated[int, AT_LEAST_1, doc(
        "Distinct categories a warm-up (inference or label) remembers per categorical column; values of further "
        "categories are counted together and land in the column's `__other__` share. A reference that overflowed "
        "treats every category as seen (no `unseen_category` rate for that column).")] = 10_000
    on_offset_out_of_range: Annotated[Literal["earliest", "stop"], doc(
        "A stored offset outside the partition's current log: before its earliest retained message (retention "
        "deleted what it pointed to), or beyond its end (the topic was recreated, a memory-only broker restarted)."
        " Detected on assignment (earliest offset), from the broker's \"offset out of range\" answer, and, for "
        "brokers that answer a fetch beyond the end with nothing, from the log end the consumer's fetches report, "
        "confirmed by a second short-lived reader before anything is reset. It is always reported: an ERROR line "
        "naming the partition, the stored offset and the log's range, and "
        "`stream_monitor_offset_resets_total{topic,partition}`. `\"earliest\"`: reading resumes at the earliest "
        "retained message and the detector state carries on (the new log's events are new events); the partition's"
        " state is saved in a new epoch, so its lower offsets replace the old log's (an owner still saving in the "
        "old epoch is refused). `\"stop\"`: the instance exits (code 2) saying what to check and do. A log that was "
        "recreated and has already grown past the stored offset cannot be told apart from the old one by its "
        "offsets.")] = "earliest"
    on_corrupt_state: Annotated[Literal["pause", "dead_letter"], doc(
        "A partition assigned to this instance whose stored state cannot be loaded: the blob does not decode, is "
        "in the old pickle format (refused, never unpickled: it could run code), names a reference profile that is"
        " not stored beside it, or has an `offset` or `epoch` that is not an integer. The partition is "
        "**quarantined**, and only it: an ERROR line `QUARANTINED topic[p]` naming the Redis key, the field and "
        "the problem; `stream_monitor_quarantined_partitions` (now) and `stream_monitor_quarantines_total`; an "
        "entry with `quarantined` (key, problem, since) among the partitions of `/api/status`. The key is never "
        "written while quarantined (it is the evidence, and a checkpoint would overwrite it), and nothing is "
        "committed for the partition. Every other partition goes on. `\"pause\"`: the partition stays assigned to "
        "this instance but paused, so its messages wait in the log. `\"dead_letter\"`: its messages, from the stored"
        " offset when that is an integer (else from the beginning of the log), are sent to the dead-letter topic "
        "with reason `quarantined_partition`; after a restart they are sent again. Either way the key is checked "
        "again every `service.quarantine_recheck_seconds`: once it loads (fixed by hand, or `stream-monitor state "
        "import` of a good export) the partition resumes at its stored offset (in `dead_letter` mode the messages "
        "dead-lettered since then are then processed as well); once it is deleted the partition is rebuilt from "
        "the beginning of the retained log.")] = "pause"
    quarantine_recheck_seconds: Annotated[float, POSITIVE, doc(
        "How often the state key of a quarantined partition (see `service.on_corrupt_state`) is read again to see "
        "whether it was fixed or deleted.")] = 30.0
    health_max_loop_age_seconds: Annotated[float, POSITIVE, doc(
        "`/healthz` answers 503 (JSON body saying why) when the service loop has not come round for this long: it "
        "is stuck, e.g. inside a Redis call during an outage that does not end, or in a checkpoint that does not "
        "return. `/readyz` is 503 then too. Raise it if single checkpoints of very large states take longer.")] = 60.0
    health_max_unassigned_seconds: Annotated[float, POSITIVE, doc(
        "`/healthz` answers 503 when a consumer-group join or (eager) rebalance has been under way this long "
        "without the instance getting its assignment (membership churn stalling the group). An instance that has "
        "joined and was given no partitions (more instances than partitions) is healthy. While the join lasts, "
        "`/readyz` is 503.")] = 120.0
    rejoin_stalled_join_seconds: Annotated[float, POSITIVE, doc(
        "A consumer-group join or (eager) rebalance that has lasted this long without giving the instance its "
        "assignment is abandoned: the instance leaves the group and joins again (logged; counted in "
        "`stream_monitor_group_rejoins_total`), and again after the same time while joins keep stalling. Seen on "
        "a broker that lost track of a member that left mid-rebalance: every member kept polling and none was "
        "assigned until they joined again. Keep it below `service.health_max_unassigned_seconds`, so that an "
        "instance tries this before it reports itself stuck, and above the longest join your broker needs.")] = 45.0
    log_repeat_seconds: Annotated[float, POSITIVE, doc(
        "The Kafka client's own log lines (librdkafka, logged as `stream_monitor.kafka`, JSON with `--log-format "
        "json`) are rate-limited: the same line (numbers aside) at most once per this many seconds; the next one "
        "after that says `(repeated K times)`. The service says once in its own words when the broker becomes "
        "unreachable (processing paused) and once when it is back.")] = 30.0
    dead_letter_log_seconds: Annotated[float, POSITIVE, doc(
        "At most one INFO line per this many seconds summing up the dead letters since the last one, by reason "
        "with an example error each (`dead-lettered 1,234 messages in the last 60 s: unknown_model 1,200 (e.g. "
        "model_id 'frod' is not configured …), …`); nothing is logged when there were none. The first dead letters"
        " are reported at the first checkpoint after them.")] = 60.0


class PsiConfig(_Table):
    window: Annotated[int, Meta(ge=10), doc(
        "Values per tumbling window (per partition, model and column); PSI, KS, data quality and p95 decide at the"
        " end of each window.")] = 5_000
    bins: Annotated[int, Meta(ge=2, le=100), doc(
        "Quantile bins of a numeric reference (plus an open bin below its minimum and one above its maximum).")] = 10
    top_k: Annotated[int, POSITIVE, doc(
        "Categories kept by frequency for a categorical column (prediction label and ground-truth labels too); the"
        " rest share the `__other__` bucket.")] = 20
    warning: Annotated[float, POSITIVE, doc(
        "PSI level of a `warning` alert. Raised to the budget's level when that is higher (small windows or "
        "references).",
        checks="`> 0` and `<= critical`")] = 0.1
    critical: Annotated[float, POSITIVE, doc(
        "PSI level of a `critical` alert (never below the effective warning level).",
        checks="`>= warning`")] = 0.25
    epsilon: Annotated[float, POSITIVE, doc(
        "Proportions are clipped at this value, so an empty bin gives a finite PSI.",
        checks="must be `> 0`; keep it small.")] = 1e-4


class KsConfig(_Table):
    enabled: Annotated[bool, doc(
        "Run KS on numeric columns.")] = True
    threshold: Annotated[POSITIVE_OR_ABSENT, doc(
        "KS statistic of a `warning` alert; `critical` is twice it.",
        default="absent (from the budget's share: ≈ 0.052 for windows and references of 5,000 and 182 tests)")] = None


class AdwinConfig(_Table):
    enabled: Annotated[bool, doc(
        "Run ADWIN on numeric columns.")] = True
    delta: Annotated[Annotated[float, Meta(gt=0, lt=1)] | None, doc(
        "ADWIN's confidence: its bound on the chance of a false cut at each check. Smaller is quieter and slower.",
        default="absent (share × 10⁻⁶ × `clock`: 1.8·10⁻⁸ for budget 0.1 over 182 tests)")] = None
    clock: Annotated[int, POSITIVE, doc(
        "ADWIN checks for a change every `clock` values.")] = 32
    grace_period: Annotated[int, POSITIVE, doc(
        "Values before ADWIN may first detect.")] = 10
    min_window_length: Annotated[int, POSITIVE, doc(
        "Shortest sub-window ADWIN compares.")] = 5
    max_buckets: Annotated[int, POSITIVE, doc(
        "Buckets per row of ADWIN's exponential histogram (memory vs. precision).")] = 5


class PageHinkleyConfig(_Table):
    enabled: Annotated[bool, doc(
        "Run Page-Hinkley on numeric columns.")] = True
    min_instances: Annotated[int, POSITIVE, doc(
        "Values before it may detect.")] = 30
    delta: Annotated[float, Meta(ge=0), doc(
        "Tolerated drift of the mean, in standard deviations of the normal score (about half the smallest shift "
        "worth catching quickly).")] = 0.25
    threshold: Annotated[POSITIVE_OR_ABSENT, doc(
        "Detection threshold λ on the cumulative sums.",
        default="absent (from the budget's share: 39.0 for `delta` 0.25 and 0.1 over 182 tests)")] = None
    alpha: Annotated[float, Meta(gt=0, le=1), doc(
        "Forgetting factor of the cumulative sums; `1` = no forgetting (river's 0.9999 never settles and cannot be"
        " calibrated).")] = 1.0


class DataQualityConfig(_Table):
    enabled: Annotated[bool, doc(
        "Run the data-quality checks.")] = True


class LatencyConfig(_Table):
    enabled: Annotated[bool, doc(
        "Distribution-shift detection of `latency_ms` (PSI, KS, ADWIN, Page-Hinkley).  `false` turns the `latency`"
        " signal off (no latency column, no p95 ceiling).")] = True
    p95_ceiling_ms: Annotated[POSITIVE_OR_ABSENT, doc(
        "When set, a window whose p95 latency is above this many milliseconds raises a `latency` alert (detector "
        "`p95_ceiling`); it resolves below `hysteresis` × the ceiling.",
        default="absent (no ceiling)")] = None


class EstimatedPerformanceConfig(_Table):
    enabled: Annotated[bool, doc(
        "For a classifier with scores: estimate accuracy, precision, recall and F1 from the scores alone (no labels"
        " needed) and raise an `estimated_performance` alert (detector `cbpe`, name = the metric) when a window's "
        "estimate falls below the reference's range under the false-alarm budget. It starts once "
        "`reference_pairs` joined (score, label) pairs have calibrated the scores.")] = True
    window: Annotated[int, Meta(ge=10), doc(
        "Predictions with a score per tumbling window of the estimate (per partition and model; with "
        "`decisions = \"model\"` at least this many of the model's, ending on a bucket boundary).")] = 1_000
    reference_pairs: Annotated[int, Meta(ge=20), doc(
        "The first joined (score, label) pairs that calibrate the scores (histogram binning, 10 equal-frequency "
        "bins) and set the reference's range of each estimate. With `decisions = \"model\"`: the pairs of the "
        "model's first event-time buckets that hold at least this many, from all partitions. A stored reference "
        "built with labels calibrates with its own labelled predictions instead (from the first prediction).")] = 2_000
    decision_threshold: Annotated[float, Meta(ge=0, le=1), doc(
        "A prediction without a predicted label counts as positive when its score is at or above this; one with "
        "a predicted label counts as what it says (`performance.positive_label`).")] = 0.5


class MultivariateConfig(_Table):
    enabled: Annotated[bool, doc(
        "Joint drift (`multivariate` alerts, name `joint`, detector `hotelling`) for a model with two or more "
        "numeric features: a change in the features' pairwise correlations taken together, e.g. a correlation "
        "that appears while every feature's own distribution stays the same (a change of one feature alone is "
        "the per-column detectors'). An event missing one of the "
        "features is skipped by this detector (and counted).")] = True
    max_features: Annotated[int, Meta(ge=2, le=20), doc(
        "The joint test reads at most this many numeric features (the first in name order): k features make "
        "k(k−1)/2 tested correlations, and the reference keeps a matrix of that size squared.")] = 10
    window: Annotated[int, Meta(ge=100, le=100_000_000), doc(
        "Complete events per tumbling window of the joint test (per partition and model; with "
        "`decisions = \"model\"` at least this many of the model's, ending on a bucket boundary).")] = 5_000


class DetectorsConfig(_Table):
    false_alarms_per_million: Annotated[float, POSITIVE, doc(
        "The model's false-alarm budget: the expected number of false alarms per 10^6 of the model's events on "
        "data drawn like its reference, all its columns, detectors and partitions together. It is split equally "
        "over the tests the model runs (per numeric column 8: four data-quality rates, PSI, KS, ADWIN, "
        "Page-Hinkley; per categorical column 3; the label column 3; the performance drift detector 1; the "
        "estimated performance 1 where the model may be a classifier with scores; the multivariate test 1 where "
        "it runs; 182 for a classifier with 20 numeric features, a score and latency), and each test's share, as a rate per value it sees, sets "
        "every threshold not given explicitly (`stream_monitor/calibration.py`): the PSI warning floor, "
        "`ks.threshold`, `adwin.delta`, `page_hinkley.threshold` and the data-quality rate limits. A rate per "
        "value keeps the model's total independent of its partition count: P per-partition detectors see 1/P "
        "of the events each, and P partitions close as many windows in all as one would.")] = 0.1
    psi: PsiConfig = PsiConfig()
    ks: KsConfig = KsConfig()
    adwin: AdwinConfig = AdwinConfig()
    page_hinkley: PageHinkleyConfig = PageHinkleyConfig()
    data_quality: DataQualityConfig = DataQualityConfig()
    latency: LatencyConfig = LatencyConfig()
    estimated_performance: EstimatedPerformanceConfig = EstimatedPerformanceConfig()
    multivariate: MultivariateConfig = MultivariateConfig()
    resolve_after: Annotated[int, AT_LEAST_1, doc(
        "A `performance` point detector's (ADWIN on the error stream, Page-Hinkley on the absolute error) episode "
        "resolves after this many labelled predictions without a new detection. A column's ADWIN and Page-Hinkley "
        "do not use it: their episode resolves when the column is back within its reference (see below).")] = 5_000
    cooldown: Annotated[int, Meta(ge=0), doc(
        "After an episode resolves, this many values of its column pass before the same detector may fire "
        "again.")] = 5_000
    hysteresis: Annotated[float, Meta(gt=0, le=1), doc(
        "A level detector (PSI, KS, data quality, p95 ceiling) resolves only when its statistic falls below "
        "`hysteresis` × its warning level, so a value hovering at the line does not flap.")] = 0.8


class PerformanceConfig(_Table):
    enabled: Annotated[bool, doc(
        "Join label events to their predictions and monitor performance. `false`: predictions are not stored "
        "for a join and labels only feed label drift.")] = True
    task: Annotated[Literal["", "classification", "regression"], doc(
        "`\"classification\"` (0/1 errors → ADWIN; accuracy, precision, recall, F1, ROC AUC) or `\"regression\"` "
        "(absolute error → one-sided Page-Hinkley on its normal score; MAE, RMSE). Empty: inferred from the "
        "model's predictions (see above).")] = ""
    positive_label: Annotated[str, doc(
        "Classification: the positive class for precision, recall, F1 and AUC (labels compare by their JSON "
        "spelling: `1`, `\"yes\"`, `true`).")] = "1"
    window: Annotated[int, Meta(ge=10), doc(
        "Joined pairs in the rolling metrics; floors and ceilings are checked every tenth of a window once it is "
        "full. With `decisions = \"model\"` they are checked once per window of this many pairs of the whole model "
        "(tumbling, by the labels' event time).")] = 1_000
    reference_pairs: Annotated[int, Meta(ge=10), doc(
        "Regression: the first joined pairs whose absolute errors form the error reference.")] = 1_000
    label_wait_seconds: Annotated[float, POSITIVE, doc(
        "How long a label that arrives before its prediction waits in Redis.")] = 3_600.0
    prediction_ttl_seconds: Annotated[float, POSITIVE, doc(
        "How long an unlabelled prediction is kept (7 days); then it counts as never labelled.")] = 7 * 24 * 3_600.0
    joined_retention_seconds: Annotated[float, POSITIVE, doc(
        "How long a joined pair is remembered, so that messages processed again after a crash are recognised. Keep"
        " it above the time between checkpoints by a wide margin.")] = 24 * 3_600.0
    max_pending: Annotated[int, Meta(ge=10), doc(
        "Unlabelled predictions kept per model. When it is reached, the next prediction evicts the oldest pending "
        "one, which counts as never labelled (`stream_monitor_predictions_never_labelled`, and "
        "`stream_monitor_predictions_evicted`): new predictions can always be joined, and a label that arrives "
        "later than this many newer unlabelled predictions finds nothing.")] = 1_000_000
    max_pending_bytes: Annotated[int, Meta(ge=65_536), doc(
        "Estimated Redis memory the model's label join may use (256 MiB): pending predictions, labels waiting for "
        "their prediction and joined pairs remembered for replays, each counted as its key, event id and record "
        "plus about 256 bytes of Redis overhead (the join keeps the total as it goes; "
        "`stream_monitor_join_bytes`). An entry that would go past it first evicts, oldest first, joined pairs, "
        "then waiting labels (`stream_monitor_labels_evicted`), then pending predictions (never labelled, "
        "`stream_monitor_predictions_evicted`). One entry bigger than the whole budget is not stored "
        "(`stream_monitor_predictions_dropped_total`). With the default 1,000,000 `max_pending` and short event "
        "ids, pending predictions alone take about 400 MB; the default budget evicts before that.")] = 256 * 1024 * 1024
    floors: Annotated[dict[str, float], doc(
        "Classification (configured or inferred): a `performance` alert (detector `floor`, critical) when a "
        "rolling `accuracy`, `precision`, `recall`, `f1` or `auc` falls below its floor, e.g. "
        "`floors = { accuracy = 0.8 }`; resolved when it is back.",
        checks="metric names of the task",
        type="table: metric → float")] = {}
    ceilings: Annotated[dict[str, float], doc(
        "Regression (configured or inferred): a `performance` alert (detector `ceiling`) when a rolling `mae` or "
        "`rmse` rises above its ceiling.",
        checks="metric names of the task",
        type="table: metric → float")] = {}


class ReferenceConfig(_Table):
    source: Annotated[Literal["warmup", "stored"], doc(
        "Where the reference profile comes from. `\"warmup\"`: the model's first `reference.events` inference events "
        "(no drift detection before that): with `decisions = \"model\"` (the default) one reference for the model, "
        "from its first event-time buckets holding `reference.events` events of all partitions; with `decisions = "
        "\"partition\"` each partition's first `reference.events`. `\"stored\"`: the profile stored in Redis by "
        "`stream-monitor reference build` (versioned; a new version is picked up within "
        "`service.reference_poll_seconds`).",
        checks="`\"warmup\"` or `\"stored\"`; with `\"stored\"`, `run` refuses to start until a profile is "
        "stored.")] = "warmup"
    events: Annotated[int, Meta(ge=10), doc(
        "Warm-up length when `source = \"warmup\"`: the least the model's reference holds and each partition's "
        "warm-up share (with `decisions = \"partition\"`: the events of each partition that form its reference); "
        "also the"
        " number of label events that form the label reference when none is stored.")] = 5_000


class OipConfig(_Table):
    served_as: Annotated[str, doc(
        "The model's name on the model server: KServe's InferenceService name (the `ce_inferenceservicename` "
        "header), the `<model>` of Seldon's `seldon.<namespace>.model.<model>.inputs|outputs` topics, or the "
        "`model_name` of the message. Empty: the model id.")] = ""
    columns: Annotated[dict[str, tuple[Annotated[str, NOT_EMPTY], ...]], doc(
        "Feature names of the columns of a 2-D input tensor (shape `[batch, n]`), by tensor name, e.g. "
        "`columns = { input-0 = [\"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"] }`; row `i` "
        "of the tensor is one event. A tensor of shape `[batch]` or `[batch, 1]` is one feature named after the "
        "tensor (or `rename`). Any other input tensor is refused (dead letter `unknown_tensor`).",
        default="`{}`", type="table: tensor name → list of feature names")] = {}
    rename: Annotated[dict[str, Annotated[str, NOT_EMPTY]], doc(
        "Feature names of 1-column input tensors, by tensor name (absent: the tensor's own name).",
        default="`{}`", type="table: tensor name → feature name")] = {}
    score: Annotated[str, doc(
        "The output tensor that is the prediction's `score` (its last column when it has several, e.g. the "
        "positive class of `predict_proba`). Empty: the first output whose datatype is FP16, FP32 or FP64, if "
        "any.")] = ""
    label: Annotated[str, doc(
        "The output tensor that is the prediction's `label`. Empty: the first output whose datatype is an integer, "
        "BOOL or BYTES, if any.")] = ""
    pair_wait_seconds: Annotated[float, POSITIVE, doc(
        "How long a request waits in Redis for its response, or a response for its request; then it is dropped "
        "(a request counts in `stream_monitor_oip_unpaired`; a response that expires is not counted, like a label "
        "that never met its prediction).")] = 3_600.0
    max_pending: Annotated[int, Meta(ge=10), doc(
        "Rows of requests waiting for their response kept per model; past it the oldest is evicted (counted like an "
        "expired one).")] = 100_000
    max_pending_bytes: Annotated[int, Meta(ge=65_536), doc(
        "Estimated Redis memory of the model's request/response pairing (64 MiB): waiting requests and responses "
        "and the pairs remembered for replays (`pair_wait_seconds`). Past it the oldest entries are evicted: "
        "remembered pairs first, then waiting responses, then waiting requests.")] = 64 * 1024 * 1024


class ModelRetrainingConfig(_Table):
    enabled: Annotated[bool, doc(
        "Ask for this model's retraining (with `[retraining] topic` set): at most one request per incident that "
        "meets the rules below. See \"Retraining requests\" in the README.")] = True
    min_drifted_features: Annotated[int, AT_LEAST_1, doc(
        "Drift: ask once this many distinct features have fired a critical alert of `drift_detectors` within "
        "one incident.")] = 3
    drift_detectors: Annotated[tuple[Literal["psi", "ks", "adwin", "page_hinkley"], ...], doc(
        "The detectors whose critical feature alerts count as drift. The window detectors (PSI, KS) judge a "
        "whole window of events, so what they find is sustained over a window.",
        checks="each `\"psi\"`, `\"ks\"`, `\"adwin\"` or `\"page_hinkley\"`")] = ("psi", "ks")
    on_performance: Annotated[bool, doc(
        "Performance: ask at a critical `performance` alert of `performance_detectors`.")] = True
    performance_detectors: Annotated[tuple[Literal["floor", "ceiling", "adwin", "page_hinkley"], ...], doc(
        "The performance detectors that count: `floor` and `ceiling` (a rolling metric past its limit), "
        "`adwin` / `page_hinkley` (the error stream rose).",
        checks="each `\"floor\"`, `\"ceiling\"`, `\"adwin\"` or `\"page_hinkley\"`")] = ("floor", "ceiling")
    on_estimated_performance: Annotated[bool, doc(
        "Ask at a critical `estimated_performance` alert (where the model has one).")] = True
    on_fairness: Annotated[bool, doc(
        "Ask at a critical `fairness` alert (where the model has one).")] = True
    cooldown_seconds: Annotated[float, Meta(ge=0), doc(
        "Event time between two requests of the model (per partition): a later incident that "
        "meets the rules within it asks nothing. Alerts without an event time, or with one before the last "
        "request's, are not held back; 0: no cooldown.")] = 3_600.0


class SegmentsConfig(_Table):
    columns: Annotated[tuple[Annotated[str, NOT_EMPTY], ...], doc(
        "Feature columns whose values (a tuple of values for several columns) cut the model's traffic into "
        "segments; each window detector (PSI, KS, data quality, the realized performance's floors and "
        "ceilings) also runs per segment for the `top_k` most "
        "frequent segments of the reference and one `__rest__` segment for all others (`segment` on their "
        "alerts). The point detectors (ADWIN, Page-Hinkley) run model-wide only. With `decisions = \"model\"` (the "
        "default) the segments are decided over all partitions too. Empty: no segments. See "
        "\"Segments\" in the README.", checks="distinct feature names", default="`[]`")] = ()
    top_k: Annotated[int, Meta(ge=1, le=100), doc(
        "Segments with detectors of their own: the most frequent values of the reference with at least "
        "`min_events` reference events (ties by value); every other value, and values first seen after the "
        "reference, fold into `__rest__`. At most `top_k` + 1 segments per model.")] = 10
    min_events: Annotated[int, Meta(ge=10), doc(
        "Reference events a segment needs to be one of the `top_k` (fewer: it folds into `__rest__`).")] = 100

    @property
    def enabled(self) -> bool:
        return bool(self.columns)


FAIRNESS_METRICS = ("demographic_parity", "equal_opportunity", "equalized_odds")


class FairnessConfig(_Table):
    attributes: Annotated[tuple[Annotated[str, NOT_EMPTY], ...], doc(
        "Protected attributes: feature names whose values are the groups compared, e.g. `[\"gender\"]`. Each is "
        "read as categorical (a number by its JSON spelling). Empty: no fairness monitoring.",
        default="`[]`")] = ()
    favorable: Annotated[str, doc(
        "The favourable outcome: a predicted label (compared by its JSON spelling, e.g. `\"1\"` or `\"approve\"`)"
        "; a prediction with a score and no label is favourable at a score at or above `decision_threshold`. "
        "The ground-truth label that is the positive class for the true- and false-positive rates.")] = "1"
    decision_threshold: Annotated[float, Meta(ge=0, le=1), doc(
        "A prediction without a predicted label is favourable when its score is at or above this.")] = 0.5
    metrics: Annotated[tuple[Literal["demographic_parity", "equal_opportunity", "equalized_odds"], ...], doc(
        "What is compared between groups: `demographic_parity` (favourable-outcome rate, from predictions "
        "alone), `equal_opportunity` (true-positive rate, from joined labels), `equalized_odds` (true- and "
        "false-positive rate, from joined labels). Each (attribute, metric) is one test of the model's "
        "false-alarm budget.",
        checks="each `\"demographic_parity\"`, `\"equal_opportunity\"` or `\"equalized_odds\"`")] = (
        "demographic_parity", "equal_opportunity")
    max_gap: Annotated[float, Meta(gt=0, lt=1), doc(
        "The largest tolerated difference between two groups' rates. A `fairness` alert fires only when a "
        "window shows a pair of groups further apart than this with the significance the model's budget allows "
        "(two-proportion tests of gap > `max_gap`, Holm-corrected for the pairs compared); critical from twice "
        "this gap. It resolves at the first window whose largest gap is below `detectors.hysteresis` × this.")] = 0.1
    window: Annotated[int, Meta(ge=100, le=100_000_000), doc(
        "Predictions per tumbling window of demographic parity (per partition and model; with `decisions = "
        "\"model\"` the model's window over all partitions, ending on a bucket boundary).")] = 5_000
    label_window: Annotated[int, Meta(ge=100, le=100_000_000), doc(
        "Joined (prediction, label) pairs per tumbling window of equal opportunity and equalized odds (per "
        "partition and model; with `decisions = \"model\"` the model's window of the pairs of all partitions, "
        "by their labels' time).")] = 2_000
    min_group: Annotated[int, Meta(ge=5), doc(
        "A group takes part in a window's comparison only with at least this many events there (for the "
        "true-positive rate: labelled positives; for the false-positive rate: labelled negatives).")] = 100
    max_groups: Annotated[int, Meta(ge=2, le=100), doc(
        "Groups per attribute: the attribute's most frequent categories in the model's reference (at most "
        "this many, and at most `detectors.psi.top_k`); an attribute the reference holds as numeric takes the "
        "first this many values it sees (declare it `categorical` under `features` to group it by the "
        "reference). Every other value counts in the group `__other__`, a missing one (absent or null) in "
        "`__missing__`, which is shown but never compared.")] = 10


class ModelConfig(_Table):
    model_id: Annotated[str, INTERNAL] = ""  # the table's name, `<id>` in [models.<id>]
    reference: ReferenceConfig = ReferenceConfig()
    features: Annotated[dict[str, FeatureKind] | None, doc(
        "The features to monitor and their kind, e.g. `features = { amount = \"numeric\", country = \"categorical\" }`"
        ". Absent: every feature seen in the reference events, numeric when all its non-null values are numbers, "
        "categorical otherwise. When given, only the listed features are monitored (`{}` monitors no feature; "
        "prediction, latency and labels still are). A `stored` reference keeps the kinds it was built with. A listed"
        " feature the reference has no profile of (absent from every reference event, e.g. a header `Income` for "
        "`income`, or no value of its kind) would never be monitored: `reference build` refuses to store such a "
        "reference (naming the feature, the reference's features and a close match), `run` refuses to start with "
        "such a stored reference, and for a warm-up reference the service logs one ERROR line per model, sets "
        "`stream_monitor_unmonitored_columns{model}` and lists the feature as NOT MONITORED on the status page and "
        "in `status`.",
        checks="each value `\"numeric\"` or `\"categorical\"`.", default="absent",
        type="table: feature name → `\"numeric\"` | `\"categorical\"`")] = None
    detectors: DetectorsConfig = DetectorsConfig()
    performance: PerformanceConfig = PerformanceConfig()
    oip: OipConfig = OipConfig()
    retraining: ModelRetrainingConfig = ModelRetrainingConfig()
    segments: SegmentsConfig = SegmentsConfig()
    fairness: FairnessConfig = FairnessConfig()
    decisions: Annotated[Literal["partition", "model"], doc(
        "Who decides the model's detectors and episodes. `\"model\"` (the default): the model's events from all "
        "partitions and topics, however they are keyed (by `model_id`, by `event_id`, round-robin) and however "
        "many instances share them. PSI, KS, data quality, latency's p95, label drift, the realized performance's "
        "floors and ceilings, the joint test, the estimated performance and demographic parity are decided over "
        "the model's merged windows; every episode (ADWIN and Page-Hinkley too) is the model's, announced once; "
        "the warm-up reference is the model's, one for all partitions (each partition summarises its first "
        "`reference.events` events and waits until the model's reference is built). Segments, "
        "equal opportunity and equalized odds are the model's too. See docs/MODEL_DECISIONS.md. `\"partition\"`: each "
        "input partition decides on its own events with its own warm-up reference (a model spread over 4 "
        "partitions announces a change up to 4 times); alerts always name a partition and offset.",
        checks="`\"partition\"` or `\"model\"`.")] = "model"
    merge_bucket_seconds: Annotated[float, Meta(gt=0), doc(
        "With `decisions = \"model\"`: the event-time bucket each partition sketches the model's events in; a "
        "model window ends on a bucket boundary.", checks="`> 0`, whole milliseconds")] = 1.0
    merge_lateness_seconds: Annotated[float, Meta(ge=0), doc(
        "With `decisions = \"model\"`: a partition's watermark is its largest event time minus this; buckets "
        "before the watermark are closed (a later event counts in the oldest open bucket).")] = 2.0
    merge_idle_seconds: Annotated[float, Meta(gt=0), doc(
        "With `decisions = \"model\"`: a partition at its log end that receives nothing for this long is idle: it "
        "closes its open buckets and no longer holds the model's windows back (one that never received a message "
        "too). A partition waiting for a model's reference holds back no model it has never seen an event of, and "
        "after this long none but the one it waits for.")] = 5.0
    merge_max_buckets: Annotated[int, AT_LEAST_1, doc(
        "With `decisions = \"model\"`: closed partials kept in Redis per partition and model until merged; past "
        "it the oldest are dropped and counted in `stream_monitor_merge_partials_dropped_total`.")] = 3_600

    @property
    def by_model(self) -> bool:
        """Whether the model's decisions are model-level (docs/MODEL_DECISIONS.md)."""
        return self.decisions == "model"


class AlertmanagerConfig(_Table):
    url: Annotated[str, doc(
        "Prometheus Alertmanager to post every firing and resolved alert to (its v2 API, `URL/api/v2/alerts`), "
        "after the broker has acknowledged the alert; empty: off. Posting happens on a thread of its own: an "
        "unreachable Alertmanager is logged once when it starts and once when it ends, counted, and never "
        "pauses processing or the checkpoint. See \"Alertmanager\" in the README.",
        checks="empty, or an `http://` or `https://` URL; a password in it is shown as `***` everywhere.")] = ""
    timeout_seconds: Annotated[float, POSITIVE, doc(
        "Timeout of one POST (connect and answer).")] = 5.0
    resend_seconds: Annotated[float, POSITIVE, doc(
        "A firing alert is posted again this often, with `endsAt` 4 × this ahead, so that Alertmanager does not "
        "resolve it by itself while the service runs (after the service stops it does, 4 × this later). A "
        "resolved alert is posted with `endsAt` = now and then no more.")] = 60.0
    batch_size: Annotated[int, AT_LEAST_1, doc(
        "Most alerts in one POST.")] = 100
    max_queue: Annotated[int, AT_LEAST_1, doc(
        "Most alerts waiting to be posted (while Alertmanager is unreachable): past it the oldest are dropped and "
        "counted in `stream_monitor_alertmanager_alerts_dropped_total`.")] = 10_000
    max_backoff_seconds: Annotated[float, POSITIVE, doc(
        "Longest wait between two attempts while Alertmanager is unreachable (the wait doubles from 0.5 s up to "
        "this, with jitter).")] = 30.0
    bearer_token_env: Annotated[str, doc(
        "Name of the environment variable that holds a bearer token for a protected Alertmanager (sent as "
        "`Authorization: Bearer …`); the token itself is never in the file. Empty: no token.",
        checks="a variable name; it must be set (not empty) when `run` starts; not together with basic auth.")] = ""
    basic_auth_user_env: Annotated[str, doc(
        "Name of the environment variable that holds the user for HTTP basic auth. Empty: no basic auth.",
        checks="together with `basic_auth_password_env`; both variables must be set when `run` starts.")] = ""
    basic_auth_password_env: Annotated[str, doc(
        "Name of the environment variable that holds the password for HTTP basic auth.",
        checks="together with `basic_auth_user_env`.")] = ""
    status_page_url: Annotated[str, doc(
        "Where operators open this service's status page (e.g. behind an ingress): each posted alert links to it "
        "(annotation `status_page`, and its `generatorURL`). Empty: no link.",
        checks="empty, or an `http://` or `https://` URL.")] = ""

    def __repr__(self) -> str:  # the URLs may hold a password
        return (f"AlertmanagerConfig(url={redact_url(self.url)!r}, timeout_seconds={self.timeout_seconds!r}, "
                f"resend_seconds={self.resend_seconds!r}, batch_size={self.batch_size!r}, "
                f"max_queue={self.max_queue!r}, max_backoff_seconds={self.max_backoff_seconds!r}, "
                f"bearer_token_env={self.bearer_token_env!r}, basic_auth_user_env={self.basic_auth_user_env!r}, "
                f"basic_auth_password_env={self.basic_auth_password_env!r}, "
                f"status_page_url={redact_url(self.status_page_url)!r})")


class RetrainingConfig(_Table):
    topic: Annotated[str, doc(
        "The topic retraining requests are produced to (key = model id; schemas/retraining_request.json), "
        "delivered before the state that says they were made is saved, like alerts. Empty: no requests. "
        "Each model's rules are in `[models.<id>.retraining]`.")] = ""


class Config(_Table):
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    service: ServiceConfig = ServiceConfig()
    alertmanager: AlertmanagerConfig = AlertmanagerConfig()
    retraining: RetrainingConfig = RetrainingConfig()
    models: dict[str, ModelConfig] = {}
    source: Annotated[str, INTERNAL] = "<defaults>"  # the file it was read from


# --- loading -----------------------------------------------------------------------------------------


def read_config_text(path: Path) -> str:
    """The config file's text, or a :class:`ConfigError` naming the file and why it cannot be read."""
    if path.is_dir():
        raise ConfigError(str(path), "is a directory, not a config file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except PermissionError:
        raise ConfigError(str(path), "cannot be read: permission denied (the service's user needs read access)") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(str(path), f"not valid UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); "
                          "save it as UTF-8") from None


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None


def load_config(path: str | os.PathLike, environ: Mapping[str, str] | None = None) -> Config:
    """Read a TOML file, apply ``STREAM_MONITOR_*`` overrides, validate."""
    path = Path(path)
    raw = _parse_toml(path, read_config_text(path))
    config = parse_config(raw, environ=os.environ if environ is None else environ, source=str(path))
    if config.service.web_config_file:  # the file it names is read and checked at start, before anything runs
        from .web import load_web_config  # noqa: PLC0415 - `run` loads it again to serve

        load_web_config(config.service.web_config_file)
    _warn_if_exposed(path, raw)
    return config


_SECRET_WORDS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "ssl.keystore")


def _warn_if_exposed(path: Path, raw: Mapping[str, Any]) -> None:
    """A config file holding secrets should be readable by its owner only."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not mode & 0o077:
        return
    redis_url = str(raw.get("redis", {}).get("url", "")) if isinstance(raw.get("redis"), Mapping) else ""
    kafka = raw.get("kafka", {}) if isinstance(raw.get("kafka"), Mapping) else {}
    tables = [kafka.get("consumer", {}), kafka.get("producer", {})]
    keys = [k for t in tables if isinstance(t, Mapping) for k in _flatten(t)]
    manager = raw.get("alertmanager", {}) if isinstance(raw.get("alertmanager"), Mapping) else {}
    urls = [redis_url, str(manager.get("url", "")), str(manager.get("status_page_url", ""))]
    if any(redact_url(url) != url for url in urls) or any(word in k for k in keys for word in _SECRET_WORDS):
        import logging  # noqa: PLC0415

        logging.getLogger("stream_monitor").warning(
            "config file %s holds secrets and is readable by other users (mode %o): chmod 600 %s",
            path, mode & 0o777, path)


def parse_config(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                 source: str = "<dict>") -> Config:
    """Validate a parsed TOML document (plus env overrides) into a :class:`Config`."""
    document = _document(raw, _env_overrides(environ or {}))
    try:
        config = msgspec.convert(document, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise _refusal(str(exc), Config, document, []) from None
    models = {model_id: msgspec.structs.replace(model, model_id=model_id) for model_id, model in config.models.items()}
    config = msgspec.structs.replace(config, kafka=_with_sasl_credentials(config.kafka), models=models, source=source)
    remember_secrets(*_secrets_of(config.redis.url, [config.kafka.consumer, config.kafka.producer]),
                     *_secrets_of(config.alertmanager.url, []))
    _check_redis_url(config.redis.url)
    if config.redis.cluster:
        _check_cluster(config.redis.url, models)
    _check_service(config.service)
    _check_alertmanager(config.alertmanager)
    _check_client_tables(config.kafka)
    _check_input_formats(config.kafka)
    for model_id, model in models.items():
        _check_model(model, f"models.{model_id}")
    check_poll_interval(config)
    return config


def _with_sasl_credentials(kafka: KafkaConfig) -> KafkaConfig:
    """``kafka.sasl_username``/``sasl_password`` (typically from the environment) set in both client tables."""
    given = {name: value for name, value in (("sasl.username", kafka.sasl_username),
                                             ("sasl.password", kafka.sasl_password)) if value}
    if not given:
        return kafka
    return msgspec.structs.replace(kafka, consumer={**kafka.consumer, **given}, producer={**kafka.producer, **given})


def _document(raw: Mapping[str, Any], overrides: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    """The document as the schema reads it: environment overrides applied, the librdkafka tables
    flattened, the fields that are not keys refused."""
    document = dict(raw)
    if "source" in document:
        raise _unknown([], "source", Config)
    models = document.get("models")
    for model_id, table in models.items() if isinstance(models, Mapping) else ():
        if isinstance(table, Mapping) and "model_id" in table:
            raise _unknown(["models", model_id], "model_id", ModelConfig)
    for (section, key), value in overrides.items():
        if isinstance(table := document.get(section, {}), Mapping):
            document[section] = {**table, key: value}
    if isinstance(kafka := document.get("kafka"), Mapping):
        document["kafka"] = {**kafka, **{name: _flatten(kafka[name]) for name in ("consumer", "producer")
                                         if isinstance(kafka.get(name), Mapping)}}
    return document


# --- a refusal of the schema, in the words of the key --------------------------------------------------


def _refusal(text: str, annotation: Any, node: Any, keys: list[str], inherited: str = "") -> ConfigError:
    """msgspec's ``Expected `int` >= 2 - at `$.models[...].detectors.psi.bins``` as
    ``models.fraud.detectors.psi.bins: must be 2..100, got 1``: the path is followed through the
    document (an entry of a table of free-form keys, ``[...]``, is found by converting each one)."""
    problem, _, at = text.partition(" - at `$")
    item = False
    for name, index in re.findall(r"\.(\w+)|\[([^\]]*)\]", at.rstrip("`")):
        base, metas, _ = _unwrap(annotation)
        if name:
            annotation, node, keys = _fields(base)[name], node[name], [*keys, name]
        elif index == "...":
            value_type = typing.get_args(base)[1]
            for key, value in node.items():
                try:
                    msgspec.convert(value, value_type, strict=True)
                except msgspec.ValidationError as exc:
                    return _refusal(str(exc), value_type, value, [*keys, key], _extra(metas, "refusal"))
            return ConfigError(".".join(keys), problem)  # not reached: msgspec refused one of them
        else:  # an item of a list: the list is what is wrong
            item = True
            break
    base, metas, _ = _unwrap(annotation)
    where = ".".join(keys)
    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", problem):
        return _unknown(keys, unknown.group(1), base)
    if typing.get_origin(base) is Literal:
        return ConfigError(where, f"must be {_alternatives(typing.get_args(base))}, got {node!r}")
    if item or ", got `" in problem:  # a value of the wrong type
        return ConfigError(where, inherited or f"must be {_phrase(base)}, got {type(node).__name__}")
    bounds = _bounds(annotation)
    return ConfigError(where, _extra(metas, "refusal") or inherited or (
        "must not be empty" if bounds == "not empty" else f"must be {bounds}, got {node}"))


def _unknown(keys: list[str], key: str, table: type) -> ConfigError:
    return ConfigError(".".join([*keys, key]), f"unknown key (expected one of: {', '.join(sorted(keys_of(table)))})")


def _unwrap(annotation: Any) -> tuple[Any, list[Meta], bool]:
    """(the type, its ``Meta`` constraints and docs, whether it may be absent) of a field's annotation."""
    metas: list[Meta] = []
    optional = False
    while True:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is Annotated:
            annotation, metas = args[0], [*metas, *(m for m in args[1:] if isinstance(m, Meta))]
        elif type(None) in args and origin is not Literal:
            annotation, optional = next(a for a in args if a is not type(None)), True
        else:
            return annotation, metas, optional


def _extra(metas: list[Meta], name: str) -> Any:
    return next((m.extra[name] for m in metas if m.extra and name in m.extra), None)


def _fields(table: type) -> dict[str, Any]:
    return typing.get_type_hints(table, include_extras=True)


def keys_of(table: type) -> list[str]:
    """The TOML keys of a schema table, in order (its fields but the internal ones)."""
    return [name for name, annotation in _fields(table).items() if not _extra(_unwrap(annotation)[1], "internal")]


def _phrase(base: Any) -> str:
    if base in (int, float, bool, str):
        return base.__name__
    return "a list of strings" if typing.get_origin(base) is tuple else "a table"


def _alternatives(values: tuple[Any, ...], code: Any = repr) -> str:
    shown = [code(v) for v in values]
    return ", ".join(shown[:-1]) + f" or {shown[-1]}" if len(shown) > 1 else shown[0]


def _bounds(annotation: Any, code: Any = str) -> str:
    """What the field's bounds accept, e.g. ``2..100``, ``at least 10``, ``> 0``, ``in (0, 1]``
    (``code`` marks the literal parts, for the docs); "" without bounds."""
    base, metas, _ = _unwrap(annotation)
    ge, gt, le, lt = (next((getattr(m, b) for m in metas if getattr(m, b) is not None), None)
                      for b in ("ge", "gt", "le", "lt"))
    if any(m.min_length or m.pattern for m in metas):
        return "not empty"
    low, high = ge if ge is not None else gt, le if le is not None else lt
    if low is None and high is None:
        return ""
    if high is None:
        if base is int and ge is not None:
            return f"at least {code(ge)}"
        return code(f"{'>=' if gt is None else '>'} {low}")
    if low is None:
        return f"at most {code(high)}"
    if base is int and ge is not None and le is not None:
        return code(f"{ge}..{le}")
    return "in " + code(f"{'[' if gt is None else '('}{low:g}, {high:g}{']' if lt is None else ')'}")


# --- what a schema cannot say -------------------------------------------------------------------------


def _check_redis_url(url: str) -> None:
    """The URL as the Redis client will read it (port, db, query options), so a typo fails at load."""
    from redis.connection import parse_url  # noqa: PLC0415 - config stays importable without Redis' client

    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url", f"must start with redis://, rediss:// or unix://, got {redact_url(url)!r}")
    if url.startswith("unix://"):
        return
    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError("redis.url", f"cannot be parsed ({redact(str(exc))}): {redact_url(url)}") from None


def _check_cluster(url: str, models: Mapping[str, Any]) -> None:
    """A Redis Cluster is reached over TCP, has only database 0 (redis-py refuses anything else), and a
    model's keys need a hash tag its id provides."""
    from redis.connection import parse_url  # noqa: PLC0415

    if url.startswith("unix://"):
        raise ConfigError("redis.cluster", "is true but redis.url is a unix:// socket: a Redis Cluster is reached "
                          "over TCP (redis:// or rediss://, any one of its nodes)")
    db = parse_url(url).get("db", 0)
    if db not in (0, None):
        raise ConfigError("redis.cluster", f"is true but redis.url selects database {db}: a Redis Cluster has only "
                          f"database 0 (end the URL in /0 or leave the database out): {redact_url(url)}")
    if "" in models:
        raise ConfigError('models.""', "an empty model id cannot be used with redis.cluster = true: a model's label "
                          "join keys share the hash tag {<model id>}, and an empty tag puts them in different slots")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_alertmanager(table: AlertmanagerConfig) -> None:
    """URLs that are URLs; credentials named by environment variables, one kind at a time."""
    for key in ("url", "status_page_url"):
        value = getattr(table, key)
        if value and (not value.startswith(("http://", "https://")) or not value.partition("://")[2].strip("/")):
            raise ConfigError(f"alertmanager.{key}", f"must be an http:// or https:// URL, got {redact_url(value)!r}")
    for key in ("bearer_token_env", "basic_auth_user_env", "basic_auth_password_env"):
        value = getattr(table, key)
        if value and not _ENV_NAME.fullmatch(value):
            raise ConfigError(f"alertmanager.{key}", f"must name an environment variable (letters, digits, _), got "
                              f"{value!r}; the credential itself goes into that variable, never into the file")
    if not table.url:
        return  # off: the credentials are not used
    if bool(table.basic_auth_user_env) != bool(table.basic_auth_password_env):
        raise ConfigError("alertmanager.basic_auth_password_env" if table.basic_auth_user_env
                          else "alertmanager.basic_auth_user_env",
                          "basic auth needs both basic_auth_user_env and basic_auth_password_env")
    if table.bearer_token_env and table.basic_auth_user_env:
        raise ConfigError("alertmanager.bearer_token_env", "give a bearer token or basic auth, not both")


def _check_service(service: ServiceConfig) -> None:
    """Upper bounds whose reason belongs in the message."""
    if service.batch_size > MAX_BATCH_SIZE:
        raise ConfigError("service.batch_size", f"must be at most {MAX_BATCH_SIZE:,} (the most the Kafka client "
                          f"fetches in one call), got {service.batch_size:,}")
    if service.poll_timeout_seconds > MAX_POLL_TIMEOUT_SECONDS:
        raise ConfigError("service.poll_timeout_seconds", f"must be at most {MAX_POLL_TIMEOUT_SECONDS:g} s, got "
                          f"{service.poll_timeout_seconds:g}: a stop (SIGTERM) is only seen between polls, and "
                          "an orchestrator kills what has not stopped within its grace period (30 s by default)")


def _check_client_tables(kafka: KafkaConfig) -> None:
    for key, own in (("bootstrap.servers", "kafka.bootstrap_servers"), ("group.id", "kafka.group_id")):
        for where, table in (("consumer", kafka.consumer), ("producer", kafka.producer)):
            if key in table:
                raise ConfigError(f"kafka.{where}.{key}", f"set {own} instead (the group id also names the state "
                                  "in Redis; one address serves consumer, producer and admin)")


def _check_input_formats(kafka: KafkaConfig) -> None:
    for topic in kafka.input_formats:
        if topic not in kafka.input_topics:
            raise ConfigError(f"kafka.input_formats.{topic}", f"is not one of kafka.input_topics "
                              f"({', '.join(kafka.input_topics)})")


def _check_model(model: ModelConfig, where: str) -> None:
    if model.merge_bucket_seconds * 1000 != int(model.merge_bucket_seconds * 1000):
        raise ConfigError(f"{where}.merge_bucket_seconds", "must be a whole number of milliseconds, got "
                          f"{model.merge_bucket_seconds:g}")
    psi = model.detectors.psi
    if psi.warning > psi.critical:
        raise ConfigError(f"{where}.detectors.psi.warning",
                          f"must be <= critical ({psi.critical:g}), got {psi.warning:g}")
    columns = model.segments.columns
    if len(set(columns)) != len(columns):
        raise ConfigError(f"{where}.segments.columns", f"names a column twice: {list(columns)}")
    missing = [c for c in columns if model.features is not None and c not in model.features]
    if missing:
        raise ConfigError(f"{where}.segments.columns", f"{missing[0]!r} is not one of the model's features "
                          f"({', '.join(sorted(model.features)) or 'none'})")
    for attribute in model.fairness.attributes:
        if model.features is not None and attribute not in model.features:
            raise ConfigError(f"{where}.fairness.attributes", f"{attribute!r} is not one of the model's features "
                              f"({', '.join(sorted(model.features)) or 'none'}): list it under [{where}.features]")
    task = model.performance.task
    # an inferred task (empty): floors apply if it turns out classification, ceilings if regression
    allowed = {"floors": CLASSIFICATION_METRICS if task in ("", "classification") else (),
               "ceilings": REGRESSION_METRICS if task in ("", "regression") else ()}
    for key, metrics in allowed.items():
        for metric in getattr(model.performance, key):
            if metric not in metrics:
                kind = "classification" if key == "floors" else "regression"
                raise ConfigError(f"{where}.performance.{key}.{metric}", f"not a {task or kind} metric "
                                  f"(allowed: {', '.join(metrics) or 'none for this task'})")


# --- environment overrides ----------------------------------------------------------------------------


def env_keys() -> dict[tuple[str, str], Any]:
    """(section, key) → default of every key an environment variable can override: the scalar keys of
    [kafka], [redis], [service], [alertmanager] and [retraining]."""
    return {(section, f.name): f.default
            for section, table in (("kafka", KafkaConfig), ("redis", RedisConfig), ("service", ServiceConfig),
                                   ("alertmanager", AlertmanagerConfig), ("retraining", RetrainingConfig))
            for f in msgspec.structs.fields(table) if isinstance(f.default, (str, int, float, tuple))}


# How an environment string becomes a value of the key's type, and what it must look like.
_FROM_ENV: dict[type, tuple[Any, str]] = {
    tuple: (lambda text: [item.strip() for item in text.split(",") if item.strip()], ""),
    bool: (lambda text: text.lower() in ("1", "true", "yes", "on"), ""),
    int: (int, "an integer"), float: (float, "a number"), str: (str, "")}


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    """``STREAM_MONITOR_<SECTION>_<KEY>`` → (section, key) for scalar keys, converted by the key's type."""
    known = env_keys()
    out: dict[tuple[str, str], Any] = {}
    for name, text in environ.items():
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if not name.startswith(ENV_PREFIX) or (section, key) not in known:
            continue
        convert, wording = _FROM_ENV[type(known[(section, key)])]
        try:
            out[(section, key)] = convert(text)
        except ValueError:
            raise ConfigError(f"{name} (env)", f"must be {wording}, got {text!r}") from None
    return out


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """librdkafka property tables: ``security.protocol = "X"`` written bare is a nested TOML table.

    >>> _flatten({"security": {"protocol": "SASL_SSL"}, "sasl.mechanism": "PLAIN"})
    {'security.protocol': 'SASL_SSL', 'sasl.mechanism': 'PLAIN'}
    """
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- librdkafka dictionaries ---------------------------------------------------------

# Properties the service owns: its correctness depends on them.
_FORCED_CONSUMER = {"enable.auto.commit": False, "enable.auto.offset.store": False}
_FORCED_PRODUCER = {"enable.idempotence": True, "acks": "all"}


def check_poll_interval(config: Config) -> None:
    """Waits for Redis or the broker happen between polls: they must end before the group gives up on us."""
    try:
        interval = float(consumer_settings(config).get("max.poll.interval.ms", 300_000)) / 1000
    except ValueError:
        raise ConfigError("kafka.consumer.max.poll.interval.ms", "must be a number of milliseconds") from None
    for key in ("redis_outage_seconds", "broker_outage_seconds"):
        if getattr(config.service, key) >= interval:
            raise ConfigError(f"service.{key}", f"must be below kafka.consumer max.poll.interval.ms ({interval:g} s), "
                              "or a long outage would get the instance thrown out of the group mid-batch")


def consumer_settings(config: Config) -> dict[str, Any]:
    """librdkafka consumer properties: defaults < [kafka.consumer] < forced."""
    settings: dict[str, Any] = {
        "bootstrap.servers": config.kafka.bootstrap_servers,
        "group.id": config.kafka.group_id,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        "max.poll.interval.ms": 300_000,
    }
    settings.update(config.kafka.consumer)
    settings.update(_FORCED_CONSUMER)
    if settings.get("group.protocol") == "consumer":
        raise ConfigError("kafka.consumer.group.protocol", "only the classic protocol is supported")
    return settings


def producer_settings(config: Config) -> dict[str, Any]:
    """librdkafka producer properties: defaults < [kafka.producer] < forced."""
    settings: dict[str, Any] = {
        "bootstrap.servers": config.kafka.bootstrap_servers,
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    settings.update(config.kafka.producer)
    settings.update(_FORCED_PRODUCER)
    return settings


def admin_settings(config: Config) -> dict[str, Any]:
    """Admin-client properties: the connection and security settings of the consumer."""
    keep = ("security.protocol", "sasl.", "ssl.", "client.id")
    settings = {k: v for k, v in config.kafka.consumer.items() if k.startswith(keep)}
    settings["bootstrap.servers"] = config.kafka.bootstrap_servers
    return settings
