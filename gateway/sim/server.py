"""A simulated model server on a real socket: KServe v2, OpenAI-style chat, a JSON API, faults.

It is the backend of the gateway's integration tests, the demo, the load tests
and the "direct" baseline of the benchmarks, so it is built on aiohttp's
low-level server (no router, no middlewares, no access log) and precomputes
every answer that does not depend on the request.

Life cycle: `start()` binds (port 0 picks a free port) → `die()` closes the
listener and resets every open connection, as a crashed region would →
`revive()` listens again on the same port → `stop()` ends it for good. The
optional control listener (`control_port`) serves only `/_sim/` and stays up
while the main listener is dead, so a test or a load test can revive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import json
import logging
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.sim import kserve, openai
from gateway.sim.faults import FaultKind, Faults
from gateway.sim.outputs import PROBS_NAME, Outputs

if TYPE_CHECKING:
    from gateway.sim.grpc import GrpcFrontend

log = logging.getLogger(__name__)

KINDS = ("infer", "chat", "health", "other")
_JSON = "application/json"
_DUMP = json.JSONEncoder(separators=(",", ":")).encode
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, like a crashed peer
_MODELS = "/v2/models/"
# aiohttp refuses bodies over 1 MiB by default; a 224x224x3 FP32 image as JSON is ~2 MiB.
MAX_BODY = 64 << 20
_REBIND_TRIES = 50  # x 20 ms: how long revive() waits for the old listener's port to free


class SeenRequest:
    """A request exactly as the simulator received it: what a gateway forwarded."""

    __slots__ = ("body", "headers", "method", "target")

    def __init__(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = dict(headers)
        self.body = body


class SimStats:
    """Counters of what the server was asked; `in_flight` is a gauge, never reset.

    `by_model` counts model calls (infer and chat) by model name; `faults`
    counts injected faults by type (error, reset, hang, truncate, unready);
    `connections` counts TCP connections accepted by the main listener (how
    well a client reuses them). Control requests (`/_sim/`) are not counted.
    """

    __slots__ = (
        "by_kind", "by_model", "by_sequence", "connections", "faults", "in_flight", "last", "total",
    )  # fmt: skip

    def __init__(self) -> None:
        self.in_flight = 0
        self.total = 0
        self.connections = 0
        # the last request as it arrived on the wire (method, raw target, headers, body bytes)
        self.last: SeenRequest | None = None
        self.by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.by_model: Counter[str] = Counter()
        # Triton sequence ids seen over gRPC, with how many requests each carried
        self.by_sequence: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()

    def reset(self) -> None:
        """Zero the counters (not `in_flight`: those requests are still running)."""
        self.total = 0
        self.connections = 0
        self.by_kind = dict.fromkeys(KINDS, 0)
        self.by_model = Counter()
        self.by_sequence = Counter()
        self.faults = Counter()

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "connections": self.connections,
            "by_kind": dict(self.by_kind),
            "by_model": dict(self.by_model),
            "in_flight": self.in_flight,
            "faults": dict(self.faults),
        }


def _reset_transport(transport: asyncio.Transport) -> None:
    """Drop a connection with a TCP RST: the peer sees ECONNRESET, not a polite close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    transport.abort()


def _gone() -> web.Response:
    # Returned by handlers that already dropped their connection; aiohttp's write of
    # it fails with a ConnectionError, which it treats as a client that went away.
    return web.Response(status=499)


class SimServer:
    """One simulated model server. Create it, `await start()`, and `await stop()` when done.

    `faults` can be replaced at any time (from Python, or the control API); each
    request uses the faults current when it arrived. Seeded servers draw their
    faults deterministically, in request arrival order. Every answer carries
    `x-sim-name` and `x-sim-region`. Without a `name`, the name is
    `<region>-<port>` once started.
    """

    def __init__(
        self,
        *,
        models: Sequence[str] = ("classifier",),
        region: str = "local",
        name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int | None = None,
        seed: int | None = None,
        faults: Faults | None = None,
        grpc_port: int | None = None,
        decoupled: Sequence[str] = (),
        outputs: Outputs | None = None,
    ) -> None:
        if isinstance(models, str) or not models:
            raise ValueError("models must be a non-empty list of model names")
        self.models: tuple[str, ...] = tuple(models)
        self._model_set = frozenset(self.models)
        if isinstance(decoupled, str) or not set(decoupled) <= self._model_set:
            raise ValueError("decoupled must list models the server serves")
        # models that stream several responses per request over gRPC ModelStreamInfer
        self.decoupled = frozenset(decoupled)
        self._grpc: GrpcFrontend | None = None
        if grpc_port is not None:
            from gateway.sim.grpc import GrpcFrontend

            self._grpc = GrpcFrontend(self, grpc_port)
        self.region = region
        self.host = host
        self.seed = seed
        self.stats = SimStats()
        self._name = name
        self._port = port
        self._control_port = control_port
        self._faults = faults if faults is not None else Faults()
        self._outputs = outputs if outputs is not None else Outputs()
        self._rng = random.Random(seed)
        self._ident: dict[str, str] = {}
        self._web: web.Server | None = None
        self._control_web: web.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._control_listener: asyncio.AbstractServer | None = None
        self._alive = False
        self._started = False
        self._hangs: set[asyncio.Future[None]] = set()
        self._revive_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._grpc_stopping: asyncio.Task[None] | None = None
        self._chat_seq = 0
        # Answers that never change, serialized once.
        self._metadata = {m: _DUMP(kserve.model_metadata(m)).encode() for m in self.models}
        self._v1_models = _DUMP(openai.models_list(self.models)).encode()
        self._server_meta = _DUMP(
            {"name": "tailguard-sim", "version": "1", "extensions": []}
        ).encode()

    # --- identity and addresses ---------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name if self._name is not None else f"{self.region}-{self._port}"

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._port

    @property
    def url(self) -> str:
        """`http://host:port`; known only after `start()` when the port was 0."""
        return self._url(self._port)

    @property
    def has_grpc(self) -> bool:
        return self._grpc is not None

    @property
    def grpc_port(self) -> int:
        """The bound gRPC port once started; raises when the server has no gRPC listener."""
        if self._grpc is None:
            raise RuntimeError(f"sim {self.name} was made without grpc_port")
        return self._grpc.port

    @property
    def grpc_address(self) -> str:
        """`host:port` of the gRPC listener, as a policy's `grpc:` takes it."""
        if self._grpc is None:
            raise RuntimeError(f"sim {self.name} was made without grpc_port")
        return self._grpc.address

    @property
    def control_port(self) -> int:
        return self._control_port if self._control_port is not None else self._port

    @property
    def control_url(self) -> str:
        """The control listener's URL, or `url` when there is no separate control port."""
        return self._url(self.control_port)

    def _url(self, port: int) -> str:
        if port == 0:
            raise RuntimeError("the port is known only after start() (port 0 picks a free one)")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    @property
    def alive(self) -> bool:
        """True while the main listener accepts connections."""
        return self._alive

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        if not isinstance(faults, Faults):
            raise TypeError(f"faults must be a Faults (try Faults.from_dict), got {faults!r}")
        self._faults = faults

    @property
    def outputs(self) -> Outputs:
        """What the simulated classifier answers besides OUTPUT0 (see `gateway.sim.outputs`)."""
        return self._outputs

    @outputs.setter
    def outputs(self, outputs: Outputs) -> None:
        if not isinstance(outputs, Outputs):
            raise TypeError(f"outputs must be an Outputs (try Outputs.from_dict), got {outputs!r}")
        self._outputs = outputs

    # --- life cycle --------------------------------------------------------------------

    async def start(self) -> int:
        """Bind and serve; returns the bound port. Raises OSError if the port is taken."""
        if self._started:
            raise RuntimeError(f"sim {self.name} is already started")
        self._web = web.Server(
            self._handle,
            request_factory=self._make_request,
            handler_cancellation=True,
            access_log=None,
            # bodies are decoded by the model server itself, as Triton does, so the raw
            # bytes a gateway forwarded can be checked
            auto_decompress=False,
        )
        self._listener, self._port = await self._listen(self._web, self._port, counted=True)
        if self._control_port is not None:
            self._control_web = web.Server(
                self._handle_control_port, handler_cancellation=True, access_log=None
            )
            try:
                self._control_listener, self._control_port = await self._listen(
                    self._control_web, self._control_port
                )
            except BaseException:
                self._listener.close()
                self._listener = None
                raise
        if self._grpc is not None:
            try:
                await self._grpc.start()
            except BaseException:
                for listener in (self._listener, self._control_listener):
                    if listener is not None:
                        listener.close()
                self._listener = self._control_listener = None
                raise
        self._ident = {"x-sim-name": self.name, "x-sim-region": self.region}
        self._started = self._alive = True
        return self._port

    async def stop(self, grace: float = 1.0) -> None:
        """Stop for good: stop listening, release hung requests, finish the rest within `grace`.

        Idle keep-alive connections are closed at once; answers in progress
        (a latency delay, a slow stream) get up to `grace` seconds, then are cut.
        """
        if not self._started:
            return
        self._started = self._alive = False
        self._cancel_revive()
        for task in list(self._tasks):
            task.cancel()
        listeners = [x for x in (self._listener, self._control_listener) if x is not None]
        self._listener = self._control_listener = None
        for listener in listeners:
            listener.close()
        self._release_hangs()
        if self._grpc is not None:
            if self._grpc_stopping is not None:
                await self._grpc_stopping
            await self._grpc.stop(grace)
        servers = [s for s in (self._web, self._control_web) if s is not None]
        await asyncio.sleep(0)  # let just-accepted connections reach their handlers
        for server in servers:
            server.pre_shutdown()
        await asyncio.gather(*(server.shutdown(grace) for server in servers))
        for listener in listeners:
            await listener.wait_closed()

    async def die(self, for_: float | None = None) -> None:
        """Crash: stop listening and reset every open connection, in-flight answers included.

        New connections are refused until `revive()` (or, with `for_`, until
        the server revives itself that many seconds later). The control
        listener, if any, keeps serving.
        """
        self._kill(spare=None)
        self._schedule_revive(for_)  # replaces any earlier self-revival
        await asyncio.sleep(0)  # let the resets' connection_lost callbacks run
        if self._grpc_stopping is not None:
            await self._grpc_stopping

    async def revive(self) -> None:
        """Listen again on the same port (SO_REUSEADDR); a no-op when alive.

        Raises OSError if another process took the port meanwhile.
        """
        self._cancel_revive()
        if self._alive:
            return
        if not self._started or self._web is None:
            raise RuntimeError(f"sim {self.name} is not started")
        for attempt in range(_REBIND_TRIES):
            try:
                self._listener, _ = await self._listen(self._web, self._port, counted=True)
                break
            except OSError as e:
                # the old listener may still be closing (uvloop closes on the next tick)
                if e.errno != errno.EADDRINUSE or attempt == _REBIND_TRIES - 1:
                    raise
                await asyncio.sleep(0.02)
        if self._grpc is not None:
            if self._grpc_stopping is not None:
                await self._grpc_stopping
            await self._grpc.start()
        self._alive = True

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _listen(
        self, factory: web.Server, port: int, counted: bool = False
    ) -> tuple[asyncio.AbstractServer, int]:
        loop = asyncio.get_running_loop()
        stats = self.stats

        def accept() -> RequestHandler:
            stats.connections += 1
            return factory()

        protocol = accept if counted else factory
        infos = await loop.getaddrinfo(
            self.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            # SO_REUSEADDR lets revive() bind the port again while the connections
            # that die() reset are still in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            bound = int(sock.getsockname()[1])
            server = await loop.create_server(protocol, sock=sock, backlog=1024)
        except BaseException:
            sock.close()
            raise
        return server, bound

    def _kill(self, spare: asyncio.Transport | None) -> None:
        """die() without awaiting; `spare` is the connection that asked, closed after its answer."""
        if not self._alive:
            return
        self._alive = False
        self._cancel_revive()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._release_hangs()
        if self._grpc is not None:
            # every call in flight is cut, as a crashed server's would be
            task = asyncio.ensure_future(self._grpc.stop(None))
            self._grpc_stopping = task
            task.add_done_callback(self._grpc_stopped)
        assert self._web is not None
        for conn in self._web.connections:
            transport = conn.transport
            if transport is not None and transport is not spare:
                _reset_transport(transport)

    def _grpc_stopped(self, task: asyncio.Task[None]) -> None:
        if self._grpc_stopping is task:
            self._grpc_stopping = None

    def _schedule_revive(self, after: float | None) -> None:
        self._cancel_revive()
        if after is None:
            return
        self._revive_timer = asyncio.get_running_loop().call_later(after, self._revive_later)

    def _revive_later(self) -> None:
        self._revive_timer = None
        task = asyncio.ensure_future(self._revive_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _revive_logged(self) -> None:
        try:
            await self.revive()
        except (OSError, RuntimeError) as e:  # nobody awaits this task: say it here
            log.warning("sim %s could not revive on port %d: %s", self.name, self._port, e)

    def _cancel_revive(self) -> None:
        if self._revive_timer is not None:
            self._revive_timer.cancel()
            self._revive_timer = None

    def _release_hangs(self) -> None:
        for fut in self._hangs:
            if not fut.done():
                fut.set_result(None)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        loop = asyncio.get_running_loop()
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY
        )

    # --- answers -----------------------------------------------------------------------

    def _json(
        self, status: int, obj: object, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=_DUMP(obj).encode(),
            content_type=_JSON,
            headers={**self._ident, **headers} if headers else self._ident,
        )

    def _raw_json(self, body: bytes) -> web.Response:
        return web.Response(body=body, content_type=_JSON, headers=self._ident)

    def _empty(self, status: int) -> web.Response:
        return web.Response(status=status, headers=self._ident)

    def _not_allowed(self, allow: str) -> web.Response:
        return self._json(405, {"error": "method not allowed"}, {"Allow": allow})

    # --- dispatch ----------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_sim/"):
            try:
                return await self._control(request, path[6:], main=True)
            except ConnectionError:
                return _gone()
        stats = self.stats
        stats.total += 1
        stats.in_flight += 1
        try:
            method = request.method
            if path.startswith(_MODELS):
                return await self._kserve_model(request, method, path[len(_MODELS) :])
            if path == "/v1/chat/completions":
                stats.by_kind["chat"] += 1
                if method != "POST":
                    return self._not_allowed("POST")
                return await self._chat(request)
            if path.startswith("/v2/health/") or path == "/health":
                stats.by_kind["health"] += 1
                if method != "GET":
                    return self._not_allowed("GET")
                return self._health(path)
            stats.by_kind["other"] += 1
            if path == "/predict":
                if method != "POST":
                    return self._not_allowed("POST")
                return await self._predict(request)
            if path == "/v1/models" and method == "GET":
                return self._raw_json(self._v1_models)
            if path == "/v2" and method == "GET":
                return self._raw_json(self._server_meta)
            return self._json(404, {"error": f"no route for {method} {path}"})
        except web.HTTPException as e:  # e.g. 413 from request.read(): still say who answered
            e.headers.update(self._ident)
            raise
        except ConnectionError:
            # The client left mid-read or mid-write (or a fault dropped it): normal
            # for a simulator, and aiohttp would log it as an error otherwise.
            return _gone()
        finally:
            stats.in_flight -= 1

    async def _handle_control_port(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/_sim/"):
            return self._json(404, {"error": "the control port serves /_sim/ only"})
        try:
            return await self._control(request, path[6:], main=False)
        except ConnectionError:
            return _gone()

    def _health(self, path: str) -> web.Response:
        faults = self._faults
        if path == "/v2/health/live":
            return self._empty(200)
        if path == "/v2/health/ready":
            # Triton's strict readiness: the server is ready when every model is.
            ready = faults.ready and not (faults.unready_models & self._model_set)
            return self._empty(200 if ready else 400)
        if path == "/health":  # the OpenAI-style servers' (vLLM's) probe
            return self._empty(200 if faults.ready else 503)
        return self._json(404, {"error": f"no route for GET {path}"})

    async def _kserve_model(
        self, request: web.BaseRequest, method: str, rest: str
    ) -> web.StreamResponse:
        parts = rest.split("/")
        model = parts[0]
        version: str | None = None
        if len(parts) >= 3 and parts[1] == "versions":
            version = parts[2]
            del parts[1:3]
        action = parts[1] if len(parts) == 2 else ("" if len(parts) == 1 else None)
        kinds = self.stats.by_kind
        if action == "infer":
            kinds["infer"] += 1
        elif action == "ready":
            kinds["health"] += 1
        else:
            kinds["other"] += 1
        if action is None or action not in ("", "ready", "infer"):
            return self._json(404, {"error": f"no route for {method} {request.path}"})
        if model not in self._model_set:
            return self._json(404, {"error": f"Request for unknown model: '{model}' is not found"})
        if version is not None and version != "1":
            return self._json(
                404,
                {"error": f"Request for unknown model: '{model}' version {version} is not found"},
            )
        if action == "infer":
            if method != "POST":
                return self._not_allowed("POST")
            self.stats.by_model[model] += 1
            return await self._infer(request, model)
        if method != "GET":
            return self._not_allowed("GET")
        if action == "ready":
            return self._empty(200 if self._faults.is_ready(model) else 400)
        return self._raw_json(self._metadata[model])

    # --- model calls -------------------------------------------------------------------

    async def _infer(self, request: web.BaseRequest, model: str) -> web.StreamResponse:
        faults = self._faults
        if not faults.is_ready(model):
            self.stats.faults["unready"] += 1
            return self._json(400, {"error": f"Request for model '{model}' is not ready"})
        draw = faults.draw(self._rng)
        if draw.delay_s:
            await asyncio.sleep(draw.delay_s)
        kind = draw.kind
        if kind is not FaultKind.NONE:
            self.stats.faults[kind.value] += 1
            if kind is not FaultKind.TRUNCATE:
                return await self._fail(request, kind, faults, {"error": "injected fault"})
        raw = await request.read()
        self.stats.last = SeenRequest(request.method, request.raw_path, request.headers, raw)
        try:
            body = kserve.decode_body(request.headers.get("Content-Encoding"), raw)
            parsed = kserve.parse_request(
                body, request.headers.get("Inference-Header-Content-Length")
            )
            outputs = self._outputs
            if outputs.classes:
                answer = kserve.infer(parsed, model, (PROBS_NAME,))
                first = parsed["inputs"][0]
                # the first input's values, flattened: OUTPUT0 holds them doubled
                probs = outputs.probabilities(
                    [v / 2.0 for v in answer["outputs"][0]["data"]], first["shape"], self._rng
                )
                if probs is not None:
                    answer["outputs"].append(probs)
            else:
                answer = kserve.infer(parsed, model)
            status = 200
        except kserve.InferError as e:
            status, answer = e.status, {"error": e.message}
        data = _DUMP(answer).encode()
        if kind is FaultKind.TRUNCATE:
            return await self._truncated(request, status, data)
        headers = self._ident
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            # Triton compresses its answer for a client that accepts gzip
            data = gzip.compress(data, compresslevel=1)
            headers = {**headers, "Content-Encoding": "gzip"}
        return web.Response(status=status, body=data, content_type=_JSON, headers=headers)

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            chat = openai.parse_chat(await request.read())
        except openai.ChatError as e:
            return self._json(400, openai.error_body(str(e), "invalid_request_error"))
        self.stats.by_model[chat.model] += 1
        faults = self._faults
        if not faults.is_ready(chat.model):
            self.stats.faults["unready"] += 1
            body = openai.error_body(f"model '{chat.model}' is not ready", "server_error")
            return self._json(503, body)
        draw = faults.draw(self._rng)
        if draw.delay_s:
            await asyncio.sleep(draw.delay_s)
        kind = draw.kind
        if kind is not FaultKind.NONE:
            self.stats.faults[kind.value] += 1
            if kind is not FaultKind.TRUNCATE:
                error = openai.error_body("injected fault", "server_error", faults.error_status)
                return await self._fail(request, kind, faults, error)
        self._chat_seq += 1
        completion_id = f"chatcmpl-{self.name}-{self._chat_seq}"
        created = int(time.time())
        if not chat.stream:
            data = _DUMP(openai.completion(chat, completion_id, created)).encode()
            if kind is FaultKind.TRUNCATE:
                return await self._truncated(request, 200, data)
            return web.Response(body=data, content_type=_JSON, headers=self._ident)
        events = openai.stream_events(chat, completion_id, created)
        return await self._stream(
            request, events, faults.stream_delay_ms / 1000.0, kind is FaultKind.TRUNCATE
        )

    async def _predict(self, request: web.BaseRequest) -> web.StreamResponse:
        faults = self._faults
        if not faults.ready:
            self.stats.faults["unready"] += 1
            return self._json(503, {"error": "server is not ready"})
        draw = faults.draw(self._rng)
        if draw.delay_s:
            await asyncio.sleep(draw.delay_s)
        kind = draw.kind
        if kind is not FaultKind.NONE:
            self.stats.faults[kind.value] += 1
            if kind is not FaultKind.TRUNCATE:
                return await self._fail(request, kind, faults, {"error": "injected fault"})
        try:
            payload = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as e:
            return self._json(400, {"error": f"invalid JSON body: {e}"})
        data = _DUMP({"echo": payload, "served_by": self.name}).encode()
        if kind is FaultKind.TRUNCATE:
            return await self._truncated(request, 200, data)
        return web.Response(body=data, content_type=_JSON, headers=self._ident)

    # --- faults on the wire ------------------------------------------------------------

    async def _fail(
        self, request: web.BaseRequest, kind: FaultKind, faults: Faults, error: object
    ) -> web.StreamResponse:
        if kind is FaultKind.ERROR:
            extra = None if faults.retry_after is None else {"Retry-After": str(faults.retry_after)}
            return self._json(faults.error_status, error, extra)
        if kind is FaultKind.HANG:
            await self._hang()
        # RESET, or a HANG released by die()/stop(): the server is gone, so is the connection.
        transport = request.transport
        if transport is not None:
            _reset_transport(transport)
        return _gone()

    async def _hang(self) -> None:
        """Wait until die()/stop() (or until cancelled: the client left)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hangs.add(fut)
        try:
            await fut
        finally:
            self._hangs.discard(fut)

    async def _truncated(
        self, request: web.BaseRequest, status: int, data: bytes
    ) -> web.StreamResponse:
        """Announce `len(data)` bytes, send half of them, close: a client must see a bad body."""
        resp = web.StreamResponse(status=status, headers=self._ident)
        resp.content_type = _JSON
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: max(1, len(data) // 2)])
        transport = request.transport
        if transport is not None:
            transport.close()  # a FIN after the partial body (close flushes what was written)
        return resp

    async def _stream(
        self, request: web.BaseRequest, events: list[bytes], delay: float, truncate: bool
    ) -> web.StreamResponse:
        """Send SSE events as separate HTTP chunks, `delay` apart.

        With `truncate`, the connection closes after half of the events, without
        the terminating chunk: a stream that broke after it started.
        """
        resp = web.StreamResponse(
            headers={
                **self._ident,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
            }
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        cut = max(1, len(events) // 2) if truncate else len(events)
        for i, event in enumerate(events):
            if i and delay:
                await asyncio.sleep(delay)
            if i == cut:
                transport = request.transport
                if transport is not None:
                    transport.close()
                return resp
            await resp.write(event)
        await resp.write_eof()
        return resp

    # --- control API -------------------------------------------------------------------

    async def _control(
        self, request: web.BaseRequest, sub: str, *, main: bool
    ) -> web.StreamResponse:
        method = request.method
        try:
            if sub == "faults":
                if method == "GET":
                    return self._json(200, self._faults.to_dict())
                if method == "PUT":
                    self.faults = Faults.from_dict(await self._control_body(request))
                elif method == "PATCH":
                    self.faults = self._faults.merge(await self._control_body(request))
                elif method == "DELETE":
                    self.faults = Faults()
                else:
                    return self._not_allowed("GET, PUT, PATCH, DELETE")
                return self._json(200, self._faults.to_dict())
            if sub == "outputs":
                if method == "GET":
                    return self._json(200, self._outputs.to_dict())
                if method == "PUT":
                    self.outputs = Outputs.from_dict(await self._control_body(request))
                elif method == "DELETE":
                    self.outputs = Outputs()
                else:
                    return self._not_allowed("GET, PUT, DELETE")
                return self._json(200, self._outputs.to_dict())
            if sub == "stats":
                if method != "GET":
                    return self._not_allowed("GET")
                return self._json(200, self._status())
            if sub == "stats/reset":
                if method != "POST":
                    return self._not_allowed("POST")
                self.stats.reset()
                return self._json(200, self._status())
            if sub == "die":
                if method != "POST":
                    return self._not_allowed("POST")
                return await self._control_die(request, main=main)
            if sub == "revive":
                if method != "POST":
                    return self._not_allowed("POST")
                await self.revive()
                return self._json(200, self._status())
        except ValueError as e:
            return self._json(400, {"error": str(e)})
        except OSError as e:
            return self._json(500, {"error": f"cannot listen again: {e}"})
        return self._json(404, {"error": f"no control route /_sim/{sub}"})

    async def _control_body(self, request: web.BaseRequest) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"invalid JSON body: {e}") from None
        if not isinstance(body, dict):
            raise ValueError(f"the body must be a JSON object, got {body!r}")
        return body

    async def _control_die(self, request: web.BaseRequest, *, main: bool) -> web.StreamResponse:
        body = await self._control_body(request)
        unknown = sorted(k for k in body if k != "for")
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: for")
        after = body.get("for")
        if after is not None and (
            isinstance(after, bool) or not isinstance(after, int | float) or not after > 0
        ):
            raise ValueError(f"'for' must be a number of seconds > 0, got {after!r}")
        resp = self._json(200, {**self._status(), "alive": False, "revive_in": after})
        if main:
            # This very connection dies too: answer first, then close it politely
            # (the others get a reset) so the caller learns that its order was taken.
            resp.force_close()
            await resp.prepare(request)
            await resp.write_eof()
            self._kill(spare=request.transport)
        else:
            self._kill(spare=None)
        self._schedule_revive(None if after is None else float(after))
        return resp

    def _status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "region": self.region,
            "alive": self._alive,
            "port": self._port,
            **({"grpc_port": self._grpc.port} if self._grpc is not None else {}),
            **self.stats.to_dict(),
        }
