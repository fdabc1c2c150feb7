"""Turn sustained drift into a retraining request: a downstream consumer of the alert topic.

stream-monitor publishes one ``firing`` alert when a detector starts firing
and one ``resolved`` alert when it settles (schemas/alert.json).
This consumer keeps, per model, the detectors currently firing, and when a
model has had at least ``--min-alerts`` *critical* ``feature`` / ``prediction``
/ ``performance`` alerts firing at once for at least ``--sustain-seconds``, it
publishes one retraining request (key = model id) to ``--request-topic``:

    {"request_id": "…", "model_id": "fraud", "reason": "3 critical drift alerts firing for 600 s or more: …",
     "alerts": [{"alert_id": …, "signal": "feature", "name": "amount", "detector": "psi", …}, …],
     "requested_at": "2026-11-27T21:00:00.000Z"}

It does not ask again for that model until all its qualifying alerts have
resolved; a brief burst that resolves before ``--sustain-seconds`` asks nothing.

    python examples/retrain_on_drift.py --bootstrap-servers 127.0.0.1:9092 \\
        --min-alerts 2 --sustain-seconds 900

The decision logic is the pure class :class:`RetrainPolicy` (no Kafka; tested
by tests/unit/test_example_consumer.py); :func:`main` wires it to confluent-kafka.

State is in memory: after a restart, episodes that started earlier are
unknown until they re-fire. ``--from-beginning`` rebuilds the state by
reading the alert topic from its start (as far as retention allows); a
request repeated that way carries the same ``request_id`` (a hash of the
model and the alert ids it is based on), so the retraining pipeline can
recognise it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

log = logging.getLogger("retrain_on_drift")

DEFAULT_SIGNALS = ("feature", "prediction", "performance")
ALERT_FIELDS = ("alert_id", "status", "severity", "model_id", "signal", "name", "detector")


@dataclass
class _Firing:
    alert: dict[str, Any]
    since: float  # when this consumer saw it start firing


@dataclass
class _ModelState:
    firing: dict[tuple[str, str, str], _Firing] = field(default_factory=dict)  # (signal, name, detector) → alert
    sustained_since: float | None = None  # when the qualifying count last reached min_alerts
    requested: bool = False  # a request was sent; no other until every qualifying alert resolves


class RetrainPolicy:
    """Decides when a model's drift is sustained enough to ask for retraining. Pure: no I/O, no clock.

    ``observe`` every alert in topic order with the current time; call ``tick``
    now and then (e.g. when the alert topic is idle) so that a condition that
    becomes true with time alone is noticed without a new alert.

    >>> policy = RetrainPolicy(min_alerts=1, sustain_seconds=60)
    >>> a = {"alert_id": "a1", "status": "firing", "severity": "critical", "model_id": "m",
    ...      "signal": "feature", "name": "x", "detector": "psi"}
    >>> policy.observe(a, now=0.0) is None
    True
    >>> policy.tick(now=60.0)[0]["model_id"]
    'm'
    >>> policy.tick(now=120.0)
    []
    """

    def __init__(self, min_alerts: int = 3, sustain_seconds: float = 600.0,
                 signals: Iterable[str] = DEFAULT_SIGNALS, severities: Iterable[str] = ("critical",)):
        if min_alerts < 1:
            raise ValueError("min_alerts must be at least 1")
        if sustain_seconds < 0:
            raise ValueError("sustain_seconds must be >= 0")
        self.min_alerts = min_alerts
        self.sustain_seconds = sustain_seconds
        self.signals = frozenset(signals)
        self.severities = frozenset(severities)
        self.models: dict[str, _ModelState] = {}

    # --- input ------------------------------------------------------------------------

    def observe(self, alert: Mapping[str, Any], now: float) -> dict[str, Any] | None:
        """Take one alert (a decoded alert-topic message) at time ``now`` (seconds).

        Returns a retraining request for the alert's model when one is due, else ``None``.
        Messages that are not alerts (fields missing) are ignored.
        """
        if not all(isinstance(alert.get(key), str) for key in ALERT_FIELDS):
            return None
        model_id = alert["model_id"]
        key = (alert["signal"], alert["name"], alert["detector"])
        state = self.models.setdefault(model_id, _ModelState())
        if alert["status"] == "firing":
            held = state.firing.get(key)
            # a repeated firing (replay, crash recovery) keeps its start; a new episode starts now
            state.firing[key] = _Firing(dict(alert), held.since if held is not None else now)
        elif alert["status"] == "resolved":
            state.firing.pop(key, None)
        else:
            return None
        return self._decide(model_id, state, now)

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Requests that became due by the passage of time alone."""
        out = []
        for model_id, state in self.models.items():
            request = self._decide(model_id, state, now)
            if request is not None:
                out.append(request)
        return out

    # --- state ------------------------------------------------------------------------

    def qualifying(self, model_id: str) -> list[dict[str, Any]]:
        """The model's firing alerts that count towards a request, in a stable order."""
        state = self.models.get(model_id)
        return [f.alert for f in self._qualifying(state)] if state is not None else []

    def _qualifying(self, state: _ModelState) -> list[_Firing]:
        return [f for _, f in sorted(state.firing.items())
                if f.alert["signal"] in self.signals and f.alert["severity"] in self.severities]

    def firing(self, model_id: str) -> set[tuple[str, str, str]]:
        """(signal, name, detector) of every alert of the model currently firing."""
        state = self.models.get(model_id)
        return set(state.firing) if state is not None else set()

    def _decide(self, model_id: str, state: _ModelState, now: float) -> dict[str, Any] | None:
        alerts = self._qualifying(state)
        if not alerts:
            state.requested = False  # every qualifying alert resolved: the next sustained drift may ask again
            state.sustained_since = None
            return None
        if len(alerts) < self.min_alerts:
            state.sustained_since = None
            return None
        if state.sustained_since is None:
            state.sustained_since = now
        if state.requested or now - state.sustained_since < self.sustain_seconds:
            return None
        state.requested = True
        return self._request(model_id, alerts, now)

    def _request(self, model_id: str, firing: list[_Firing], now: float) -> dict[str, Any]:
        alerts = [f.alert for f in firing]
        described = ", ".join(f"{a['signal']}.{a['name']} {a['detector']}" for a in alerts)
        ids = sorted(a["alert_id"] for a in alerts)
        return {
            "request_id": hashlib.sha256(json.dumps([model_id, ids]).encode()).hexdigest(),
            "model_id": model_id,
            "reason": (f"{len(alerts)} {'/'.join(sorted(self.severities))} drift alerts firing for "
                       f"{self.sustain_seconds:g} s or more: {described}"),
            "alerts": [{"alert_id": a["alert_id"], "signal": a["signal"], "name": a["name"],
                        "detector": a["detector"], "severity": a["severity"],
                        "statistic": a.get("statistic"), "threshold": a.get("threshold"),
                        "detected_at": a.get("detected_at"), "firing_since": _rfc3339(f.since),
                        "message": a.get("message")} for f in firing for a in (f.alert,)],
            "requested_at": _rfc3339(now),
        }


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Kafka wiring -------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--alert-topic", default="ml.alerts")
    parser.add_argument("--request-topic", default="ml.retrain-requests")
    parser.add_argument("--group", default="retrain-on-drift", help="consumer group id")
    parser.add_argument("--min-alerts", type=int, default=3, metavar="N",
                        help="qualifying alerts firing at once (default 3)")
    parser.add_argument("--sustain-seconds", type=float, default=600.0, metavar="T",
                        help="for at least this long (default 600)")
    parser.add_argument("--signals", default=",".join(DEFAULT_SIGNALS),
                        help="signals that count (default feature,prediction,performance)")
    parser.add_argument("--from-beginning", action="store_true",
                        help="rebuild the firing state from the start of the alert topic")
    parser.add_argument("-X", dest="properties", action="append", default=[], metavar="KEY=VALUE",
                        help="extra librdkafka property for both clients (security.protocol, sasl.* …)")
    args = parser.parse_args(argv)
    if args.min_alerts < 1 or args.sustain_seconds < 0:
        parser.error("--min-alerts must be >= 1 and --sustain-seconds >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer  # noqa: PLC0415

    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    extra = dict(item.split("=", 1) for item in args.properties)
    policy = RetrainPolicy(args.min_alerts, args.sustain_seconds,
                           [s.strip() for s in args.signals.split(",") if s.strip()])
    consumer = Consumer({**extra, "bootstrap.servers": args.bootstrap_servers, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": True})
    producer = Producer({**extra, "bootstrap.servers": args.bootstrap_servers,
                         "enable.idempotence": True, "acks": "all"})
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def on_assign(c: Any, partitions: list) -> None:
        if args.from_beginning:
            for tp in partitions:
                tp.offset = OFFSET_BEGINNING
        c.assign(partitions)

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            log.error("retraining request for %s NOT delivered: %s", msg.key(), err)

    def publish(request: dict[str, Any]) -> None:
        log.info("retraining request for %s: %s", request["model_id"], request["reason"])
        producer.produce(args.request_topic, key=request["model_id"].encode(),
                         value=json.dumps(request).encode(), on_delivery=delivered)
        if producer.flush(10) > 0:
            log.error("retraining request for %s still undelivered after 10 s", request["model_id"])

    consumer.subscribe([args.alert_topic], on_assign=on_assign)
    log.info("watching %s: %d critical %s alerts for %g s → %s", args.alert_topic, args.min_alerts,
             "/".join(sorted(policy.signals)), args.sustain_seconds, args.request_topic)
    try:
        while not stopping:
            message = consumer.poll(1.0)
            now = time.time()
            if message is None:  # idle: time alone may have made a request due
                for request in policy.tick(now):
                    publish(request)
                continue
            if message.error() is not None:
                if message.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", message.error())
                continue
            try:
                alert = json.loads(message.value())
            except (TypeError, ValueError):
                log.warning("skipping a message that is not JSON at %s[%d]@%d",
                            message.topic(), message.partition(), message.offset())
                continue
            if isinstance(alert, dict):
                request = policy.observe(alert, now)
                if request is not None:
                    publish(request)
    finally:
        consumer.close()
        producer.flush(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
