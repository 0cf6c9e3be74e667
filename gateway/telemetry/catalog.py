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

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from gateway.telemetry.config import OTHER_LABEL
from gateway.telemetry.hot import HotCounter, HotGauge, HotHistogram

# Latency buckets sized for model serving: sub-millisecond proxies up to multi-second generations.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10)
DIFF_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
TOKEN_DIFF_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# Scheduling delay of the event loop and GC pauses: tens of microseconds up to a stalled second.
LAG_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# Gaps between streamed chunks (tokens): a few milliseconds to seconds.
TOKEN_GAP_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# Request bodies: a small JSON prompt up to the largest accepted tensor payload.
SIZE_BUCKETS = tuple(float(1 << k) for k in range(6, 27, 2))  # 64 B .. 64 MiB
# Prompt sizes in tokens: a one-line question up to a long-context window.
TOKEN_BUCKETS = tuple(float(1 << k) for k in range(4, 18))  # 16 .. 128 Ki tokens


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
            "Client requests answered, by route, backend that answered, status class (a gRPC "
            "status as its HTTP equivalent) and the client's protocol (http, grpc).",
            ["route", "backend", "code_class", "protocol"],
            r,
        )
        self.request_duration = HotHistogram(
            "tailguard_request_duration_seconds",
            "Time from request received to its answer's last byte sent, by the client's "
            "protocol (http, grpc).",
            ["route", "protocol"],
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

        self.time_to_first_byte = HotHistogram(
            "tailguard_time_to_first_byte_seconds",
            "Time from request received to the answer's head written to the client.",
            ["route"],
            LATENCY_BUCKETS,
            r,
        )
        self.time_to_first_token = HotHistogram(
            "tailguard_stream_time_to_first_token_seconds",
            "Streamed answers: time from request received to the first body chunk written.",
            ["route"],
            LATENCY_BUCKETS,
            r,
        )
        self.inter_token = HotHistogram(
            "tailguard_stream_inter_token_seconds",
            "Streamed answers: time between consecutive body chunks (tokens or events).",
            ["route"],
            TOKEN_GAP_BUCKETS,
            r,
        )
        self.tenant_requests = HotCounter(
            "tailguard_tenant_requests_total",
            "Client requests by route and authenticated tenant (folded into 'other' past the "
            "policy's telemetry.max_label_values).",
            ["route", "tenant"],
            r,
        )

        # --- data: what clients send ---
        self.request_body_size = HotHistogram(
            "tailguard_request_body_bytes",
            "Size of request bodies as received (content codings untouched), by route.",
            ["route"],
            SIZE_BUCKETS,
            r,
        )
        self.invalid_requests = Counter(
            "tailguard_request_validation_failures_total",
            "Requests refused at the edge as the client's fault (4xx), by route and reason.",
            ["route", "reason"],
            registry=r,
        )
        self.label_folds = Counter(
            "tailguard_metric_label_folds_total",
            "Label values folded into 'other' because a label reached its limit, by label.",
            ["label"],
            registry=r,
        )
        # `model` comes from request data (the path, the body's "model"): bounded by LabelGuard
        self.tensors = HotCounter(
            "tailguard_tensors_total",
            "KServe v2 tensors by route, model, side (input: the request's; output: the "
            "answer's), datatype and shape (dimensions joined by 'x'; 'other' past the limit).",
            ["route", "model", "side", "datatype", "shape"],
            r,
        )
        self.prompt_tokens = HotHistogram(
            "tailguard_prompt_tokens",
            "OpenAI routes: prompt size in tokens, as the backend's usage counted it, by model.",
            ["route", "model"],
            TOKEN_BUCKETS,
            r,
        )

        # --- model: what backends answer ---
        self.model_tokens = HotCounter(
            "tailguard_model_tokens_total",
            "OpenAI routes: tokens the backends reported in their usage, by route, requested "
            "model and kind (input, output).",
            ["route", "model", "kind"],
            r,
        )
        self.finish_reasons = HotCounter(
            "tailguard_model_finish_reasons_total",
            "OpenAI routes: answer choices by finish reason (stop, length, tool_calls, "
            "content_filter, function_call, other) and requested model.",
            ["route", "model", "reason"],
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

        # --- data and model quality (sampled after answers were sent; see gateway/quality) ---
        self.quality_sampled = Counter(
            "tailguard_quality_sampled_total",
            "Answered exchanges whose features were profiled, by route and answering backend.",
            ["route", "backend"],
            registry=r,
        )
        self.quality_dropped = Counter(
            "tailguard_quality_dropped_total",
            "Sampled exchanges not profiled, by reason (queue_full: the worker was behind).",
            ["route", "reason"],
            registry=r,
        )
        self.quality_problems = Counter(
            "tailguard_quality_unreadable_total",
            "Sampled bodies whose features could not be read, by problem.",
            ["route", "problem"],
            registry=r,
        )
        self.quality_queue = Gauge(
            "tailguard_quality_queue_depth",
            "Sampled exchanges waiting for the quality worker.",
            registry=r,
        )
        self.quality_worker_cpu = Counter(
            "tailguard_quality_worker_cpu_seconds_total",
            "CPU time the quality worker spent reading features, profiling and scoring.",
            registry=r,
        )
        self.drift_score = Gauge(
            "tailguard_drift_score",
            "Drift of a feature's current window against its reference, by statistic "
            "(psi, ks, js); absent until both sides hold the minimum sample.",
            ["route", "backend", "feature", "stat"],
            registry=r,
        )
        self.drift_threshold = Gauge(
            "tailguard_drift_threshold",
            "The route's drift threshold per statistic (a score above it is drift).",
            ["route", "stat"],
            registry=r,
        )
        self.drift_features = Gauge(
            "tailguard_drift_features_drifted",
            "Features of a route and backend whose score is above its threshold.",
            ["route", "backend"],
            registry=r,
        )
        self.quality_references = Counter(
            "tailguard_quality_references_total",
            "Reference profiles adopted, by how (capture, load, store).",
            ["route", "backend", "source"],
            registry=r,
        )
        self.shadow_requests = Counter(
            "tailguard_shadow_requests_total",
            "Shadow requests by result (answered, error, failed, timeout, too_large, busy, "
            "unusable); busy and unusable were never sent.",
            ["route", "backend", "result"],
            registry=r,
        )
        self.shadow_compared = Counter(
            "tailguard_shadow_compared_total",
            "Output rows compared between the shadow and the primary answer.",
            ["route", "backend"],
            registry=r,
        )
        self.shadow_agreed = Counter(
            "tailguard_shadow_agreed_total",
            "Compared rows where the shadow's predicted class (or finish reason) was the primary's.",
            ["route", "backend"],
            registry=r,
        )
        self.shadow_score_diff = Histogram(
            "tailguard_shadow_score_difference",
            "Mean absolute difference of the shadow's and the primary's score vectors, per row.",
            ["route", "backend"],
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.shadow_token_diff = Histogram(
            "tailguard_shadow_token_difference",
            "Absolute difference of completion tokens, shadow vs primary answer.",
            ["route", "backend"],
            buckets=TOKEN_DIFF_BUCKETS,
            registry=r,
        )
        self.shadow_latency = Histogram(
            "tailguard_shadow_latency_seconds",
            "Latency of compared pairs, by side (primary: the client's answer; shadow).",
            ["route", "backend", "side"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.contract_rejections = Counter(
            "tailguard_contract_rejections_total",
            "Requests refused (400) because their inputs break the model's metadata, by reason.",
            ["route", "reason"],
            registry=r,
        )
        self.contract_unchecked = Counter(
            "tailguard_contract_unchecked_total",
            "Requests let through unchecked because the model's metadata could not be had.",
            ["route", "reason"],
            registry=r,
        )

        # --- service level objectives (names from the policy's `slos:`) ---
        # The one source of the generated Prometheus rules: each request counted once, as the
        # gateway classified it (4xx excluded, fallbacks by the SLO's choice, latency against
        # the SLO's own threshold), so the alerts and the in-process budget agree.
        self.slo_events = HotCounter(
            "tailguard_slo_events_total",
            "Requests counted by an SLO, by SLO, route and result (good, bad).",
            ["slo", "route", "result"],
            r,
        )
        self.slo_objective = Gauge(
            "tailguard_slo_objective_ratio",
            "The SLO's objective as a ratio (0.999 for 99.9%).",
            ["slo"],
            registry=r,
        )
        self.slo_burn_rate = Gauge(
            "tailguard_slo_burn_rate",
            "Error ratio over the window divided by the error budget, as this replica sees it; "
            "window names are those of a 30-day SLO (scaled to the SLO's window).",
            ["slo", "window"],
            registry=r,
        )
        self.slo_budget_remaining = Gauge(
            "tailguard_slo_error_budget_remaining_ratio",
            "Share of the compliance window's error budget not yet spent (negative: overspent).",
            ["slo"],
            registry=r,
        )
        self.slo_fast_burn = Gauge(
            "tailguard_slo_fast_burn",
            "1 while the SLO burns fast (1h and 5m above 14.4x) with enough bad events to act.",
            ["slo"],
            registry=r,
        )
        self.slo_actions = Counter(
            "tailguard_slo_actions_total",
            "Error-budget actions on a route: freeze, release, rollback, shed, unshed, override.",
            ["route", "action"],
            registry=r,
        )

        # --- infrastructure: the process itself ---
        # CPU seconds, resident memory, open file descriptors, start time (Linux /proc)
        ProcessCollector(namespace="", registry=r)
        self.loop_lag = Histogram(
            "tailguard_event_loop_lag_seconds",
            "How late the event loop ran a timer that was due (scheduling delay).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "tailguard_gc_pause_seconds",
            "Cyclic garbage collector pauses, by generation collected.",
            ["generation"],
            buckets=LAG_BUCKETS,
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


class LabelGuard:
    """Bounds a label whose values come from request data (a model name, a tenant).

    The first `limit` distinct values are kept; every later one is reported as `other` and
    counted in `tailguard_metric_label_folds_total`, so a client inventing names cannot grow
    the exposition without bound.
    """

    __slots__ = ("_counter", "_limit", "_seen")

    def __init__(self, metrics: Metrics, label: str, limit: int) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._counter = metrics.label_folds.labels(label)

    def set_limit(self, limit: int) -> None:
        """A new limit (a reload): values already kept stay kept."""
        self._limit = limit

    def __call__(self, value: str) -> str:
        seen = self._seen
        if value in seen:
            return value
        if len(seen) < self._limit:
            seen.add(value)
            return value
        self._counter.inc()
        return OTHER_LABEL


# The `protocol` label's values: how the client called.
PROTOCOLS = ("http", "grpc")


def code_class(status: int) -> str:
    """Status class label ("2xx" …) so the requests counter keeps five values, not hundreds."""
    return _CLASSES[status // 100] if 0 < status < 600 else "other"


_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}

# Finish reasons an OpenAI answer may give; anything else a body says becomes "other".
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# KServe v2 tensor datatypes; anything else becomes "other".
TENSOR_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
     "FP16", "FP32", "FP64", "BF16", "BYTES"}
)  # fmt: skip
# Label values the quality code uses; anything else a body says becomes "other".
QUALITY_PROBLEMS = frozenset(
    {"request_not_json", "request_not_object", "response_not_json", "response_not_object"}
)
CONTRACT_REASONS = frozenset(
    {"not_json", "no_inputs", "unknown_input", "missing_input", "datatype", "shape", "data_size"}
)
