"""The data and model layers read from bodies: tensors, tokens, finish reasons, bounded labels."""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.telemetry.catalog import Metrics
from gateway.telemetry.models import MAX_SCANNED, ModelMetrics

KSERVE = SimpleNamespace(protocol="kserve-v2", name="classify")
OPENAI = SimpleNamespace(protocol="openai", name="chat")


def exchange(path: str, body: bytes, answer: bytes | None, **headers: str) -> Any:
    h = CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))
    plain = CIMultiDictProxy(CIMultiDict())
    return SimpleNamespace(
        request=SimpleNamespace(grpc=None, body=body, headers=plain, path=path),
        response=SimpleNamespace(body=answer, headers=h),
        status=200,
    )


def tensors(m: Metrics) -> dict[tuple[str, ...], float]:
    return {k: c.value for k, c in m.tensors._cells.items()}


def infer(shape: list[int], datatype: str = "FP32") -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype}]}).encode()


def test_input_and_gzipped_output_tensors_are_counted_by_datatype_and_shape() -> None:
    m = Metrics()
    rec = ModelMetrics(m, 10)
    answer = json.dumps(
        {
            "outputs": [
                {"name": "y", "datatype": "INT64", "shape": [2, 1]},
                {"name": "z", "shape": [2], "datatype": "WEIRD"},
            ]
        }
    ).encode()
    ex = exchange("/v2/models/clf/infer", infer([2, 3]), gzip.compress(answer),
                  content_encoding="gzip")  # fmt: skip
    for _ in range(2):
        rec.observe(ex, KSERVE)  # type: ignore[arg-type]
    assert tensors(m) == {
        ("classify", "clf", "input", "FP32", "2x3"): 2,
        ("classify", "clf", "output", "INT64", "2x1"): 2,
        ("classify", "clf", "output", "other", "2"): 2,
    }


def test_shapes_and_models_past_the_limit_fold_and_every_fold_is_counted() -> None:
    m = Metrics()
    rec = ModelMetrics(m, 2)
    for n in range(1, 6):
        for _ in range(2):
            rec.observe(exchange(f"/v2/models/m{n}/infer", infer([n]), None), KSERVE)  # type: ignore[arg-type]
    got = tensors(m)
    assert {k[1] for k in got} == {"m1", "m2", "other"}
    assert {k[4] for k in got} == {"1", "2", "other"}
    assert got[("classify", "other", "input", "FP32", "other")] == 6
    assert m.label_folds.labels("model")._value.get() == 6
    assert m.label_folds.labels("shape")._value.get() == 6


def test_openai_usage_and_finish_reasons_by_requested_model() -> None:
    m = Metrics()
    rec = ModelMetrics(m, 10)
    body = json.dumps({"model": "gpt-x", "messages": []}).encode()
    answer = json.dumps(
        {
            "choices": [{"finish_reason": "stop"}, {"finish_reason": "eaten"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5},
        }
    ).encode()
    rec.observe(exchange("/v1/chat/completions", body, answer), OPENAI)  # type: ignore[arg-type]
    rec.observe(exchange("/v1/chat/completions", b"{}", answer), OPENAI)  # type: ignore[arg-type]
    tokens = {k: c.value for k, c in m.model_tokens._cells.items()}
    assert tokens == {
        ("chat", "gpt-x", "input"): 12, ("chat", "gpt-x", "output"): 5,
        ("chat", "unknown", "input"): 12, ("chat", "unknown", "output"): 5,
    }  # fmt: skip
    reasons = {k: c.value for k, c in m.finish_reasons._cells.items()}
    assert reasons[("chat", "gpt-x", "stop")] == 1 and reasons[("chat", "gpt-x", "other")] == 1
    assert m.prompt_tokens.labels("chat", "gpt-x").count == 1


def test_bodies_too_large_or_binary_beyond_their_json_part_are_not_scanned() -> None:
    m = Metrics()
    rec = ModelMetrics(m, 10)
    big = infer([1, 4])[:-1] + b', "pad": "' + b"x" * MAX_SCANNED + b'"}'
    rec.observe(exchange("/v2/models/clf/infer", big, None), KSERVE)  # type: ignore[arg-type]
    assert tensors(m) == {}
    head = infer([1, 4])
    ex = exchange("/v2/models/clf/infer", head + b"\x00" * (2 * MAX_SCANNED), None)
    ex.request.headers = CIMultiDictProxy(
        CIMultiDict({"Inference-Header-Content-Length": str(len(head))})
    )
    rec.observe(ex, KSERVE)  # type: ignore[arg-type]
    assert tensors(m) == {("classify", "clf", "input", "FP32", "1x4"): 1}
