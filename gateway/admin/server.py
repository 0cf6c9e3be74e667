"""The admin API: metrics, liveness, readiness — on its own port, away from client traffic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from gateway.app import Gateway


def build_admin_app(gateway: Gateway) -> web.Application:
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(gateway.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready = gateway.is_ready()
        return web.json_response(
            {"ready": ready, "policy": gateway.snapshot.sha256[:12]}, status=200 if ready else 503
        )

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
