"""Seeded synthetic model traffic with an optional injected drift (demo, tests, benchmarks).

>>> events = generate("fraud", 3, seed=1)
>>> sorted(events[0]["features"])
['age', 'amount', 'country', 'is_new']
>>> events[0]["event_id"]
'fraud-1-0'
"""

from __future__ import annotations

import math
import random
from typing import Any

BASE_TIME_S = 1_795_800_000.0  # 2026-11-27T14:40:00Z


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _fraud(rng: random.Random, drifted: bool) -> tuple[dict[str, Any], float]:
    amount = rng.lognormvariate(3.0 + (0.8 if drifted else 0.0), 0.6)
    age = rng.gauss(41.0, 12.0)
    country = rng.choices(["DE", "FR", "US", "GB", "ES"],
                          [0.1, 0.1, 0.5, 0.2, 0.1] if drifted else [0.35, 0.25, 0.2, 0.1, 0.1])[0]
    is_new = rng.random() < 0.2
    score = _sigmoid(0.03 * (amount - 25) + (0.8 if is_new else 0.0) - 2.0 + rng.gauss(0, 0.3))
    return {"amount": round(amount, 2), "age": round(age, 1), "country": country, "is_new": is_new}, score


def _churn(rng: random.Random, drifted: bool) -> tuple[dict[str, Any], float]:
    tenure = rng.expovariate(1 / 24.0)
    spend = rng.gauss(55.0 + (12.0 if drifted else 0.0), 12.0)
    plan = rng.choices(["basic", "plus", "pro"], [0.5, 0.35, 0.15])[0]
    score = _sigmoid(-0.05 * tenure + 0.02 * (spend - 55) + rng.gauss(0, 0.5))
    return {"tenure_months": round(tenure, 2), "monthly_spend": round(spend, 2), "plan": plan}, score


def _stable(rng: random.Random, drifted: bool) -> tuple[dict[str, Any], float]:
    x = rng.gauss(0.0, 1.0)
    return {"x": x, "color": rng.choice(["red", "green", "blue"])}, _sigmoid(x)


def labelled(model_id: str, count: int, seed: int = 0, invert_at: int | None = None,
             delay: int = 50) -> list[dict[str, Any]]:
    """Inference events of a stable classifier and, ``delay`` events later, their label events.

    From index ``invert_at`` on, the world inverts the relation between the
    input and the true label (concept drift): the inputs and the model's
    predictions keep their distribution, only the labels say it is now wrong.
    """
    rng = random.Random(f"{model_id}/labelled/{seed}")
    out: list[dict[str, Any]] = []
    waiting: list[tuple[int, dict[str, Any]]] = []
    for i in range(count):
        x = rng.gauss(0.0, 1.0)
        score = _sigmoid(2.5 * x)
        truth_p = _sigmoid(-2.5 * x) if invert_at is not None and i >= invert_at else score
        event_id = f"{model_id}-{seed}-{i}"
        t = round(BASE_TIME_S + i * 0.01, 3)
        out.append({"event_id": event_id, "model_id": model_id, "timestamp": t,
                    "features": {"x": round(x, 4), "segment": rng.choice(["a", "b", "c"])},
                    "prediction": {"score": round(score, 4), "label": int(score >= 0.5)}})
        waiting.append((i + delay, {"event_id": event_id, "model_id": model_id,
                                    "label": int(rng.random() < truth_p), "timestamp": round(t + delay * 0.01, 3)}))
        while waiting and waiting[0][0] <= i:
            out.append(waiting.pop(0)[1])
    out.extend(label for _, label in waiting)
    return out


GENERATORS = {"fraud": _fraud, "churn": _churn, "stable": _stable}


def generate(model_id: str, count: int, seed: int = 0, drift_at: int | None = None,
             kind: str | None = None, start: int = 0, until: int | None = None) -> list[dict[str, Any]]:
    """``count`` inference events of ``model_id``; from index ``drift_at`` on the inputs drift (up to
    index ``until``, when given: from there on they are back to normal)."""
    make = GENERATORS[kind or model_id]
    rng = random.Random(f"{model_id}/{seed}")
    events = []
    for i in range(start + count):
        features, score = make(rng, drift_at is not None and i >= drift_at and (until is None or i < until))
        if i < start:
            continue
        events.append({"event_id": f"{model_id}-{seed}-{i}", "model_id": model_id,
                       "timestamp": round(BASE_TIME_S + i * 0.01, 3), "features": features,
                       "prediction": {"score": round(score, 4), "label": int(score >= 0.5)},
                       "latency_ms": round(rng.lognormvariate(2.3, 0.3), 2)})
    return events
