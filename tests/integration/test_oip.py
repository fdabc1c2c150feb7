"""Model servers' payload loggers, end to end. KServe: Open Inference Protocol requests and responses
produced as separate CloudEvents to one topic (responses sometimes first), paired through Redis, drift
detected in one feature, bad messages dead-lettered, and a SIGKILL mid-stream that loses and double-counts
nothing. Seldon Core v2: protobuf requests and responses on a model's .inputs and .outputs topics, paired
across topics and partitions, each row once across a SIGKILL."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import struct
from datetime import datetime, timezone

import orjson

from stream_monitor.config import load_config
from stream_monitor.demo.localstack import create_topics
from stream_monitor.join import RedisJoin, pair_settings
from stream_monitor.state import connect

from ..support import (Feeder, Run, assert_same_outcome, final_states, is_cluster, pb_field, pb_tensor, produce,
                       stored_offset, unique, wait_for_offsets)

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS = {"decisions": "partition",
        "reference": {"events": 1000}, "detectors": {"psi": {"window": 1000}, "resolve_after": 2000},
        "performance": {"enabled": False},
        "oip": {"columns": {"input-0": COLUMNS}, "score": "proba", "label": "predict", "served_as": "sklearn-iris"}}
CALLS = 4000
DRIFT_AT = 2000  # calls from here on have petal_length shifted
UNANSWERED = {777, 1555, 3333}  # requests whose response never comes
BAD = {  # (call after which it is produced) → (its body, the reason it is dead-lettered with)
    500: (b'{"inputs": [', "not_json"),
    900: (orjson.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "INT64",
                                    "data": [1.5, 2, 3, 4]}]}), "wrong_datatype"),
    1300: (orjson.dumps({"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32",
                                     "data": [1, 2, 3, 4]}]}), "shape_mismatch"),
    2600: (orjson.dumps({"inputs": [{"name": "embedding", "shape": [1, 8], "datatype": "FP32",
                                     "data": [0] * 8}]}), "unknown_tensor"),
}


def headers(kind: str, request_id: str, call: int) -> list[tuple[str, bytes]]:
    """A KServe logger CloudEvent's headers (Kafka binding)."""
    seconds = 1_796_205_600 + call * 0.01
    return [("ce_specversion", b"1.0"), ("ce_id", request_id.encode()),
            ("ce_type", f"org.kubeflow.serving.inference.{kind}".encode()),
            ("ce_source", b"http://sklearn-iris-predictor.default/"), ("ce_inferenceservicename", b"sklearn-iris"),
            ("ce_namespace", b"default"), ("ce_component", b"predictor"), ("ce_endpoint", b"default"),
            ("ce_time", _rfc3339(seconds).encode()),
            ("content-type", b"application/json")]


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def kserve_stream() -> tuple[list[tuple], int, int]:
    """The logger's messages in the order they reach the topic, the rows of the calls that got a response and
    those of the calls that did not."""
    rng = random.Random(17)
    messages, late, rows_paired, rows_unanswered = [], [], 0, 0
    for call in range(CALLS):
        batch = rng.choice((1, 1, 2, 3))
        rows = [[round(rng.gauss(5.8, 0.8), 3), round(rng.gauss(3.0, 0.4), 3),
                 round(rng.gauss(3.8 + (3.0 if call >= DRIFT_AT else 0.0), 1.5), 3), round(rng.gauss(1.2, 0.7), 3)]
                for _ in range(batch)]
        request_id = f"req-{call}"
        request = orjson.dumps({"id": request_id, "inputs": [
            {"name": "input-0", "shape": [batch, 4], "datatype": "FP32", "data": rows}]})
        scores = [round(rng.random(), 4) for _ in range(batch)]
        response = orjson.dumps({"model_name": "sklearn-iris", "id": request_id, "outputs": [
            {"name": "predict", "shape": [batch], "datatype": "INT64", "data": [int(s >= 0.5) for s in scores]},
            {"name": "proba", "shape": [batch, 2], "datatype": "FP32",
             "data": [[round(1 - s, 4), s] for s in scores]}]})
        req = (0, request_id.encode(), request, headers("request", request_id, call))
        resp = (0, request_id.encode(), response, headers("response", request_id, call))
        if call in UNANSWERED:
            messages.append(req)
            rows_unanswered += batch
            continue
        rows_paired += batch
        shape = call % 5
        if shape == 0:  # the response first
            messages += [resp, req]
        elif shape == 1:  # the response a few calls later
            messages.append(req)
            late.append((call + 3, resp))
        else:
            messages += [req, resp]
        while late and late[0][0] <= call:
            messages.append(late.pop(0)[1])
        if call in BAD:
            messages.append((0, b"bad", BAD[call][0], headers("request", f"bad-{call}", call)))
    messages += [resp for _, resp in late]
    return messages, rows_paired, rows_unanswered


def oip_run(broker, redis_server, tmp_path, topic: str, name: str) -> Run:
    run = Run(broker, redis_server, tmp_path, topic, 1, name, models={"iris": IRIS})
    text = run.config.read_text()
    line = f'input_topics = ["{topic}"]'
    run.config.write_text(text.replace(line, f'{line}\ninput_formats = {{ "{topic}" = "oip" }}'))
    return run


def events_counted(run: Run) -> int:
    _, state = run.states()[0]
    return state["models"]["iris"]["events"]


def test_kserve_requests_and_responses_are_paired_drift_is_alerted_and_a_sigkill_loses_nothing(
        broker, redis_server, tmp_path, monitors):
    topic = unique("kserve-payloads")
    create_topics(broker.address, {topic: 1})
    messages, rows_paired, rows_unanswered = kserve_stream()
    clean, killed = (oip_run(broker, redis_server, tmp_path, topic, name) for name in ("clean", "killed"))
    clean_process, first = clean.start(monitors), killed.start(monitors)
    feeder = Feeder(broker.address, topic, messages, rate=1000)
    feeder.start()
    wait_for_offsets(killed.store, topic, {0: 2500}, processes=[first])
    first.kill()
    ends = feeder.result(timeout=180)
    assert (stored_offset(killed.store, topic, 0) or 0) < ends[0], "the kill was mid-stream"
    second = killed.start(monitors)
    wait_for_offsets(killed.store, topic, ends, processes=[second], timeout=180)
    wait_for_offsets(clean.store, topic, ends, processes=[clean_process], timeout=180)
    assert second.terminate() == 0 and clean_process.terminate() == 0

    # every row of every answered call is one event, counted once, in both runs
    assert events_counted(clean) == rows_paired
    assert_same_outcome(killed, clean)
    alerts = clean.alerts()
    firing = {(a["signal"], a["name"], a["detector"]) for a in alerts if a["status"] == "firing"}
    assert ("feature", "petal_length", "psi") in firing, firing
    assert not [f for f in firing if f[0] == "feature" and f[1] != "petal_length"], firing
    letters = [orjson.loads(m.value()) for m in clean.dead_letters()]
    assert sorted(x["reason"] for x in letters) == sorted(reason for _, reason in BAD.values()), letters
    assert all(x["error"] and x["topic"] == topic for x in letters)
    # the rows of requests that never got a response wait in Redis (until oip.pair_wait_seconds), counted; the
    # responses that came first are kept (paired, remembered for replays) until theirs
    config = load_config(clean.config)
    pairing = RedisJoin(connect(redis_server.address, is_cluster(redis_server)), f"{clean.namespace}:oip",
                        pair_settings(config))
    lag = pairing.lag("iris")
    assert lag["awaiting"] == rows_unanswered and lag["expired"] == 0 and lag["labels_waiting"] > 0, lag
    status = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(clean.config), "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(status.stdout)["oip_pairing"]["iris"]["awaiting"] == rows_unanswered
    text = subprocess.run([sys.executable, "-m", "stream_monitor", "status", "-c", str(clean.config)],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"{rows_unanswered:,} request rows awaiting their response" in text, text


def seldon_call(call: int, rng: random.Random) -> tuple[bytes, bytes, int, str]:
    """A Seldon Core v2 request (raw contents) and its response (typed contents), the rows, the request id."""
    batch = rng.choice((1, 2))
    values = [v for _ in range(batch)
              for v in (rng.gauss(5.8, 0.8), rng.gauss(3.0, 0.4),
                        rng.gauss(3.8 + (3.0 if call >= DRIFT_AT else 0.0), 1.5), rng.gauss(1.2, 0.7))]
    request_id = f"seldon-{call}"
    request = (pb_field(1, b"iris") + pb_field(5, pb_tensor("input-0", "FP32", [batch, 4]))
               + pb_field(7, struct.pack(f"<{4 * batch}f", *values)))
    scores = [rng.random() for _ in range(batch)]
    response = (pb_field(1, b"iris") + pb_field(3, request_id.encode())
                + pb_field(5, pb_tensor("predict", "INT64", [batch], pb_field(3, bytes(int(s >= 0.5) for s in scores))))
                + pb_field(5, pb_tensor("proba", "FP32", [batch, 2],
                                        pb_field(6, struct.pack(f"<{2 * batch}f",
                                                                *(v for s in scores for v in (1 - s, s)))))))
    return request, response, batch, request_id


def test_seldon_protobuf_inputs_and_outputs_on_their_own_topics_are_paired_once_across_a_sigkill(
        broker, redis_server, tmp_path, monitors):
    prefix = unique("seldon")
    inputs, outputs = f"{prefix}.default.model.iris.inputs", f"{prefix}.default.model.iris.outputs"
    create_topics(broker.address, {inputs: 2, outputs: 2})
    run = Run(broker, redis_server, tmp_path, inputs, 2, "seldon",
              models={"iris": {**IRIS, "oip": {"columns": {"input-0": COLUMNS}}}})
    text = run.config.read_text().replace(
        f'input_topics = ["{inputs}"]',
        f'input_topics = ["{inputs}", "{outputs}"]\ninput_formats = {{ "{inputs}" = "oip", "{outputs}" = "oip" }}')
    run.config.write_text(text)
    rng = random.Random(5)
    requests, responses, rows = [], [], 0
    for call in range(CALLS):
        request, response, batch, request_id = seldon_call(call, rng)
        rows += batch
        key = request_id.encode()  # Seldon keys a call's messages by its request id, and sets x-request-id
        requests.append((call % 2, key, request, [("x-request-id", key), ("pipeline", b"iris")]))
        responses.append(((call + 1) % 2, key, response, [("x-request-id", key), ("pipeline", b"iris")]))
    process = run.start(monitors)
    # the outputs first, so half of the rows find their request waiting and half their response; an instance
    # SIGKILLed while both topics flow, then restarted
    first_outputs = produce(broker.address, outputs, responses[: CALLS // 2])
    feeders = [Feeder(broker.address, inputs, requests, rate=800),
               Feeder(broker.address, outputs, responses[CALLS // 2:], rate=400)]
    for feeder in feeders:
        feeder.start()
    wait_for_offsets(run.store, inputs, {0: 600, 1: 600}, processes=[process])
    process.kill()
    input_ends, more = (feeder.result(timeout=180) for feeder in feeders)
    assert any((stored_offset(run.store, inputs, p) or 0) < end for p, end in input_ends.items()), "killed mid-stream"
    output_ends = {p: max(first_outputs.get(p, 0), more.get(p, 0)) for p in (0, 1)}
    process = run.start(monitors)
    wait_for_offsets(run.store, inputs, input_ends, processes=[process], timeout=120)
    wait_for_offsets(run.store, outputs, output_ends, processes=[process], timeout=120)
    assert process.terminate() == 0
    counted = sum(state[1]["models"]["iris"]["events"]
                  for topic in (inputs, outputs) for state in final_states(run.store, topic, (0, 1)).values()
                  if state is not None and "iris" in state[1]["models"])
    assert counted == rows, "every row once, whichever topic completed it"
    firing = {(a["signal"], a["name"]) for a in run.alerts() if a["status"] == "firing"}
    assert ("feature", "petal_length") in firing, firing
    assert not run.dead_letters()
