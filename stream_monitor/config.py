"""Load and validate the TOML configuration.

Every key is checked at start; a wrong config raises :class:`ConfigError`
naming the key and what is wrong, e.g.

>>> parse_config({"kafka": {"input_topics": "ml.inference"}})
Traceback (most recent call last):
...
stream_monitor.errors.ConfigError: config: kafka.input_topics: must be a list of strings, got str
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

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
FEATURE_KINDS = ("numeric", "categorical")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "stream-monitor"
    input_topics: tuple[str, ...] = ("ml.inference",)
    alert_topic: str = "ml.alerts"
    dead_letter_topic: str = "ml.dead-letters"
    consumer: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # the client tables may hold credentials
        return (f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, group_id={self.group_id!r}, "
                f"input_topics={self.input_topics!r}, alert_topic={self.alert_topic!r}, "
                f"dead_letter_topic={self.dead_letter_topic!r}, consumer={redact_properties(self.consumer)!r}, "
                f"producer={redact_properties(self.producer)!r})")


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "sm"

    def __repr__(self) -> str:  # the URL may hold a password
        return f"RedisConfig(url={redact_url(self.url)!r}, namespace={self.namespace!r})"


@dataclass(frozen=True)
class ServiceConfig:
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"  # the HTTP endpoint's bind address; containers set 0.0.0.0
    web_config_file: str = ""  # TLS and basic auth (exporter-toolkit's YAML format); "" = plain HTTP, no auth
    web_workers: int = 4  # threads answering HTTP requests (connections wait in one selector, not in threads)
    web_read_timeout_seconds: float = 5.0  # a connection's request must arrive within this; answers too
    web_max_connections: int = 512  # open HTTP connections at most; beyond, the oldest waiting one is closed
    checkpoint_interval_events: int = 10_000
    checkpoint_interval_seconds: float = 5.0
    max_message_bytes: int = 1_048_576
    max_features_per_event: int = 1_000  # events with more features are dead-lettered
    max_event_id_bytes: int = 256  # events with a longer event_id (UTF-8) are dead-lettered
    batch_size: int = 1_000
    poll_timeout_seconds: float = 0.2
    reference_poll_seconds: float = 5.0  # how often stored references are checked for a new version
    redis_outage_seconds: float = 120.0  # how long processing waits for an unreachable Redis before exiting
    broker_outage_seconds: float = 120.0  # how long a checkpoint waits for alert deliveries before exiting
    producer_stall_seconds: float = 10.0  # no delivery this long while the broker answers → a new producer
    on_missing_state: str = "rebuild"  # a partition without state although the group made progress: rebuild | stop
    # What one model may cost (per partition): columns a warm-up infers when the config lists no features
    # (the first names to appear; further ones are counted, not tracked), and categories a warm-up
    # remembers per column (further ones are counted together).
    max_inferred_columns: int = 100
    max_categories_per_column: int = 10_000
    on_offset_out_of_range: str = "earliest"  # stored offset outside the partition's log: earliest | stop
    # A partition whose stored state cannot be loaded (corrupt, old pickle format) is quarantined: its
    # messages wait (pause) or are dead-lettered as quarantined_partition (dead_letter); the key is kept
    # as evidence and re-checked every quarantine_recheck_seconds.
    on_corrupt_state: str = "pause"
    quarantine_recheck_seconds: float = 30.0
    health_max_loop_age_seconds: float = 60.0  # /healthz fails when the loop has not come round for this long
    health_max_unassigned_seconds: float = 120.0  # /healthz fails when a group (re)join has lasted this long
    log_repeat_seconds: float = 30.0  # the same Kafka client log line at most once per this many seconds
    dead_letter_log_seconds: float = 60.0  # at most one dead-letter summary line per this many seconds


@dataclass(frozen=True)
class PsiConfig:
    window: int = 5_000
    bins: int = 10
    top_k: int = 20
    warning: float = 0.1  # raised to the budget's level when that is higher (small windows)
    critical: float = 0.25
    epsilon: float = 1e-4


@dataclass(frozen=True)
class KsConfig:
    enabled: bool = True
    threshold: float | None = None  # None → from the false-alarm budget


@dataclass(frozen=True)
class AdwinConfig:
    enabled: bool = True
    delta: float | None = None  # None → from the false-alarm budget
    clock: int = 32
    grace_period: int = 10
    min_window_length: int = 5
    max_buckets: int = 5


@dataclass(frozen=True)
class PageHinkleyConfig:
    enabled: bool = True
    min_instances: int = 30
    # Values are reference-normal scores (N(0, 1) on unchanged data); delta is
    # the smallest mean shift worth catching quickly, in standard deviations / 2.
    delta: float = 0.25
    threshold: float | None = None  # None → from the false-alarm budget
    alpha: float = 1.0  # river's default 0.9999 forgets the sums and cannot be calibrated


@dataclass(frozen=True)
class DataQualityConfig:
    enabled: bool = True


@dataclass(frozen=True)
class LatencyConfig:
    enabled: bool = True  # distribution shift of latency_ms (PSI, KS, ADWIN, Page-Hinkley)
    p95_ceiling_ms: float | None = None  # a window's p95 above this → latency alert


@dataclass(frozen=True)
class DetectorsConfig:
    # Expected false alarms per 10^6 events, per detector and column, on data like the reference.
    false_alarms_per_million: float = 0.1
    psi: PsiConfig = PsiConfig()
    ks: KsConfig = KsConfig()
    adwin: AdwinConfig = AdwinConfig()
    page_hinkley: PageHinkleyConfig = PageHinkleyConfig()
    data_quality: DataQualityConfig = DataQualityConfig()
    latency: LatencyConfig = LatencyConfig()
    # A point detector's (ADWIN, Page-Hinkley) episode resolves after this
    # many values without a new detection.
    resolve_after: int = 5_000
    # After a resolution, this many values pass before the same detector may fire again.
    cooldown: int = 5_000
    # A level detector (PSI, KS, data quality, p95) resolves below hysteresis × its warning level.
    hysteresis: float = 0.8


@dataclass(frozen=True)
class PerformanceConfig:
    """Ground truth: label events joined to predictions by (model_id, event_id) through Redis."""

    # on by default: label events are joined to their predictions and performance is monitored
    enabled: bool = True
    # "classification" | "regression"; empty → inferred from the model's predictions (a predicted
    # label, or scores in [0, 1] → classification; any other number → regression)
    task: str = ""
    positive_label: str = "1"  # classification: the positive class for precision, recall, F1 and AUC
    window: int = 1_000  # joined pairs in the rolling metrics
    reference_pairs: int = 1_000  # the first joined pairs: the error reference (regression)
    label_wait_seconds: float = 3_600.0  # a label that arrives before its prediction waits this long
    prediction_ttl_seconds: float = 7 * 24 * 3_600.0  # an unlabelled prediction is kept this long
    joined_retention_seconds: float = 24 * 3_600.0  # a joined pair is remembered this long (replays)
    max_pending: int = 1_000_000  # unlabelled predictions kept per model; the next one evicts the oldest
    max_pending_bytes: int = 256 * 1024 * 1024  # estimated Redis memory of the model's join; past it the oldest go
    # a performance alert when a rolling metric falls below its floor, e.g. { accuracy = 0.8, f1 = 0.5 }
    floors: Mapping[str, float] = field(default_factory=dict)
    # regression: a performance alert when a rolling error rises above its ceiling, e.g. { mae = 3.0 }
    ceilings: Mapping[str, float] = field(default_factory=dict)


CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "auc")
REGRESSION_METRICS = ("mae", "rmse")


@dataclass(frozen=True)
class ReferenceConfig:
    source: str = "warmup"  # "warmup" | "stored"
    events: int = 5_000


@dataclass(frozen=True)
class ModelConfig:
    model_id: str
    reference: ReferenceConfig = ReferenceConfig()
    features: Mapping[str, str] | None = None  # None → inferred from the reference
    detectors: DetectorsConfig = DetectorsConfig()
    performance: PerformanceConfig = PerformanceConfig()


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    service: ServiceConfig = ServiceConfig()
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    source: str = "<defaults>"


# --- loading -----------------------------------------------------------------


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
    if redact_url(redis_url) != redis_url or any(word in k for k in keys for word in _SECRET_WORDS):
        import logging  # noqa: PLC0415

        logging.getLogger("stream_monitor").warning(
            "config file %s holds secrets and is readable by other users (mode %o): chmod 600 %s",
            path, mode & 0o777, path)


def parse_config(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                 source: str = "<dict>") -> Config:
    """Validate a parsed TOML document (plus env overrides) into a :class:`Config`."""
    raw = dict(raw)
    _check_keys(raw, "", {"kafka", "redis", "service", "models"})
    sections = {name: dict(_table(raw, name, name)) for name in ("kafka", "redis", "service")}
    for name, value in _env_overrides(environ or {}).items():
        section, key = name
        sections[section][key] = value
    kafka = _build(KafkaConfig, sections["kafka"], "kafka", nested={"consumer", "producer"})
    redis = _build(RedisConfig, sections["redis"], "redis")
    remember_secrets(*_secrets_of(redis.url, [kafka.consumer, kafka.producer]))
    service = _build(ServiceConfig, sections["service"], "service")
    if not kafka.input_topics:
        raise ConfigError("kafka.input_topics", "must name at least one topic")
    if not redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url", f"must start with redis://, rediss:// or unix://, got {redact_url(redis.url)!r}")
    _check_redis_url(redis.url)
    if not 0 <= service.metrics_port <= 65535:
        raise ConfigError("service.metrics_port", f"must be 0..65535, got {service.metrics_port}")
    if not service.metrics_host.strip():
        raise ConfigError("service.metrics_host", "must not be empty (127.0.0.1: this host only; 0.0.0.0: every "
                          "interface)")
    if not 1 <= service.web_workers <= 64:
        raise ConfigError("service.web_workers", f"must be 1..64, got {service.web_workers}")
    if not 1 <= service.web_max_connections <= 10_000:
        raise ConfigError("service.web_max_connections", f"must be 1..10000, got {service.web_max_connections}")
    if not 0 < service.web_read_timeout_seconds <= 300:
        raise ConfigError("service.web_read_timeout_seconds",
                          f"must be > 0 and <= 300, got {service.web_read_timeout_seconds}")
    for key in ("checkpoint_interval_events", "max_message_bytes", "batch_size", "max_features_per_event",
                "max_event_id_bytes", "max_inferred_columns", "max_categories_per_column"):
        if getattr(service, key) < 1:
            raise ConfigError(f"service.{key}", "must be at least 1")
    if service.batch_size > MAX_BATCH_SIZE:
        raise ConfigError("service.batch_size", f"must be at most {MAX_BATCH_SIZE:,} (the most the Kafka client "
                          f"fetches in one call), got {service.batch_size:,}")
    if service.poll_timeout_seconds > MAX_POLL_TIMEOUT_SECONDS:
        raise ConfigError("service.poll_timeout_seconds", f"must be at most {MAX_POLL_TIMEOUT_SECONDS:g} s, got "
                          f"{service.poll_timeout_seconds:g}: a stop (SIGTERM) is only seen between polls, and "
                          "an orchestrator kills what has not stopped within its grace period (30 s by default)")
    if service.on_missing_state not in ("rebuild", "stop"):
        raise ConfigError("service.on_missing_state", f"must be 'rebuild' or 'stop', got {service.on_missing_state!r}")
    if service.on_offset_out_of_range not in ("earliest", "stop"):
        raise ConfigError("service.on_offset_out_of_range",
                          f"must be 'earliest' or 'stop', got {service.on_offset_out_of_range!r}")
    if service.on_corrupt_state not in ("pause", "dead_letter"):
        raise ConfigError("service.on_corrupt_state",
                          f"must be 'pause' or 'dead_letter', got {service.on_corrupt_state!r}")
    for key in ("checkpoint_interval_seconds", "poll_timeout_seconds", "reference_poll_seconds", "quarantine_recheck_seconds",
                "redis_outage_seconds", "broker_outage_seconds", "producer_stall_seconds", "health_max_loop_age_seconds",
                "health_max_unassigned_seconds", "log_repeat_seconds", "dead_letter_log_seconds"):
        if not getattr(service, key) > 0:
            raise ConfigError(f"service.{key}", "must be > 0")
    for key in ("group_id", "alert_topic", "dead_letter_topic", "bootstrap_servers"):
        if not getattr(kafka, key):
            raise ConfigError(f"kafka.{key}", "must not be empty")
    if not redis.namespace:
        raise ConfigError("redis.namespace", "must not be empty")
    for key, own in (("bootstrap.servers", "kafka.bootstrap_servers"), ("group.id", "kafka.group_id")):
        for where, table in (("consumer", kafka.consumer), ("producer", kafka.producer)):
            if key in table:
                raise ConfigError(f"kafka.{where}.{key}", f"set {own} instead (the group id also names the state "
                                  "in Redis; one address serves consumer, producer and admin)")
    models_raw = _table(raw, "models", "models")
    models = {model_id: _model(model_id, _table(models_raw, model_id, f"models.{model_id}"))
              for model_id in models_raw}
    config = Config(kafka=kafka, redis=redis, service=service, models=models, source=source)
    check_poll_interval(config)
    return config


def _check_redis_url(url: str) -> None:
    """The URL as the Redis client will read it (port, db, query options), so a typo fails at load."""
    from redis.connection import parse_url  # noqa: PLC0415 - config stays importable without Redis' client

    if url.startswith("unix://"):
        return
    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError("redis.url", f"cannot be parsed ({redact(str(exc))}): {redact_url(url)}") from None


def _model(model_id: str, raw: Mapping[str, Any]) -> ModelConfig:
    where = f"models.{model_id}"
    _check_keys(raw, where, {"reference", "features", "detectors", "performance"})
    reference = _build(ReferenceConfig, _table(raw, "reference", f"{where}.reference"), f"{where}.reference")
    if reference.source not in ("warmup", "stored"):
        raise ConfigError(f"{where}.reference.source", f"must be 'warmup' or 'stored', got {reference.source!r}")
    if reference.events < 10:
        raise ConfigError(f"{where}.reference.events", "must be at least 10")
    features = None
    if "features" in raw:
        features = dict(_table(raw, "features", f"{where}.features"))
        for name, kind in features.items():
            if kind not in FEATURE_KINDS:
                raise ConfigError(f"{where}.features.{name}", f"must be one of {FEATURE_KINDS}, got {kind!r}")
    det_raw = _table(raw, "detectors", f"{where}.detectors")
    tables = {"psi": PsiConfig, "ks": KsConfig, "adwin": AdwinConfig, "page_hinkley": PageHinkleyConfig,
              "data_quality": DataQualityConfig, "latency": LatencyConfig}
    _check_keys(det_raw, f"{where}.detectors", set(DetectorsConfig.__dataclass_fields__))
    scalars = {k: v for k, v in det_raw.items() if k not in tables}
    detectors = _build(DetectorsConfig, scalars, f"{where}.detectors", skip=set(tables))
    detectors = replace(detectors, **{
        name: _build(cls, _table(det_raw, name, f"{where}.detectors.{name}"), f"{where}.detectors.{name}")
        for name, cls in tables.items()})
    psi = detectors.psi
    positive = {"psi.top_k": psi.top_k, "psi.epsilon": psi.epsilon, "adwin.clock": detectors.adwin.clock,
                "adwin.grace_period": detectors.adwin.grace_period,
                "adwin.min_window_length": detectors.adwin.min_window_length,
                "adwin.max_buckets": detectors.adwin.max_buckets,
                "page_hinkley.min_instances": detectors.page_hinkley.min_instances}
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{where}.detectors.{key}", "must be > 0")
    if psi.window < 10:
        raise ConfigError(f"{where}.detectors.psi.window", "must be at least 10")
    if not 2 <= psi.bins <= 100:
        raise ConfigError(f"{where}.detectors.psi.bins", "must be 2..100")
    if not 0 < psi.warning <= psi.critical:
        raise ConfigError(f"{where}.detectors.psi.warning", "must be > 0 and <= critical")
    if detectors.adwin.delta is not None and not 0 < detectors.adwin.delta < 1:
        raise ConfigError(f"{where}.detectors.adwin.delta", "must be in (0, 1)")
    for key, value in (("page_hinkley.threshold", detectors.page_hinkley.threshold),
                       ("ks.threshold", detectors.ks.threshold),
                       ("latency.p95_ceiling_ms", detectors.latency.p95_ceiling_ms),
                       ("false_alarms_per_million", detectors.false_alarms_per_million)):
        if value is not None and value <= 0:
            raise ConfigError(f"{where}.detectors.{key}", "must be > 0")
    if detectors.page_hinkley.delta < 0:
        raise ConfigError(f"{where}.detectors.page_hinkley.delta", "must be >= 0")
    if not 0 < detectors.page_hinkley.alpha <= 1:
        raise ConfigError(f"{where}.detectors.page_hinkley.alpha", "must be in (0, 1]")
    if detectors.resolve_after < 1:
        raise ConfigError(f"{where}.detectors.resolve_after", "must be at least 1")
    if detectors.cooldown < 0:
        raise ConfigError(f"{where}.detectors.cooldown", "must be >= 0")
    if not 0 < detectors.hysteresis <= 1:
        raise ConfigError(f"{where}.detectors.hysteresis", "must be in (0, 1]")
    performance = _performance(_table(raw, "performance", f"{where}.performance"), f"{where}.performance")
    return ModelConfig(model_id=model_id, reference=reference, features=features, detectors=detectors,
                       performance=performance)


def _performance(raw: Mapping[str, Any], where: str) -> PerformanceConfig:
    limits = {key: dict(_table(raw, key, f"{where}.{key}")) for key in ("floors", "ceilings")}
    performance = _build(PerformanceConfig, {k: v for k, v in raw.items() if k not in limits}, where,
                         skip=set(limits))
    if performance.task not in ("", "classification", "regression"):
        raise ConfigError(f"{where}.task", f"must be 'classification' or 'regression', got {performance.task!r}")
    # an inferred task (empty): floors apply if it turns out classification, ceilings if regression
    allowed = {"floors": CLASSIFICATION_METRICS if performance.task in ("", "classification") else (),
               "ceilings": REGRESSION_METRICS if performance.task in ("", "regression") else ()}
    for key, table in limits.items():
        for metric, value in table.items():
            if metric not in allowed[key]:
                task = "classification" if key == "floors" else "regression"
                raise ConfigError(f"{where}.{key}.{metric}", f"not a {performance.task or task} metric "
                                  f"(allowed: {', '.join(allowed[key]) or 'none for this task'})")
            table[metric] = _typed(value, float, f"{where}.{key}.{metric}")
    for key in ("window", "reference_pairs", "max_pending"):
        if getattr(performance, key) < 10:
            raise ConfigError(f"{where}.{key}", "must be at least 10")
    if performance.max_pending_bytes < 65_536:
        raise ConfigError(f"{where}.max_pending_bytes", f"must be at least 65536, got {performance.max_pending_bytes}")
    for key in ("label_wait_seconds", "prediction_ttl_seconds", "joined_retention_seconds"):
        if not getattr(performance, key) > 0:
            raise ConfigError(f"{where}.{key}", "must be > 0")
    return replace(performance, **limits)


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    """``STREAM_MONITOR_<SECTION>_<KEY>`` → (section, key) for scalar keys."""
    known = {"kafka": KafkaConfig, "redis": RedisConfig, "service": ServiceConfig}
    out: dict[tuple[str, str], Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        cls = known.get(section)
        if cls is None or key not in cls.__dataclass_fields__ or key in ("consumer", "producer"):
            continue
        default = cls.__dataclass_fields__[key].default
        where = f"{name} (env)"
        if isinstance(default, tuple):
            out[(section, key)] = [item.strip() for item in value.split(",") if item.strip()]
        elif isinstance(default, bool):
            out[(section, key)] = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            try:
                out[(section, key)] = int(value)
            except ValueError:
                raise ConfigError(where, f"must be an integer, got {value!r}") from None
        elif isinstance(default, float):
            try:
                out[(section, key)] = float(value)
            except ValueError:
                raise ConfigError(where, f"must be a number, got {value!r}") from None
        else:
            out[(section, key)] = value
    return out


def _table(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"must be a table, got {type(value).__name__}")
    return value


def _check_keys(raw: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            full = f"{where}.{key}" if where else key
            raise ConfigError(full, f"unknown key (expected one of: {', '.join(sorted(allowed))})")


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


def _typed(value: Any, expected: type, where: str) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is not bool and isinstance(value, bool):
        raise ConfigError(where, f"must be {expected.__name__}, got bool")
    if not isinstance(value, expected):
        raise ConfigError(where, f"must be {expected.__name__}, got {type(value).__name__}")
    return value


def _build(cls: type, raw: Mapping[str, Any], where: str, nested: set[str] = frozenset(),
           skip: set[str] = frozenset()) -> Any:
    """Build a frozen dataclass from a table, type-checking each key against its default."""
    fields = cls.__dataclass_fields__
    _check_keys(raw, where, set(fields) - set(skip))
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{where}.{key}"
        if key in nested:
            table = _flatten(_table(raw, key, full))
            for prop, prop_value in table.items():
                if not isinstance(prop_value, (str, int, float, bool)):
                    raise ConfigError(f"{full}.{prop}", "librdkafka properties must be strings, numbers or booleans")
            kwargs[key] = dict(table)
            continue
        default = fields[key].default
        if default is None:  # optional numbers: absent means "derived"
            kwargs[key] = _typed(value, float, full)
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(full, f"must be a list of strings, got {type(value).__name__}")
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = _typed(value, type(default), full)
    return cls(**kwargs)


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
