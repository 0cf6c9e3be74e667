"""KServe v2 (Triton) over gRPC, simulated: `inference.GRPCInferenceService` on a real socket.

The same models, the same `Faults` and the same counters as the HTTP side of a
`SimServer`, answered the way a real Triton (2.5x) answers over gRPC:

- an unknown model is `NOT_FOUND` ("Request for unknown model: 'x' is not found"); a wrong
  input is `INVALID_ARGUMENT`; a model that is not ready, or a server going away, is
  `UNAVAILABLE`; an error inside the model is `INTERNAL`;
- an injected error status is mapped to the gRPC status Triton would give for it
  (`grpc_status_for`); an injected reset or truncation ends the call `UNAVAILABLE` (what a
  client sees when the connection breaks); a hang never answers until the client leaves or
  the server dies;
- `ModelStreamInfer` answers every request of the stream in order; errors of one request
  travel in `error_message` and the stream goes on. A *decoupled* model answers one
  request with one response per element of its first input (`stream_delay_ms` apart) and,
  when the request asks with `triton_enable_empty_final_response`, an empty final response
  flagged `triton_final_response`.

Every answer carries `x-sim-name` and `x-sim-region` in its trailing metadata (a real Triton
sends no initial metadata of its own, so neither does the simulator). The messages are the generated stubs of `tritonclient[grpc]`; the
handlers are registered generically, so no generated servicer class is subclassed.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from tritonclient.grpc import service_pb2 as pb

from gateway.sim import kserve
from gateway.sim.faults import FaultKind, Faults
from gateway.sim.outputs import PROBS_NAME, Outputs

if TYPE_CHECKING:
    from gateway.sim.server import SimServer

SERVICE = "inference.GRPCInferenceService"
# Triton takes large tensors; so does the simulator.
MAX_MESSAGE = 64 << 20
FINAL_FLAG = "triton_final_response"
WANT_FINAL = "triton_enable_empty_final_response"

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status_for(http_status: int) -> grpc.StatusCode:
    """The gRPC status Triton gives where its HTTP API gives `http_status`."""
    code = _CODES.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if http_status < 500 else grpc.StatusCode.INTERNAL


class _Abort(Exception):
    """End this call with `code` and `details` (raised inside the handlers, turned into abort)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Broken(_Abort):
    """The connection broke (an injected reset, truncation or released hang): always abort."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, "Connection reset by peer (injected fault)")


def _unknown(model: str, version: str = "") -> _Abort:
    which = f"'{model}' version {version}" if version and version != "1" else f"'{model}'"
    return _Abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: {which} is not found")


def _param(params: Any, name: str) -> Any:
    """The value of one request parameter (any of InferParameter's kinds), or None."""
    if name not in params:
        return None
    p = params[name]
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind is not None else None


def _first_input(
    request: Any, model: str, extra: tuple[str, ...] = ()
) -> tuple[str, list[int], list[float]]:
    """Name, shape and values of the first input tensor, raw or typed contents.

    A requested output other than OUTPUT0 and those in `extra` is refused, as Triton does.
    """
    if not request.inputs:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "expected at least one input")
    first = request.inputs[0]
    shape = list(first.shape)
    if any(d < 0 for d in shape):
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"input '{first.name}': negative shape {shape}"
        )
    count = math.prod(shape)
    if request.raw_input_contents:
        code = kserve._STRUCT_CODES.get(first.datatype)
        if code is None:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input '{first.name}': unsupported datatype {first.datatype!r}",
            )
        raw = request.raw_input_contents[0]
        if count * struct.calcsize(code) != len(raw):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unexpected total byte size {len(raw)} for input '{first.name}', "
                f"expecting {count * struct.calcsize(code)}",
            )
        values = [float(v) for v in struct.unpack(f"<{count}{code}", raw)]
    else:
        c = first.contents
        values = [
            float(v)
            for v in (
                list(c.fp32_contents)
                or list(c.fp64_contents)
                or list(c.int_contents)
                or list(c.int64_contents)
                or list(c.uint_contents)
                or list(c.uint64_contents)
                or list(c.bool_contents)
            )
        ]
        if len(values) != count:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input '{first.name}': {len(values)} values do not fill shape {shape}",
            )
    for out in request.outputs:
        if out.name != kserve.OUTPUT_NAME and out.name not in extra:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unexpected inference output '{out.name}' for model '{model}'",
            )
    return first.name, shape, values


def _response(request: Any, model: str, shape: list[int], values: list[float]) -> Any:
    out = pb.ModelInferResponse(model_name=model, model_version="1", id=request.id)
    _add_output(out, kserve.OUTPUT_NAME, shape, values)
    return out


def _add_output(out: Any, name: str, shape: list[int], values: list[float]) -> None:
    """One FP32 output tensor, its data in `raw_output_contents` as Triton sends it."""
    tensor = out.outputs.add()
    tensor.name = name
    tensor.datatype = "FP32"
    tensor.shape.extend(shape)
    out.raw_output_contents.append(struct.pack(f"<{len(values)}f", *values))


def _classified(request: Any, model: str, outputs: Outputs, rng: Any) -> Any:
    """The answer to a non-decoupled infer: OUTPUT0, and PROBS when configured.

    The same outputs as the HTTP side answers (`gateway.sim.outputs`): a classifier with
    `classes` set adds `PROBS` ([batch, classes] FP32) after OUTPUT0 and accepts a request
    that names it.
    """
    extra = (PROBS_NAME,) if outputs.classes else ()
    _name, shape, values = _first_input(request, model, extra)
    out = _response(request, model, shape, [v * 2.0 for v in values])
    probs = outputs.probabilities(values, shape, rng)
    if probs is not None:
        _add_output(out, PROBS_NAME, probs["shape"], probs["data"])
    return out


class GrpcFrontend:
    """The gRPC listener of one `SimServer`: same models, faults, stats and life cycle."""

    def __init__(self, sim: SimServer, port: int) -> None:
        self._sim = sim
        self.port = port
        self._server: grpc.aio.Server | None = None
        handlers = {
            "ServerLive": self._unary(self._server_live, pb.ServerLiveRequest),
            "ServerReady": self._unary(self._server_ready, pb.ServerReadyRequest),
            "ModelReady": self._unary(self._model_ready, pb.ModelReadyRequest),
            "ServerMetadata": self._unary(self._server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": self._unary(self._model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": self._unary(self._model_infer, pb.ModelInferRequest),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self._model_stream_infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelStreamInferResponse.SerializeToString,
            ),
        }
        self._handler = grpc.method_handlers_generic_handler(SERVICE, handlers)

    @property
    def address(self) -> str:
        return f"{self._sim.host}:{self.port}"

    async def start(self) -> int:
        server = grpc.aio.server(
            options=[
                # never share a port with another process silently (gRPC's default is to)
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ]
        )
        server.add_generic_rpc_handlers((self._handler,))
        host = f"[{self._sim.host}]" if ":" in self._sim.host else self._sim.host
        bound: int = server.add_insecure_port(f"{host}:{self.port}")
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {self._sim.host}:{self.port}")
        await server.start()
        self._server = server
        self.port = bound
        return bound

    async def stop(self, grace: float | None) -> None:
        """Stop listening; calls in flight get `grace` seconds (None: cut at once)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    # --- plumbing ----------------------------------------------------------------------

    def _unary(
        self, fn: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], request_type: Any
    ) -> grpc.RpcMethodHandler:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            sim = self._sim
            stats = sim.stats
            stats.total += 1
            stats.in_flight += 1
            try:
                answer = await fn(request, context)
            except _Abort as e:
                await context.abort(e.code, e.details, tuple(sim._ident.items()))
            finally:
                stats.in_flight -= 1
            context.set_trailing_metadata(tuple(sim._ident.items()))
            return answer

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_type.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

    def _check_model(self, name: str, version: str = "") -> None:
        if name not in self._sim._model_set or (version and version != "1"):
            raise _unknown(name, version)

    # --- health and metadata -------------------------------------------------------------

    async def _server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._sim.stats.by_kind["health"] += 1
        return pb.ServerLiveResponse(live=True)

    async def _server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        sim = self._sim
        sim.stats.by_kind["health"] += 1
        faults = sim.faults
        # Triton's strict readiness: the server is ready when every model is
        return pb.ServerReadyResponse(
            ready=faults.ready and not (faults.unready_models & sim._model_set)
        )

    async def _model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._sim.stats.by_kind["health"] += 1
        self._check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self._sim.faults.is_ready(request.name))

    async def _server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._sim.stats.by_kind["other"] += 1
        return pb.ServerMetadataResponse(name="tailguard-sim", version="1")

    async def _model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._sim.stats.by_kind["other"] += 1
        self._check_model(request.name, request.version)
        meta = kserve.model_metadata(request.name)
        out = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"])
        out.platform = meta["platform"]
        for kind, field in (("inputs", out.inputs), ("outputs", out.outputs)):
            for t in meta[kind]:
                field.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return out

    # --- inference -----------------------------------------------------------------------

    async def _model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        sim = self._sim
        sim.stats.by_kind["infer"] += 1
        self._check_model(request.model_name, request.model_version)
        model = request.model_name
        sim.stats.by_model[model] += 1
        self._count_sequence(request)
        if model in sim.decoupled:
            raise _Abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "ModelInfer RPC doesn't support models with decoupled transaction policy",
            )
        faults = sim.faults
        await self._fault(faults, model)
        return _classified(request, model, sim.outputs, sim._rng)

    async def _fault(self, faults: Faults, model: str) -> None:
        """Serve this call's latency, then its injected fate (raises `_Abort` for a fault)."""
        sim = self._sim
        if not faults.is_ready(model):
            sim.stats.faults["unready"] += 1
            raise _Abort(grpc.StatusCode.UNAVAILABLE, f"Request for model '{model}' is not ready")
        draw = faults.draw(sim._rng)
        if draw.delay_s:
            await asyncio.sleep(draw.delay_s)
        kind = draw.kind
        if kind is FaultKind.NONE:
            return
        sim.stats.faults[kind.value] += 1
        if kind is FaultKind.ERROR:
            raise _Abort(grpc_status_for(faults.error_status), "injected fault")
        if kind is FaultKind.HANG:
            await sim._hang()
        # a reset, a truncated answer, or a hang released by die(): the connection broke
        raise _Broken()

    def _count_sequence(self, request: Any) -> None:
        seq = _param(request.parameters, "sequence_id")
        if seq:
            self._sim.stats.by_sequence[str(seq)] += 1

    async def _model_stream_infer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        sim = self._sim
        stats = sim.stats
        stats.total += 1
        stats.in_flight += 1
        context.set_trailing_metadata(tuple(sim._ident.items()))
        try:
            async for request in requests:
                stats.by_kind["infer"] += 1
                model = request.model_name
                faults = sim.faults
                try:
                    self._check_model(model, request.model_version)
                    stats.by_model[model] += 1
                    self._count_sequence(request)
                    await self._fault(faults, model)
                    if model in sim.decoupled:
                        _name, _shape, values = _first_input(request, model)
                    else:
                        answer = _classified(request, model, sim.outputs, sim._rng)
                except _Broken as e:
                    await context.abort(e.code, e.details, tuple(sim._ident.items()))
                except _Abort as e:
                    # Triton reports one request's failure in the stream and goes on
                    yield pb.ModelStreamInferResponse(error_message=e.details)
                    continue
                if model not in sim.decoupled:
                    yield pb.ModelStreamInferResponse(infer_response=answer)
                    continue
                want_final = bool(_param(request.parameters, WANT_FINAL))
                delay = faults.stream_delay_ms / 1000.0
                for i, v in enumerate(values):
                    if i and delay:
                        await asyncio.sleep(delay)
                    out = _response(request, model, [1], [v * 2.0])
                    if want_final:
                        out.parameters[FINAL_FLAG].bool_param = False
                    yield pb.ModelStreamInferResponse(infer_response=out)
                if want_final:
                    final = pb.ModelInferResponse(
                        model_name=model, model_version="1", id=request.id
                    )
                    final.parameters[FINAL_FLAG].bool_param = True
                    yield pb.ModelStreamInferResponse(infer_response=final)
        finally:
            stats.in_flight -= 1
