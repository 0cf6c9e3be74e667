"""Every metric name and label the gateway exports, in one place.

A `Metrics` object is made by the composition root (`gateway.app`) with its own
registry and passed to whoever records; nothing registers into a global
registry. Detection and enforcement are counted apart: an outlier *detected*
but not ejected because of `max_ejection_percent` shows in one counter, an
ejection actually *enforced* in another, so an operator can tell "the gateway
saw it" from "the gateway acted on it".
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info

from gateway.telemetry.hot import HotCounter, HotGauge, HotHistogram

# Latency buckets sized for model serving: sub-millisecond proxies up to multi-second generations.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10)


class Metrics:
    """The catalog. Label values must stay low-cardinality: names from the policy, never request data."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # Labelled children by (metric, labels): prometheus_client's own lookup takes a lock and
        # rebuilds the key on every call; the request path asks for the same few children.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

        # --- requests (the client's view) ---
        # Updated on every request: lock-free families with the same exposition (see hot.py).
        self.requests = HotCounter(
            "tailguard_requests_total",
            "Client requests answered, by route, backend that answered and status class.",
            ["route", "backend", "code_class"],
            r,
        )
        self.request_duration = HotHistogram(
            "tailguard_request_duration_seconds",
            "Time from request received to response headers sent (buffered: to body sent).",
            ["route"],
            LATENCY_BUCKETS,
            r,
        )
        self.in_flight = HotGauge(
            "tailguard_requests_in_flight", "Client requests being served.", r
        )
        self.errors = Counter(
            "tailguard_errors_total",
            "Requests the gateway answered with its own error, by code.",
            ["route", "code"],
            registry=r,
        )
        self.attempts_per_request = HotHistogram(
            "tailguard_attempts_per_request",
            "Upstream attempts made for one client request (retries and hedges included).",
            ["route"],
            ATTEMPT_BUCKETS,
            r,
        )

        # --- upstream attempts (the backend's view) ---
        self.attempts = HotCounter(
            "tailguard_upstream_attempts_total",
            "Attempts sent to endpoints, by classified outcome.",
            ["backend", "endpoint", "outcome"],
            r,
        )
        self.attempt_duration = HotHistogram(
            "tailguard_upstream_attempt_duration_seconds",
            "Duration of one upstream attempt, by backend.",
            ["backend"],
            LATENCY_BUCKETS,
            r,
        )

        # --- retries and hedging ---
        self.retries = Counter(
            "tailguard_retries_total",
            "Retry decisions by reason (retrying, or why not).",
            ["route", "reason"],
            registry=r,
        )
        self.budget_exhausted = Counter(
            "tailguard_budget_exhausted_total",
            "Extra attempts refused because the route's retry or hedge budget was empty.",
            ["route", "kind"],
            registry=r,
        )
        self.hedges_sent = Counter(
            "tailguard_hedges_sent_total", "Hedged attempts sent.", ["route"], registry=r
        )
        self.hedges_won = Counter(
            "tailguard_hedges_won_total",
            "Client requests answered by a hedged attempt rather than the first one.",
            ["route"],
            registry=r,
        )

        # --- breakers, outlier detection, health ---
        self.breaker_state = Gauge(
            "tailguard_breaker_state",
            "Circuit breaker state per endpoint: 0 closed, 1 half-open, 2 open.",
            ["backend", "endpoint"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "tailguard_breaker_transitions_total",
            "Circuit breaker state changes.",
            ["backend", "endpoint", "from_state", "to_state"],
            registry=r,
        )
        self.breaker_rejections = Counter(
            "tailguard_breaker_rejections_total",
            "Attempts not sent because the endpoint's breaker refused them.",
            ["backend", "endpoint"],
            registry=r,
        )
        self.outliers_detected = Counter(
            "tailguard_outliers_detected_total",
            "Endpoints found to be outliers (whether or not ejection was allowed).",
            ["backend", "reason"],
            registry=r,
        )
        self.ejections = Counter(
            "tailguard_ejections_total",
            "Ejections enforced, by reason.",
            ["backend", "reason"],
            registry=r,
        )
        self.ejected = Gauge(
            "tailguard_endpoints_ejected",
            "Endpoints currently ejected, per backend.",
            ["backend"],
            registry=r,
        )
        self.endpoint_healthy = Gauge(
            "tailguard_endpoint_healthy",
            "Active health check verdict per endpoint (1 healthy, 0 unhealthy).",
            ["backend", "endpoint"],
            registry=r,
        )
        self.endpoint_info = Gauge(
            "tailguard_endpoint_info",
            "Endpoints of the serving policy and their region (always 1): join on backend and "
            "endpoint to group any endpoint series by region.",
            ["backend", "endpoint", "region"],
            registry=r,
        )
        self.health_checks = Counter(
            "tailguard_health_checks_total",
            "Active health checks by result.",
            ["backend", "endpoint", "result"],
            registry=r,
        )
        self.panic = Counter(
            "tailguard_panic_routing_total",
            "Endpoint picks made in panic mode (too few healthy endpoints: route to all).",
            ["backend"],
            registry=r,
        )

        # --- admission ---
        self.shed = Counter(
            "tailguard_shed_total",
            "Requests refused by admission control, by reason.",
            ["route", "reason"],
            registry=r,
        )
        self.admission_limit = Gauge(
            "tailguard_admission_limit",
            "Current concurrency limit per route.",
            ["route"],
            registry=r,
        )

        # --- state store (shared by replicas when it is Redis) ---
        self.store_up = Gauge(
            "tailguard_state_store_up",
            "1 while the state store answers; 0 while the gateway serves on local state.",
            ["store"],
            registry=r,
        )
        self.store_errors = Counter(
            "tailguard_state_store_errors_total",
            "State store calls that failed or timed out (the caller used local state).",
            ["store", "op"],
            registry=r,
        )
        self.store_skipped = Counter(
            "tailguard_state_store_skipped_total",
            "State store calls not made because the store was known to be down.",
            ["store", "op"],
            registry=r,
        )
        self.peer_events = Counter(
            "tailguard_peer_events_total",
            "Endpoint events received from peer replicas (detected) and acted on (enforced).",
            ["backend", "event", "action"],
            registry=r,
        )

        # --- cache and fallbacks ---
        self.cache_lookups = Counter(
            "tailguard_cache_lookups_total",
            "Response cache lookups by result (hit, stale, miss, bypass).",
            ["route", "result"],
            registry=r,
        )
        self.cache_stores = Counter(
            "tailguard_cache_stores_total",
            "Answers stored in the response cache, by result (stored, too_large, error).",
            ["route", "result"],
            registry=r,
        )
        self.fallbacks = Counter(
            "tailguard_fallbacks_total",
            "Answers served by a fallback, by route and kind (cache, backend, rules).",
            ["route", "kind"],
            registry=r,
        )
        self.fallback_failures = Counter(
            "tailguard_fallback_failures_total",
            "Fallback steps tried that could not answer, by route and kind.",
            ["route", "kind"],
            registry=r,
        )

        # --- rate limits and auth ---
        self.rate_limited = Counter(
            "tailguard_rate_limited_total",
            "Requests refused by a rate limit (enforced).",
            ["route"],
            registry=r,
        )
        self.rate_limit_fallbacks = Counter(
            "tailguard_rate_limit_store_fallbacks_total",
            "Rate-limit decisions made without the shared store, by what the policy said to do.",
            ["route", "action"],
            registry=r,
        )
        self.auth_failures = Counter(
            "tailguard_auth_failures_total",
            "Requests refused by authentication (401) or authorization (403).",
            ["route", "code"],
            registry=r,
        )

        # --- canary analysis ---
        self.canary_weight = Gauge(
            "tailguard_canary_weight_percent",
            "Current canary weight in percent, by route and canary backend.",
            ["route", "backend"],
            registry=r,
        )
        self.canary_verdicts = Counter(
            "tailguard_canary_verdicts_total",
            "Canary analysis verdicts and operator actions, by route and action.",
            ["route", "action"],
            registry=r,
        )

        # --- blue/green ---
        self.route_switched = Gauge(
            "tailguard_route_switched",
            "1 while an operator has switched all of a route's traffic to this backend.",
            ["route", "backend"],
            registry=r,
        )

        # --- policy ---
        self.policy_info = Info(
            "tailguard_policy", "The policy currently serving: source and content hash.", registry=r
        )
        self.reloads = Counter(
            "tailguard_policy_reloads_total", "Policy reloads by result.", ["result"], registry=r
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised; label values must come from the policy."""
        key = (metric, labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c


def code_class(status: int) -> str:
    """Status class label ("2xx" …) so the requests counter keeps five values, not hundreds."""
    return _CLASSES[status // 100] if 0 < status < 600 else "other"


_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
