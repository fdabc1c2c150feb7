"""docs/CONFIGURATION.md documents exactly the keys stream_monitor/config.py accepts.

The accepted keys come from the config schema (``msgspec.structs.fields``,
recursively from :class:`Config`), mapped to the dotted paths a TOML file
uses; the documented keys are the first-column `` `dotted.path` `` entries of
the reference tables.
"""

import collections.abc
import re
import tomllib
import types
import typing
from pathlib import Path

import msgspec
import pytest

from stream_monitor import config as config_module
from stream_monitor import configdocs
from stream_monitor.config import (AlertmanagerConfig, Config, ENV_PREFIX, KafkaConfig, ModelConfig, RedisConfig,
                                   RetrainingConfig, ServiceConfig,
                                   consumer_settings, parse_config, producer_settings)
from stream_monitor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CONFIGURATION.md"
SECTIONS = ("kafka", "redis", "service", "alertmanager", "retraining", "models")
# Schema fields that are not TOML keys.
INTERNAL = {(Config, "source"), (ModelConfig, "model_id")}
MODEL = "models.<id>"
ROW_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|")


def _hints(cls):
    return typing.get_type_hints(cls, vars(config_module))


def _walk(cls, prefix):
    """({leaf path: type hint}, {table path}) of a config table at ``prefix``."""
    leaves, tables = {}, set()
    hints = _hints(cls)
    for f in msgspec.structs.fields(cls):
        if (cls, f.name) in INTERNAL:
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        hint = hints[f.name]
        if cls is Config and f.name == "models":  # Mapping[str, ModelConfig]: one table per model id
            tables |= {"models", MODEL}
            sub_leaves, sub_tables = _walk(ModelConfig, MODEL)
        elif isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            tables.add(path)
            sub_leaves, sub_tables = _walk(hint, path)
        else:
            leaves[path] = hint
            continue
        leaves.update(sub_leaves)
        tables |= sub_tables
    return leaves, tables


def _is_mapping(hint):
    """dict[...] or dict[...] | None: a table of free-form keys (librdkafka properties, features)."""
    candidates = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(typing.get_origin(c) in (dict, typing.Mapping, collections.abc.Mapping) for c in candidates)


@pytest.fixture(scope="module")
def accepted():
    return _walk(Config, "")


@pytest.fixture(scope="module")
def doc():
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def documented(doc):
    """{dotted path: table row} of every reference-table row whose first cell is a config path."""
    out = {}
    for line in doc.splitlines():
        match = ROW_KEY.match(line)
        if match and match.group(1).split(".")[0] in SECTIONS:
            key = match.group(1)
            assert key not in out, f"{key} is documented twice"
            out[key] = line
    return out


def test_walk_finds_the_known_shape(accepted):
    """Guard against a walk that silently finds nothing."""
    leaves, tables = accepted
    assert {"kafka.bootstrap_servers", "kafka.consumer", "redis.url", "service.metrics_port",
            "models.<id>.reference.source", "models.<id>.features", "models.<id>.detectors.psi.window",
            "models.<id>.detectors.hysteresis", "models.<id>.detectors.latency.p95_ceiling_ms"} <= leaves.keys()
    assert {"kafka", "redis", "service", "models", "models.<id>", "models.<id>.detectors",
            "models.<id>.detectors.psi"} <= tables
    assert "source" not in leaves and f"{MODEL}.model_id" not in leaves  # internal fields
    assert len(leaves) > 40


def test_every_accepted_key_is_documented(accepted, documented):
    leaves, _ = accepted
    missing = sorted(leaves.keys() - documented.keys())
    assert not missing, f"keys accepted by config.py but not in docs/CONFIGURATION.md: {missing}"


def test_every_documented_key_is_accepted(accepted, documented):
    leaves, tables = accepted
    stale = sorted(documented.keys() - leaves.keys() - tables)
    assert not stale, f"keys documented in docs/CONFIGURATION.md that config.py does not accept: {stale}"


def _toml_key(path):
    """(document, innermost table, key): where a dotted path lives in a parsed TOML document."""
    raw = {}
    parts = path.replace(MODEL, "models.m").split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    return raw, node, parts[-1]


def _default(path):
    cls = {"kafka": KafkaConfig, "redis": RedisConfig, "service": ServiceConfig,
           "alertmanager": AlertmanagerConfig, "retraining": RetrainingConfig}.get(path.split(".")[0])
    if cls is not None:
        return getattr(cls(), path.split(".", 1)[1])
    value = parse_config({"models": {"m": {}}}).models["m"]
    for part in path.split(".")[2:]:
        value = getattr(value, part)
    return value


def test_documented_paths_are_really_accepted_by_the_parser(accepted):
    """Each leaf, written at its dotted path with a valid value, parses, and a sibling typo is
    refused: the mapping from dataclass fields to TOML paths is the parser's."""
    leaves, _ = accepted
    for path, hint in sorted(leaves.items()):
        raw, node, key = _toml_key(path)
        default = _default(path)
        if path.endswith(".performance.floors"):
            node["task"] = "classification"
            value = {"accuracy": 0.8}
        elif path.endswith(".performance.ceilings"):
            node["task"] = "regression"
            value = {"mae": 1.0}
        elif path == "kafka.input_formats":
            value = {"ml.inference": "oip"}
        elif path.endswith(".oip.columns"):
            value = {"input-0": ["a", "b"]}
        elif _is_mapping(hint):
            value = {"client.id": "x"} if path.startswith("kafka.") else {"f": "numeric"}
        elif default is None:  # optional numbers: absent means "derived"; 0.5 suits every one of them
            value = 0.5
        elif isinstance(default, tuple):
            value = list(default)
        else:
            value = default
        node[key] = value
        parse_config(raw)  # raises ConfigError if the path is not a key
        node[key + "_not_a_key"] = value
        with pytest.raises(ConfigError):
            parse_config(raw)


def test_every_row_has_type_default_and_meaning(documented):
    for key, row in documented.items():
        cells = re.split(r"(?<!\\)\|", row.strip().strip("|"))  # `|` inside a cell is written `\|`
        assert len(cells) == 6, f"{key}: expected key | type | default | meaning | constraints | env"
        _, type_, default, meaning, constraints, env = (c.strip() for c in cells)
        assert type_ and default and meaning and constraints and env, key


def _other_value(default):
    """A valid value different from ``default``, as an environment string and as parsed."""
    if isinstance(default, tuple):
        return "topic-a, topic-b", ("topic-a", "topic-b")
    if isinstance(default, bool):
        return ("0", False) if default else ("1", True)
    if isinstance(default, (int, float)):
        return str(default + 1), default + 1
    return default + "1", default + "1"


def test_env_column_names_the_override_of_scalar_section_keys(accepted, documented):
    leaves, _ = accepted
    for path, hint in sorted(leaves.items()):
        section, _, key = path.partition(".")
        row = documented[path]
        if section in ("kafka", "redis", "service", "alertmanager", "retraining") and not _is_mapping(hint):
            variable = f"{ENV_PREFIX}{section}_{key}".upper()
            assert f"`{variable}`" in row, f"{path}: env override {variable} not documented"
            text, expected = ENUM_ALTERNATIVES.get(path) or _other_value(_default(path))
            parsed = parse_config({}, environ={variable: text})
            assert getattr(getattr(parsed, section), key) == expected, f"{variable} does not override {path}"
        else:
            assert ENV_PREFIX not in row, f"{path} cannot be overridden from the environment"


def test_documented_defaults_match_the_code(accepted, documented):
    """Plain literal defaults in the table equal the dataclass defaults."""
    leaves, _ = accepted
    for path in sorted(leaves):
        cells = re.split(r"(?<!\\)\|", documented[path].strip().strip("|"))
        written = cells[2].strip()
        default = _default(path)
        literal = re.fullmatch(r"`([^`]*)`", written)
        if default is None:
            assert written.startswith("absent"), f"{path}: default is 'absent', doc says {written!r}"
        elif isinstance(default, typing.Mapping):
            assert written in ("`{}`", "absent"), path
        else:
            assert literal, f"{path}: default {written!r} should be a literal"
            assert _parse_literal(literal.group(1)) == (list(default) if isinstance(default, tuple) else default), \
                f"{path}: doc default {written} != code default {default!r}"


def _parse_literal(text):
    return tomllib.loads(f"v = {text}")["v"]


REFUSED_IN_TABLES = {"bootstrap.servers", "group.id"}
ENUM_ALTERNATIVES = {"service.on_missing_state": ("stop", "stop"),  # keys with a fixed set of values
                     "service.on_offset_out_of_range": ("stop", "stop"),
                     "service.on_corrupt_state": ("dead_letter", "dead_letter"),
                     # keys whose values have a form of their own
                     "alertmanager.url": ("http://am:9093", "http://am:9093"),
                     "alertmanager.status_page_url": ("https://sm.example/", "https://sm.example/"),
                     **{f"alertmanager.{key}": ("AM_VARIABLE", "AM_VARIABLE")
                        for key in ("bearer_token_env", "basic_auth_user_env", "basic_auth_password_env")}}


def _forced(settings_function, table):
    """{property: value} that ``settings_function`` keeps whatever the ``[kafka.<table>]`` table says."""
    baseline = settings_function(parse_config({}))
    forced = {}
    for name, value in baseline.items():
        if name in REFUSED_IN_TABLES:  # refused outright: see test_config.py
            continue
        mark = "987654" if name.endswith(".ms") else "overridden-by-user"  # numbers are checked at load
        overridden = settings_function(parse_config({"kafka": {table: {name: mark}}}))
        if overridden[name] != mark:
            forced[name] = value
    return forced


@pytest.mark.parametrize("settings_function, table", [(consumer_settings, "consumer"), (producer_settings, "producer")])
def test_forced_librdkafka_properties_are_documented(doc, settings_function, table):
    """Every property the service forces on a client is in the doc, marked forced, with its value."""
    forced = _forced(settings_function, table)
    assert forced, f"no forced {table} property found"
    for name, value in forced.items():
        rows = [line for line in doc.splitlines() if line.startswith(f"| `{name}` |") and "**forced**" in line]
        assert rows, f"forced {table} property {name} is not documented as forced"
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        assert any(f"`{shown}`" in row for row in rows), f"{name}: forced value {shown} not shown"


# --- the tables are rendered from the schema -------------------------------------------------------


def test_the_key_tables_are_rendered_from_the_schema(doc):
    """docs/CONFIGURATION.md's key tables are exactly what the schema renders."""
    assert doc == configdocs.render(doc), \
        "docs/CONFIGURATION.md differs from the schema in stream_monitor/config.py: run `make config-docs`"


def test_the_renderer_lists_every_accepted_key_once(accepted):
    """Every leaf of the schema is in exactly one generated block, under the path the parser reads."""
    leaves, _ = accepted
    rendered = [key for name in configdocs.BLOCKS for key in
                configdocs.leaves(name, configdocs.BLOCKS[name], own_blocks=True)]
    assert sorted(rendered) == sorted(leaves) and len(rendered) == len(set(rendered))


def test_a_stale_file_is_reported_and_rewritten(tmp_path, doc, capsys):
    """`--check` exits 1 on a file whose table differs, naming the target; without it the file is fixed."""
    stale = tmp_path / "CONFIGURATION.md"
    stale.write_text(doc.replace("| `redis.namespace` | string | `\"sm\"` |", "| `redis.namespace` | string | `\"x\"` |"),
                     encoding="utf-8")
    assert configdocs.main([str(stale), "--check"]) == 1
    assert "run `make config-docs`" in capsys.readouterr().err
    assert configdocs.main([str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == doc
    assert configdocs.main([str(stale), "--check"]) == 0


def test_a_missing_block_is_refused(doc):
    start = doc.index("<!-- generated: redis keys")
    end = doc.index("<!-- end generated -->", start) + len("<!-- end generated -->")
    with pytest.raises(SystemExit, match="generated blocks"):
        configdocs.render(doc[:start] + doc[end:])
