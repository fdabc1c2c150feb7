"""Configuration loading and validation: defaults, sections, env overrides, refusals."""

from __future__ import annotations

import textwrap

import pytest

from stream_monitor.config import (
    AdwinConfig,
    Config,
    DetectorsConfig,
    KafkaConfig,
    PageHinkleyConfig,
    PsiConfig,
    RedisConfig,
    ReferenceConfig,
    ServiceConfig,
    consumer_settings,
    load_config,
    parse_config,
    producer_settings,
)
from stream_monitor.errors import ConfigError, StreamMonitorError

FULL_TOML = """
[kafka]
bootstrap_servers = "broker-1:9092,broker-2:9092"
group_id = "sm-prod"
input_topics = ["ml.inference", "ml.labels"]
alert_topic = "ml.alerts.v2"
dead_letter_topic = "ml.dlq"

[kafka.consumer]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "PLAIN"
"sasl.username" = "monitor"
"ssl.ca.location" = "/etc/ssl/ca.pem"
"session.timeout.ms" = 45000

[kafka.producer]
"linger.ms" = 20
"security.protocol" = "SASL_SSL"

[redis]
url = "rediss://cache.internal:6380/2"
namespace = "smx"

[service]
metrics_port = 0
checkpoint_interval_events = 500
checkpoint_interval_seconds = 2
max_message_bytes = 65536
batch_size = 250
poll_timeout_seconds = 0.5

[models.fraud]
reference = { source = "warmup", events = 2000 }
features = { amount = "numeric", country = "categorical" }

[models.fraud.detectors]
psi = { window = 1000, bins = 8, warning = 0.2, critical = 0.3 }
adwin = { delta = 0.01 }
page_hinkley = { min_instances = 50, delta = 0.1, threshold = 25.0 }
resolve_after = 700

[models.churn]
reference = { source = "stored" }
"""


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def refused(raw: dict, environ: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ=environ)
    return info.value


# --- defaults and sections ---------------------------------------------------------------


def test_empty_document_gives_documented_defaults():
    """An empty config is valid and equals the documented defaults."""
    config = parse_config({})
    assert config.kafka == KafkaConfig()
    assert config.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert config.kafka.group_id == "stream-monitor"
    assert config.kafka.input_topics == ("ml.inference",)
    assert config.kafka.alert_topic == "ml.alerts"
    assert config.kafka.dead_letter_topic == "ml.dead-letters"
    assert config.redis == RedisConfig(url="redis://127.0.0.1:6379/0", namespace="sm")
    assert config.service == ServiceConfig()
    assert config.service.metrics_port == 9464
    assert dict(config.models) == {}


def test_model_defaults():
    """A model with an empty table gets the documented detector defaults."""
    model = parse_config({"models": {"fraud": {}}}).models["fraud"]
    assert model.model_id == "fraud"
    assert model.reference == ReferenceConfig(source="warmup", events=5000)
    assert model.features is None
    assert model.detectors == DetectorsConfig()
    assert model.detectors.psi == PsiConfig(window=5000, bins=10, top_k=20, warning=0.1, critical=0.25,
                                            epsilon=1e-4)
    # thresholds not given come from the false-alarm budget (None = calibrated at start)
    assert model.detectors.false_alarms_per_million == 0.1
    assert model.detectors.adwin.delta is None
    assert model.detectors.page_hinkley.threshold is None
    assert model.detectors.ks.threshold is None
    assert model.detectors.page_hinkley == PageHinkleyConfig(min_instances=30, delta=0.25, threshold=None,
                                                              alpha=1.0)
    assert model.detectors.latency.p95_ceiling_ms is None
    assert model.detectors.resolve_after == 5000
    assert model.detectors.cooldown == 5000
    assert model.detectors.hysteresis == 0.8


def test_full_file_every_section(tmp_path):
    """Every section of a full TOML file lands in the right field."""
    config = load_config(write(tmp_path, FULL_TOML), environ={})
    assert isinstance(config, Config)
    assert config.source == str(tmp_path / "config.toml")
    k = config.kafka
    assert k.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert k.group_id == "sm-prod"
    assert k.input_topics == ("ml.inference", "ml.labels")
    assert k.alert_topic == "ml.alerts.v2"
    assert k.dead_letter_topic == "ml.dlq"
    assert k.consumer["security.protocol"] == "SASL_SSL"
    assert k.consumer["session.timeout.ms"] == 45000
    assert k.producer == {"linger.ms": 20, "security.protocol": "SASL_SSL"}
    assert config.redis == RedisConfig(url="rediss://cache.internal:6380/2", namespace="smx")
    assert config.service == ServiceConfig(metrics_port=0, checkpoint_interval_events=500,
                                           checkpoint_interval_seconds=2.0, max_message_bytes=65536,
                                           batch_size=250, poll_timeout_seconds=0.5)
    assert isinstance(config.service.checkpoint_interval_seconds, float)  # int accepted for a float key

    fraud = config.models["fraud"]
    assert fraud.reference == ReferenceConfig(source="warmup", events=2000)
    assert dict(fraud.features) == {"amount": "numeric", "country": "categorical"}
    assert fraud.detectors.psi == PsiConfig(window=1000, bins=8, warning=0.2, critical=0.3)
    assert fraud.detectors.adwin == AdwinConfig(delta=0.01)
    assert fraud.detectors.page_hinkley == PageHinkleyConfig(min_instances=50, delta=0.1, threshold=25.0)
    assert fraud.detectors.resolve_after == 700

    churn = config.models["churn"]
    assert churn.reference.source == "stored"
    assert churn.detectors == DetectorsConfig()


# --- environment overrides ----------------------------------------------------------------


def test_env_overrides_beat_the_file(tmp_path):
    """STREAM_MONITOR_KAFKA_BOOTSTRAP_SERVERS and STREAM_MONITOR_REDIS_URL override the file."""
    environ = {"STREAM_MONITOR_KAFKA_BOOTSTRAP_SERVERS": "kafka.prod:9093",
               "STREAM_MONITOR_REDIS_URL": "redis://redis.prod:6379/5",
               "UNRELATED": "x"}
    config = load_config(write(tmp_path, FULL_TOML), environ=environ)
    assert config.kafka.bootstrap_servers == "kafka.prod:9093"
    assert config.redis.url == "redis://redis.prod:6379/5"
    assert config.kafka.group_id == "sm-prod"  # the rest of the file is untouched
    assert config.redis.namespace == "smx"


def test_env_overrides_apply_without_the_section_in_the_file(tmp_path):
    """An override works even when the file has no such section."""
    config = load_config(write(tmp_path, "[models.fraud]\n"),
                         environ={"STREAM_MONITOR_KAFKA_BOOTSTRAP_SERVERS": "b:1",
                                  "STREAM_MONITOR_REDIS_URL": "unix:///run/redis.sock"})
    assert config.kafka.bootstrap_servers == "b:1"
    assert config.redis.url == "unix:///run/redis.sock"


def test_explicit_environ_replaces_process_environment(tmp_path, monkeypatch):
    """load_config(environ={}) ignores os.environ; load_config() without it reads os.environ."""
    monkeypatch.setenv("STREAM_MONITOR_REDIS_URL", "redis://from-os-env:6379/0")
    path = write(tmp_path, FULL_TOML)
    assert load_config(path, environ={}).redis.url == "rediss://cache.internal:6380/2"
    assert load_config(path).redis.url == "redis://from-os-env:6379/0"


def test_env_override_types_and_ignored_names():
    """Ints and lists are parsed from env strings; unknown STREAM_MONITOR_* names are ignored."""
    config = parse_config({}, environ={"STREAM_MONITOR_SERVICE_METRICS_PORT": "9100",
                                       "STREAM_MONITOR_KAFKA_INPUT_TOPICS": "a, b,,c",
                                       "STREAM_MONITOR_NOPE_THING": "1",
                                       "STREAM_MONITOR_KAFKA_CONSUMER": "ignored"})
    assert config.service.metrics_port == 9100
    assert config.kafka.input_topics == ("a", "b", "c")
    assert config.kafka.consumer == {}


def test_env_override_is_validated_too():
    """A bad env value is refused like a bad file value, naming the variable or the key."""
    assert refused({}, {"STREAM_MONITOR_SERVICE_METRICS_PORT": "abc"}).key == \
        "STREAM_MONITOR_SERVICE_METRICS_PORT (env)"
    assert refused({}, {"STREAM_MONITOR_REDIS_URL": "http://nope"}).key == "redis.url"


# --- refusals name the key ------------------------------------------------------------------


@pytest.mark.parametrize("raw, key", [
    ({"kafkaa": {}}, "kafkaa"),
    ({"kafka": {"bootstrap": "x"}}, "kafka.bootstrap"),
    ({"redis": {"host": "x"}}, "redis.host"),
    ({"service": {"port": 1}}, "service.port"),
    ({"models": {"fraud": {"detector": {}}}}, "models.fraud.detector"),
    ({"models": {"fraud": {"detectors": {"kswin": {}}}}}, "models.fraud.detectors.kswin"),
    ({"models": {"fraud": {"detectors": {"psi": {"windows": 10}}}}}, "models.fraud.detectors.psi.windows"),
    ({"models": {"fraud": {"reference": {"source": "warmup", "size": 10}}}}, "models.fraud.reference.size"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_unknown_keys_are_refused(raw, key):
    """Typos are refused, not silently ignored."""
    error = refused(raw)
    assert error.key == key
    assert "unknown key" in str(error)


@pytest.mark.parametrize("raw, key", [
    ({"service": {"metrics_port": "9464"}}, "service.metrics_port"),
    ({"service": {"metrics_port": True}}, "service.metrics_port"),
    ({"service": {"batch_size": 10.5}}, "service.batch_size"),
    ({"kafka": {"input_topics": "ml.inference"}}, "kafka.input_topics"),
    ({"kafka": {"input_topics": [1, 2]}}, "kafka.input_topics"),
    ({"kafka": {"input_topics": ["ok", ""]}}, "kafka.input_topics"),
    ({"kafka": {"input_topics": []}}, "kafka.input_topics"),
    ({"kafka": {"group_id": 7}}, "kafka.group_id"),
    ({"kafka": "x"}, "kafka"),
    ({"kafka": {"consumer": "x"}}, "kafka.consumer"),
    ({"kafka": {"consumer": {"sasl.jaas": ["a"]}}}, "kafka.consumer.sasl.jaas"),
    ({"redis": {"namespace": 1}}, "redis.namespace"),
    ({"models": []}, "models"),
    ({"models": {"fraud": 3}}, "models.fraud"),
    ({"models": {"fraud": {"features": ["amount"]}}}, "models.fraud.features"),
    ({"models": {"fraud": {"detectors": {"psi": {"window": "1000"}}}}}, "models.fraud.detectors.psi.window"),
    ({"models": {"fraud": {"detectors": {"psi": {"window": 1000.0}}}}}, "models.fraud.detectors.psi.window"),
    ({"models": {"fraud": {"detectors": {"adwin": {"enabled": "yes"}}}}}, "models.fraud.detectors.adwin.enabled"),
    ({"models": {"fraud": {"detectors": {"resolve_after": "soon"}}}}, "models.fraud.detectors.resolve_after"),
    ({"models": {"fraud": {"reference": {"events": "5000"}}}}, "models.fraud.reference.events"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_wrong_types_are_refused(raw, key):
    """A value of the wrong type is refused, naming the exact key."""
    assert refused(raw).key == key


@pytest.mark.parametrize("raw, key", [
    ({"models": {"fraud": {"reference": {"source": "s3"}}}}, "models.fraud.reference.source"),
    ({"models": {"fraud": {"reference": {"events": 5}}}}, "models.fraud.reference.events"),
    ({"models": {"fraud": {"features": {"amount": "float"}}}}, "models.fraud.features.amount"),
    ({"models": {"fraud": {"detectors": {"psi": {"warning": 0.3, "critical": 0.2}}}}},
     "models.fraud.detectors.psi.warning"),
    ({"models": {"fraud": {"detectors": {"psi": {"warning": 0}}}}}, "models.fraud.detectors.psi.warning"),
    ({"models": {"fraud": {"detectors": {"psi": {"window": 5}}}}}, "models.fraud.detectors.psi.window"),
    ({"models": {"fraud": {"detectors": {"psi": {"bins": 1}}}}}, "models.fraud.detectors.psi.bins"),
    ({"models": {"fraud": {"detectors": {"adwin": {"delta": 1.5}}}}}, "models.fraud.detectors.adwin.delta"),
    ({"models": {"fraud": {"detectors": {"page_hinkley": {"threshold": 0}}}}},
     "models.fraud.detectors.page_hinkley.threshold"),
    ({"models": {"fraud": {"detectors": {"resolve_after": 0}}}}, "models.fraud.detectors.resolve_after"),
    ({"service": {"metrics_port": -1}}, "service.metrics_port"),
    ({"service": {"metrics_port": 70000}}, "service.metrics_port"),
    ({"service": {"batch_size": 0}}, "service.batch_size"),
    ({"service": {"max_message_bytes": 0}}, "service.max_message_bytes"),
    ({"redis": {"url": "http://127.0.0.1:6379"}}, "redis.url"),
    ({"redis": {"url": "127.0.0.1:6379"}}, "redis.url"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_values_are_refused(raw, key):
    """Out-of-range or unsupported values are refused, naming the exact key."""
    error = refused(raw)
    assert error.key == key
    assert str(error).startswith(f"config: {key}: ")
    assert isinstance(error, StreamMonitorError)


def test_psi_warning_equal_to_critical_is_accepted():
    """warning == critical is allowed (warning must not exceed critical)."""
    psi = parse_config({"models": {"m": {"detectors": {"psi": {"warning": 0.2, "critical": 0.2}}}}}) \
        .models["m"].detectors.psi
    assert psi.warning == psi.critical == 0.2


def test_invalid_toml_is_refused_naming_the_file(tmp_path):
    """A file that is not TOML is refused; the key is the file's path."""
    path = write(tmp_path, "[kafka\nbootstrap_servers = ")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == str(path)
    assert "not valid TOML" in info.value.problem


def test_missing_file_is_refused(tmp_path):
    """A missing file is a ConfigError, not a FileNotFoundError."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == str(path)
    assert info.value.problem == "file not found"


def test_error_in_file_names_the_key(tmp_path):
    """A validation error in a file carries the dotted key, not the path."""
    path = write(tmp_path, """
        [models.fraud.detectors]
        psi = { warning = 0.5, critical = 0.25 }
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "models.fraud.detectors.psi.warning"


# --- librdkafka dictionaries ----------------------------------------------------------------


def test_consumer_settings_force_manual_offsets_and_pass_security_through():
    """The service owns offset commits; SASL/SSL properties pass through unchanged."""
    config = parse_config({"kafka": {
        "bootstrap_servers": "b:9092", "group_id": "g",
        "consumer": {"enable.auto.commit": True, "enable.auto.offset.store": True,
                     "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                     "sasl.username": "u", "sasl.password": "p", "ssl.ca.location": "/ca.pem",
                     "auto.offset.reset": "latest"}}})
    settings = consumer_settings(config)
    assert settings["enable.auto.commit"] is False
    assert settings["enable.auto.offset.store"] is False
    assert settings["bootstrap.servers"] == "b:9092"
    assert settings["group.id"] == "g"
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
    assert settings["sasl.username"] == "u"
    assert settings["sasl.password"] == "p"
    assert settings["ssl.ca.location"] == "/ca.pem"
    assert settings["auto.offset.reset"] == "latest"  # a user choice that is not forced


def test_sasl_credentials_from_the_environment_reach_every_client():
    """STREAM_MONITOR_KAFKA_SASL_USERNAME/PASSWORD (e.g. from a Kubernetes Secret) set sasl.username and
    sasl.password of the consumer, the producer and `status`, over the tables; the rest of the tables stays."""
    from stream_monitor.config import admin_settings

    config = parse_config({"kafka": {
        "consumer": {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "file"},
        "producer": {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}}},
        environ={"STREAM_MONITOR_KAFKA_SASL_USERNAME": "monitor", "STREAM_MONITOR_KAFKA_SASL_PASSWORD": "Env-Secret-9"})
    for settings in (consumer_settings(config), producer_settings(config), admin_settings(config)):
        assert settings["sasl.username"] == "monitor"
        assert settings["sasl.password"] == "Env-Secret-9"
        assert settings["security.protocol"] == "SASL_SSL"
        assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
    assert "Env-Secret-9" not in repr(config)


def test_sasl_credentials_unset_leave_the_tables_alone():
    config = parse_config({"kafka": {"consumer": {"sasl.username": "u", "sasl.password": "p"}}})
    assert consumer_settings(config)["sasl.username"] == "u" and consumer_settings(config)["sasl.password"] == "p"
    assert "sasl.username" not in producer_settings(config)


def test_consumer_settings_defaults():
    """Without [kafka.consumer]: earliest, auto-commit off."""
    settings = consumer_settings(parse_config({}))
    assert settings["auto.offset.reset"] == "earliest"
    assert settings["enable.auto.commit"] is False
    assert settings["enable.auto.offset.store"] is False


def test_next_generation_group_protocol_is_refused():
    """group.protocol=consumer (KIP-848) is refused when the config is loaded, naming the key."""
    with pytest.raises(ConfigError) as info:
        parse_config({"kafka": {"consumer": {"group.protocol": "consumer"}}})
    assert info.value.key == "kafka.consumer.group.protocol"
    classic = parse_config({"kafka": {"consumer": {"group.protocol": "classic"}}})
    assert consumer_settings(classic)["group.protocol"] == "classic"


def test_producer_settings_force_idempotence():
    """The producer is always idempotent with acks=all, whatever the user sets."""
    config = parse_config({"kafka": {"bootstrap_servers": "b:1", "producer": {
        "enable.idempotence": False, "acks": "1", "linger.ms": 50, "security.protocol": "SSL"}}})
    settings = producer_settings(config)
    assert settings["enable.idempotence"] is True
    assert settings["acks"] == "all"
    assert settings["linger.ms"] == 50
    assert settings["security.protocol"] == "SSL"
    assert settings["bootstrap.servers"] == "b:1"


def test_dotted_librdkafka_keys_written_bare_in_toml_pass_through(tmp_path):
    """`security.protocol = "SASL_SSL"` unquoted under [kafka.consumer] is the natural TOML spelling.

    TOML reads a bare dotted key as nested tables ({"security": {"protocol": ...}}); the
    configuration reference says [kafka.consumer] properties such as security.protocol and sasl.* pass
    through, so the nested form must be flattened back to the librdkafka property name.
    """
    path = write(tmp_path, """
        [kafka.consumer]
        security.protocol = "SASL_SSL"
        sasl.mechanism = "PLAIN"
        ssl.ca.location = "/etc/ssl/ca.pem"
    """)
    settings = consumer_settings(load_config(path, environ={}))
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["sasl.mechanism"] == "PLAIN"
    assert settings["ssl.ca.location"] == "/etc/ssl/ca.pem"


def test_redis_url_is_parsed_at_load_and_never_quoted_with_its_password():
    parse_config({"redis": {"url": "redis://h:6379/0?password=s3cret-pw&socket_timeout=2"}})  # accepted
    for url, shown in (("redis://app:s3cret-pw@h:notaport/0", "redis://app:***@h:notaport/0"),
                       ("redis://h:6379/0?password=s3cret-pw&socket_timeout=soon",
                        "redis://h:6379/0?password=***&socket_timeout=soon"),
                       ("http://app:s3cret-pw@h:6379/0", "http://app:***@h:6379/0")):
        with pytest.raises(ConfigError) as caught:
            parse_config({"redis": {"url": url}})
        assert caught.value.key == "redis.url" and "s3cret-pw" not in str(caught.value)
        assert shown in str(caught.value)


def test_sigterm_delaying_and_client_refused_values_are_bounded_at_load():
    for key, value in (("poll_timeout_seconds", 3600.0), ("batch_size", 1_000_001)):
        with pytest.raises(ConfigError) as caught:
            parse_config({"service": {key: value}})
        assert caught.value.key == f"service.{key}"


# --- the schema's refusals, in the words of the key ---------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({"models": {"fraud": {"detectors": {"psi": {"bins": 1}}}}}, "models.fraud.detectors.psi.bins: must be 2..100, got 1"),
    ({"models": {"fraud": {"detectors": {"psi": {"window": 5}}}}},
     "models.fraud.detectors.psi.window: must be at least 10, got 5"),
    ({"models": {"fraud": {"detectors": {"adwin": {"delta": 1.5}}}}},
     "models.fraud.detectors.adwin.delta: must be in (0, 1), got 1.5"),
    ({"models": {"fraud": {"detectors": {"hysteresis": 0}}}}, "models.fraud.detectors.hysteresis: must be in (0, 1], got 0"),
    ({"models": {"fraud": {"detectors": {"page_hinkley": {"delta": -1}}}}},
     "models.fraud.detectors.page_hinkley.delta: must be >= 0, got -1"),
    ({"models": {"fraud": {"detectors": {"ks": {"threshold": 0}}}}}, "models.fraud.detectors.ks.threshold: must be > 0, got 0"),
    ({"models": {"fraud": {"detectors": {"ks": {"threshold": "x"}}}}},
     "models.fraud.detectors.ks.threshold: must be float, got str"),
    ({"models": {"fraud": {"detectors": {"psi": {"warning": 0.3, "critical": 0.2}}}}},
     "models.fraud.detectors.psi.warning: must be <= critical (0.2), got 0.3"),
    ({"service": {"metrics_port": 70000}}, "service.metrics_port: must be 0..65535, got 70000"),
    ({"service": {"metrics_port": True}}, "service.metrics_port: must be int, got bool"),
    ({"service": {"metrics_host": " "}},
     "service.metrics_host: must not be empty (127.0.0.1: this host only; 0.0.0.0: every interface)"),
    ({"service": {"on_corrupt_state": 1}}, "service.on_corrupt_state: must be 'pause' or 'dead_letter', got 1"),
    ({"kafka": {"group_id": ""}}, "kafka.group_id: must not be empty"),
    ({"kafka": {"input_topics": ["ok", ""]}}, "kafka.input_topics: must be a list of strings, got list"),
    ({"kafka": {"input_topics": []}}, "kafka.input_topics: must name at least one topic"),
    ({"kafka": {"consumer": {"sasl": {"jaas": ["a"]}}}},
     "kafka.consumer.sasl.jaas: librdkafka properties must be strings, numbers or booleans"),
    ({"kafka": "x"}, "kafka: must be a table, got str"),
    ({"models": {"a": {}, "fraud": {"features": {"amount": "numeric", "country": "float"}}}},
     "models.fraud.features.country: must be 'numeric' or 'categorical', got 'float'"),
    ({"models": {"fraud": {"performance": {"task": "classification", "floors": {"accuracy": True}}}}},
     "models.fraud.performance.floors.accuracy: must be float, got bool"),
    ({"models": {"fraud": {"performance": {"task": "regression", "floors": {"accuracy": 0.8}}}}},
     "models.fraud.performance.floors.accuracy: not a regression metric (allowed: none for this task)"),
    ({"models": {"fraud": {"performance": {"window_size": 1}}}},
     "models.fraud.performance.window_size: unknown key (expected one of: ceilings, enabled, floors, "
     "joined_retention_seconds, label_wait_seconds, max_pending, max_pending_bytes, positive_label, "
     "prediction_ttl_seconds, reference_pairs, task, window)"),
    ({"models": {"fraud": {"model_id": "other"}}},
     "models.fraud.model_id: unknown key (expected one of: decisions, detectors, fairness, features, merge_bucket_seconds, "
     "merge_idle_seconds, merge_lateness_seconds, merge_max_buckets, oip, performance, reference, retraining, segments)"),
    ({"source": "x.toml"}, "source: unknown key (expected one of: alertmanager, kafka, models, redis, retraining, service)"),
], ids=lambda v: v.split(":")[0] if isinstance(v, str) else None)
def test_schema_refusals_name_the_key_and_what_was_given(raw, message):
    """msgspec's path and rule become the dotted key and today's wording, plus the value given."""
    assert str(refused(raw)) == f"config: {message}"


def test_env_values_are_checked_by_the_schema_and_name_the_key():
    assert str(refused({}, {"STREAM_MONITOR_SERVICE_WEB_WORKERS": "65"})) == \
        "config: service.web_workers: must be 1..64, got 65"
    assert str(refused({}, {"STREAM_MONITOR_KAFKA_INPUT_TOPICS": " , "})) == \
        "config: kafka.input_topics: must name at least one topic"
    assert str(refused({}, {"STREAM_MONITOR_SERVICE_BATCH_SIZE": "1.5"})) == \
        "config: STREAM_MONITOR_SERVICE_BATCH_SIZE (env): must be an integer, got '1.5'"


def test_config_objects_are_frozen_structs_with_replace():
    """Attribute access, equality, msgspec.structs.replace; no assignment to a loaded config."""
    import msgspec

    config = parse_config({"models": {"fraud": {"detectors": {"psi": {"bins": 8}}}}})
    model = config.models["fraud"]
    assert model.model_id == "fraud" and model.detectors.psi.bins == 8 and config.service.batch_size == 1000
    wider = msgspec.structs.replace(model.detectors.psi, bins=20)
    assert wider == PsiConfig(bins=20) and model.detectors.psi.bins == 8
    with pytest.raises(AttributeError):
        config.service.batch_size = 5  # type: ignore[misc]
    assert isinstance(config.service.checkpoint_interval_seconds, float)
    assert parse_config({"service": {"poll_timeout_seconds": 1}}).service.poll_timeout_seconds == 1.0


@pytest.mark.parametrize("model, expected", [
    ({}, "81aa74a11757b1a6"),
    ({"detectors": {"psi": {"warning": 1, "critical": 2, "epsilon": 1}, "adwin": {"delta": 0.5}, "ks": {"threshold": 1},
                    "page_hinkley": {"threshold": 3, "alpha": 1, "delta": 0}, "latency": {"p95_ceiling_ms": 250},
                    "hysteresis": 1, "false_alarms_per_million": 2}}, "d4fd562798c407e3"),
    ({"features": {"a": "numeric"}, "performance": {"task": "classification", "floors": {"accuracy": 1, "f1": 0.5}}},
     "69b94b7833f3a2a1"),
])
def test_the_settings_stored_with_state_mean_what_they_meant(model, expected):
    """The fingerprints of a model's settings, as the dataclass config computed them before the schema
    moved to msgspec: the same config must not re-baseline the detector state stored under it."""
    from stream_monitor.partition import fingerprint, model_settings

    config = parse_config({"models": {"fraud": model}})
    assert fingerprint(model_settings(config.models["fraud"], config.service)) == expected
