"""The key tables of docs/CONFIGURATION.md, rendered from the schema in :mod:`stream_monitor.config`.

Each table sits between two marker comments; the prose around them is written by hand::

    <!-- generated: kafka keys (make config-docs; edit stream_monitor/config.py) -->
    | key | type | default | meaning | constraints | env |
    ...
    <!-- end generated -->

``python -m stream_monitor.configdocs`` (``make config-docs``) rewrites the tables in place;
``--check`` only says whether the file is up to date. A row is one field: its dotted key, its type,
its default, its ``doc`` (meaning, and the checks the bounds do not say), and the environment
variable that overrides it. A nested table without a block of its own is listed in its parent's
(``models.<id>.reference.*`` in ``models.<id>``).
"""

import argparse
import difflib
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import msgspec

from .config import (ENV_PREFIX, AdwinConfig, AlertmanagerConfig, Config, DataQualityConfig, DetectorsConfig, KafkaConfig, KsConfig,
                     LatencyConfig, ModelConfig, ModelRetrainingConfig, PageHinkleyConfig, PerformanceConfig, PsiConfig, RedisConfig, RetrainingConfig,
                     ServiceConfig, _alternatives, _bounds, _extra, _fields, _unwrap, env_keys, keys_of)

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONFIGURATION.md"
MODEL = "models.<id>"
# marker name (the tables' dotted prefix) → the schema table it lists
BLOCKS: dict[str, type] = {
    "kafka": KafkaConfig, "redis": RedisConfig, "service": ServiceConfig, MODEL: ModelConfig,
    f"{MODEL}.detectors": DetectorsConfig,
    f"{MODEL}.detectors.psi": PsiConfig, f"{MODEL}.detectors.ks": KsConfig, f"{MODEL}.detectors.adwin": AdwinConfig,
    f"{MODEL}.detectors.page_hinkley": PageHinkleyConfig, f"{MODEL}.detectors.data_quality": DataQualityConfig,
    f"{MODEL}.detectors.latency": LatencyConfig,
    f"{MODEL}.performance": PerformanceConfig, "alertmanager": AlertmanagerConfig,
    "retraining": RetrainingConfig, f"{MODEL}.retraining": ModelRetrainingConfig,
}
HEADER = "| key | type | default | meaning | constraints | env |\n|---|---|---|---|---|---|"
_BLOCK = re.compile(r"(<!-- generated: (\S+) keys [^\n]*-->\n)(.*?)(<!-- end generated -->)", re.S)
_TYPES = {str: "string", int: "integer", float: "float", bool: "boolean"}


def leaves(prefix: str = "", table: type = Config, own_blocks: bool = False) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (annotation, default)} of every key under ``table``; with ``own_blocks``, a nested
    table that has a block of its own is left out (it is listed there)."""
    out: dict[str, tuple[Any, Any]] = {}
    defaults = {f.name: f.default if f.default_factory is msgspec.NODEFAULT else f.default_factory()
                for f in msgspec.structs.fields(table)}
    for name in keys_of(table):
        annotation = _fields(table)[name]
        base = _unwrap(annotation)[0]
        path = f"{prefix}.{name}" if prefix else name
        if table is Config and name == "models":
            base, path = ModelConfig, MODEL
        if isinstance(base, type) and issubclass(base, msgspec.Struct):
            if not (own_blocks and path in BLOCKS):
                out.update(leaves(path, base, own_blocks))
            continue
        out[path] = (annotation, defaults[name])
    return out


def row(path: str, annotation: Any, default: Any) -> str:
    """One table row: key | type | default | meaning | constraints | env."""
    base, metas, optional = _unwrap(annotation)
    literal = typing.get_origin(base) is Literal
    kind = _extra(metas, "type") or ("string" if literal else "list of strings" if typing.get_origin(base) is tuple
                                     else _TYPES[base] + (" or absent" if optional else ""))
    shown = _extra(metas, "default") or ("absent" if default is None else f"`{_toml(default)}`")
    bounds = _bounds(annotation, code=lambda s: f"`{s}`")
    checks = _extra(metas, "checks") or (
        _alternatives(typing.get_args(base), code=lambda v: f"`{json.dumps(v)}`") if literal else bounds or "—")
    section, _, key = path.partition(".")
    if (section, key) in env_keys():
        env = f"`{ENV_PREFIX}{section.upper()}_{key.upper()}`" + (" (comma-separated)" if isinstance(default, tuple)
                                                                  else "")
    else:
        env = "— (not overridable)" if section in ("kafka", "redis", "service", "alertmanager", "retraining") else "—"
    meaning = next(m.description for m in metas if m.description)
    cells = [f"`{path}`", kind, shown, meaning, checks, env]
    return "| " + " | ".join(cell.replace("|", "\\|") if i else cell for i, cell in enumerate(cells)) + " |"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, tuple, list, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)
    return repr(value)


def table(name: str) -> str:
    """The rendered table of one block."""
    rows = [row(path, *spec) for path, spec in leaves(name, BLOCKS[name], own_blocks=True).items()]
    return "\n".join([HEADER, *rows]) + "\n"


def render(text: str) -> str:
    """``text`` with every generated table replaced by its rendering from the schema."""
    found = [m.group(2) for m in _BLOCK.finditer(text)]
    if sorted(found) != sorted(BLOCKS):
        raise SystemExit(f"docs/CONFIGURATION.md: generated blocks {sorted(found)} != the schema's {sorted(BLOCKS)}")
    return _BLOCK.sub(lambda m: m.group(1) + table(m.group(2)) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_monitor.configdocs", description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="only say whether the file is up to date (exit 1 if not)")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    rendered = render(text)
    if args.check:
        if rendered != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), rendered.splitlines(True),
                                                       str(args.path), "rendered from stream_monitor/config.py"))
            print(f"{args.path} differs from the schema: run `make config-docs`", file=sys.stderr)
            return 1
        return 0
    if rendered != text:
        args.path.write_text(rendered, encoding="utf-8")
        print(f"{args.path}: key tables rewritten from stream_monitor/config.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
