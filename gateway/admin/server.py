"""The admin API, on its own port, away from client traffic.

Open to anyone who can reach the port: `/metrics`, `/healthz`, `/readyz` (what scrapers and
orchestrators need). Behind the admin credentials: everything under `/admin/` — the state
of routes, backends and endpoints, drain/undrain, canary actions, SLOs and their error
budgets (and an override of the budget policy), and the policy itself (get, validate,
dry-run, apply). Admin credentials are separate from the data plane's: a
client API key never opens the admin API. Admin tokens are configured as hashes in the
policy (`admin.tokens`) or as the `TAILGUARD_ADMIN_TOKEN` environment variable; with
neither, the admin API answers only callers on the loopback interface, and `tailguard run`
refuses to start with the admin port anywhere else (`exposure_problem`).

Credentials are judged on the request headers alone, before any body is read: a refused
request gets its 401 (and the connection is closed) whatever body it announced, and a client
that sends `Expect: 100-continue` is refused before it sends the body at all.

Under `tailguard run --workers N` the supervisor holds the public admin port and applies the
same check (`authenticate`) to each caller before forwarding to every worker. It forwards
with a per-run secret (`TAILGUARD_SUPERVISOR_SECRET`, given to the workers in their
environment) and the original caller's address; a worker then judges the caller's own
credentials against its current policy, applying the loopback rule to that original address.
A worker never trusts its direct peer's address, since every forwarded request comes from
the supervisor on loopback.

Every mutating action is written to the audit log before it is acknowledged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import hdrs, web
from prometheus_client.exposition import choose_encoder

from gateway.errors import ClientError, RouteNotFound, TailguardError
from gateway.policy.units import parse_duration
from gateway.resilience.breaker import BreakerState

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.control.canary import CanaryController
    from gateway.control.reloader import ReloadResult
    from gateway.control.slo import SloController
    from gateway.control.switch import RouteSwitches
    from gateway.policy.compile import Snapshot
    from gateway.quality.monitor import QualityMonitor
    from gateway.state.store import StateStore
    from gateway.telemetry.audit import AuditLog
    from gateway.telemetry.catalog import Metrics


class AdminTarget(Protocol):
    """What the admin API may see and do of a running gateway, and nothing more."""

    clock: Clock
    metrics: Metrics
    canary: CanaryController
    audit: AuditLog
    store: StateStore
    slo: SloController
    switches: RouteSwitches
    quality: QualityMonitor
    policy_path: Path
    policy_text: str

    @property
    def snapshot(self) -> Snapshot: ...

    async def reload(
        self,
        text: str | None = None,
        *,
        actor: str,
        dry_run: bool = False,
        persist: bool = False,
    ) -> ReloadResult: ...

    def drain(self, backend: str, url: str, *, drained: bool, actor: str) -> None: ...

    def is_ready(self) -> bool: ...


ADMIN_TOKEN_ENV = "TAILGUARD_ADMIN_TOKEN"
SUPERVISOR_SECRET_ENV = "TAILGUARD_SUPERVISOR_SECRET"
SUPERVISOR_HEADER = "x-tailguard-supervisor"  # the per-run secret, on forwarded requests only
PEER_HEADER = "x-tailguard-admin-peer"  # the address the supervisor's caller connected from
CREDENTIAL_HEADERS = ("authorization", "x-admin-token")
MAX_POLICY_BYTES = 4 << 20

AdminHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def unauthorized() -> web.Response:
    """The answer to a caller without valid admin credentials.

    The connection is closed after it: the caller may have announced a body that is never
    read, and a keep-alive connection would have to swallow it first.
    """
    resp = _error(401, "unauthorized", "admin credentials required")
    resp.headers["WWW-Authenticate"] = 'Bearer realm="tailguard-admin"'
    resp.force_close()
    return resp


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _ascii(value: str) -> bytes | None:
    """A header value's bytes when it is printable ASCII; None otherwise.

    aiohttp hands over bytes that are not UTF-8 as lone surrogates, which `str.encode`
    refuses; no credential is anything but ASCII, so such a value is simply wrong.
    """
    if not value.isascii() or not value.isprintable():
        return None
    return value.encode("ascii")


@dataclass(frozen=True)
class AdminCredentials:
    """What opens the admin API besides the policy's token hashes; read once at start.

    env_token: the `TAILGUARD_ADMIN_TOKEN` value (None when unset or empty).
    supervisor_secret: set in a worker of `run --workers N` only. Such a worker grants
        nothing for a caller's address unless the supervisor vouches for it with this secret.
    """

    env_token: bytes | None = None
    supervisor_secret: bytes | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AdminCredentials:
        def value(name: str) -> bytes | None:
            raw = environ.get(name)
            return raw.encode("utf-8", "surrogateescape") if raw else None

        return cls(value(ADMIN_TOKEN_ENV), value(SUPERVISOR_SECRET_ENV))

    def token_configured(self, tokens: Mapping[str, str]) -> bool:
        return bool(tokens) or self.env_token is not None


def authenticate(
    tokens: Mapping[str, str],
    credentials: AdminCredentials,
    headers: Mapping[str, str],
    peer: str | None,
) -> str | None:
    """The caller's actor name (for the audit log) when its headers open the admin API.

    `tokens` maps token hashes (`sha256:<hex>`) to token ids, as compiled from the policy;
    `peer` is the address the caller connected from. Returns `admin:<id>`, `admin:env`, or
    `loopback` (no token configured anywhere and a local caller); None means answer
    `unauthorized()` without reading the body. Headers only, so it is safe before the body.
    """
    remote = None if credentials.supervisor_secret is not None else peer
    vouched = headers.get(SUPERVISOR_HEADER)
    if vouched is not None:
        secret = _ascii(vouched)
        if (
            credentials.supervisor_secret is None
            or secret is None
            or not hmac.compare_digest(secret, credentials.supervisor_secret)
        ):
            return None
        remote = headers.get(PEER_HEADER)
    presented = headers.get("x-admin-token")
    if presented is None:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            presented = auth[7:].strip()
    if presented:
        raw = _ascii(presented)
        if raw is None:
            return None
        digest = ("sha256:" + hashlib.sha256(raw).hexdigest()).encode("ascii")
        token_id = None
        for stored, ident in tokens.items():  # every hash compared: no early exit to time
            if hmac.compare_digest(digest, stored.encode("ascii", "replace")):
                token_id = ident
        if token_id is not None:
            return f"admin:{token_id}"
        if credentials.env_token is not None and hmac.compare_digest(raw, credentials.env_token):
            return "admin:env"
        return None
    if not credentials.token_configured(tokens) and _is_loopback(remote):
        return "loopback"
    return None


async def continue_if(request: web.Request, actor: str | None) -> web.StreamResponse | None:
    """A route's `Expect: 100-continue` answer: `100 Continue` for an authenticated caller
    only, so that a refused one is told 401 before it sends its body."""
    if actor is None:
        return unauthorized()
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == (1, 1):
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
    return None


def exposure_problem(
    admin_listen: tuple[str, int],
    tokens: Mapping[str, str],
    credentials: AdminCredentials,
    *,
    source: str,
) -> str | None:
    """Why the admin API must not start where it would listen, or None when it may.

    Without any admin token the API answers loopback callers only; on any other interface
    that would leave it open to whatever relays traffic from loopback (a local proxy, a
    tunnel), so `run` refuses instead (exit 2). `source` names where the address came from.
    """
    if credentials.token_configured(tokens):
        return None
    host, port = admin_listen
    if _host_is_loopback(host):
        return None
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (
        f"the admin API would listen on {shown} ({source}), off the loopback interface, and no "
        f"admin token is configured: add admin.tokens to the policy (store the hash printed by "
        f"`tailguard hash-key`) or set {ADMIN_TOKEN_ENV}, or listen on 127.0.0.1"
    )


def _host_is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback one (a name is resolved)."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return True  # the bind will fail and say why
    return all(_is_loopback(str(info[4][0])) for info in infos)


def status_of(gateway: AdminTarget) -> dict[str, Any]:
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
                    "grpc": s.spec.grpc,
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
        "recent_changes": list(getattr(gateway, "changes", ())),
        "policy": {"source": snap.source, "sha256": snap.sha256},
        "ready": gateway.is_ready(),
        "region": snap.settings.region,
        "store": {"kind": gateway.store.kind, "available": gateway.store.available()},
        "routes": routes,
        "backends": backends,
        "canary_decisions": gateway.canary.decisions[-10:],
        "quality": quality_summary(gateway.quality.state()),
        "slo": gateway.slo.state(),
    }


def quality_summary(state: dict[str, Any]) -> dict[str, Any]:
    """The quality state in brief: per route and backend, drift at a glance; shadow agreement."""
    routes: dict[str, Any] = {}
    for name, entry in state.get("routes", {}).items():
        out: dict[str, Any] = {}
        q = entry.get("quality")
        if q is not None:
            out["backends"] = {
                b: {
                    "reference": v["reference"] is not None,
                    "capturing": v["capturing"] is not None,
                    "window_exchanges": v["window_exchanges"],
                    "drifted": v["drifted"],
                    "max": _max_scores(v["scores"]),
                }
                for b, v in q["backends"].items()
            }
        sh = entry.get("shadow")
        if sh is not None:
            out["shadow"] = {
                k: sh.get(k)
                for k in ("backend", "pairs", "agreement", "mean_score_diff",
                          "mean_abs_token_diff", "primary_p99_ms", "shadow_p99_ms", "results")
            }  # fmt: skip
        routes[name] = out
    return {"queue": state.get("queue"), "routes": routes}


def _max_scores(scores: list[dict[str, Any]]) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for s in scores:
        v = s.get("value")
        if v is not None and (s["stat"] not in best or v > best[s["stat"]]["value"]):
            best[s["stat"]] = {"value": v, "feature": s["feature"], "threshold": s["threshold"]}
    return best


UI_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}
# The status page's static files, read once from the package (no build step, nothing fetched)
UI_FILES = {
    p.name: p.read_bytes()
    for p in (Path(__file__).parent / "ui").iterdir()
    if p.suffix.lstrip(".") in UI_TYPES
}


def build_admin_app(gateway: AdminTarget) -> web.Application:
    """The admin API of one gateway process; credentials from its policy and environment."""
    app = web.Application(client_max_size=MAX_POLICY_BYTES)
    credentials = AdminCredentials.from_environ(os.environ)

    def actor_of(request: web.Request) -> str | None:
        return authenticate(
            gateway.snapshot.admin_tokens, credentials, request.headers, request.remote
        )

    async def expect(request: web.Request) -> web.StreamResponse | None:
        return await continue_if(request, actor_of(request))

    async def metrics(request: web.Request) -> web.Response:
        # OpenMetrics (with the latency exemplars) for a scraper that asks for it
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encode(gateway.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

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
            actor = actor_of(request)  # before the handler reads any body
            if actor is None:
                return unauthorized()
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

    async def explain(request: web.Request, actor: str) -> web.Response:
        rid = request.match_info["rid"]
        kept = getattr(gateway, "explanations", None)
        found = kept.get(rid) if kept is not None else None
        if found is None:
            raise RouteNotFound(f"no decision trace kept for request {rid!r}")
        return web.json_response(found)

    async def slo(_: web.Request, actor: str) -> web.Response:
        return web.json_response(gateway.slo.state())

    async def slo_override(request: web.Request, actor: str) -> web.Response:
        route = request.match_info["route"]
        if request.method == "DELETE":
            return web.json_response(gateway.slo.override(route, None, actor))
        body = await _json(request)
        seconds = body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ClientError('give {"seconds": N}: how long enforcement stays suspended')
        return web.json_response(gateway.slo.override(route, float(seconds), actor))

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

    async def quality_state(_: web.Request, actor: str) -> web.Response:
        return web.json_response(gateway.quality.state())

    async def quality_capture(request: web.Request, actor: str) -> web.Response:
        body = await _json(request)
        backend = body.get("backend")
        duration = body.get("for")
        if backend is not None and not isinstance(backend, str):
            raise ClientError('"backend" must be a backend name')
        if isinstance(duration, str):
            try:
                duration = parse_duration(duration)
            except ValueError as e:
                raise ClientError(f'"for": {e}') from None
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int | float)
        ):
            raise ClientError('"for" must be a duration like 10m or a number of seconds')
        route = request.match_info["route"]
        result = gateway.quality.capture(
            route, backend, None if duration is None else float(duration), actor
        )
        return web.json_response(result)

    async def quality_reference(request: web.Request, actor: str) -> web.StreamResponse:
        route = request.match_info["route"]
        backend = request.query.get("backend")
        if request.method == "DELETE":
            return web.json_response(gateway.quality.clear(route, backend, actor))
        if not backend:
            raise ClientError("give ?backend=NAME")
        if request.method == "GET":
            body = gateway.quality.export(route, backend)
            return web.Response(body=body, content_type="application/json")
        result = gateway.quality.load(route, backend, await request.read(), actor)
        return web.json_response(result)

    async def ui(request: web.Request) -> web.StreamResponse:
        # the page's shell holds no data: everything it shows comes from the admin API,
        # asked with the same credentials (loopback, or an admin token the page asks for)
        name = request.match_info.get("name") or "index.html"
        body = UI_FILES.get(name)
        if body is None:
            return _error(404, "not_found", f"no such file: {name}")
        return web.Response(
            body=body,
            headers={
                "Content-Type": UI_TYPES[name.rsplit(".", 1)[-1]],
                "Cache-Control": "no-cache",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app.router.add_get("/ui", ui)
    app.router.add_get("/ui/{name}", ui)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/status", guarded(status))
    app.router.add_get("/admin/policy", guarded(get_policy))
    for method, path, handler in (
        ("POST", "/admin/policy", put_policy),
        ("PUT", "/admin/policy", put_policy),
        ("POST", "/admin/policy/validate", validate_policy),
        ("POST", "/admin/reload", reload),
        ("POST", "/admin/endpoints/{action:drain|undrain}", drain),
        ("POST", "/admin/breakers/reset", reset_breaker),
        ("POST", "/admin/canary/{route}/{action:promote|pause|resume|rollback}", canary),
        ("GET", "/admin/slo", slo),
        ("GET", "/admin/explain/{rid}", explain),
        ("POST", "/admin/slo/{route}/override", slo_override),
        ("DELETE", "/admin/slo/{route}/override", slo_override),
        ("GET", "/admin/quality", quality_state),
        ("POST", "/admin/quality/{route}/capture", quality_capture),
        ("GET", "/admin/quality/{route}/reference", quality_reference),
        ("PUT", "/admin/quality/{route}/reference", quality_reference),
        ("DELETE", "/admin/quality/{route}/reference", quality_reference),
    ):
        app.router.add_route(method, path, guarded(handler), expect_handler=expect)
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
