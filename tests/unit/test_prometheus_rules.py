"""The Prometheus rules in deploy/prometheus/: valid for promtool (`check rules`, `check config`), each
alerting rule shown firing and not firing by `promtool test rules` (deploy/prometheus/rules.test.yml),
and reading only series the service exports, with labels it really has. The scrape-time family the
drift alert reads (`stream_monitor_alerts_firing`) is tested here too, without I/O.

promtool comes from Debian's `prometheus` package (`make test-setup` installs it); without it these
tests fail and say so.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import prometheus_client
import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream_monitor.metrics import HttpMetrics, Metrics, PartitionView

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "rules.yml"
RULES_TEST = RULES_DIR / "rules.test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
KUBERNETES_RULES = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
# what Prometheus itself adds to every scraped series, and the series it makes per target
TARGET_LABELS = {"job", "instance"}
SYNTHETIC = {"up": set()}


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None)
    assert path, "promtool is missing: run `make test-setup` (installs Debian's prometheus package)"
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"] for rule in group["rules"]]


def alerting_rules() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


# --- promtool ----------------------------------------------------------------------------------------------


def test_promtool_checks_the_rules():
    output = run_promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(rules())} rules found" in output


def test_promtool_checks_the_compose_config_with_its_rules(tmp_path):
    """prometheus.yml names its rule files by their path inside the container: a copy pointing at the
    mounted sources (read from docker-compose.yml) is what promtool checks, rules included."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = (ROOT / source).resolve()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["rule_files"] = [str(mounts[path]) for path in config["rule_files"]]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config), encoding="utf-8")
    output = run_promtool("check", "config", str(copy))
    assert "SUCCESS" in output and str(RULES) in output


def test_promtool_unit_tests_of_the_rules_pass():
    run_promtool("test", "rules", RULES_TEST.name, cwd=RULES_DIR)


def kubernetes_rules_generator():
    spec = importlib.util.spec_from_file_location("prometheusrule", ROOT / "deploy" / "kubernetes" / "prometheusrule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_kubernetes_prometheusrule_is_generated_from_the_rules_file():
    """deploy/kubernetes's PrometheusRule carries rules.yml's groups, as `make kubernetes-rules` writes
    them: an edit of one without the other fails here."""
    expected = kubernetes_rules_generator().manifest(RULES.read_text(encoding="utf-8"))
    assert KUBERNETES_RULES.read_text(encoding="utf-8") == expected, "run `make kubernetes-rules`"
    (doc,) = [d for d in yaml.safe_load_all(KUBERNETES_RULES.read_text(encoding="utf-8")) if d]
    assert doc["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]


def test_promtool_checks_the_kubernetes_prometheusrules_groups(tmp_path):
    """What the Prometheus Operator hands Prometheus (spec.groups as a rule file) passes promtool, every
    rule counted."""
    (doc,) = [d for d in yaml.safe_load_all(KUBERNETES_RULES.read_text(encoding="utf-8")) if d]
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}), encoding="utf-8")
    output = run_promtool("check", "rules", str(extracted))
    assert f"SUCCESS: {len(rules())} rules found" in output


def test_every_alerting_rule_is_shown_firing_and_not_firing():
    cases: dict[str, dict[str, int]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))["tests"]:
        for case in test.get("alert_rule_test", []):
            seen = cases.setdefault(case["alertname"], {"firing": 0, "quiet": 0})
            seen["firing" if case.get("exp_alerts") else "quiet"] += 1
    for rule in alerting_rules():
        seen = cases.get(rule["alert"], {})
        assert seen.get("firing") and seen.get("quiet"), f"{rule['alert']}: {seen or 'not tested'}"


def test_alerting_rules_carry_a_severity_and_say_what_happened():
    names = [rule["alert"] for rule in alerting_rules()]
    assert len(names) == len(set(names))
    assert set(names) >= {"StreamMonitorInstanceDown", "StreamMonitorConsumerLagGrowing", "StreamMonitorNoCheckpoint",
                          "StreamMonitorDeadLetterRate", "StreamMonitorRedisErrors", "StreamMonitorCriticalDrift",
                          "StreamMonitorPerformanceLimitBreached"}
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


# --- the rules read what the service exports --------------------------------------------------------------


TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?<![\w.])(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?![\w.]))
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
    """, re.VERBOSE)
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "atan2", "inf", "nan"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def tokens(expr: str) -> list[tuple[str, str]]:
    out, at = [], 0
    for match in TOKEN.finditer(expr):
        assert not expr[at:match.start()].strip(), f"cannot read {expr[at:match.start()]!r} in {expr!r}"
        out.append((match.lastgroup, match.group()))
        at = match.end()
    assert not expr[at:].strip(), f"cannot read {expr[at:]!r} in {expr!r}"
    return out


def selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """(each metric selector as (name, label names it matches on), the label names of its grouping
    clauses) of one PromQL expression; functions and aggregations (a name before "(", "by" or
    "without") and keywords are left out."""
    toks = tokens(expr)
    found, grouped = [], set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        after = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and text in GROUPING and after == "(":
            j = toks.index(("op", ")"), i)
            grouped.update(t for k, t in toks[i + 2:j] if k == "ident")
            i = j + 1
            continue
        if kind == "ident" and text not in KEYWORDS and after != "(" and after not in ("by", "without"):
            labels = set()
            if after == "{":
                j = toks.index(("op", "}"), i)
                labels = {t for k, t in toks[i + 2:j] if k == "ident"}
                i = j
            found.append((text, labels))
        i += 1
    return found, grouped


def test_selectors_reads_promql():
    found, grouped = selectors('sum by (job, model) (rate(stream_monitor_x_total{severity="critical", '
                               'signal=~"a|b"}[5m])) / on (job) group_left sum(up) > 0.5 and bool time() - 1e3')
    assert found == [("stream_monitor_x_total", {"severity", "signal"}), ("up", set())]
    assert grouped == {"job", "model"}


def exported_series() -> dict[str, set[str]]:
    """Every sample name the service's /metrics can show, with its label names: the service's
    families (those set at scrape time included), the HTTP endpoint's, the process collector's."""
    registry = CollectorRegistry()
    metrics, http = Metrics(registry), HttpMetrics(registry)
    prometheus_client.ProcessCollector(registry=registry)
    families: dict[str, tuple[str, tuple[str, ...]]] = {}
    for owner in (metrics, http):
        for value in vars(owner).values():
            wrapped = getattr(value, "_counter", value)
            if isinstance(wrapped, prometheus_client.metrics.MetricWrapperBase):
                families[wrapped._name] = (wrapped._type, tuple(wrapped._labelnames))
    for family in metrics.partitions.describe():  # the families set at scrape time
        families[family.name] = (family.type, family._labelnames)
    for family in registry.collect():
        for sample in family.samples:
            families.setdefault(sample.name, ("gauge", tuple(sample.labels)))
    series: dict[str, set[str]] = {}
    for name, (kind, labels) in families.items():
        if kind == "counter":
            series[f"{name}_total"] = set(labels)
        elif kind == "histogram":
            series.update({f"{name}_bucket": {*labels, "le"}, f"{name}_sum": set(labels), f"{name}_count": set(labels)})
        else:
            series[name] = set(labels)
    return series


def test_every_series_the_rules_read_is_exported():
    exported = exported_series()
    assert "stream_monitor_alerts_firing" in exported and "process_cpu_seconds_total" in exported
    known = {**{name: labels | TARGET_LABELS for name, labels in exported.items()}, **SYNTHETIC}
    recorded = {}
    for rule in rules():
        where = rule.get("alert") or rule["record"]
        found, grouped = selectors(rule["expr"])
        assert found, where
        for name, matched in found:
            labels = known.get(name, recorded.get(name))
            assert labels is not None, f"{where}: {name} is not a series the service exports"
            assert matched <= labels | TARGET_LABELS, f"{where}: {name} has no label {matched - labels}"
        available = set().union(*(known.get(name, recorded.get(name, set())) for name, _ in found)) | TARGET_LABELS
        assert grouped <= available, f"{where}: grouping by {grouped - available}, which none of its series has"
        if "record" in rule:
            recorded[rule["record"]] = grouped or TARGET_LABELS
    for rule in alerting_rules():
        label_refs = set(re.findall(r"\$labels\.(\w+)", str(rule["annotations"])))
        found, grouped = selectors(rule["expr"])
        assert label_refs <= (grouped or TARGET_LABELS), f"{rule['alert']}: annotations read {label_refs - grouped}"


# --- the family the drift alert reads -----------------------------------------------------------------------


def test_alerts_firing_counts_firing_detectors_by_severity():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    row = {"signal": "feature", "name": "amount", "detector": "psi", "statistic": 0.3, "threshold": 0.1,
           "critical": 0.25, "firing": True, "severity": "critical"}
    quiet = dict(row, name="country", statistic=0.01, firing=False, severity=None)
    warned = dict(row, name="age", statistic=0.15, severity="warning")
    floor = {"signal": "performance", "name": "accuracy", "detector": "floor", "statistic": 0.7, "threshold": 0.8,
             "critical": 0.8, "firing": True, "severity": "critical"}
    first = {"models": {"fraud": {"detectors": [row, quiet, warned]}, "credit": {"detectors": [floor]}}}
    second = {"models": {"fraud": {"detectors": [row, quiet]}}}
    owned = [PartitionView("t", 0, first, 5, 5), PartitionView("t", 1, second, 5, 5)]
    metrics.partitions.source = lambda: owned

    def value(**labels):
        return registry.get_sample_value("stream_monitor_alerts_firing", labels)

    psi = {"model": "fraud", "signal": "feature", "detector": "psi"}
    assert value(**psi, severity="critical") == 2, "amount on both partitions"
    assert value(**psi, severity="warning") == 1
    assert value(model="credit", signal="performance", detector="floor", severity="critical") == 1
    assert value(model="credit", signal="performance", detector="floor", severity="warning") == 0
    assert registry.get_sample_value("stream_monitor_episodes_firing", psi) == 3, "the same detectors, any severity"

    owned = [PartitionView("t", 1, {"models": {"fraud": {"detectors": [quiet]}}}, 5, 5)]  # resolved, moved away
    assert value(**psi, severity="critical") == value(**psi, severity="warning") == 0
    assert value(model="credit", signal="performance", detector="floor", severity="critical") is None


def test_checkpoint_interval_is_exported_for_the_no_checkpoint_alert():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.checkpoint_interval.set(5.0)
    assert registry.get_sample_value("stream_monitor_checkpoint_interval_seconds") == 5.0
    no_checkpoint = next(rule for rule in alerting_rules() if rule["alert"] == "StreamMonitorNoCheckpoint")
    assert "stream_monitor_checkpoint_interval_seconds" in no_checkpoint["expr"]
