"""The simulator's gRPC side (inference.GRPCInferenceService) through tritonclient.grpc.aio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as tg
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.sim import Faults, SimServer
from gateway.sim.grpc import grpc_status_for
from gateway.sim.outputs import Outputs

MakeSim = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    started: list[SimServer] = []

    async def make(**kw: Any) -> SimServer:
        kw.setdefault("seed", 1)
        kw.setdefault("grpc_port", 0)
        sim = SimServer(**kw)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


def tensor(values: list[float], shape: list[int] | None = None) -> tg.InferInput:
    arr = np.array(values, dtype=np.float32).reshape(shape or [1, len(values)])
    inp = tg.InferInput("INPUT0", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp


async def test_infer_with_binary_tensors_and_identity(make_sim: MakeSim) -> None:
    sim = await make_sim(models=["classifier"], region="eu-west", name="sim-a")
    async with tg.InferenceServerClient(sim.grpc_address) as client:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("classifier")
        meta = await client.get_model_metadata("classifier", as_json=True)
        assert meta["inputs"][0]["name"] == "INPUT0"
        r = await client.infer("classifier", [tensor([1, 2, 3, 4])], request_id="r-1")
        assert r.as_numpy("OUTPUT0").tolist() == [[2, 4, 6, 8]]
        assert r.get_response().id == "r-1"
    async with grpc.aio.insecure_channel(sim.grpc_address) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
            service_pb2.ServerLiveRequest()
        )
        md = dict(await call.trailing_metadata())
        assert md["x-sim-name"] == "sim-a" and md["x-sim-region"] == "eu-west"
    assert sim.stats.by_model["classifier"] == 1
    assert sim.stats.by_kind["infer"] == 1


async def test_errors_have_tritons_statuses(make_sim: MakeSim) -> None:
    sim = await make_sim(models=["classifier"], faults=Faults(unready_models=frozenset({"x"})))
    async with tg.InferenceServerClient(sim.grpc_address) as client:
        with pytest.raises(InferenceServerException) as e:
            await client.infer("nope", [tensor([1.0])])
        assert e.value.status() == "StatusCode.NOT_FOUND"
        assert "unknown model: 'nope'" in str(e.value.message())
        bad = tg.InferInput("INPUT0", [1, 4], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        bad._raw_content = b"\0" * 8  # fewer bytes than the shape needs
        with pytest.raises(InferenceServerException) as e:
            await client.infer("classifier", [bad])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        sim.faults = Faults(unready_models=frozenset({"classifier"}))
        assert not await client.is_server_ready()
        assert not await client.is_model_ready("classifier")
        with pytest.raises(InferenceServerException) as e:
            await client.infer("classifier", [tensor([1.0])])
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        for status, code in ((503, "UNAVAILABLE"), (500, "INTERNAL"), (429, "RESOURCE_EXHAUSTED")):
            sim.faults = Faults(error_rate=1.0, error_status=status)
            with pytest.raises(InferenceServerException) as e:
                await client.infer("classifier", [tensor([1.0])])
            assert e.value.status() == f"StatusCode.{code}"
    assert sim.stats.faults["error"] == 3 and sim.stats.faults["unready"] == 1


def test_http_statuses_map_to_grpc_codes() -> None:
    assert grpc_status_for(404) is grpc.StatusCode.NOT_FOUND
    assert grpc_status_for(418) is grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_status_for(507) is grpc.StatusCode.INTERNAL
    assert grpc_status_for(504) is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_hang_ends_unavailable_when_the_server_dies_and_revive_serves_again(
    make_sim: MakeSim,
) -> None:
    sim = await make_sim(models=["classifier"], faults=Faults(hang_rate=1.0))
    async with tg.InferenceServerClient(sim.grpc_address) as client:
        pending = asyncio.ensure_future(client.infer("classifier", [tensor([1.0])]))
        for _ in range(400):  # a server-side counter: nothing to await
            if sim.stats.in_flight:
                break
            await asyncio.sleep(0.005)
        await sim.die()
        with pytest.raises(InferenceServerException) as e:
            await pending
        assert e.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")
        with pytest.raises(InferenceServerException) as e:
            await client.is_server_live()
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        sim.faults = Faults()
        await sim.revive()
        for _ in range(100):  # the client's channel reconnects on its own schedule
            try:
                assert await client.is_server_live()
                break
            except InferenceServerException:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the revived sim never answered")
    assert sim.stats.faults["hang"] == 1


def infer_request(model: str, values: list[float], rid: str, final: bool = False) -> Any:
    """A ModelInferRequest as tritonclient builds it (raw binary contents)."""
    req = service_pb2.ModelInferRequest(model_name=model, id=rid)
    inp = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, len(values)])
    assert inp is not None
    req.raw_input_contents.append(np.array(values, dtype=np.float32).tobytes())
    if final:  # a parameter tritonclient reserves for itself, so set here by hand
        req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


async def test_decoupled_model_streams_one_response_per_element_then_a_final_flag(
    make_sim: MakeSim,
) -> None:
    sim = await make_sim(models=["classifier", "streamer"], decoupled=["streamer"])

    async def requests() -> AsyncIterator[Any]:
        yield infer_request("streamer", [1, 2, 3], "a", final=True)
        yield infer_request("classifier", [5.0], "b")
        yield infer_request("nope", [5.0], "c")

    got: list[tuple[str, Any, bool | None]] = []
    errors = []
    async with grpc.aio.insecure_channel(sim.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        async for message in stub.ModelStreamInfer(requests()):
            if message.error_message:
                errors.append(message.error_message)
                continue
            resp = message.infer_response
            final = (
                resp.parameters["triton_final_response"].bool_param
                if "triton_final_response" in resp.parameters
                else None
            )
            out = (
                np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).tolist()
                if resp.raw_output_contents
                else None
            )
            got.append((resp.id, out, final))
    async with tg.InferenceServerClient(sim.grpc_address) as client:
        with pytest.raises(InferenceServerException) as e:
            await client.infer("streamer", [tensor([1.0])])
        assert e.value.status() == "StatusCode.UNIMPLEMENTED"
    assert got == [
        ("a", [2.0], False),
        ("a", [4.0], False),
        ("a", [6.0], False),
        ("a", None, True),
        ("b", [10.0], None),
    ]
    assert len(errors) == 1 and "unknown model: 'nope'" in errors[0]


async def test_sequence_ids_are_counted(make_sim: MakeSim) -> None:
    sim = await make_sim(models=["classifier"])
    async with tg.InferenceServerClient(sim.grpc_address) as client:
        for start, end in ((True, False), (False, False), (False, True)):
            await client.infer(
                "classifier",
                [tensor([1.0])],
                sequence_id=42,
                sequence_start=start,
                sequence_end=end,
            )
    assert sim.stats.by_sequence == {"42": 3}


async def test_a_classifier_answers_probs_over_grpc_as_over_http(make_sim: MakeSim) -> None:
    sim = await make_sim(models=["classifier"], outputs=Outputs(classes=3, bias=(0.5,)))
    values = [1.0, -2.0, 0.25, 3.0, 0.0, 1.5, -1.0, 2.0]
    async with aiohttp.ClientSession() as http:
        body = {"inputs": [{"name": "INPUT0", "shape": [2, 4], "datatype": "FP32", "data": values}]}
        async with http.post(f"{sim.url}/v2/models/classifier/infer", json=body) as r:
            over_http = {o["name"]: o for o in (await r.json())["outputs"]}
    assert list(over_http) == ["OUTPUT0", "PROBS"]
    async with tg.InferenceServerClient(sim.grpc_address) as client:
        wanted = [tg.InferRequestedOutput("OUTPUT0"), tg.InferRequestedOutput("PROBS")]
        for outputs in (None, wanted):
            r = await client.infer("classifier", [tensor(values, [2, 4])], outputs=outputs)
            answer = r.get_response()
            assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
                (o["name"], o["datatype"], o["shape"]) for o in over_http.values()
            ]
            for name, o in over_http.items():
                got = r.as_numpy(name)
                assert got is not None
                assert np.allclose(got.ravel(), o["data"], rtol=1e-6)
        assert np.allclose(r.as_numpy("PROBS").sum(axis=1), 1.0, rtol=1e-6)

        # the stream answers the same outputs
        async def one() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": "classifier", "inputs": [tensor(values, [2, 4])]}

        async for result, error in client.stream_infer(one()):
            assert error is None
            assert result.as_numpy("PROBS").shape == (2, 3)

    sim.outputs = Outputs()  # no classes: PROBS is no output of the model
    async with tg.InferenceServerClient(sim.grpc_address) as client:
        r = await client.infer("classifier", [tensor(values, [2, 4])])
        assert [o.name for o in r.get_response().outputs] == ["OUTPUT0"]
        with pytest.raises(InferenceServerException) as e:
            await client.infer(
                "classifier", [tensor(values)], outputs=[tg.InferRequestedOutput("PROBS")]
            )
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
