"""examples/retrain_on_drift.py: a consumer of the retraining topic — which requests it acts on (RequestGate)
and the command it runs, purely (no Kafka); fed requests as the service makes them."""

import doctest
import importlib.util
import sys
from pathlib import Path

import pytest

from stream_monitor.events import Alert
from stream_monitor.retraining import Retraining, RetrainingPolicy

from ..support import validator

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("retrain_on_drift", ROOT / "examples" / "retrain_on_drift.py")
example = importlib.util.module_from_spec(SPEC)
sys.modules.setdefault(SPEC.name, example)
SPEC.loader.exec_module(example)
RequestGate = example.RequestGate


def requests(*incidents):
    """Requests as the service publishes them: one per incident, two drifted features each."""
    policy = Retraining("fraud", RetrainingPolicy(min_drifted_features=2, cooldown_seconds=0))
    out = []
    for n, incident in enumerate(incidents):
        alerts = [Alert("firing", "critical", "fraud", "feature", name, "psi", 0.5, 0.25, {}, {}, 0, 100 * n + i,
                        1_800_000_000_000, "", incident=incident) for i, name in enumerate(("amount", "country"))]
        out.extend(r.to_dict(1_800_000_000_000) for r in policy.observe(alerts))
    return out


def test_helper_requests_follow_the_schema():
    check = validator("retraining_request.json")
    for request in requests("a" * 64, "b" * 64):
        check.validate(request)


def test_each_request_is_acted_on_once_whatever_the_repeats():
    first, second = requests("a" * 64, "b" * 64)
    gate = RequestGate()
    assert [gate.admit(r) is not None for r in (first, dict(first), second, first, dict(second))] == \
           [True, False, True, False, False]
    assert gate.repeats == 3


def test_ids_beyond_what_it_remembers_are_forgotten_oldest_first():
    a, b, c = requests("a" * 64, "b" * 64, "c" * 64)
    gate = RequestGate(remember=2)
    for request in (a, b, c):
        assert gate.admit(request) is not None
    assert gate.admit(c) is None and gate.admit(a) is not None  # a was forgotten


@pytest.mark.parametrize("message", [None, [], "text", {"request_id": "r"}, {"request_id": 1, "model_id": "m",
                                                                             "incident": "i", "reason": "drift",
                                                                             "evidence": {}}])
def test_what_is_not_a_request_is_passed_by_and_counted(message):
    gate = RequestGate()
    assert gate.admit(message) is None and gate.malformed == 1


def test_the_command_gets_the_fields_as_words_never_through_a_shell():
    [request] = requests("a" * 64)
    words = example.command_for("train --model {model_id} --request {request_id} '{reason} run'", request)
    assert words == ["train", "--model", "fraud", "--request", request["request_id"], "drift run"]


def test_docstring_examples():
    result = doctest.testmod(example)
    assert result.attempted > 0 and result.failed == 0


def test_command_line_defaults():
    args = example._parse_args([])
    assert (args.topic, args.command, args.remember) == ("ml.retrain", "", 10_000)
    with pytest.raises(SystemExit):
        example._parse_args(["--remember", "0"])
