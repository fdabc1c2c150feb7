"""Events of the batch decode through the engine: the same alerts and state as the codec's events.

The batch decode gives every event with features its float64 row (NaN where a value is not a number)
and a mapping over the batch's values instead of a dict (a column of the batch read in one go); the engine reads those (a column whose row has
a NaN from the events) and must decide exactly what it decides on the codec's events: pinned positions,
segments, the joint test, nulls, missing keys and other key orders included."""

from __future__ import annotations

import random

import orjson

from stream_monitor.batchcodec import Features, decode_batch
from stream_monitor.codec import decode
from stream_monitor.config import parse_config
from stream_monitor.events import RawMessage
from stream_monitor.partition import PartitionMonitor
from stream_monitor.synthetic import generate

PARTITION = 3
MODEL = {"decisions": "partition", "reference": {"events": 1000},
         "detectors": {"psi": {"window": 1000}, "resolve_after": 2000}}
SEGMENTED = {**MODEL, "segments": {"columns": ["country"], "min_events": 50}}
CONFIG = parse_config({"models": {"fraud": SEGMENTED, "churn": MODEL, "stable": MODEL}})
KNOWN = frozenset(CONFIG.models)


def documents() -> list[dict]:
    """fraud (drifting from its event 3000: categoricals and booleans among its features), churn and stable
    round robin, with nulls, a missing key and another key order now and then."""
    streams = [generate("fraud", 4000, drift_at=3000), generate("churn", 4000), generate("stable", 4000)]
    rng = random.Random(5)
    docs = []
    for triple in zip(*streams):
        for doc in triple:
            doc = orjson.loads(orjson.dumps(doc))
            features = doc["features"]
            name = rng.choice(sorted(features))
            roll = rng.random()
            if roll < 0.02:
                features[name] = None
            elif roll < 0.03:
                del features[name]
            elif roll < 0.04:
                doc["features"] = dict(reversed(list(features.items())))
            docs.append(doc)
    return docs


def outcome(events) -> tuple:
    monitor = PartitionMonitor(CONFIG, PARTITION, {})
    alerts = []
    for start in range(0, len(events), 500):
        alerts += monitor.process_batch([(o, events[o], None) for o in range(start, min(start + 500, len(events)))])
    return alerts, monitor.snapshot()


def test_batch_decoded_events_raise_the_codecs_alerts():
    raws = [RawMessage("ml.inference", PARTITION, i, orjson.dumps(d)) for i, d in enumerate(documents())]
    slow = [decode(r, KNOWN) for r in raws]
    fast = [e for start in range(0, len(raws), 500) for e in decode_batch(raws[start:start + 500], KNOWN)]
    assert fast == slow
    assert all(isinstance(e.features, Features) for e in fast)  # a mapping over the batch's arrays, mixed too
    assert sum(e.numbers is not None for e in fast) == len(fast)  # mixed events too: their numbers in bulk
    assert sum(e.numbers is not None for e in slow) < len(slow) // 2  # the codec's: only all-number events
    expected = outcome(slow)
    fraud = expected[1]["models"]["fraud"]
    assert fraud["segments"] and fraud["multivariate"], "the segments and the joint test must run"
    assert sum(a.model_id == "fraud" for a in expected[0]) >= 3, "the drift must raise alerts"
    assert outcome(fast) == expected


def test_all_number_events_read_through_their_mappings_raise_the_codecs_alerts():
    """Events whose features are all numbers keep a mapping over the batch (a dict only when read): the same
    alerts and state, with other key orders and a missing key now and then."""
    rng = random.Random(8)
    docs = []
    for i in range(9000):
        shift = 1.5 if i >= 6000 else 0.0
        features = {"a": rng.gauss(shift, 1.0), "b": round(rng.lognormvariate(0.0, 1.0), 3), "c": rng.randint(0, 9)}
        if i % 1000 == 999:
            features = dict(reversed(list(features.items())))
        if i % 1500 == 1499:
            del features["b"]
        docs.append({"event_id": f"e{i}", "model_id": "stable", "features": features,
                     "prediction": {"score": rng.random()}, "timestamp": 1_795_000_000 + i * 0.25})
    raws = [RawMessage("ml.inference", PARTITION, i, orjson.dumps(d)) for i, d in enumerate(docs)]
    slow = [decode(r, KNOWN) for r in raws]
    fast = [e for start in range(0, len(raws), 500) for e in decode_batch(raws[start:start + 500], KNOWN)]
    assert fast == slow and all(isinstance(e.features, Features) for e in fast)
    expected = outcome(slow)
    assert expected[0], "the shift must raise alerts for the comparison to mean something"
    assert outcome(fast) == expected
