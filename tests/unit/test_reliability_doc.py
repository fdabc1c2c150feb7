"""RELIABILITY.md names, for each failure, the test that shows what the service does: every test it names
exists (a renamed or removed test leaves the row pointing at nothing), and so does every parameter it
names."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "RELIABILITY.md", ROOT / "docs" / "CONFIGURATION.md"]
# `tests/…/test_x.py::test_name[param]`, or `…::test_name` / `…[param]`: the same file (and test) as the last
NAMED = re.compile(r"`((?:tests/[\w/]+\.py)|…)(?:::(\w+))?(\[[\w.,-]+\])?`")


@cache
def functions(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


def named_tests(text: str) -> list[tuple[str, str, str]]:
    """(file, test or "" for a whole file, parameter or "") of every test the text names, shorthand
    resolved."""
    out, file, test = [], None, ""
    for where, name, parameter in NAMED.findall(text):
        if where == "…" and not name and not parameter:
            continue  # an ellipsis in code, naming nothing
        if where != "…":
            file, test = where, name
        elif name:
            test = name
        assert file and (test or where != "…"), f"a shorthand before any named test: {where}{name}{parameter}"
        out.append((file, test, parameter.strip("[]")))
    return out


def test_the_shorthand_is_read_as_the_file_and_test_before_it():
    text = "`tests/unit/a.py::test_one[x]` then `…[y]` and `…::test_two`; all of `tests/unit/b.py`"
    assert named_tests(text) == [("tests/unit/a.py", "test_one", "x"), ("tests/unit/a.py", "test_one", "y"),
                                 ("tests/unit/a.py", "test_two", ""), ("tests/unit/b.py", "", "")]


def test_every_test_the_documents_name_exists():
    missing = []
    for document in DOCUMENTS:
        named = named_tests(document.read_text(encoding="utf-8"))
        assert document.name != "RELIABILITY.md" or len(named) > 50, "the rows name their tests"
        for file, test, parameter in named:
            path = ROOT / file
            if not path.is_file() or (test and test not in functions(path)):
                missing.append(f"{document.name}: {file}::{test}")
            elif parameter and parameter.split("-")[0] not in path.read_text(encoding="utf-8"):
                missing.append(f"{document.name}: {file}::{test}[{parameter}] (no such parameter)")
    assert not missing, "\n".join(missing)
