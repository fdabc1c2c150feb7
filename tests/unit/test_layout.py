"""The test tree's own rules: every test module is in a tier (tests/unit/ or tests/integration/), the
unit directory holds pure tests only, and test modules share code through tests/support.py rather
than by importing each other."""

import ast
from pathlib import Path

from ..conftest import INTEGRATION_FIXTURES

TESTS = Path(__file__).resolve().parents[1]


def modules(tier: str) -> list[Path]:
    return sorted((TESTS / tier).glob("test_*.py"))


def test_both_tiers_exist_and_hold_modules():
    assert modules("unit") and modules("integration")


def test_no_test_module_is_left_at_the_top_of_the_tree():
    assert sorted(p.name for p in TESTS.glob("test_*.py")) == []


def test_the_unit_directory_holds_no_test_that_needs_the_broker_redis_or_a_run_process():
    offenders = []
    for path in modules("unit"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and {a.arg for a in node.args.args} & INTEGRATION_FIXTURES:
                offenders.append(f"{path.name}::{node.name}")
    assert offenders == []


def test_test_modules_do_not_import_each_other():
    found = set()
    for tier in ("unit", "integration"):
        for path in modules(tier):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    name = node.module.rsplit(".", 1)[-1]
                    if name.startswith("test_") and name != path.stem:
                        found.add((f"{tier}/{path.name}", name))
    assert found == set()
