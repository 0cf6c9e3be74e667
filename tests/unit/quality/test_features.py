"""Features from real protocol bodies: KServe v2 JSON and binary, OpenAI chat."""

from __future__ import annotations

import json
import math
import struct

from gateway.quality.features import MAX_VALUES, clean_name, extract, load_json_head
from gateway.quality.sketch import MAX_CATEGORIES, MAX_FEATURES, OTHER, Profile


def infer_request(data: list[float], shape: list[int]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": shape, "datatype": "FP32", "data": data}]}
    ).encode()


def test_kserve_json_tensors_and_classes() -> None:
    request = infer_request([1, 2, 3, 4, 5, 6], [2, 3])
    answer = json.dumps(
        {
            "outputs": [
                {"name": "PROBS", "shape": [2, 3], "datatype": "FP32",
                 "data": [0.1, 0.7, 0.2, 0.5, 0.3, 0.2]},
            ]
        }
    ).encode()  # fmt: skip
    f = extract("kserve-v2", request, answer)
    assert f.problem is None
    assert f.categorical["input.INPUT0.datatype"] == ["FP32"]
    assert f.categorical["input.INPUT0.shape"] == ["2x3"]
    assert f.numeric["input.INPUT0.elements"] == [6.0]
    assert f.numeric["input.INPUT0.value"] == [1, 2, 3, 4, 5, 6]
    assert f.numeric["input.INPUT0.nan"] == [0.0]
    assert f.categorical["output.PROBS.class"] == ["1", "0"]
    assert f.numeric["output.PROBS.score"] == [0.7, 0.5]
    assert f.primary == "output.PROBS.class" and f.rows == ["1", "0"]
    assert f.scores == [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]


def test_nan_and_inf_are_counted_not_profiled() -> None:
    body = (
        b'{"inputs": [{"name": "x", "shape": [4], "datatype": "FP64",'
        b' "data": [1.0, NaN, Infinity, -Infinity]}]}'
    )
    f = extract("kserve-v2", body, None)
    assert f.numeric["input.x.nan"] == [1.0]
    assert f.numeric["input.x.inf"] == [2.0]
    assert f.numeric["input.x.value"] == [1.0]


def test_large_tensors_are_sampled() -> None:
    n = 224 * 224 * 3
    f = extract("kserve-v2", infer_request([0.5] * n, [1, 224, 224, 3]), None)
    assert f.numeric["input.INPUT0.elements"] == [float(n)]
    assert 0 < len(f.numeric["input.INPUT0.value"]) <= MAX_VALUES


def test_binary_tensors_give_shape_and_datatype_only() -> None:
    header = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                     "parameters": {"binary_data_size": 16}}]}
    ).encode()  # fmt: skip
    body = header + struct.pack("<4f", 1, 2, 3, 4)
    doc, binary = load_json_head(body)
    assert binary and doc["inputs"][0]["name"] == "INPUT0"
    f = extract("kserve-v2", body, None)
    assert f.problem is None
    assert f.categorical["input.INPUT0.shape"] == ["1x4"]
    assert f.numeric["input.INPUT0.elements"] == [4.0]
    assert "input.INPUT0.value" not in f.numeric


def test_client_tensor_names_are_cleaned() -> None:
    assert clean_name("INPUT0") == "INPUT0"
    assert clean_name('a"b{c}') == "_"
    assert clean_name("x" * 200) == "_"
    assert clean_name(7) == "_"


def test_bad_bodies_set_a_problem_and_never_raise() -> None:
    assert extract("kserve-v2", b"\xff garbage", None).problem == "request_not_json"
    assert extract("kserve-v2", b"[1]", None).problem == "request_not_object"
    assert extract("openai", b"{", b"}").problem == "request_not_json"
    assert extract("kserve-v2", b"[" * 100_000, None).problem == "request_not_json"
    assert extract("http", b"{}", b"{}").numeric == {}


def test_chat_features() -> None:
    request = json.dumps(
        {"model": "m", "max_tokens": 8, "stream": False,
         "messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": "hello there"}]}
    ).encode()  # fmt: skip
    answer = json.dumps(
        {"choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"},
            {"index": 2, "message": {"role": "assistant", "content": None, "refusal": "no"},
             "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}}
    ).encode()  # fmt: skip
    f = extract("openai", request, answer)
    assert f.numeric["request.messages"] == [2.0]
    assert f.numeric["request.prompt_chars"] == [float(len("be brief") + len("hello there"))]
    assert f.numeric["request.max_tokens"] == [8.0]
    assert f.categorical["request.stream"] == ["false"]
    assert f.numeric["usage.completion_tokens"] == [9.0]
    assert f.categorical["finish_reason"] == ["stop", "length", "stop"]
    assert f.categorical["answer"] == ["text", "empty", "refusal"]
    assert f.primary == "finish_reason" and f.tokens == 9


def test_a_stream_gives_request_features_only() -> None:
    request = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    f = extract("openai", request, None)
    assert f.categorical["request.stream"] == ["true"]
    assert f.primary is None and "finish_reason" not in f.categorical


def test_profiles_are_bounded_whatever_clients_send() -> None:
    p = Profile()
    for i in range(MAX_FEATURES + 20):
        body = json.dumps(
            {"inputs": [{"name": f"t{i}", "shape": [1], "datatype": "FP32", "data": [i]}]}
        ).encode()
        p.add(extract("kserve-v2", body, None))
    assert len(p.sketches) == MAX_FEATURES
    assert p.refused > 0
    labels = Profile()
    from gateway.quality.features import Features

    f = Features()
    f.categorical["c"] = [str(i) for i in range(MAX_CATEGORIES * 2)]
    labels.add(f)
    counts = labels.sketches["c"].to_json()
    assert len(counts) == MAX_CATEGORIES + 1 and counts[OTHER] == MAX_CATEGORIES


def test_profiles_round_trip_and_merge() -> None:
    a, b = Profile(), Profile()
    for i in range(300):
        a.add(extract("kserve-v2", infer_request([i, i + 1], [1, 2]), None))
        b.add(extract("kserve-v2", infer_request([-i, 0], [1, 2]), None))
    again = Profile.from_bytes(a.to_bytes())
    assert again.exchanges == 300
    assert again.sketches["input.INPUT0.value"].n == 600
    assert again.sketches["input.INPUT0.shape"].to_json() == {"1x2": 300}
    merged = Profile.merged([a, b])
    assert merged.exchanges == 600 and merged.sketches["input.INPUT0.value"].n == 1200
    q = merged.sketches["input.INPUT0.value"]
    assert not math.isnan(q.quantiles([0.5])[0])  # type: ignore[union-attr]


def test_unreadable_profiles_are_refused_with_a_reason() -> None:
    import pytest

    for raw, why in (
        (b"nope", "not JSON"),
        (b"{}", "not a tailguard-profile/1"),
        (b'{"format": "tailguard-profile/1", "exchanges": 1, "features": {"x": {"kind": "numeric", "sketch": "AAAA"}}}', "feature 'x'"),
        (b'{"format": "tailguard-profile/1", "exchanges": 1, "features": {"x": {"kind": "categorical", "sketch": {"a": -1}}}}', "feature 'x'"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            Profile.from_bytes(raw)
