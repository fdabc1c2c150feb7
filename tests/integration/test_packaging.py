"""The built wheel carries what an installed service and its consumers need: the schemas and the licence.

Builds the wheel the way a user's `pip install .` would (an isolated build environment, so it needs the
package index like `make test` does) into a temporary directory; nothing tracked is written.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_the_schemas_and_the_license(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"pip wheel failed (it needs the package index for setuptools):\n{built.stderr}"
    (wheel,) = tmp_path.glob("stream_monitor-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for source in sorted((ROOT / "schemas").glob("*.json")):
            inside = f"stream_monitor/schemas/{source.name}"
            assert inside in names, inside
            assert json.loads(archive.read(inside)) == json.loads(source.read_text(encoding="utf-8"))
        assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_the_package_schemas_are_the_top_level_ones():
    """stream_monitor/schemas is a link to schemas/, not a copy that could drift from it."""
    link = ROOT / "stream_monitor" / "schemas"
    assert link.is_symlink() and link.resolve() == (ROOT / "schemas").resolve()
    from stream_monitor import schema_path
    for name in ("alert", "dead_letter", "inference_event", "label_event"):
        assert json.loads(schema_path(name).read_text(encoding="utf-8"))["$schema"]
