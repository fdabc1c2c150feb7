"""Start a retraining job for each retraining request stream-monitor publishes: a downstream consumer.

stream-monitor itself decides when a model needs retraining (``[retraining] topic`` and
``[models.<id>.retraining]``: one request per incident that meets the model's policy, see
"Retraining requests" in the README) and publishes the request, key = model id, to the retraining
topic (schemas/retraining_request.json). This consumer reads that topic and hands each request to
your training pipeline, once:

    python examples/retrain_on_drift.py --bootstrap-servers 127.0.0.1:9092 --topic ml.retrain \\
        --command 'python train.py --model {model_id} --request {request_id}'

``--command`` is run with the request's fields substituted (``{model_id}``, ``{request_id}``,
``{incident}``, ``{reason}``) and the whole request as JSON on its standard input; without it the
request is printed. A request is acted on once per ``request_id``: after a crash of the service a
request may be published again, always with the same id, and :class:`RequestGate` lets the repeat
pass by. The ids seen are kept in memory (the last ``--remember`` of them) and the consumer's offsets
are committed only after the command has run, so a restart of this consumer re-reads at most the
requests it had not finished; make your pipeline idempotent on ``request_id`` if a repeat there
would matter.

The decision logic is the pure class :class:`RequestGate` (no Kafka; tested by
tests/unit/test_example_consumer.py); :func:`main` wires it to confluent-kafka.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import shlex
import signal
import subprocess
import sys
from typing import Any, Mapping

log = logging.getLogger("retrain_on_drift")

REQUIRED = ("request_id", "model_id", "incident", "reason", "evidence")
FIELDS = ("model_id", "request_id", "incident", "reason")


class RequestGate:
    """Which requests to act on: each well-formed request once per ``request_id``. Pure: no I/O.

    >>> gate = RequestGate(remember=2)
    >>> request = {"request_id": "r1", "model_id": "fraud", "incident": "i1", "reason": "drift", "evidence": {}}
    >>> gate.admit(request) is request
    True
    >>> gate.admit(dict(request)) is None  # a repeat of the same id
    True
    >>> gate.admit({"not": "a request"}) is None
    True
    """

    def __init__(self, remember: int = 10_000):
        if remember < 1:
            raise ValueError("remember must be at least 1")
        self.remember = remember
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.repeats = 0
        self.malformed = 0

    def admit(self, request: Any) -> Mapping[str, Any] | None:
        """The request if it is new and well-formed, else ``None`` (counted)."""
        if not isinstance(request, dict) or any(not isinstance(request.get(k), (str, dict)) for k in REQUIRED):
            self.malformed += 1
            return None
        rid = request["request_id"]
        if rid in self._seen:
            self.repeats += 1
            self._seen.move_to_end(rid)
            return None
        self._seen[rid] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        return request


def command_for(template: str, request: Mapping[str, Any]) -> list[str]:
    """``template`` split like a shell would, each word with the request's fields substituted (never through a
    shell: a field cannot inject a command).

    >>> command_for("train --model {model_id} --why {reason}", {"model_id": "fraud; rm -rf /", "request_id": "r",
    ...                                                         "incident": "i", "reason": "drift"})
    ['train', '--model', 'fraud; rm -rf /', '--why', 'drift']
    """
    values = {k: str(request[k]) for k in FIELDS}
    return [word.format(**values) for word in shlex.split(template)]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="ml.retrain", help="stream-monitor's [retraining] topic")
    parser.add_argument("--group", default="retrain-on-drift")
    parser.add_argument("--command", default="", help="run per new request ({model_id}, {request_id}, "
                        "{incident}, {reason} substituted; the request as JSON on stdin); empty: print it")
    parser.add_argument("--remember", type=int, default=10_000, help="request ids kept to recognise repeats")
    parser.add_argument("-X", dest="properties", action="append", default=[], metavar="KEY=VALUE",
                        help="a librdkafka property (repeatable), e.g. -X security.protocol=SSL")
    args = parser.parse_args(argv)
    if args.remember < 1:
        parser.error("--remember must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka import Consumer, KafkaError  # noqa: PLC0415

    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    extra = dict(item.split("=", 1) for item in args.properties)
    gate = RequestGate(args.remember)
    consumer = Consumer({**extra, "bootstrap.servers": args.bootstrap_servers, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    consumer.subscribe([args.topic])
    log.info("waiting for retraining requests on %s", args.topic)
    try:
        while not stopping:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", message.error())
                continue
            try:
                request = gate.admit(json.loads(message.value()))
            except (TypeError, ValueError):
                request = gate.admit(None)
            if request is not None:
                log.info("retraining request %s for %s (%s): %s", request["request_id"][:12], request["model_id"],
                         request["reason"], request.get("message", ""))
                if args.command:
                    done = subprocess.run(command_for(args.command, request), input=json.dumps(request).encode(),
                                          check=False)
                    if done.returncode != 0:
                        log.error("the command for request %s exited with %d", request["request_id"][:12],
                                  done.returncode)
                else:
                    print(json.dumps(request), flush=True)
            consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()
    log.info("stopped: %d repeats and %d malformed messages passed by", gate.repeats, gate.malformed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
