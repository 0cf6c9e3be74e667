"""Rules answers for gRPC: the request's JSON view, and JSON infer answers as protobuf."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from gateway.fallback.grpc_rules import (
    NotAnInferAnswer,
    error_message,
    infer_response,
    request_json,
)


def test_the_request_view_has_what_rules_match_on_and_no_tensor_data() -> None:
    req = pb.ModelInferRequest(model_name="m", model_version="2", id="r")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3])
    req.raw_input_contents.append(b"\x00" * 12)
    req.parameters["sequence_id"].int64_param = 7
    req.outputs.add(name="OUTPUT0")
    view = json.loads(request_json(req.SerializeToString()))
    assert view == {
        "id": "r",
        "model_name": "m",
        "model_version": "2",
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3]}],
        "outputs": [{"name": "OUTPUT0"}],
        "parameters": {"sequence_id": 7},
    }
    with pytest.raises(ValueError):
        request_json(b"\x0a\xff")


def test_json_answers_become_model_infer_responses() -> None:
    body = json.dumps(
        {
            "model_name": "m",
            "model_version": "fallback",
            "outputs": [
                {"name": "P", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "L", "datatype": "BYTES", "shape": [2], "data": ["cat", "dog"]},
                {"name": "N", "datatype": "INT64", "shape": [1], "data": [-5]},
            ],
        }
    ).encode()
    resp = pb.ModelInferResponse.FromString(infer_response(body, "req-1"))
    assert (resp.id, resp.model_name, resp.model_version) == ("req-1", "m", "fallback")
    assert [list(o.shape) for o in resp.outputs] == [[2, 2], [2], [1]]
    assert np.frombuffer(resp.raw_output_contents[0], np.float32).tolist() == [1, 2, 3, 4]
    assert resp.raw_output_contents[1] == b"\x03\x00\x00\x00cat\x03\x00\x00\x00dog"
    assert np.frombuffer(resp.raw_output_contents[2], np.int64).tolist() == [-5]


@pytest.mark.parametrize(
    "answer",
    [
        b"not json",
        b'{"error": "x"}',
        b'{"outputs": [{"name": "P", "datatype": "FP32", "shape": [3], "data": [1]}]}',
        b'{"outputs": [{"name": "P", "datatype": "FP99", "shape": [1], "data": [1]}]}',
        b'{"outputs": [{"name": "P", "datatype": "INT8", "shape": [1], "data": [1000]}]}',
        b'{"outputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}',
    ],
)
def test_answers_that_are_not_infer_answers_are_refused(answer: bytes) -> None:
    with pytest.raises(NotAnInferAnswer):
        infer_response(answer, "r")


def test_error_messages_from_tritons_and_other_shapes() -> None:
    assert error_message(b'{"error": "model is down"}') == "model is down"
    assert error_message(b'{"error": {"message": "nope"}}') == "nope"
    assert error_message(b"plain text") == "plain text"
