"""`tailguard run --workers N`: N gateway processes on one port, one admin API in front.

Python serves one event loop per process, so more cores mean more processes. Each worker
is an ordinary `tailguard run` that binds the data address with SO_REUSEPORT (the kernel
spreads new connections over them) and its own admin API on a private loopback port. This
supervisor holds the public admin address:

- `/metrics` merges every worker's metrics, each sample labelled `worker="<k>"`, so one
  scrape sees them all (sum over `worker` in queries);
- `/readyz` is ready when every worker is; `/healthz` answers while the supervisor runs;
- `/admin/...` is sent to every worker (a drain, reload or canary action must reach all of
  them) and answered with the first worker's reply, or the first refusal if any refused.

It forwards SIGHUP (reload) and SIGTERM/SIGINT (graceful stop) to the workers, restarts a
worker that dies unexpectedly (with a growing pause, so a crash loop cannot spin), and exits
0 when every worker stopped cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("tailguard.workers")

RESTART_PAUSE = (0.5, 10.0)  # first pause after a crash, and the longest
SCRAPE_TIMEOUT = 5.0


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Worker:
    index: int
    admin_port: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    stopping: bool = field(default=False)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


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
    def __init__(
        self,
        policy: str,
        workers: int,
        listen: tuple[str, int],
        admin: tuple[str, int],
        extra_args: list[str],
    ) -> None:
        self.policy = policy
        self.listen = listen
        self.admin = admin
        self.extra_args = extra_args
        self.workers = [Worker(k, _free_loopback_port()) for k in range(workers)]
        self._stopping = False
        self._http: aiohttp.ClientSession | None = None

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
        env = {**os.environ, "TAILGUARD_WORKER": str(w.index)}
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

    async def _admin(self, request: web.Request) -> web.Response:
        assert self._http is not None
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items()
            if k.lower() in ("authorization", "x-admin-token", "content-type")
        }  # fmt: skip

        async def one(w: Worker) -> tuple[int, bytes, str]:
            assert self._http is not None
            try:
                async with self._http.request(
                    request.method,
                    w.admin_url + request.path_qs,
                    data=body or None,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as r:
                    return r.status, await r.read(), r.content_type
            except (aiohttp.ClientError, TimeoutError) as e:
                msg = f'{{"error": {{"code": "worker_unavailable", "message": "worker {w.index}: {e}"}}}}'
                return 503, msg.encode(), "application/json"

        answers = await asyncio.gather(*(one(w) for w in self.workers))
        status, payload, ctype = next((a for a in answers if a[0] >= 400), answers[0])
        return web.Response(status=status, body=payload, content_type=ctype)

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        self._http = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/admin/{tail:.*}", self._admin)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.admin[0], self.admin[1]).start()
        for w in self.workers:
            await self._spawn(w)
        watchers = [asyncio.ensure_future(self._watch(w)) for w in self.workers]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.signal_all(signal.SIGHUP))
        print(
            f"tailguard supervising {len(self.workers)} workers on "
            f"http://{self.listen[0]}:{self.listen[1]} (admin http://{self.admin[0]}:{self.admin[1]})",
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


__all__ = ["MergedMetrics", "Supervisor"]
