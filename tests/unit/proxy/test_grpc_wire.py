"""The protobuf scan agrees with the real protobuf decode, field for field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from gateway.proxy.grpc_wire import (
    WireError,
    read_bool,
    scan_request,
    string_field,
    with_string_field,
    without_field,
)

KEYS = ("sequence_id", "sequence_start", "sequence_end", "priority", "other")
param_values = st.one_of(
    st.tuples(st.just("bool_param"), st.booleans()),
    st.tuples(st.just("int64_param"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("uint64_param"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("string_param"), st.text(max_size=8)),
    st.tuples(st.just("double_param"), st.floats(allow_nan=False)),
    st.none(),  # an InferParameter with no member set
)


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    msg = pb.ModelInferRequest()
    if draw(st.booleans()):
        msg.model_name = draw(st.text(max_size=12))
    if draw(st.booleans()):
        msg.model_version = draw(st.sampled_from(["", "1", "2", "17"]))
    if draw(st.booleans()):
        msg.id = draw(st.text(max_size=12))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        value = draw(param_values)
        p = msg.parameters[key]
        if value is not None:
            setattr(p, value[0], value[1])
    for i in range(draw(st.integers(0, 2))):
        t = msg.inputs.add(name=f"INPUT{i}", datatype="FP32", shape=[1, 2])
        assert t is not None
        msg.raw_input_contents.append(draw(st.binary(max_size=64)))
    return bytes(msg.SerializeToString())


def expected(data: bytes) -> tuple[str, str, tuple[str, bool, bool] | None]:
    msg = pb.ModelInferRequest()
    msg.ParseFromString(data)

    def member(key: str) -> tuple[str | None, Any]:
        if key not in msg.parameters:
            return None, None
        p = msg.parameters[key]
        kind = p.WhichOneof("parameter_choice")
        return kind, getattr(p, kind) if kind else None

    kind, value = member("sequence_id")
    seq_id = None
    if kind in ("int64_param", "uint64_param") and value != 0:
        seq_id = str(value)
    elif kind == "string_param" and value:
        seq_id = value
    if seq_id is None:
        return msg.model_name, msg.model_version, None
    flags = [member(k) for k in ("sequence_start", "sequence_end")]
    start, end = (bool(v) if k == "bool_param" else False for k, v in flags)
    return msg.model_name, msg.model_version, (seq_id, start, end)


def scanned(data: bytes) -> tuple[str, str, tuple[str, bool, bool] | None]:
    s = scan_request(data)
    seq = (s.sequence.id, s.sequence.start, s.sequence.end) if s.sequence else None
    return s.model, s.version, seq


@settings(max_examples=150, deadline=None)
@given(infer_requests())
def test_scan_matches_the_protobuf_decode(data: bytes) -> None:
    assert scanned(data) == expected(data)


@settings(max_examples=60, deadline=None)
@given(st.lists(infer_requests(), min_size=2, max_size=3))
def test_concatenated_messages_merge_as_protobuf_merges_them(parts: list[bytes]) -> None:
    # the last model name wins, map entries merge with the last winning
    data = b"".join(parts)
    assert scanned(data) == expected(data)


@settings(max_examples=60, deadline=None)
@given(infer_requests(), st.text(max_size=10))
def test_request_id_removed_or_replaced(data: bytes, new_id: str) -> None:
    msg = pb.ModelInferRequest()
    msg.ParseFromString(data)
    stripped = pb.ModelInferRequest()
    stripped.ParseFromString(without_field(data, 3))
    msg.id = ""
    assert stripped == msg
    replaced = pb.ModelInferRequest()
    replaced.ParseFromString(with_string_field(data, 3, new_id))
    msg.id = new_id
    assert replaced == msg


@given(st.binary(max_size=40))
def test_garbage_is_refused_or_scanned_never_crashes(data: bytes) -> None:
    try:
        scan_request(data)
    except WireError:
        return


def test_truncated_and_bad_messages_are_wire_errors() -> None:
    good = pb.ModelInferRequest(model_name="classifier", id="x").SerializeToString()
    with pytest.raises(WireError):
        scan_request(good[:-1])
    with pytest.raises(WireError):
        scan_request(b"\x0a\x02\xff\xfe")  # a model name that is not UTF-8
    with pytest.raises(WireError):
        scan_request(b"\x00\x01")  # field number 0
    with pytest.raises(WireError):
        scan_request(b"\x08" + b"\xff" * 11)  # a varint longer than ten bytes


def test_repository_requests_name_the_model_in_field_two() -> None:
    data = pb.RepositoryModelLoadRequest(repository_name="r", model_name="m").SerializeToString()
    assert scan_request(data, model_field=2, version_field=0).model == "m"


def test_health_messages_round_trip_with_protobuf() -> None:
    req = pb.ModelReadyRequest()
    req.ParseFromString(string_field(1, "classifier") + string_field(2, "1"))
    assert (req.name, req.version) == ("classifier", "1")
    assert read_bool(pb.ServerReadyResponse(ready=True).SerializeToString())
    assert not read_bool(pb.ModelReadyResponse(ready=False).SerializeToString())
    assert not read_bool(b"")
