"""Audit the image's runtime dependencies (requirements.lock) with pip-audit.

    python3 .ci/audit.py [--lock requirements.lock] [--pip-audit PATH]

pip-audit asks PyPI's JSON API (https://pypi.org/pypi/<name>/<version>/json)
about each pinned package. The outcome is one of:

- ``clean``: every package was checked and none has a known vulnerability: exit 0.
- ``vulnerable``: at least one pinned package has a known vulnerability: exit 1,
  CI fails. Upgrade the package (``make lock-upgrade``) or, if it cannot be, say
  why in the commit that adds ``--ignore-vuln`` here.
- ``not audited``: pip-audit could not be installed, could not reach its
  vulnerability service, or could not get an answer for some package (it calls
  those "skipped" and still prints "No known vulnerabilities found"). A loud
  banner says the audit was not done and which packages it missed; exit 0, so
  a flaky network does not fail CI. Set ``AUDIT_REQUIRED=1`` where the network
  is known to be good to make this fail (exit 3) instead.

Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLEAN, VULNERABLE, NOT_AUDITED = "clean", "vulnerable", "not audited"
EXIT = {CLEAN: 0, VULNERABLE: 1}
EXIT_NOT_AUDITED_REQUIRED = 3


@dataclass(frozen=True)
class Verdict:
    """What one pip-audit run found."""

    outcome: str
    audited: tuple[str, ...] = ()
    vulnerable: tuple[str, ...] = ()  # "name version: ID (fixed in …)"
    skipped: tuple[str, ...] = ()  # "name: reason"
    problem: str = ""  # why nothing (or not everything) could be audited


def judge(returncode: int, report: str | None, stderr: str = "") -> Verdict:
    """The verdict from pip-audit's exit code, its JSON report (None if it wrote none) and its stderr."""
    if report is None:
        last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
        return Verdict(NOT_AUDITED, problem=f"pip-audit exited {returncode} without a report: {last or 'no message'}")
    try:
        data = json.loads(report)
        dependencies = data["dependencies"]
    except (ValueError, KeyError, TypeError) as exc:
        return Verdict(NOT_AUDITED, problem=f"pip-audit's report is not the JSON expected: {exc}")
    audited, vulnerable, skipped = [], [], []
    for dep in dependencies:
        name = dep.get("name", "?")
        if "skip_reason" in dep:
            skipped.append(f"{name}: {dep['skip_reason']}")
            continue
        audited.append(f"{name}=={dep.get('version', '?')}")
        for vuln in dep.get("vulns") or []:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
            vulnerable.append(f"{name} {dep.get('version', '?')}: {vuln.get('id', '?')} (fixed in {fixes})")
    if vulnerable:
        return Verdict(VULNERABLE, tuple(audited), tuple(vulnerable), tuple(skipped))
    if skipped or not audited:
        problem = "" if audited else "no package could be checked"
        return Verdict(NOT_AUDITED, tuple(audited), (), tuple(skipped), problem=problem)
    if returncode != 0:
        return Verdict(NOT_AUDITED, tuple(audited), problem=f"pip-audit exited {returncode} but reported nothing vulnerable")
    return Verdict(CLEAN, tuple(audited))


def render(verdict: Verdict, lock: str) -> str:
    """The lines CI prints for a verdict: a banner unless the audit was clean."""
    if verdict.outcome == CLEAN:
        return f"pip-audit: {len(verdict.audited)} pinned packages of {lock} checked, no known vulnerabilities\n"
    bar = "!" * 78
    lines = []
    if verdict.outcome == VULNERABLE:
        lines.append(f"::error title=pip-audit::known vulnerabilities in {lock}")  # a GitHub Actions annotation
        lines += [bar, f"!!! pip-audit: KNOWN VULNERABILITIES in {lock}: CI fails", bar]
        lines += [f"  {item}" for item in verdict.vulnerable]
    else:
        lines.append(f"::warning title=pip-audit::the supply-chain audit of {lock} was not done")
        lines += [bar, f"!!! pip-audit: THE SUPPLY-CHAIN AUDIT WAS NOT DONE for {lock}", bar]
        if verdict.problem:
            lines.append(f"  {verdict.problem}")
        lines += [f"  not checked: {item}" for item in verdict.skipped]
        if verdict.audited:
            lines.append(f"  checked, nothing known: {', '.join(verdict.audited)}")
        lines.append("  (the vulnerability service could not answer; a network problem does not fail CI,"
                     " AUDIT_REQUIRED=1 makes it)")
    lines.append(bar)
    return "\n".join(lines) + "\n"


def exit_code(verdict: Verdict, required: bool) -> int:
    if verdict.outcome == NOT_AUDITED:
        return EXIT_NOT_AUDITED_REQUIRED if required else 0
    return EXIT[verdict.outcome]


def run_pip_audit(pip_audit: str, lock: Path, report: Path) -> tuple[int, str | None, str]:
    """Run pip-audit on the hashed lock file (no resolution, no install): (exit code, report or None, stderr)."""
    report.unlink(missing_ok=True)
    cmd = [pip_audit, "--requirement", str(lock), "--require-hashes", "--disable-pip",
           "--progress-spinner", "off", "--format", "json", "--output", str(report)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, None, f"{pip_audit}: {exc}"
    text = report.read_text(encoding="utf-8") if report.exists() else None
    return done.returncode, text, done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", default="requirements.lock")
    parser.add_argument("--pip-audit", default="pip-audit", help="the pip-audit executable")
    args = parser.parse_args(argv)
    lock = Path(args.lock)
    if not lock.is_file():
        print(f"pip-audit: {lock} does not exist", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="stream-monitor-audit-") as tmp:
        returncode, text, stderr = run_pip_audit(args.pip_audit, lock, Path(tmp) / "report.json")
    verdict = judge(returncode, text, stderr)
    sys.stdout.write(render(verdict, str(lock)))
    sys.stdout.flush()
    return exit_code(verdict, os.environ.get("AUDIT_REQUIRED", "") not in ("", "0"))


if __name__ == "__main__":
    sys.exit(main())
