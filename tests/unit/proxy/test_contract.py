"""Model contracts: requests checked against KServe v2 metadata, one reason per violation."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from gateway.proxy.contract import ModelContract, check_request

META = {
    "name": "resnet",
    "inputs": [
        {"name": "IMAGE", "datatype": "FP32", "shape": [-1, 3, 2, 2]},
        {"name": "SCALE", "datatype": "INT64", "shape": [1], "optional": True},
    ],
    "outputs": [{"name": "PROBS", "datatype": "FP32", "shape": [-1, 10]}],
}
CONTRACT = ModelContract.from_metadata("resnet", META)


def body(*inputs: dict[str, Any]) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def image(**over: Any) -> dict[str, Any]:
    t = {"name": "IMAGE", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.5] * 12}
    t.update(over)
    return t


def reason(raw: bytes) -> str | None:
    v = check_request(CONTRACT, raw)
    return None if v is None else v.reason


def test_a_request_that_keeps_the_contract_passes() -> None:
    assert reason(body(image())) is None
    assert reason(body(image(shape=[2, 3, 2, 2], data=[[0.0] * 12, [1.0] * 12]))) is None
    scale = {"name": "SCALE", "datatype": "INT64", "shape": [1], "data": [2]}
    assert reason(body(image(), scale)) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{nope", "not_json"),
        (b'{"inputs": []}', "no_inputs"),
        (body(image(name="PIXELS")), "unknown_input"),
        (body(image(datatype="FP16")), "datatype"),
        (body(image(shape=[1, 3, 4])), "shape"),
        (body(image(shape=[1, 1, 2, 2], data=[0.0] * 4)), "shape"),
        (body(image(data=[0.5] * 11)), "data_size"),
        (body({"name": "SCALE", "datatype": "INT64", "shape": [1], "data": [2]}), "missing_input"),
    ],
)
def test_each_violation_has_its_reason(raw: bytes, expected: str) -> None:
    assert reason(raw) == expected


def test_binary_tensors_are_checked_by_size() -> None:
    t = image(parameters={"binary_data_size": 48})
    del t["data"]
    header = json.dumps({"inputs": [t]}).encode()
    assert reason(header + struct.pack("<12f", *([0.5] * 12))) is None
    t["parameters"] = {"binary_data_size": 40}
    assert reason(json.dumps({"inputs": [t]}).encode() + b"\0" * 40) == "data_size"


def test_messages_name_the_input_and_what_the_model_expects() -> None:
    v = check_request(CONTRACT, body(image(datatype="INT8")))
    assert (
        v is not None
        and v.message == "input 'IMAGE' has datatype INT8, model 'resnet' expects FP32"
    )


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"inputs": []},
        {"inputs": [{"name": "x"}]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": "?"}]},
    ],
)
def test_unusable_metadata_is_refused(meta: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ModelContract.from_metadata("m", meta)
