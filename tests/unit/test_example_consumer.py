"""examples/retrain_on_drift.py: the retraining decision (RetrainPolicy), purely — no Kafka."""

import hashlib
import importlib.util
import json
import sys
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("retrain_on_drift", ROOT / "examples" / "retrain_on_drift.py")
example = importlib.util.module_from_spec(SPEC)
sys.modules.setdefault(SPEC.name, example)  # dataclasses resolve string annotations through sys.modules
SPEC.loader.exec_module(example)
RetrainPolicy = example.RetrainPolicy

ALERT_SCHEMA = json.loads((ROOT / "schemas" / "alert.json").read_text(encoding="utf-8"))
T0 = 1_800_000_000.0  # an epoch time (2027-01-15), so requested_at is a real date


def alert(name, status="firing", severity="critical", signal="feature", detector="psi", model="fraud", offset=1):
    """A schema-valid alert, as stream-monitor publishes it."""
    identity = f"{model}|{signal}|{name}|{detector}|{offset}|{status}"
    return {
        "alert_id": hashlib.sha256(identity.encode()).hexdigest(),
        "status": status, "severity": severity, "model_id": model, "signal": signal, "name": name,
        "detector": detector, "statistic": 0.31, "threshold": 0.25, "reference": {}, "current": {},
        "partition": 0, "offset": offset, "event_time": "2027-01-15T08:00:00Z",
        "detected_at": "2027-01-15T08:00:00.500Z", "message": f"PSI of {model}.{name} is 0.31",
    }


def test_helper_alerts_follow_the_alert_schema():
    for doc in (alert("amount"), alert("amount", status="resolved", severity="warning", signal="performance")):
        jsonschema.validate(doc, ALERT_SCHEMA)


def fire(policy, names, now, **kw):
    return [policy.observe(alert(n, **kw), now) for n in names]


def resolve(policy, names, now, **kw):
    return [policy.observe(alert(n, status="resolved", **kw), now) for n in names]


def test_sustained_drift_gives_one_request():
    policy = RetrainPolicy(min_alerts=2, sustain_seconds=600)
    assert fire(policy, ["amount", "country"], T0) == [None, None]
    assert policy.tick(T0 + 599) == []
    requests = policy.tick(T0 + 600)
    assert len(requests) == 1
    request = requests[0]
    assert request["model_id"] == "fraud"
    assert {a["name"] for a in request["alerts"]} == {"amount", "country"}
    assert {a["alert_id"] for a in request["alerts"]} == {alert("amount")["alert_id"], alert("country")["alert_id"]}
    assert "2" in request["reason"] and "600" in request["reason"]
    assert datetime.fromisoformat(request["requested_at"].replace("Z", "+00:00")).timestamp() == T0 + 600
    json.dumps(request)  # publishable as JSON
    assert policy.tick(T0 + 700) == []


def test_sustained_drift_is_noticed_on_the_next_alert_too():
    """Without ticks, the next alert of the model (of any kind) lets the request out."""
    policy = RetrainPolicy(min_alerts=2, sustain_seconds=60)
    fire(policy, ["amount", "country"], T0)
    request = policy.observe(alert("age", severity="warning"), T0 + 61)
    assert request is not None and request["model_id"] == "fraud"
    assert {a["name"] for a in request["alerts"]} == {"amount", "country"}  # the warning does not count


def test_brief_blip_that_resolves_gives_nothing():
    policy = RetrainPolicy(min_alerts=2, sustain_seconds=600)
    fire(policy, ["amount", "country"], T0)
    assert resolve(policy, ["amount"], T0 + 300) == [None]
    assert policy.tick(T0 + 10_000) == []  # one left firing: below min_alerts however long it lasts
    assert resolve(policy, ["country"], T0 + 10_001) == [None]
    assert policy.tick(T0 + 20_000) == []
    assert policy.firing("fraud") == set()


def test_the_sustain_clock_restarts_when_the_count_drops_below_min_alerts():
    policy = RetrainPolicy(min_alerts=2, sustain_seconds=600)
    fire(policy, ["amount", "country"], T0)
    resolve(policy, ["amount"], T0 + 500)
    fire(policy, ["amount"], T0 + 550, offset=2)
    assert policy.tick(T0 + 1000) == []  # 450 s since the count is back at 2
    assert len(policy.tick(T0 + 1150)) == 1


def test_no_repeat_while_still_firing():
    policy = RetrainPolicy(min_alerts=2, sustain_seconds=60)
    fire(policy, ["amount", "country"], T0)
    assert len(policy.tick(T0 + 60)) == 1
    # more drift, repeats of the same alerts (a replay), partial resolution: still no second request
    assert fire(policy, ["age", "amount"], T0 + 100) == [None, None]
    assert resolve(policy, ["country", "age"], T0 + 200) == [None, None]
    assert fire(policy, ["country"], T0 + 300, offset=2) == [None]
    assert policy.tick(T0 + 100_000) == []


def test_fires_again_after_all_resolved_and_refired():
    policy = RetrainPolicy(min_alerts=2, sustain_seconds=60)
    fire(policy, ["amount", "country"], T0)
    first = policy.tick(T0 + 60)
    assert len(first) == 1
    resolve(policy, ["amount", "country"], T0 + 120)
    fire(policy, ["amount", "country"], T0 + 200, offset=2)
    assert policy.tick(T0 + 259) == []
    second = policy.tick(T0 + 260)
    assert len(second) == 1
    assert second[0]["request_id"] != first[0]["request_id"]  # other alert ids: another episode


def test_only_critical_feature_prediction_performance_alerts_count():
    policy = RetrainPolicy(min_alerts=1, sustain_seconds=0)
    assert policy.observe(alert("amount", severity="warning"), T0) is None
    assert policy.observe(alert("missing", signal="data_quality", detector="missing"), T0) is None
    assert policy.observe(alert("latency_ms", signal="latency", detector="p95_ceiling"), T0) is None
    assert policy.observe(alert("label", signal="label"), T0) is None
    assert policy.tick(T0 + 1000) == []
    assert len(policy.firing("fraud")) == 4  # all tracked, none qualifying
    request = policy.observe(alert("error", signal="performance", detector="adwin"), T0 + 1)
    assert request is not None and [a["signal"] for a in request["alerts"]] == ["performance"]
    assert policy.observe(alert("score", signal="prediction"), T0 + 2) is None  # latched


def test_models_are_independent():
    policy = RetrainPolicy(min_alerts=1, sustain_seconds=60)
    policy.observe(alert("amount", model="fraud"), T0)
    policy.observe(alert("tenure", model="churn"), T0 + 30)
    assert [r["model_id"] for r in policy.tick(T0 + 60)] == ["fraud"]
    assert [r["model_id"] for r in policy.tick(T0 + 90)] == ["churn"]
    policy.observe(alert("amount", model="fraud", status="resolved"), T0 + 100)
    policy.observe(alert("amount", model="fraud", offset=9), T0 + 110)
    assert [r["model_id"] for r in policy.tick(T0 + 170)] == ["fraud"]  # churn still latched


def test_the_same_episodes_give_the_same_request_id():
    """A request repeated after a state rebuild (--from-beginning) is recognisable downstream."""
    requests = []
    for start in (T0, T0 + 5000):
        policy = RetrainPolicy(min_alerts=2, sustain_seconds=60)
        fire(policy, ["country", "amount"], start)
        requests.extend(policy.tick(start + 60))
    assert requests[0]["request_id"] == requests[1]["request_id"]


def test_a_repeated_firing_keeps_its_start():
    policy = RetrainPolicy(min_alerts=1, sustain_seconds=600)
    policy.observe(alert("amount"), T0)
    policy.observe(alert("amount"), T0 + 500)  # the same episode announced again (replay after a crash)
    assert len(policy.tick(T0 + 600)) == 1


def test_messages_that_are_not_alerts_are_ignored():
    policy = RetrainPolicy(min_alerts=1, sustain_seconds=0)
    assert policy.observe({"hello": "world"}, T0) is None
    assert policy.observe({**alert("amount"), "status": "acknowledged"}, T0) is None
    broken = alert("amount")
    del broken["detector"]
    assert policy.observe(broken, T0) is None
    assert policy.models.get("fraud") is None or not policy.firing("fraud")


def test_resolved_without_firing_is_harmless():
    policy = RetrainPolicy(min_alerts=1, sustain_seconds=0)
    assert policy.observe(alert("amount", status="resolved"), T0) is None
    assert policy.tick(T0 + 1) == []


@pytest.mark.parametrize("kwargs", [{"min_alerts": 0}, {"sustain_seconds": -1}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        RetrainPolicy(**kwargs)


def test_docstring_examples():
    import doctest
    result = doctest.testmod(example)
    assert result.attempted > 0 and result.failed == 0


def test_command_line_defaults():
    args = example._parse_args([])
    assert (args.alert_topic, args.request_topic) == ("ml.alerts", "ml.retrain-requests")
    assert args.min_alerts >= 1 and args.sustain_seconds > 0
    with pytest.raises(SystemExit):
        example._parse_args(["--min-alerts", "0"])
