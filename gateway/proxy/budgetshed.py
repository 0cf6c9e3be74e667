"""Shedding low-priority requests while a route's SLO burns its error budget fast.

The controller (`gateway.control.slo`) decides when a route sheds and down to which
priority; this stage only asks it, with one dictionary lookup, on the routes whose SLOs
may shed (the app leaves it out of every other route's chain).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import BudgetShed
from gateway.policy.compile import PRIORITY_NAMES
from gateway.proxy.exchange import Exchange
from gateway.proxy.pipeline import Answer, Handler
from gateway.telemetry.catalog import Metrics

DEFAULT_PRIORITY_HEADER = "x-tailguard-priority"
SHED_HEADER = "x-tailguard-shed"
SHED_REASON = "error-budget"
_NORMAL = PRIORITY_NAMES["normal"]


class BudgetShedStage:
    """Answer 503 (with retry-after) to requests at or below the priority being shed."""

    def __init__(self, shed_level: Callable[[str], int | None], metrics: Metrics) -> None:
        self._level = shed_level
        self._m = metrics

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        route = ex.route
        assert route is not None
        level = self._level(route.name)
        if level is not None:
            value = ex.request.headers.get(route.priority_header or DEFAULT_PRIORITY_HEADER)
            priority = (
                PRIORITY_NAMES.get(value.strip().lower(), _NORMAL) if value is not None else _NORMAL
            )
            if priority <= level:
                self._m.shed.labels(route.name, "error_budget").inc()
                raise BudgetShed(
                    "shed to protect the route's error budget; retry later",
                    headers={"retry-after": "1", SHED_HEADER: SHED_REASON},
                )
        return await nxt(ex)


__all__ = ["SHED_HEADER", "SHED_REASON", "BudgetShedStage"]
