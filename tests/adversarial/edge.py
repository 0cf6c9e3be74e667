"""Raw-socket tools for the adversarial edge suite.

- `EchoBackend` records every request exactly as it reached it (method, raw target, header
  bytes, body bytes), parsed with llhttp, and answers with JSON naming what it saw, so a
  client can tell whose answer it got.
- `Edge` runs that backend and a real `Gateway` on a uvloop loop of their own thread, as
  production does, so tests can talk to it over blocking sockets byte by byte (and so
  hypothesis can drive it with plain synchronous examples).
- `converse` sends bytes on a fresh connection and reads answers with llhttp's response
  parser: an answer llhttp refuses is reported, never silently accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import json
import socket
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httptools
import uvloop

from gateway.app import Gateway

T = TypeVar("T")

# How long a client waits for an answer it expects. Every case here is answered in
# milliseconds; only a hang (the gateway waiting for bytes nobody sends) reaches this.
ANSWER_WAIT = 1.5
# How long a client waits to see whether the gateway closes the connection after answering.
CLOSE_WAIT = 0.5
# The plain request sent after a case on the same connection.
NEXT = b"/v2/models/public/next"

# Routes of the edge policy, in policy order. `public` and `private` are two KServe backends
# side by side, so a target that climbs from one into the other shows which one matched.
EDGE_POLICY = """
version: 1
gateway: {{region: local}}
backends:
  public:
    protocol: kserve-v2
    endpoints: [{{url: "{url}"}}]
  private:
    protocol: kserve-v2
    endpoints: [{{url: "{url}"}}]
  chat:
    protocol: openai
    endpoints: [{{url: "{url}"}}]
  plain:
    protocol: http
    endpoints: [{{url: "{url}"}}]
routes:
  - name: public
    match: {{path_prefix: /v2/models/public/}}
    split: [{{backend: public, weight: 100}}]
    timeout: 5s
  - name: private
    match: {{path_prefix: /v2/models/private/}}
    split: [{{backend: private, weight: 100}}]
    timeout: 5s
  - name: chat
    match: {{path_prefix: /v1/}}
    split: [{{backend: chat, weight: 100}}]
    timeout: 5s
  - name: plain
    match: {{path_prefix: /}}
    split: [{{backend: plain, weight: 100}}]
    timeout: 5s
"""


# The same routes as the policy says, for checking what was forwarded against what matched.
ROUTES = (
    ("public", b"/v2/models/public/"),
    ("private", b"/v2/models/private/"),
    ("chat", b"/v1/"),
    ("plain", b"/"),
)


def route_of(path: bytes) -> str | None:
    """The route a backend path belongs to under the edge policy (first prefix wins)."""
    return next((name for name, prefix in ROUTES if path.startswith(prefix)), None)


def forwarding_problems(target: bytes, route: str | None) -> list[str]:
    """Why a target the backend received breaks "the path that matched is the path forwarded".

    The backend is assumed to decode percent-encodings and resolve dot segments, as most do:
    so the forwarded path, decoded, must have no dot segments, no encoded or raw separators
    a backend could read as one (`%2F`, backslash), no NUL or control characters, and must
    belong to the route that answered (`route`, from `x-tailguard-route`).
    """
    problems = []
    if not target.startswith(b"/"):
        problems.append(f"not an origin-form target: {target[:80]!r}")
        return problems
    if b"#" in target:
        problems.append("a fragment was forwarded")
    path = target.split(b"?", 1)[0]
    lowered = path.lower()
    for encoded, what in ((b"%2f", "encoded slash"), (b"%5c", "encoded backslash")):
        if encoded in lowered:
            problems.append(f"{what} forwarded")
    decoded = urllib.parse.unquote_to_bytes(path)
    if b"\\" in decoded:
        problems.append("backslash forwarded")
    if any(c < 0x20 or c == 0x7F for c in decoded):
        problems.append("NUL or control character forwarded")
    segments = decoded.split(b"/")
    if b"." in segments or b".." in segments:
        problems.append("dot segment forwarded")
    if route is not None and route_of(decoded) != route:
        problems.append(
            f"route {route!r} matched but the backend path belongs to {route_of(decoded)!r}"
        )
    return problems


# --- the recording backend ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request as the backend received it: nothing decoded, nothing normalised."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> list[bytes]:
        key = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == key]


class _EchoConnection(asyncio.Protocol):
    def __init__(self, backend: EchoBackend) -> None:
        self._backend = backend
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            # the gateway forwarded bytes llhttp refuses: the test will say so
            self._backend.refused.append(f"{type(e).__name__}: {e}")
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self._transport.close()

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self._target = b""
        self._headers = []
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        seen = Seen(
            self._parser.get_method(), self._target, tuple(self._headers), bytes(self._body)
        )
        self._backend.seen.append(seen)
        assert self._transport is not None
        self._transport.write(self._backend.answer(seen))


class EchoBackend:
    """Answers 200 with `{"method", "target"}` as JSON, and records each request.

    The values of any `x-mark` fields are echoed too (`"marks"`), so that a test can tell
    which of the requests it sent an answer belongs to.

    A request header `x-echo: gzip` asks for that JSON gzip-compressed, labelled
    `Content-Encoding: gzip`, as a backend honouring `Accept-Encoding` would send it.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.refused: list[str] = []
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _EchoConnection(self), "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @staticmethod
    def payload(seen: Seen) -> bytes:
        """The body answered to `seen`, exactly as sent."""
        answer: dict[str, Any] = {
            "method": seen.method.decode("latin-1"),
            "target": seen.target.decode("latin-1"),
        }
        marks = seen.header("x-mark")
        if marks:
            answer["marks"] = [m.decode("latin-1") for m in marks]
        body = json.dumps(answer).encode()
        if b"gzip" in seen.header("x-echo"):
            body = gzip.compress(body, mtime=0)
        return body

    def answer(self, seen: Seen) -> bytes:
        body = self.payload(seen)
        coding = b"Content-Encoding: gzip\r\n" if b"gzip" in seen.header("x-echo") else b""
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + coding
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )


# --- the gateway on its own loop -------------------------------------------------------------


class Edge:
    """A gateway and its echo backend serving from a uvloop loop on a background thread."""

    def __init__(self, policy_dir: Path, listener: str = "aiohttp") -> None:
        self._dir = policy_dir
        self.listener = listener
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.backend = EchoBackend()
        self.gateway: Gateway | None = None
        self.port = 0
        self.backend_port = 0

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.backend_port = self.call(self.backend.start())
        path = self._dir / "edge.yaml"
        url = f"http://127.0.0.1:{self.backend_port}"
        path.write_text(textwrap.dedent(EDGE_POLICY.format(url=url)))

        async def boot() -> Gateway:
            gw = Gateway(
                path,
                listen=("127.0.0.1", 0),
                admin_listen=("127.0.0.1", 0),
                listener=self.listener,
            )
            await gw.start()
            return gw

        self.gateway = self.call(boot())
        assert self.gateway.listening is not None
        self.port = self.gateway.listening.port

    def stop(self) -> None:
        if self.gateway is not None:
            self.call(self.gateway.stop())
        self.call(self.backend.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def in_flight(self) -> float:
        assert self.gateway is not None
        value = self.gateway.metrics.registry.get_sample_value("tailguard_requests_in_flight")
        return value or 0.0

    def settle(self, timeout: float = 3.0) -> None:
        """Wait until the gateway serves nothing: whatever it was going to forward, it has."""
        end = time.monotonic() + timeout
        while self.in_flight() and time.monotonic() < end:
            time.sleep(0.005)
        # one loop turn more, so callbacks queued by the last answer have run
        self.call(asyncio.sleep(0))

    def take(self) -> list[Seen]:
        """What the backend received since the last call (after the gateway has settled)."""
        self.settle()
        seen, self.backend.seen = self.backend.seen, []
        return seen

    def assert_serving(self) -> None:
        """The gateway still answers a plain request on a new connection, with its own answer."""
        self.take()
        target = b"/v2/models/public/still-serving"
        conv = converse(self.port, get(target))
        assert conv.answers, f"the gateway no longer answers: {conv}"
        answer = conv.answers[0]
        assert answer.status == 200, f"a plain request after the case got {answer}"
        assert answer.json()["target"] == target.decode()
        assert [s.target for s in self.take()] == [target]
        assert self.backend.refused == [], "the gateway forwarded bytes llhttp refuses"


# --- the raw client -----------------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool

    def header(self, name: str) -> bytes | None:
        key = name.lower().encode()
        return next((v for k, v in self.headers if k.lower() == key), None)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def route(self) -> str | None:
        value = self.header("x-tailguard-route")
        return value.decode("latin-1") if value is not None else None

    @property
    def marks(self) -> list[str] | None:
        """The `x-mark` values the echo backend saw with the request this answers."""
        if self.echoed is None:
            return None
        marks = json.loads(self.body).get("marks", [])
        return list(marks)

    @property
    def echoed(self) -> bytes | None:
        """The target the echo backend says it received, when this is its answer."""
        if self.status != 200 or self.route is None:
            return None
        try:
            data = json.loads(self.body)
        except ValueError:
            return None
        target = data.get("target") if isinstance(data, dict) else None
        return target.encode("latin-1") if isinstance(target, str) else None

    def __repr__(self) -> str:
        return f"<{self.status} {self.headers!r} {self.body[:200]!r}>"


class _Answers:
    """llhttp callbacks collecting whole responses."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Answer] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._keep_alive = False

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue) answers no request by itself
        self.done.append(Answer(status, self._headers, bytes(self._body), self._keep_alive))


@dataclasses.dataclass
class Conversation:
    """What came back on one connection.

    `closed`: the gateway closed the connection (or reset it). `hung`: fewer answers than
    expected arrived and the connection stayed open. `garbled`: llhttp refused the bytes the
    gateway sent (with the reason); `raw` is every byte received.
    """

    answers: list[Answer]
    closed: bool
    hung: bool
    garbled: str | None
    raw: bytes

    @property
    def statuses(self) -> list[int]:
        return [a.status for a in self.answers]

    def assert_sound(self, refusals: tuple[int, ...] = ()) -> None:
        """Well-formed answers, none a server error (but `refusals`: 501, 505), and no hang."""
        assert self.garbled is None, f"the gateway answered bytes llhttp refuses: {self}"
        assert not self.hung, f"the connection stayed open without the answers expected: {self}"
        errors = [s for s in self.statuses if s >= 500 and s not in refusals]
        assert not errors, f"a server error: {self}"

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("hung" if self.hung else "open")
        shown = [
            f"{a.status} {a.route or '-'} {a.echoed if a.echoed is not None else a.body[:120]!r}"
            for a in self.answers
        ]
        garbled = f", garbled: {self.garbled}" if self.garbled else ""
        return f"<{state} after [{' | '.join(shown)}]{garbled}>"


def converse(
    port: int,
    data: bytes,
    *,
    expect: int = 1,
    wait: float = ANSWER_WAIT,
    close_wait: float = CLOSE_WAIT,
) -> Conversation:
    """Send `data` on a fresh connection; read up to `expect` answers, then see if it closes."""
    answers = _Answers()
    raw = bytearray()
    closed = hung = False
    garbled: str | None = None
    with socket.create_connection(("127.0.0.1", port), timeout=max(wait, 5.0)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            sock.sendall(data)
        deadline = time.monotonic() + wait
        while True:
            if len(answers.done) >= expect:
                if answers.done[-1].keep_alive:
                    break  # the gateway said it keeps the connection
                # the gateway said it closes: see that it does
                deadline = min(deadline, time.monotonic() + close_wait)
            left = deadline - time.monotonic()
            if left <= 0:
                hung = len(answers.done) < expect
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                hung = len(answers.done) < expect
                break
            except OSError:  # reset
                closed = True
                break
            if not chunk:
                closed = True
                break
            raw += chunk
            if garbled is None:
                try:
                    answers.parser.feed_data(chunk)
                except httptools.HttpParserError as e:
                    garbled = f"{type(e).__name__}: {e}"
    return Conversation(answers.done, closed, hung, garbled, bytes(raw))


def refused_in_step(
    edge: Edge, data: bytes, statuses: range | tuple[int, ...] = range(400, 500)
) -> Answer:
    """Send `data`, then a plain request on the same connection; return the first answer.

    The first answer's status must be in `statuses`, and nothing of `data` may reach a
    backend. Then either the gateway closed the connection, or the plain request got its own
    answer: a refusal never leaves the connection out of step.
    """
    conv = converse(edge.port, data + get(NEXT), expect=2)
    conv.assert_sound()
    assert conv.answers, conv
    assert conv.answers[0].status in statuses, conv
    seen = edge.take()
    if len(conv.answers) == 1:
        assert conv.closed, conv
        assert seen == [], "a refused request reached a backend"
    else:
        assert conv.answers[1].echoed == NEXT, conv
        assert [s.target for s in seen] == [NEXT], "a refused request reached a backend"
    return conv.answers[0]


def get(target: bytes, *headers: bytes, host: bytes = b"edge.test") -> bytes:
    """A well-formed GET of `target` (raw bytes, sent as is)."""
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: " + host, *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(
    target: bytes, body: bytes, *headers: bytes, content_type: bytes = b"application/json"
) -> bytes:
    """A well-formed POST of `body` with its exact Content-Length."""
    lines = [
        b"POST " + target + b" HTTP/1.1",
        b"Host: edge.test",
        b"Content-Type: " + content_type,
        b"Content-Length: " + str(len(body)).encode(),
        *headers,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def join_lines(lines: list[bytes], odd_end: tuple[int, bytes] | None) -> bytes:
    """A head: each line, then the empty line, ended by CRLF, except line `odd_end[0]`
    (past the last: the empty line) which ends with `odd_end[1]`."""
    ends = [b"\r\n"] * (len(lines) + 1)
    if odd_end is not None:
        ends[min(odd_end[0], len(lines))] = odd_end[1]
    return b"".join(line + end for line, end in zip([*lines, b""], ends, strict=True))


@contextlib.contextmanager
def running_edge(policy_dir: Path, listener: str = "aiohttp") -> Iterator[Edge]:
    edge = Edge(policy_dir, listener)
    edge.start()
    try:
        yield edge
    finally:
        edge.stop()
