"""The simulated KServe v2 and OpenAI answers, and the sim command line, without sockets."""

from __future__ import annotations

import json
import struct

import pytest

from gateway.sim import kserve, openai
from gateway.sim.faults import Faults, Latency
from gateway.sim.main import build_parser, faults_from_args, main


def infer(body: bytes, header_length: str | None = None) -> dict[str, object]:
    return kserve.infer(kserve.parse_request(body, header_length), "clf")


def test_infer_doubles_the_first_input_and_echoes_the_id() -> None:
    body = {
        "id": "r1",
        "inputs": [
            {"name": "INPUT0", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}
        ],
    }
    assert infer(json.dumps(body).encode()) == {
        "id": "r1",
        "model_name": "clf",
        "model_version": "1",
        "outputs": [
            {"name": "OUTPUT0", "datatype": "FP32", "shape": [2, 2], "data": [2.0, 4.0, 6.0, 8.0]}
        ],
    }


def test_infer_reads_binary_tensors() -> None:
    header = {
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [1, 3],
                "datatype": "INT32",
                "parameters": {"binary_data_size": 12},
            }
        ]
    }
    head = json.dumps(header).encode()
    answer = infer(head + struct.pack("<3i", 1, -2, 3), str(len(head)))
    assert answer["outputs"] == [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 3], "data": [2.0, -4.0, 6.0]}
    ]
    assert "id" not in answer


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 500, "failed to parse the request JSON buffer"),
        (b"[1]", 400, "expected an object"),
        (b'{"inputs": []}', 400, "at least one input"),
        (b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1]}]}', 400,
         "do not fill shape"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', 400,
         "expected numbers"),
        (b'{"inputs": [{"name": "x", "shape": "1", "datatype": "FP32", "data": [1]}]}', 400,
         "shape must be a list"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', 400, "no data"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],'
         b' "outputs": [{"name": "PROBS"}]}', 400, "unexpected inference output 'PROBS'"),
    ],
)  # fmt: skip
def test_bad_infer_requests_get_tritons_answers(body: bytes, status: int, message: str) -> None:
    with pytest.raises(kserve.InferError) as e:
        infer(body)
    assert e.value.status == status
    assert message in e.value.message


def test_binary_sizes_are_checked() -> None:
    head = json.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                     "parameters": {"binary_data_size": 4}}]}
    ).encode()  # fmt: skip
    with pytest.raises(kserve.InferError, match="do not hold 2 FP32"):
        infer(head + b"\0" * 4, str(len(head)))
    with pytest.raises(kserve.InferError, match="exceeds the body"):
        infer(head, str(len(head) + 10))


def chat(**body: object) -> openai.ChatRequest:
    return openai.parse_chat(json.dumps(body).encode())


def test_chat_echoes_the_last_user_message() -> None:
    req = chat(
        model="m",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "what now"}]},
        ],
    )
    answer = openai.completion(req, "c1", 0)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "what now"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_max_tokens_sets_the_exact_length() -> None:
    msgs = [{"role": "user", "content": "a b c"}]
    assert chat(model="m", messages=msgs, max_tokens=5).tokens == ("a", " b", " c", " a", " b")
    short = chat(model="m", messages=msgs, max_tokens=2)
    assert short.tokens == ("a", " b") and short.finish_reason == "length"


def test_stream_events_are_whole_sse_frames_ending_in_done() -> None:
    req = chat(
        model="m",
        stream=True,
        messages=[{"role": "user", "content": "x y"}],
        stream_options={"include_usage": True},
    )
    events = openai.stream_events(req, "c1", 0)
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "x y"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "invalid JSON"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "'model' is required"),
        (b'{"model": "m", "messages": []}', "'messages' is required"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "'role'"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         "'stream'"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
         "'max_tokens'"),
    ],
)  # fmt: skip
def test_bad_chat_requests_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(openai.ChatError, match=message):
        openai.parse_chat(body)


def test_command_line_faults_lay_flags_over_json() -> None:
    args = build_parser().parse_args(
        ["--faults", '{"error_rate": 0.1, "latency": {"kind": "tail", "ms": 8}}',
         "--latency-ms", "20", "--reset-rate", "0.2", "--unready", "b", "--retry-after", "1"]
    )  # fmt: skip
    faults = faults_from_args(args)
    assert faults == Faults(
        error_rate=0.1,
        reset_rate=0.2,
        latency=Latency("tail", 20),
        unready_models=frozenset({"b"}),
        retry_after=1,
    )
    assert faults_from_args(build_parser().parse_args([])) == Faults()
    plain = build_parser().parse_args(["--latency-ms", "5"])
    assert faults_from_args(plain).latency == Latency("fixed", 5)


def test_command_line_rejects_bad_faults() -> None:
    with pytest.raises(ValueError, match="--faults is not valid JSON"):
        faults_from_args(build_parser().parse_args(["--faults", "{"]))
    with pytest.raises(ValueError, match="error_rate must be between 0 and 1"):
        faults_from_args(build_parser().parse_args(["--error-rate", "3"]))


def test_sim_command_exits_2_on_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--error-rate", "3"]) == 2
    assert "error_rate must be between 0 and 1" in capsys.readouterr().err
    assert main(["--no-such-flag"]) == 2
    assert main(["--help"]) == 0
