"""Write deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/rules.yml.

The rules are kept, checked and unit-tested in one place (rules.yml, by promtool); on Kubernetes the
Prometheus Operator loads them from a PrometheusRule whose ``spec.groups`` is that file's ``groups``.
Run ``make kubernetes-rules`` after editing rules.yml; tests/unit/test_kubernetes.py fails while the
two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
MANIFEST = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# Prometheus Operator: the service's recording and alerting rules. Generated from
# deploy/prometheus/rules.yml (where they are explained, checked and unit-tested by promtool) by
# `make kubernetes-rules`: edit that file, not this one. A Prometheus selects this object by its labels
# (ruleSelector); the instance-down rule expects the PodMonitor's job, "stream-monitor/stream-monitor".
"""


def manifest(rules_text: str) -> str:
    """The PrometheusRule manifest for a rules file's text."""
    groups = yaml.safe_load(rules_text)["groups"]
    obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "stream-monitor", "namespace": "stream-monitor",
                        "labels": {"app.kubernetes.io/name": "stream-monitor"}},
           "spec": {"groups": groups}}
    return HEADER + yaml.safe_dump(obj, sort_keys=False, width=110, allow_unicode=True)


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else MANIFEST
    target.write_text(manifest(RULES.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
