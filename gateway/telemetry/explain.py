"""Decision traces on demand: what the gateway decided for one request, fetched afterwards.

A caller sends `x-tailguard-explain: 1`; when the policy allows it (a tenant listed in
`telemetry.explain.tenants`, or a caller presenting an admin token in
`x-tailguard-explain-token`) the request records its decisions (route and split, each
endpoint pick with its candidates and their breakers, each attempt and its outcome, retry
and hedge decisions with the budgets' balances, fallback steps) and its answer carries
`x-tailguard-explain: /admin/explain/<request-id>`. The trace is kept in a bounded LRU and
read from the admin API. A request without the header pays one header lookup; a caller not
allowed gets nothing (no header, nothing kept).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from gateway.telemetry.config import ExplainConfig

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange

EXPLAIN_HEADER = "x-tailguard-explain"
EXPLAIN_TOKEN_HEADER = "x-tailguard-explain-token"
DEFAULT_KEEP = 1000


class Explanations:
    """The decision traces kept, least recently stored dropped first."""

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self._kept: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.keep = keep

    def wanted(self, ex: Exchange) -> bool:
        """Whether this request asked for a decision trace and may have one."""
        value = ex.request.headers.get(EXPLAIN_HEADER)
        if value is None or value.strip() not in ("1", "true"):
            return False
        config = ex.snapshot.settings.telemetry.explain or ExplainConfig()
        self.keep = config.keep
        if ex.identity is not None and ex.identity.tenant in config.tenants:
            return True
        return _admin_token(ex)

    def store(self, ex: Exchange) -> None:
        """Keep an ended request's decisions (the exchange's end calls this once)."""
        trace = ex.trace
        if trace is None or trace.decisions is None:
            return
        rid = ex.request.request_id
        self._kept[rid] = {
            "request_id": rid,
            "trace_id": trace.trace_id,
            "method": ex.request.method,
            "path": ex.request.path,
            "tenant": ex.identity.tenant if ex.identity is not None else None,
            "route": ex.route.name if ex.route is not None else None,
            "backend": ex.backend.name if ex.backend is not None else None,
            "endpoint": ex.endpoint,
            "status": ex.status,
            "error": ex.error_code,
            "attempts": ex.attempts,
            "hedged": ex.hedged,
            "fallback": ex.fallback,
            "decisions": trace.decisions,
        }
        self._kept.move_to_end(rid)
        while len(self._kept) > self.keep:
            self._kept.popitem(last=False)

    def get(self, request_id: str) -> dict[str, Any] | None:
        return self._kept.get(request_id)


def _admin_token(ex: Exchange) -> bool:
    presented = ex.request.headers.get(EXPLAIN_TOKEN_HEADER)
    if not presented or not presented.isascii():
        return False
    digest = "sha256:" + hashlib.sha256(presented.strip().encode("ascii")).hexdigest()
    found = False
    for stored in ex.snapshot.admin_tokens:  # every hash compared: no early exit to time
        if hmac.compare_digest(digest, stored):
            found = True
    return found


__all__ = ["EXPLAIN_HEADER", "EXPLAIN_TOKEN_HEADER", "Explanations"]
