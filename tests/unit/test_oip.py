"""The Open Inference Protocol decoder (stream_monitor/oip.py) and the pairing's pure parts (join.py):
KServe- and Seldon-shaped requests and responses, batches, and every refusal as a dead letter."""

import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream_monitor import codec
from stream_monitor.config import OipConfig, parse_config
from stream_monitor.errors import ConfigError
from stream_monitor.events import DeadLetter, InferenceEvent, RawMessage
from stream_monitor.join import JoinResult, MemoryJoin, PerformanceConfig, pair_ops, paired_events, pair_settings
from stream_monitor.oip import OipHalf, decode

from ..support import pb_field, pb_tensor, pb_varint

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
MODELS = {"iris": OipConfig(columns={"input-0": ("sepal_length", "sepal_width", "petal_length", "petal_width")}),
          "fraud": OipConfig(served_as="fraud-v2", rename={"amt": "amount"}, score="proba", label="predict")}


def kserve(kind: str, body: dict, request_id: str = "req-1", service: str = "iris", **extra) -> RawMessage:
    headers = [("ce_specversion", b"1.0"), ("ce_id", request_id.encode()),
               ("ce_type", f"org.kubeflow.serving.inference.{kind}".encode()),
               ("ce_source", b"http://localhost:9081/"), ("ce_inferenceservicename", service.encode()),
               ("ce_namespace", b"default"), ("ce_time", b"2026-12-02T10:00:00.250Z"),
               ("content-type", b"application/json")]
    return RawMessage("kserve.payloads", 0, extra.get("offset", 0), orjson.dumps(body), headers=tuple(headers),
                      timestamp_ms=1796205000000)


IRIS_REQUEST = {"id": "req-1", "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32",
                                           "data": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}]}
IRIS_RESPONSE = {"model_name": "iris", "id": "req-1", "outputs": [
    {"name": "predict", "shape": [2], "datatype": "INT64", "data": [1, 2]},
    {"name": "proba", "shape": [2, 3], "datatype": "FP32", "data": [0.1, 0.7, 0.2, 0.0, 0.3, 0.7]}]}


def schema():
    return Draft202012Validator(json.loads((SCHEMAS / "oip.json").read_text()))


def test_a_kserve_batched_request_is_one_row_per_event_with_the_columns_named():
    half = decode(kserve("request", IRIS_REQUEST), MODELS)
    assert half == OipHalf("request", "iris", "req-1", 1796205600250, (
        {"sepal_length": 6.8, "sepal_width": 2.8, "petal_length": 4.8, "petal_width": 1.4},
        {"sepal_length": 6.0, "sepal_width": 3.4, "petal_length": 4.5, "petal_width": 1.6}))
    assert half.event_ids() == ["req-1/0", "req-1/1"]
    assert schema().is_valid(IRIS_REQUEST)


def test_a_kserve_response_gives_score_from_the_first_float_output_and_label_from_the_first_other():
    half = decode(kserve("response", IRIS_RESPONSE), MODELS)
    assert half.kind == "response" and half.model_id == "iris" and half.request_id == "req-1"
    assert half.rows == ((0.2, "1"), (0.7, "2"))  # the last column of a 2-D score output
    assert schema().is_valid(IRIS_RESPONSE)


def test_named_one_element_tensors_become_features_renamed_and_served_name_maps_to_the_model():
    body = {"inputs": [{"name": "amt", "shape": [1], "datatype": "FP64", "data": [12.5]},
                       {"name": "country", "shape": [1, 1], "datatype": "BYTES", "data": ["DE"]},
                       {"name": "is_new", "shape": [1], "datatype": "BOOL", "data": [True]}]}
    half = decode(kserve("request", body, "r9", service="fraud-v2"), MODELS)
    assert half.model_id == "fraud" and half.rows == ({"amount": 12.5, "country": "DE", "is_new": True},)
    assert schema().is_valid(body)


def test_a_cloudevent_in_structured_mode_gives_its_attributes_and_data():
    import base64  # noqa: PLC0415

    event = {"specversion": "1.0", "id": "req-5", "type": "org.kubeflow.serving.inference.response",
             "source": "http://sklearn-iris-predictor.default/", "inferenceservicename": "iris",
             "time": "2026-12-02T10:00:01Z", "datacontenttype": "application/json", "data": IRIS_RESPONSE}
    half = decode(RawMessage("kserve", 0, 0, orjson.dumps(event)), MODELS)
    assert (half.kind, half.request_id, half.timestamp_ms, half.rows) == ("response", "req-5", 1796205601000,
                                                                          ((0.2, "1"), (0.7, "2")))
    encoded = {**event, "data_base64": base64.b64encode(orjson.dumps(IRIS_RESPONSE)).decode()}
    del encoded["data"]
    assert decode(RawMessage("kserve", 0, 0, orjson.dumps(encoded)), MODELS) == half
    assert refusal(RawMessage("kserve", 0, 0, orjson.dumps({**event, "data": "{no"}))).reason == "not_json"
    assert refusal(RawMessage("kserve", 0, 0, orjson.dumps({**event, "data": [1]}))).reason == "not_object"


def test_seldon_topics_name_the_model_and_the_side_and_the_key_or_body_gives_the_request_id():
    message = RawMessage("seldon.default.model.iris.inputs", 3, 7, orjson.dumps({"inputs": IRIS_REQUEST["inputs"]}),
                         key=b"c0ffee", timestamp_ms=1796205000000)
    half = decode(message, MODELS)
    assert (half.kind, half.model_id, half.request_id, half.timestamp_ms) == ("request", "iris", "c0ffee",
                                                                              1796205000000)
    response = RawMessage("seldon.default.model.iris.outputs", 1, 2, orjson.dumps(IRIS_RESPONSE), key=b"other")
    assert decode(response, MODELS).request_id == "req-1"  # the body's id wins over the key
    headed = response._replace(headers=(("x-request-id", b"hdr-id"),))
    assert decode(headed, MODELS).request_id == "hdr-id"


def test_configured_outputs_are_used():
    body = {"outputs": [{"name": "other", "shape": [1], "datatype": "FP32", "data": [0.5]},
                        {"name": "proba", "shape": [1], "datatype": "FP32", "data": [0.9]},
                        {"name": "predict", "shape": [1], "datatype": "BYTES", "data": ["fraud"]}]}
    assert decode(kserve("response", body, service="fraud-v2"), MODELS).rows == ((0.9, "fraud"),)


def refusal(message, models=MODELS) -> DeadLetter:
    out = decode(message, models)
    assert isinstance(out, DeadLetter), out
    assert out.error
    return out


def tensor(**changes):
    return {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], **changes}]}


@pytest.mark.parametrize("body, reason, words", [
    (tensor(datatype="FP128"), "wrong_datatype", "is not one of"),
    (tensor(datatype="INT32", data=[1, 2, 3.5, 4]), "wrong_datatype", "holds integers"),
    (tensor(data=[1, 2, "3", 4]), "wrong_datatype", "holds numbers"),
    (tensor(datatype="BOOL", data=[1, 0, 1, 0]), "wrong_datatype", "holds booleans"),
    (tensor(data=[1, 2, 3]), "shape_mismatch", "holds 4 values, data has 3"),
    (tensor(shape=[1, 2, 2]), "shape_mismatch", "shape must be"),
    (tensor(shape=[1, -4]), "shape_mismatch", "shape must be"),
    (tensor(shape=[1, 3], data=[1, 2, 3]), "shape_mismatch", "oip.columns names 4"),
    ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                 {"name": "b", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}, "shape_mismatch",
     "disagree on the batch size"),
    (tensor(name="unknown", shape=[1, 4]), "unknown_tensor", "oip.columns does not name them"),
    ({"inputs": [{"name": "sepal_length", "shape": [1], "datatype": "FP32", "data": [1]},
                 {"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, "unknown_tensor",
     "given by two input columns"),
    ({"inputs": []}, "missing_field", "non-empty array"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "missing_field", "has no 'data'"),
    ({"inputs": [["x"]]}, "wrong_type", "must be an object"),
    (tensor(data="1,2,3,4"), "wrong_type", "data must be an array"),
])
def test_a_request_that_does_not_fit_is_refused_with_its_reason(body, reason, words):
    letter = refusal(kserve("request", body))
    assert letter.reason == reason and words in letter.error, letter
    assert not schema().is_valid(body) or reason in ("unknown_tensor", "shape_mismatch")  # mapping/shape: not in JSON


@pytest.mark.parametrize("body, service, reason, words", [
    ({"outputs": [{"name": "proba", "shape": [1], "datatype": "FP32", "data": [0.9]}]}, "fraud-v2",
     "unknown_tensor", "no output 'predict'"),
    ({"outputs": [{"name": "predict", "shape": [1, 2], "datatype": "INT64", "data": [1, 0]}]}, "iris",
     "shape_mismatch", "is the label but has 2 columns"),
    ({"outputs": [{"name": "proba", "shape": [1], "datatype": "BOOL", "data": [True]},
                  {"name": "predict", "shape": [1], "datatype": "INT64", "data": [1]}]}, "fraud-v2",
     "wrong_datatype", "a score is a number"),
])
def test_a_response_that_does_not_fit_is_refused_with_its_reason(body, service, reason, words):
    letter = refusal(kserve("response", body, service=service))
    assert letter.reason == reason and words in letter.error, letter


def test_messages_that_are_not_oip_are_refused():
    base = kserve("request", IRIS_REQUEST)
    assert refusal(base._replace(value=b"{nope")).reason == "not_json"
    assert refusal(base._replace(value=b"[1]")).reason == "not_object"
    assert refusal(base._replace(value=None)).reason == "empty"
    assert refusal(base._replace(value=b"\xff\xfe")).reason in ("not_utf8", "not_json")
    assert refusal(kserve("request", IRIS_REQUEST, service="nobody")).reason == "unknown_model"
    no_model = RawMessage("t", 0, 0, orjson.dumps(IRIS_REQUEST))
    assert "no model name" in refusal(no_model).error
    no_id = RawMessage("t", 0, 0, orjson.dumps({"model_name": "iris", "inputs": IRIS_REQUEST["inputs"]}))
    assert "no request id" in refusal(no_id).error
    numeric_id = RawMessage("t", 0, 0, orjson.dumps({"model_name": "iris", "id": 7, **IRIS_REQUEST}))
    assert decode(numeric_id, MODELS).request_id == "req-1"  # the body's own id (a string) is read
    numeric_id = RawMessage("t", 0, 0, orjson.dumps({**IRIS_REQUEST, "model_name": "iris", "id": 7}))
    assert refusal(numeric_id).reason == "wrong_type"
    neither = RawMessage("t", 0, 0, orjson.dumps({"model_name": "iris", "id": "x"}))
    assert refusal(neither).reason == "missing_field"
    wrong_type = base._replace(headers=(("ce_type", b"org.kubeflow.serving.inference.explain"),
                                        ("ce_inferenceservicename", b"iris")))
    assert refusal(wrong_type).reason == "wrong_type"
    bad_time = base._replace(headers=(*base.headers[:6], ("ce_time", b"yesterday")))
    assert "ce_time" in refusal(bad_time).error
    ahead = base._replace(headers=(*base.headers[:6], ("ce_time", b"2026-12-02T10:50:00.001Z")))  # message: 09:50
    assert refusal(ahead).reason == "timestamp_ahead" and refusal(ahead).error.startswith(
        "ce_time 2026-12-02T10:50:00.001Z is 3600 s ahead of its Kafka message (2026-12-02T09:50:00.000Z)")
    assert decode(ahead, MODELS, max_ahead_ms=0).timestamp_ms == 1796205000000 + 3_600_001
    long_id = kserve("request", IRIS_REQUEST, request_id="x" * 300)
    assert refusal(long_id).reason == "event_id_too_long"
    # not JSON, so read as protobuf: these bytes are a valid message of unknown fields, without tensors
    assert "'inputs' must be a non-empty array" in refusal(base._replace(value=b"x" * 2000)).error
    assert decode(base, MODELS, max_bytes=10).reason == "too_large"


def test_too_many_features_per_row_are_refused():
    body = {"inputs": [{"name": f"t{i}", "shape": [1], "datatype": "FP32", "data": [i]} for i in range(30)]}
    assert decode(kserve("request", body), MODELS, max_features=30).rows[0]["t29"] == 29.0
    letter = decode(kserve("request", body), MODELS, max_features=29)
    assert letter.reason == "too_many_features" and "30 features per row" in letter.error


def test_every_refusal_reason_is_in_the_dead_letter_schema():
    reasons = set(json.loads((SCHEMAS / "dead_letter.json").read_text())["properties"]["reason"]["enum"])
    assert {"wrong_datatype", "shape_mismatch", "unknown_tensor"} <= reasons


def test_rows_pair_whichever_half_comes_first_into_one_event_per_row_counted_once():
    request, response = decode(kserve("request", IRIS_REQUEST), MODELS), decode(kserve("response", IRIS_RESPONSE),
                                                                                  MODELS)
    for first, second in ((request, response), (response, request)):
        join = MemoryJoin(pair_settings(parse_config({"models": {"iris": {}}})))
        waiting = join.run(pair_ops(first, "t|0|1"))
        assert [r.status for r in waiting] == ["pending", "pending"] and paired_events(first, waiting) == []
        done = join.run(pair_ops(second, "t|0|2"))
        events = paired_events(second, done)
        assert events == [
            InferenceEvent("req-1/0", "iris", 1796205600250, request.rows[0], 0.2, "1"),
            InferenceEvent("req-1/1", "iris", 1796205600250, request.rows[1], 0.7, "2")]
        assert events[0].layout == ("sepal_length", "sepal_width", "petal_length", "petal_width")
        # a replay of either message after a crash: the completing one counts again (its state was restored),
        # the other one finds the pair taken
        assert paired_events(second, join.run(pair_ops(second, "t|0|2"))) == events
        assert [r.status for r in join.run(pair_ops(first, "t|0|1"))] == ["taken", "taken"]


def test_a_row_missing_from_the_other_half_gives_no_event():
    request = decode(kserve("request", IRIS_REQUEST), MODELS)
    one_row = {"outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [2]}]}
    response = decode(kserve("response", one_row), MODELS)
    results = [JoinResult("pending"), JoinResult("pending")]
    assert paired_events(request, results) == []
    join = MemoryJoin({"iris": PerformanceConfig()})
    join.run(pair_ops(request, "a"))
    assert [e.event_id for e in paired_events(response, join.run(pair_ops(response, "b")))] == ["req-1/0"]


def test_pairing_bounds_come_from_the_models_oip_table():
    config = parse_config({"models": {"iris": {"oip": {"pair_wait_seconds": 60, "max_pending": 50}}}})
    settings = pair_settings(config)["iris"]
    assert (settings.prediction_ttl_seconds, settings.label_wait_seconds, settings.max_pending) == (60, 60, 50)


def test_input_formats_name_listed_topics_only():
    config = parse_config({"kafka": {"input_topics": ["a", "kserve"], "input_formats": {"kserve": "oip"}}})
    assert config.kafka.input_formats == {"kserve": "oip"}
    with pytest.raises(ConfigError, match="kafka.input_formats.other: is not one of kafka.input_topics"):
        parse_config({"kafka": {"input_formats": {"other": "oip"}}})
    with pytest.raises(ConfigError, match="kafka.input_formats"):
        parse_config({"kafka": {"input_formats": {"ml.inference": "csv"}}})


# --- Seldon Core v2: the V2 protobuf messages on its model topics ---------------------------------------------


def test_seldon_protobuf_request_with_raw_contents_and_response_with_typed_contents():
    import struct  # noqa: PLC0415

    raw = struct.pack("<8f", 6.5, 2.5, 4.5, 1.5, 6.0, 3.0, 4.0, 1.0)
    request = (pb_field(1, b"iris") + pb_field(3, b"seldon-req-7")
               + pb_field(5, pb_tensor("input-0", "FP32", [2, 4])) + pb_field(7, raw))
    half = decode(RawMessage("seldon.default.model.iris.inputs", 0, 0, request), MODELS)
    assert half.kind == "request" and half.request_id == "seldon-req-7"
    assert half.rows == ({"sepal_length": 6.5, "sepal_width": 2.5, "petal_length": 4.5, "petal_width": 1.5},
                         {"sepal_length": 6.0, "sepal_width": 3.0, "petal_length": 4.0, "petal_width": 1.0})
    labels = pb_field(3, b"".join(pb_varint(v) for v in (1, 2)))  # int64_contents, packed
    scores = pb_field(6, struct.pack("<4f", 0.25, 0.75, 0.5, 0.5))  # fp32_contents
    response = (pb_field(1, b"iris") + pb_field(3, b"seldon-req-7")
                + pb_field(5, pb_tensor("predict", "INT64", [2], labels))
                + pb_field(5, pb_tensor("proba", "FP32", [2, 2], scores)))
    half = decode(RawMessage("seldon.default.model.iris.outputs", 0, 1, response, key=b"seldon-req-7"), MODELS)
    assert half.kind == "response" and half.rows == ((0.75, "1"), (0.5, "2"))
    negative = pb_field(5, pb_tensor("x", "INT32", [1], pb_field(2, b"".join(pb_varint(v) for v in (-3,)))))
    cfg = {"iris": OipConfig()}
    assert decode(RawMessage("seldon.default.model.iris.inputs", 0, 2, negative, key=b"k"), cfg).rows == ({"x": -3},)


def test_a_nan_or_infinite_float_from_protobuf_is_a_missing_value():
    import struct  # noqa: PLC0415

    raw = struct.pack("<2f", float("nan"), float("inf"))
    request = pb_field(5, pb_tensor("x", "FP32", [2])) + pb_field(7, raw)
    half = decode(RawMessage("seldon.default.model.iris.inputs", 0, 0, request, key=b"k"), {"iris": OipConfig()})
    assert half.rows == ({"x": None}, {"x": None})
    response = pb_field(5, pb_tensor("p", "FP64", [1], pb_field(7, struct.pack("<d", float("-inf")))))
    half = decode(RawMessage("seldon.default.model.iris.outputs", 0, 0, response, key=b"k"), {"iris": OipConfig()})
    assert half.rows == ((None, None),)


def test_a_protobuf_message_whose_bytes_begin_like_whitespace_and_json_is_still_protobuf():
    import struct  # noqa: PLC0415

    name = "{" * 32  # field 1 (b"\n"), length 32 (b" "), then "{": what a JSON sniffer would take for JSON
    request = pb_field(1, name.encode()) + pb_field(5, pb_tensor("x", "FP32", [1])) + pb_field(7, struct.pack("<f", 2))
    half = decode(RawMessage("seldon.default.model.iris.inputs", 0, 0, request, key=b"k"), {"iris": OipConfig()})
    assert half.rows == ({"x": 2.0},)


def test_protobuf_that_does_not_fit_is_refused():
    topic = "seldon.default.model.iris.inputs"
    truncated = pb_field(5, pb_tensor("input-0", "FP32", [1, 4]))[:-3]
    assert refusal(RawMessage(topic, 0, 0, truncated, key=b"k")).reason == "not_json"
    short = pb_field(5, pb_tensor("input-0", "FP32", [1, 4])) + pb_field(7, b"\0" * 12)
    assert refusal(RawMessage(topic, 0, 0, short, key=b"k")).reason == "shape_mismatch"
    odd = pb_field(5, pb_tensor("input-0", "FP32", [1, 4])) + pb_field(7, b"\0" * 15)
    assert refusal(RawMessage(topic, 0, 0, odd, key=b"k")).reason == "shape_mismatch"
    unknown_side = RawMessage("payloads", 0, 0, pb_field(5, pb_tensor("x", "FP32", [1])), key=b"k")
    assert "neither whether it is a request or a response" in refusal(unknown_side).error


def test_the_readme_section_config_parses_and_its_example_response_decodes():
    import re  # noqa: PLC0415
    import tomllib  # noqa: PLC0415

    readme = (SCHEMAS.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From KServe or Seldon", 1)[1].split("\n## ", 1)[0]
    toml_text = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    config = parse_config(tomllib.loads(toml_text))
    assert config.kafka.input_formats == {"kserve-payloads": "oip"}
    response = orjson.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    headers = (("ce_id", "5c1d…".encode()), ("ce_type", b"org.kubeflow.serving.inference.response"),
               ("ce_inferenceservicename", b"sklearn-iris"))
    half = decode(RawMessage("kserve-payloads", 0, 0, orjson.dumps(response), headers=headers),
                  {m: model.oip for m, model in config.models.items()})
    assert half.model_id == "iris" and half.rows == ((0.9, "1"), (0.7, "1"))


def test_hostile_values_are_dead_letters_never_exceptions():
    from hypothesis import given, settings as hyp_settings, strategies as st  # noqa: PLC0415

    scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                       st.text(max_size=5))
    json_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4)
                              | st.dictionaries(st.sampled_from(["name", "shape", "datatype", "data", "x"]), inner,
                                                max_size=4), max_leaves=20)
    tensor_doc = st.fixed_dictionaries({"name": st.sampled_from(["input-0", "predict", "proba", "x"]),
                                        "shape": st.lists(st.integers(-1, 5), max_size=3),
                                        "datatype": st.sampled_from(["FP32", "INT64", "BOOL", "BYTES", "X"]),
                                        "data": json_value})
    body = st.one_of(json_value, st.fixed_dictionaries({"inputs": st.lists(tensor_doc, max_size=3)}),
                     st.fixed_dictionaries({"outputs": st.lists(tensor_doc, max_size=3)}))

    @hyp_settings(max_examples=300, deadline=None)
    @given(body, st.binary(max_size=64), st.sampled_from(["request", "response"]))
    def check(doc, blob, kind):
        seldon = RawMessage(f"seldon.ns.model.iris.{'inputs' if kind == 'request' else 'outputs'}", 0, 0, b"",
                            key=b"k")
        for value in (orjson.dumps(doc), blob):
            for message in (kserve(kind, {}), seldon):
                out = decode(message._replace(value=value), MODELS)
                assert isinstance(out, (OipHalf, DeadLetter))

    check()


@pytest.mark.parametrize("value, max_bytes, letter", [
    (None, 100, DeadLetter("empty", "message has no value (tombstone or empty)")),
    (b"", 100, DeadLetter("empty", "message has no value (tombstone or empty)")),
    (b'{"x": 12345}', 10, DeadLetter("too_large", "message is 12 bytes, over the limit of 10")),
])
def test_both_decoders_refuse_empty_and_oversized_values_in_the_same_words(value, max_bytes, letter):
    message = RawMessage("t", 0, 0, value)
    assert decode(message, MODELS, max_bytes=max_bytes) == letter
    assert codec.decode(message, {"iris"}, max_bytes=max_bytes) == letter
