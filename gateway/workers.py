"""`tailguard run --workers N`: N gateway processes on one port, one admin API in front.

Python serves one event loop per process, so more cores mean more processes. Each worker
is an ordinary `tailguard run` that binds the data address with SO_REUSEPORT (the kernel
spreads new connections over them) and its own admin API on a private loopback port. This
supervisor holds the public admin address, with the policy's `admin_tls` if it has one:

- `/metrics` merges every worker's metrics, each sample labelled `worker="<k>"`, so one
  scrape sees them all (sum over `worker` in queries);
- `/readyz` is ready when every worker is; `/healthz` answers while the supervisor runs;
  these three are open, as on a single gateway;
- `/admin/...` needs the admin credentials, checked here exactly as a worker checks them
  (`gateway.admin.server.authenticate`: the policy's tokens, `TAILGUARD_ADMIN_TOKEN`, the
  loopback rule on the caller's own address) from the headers, before any body is read.
  An accepted request is sent to every worker (a drain, reload or canary action must reach
  all of them) and answered with the first worker's reply, or the first refusal if any
  refused.

The supervisor forwards with a secret made for this run (given to the workers in
`TAILGUARD_SUPERVISOR_SECRET`) and the caller's address; a worker grants the loopback rule
only to an address the secret vouches for, and judges the caller's token against its own
current policy, so a token the workers no longer accept is refused even if the supervisor
has not noticed the change yet. The supervisor follows the policy file (and policies
applied through it) for its own check.

It forwards SIGHUP (reload) and SIGTERM/SIGINT (graceful stop) to the workers, restarts a
worker that dies unexpectedly (with a growing pause, so a crash loop cannot spin), and exits
0 when every worker stopped cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin.server import (
    CREDENTIAL_HEADERS,
    MAX_POLICY_BYTES,
    PEER_HEADER,
    SUPERVISOR_HEADER,
    SUPERVISOR_SECRET_ENV,
    AdminCredentials,
    authenticate,
    continue_if,
    unauthorized,
)
from gateway.errors import TailguardError

TokenReader = Callable[[str], Mapping[str, str]]
"""Policy text → the admin token hashes it configures (hash → id).

Raises `PolicyError` (or `OSError` for a rules file it names) when the text is no policy."""

log = logging.getLogger("tailguard.workers")

RESTART_PAUSE = (0.5, 10.0)  # first pause after a crash, and the longest
SCRAPE_TIMEOUT = 5.0


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def admin_tls_contexts(paths: tuple[str, str], base: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The supervisor's admin TLS: a server context like a worker's (TLS 1.2+, the policy's
    certificate and key, relative to the policy file), and a client context for talking to
    the workers, which serve the same certificate: it is trusted as is, whatever name it
    carries, and nothing else is. Raises `OSError` (`ssl.SSLError`) for a bad file."""
    cert, key = (Path(p) if Path(p).is_absolute() else base / p for p in paths)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.check_hostname = False  # the workers are on 127.0.0.1; the certificate is pinned
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return server, client


@dataclass
class Worker:
    index: int
    admin_port: int
    scheme: str = "http"
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    stopping: bool = field(default=False)

    @property
    def admin_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.admin_port}"


class MergedMetrics:
    """A collector that yields the workers' metric families, each sample labelled by worker."""

    def __init__(self) -> None:
        self.texts: list[tuple[int, str]] = []

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, text in self.texts:
            for family in text_string_to_metric_families(text):
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp)
        yield from merged.values()


class Supervisor:
    """Runs the workers and their shared admin face; `run()` until SIGTERM.

    `tokens` are the admin token hashes of the policy as checked at start, `read_tokens`
    gives them for a policy text when it changes, `admin_tls` is the policy's certificate
    and key paths. `environ` holds `TAILGUARD_ADMIN_TOKEN` and is what the workers inherit.
    `watch` is false when the workers run with `--no-watch` (they re-read the policy file on
    SIGHUP and `/admin/reload` only, and so does the supervisor).
    """

    def __init__(
        self,
        policy: str,
        workers: int,
        listen: tuple[str, int],
        admin: tuple[str, int],
        extra_args: list[str],
        *,
        tokens: Mapping[str, str],
        read_tokens: TokenReader,
        admin_tls: tuple[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        watch: bool = True,
    ) -> None:
        self.policy = policy
        self.listen = listen
        self.admin = admin
        self.extra_args = extra_args
        self.admin_tls = admin_tls
        scheme = "https" if admin_tls is not None else "http"
        self.workers = [Worker(k, _free_loopback_port(), scheme) for k in range(workers)]
        self._stopping = False
        self._http: aiohttp.ClientSession | None = None
        self._environ = dict(os.environ if environ is None else environ)
        self._environ.pop(SUPERVISOR_SECRET_ENV, None)
        # the supervisor is nobody's worker: a caller's address counts as it is
        self._credentials = AdminCredentials(AdminCredentials.from_environ(self._environ).env_token)
        self._secret = secrets.token_hex(32)
        self._tokens = tokens
        self._read_tokens = read_tokens
        self._policy_stamp: tuple[int, int, int] | None = None
        self._follow_file = watch

    # --- workers ---------------------------------------------------------------------------

    def stopping(self) -> bool:
        return self._stopping

    async def _spawn(self, w: Worker) -> None:
        host, port = self.listen
        argv = [
            sys.executable, "-m", "gateway", "run", "--policy", self.policy,
            "--listen", f"{host}:{port}", "--admin-listen", f"127.0.0.1:{w.admin_port}",
            "--reuse-port", *self.extra_args,
        ]  # fmt: skip
        env = {
            **self._environ,
            "TAILGUARD_WORKER": str(w.index),
            SUPERVISOR_SECRET_ENV: self._secret,
        }
        w.proc = await asyncio.create_subprocess_exec(*argv, env=env)

    async def _watch(self, w: Worker) -> None:
        """Restart a worker that exits while the supervisor is not stopping."""
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            if self.stopping():
                return
            w.restarts += 1
            pause = min(RESTART_PAUSE[0] * 2 ** (w.restarts - 1), RESTART_PAUSE[1])
            log.error("worker %d exited with %s; restarting in %.1fs", w.index, code, pause)
            await asyncio.sleep(pause)
            if self.stopping():
                return
            await self._spawn(w)

    def signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    # --- the admin face --------------------------------------------------------------------

    async def _get(self, w: Worker, path: str) -> tuple[int, bytes]:
        assert self._http is not None
        try:
            async with self._http.get(
                w.admin_url + path, timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
            ) as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            return 503, f"worker {w.index} did not answer: {e}".encode()

    async def _metrics(self, _: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self._get(w, "/metrics") for w in self.workers))
        merged = MergedMetrics()
        merged.texts = [
            (w.index, body.decode()) for w, (status, body) in zip(self.workers, answers, strict=True)
            if status == 200
        ]  # fmt: skip
        registry = CollectorRegistry(auto_describe=False)
        registry.register(merged)
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    async def _readyz(self, _: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self._get(w, "/readyz") for w in self.workers))
        ready = [status == 200 for status, _ in answers]
        return web.json_response(
            {"ready": all(ready), "workers": ready}, status=200 if all(ready) else 503
        )

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "workers": len(self.workers)})

    def _refresh_tokens(self, *, reread: bool = False) -> None:
        """Follow the policy file as the workers do: on every change when they watch it,
        else when `reread` (SIGHUP, `/admin/reload`).

        A file that cannot be read or compiled changes nothing: the workers keep their last
        good policy, and so does this check.
        """
        if not (self._follow_file or reread):
            return
        try:
            st = os.stat(self.policy)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._policy_stamp:
                return
            self._policy_stamp = stamp
            tokens = self._read_tokens(Path(self.policy).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, TailguardError):
            return
        self._tokens = tokens

    def _actor(self, request: web.Request) -> str | None:
        self._refresh_tokens()
        return authenticate(self._tokens, self._credentials, request.headers, request.remote)

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        return await continue_if(request, self._actor(request))

    async def _admin(self, request: web.Request) -> web.Response:
        assert self._http is not None
        if self._actor(request) is None:
            return unauthorized()  # on the headers alone: the body is never read
        body = await request.read()
        headers = {SUPERVISOR_HEADER: self._secret, PEER_HEADER: request.remote or ""}
        for name in (*CREDENTIAL_HEADERS, "content-type"):
            value = request.headers.get(name)
            if value is not None and value.isascii():
                headers[name] = value

        async def one(w: Worker) -> tuple[int, bytes, str]:
            assert self._http is not None
            try:
                async with self._http.request(
                    request.method,
                    w.admin_url + request.path_qs,
                    data=io.BytesIO(body) if body else None,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as r:
                    return r.status, await r.read(), r.content_type
            except (aiohttp.ClientError, TimeoutError) as e:
                msg = f'{{"error": {{"code": "worker_unavailable", "message": "worker {w.index}: {e}"}}}}'
                return 503, msg.encode(), "application/json"

        answers = await asyncio.gather(*(one(w) for w in self.workers))
        status, payload, ctype = next((a for a in answers if a[0] >= 400), answers[0])
        if status == 200 and request.method in ("POST", "PUT") and request.path == "/admin/policy":
            self._applied(body, payload)
        elif status == 200 and request.path == "/admin/reload":
            self._refresh_tokens(reread=True)
        return web.Response(status=status, body=payload, content_type=ctype)

    def _applied(self, body: bytes, answer: bytes) -> None:
        """Every worker now runs this policy text (maybe not written to the file): check
        admin tokens against it from now on."""
        try:
            if not json.loads(answer).get("applied"):
                return
            self._tokens = self._read_tokens(body.decode("utf-8"))
        except (ValueError, AttributeError, OSError, TailguardError):
            return

    # --- lifecycle -------------------------------------------------------------------------

    def _on_hup(self) -> None:
        self.signal_all(signal.SIGHUP)
        self._refresh_tokens(reread=True)

    async def run(self) -> int:
        """Serve the admin face and supervise until SIGTERM/SIGINT; the exit status.

        1 when the admin listener cannot start (its TLS files, its address) or a worker did
        not stop cleanly.
        """
        server_tls: ssl.SSLContext | None = None
        client_tls: ssl.SSLContext | None = None
        try:
            if self.admin_tls is not None:
                base = Path(self.policy).parent
                server_tls, client_tls = admin_tls_contexts(self.admin_tls, base)
        except OSError as e:
            print(f"cannot listen: admin TLS: {e}", file=sys.stderr)
            return 1
        app = web.Application(client_max_size=MAX_POLICY_BYTES)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/admin/{tail:.*}", self._admin, expect_handler=self._expect)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.admin[0], self.admin[1], ssl_context=server_tls).start()
        except OSError as e:
            print(f"cannot listen: {e}", file=sys.stderr)
            await runner.cleanup()
            return 1
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_tls if client_tls is not None else True)
        )
        for w in self.workers:
            await self._spawn(w)
        watchers = [asyncio.ensure_future(self._watch(w)) for w in self.workers]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        print(
            f"tailguard supervising {len(self.workers)} workers on "
            f"http://{self.listen[0]}:{self.listen[1]} "
            f"(admin {self.workers[0].scheme}://{self.admin[0]}:{self.admin[1]})",
            flush=True,
        )
        await stop.wait()
        self._stopping = True
        self.signal_all(signal.SIGTERM)
        codes = []
        for w in self.workers:
            assert w.proc is not None
            codes.append(await w.proc.wait())
        for t in watchers:
            t.cancel()
        await runner.cleanup()
        await self._http.close()
        return 0 if all(c == 0 for c in codes) else 1


__all__ = ["MergedMetrics", "Supervisor", "TokenReader", "admin_tls_contexts"]
