"""The admin API, on its own port, away from client traffic.

Open to anyone who can reach the port: `/metrics`, `/healthz`, `/readyz` (what scrapers and
orchestrators need). Behind the admin credentials: everything under `/admin/` — the state
of routes, backends and endpoints, drain/undrain, canary actions, and the policy itself
(get, validate, dry-run, apply). Admin credentials are separate from the data plane's: a
client API key never opens the admin API. Admin tokens are configured as hashes in the
policy (`admin.tokens`) or as the `TAILGUARD_ADMIN_TOKEN` environment variable; with
neither, the admin API answers only callers on the loopback interface.

Every mutating action is written to the audit log before it is acknowledged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors import ClientError, RouteNotFound, TailguardError
from gateway.resilience.breaker import BreakerState

if TYPE_CHECKING:
    from gateway.app import Gateway

ADMIN_TOKEN_ENV = "TAILGUARD_ADMIN_TOKEN"
MAX_POLICY_BYTES = 4 << 20

AdminHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def admin_actor(gateway: Gateway, request: web.Request) -> str | None:
    """The admin token's id when the request carries a valid one; None otherwise.

    `"loopback"` when no admin credentials are configured and the caller is local.
    """
    presented = request.headers.get("x-admin-token")
    auth = request.headers.get("authorization", "")
    if presented is None and auth[:7].lower() == "bearer ":
        presented = auth[7:].strip()
    tokens = gateway.snapshot.admin_tokens
    env_token = os.environ.get(ADMIN_TOKEN_ENV)
    if presented:
        digest = "sha256:" + hashlib.sha256(presented.encode()).hexdigest()
        token_id = tokens.get(digest)
        if token_id is not None:
            return f"admin:{token_id}"
        if env_token and hmac.compare_digest(presented.encode(), env_token.encode()):
            return "admin:env"
        return None
    if not tokens and not env_token and _is_loopback(request.remote):
        return "loopback"
    return None


def status_of(gateway: Gateway) -> dict[str, Any]:
    """What an operator asks at 3 a.m.: what serves, what is sick, and why."""
    snap = gateway.snapshot
    now = gateway.clock.now()
    canaries = gateway.canary.state()
    routes = []
    for r in snap.routes:
        total = sum(e.weight for e in r.split.entries) or 1.0
        routes.append(
            {
                "name": r.name,
                "timeout_s": r.timeout,
                "split": [
                    {"backend": e.backend, "weight": round(100.0 * e.weight / total, 2)}
                    for e in r.split.entries
                ],
                "canary": (
                    {"backend": r.canary.backend, **canaries.get(r.name, {})}
                    if r.canary is not None
                    else None
                ),
                "switched_to": r.switched_to,
                "fallback": [s.kind.value for s in r.fallback.steps] if r.fallback else [],
                "rate_limit": (
                    {"rate_per_s": r.rate_limit.rate, "burst": r.rate_limit.burst}
                    if r.rate_limit
                    else None
                ),
            }
        )
    backends = []
    for b in snap.backends.values():
        available = b.availability(now)
        ejected = b.outlier.ejected(now) if b.outlier is not None else frozenset()
        endpoints = []
        for s, usable in zip(b.states, available, strict=True):
            p = s.latency.percentiles((0.5, 0.99), now, min_samples=5)
            breaker = s.breaker.state(now) if s.breaker is not None else None
            endpoints.append(
                {
                    "url": s.spec.url,
                    "region": s.spec.region,
                    "usable": usable,
                    "health": (
                        "unchecked"
                        if s.health is None
                        else ("healthy" if s.health.healthy else "unhealthy")
                    ),
                    "breaker": breaker.name.lower() if breaker is not None else "none",
                    "ejected": s.spec.id in ejected,
                    "suspect": now < s.suspect_until,
                    "draining": s.spec.drain or s.admin_drain,
                    "in_flight": s.outstanding,
                    "p50_ms": round(p[0] * 1000, 2) if p else None,
                    "p99_ms": round(p[1] * 1000, 2) if p else None,
                }
            )
        backends.append({"name": b.name, "protocol": b.protocol, "endpoints": endpoints})
    return {
        "policy": {"source": snap.source, "sha256": snap.sha256},
        "ready": gateway.is_ready(),
        "region": snap.settings.region,
        "store": {"kind": gateway.store.kind, "available": gateway.store.available()},
        "routes": routes,
        "backends": backends,
        "canary_decisions": gateway.canary.decisions[-10:],
    }


def build_admin_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=MAX_POLICY_BYTES)

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

    def guarded(
        handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]],
    ) -> AdminHandler:
        async def call(request: web.Request) -> web.StreamResponse:
            actor = admin_actor(gateway, request)
            if actor is None:
                return _error(401, "unauthorized", "admin credentials required")
            try:
                return await handler(request, actor)
            except TailguardError as e:
                return _error(e.status, e.code, e.message)

        return call

    async def status(_: web.Request, actor: str) -> web.Response:
        return web.json_response(status_of(gateway))

    async def get_policy(_: web.Request, actor: str) -> web.Response:
        # `text` is what runs; `file_sha256` says whether the file on disk still matches it
        # (it does not after an apply with persist=false or an edit not yet reloaded).
        snap = gateway.snapshot
        try:
            on_disk: str | None = gateway.policy_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            on_disk = None
        file_sha = hashlib.sha256(on_disk.encode()).hexdigest() if on_disk is not None else None
        return web.json_response(
            {
                "source": snap.source,
                "sha256": snap.sha256,
                "text": gateway.policy_text,
                "file_sha256": file_sha,
            }
        )

    async def _policy_text(request: web.Request) -> str:
        raw = await request.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ClientError("policy must be UTF-8 YAML text") from None
        if not text.strip():
            raise ClientError("empty policy")
        return text

    async def put_policy(request: web.Request, actor: str) -> web.Response:
        text = await _policy_text(request)
        dry_run = request.query.get("dry_run", "false").lower() in ("1", "true", "yes")
        persist = request.query.get("persist", "true").lower() in ("1", "true", "yes")
        result = await gateway.reload(text, actor=actor, dry_run=dry_run, persist=persist)
        return web.json_response(result.to_json(), status=200 if not result.issues else 422)

    async def validate_policy(request: web.Request, actor: str) -> web.Response:
        text = await _policy_text(request)
        result = await gateway.reload(text, actor=actor, dry_run=True)
        return web.json_response(result.to_json(), status=200 if not result.issues else 422)

    async def reload(_: web.Request, actor: str) -> web.Response:
        result = await gateway.reload(actor=actor)
        return web.json_response(result.to_json(), status=200 if not result.issues else 422)

    async def drain(request: web.Request, actor: str) -> web.Response:
        body = await _json(request)
        drained = request.match_info["action"] == "drain"
        backend, url = body.get("backend"), body.get("endpoint")
        if not isinstance(backend, str) or not isinstance(url, str):
            raise ClientError('give {"backend": NAME, "endpoint": URL}')
        gateway.drain(backend, url, drained=drained, actor=actor)
        return web.json_response({"backend": backend, "endpoint": url, "draining": drained})

    async def canary(request: web.Request, actor: str) -> web.Response:
        route, action = request.match_info["route"], request.match_info["action"]
        return web.json_response(gateway.canary.act(route, action, actor))

    async def switch(request: web.Request, actor: str) -> web.Response:
        body = await _json(request)
        to = body.get("to")
        if "to" not in body or not (to is None or isinstance(to, str)):
            raise ClientError('give {"to": BACKEND} or {"to": null} (back to the split)')
        return web.json_response(gateway.switches.switch(request.match_info["route"], to, actor))

    async def reset_breaker(request: web.Request, actor: str) -> web.Response:
        body = await _json(request)
        backend, url = body.get("backend"), body.get("endpoint")
        b = gateway.snapshot.backends.get(str(backend))
        state = (
            next((s for s in b.states if s.spec.url == str(url).rstrip("/")), None) if b else None
        )
        if state is None or state.breaker is None:
            raise RouteNotFound(f"no breaker for endpoint {url!r} of backend {backend!r}")
        state.breaker.reset(gateway.clock.now())
        gateway.audit.record("breaker-reset", actor, backend=backend, endpoint=url)
        return web.json_response(
            {"backend": backend, "endpoint": url, "breaker": BreakerState.CLOSED.name.lower()}
        )

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/status", guarded(status))
    app.router.add_get("/admin/policy", guarded(get_policy))
    app.router.add_post("/admin/policy", guarded(put_policy))
    app.router.add_put("/admin/policy", guarded(put_policy))
    app.router.add_post("/admin/policy/validate", guarded(validate_policy))
    app.router.add_post("/admin/reload", guarded(reload))
    app.router.add_post("/admin/endpoints/{action:drain|undrain}", guarded(drain))
    app.router.add_post("/admin/breakers/reset", guarded(reset_breaker))
    app.router.add_post(
        "/admin/canary/{route}/{action:promote|pause|resume|rollback}", guarded(canary)
    )
    app.router.add_post("/admin/routes/{route}/switch", guarded(switch))
    return app


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.read() or b"{}")
    except ValueError as e:
        raise ClientError(f"body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ClientError("body must be a JSON object")
    return data
