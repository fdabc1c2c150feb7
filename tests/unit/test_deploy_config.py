"""The shipped production config is quiet on data drawn like its reference, and still sees a drift."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream_monitor.config import load_config
from stream_monitor.replay import replay_alerts
from stream_monitor.synthetic import generate

DEPLOY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config.toml"


def alerts_over(docs: list[dict]) -> list[tuple]:
    config = load_config(DEPLOY_CONFIG, environ={})
    return [(a.status, a.signal, a.name, a.detector, a.offset)
            for a in replay_alerts(config, [orjson.dumps(d) + b"\n" for d in docs], {})]


@pytest.mark.parametrize("seed", [7, 11])
def test_the_deploy_config_raises_nothing_on_a_stationary_stream(seed):
    assert alerts_over(generate("fraud", 60_000, seed=seed)) == []


def test_the_deploy_config_still_announces_a_drift():
    firing = {(signal, name, detector) for status, signal, name, detector, _ in
              alerts_over(generate("fraud", 30_000, seed=7, drift_at=15_000)) if status == "firing"}
    assert ("feature", "amount", "psi") in firing
