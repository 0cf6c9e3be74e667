"""Who is calling, and may they use this route: authentication before routing, authorization after.

Authentication runs before the route is matched so that a caller without valid
credentials learns nothing about routes or request validation (always 401); the allow
list needs the route, so authorization runs right after it. Both refuse before anything
reaches a backend or counts against one.
"""

from __future__ import annotations

from gateway.auth import Authenticator
from gateway.clock import Clock
from gateway.errors import Forbidden, Unauthorized
from gateway.proxy.exchange import Exchange
from gateway.proxy.pipeline import Answer, Handler
from gateway.telemetry.catalog import Metrics


class AuthenticateStage:
    """Turn credentials into `ex.identity` when the policy has an `auth:` section."""

    def __init__(self, metrics: Metrics, clock: Clock) -> None:
        self._m = metrics
        self._clock = clock

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        auth = ex.snapshot.auth
        if auth is None:
            return await nxt(ex)
        try:
            ex.identity = auth.authenticate(ex.request.headers, self._clock.wall())
        except Unauthorized:
            self._m.child(self._m.auth_failures, "", "unauthorized").inc()
            raise
        return await nxt(ex)


class AuthorizeStage:
    """Refuse callers the route does not admit (403): composed on every route of a policy
    with `auth:`, so a route without `allow_tenants` still refuses anonymous callers."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        route = ex.route
        assert route is not None
        try:
            if ex.identity is None:
                raise Forbidden(f"route '{route.name}' requires credentials")
            Authenticator.authorize(ex.identity, route.allow_tenants, route.name)
        except Forbidden:
            self._m.child(self._m.auth_failures, route.name, "forbidden").inc()
            raise
        return await nxt(ex)


__all__ = ["AuthenticateStage", "AuthorizeStage"]
