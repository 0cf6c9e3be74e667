"""Policy model → runtime snapshot.

The snapshot is what a request reads from start to end: matchers, splits and
the decision objects of every backend and route, all built here once so the
request path only asks questions. A reload compiles a new snapshot beside the
running one and swaps one reference; per-endpoint state (breaker, health,
recent latency) is carried over by endpoint identity so a reload never resets
a tripped breaker or forgets an unhealthy endpoint.

Nothing here does I/O: connection pools are owned by the proxy and looked up by
endpoint id, so a snapshot stays a pure value plus pure decision objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from gateway.fallback.cache import CacheConfig
from gateway.policy.model import (
    DEFAULT_FALLBACK_TIMEOUT,
    DEFAULT_HEALTH_PATHS,
    DEFAULT_LISTENER,
    GRPC_KEEPALIVE_TIME,
    GRPC_KEEPALIVE_TIMEOUT,
    GRPC_MAX_CONCURRENT_STREAMS,
    GRPC_MAX_CONNECTION_AGE,
    GRPC_MAX_CONNECTION_AGE_GRACE,
    GRPC_MAX_PING_STRIKES,
    GRPC_MAX_PINGS_WITHOUT_DATA,
    GRPC_MIN_PING_INTERVAL,
    PRIORITY_VALUES,
)
from gateway.proxy.transport import PoolSpec
from gateway.quality.config import ContractConfig, QualityConfig, ShadowConfig
from gateway.quality.drift import DriftThresholds
from gateway.resilience.admission import AdmissionConfig
from gateway.resilience.balance import (
    BalanceConfig,
    BalancerKind,
    EndpointInfo,
    LocalityBalancer,
    LocalityConfig,
    peak_ewma_load,
)
from gateway.resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from gateway.resilience.budget import TokenBudget
from gateway.resilience.canary import CanaryConfig
from gateway.resilience.health import HealthConfig, HealthState
from gateway.resilience.hedge import HedgeConfig, HedgeDelayEstimator, HedgePolicy
from gateway.resilience.outcome import RETRY_CONDITIONS, Outcome
from gateway.resilience.outlier import Ejection, OutlierConfig, OutlierDetector
from gateway.resilience.retry import BackoffConfig, RetryConfig, RetryPolicy
from gateway.resilience.split import SplitEntry, WeightedSplit, rendezvous_order
from gateway.resilience.windows import LatencyWindow, PeakEwma
from gateway.slo.budget import FastBurnConfig, SliKind, SloConfig
from gateway.telemetry.config import (
    AccessLogConfig,
    ExplainConfig,
    TelemetrySettings,
    TracingConfig,
)

if TYPE_CHECKING:
    from gateway.auth import Authenticator
    from gateway.fallback.rules import RuleSet
    from gateway.policy.model import (
        BackendModel,
        GatewayModel,
        PolicyModel,
        RouteModel,
        SloModel,
    )

BreakerListener = Callable[[str, str, BreakerState, BreakerState], None]

# one table each, owned by the policy model; re-exported for the request path
PRIORITY_NAMES = PRIORITY_VALUES
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """An endpoint's identity and static settings; `id` is what state is carried over by."""

    id: str
    backend: str
    url: str
    region: str
    weight: int
    drain: bool
    grpc: str | None = None  # HOST:PORT of the endpoint's gRPC service, when it has one

    @property
    def has_http(self) -> bool:
        """False for an endpoint known only by its gRPC address (its url is `grpc://...`)."""
        return not self.url.startswith("grpc://")


@dataclass(frozen=True, slots=True)
class HealthCheckSpec:
    """What the health checker probes on each endpoint, and how often."""

    paths: tuple[str, ...]
    expect: frozenset[int]
    config: HealthConfig


class EndpointState:
    """Mutable per-endpoint state; survives reloads when the endpoint keeps its id."""

    __slots__ = (
        "admin_drain", "breaker", "ewma", "health", "last_used", "latency", "outstanding", "spec",
        "suspect_until",
    )  # fmt: skip

    def __init__(self, spec: EndpointSpec) -> None:
        self.spec = spec
        self.breaker: CircuitBreaker | None = None
        self.health: HealthState | None = None
        self.latency = LatencyWindow()
        # what the peak_ewma balancer weighs this endpoint by (kept up to date with any balancer)
        self.ewma = PeakEwma()
        self.outstanding = 0
        self.admin_drain = False
        self.last_used = 0.0
        # a peer replica saw this endpoint fail (breaker opened, ejected) until then
        self.suspect_until = 0.0

    def usable(self, now: float, ejected: bool) -> bool:
        """True when the endpoint may get new traffic: not draining, healthy, not ejected, not open."""
        if self.spec.drain or self.admin_drain or ejected or now < self.suspect_until:
            return False
        if self.health is not None and not self.health.healthy:
            return False
        return self.breaker is None or self.breaker.state(now) is not BreakerState.OPEN


class BackendRuntime:
    """One backend's endpoints with their balancer, breakers, outlier detector and health state."""

    __slots__ = (
        "balancer", "endpoints", "health_check", "latency", "name", "no_grpc", "no_http", "outlier",
        "pool", "protocol", "states",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        protocol: str,
        endpoints: tuple[EndpointSpec, ...],
        states: tuple[EndpointState, ...],
        balancer: LocalityBalancer,
        outlier: OutlierDetector | None,
        pool: PoolSpec,
        health_check: HealthCheckSpec | None,
        latency: LatencyWindow,
    ) -> None:
        self.name = name
        self.protocol = protocol
        self.endpoints = endpoints
        self.states = states
        self.balancer = balancer
        self.outlier = outlier
        self.pool = pool
        self.health_check = health_check
        self.latency = latency
        # endpoints that cannot take a gRPC request (no grpc address), or an HTTP one (grpc only)
        self.no_grpc = frozenset(i for i, e in enumerate(endpoints) if e.grpc is None)
        self.no_http = frozenset(i for i, e in enumerate(endpoints) if not e.has_http)

    def sticky_order(self, key: str) -> list[int]:
        """Endpoint indices ranked for a sticky key (a Triton sequence id), first choice first."""
        return rendezvous_order(key, [e.id for e in self.endpoints])

    def availability(self, now: float) -> list[bool]:
        """Which endpoints may take new traffic right now, in endpoint order."""
        outlier = self.outlier
        return [
            s.usable(now, outlier is not None and outlier.is_ejected(s.spec.id, now))
            for s in self.states
        ]

    def loads(self, now: float) -> list[float]:
        """Each endpoint's load as the balancer compares it (see `BalancerKind`)."""
        if self.balancer.balance.kind is BalancerKind.PEAK_EWMA:
            return [
                peak_ewma_load(s.ewma.value(now), s.ewma.observed, s.outstanding)
                for s in self.states
            ]
        return [s.outstanding for s in self.states]

    def report(self, index: int, outcome: Outcome, latency: float, now: float) -> Ejection | None:
        """Feed one finished attempt to the breaker, outlier detector and latency stats.

        Returns the ejection it caused, if any, so the caller can count it.
        """
        state = self.states[index]
        if state.breaker is not None:
            state.breaker.record(outcome, latency, now)
        if outcome is Outcome.SUCCESS or outcome is Outcome.CLIENT_ERROR:
            state.ewma.observe(now, latency)
        elif outcome.is_failure or outcome is Outcome.CANCELLED:
            # it took at least this long; a fast failure must not make an endpoint look cheap
            state.ewma.observe_at_least(now, latency)
        if outcome is Outcome.SUCCESS:
            state.latency.record(now, latency)
            self.latency.record(now, latency)
        if self.outlier is not None:
            return self.outlier.record(state.spec.id, outcome, now)
        return None


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path_prefix: str | None
    path: str | None
    model: str | None
    headers: tuple[tuple[str, str], ...]
    methods: frozenset[str]

    def matches(
        self, method: str, path: str, model: str | None, headers: Mapping[str, str]
    ) -> bool:
        if self.path is not None and path != self.path:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.model is not None and model != self.model:
            return False
        if self.methods and method not in self.methods:
            return False
        return all(headers.get(k) == v for k, v in self.headers)


class FallbackKind(Enum):
    CACHE = "cache"
    BACKEND = "backend"
    RULES = "rules"


@dataclass(frozen=True, slots=True)
class FallbackStep:
    kind: FallbackKind
    backend: str | None = None
    timeout: float = 0.0
    rules: RuleSet | None = None


@dataclass(frozen=True, slots=True)
class FallbackPlan:
    """What a route tries when its primary path failed; `reserve` is held back from its deadline."""

    steps: tuple[FallbackStep, ...]
    reserve: float


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    key: str  # client_ip | api_key | header | tenant
    header: str | None
    rate: float
    burst: float
    on_store_error: str  # local | allow | deny


@dataclass(frozen=True, slots=True)
class CanarySpec:
    backend: str
    config: CanaryConfig


@dataclass(slots=True)
class RouteRuntime:
    name: str
    match: RouteMatch
    split: WeightedSplit
    backends: tuple[str, ...]
    sticky_header: str | None
    timeout: float
    retry: RetryPolicy | None
    retry_budget: TokenBudget | None
    hedge: HedgePolicy | None
    hedge_budget: TokenBudget | None
    admission: AdmissionConfig | None
    adaptive: bool
    priority_header: str | None
    cache: CacheConfig | None = None
    fallback: FallbackPlan | None = None
    rate_limit: RateLimitSpec | None = None
    canary: CanarySpec | None = None
    split_entries: tuple[SplitEntry, ...] = ()
    allow_tenants: frozenset[str] | None = None
    quality: QualityConfig | None = None
    shadow: ShadowConfig | None = None
    contract: ContractConfig | None = None
    # the share of answered exchanges the quality tap takes (sampled or shadowed); 0 = none
    tap_share: float = 0.0
    # the protocol its errors are answered in: that of its first backend
    protocol: str = "http"
    # non-idempotent requests may be retried after they may have arrived, and hedged
    repeatable: bool = False
    # tenants whose priority header counts; None: everyone's
    priority_tenants: frozenset[str] | None = None
    # an adaptive hedge delay's recent first attempts, per backend this route may call
    hedge_delays: Mapping[str, HedgeDelayEstimator] = field(default_factory=dict)
    # blue/green: an operator sent all of this route's traffic to one backend (runtime
    # state, set by gateway.control.switch on every snapshot, like the canary's weight)
    switched_to: str | None = None

    def set_canary_weight(self, weight: float) -> None:
        """Give the canary `weight` percent and the other backends the rest, in their ratio.

        Canary state is runtime state, like a breaker's: the controller calls this on every
        snapshot it sees, so a reload keeps the rollout where it was.
        """
        assert self.canary is not None
        name = self.canary.backend
        others = [e for e in self.split_entries if e.backend != name]
        total = sum(e.weight for e in others) or float(len(others))
        entries = [
            SplitEntry(e.backend, (100.0 - weight) * ((e.weight or 1.0) / total)) for e in others
        ]
        entries.append(SplitEntry(name, weight))
        entries = [e for e in entries if e.weight > 0] or [SplitEntry(others[0].backend, 100.0)]
        self.split = WeightedSplit(entries)
        self.backends = tuple(e.backend for e in entries)

    def pick_backend(self, sticky_key: str | None, rnd: float) -> str:
        """The backend for one request: hashed on the sticky key when there is one."""
        if self.switched_to is not None:
            return self.switched_to
        if len(self.backends) == 1:
            return self.backends[0]
        if sticky_key is not None:
            return self.split.pick_sticky(sticky_key)
        return self.split.pick(rnd)


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """What each listener allows one client (see `gateway.proxy.listener`)."""

    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10_000
    max_header_size: int = 16 * 1024


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    """What the gRPC listener allows one client (`gateway.proxy.grpc_edge.server_options`).

    Resolved from `gateway.grpc` and the limits every listener shares: a message may be as
    large as a request body (`max_body`), metadata as large as `max_header_size`, a new
    connection has `header_timeout` for its HTTP/2 handshake, a listener takes
    `max_connections`, and an idle connection is closed after `idle_timeout` unless
    `grpc.max_connection_idle` says otherwise. Times in seconds; None = never.
    """

    max_receive_message: int = 4 << 20
    max_send_message: int = 4 << 20
    max_metadata_size: int = 16 * 1024
    max_connections: int = 10_000
    handshake_timeout: float = 10.0
    max_concurrent_streams: int = GRPC_MAX_CONCURRENT_STREAMS
    max_connection_idle: float = 60.0
    max_connection_age: float | None = GRPC_MAX_CONNECTION_AGE
    max_connection_age_grace: float = GRPC_MAX_CONNECTION_AGE_GRACE
    keepalive_time: float = GRPC_KEEPALIVE_TIME
    keepalive_timeout: float = GRPC_KEEPALIVE_TIMEOUT
    permit_keepalive_without_calls: bool = False
    min_ping_interval: float = GRPC_MIN_PING_INTERVAL
    max_ping_strikes: int = GRPC_MAX_PING_STRIKES
    max_pings_without_data: int = GRPC_MAX_PINGS_WITHOUT_DATA


@dataclass(frozen=True, slots=True)
class StateSettings:
    store: str
    url: str | None
    timeout: float
    key_prefix: str
    retry_after: float
    share_ejections: bool
    suspect_for: float


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    region: str
    listen: tuple[str, int]
    admin_listen: tuple[str, int]
    max_body: int
    max_concurrency: int | None
    deadline_header: str | None
    drain_timeout: float
    state: StateSettings
    quality_queue: int = 1024
    tls: tuple[str, str] | None = None  # (certificate, key) paths as written
    admin_tls: tuple[str, str] | None = None
    grpc_listen: tuple[str, int] | None = None
    limits: ListenerLimits = ListenerLimits()
    body_timeout: float = 30.0
    grpc: GrpcLimits = GrpcLimits()
    # which server takes the data port: "aiohttp" or "httptools" (llhttp); read at start
    listener: str = DEFAULT_LISTENER
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)


def _grpc_limits(gw: GatewayModel) -> GrpcLimits:
    g = gw.grpc
    return GrpcLimits(
        max_receive_message=int(gw.max_body),
        max_send_message=int(g.max_send_message or gw.max_body),
        max_metadata_size=int(gw.max_header_size),
        max_connections=gw.max_connections,
        handshake_timeout=gw.header_timeout,
        max_concurrent_streams=g.max_concurrent_streams,
        max_connection_idle=g.max_connection_idle or gw.idle_timeout,
        max_connection_age=g.max_connection_age,
        max_connection_age_grace=g.max_connection_age_grace,
        keepalive_time=g.keepalive_time,
        keepalive_timeout=g.keepalive_timeout,
        permit_keepalive_without_calls=g.permit_keepalive_without_calls,
        min_ping_interval=g.min_ping_interval,
        max_ping_strikes=g.max_ping_strikes,
        max_pings_without_data=g.max_pings_without_data,
    )


@dataclass(slots=True)
class Snapshot:
    """The running policy: read-only for requests, replaced whole by a reload."""

    source: str
    sha256: str
    settings: GatewaySettings
    routes: tuple[RouteRuntime, ...]
    backends: dict[str, BackendRuntime]
    needs_model: bool = field(default=False)
    auth: Authenticator | None = None
    admin_tokens: Mapping[str, str] = field(default_factory=dict)  # hash -> token id
    strip_headers: frozenset[str] = frozenset()  # the gateway's own credentials
    # what `tailguard validate` and a reload say about a valid policy that may surprise
    notes: tuple[str, ...] = ()
    slos: tuple[SloConfig, ...] = ()

    def route_for(self, method: str, path: str, headers: Mapping[str, str]) -> RouteRuntime | None:
        """First route whose match holds, in policy order; None means 404."""
        model = model_from_path(path) if self.needs_model else None
        for route in self.routes:
            if route.match.matches(method, path, model, headers):
                return route
        return None

    def endpoint_states(self) -> dict[str, EndpointState]:
        return {s.spec.id: s for b in self.backends.values() for s in b.states}


def _telemetry(policy: PolicyModel) -> TelemetrySettings:
    t = policy.telemetry
    a, tr, x = t.access_log, t.tracing, t.explain
    return TelemetrySettings(
        access_log=AccessLogConfig(a.path, a.sample) if a is not None else None,
        tracing=TracingConfig(
            endpoint=tr.endpoint,
            protocol=tr.protocol,
            sample_ratio=tr.sample_ratio,
            headers=dict(tr.headers.items()),
            service_name=tr.service_name,
        )
        if tr is not None
        else None,
        explain=ExplainConfig(frozenset(x.tenants), x.keep) if x is not None else None,
        max_label_values=t.max_label_values,
        model_metrics=t.model_metrics,
    )


def model_from_path(path: str) -> str | None:
    """The KServe v2 model name in `/v2/models/<name>/...`, or None."""
    if not path.startswith("/v2/models/"):
        return None
    rest = path[11:]
    name, _, _ = rest.partition("/")
    return name or None


def compile_policy(
    policy: PolicyModel,
    *,
    source: str,
    text: str,
    region: str | None = None,
    previous: Snapshot | None = None,
    on_breaker_transition: BreakerListener | None = None,
    rules: Mapping[str, RuleSet] | None = None,
    auth: Authenticator | None = None,
) -> Snapshot:
    """Build a runtime snapshot; `previous` donates the state of endpoints that keep their id.

    `region` overrides the policy's own (the TAILGUARD_REGION environment variable, read by the
    caller). `rules` maps each `fallback[].rules` path as written to its loaded rule set (the
    caller reads the files; compiling does no I/O). The caller swaps the returned snapshot in; nothing here has side effects on
    `previous` other than sharing its endpoint state objects.
    """
    gw = policy.gateway
    local_region = region or gw.region
    settings = GatewaySettings(
        region=local_region,
        listen=tuple(gw.listen),  # type: ignore[arg-type]
        admin_listen=tuple(gw.admin_listen),  # type: ignore[arg-type]
        max_body=gw.max_body,
        max_concurrency=gw.max_concurrency,
        deadline_header=gw.deadline_header.lower() if gw.deadline_header else None,
        drain_timeout=gw.drain_timeout,
        quality_queue=gw.quality_queue,
        tls=(gw.tls.cert, gw.tls.key) if gw.tls else None,
        admin_tls=(gw.admin_tls.cert, gw.admin_tls.key) if gw.admin_tls else None,
        grpc_listen=tuple(gw.grpc_listen) if gw.grpc_listen else None,  # type: ignore[arg-type]
        limits=ListenerLimits(
            header_timeout=gw.header_timeout,
            idle_timeout=gw.idle_timeout,
            max_connections=gw.max_connections,
            max_header_size=int(gw.max_header_size),
        ),
        body_timeout=gw.body_timeout,
        grpc=_grpc_limits(gw),
        listener=gw.listener,
        telemetry=_telemetry(policy),
        state=StateSettings(
            store=policy.state.store,
            url=policy.state.url,
            timeout=policy.state.timeout,
            key_prefix=policy.state.key_prefix,
            retry_after=policy.state.retry_after,
            share_ejections=policy.state.share_ejections,
            suspect_for=policy.state.suspect_for,
        ),
    )
    old_states = previous.endpoint_states() if previous is not None else {}
    old_backends = previous.backends if previous is not None else {}

    models_by_backend: dict[str, set[str]] = {}
    for r in policy.routes:
        if r.match.model:
            for s in r.split:
                models_by_backend.setdefault(s.backend, set()).add(r.match.model)

    backends = {
        name: _compile_backend(
            name,
            b,
            local_region,
            old_states,
            old_backends.get(name),
            models_by_backend.get(name, set()),
            on_breaker_transition,
        )
        for name, b in policy.backends.items()
    }
    routes = tuple(
        _compile_route(r, rules or {}, policy.backends[r.split[0].backend].protocol)
        for r in policy.routes
    )
    _hedge_delays(routes, tuple(backends), previous)
    return Snapshot(
        source=source,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        settings=settings,
        routes=routes,
        backends=backends,
        needs_model=any(r.match.model is not None for r in routes),
        auth=auth,
        admin_tokens={t.hash.lower(): t.id for t in policy.admin.tokens},
        strip_headers=(
            frozenset({policy.auth.api_key_header.lower(), "authorization"})
            if policy.auth is not None
            else frozenset()
        ),
        notes=policy_notes(policy),
        slos=tuple(_slo(name, m) for name, m in policy.slos.items()),
    )


def _slo(name: str, m: SloModel) -> SloConfig:
    burn = m.on_fast_burn
    fast_burn = FastBurnConfig(
        freeze_canary=burn.freeze_canary,
        rollback_canary=burn.rollback_canary,
        blame_share=burn.blame_share,
        min_bad_events=burn.min_bad_events,
        shed_priority=PRIORITY_NAMES[burn.shed] if burn.shed is not None else None,
    )
    if m.availability is not None:
        return SloConfig(
            name=name,
            routes=tuple(m.routes),
            kind=SliKind.AVAILABILITY,
            objective=m.availability.objective,
            window=m.window,
            fallback_good=m.availability.fallback == "good",
            fast_burn=fast_burn,
        )
    assert m.latency is not None
    return SloConfig(
        name=name,
        routes=tuple(m.routes),
        kind=SliKind.LATENCY,
        objective=m.latency.objective,
        window=m.window,
        latency_threshold=m.latency.threshold,
        fast_burn=fast_burn,
    )


_NON_IDEMPOTENT = frozenset({"POST", "PATCH"})


def policy_notes(policy: PolicyModel) -> tuple[str, ...]:
    """What is valid but will not do what it seems to: said by `validate` and on reload."""
    notes = []
    for r in policy.routes:
        if r.hedging is None or r.repeatable:
            continue
        methods = {m.upper() for m in r.match.methods}
        protocols = {policy.backends[s.backend].protocol for s in r.split}
        if methods and methods <= _NON_IDEMPOTENT:
            notes.append(
                f"route '{r.name}': hedging never applies: it matches only "
                f"{'/'.join(sorted(methods))} requests, which are sent once unless the route "
                "sets idempotent: true"
            )
        elif protocols - {"http"}:
            notes.append(
                f"route '{r.name}': hedging applies to its GET requests only; inference "
                "requests (POST) are hedged when the route sets idempotent: true"
            )
    return tuple(notes)


def _compile_backend(
    name: str,
    b: BackendModel,
    local_region: str,
    old_states: Mapping[str, EndpointState],
    old: BackendRuntime | None,
    models: set[str],
    on_transition: BreakerListener | None,
) -> BackendRuntime:
    specs = tuple(
        EndpointSpec(
            id=f"{name}/{_endpoint_url(e.url, e.grpc)}",
            backend=name,
            url=_endpoint_url(e.url, e.grpc),
            region=e.region or local_region,
            weight=e.weight,
            drain=e.drain,
            grpc=e.grpc,
        )
        for e in b.endpoints
    )
    breaker_cfg = _breaker_config(b)
    health_check = _health_check(b, models)
    states = []
    for spec in specs:
        state = old_states.get(spec.id)
        if state is None:
            state = EndpointState(spec)
        else:
            state.spec = spec
        if breaker_cfg is None:
            state.breaker = None
        elif state.breaker is None or state.breaker.config != breaker_cfg:
            state.breaker = CircuitBreaker(
                breaker_cfg, on_transition=_listener(on_transition, name, spec.id)
            )
        if health_check is None:
            state.health = None
        elif state.health is None or state.health.config != health_check.config:
            state.health = HealthState(health_check.config)
        if state.ewma.decay != b.balancer.decay:
            state.ewma = PeakEwma(b.balancer.decay)
        states.append(state)

    outlier = None
    if b.outlier_detection is not None:
        o = b.outlier_detection
        cfg = OutlierConfig(
            consecutive_failures=o.consecutive_failures,
            interval=o.interval,
            failure_percentage=o.failure_percentage,
            request_volume=o.request_volume,
            base_ejection=o.base_ejection,
            max_ejection=o.max_ejection,
            max_ejection_percent=o.max_ejection_percent,
        )
        ids = [s.id for s in specs]
        if old is not None and old.outlier is not None and old.outlier.config == cfg:
            outlier = old.outlier.with_endpoints(ids)
        else:
            outlier = OutlierDetector(cfg, ids)

    loc = b.locality
    balancer = LocalityBalancer(
        LocalityConfig(
            local_region=local_region,
            priority=tuple(loc.priority),
            overprovisioning=loc.overprovisioning,
            panic_threshold=loc.panic_threshold,
        ),
        [EndpointInfo(s.id, s.region, s.weight) for s in specs],
        BalanceConfig(
            kind=BalancerKind(b.balancer.kind),
            min_share=b.balancer.min_share,
            decay=b.balancer.decay,
        ),
    )
    pool = PoolSpec(
        max_connections=b.pool.max_connections,
        connect_timeout=b.pool.connect_timeout,
        idle_timeout=b.pool.idle_timeout,
    )
    return BackendRuntime(
        name=name,
        protocol=b.protocol,
        endpoints=specs,
        states=tuple(states),
        balancer=balancer,
        outlier=outlier,
        pool=pool,
        health_check=health_check,
        latency=old.latency if old is not None else LatencyWindow(),
    )


def _endpoint_url(url: str | None, grpc: str | None) -> str:
    """An endpoint's identity: its URL, or `grpc://HOST:PORT` when it has only a gRPC address."""
    if url is not None:
        return url.rstrip("/")
    assert grpc is not None, "the policy model requires url or grpc"
    return f"grpc://{grpc}"


def _listener(
    on_transition: BreakerListener | None, backend: str, endpoint: str
) -> Callable[[BreakerState, BreakerState, float], None] | None:
    if on_transition is None:
        return None

    def notify(old: BreakerState, new: BreakerState, now: float) -> None:
        on_transition(backend, endpoint, old, new)

    return notify


def _breaker_config(b: BackendModel) -> BreakerConfig | None:
    cb = b.circuit_breaker
    if cb is None:
        return None
    return BreakerConfig(
        window=cb.window,
        window_calls=cb.window_calls,
        minimum_calls=cb.minimum_calls,
        failure_rate=cb.failure_rate,
        slow_call_duration=cb.slow_call.duration if cb.slow_call else None,
        slow_call_rate=cb.slow_call.rate if cb.slow_call else 1.0,
        open_for=cb.open_for,
        half_open_calls=cb.half_open_calls,
    )


def _health_check(b: BackendModel, models: set[str]) -> HealthCheckSpec | None:
    h = b.health
    if h is None:
        return None
    paths = [h.path or DEFAULT_HEALTH_PATHS[b.protocol]]
    if b.protocol == "kserve-v2" and h.models:
        paths.extend(f"/v2/models/{m}/ready" for m in sorted(models))
    return HealthCheckSpec(
        paths=tuple(paths),
        expect=frozenset(h.expect),
        config=HealthConfig(
            interval=h.interval,
            idle_interval=h.idle_interval,
            timeout=h.timeout,
            jitter=h.jitter,
            unhealthy_threshold=h.unhealthy_threshold,
            healthy_threshold=h.healthy_threshold,
        ),
    )


def _compile_route(
    r: RouteModel, rules: Mapping[str, RuleSet], protocol: str = "http"
) -> RouteRuntime:
    m = r.match
    match = RouteMatch(
        path_prefix=m.path_prefix,
        path=m.path,
        model=m.model,
        headers=tuple((k.lower(), v) for k, v in _pairs(m.headers)),
        methods=frozenset(x.upper() for x in m.methods),
    )
    entries = [SplitEntry(s.backend, float(s.weight)) for s in r.split]
    live = tuple(e.backend for e in entries if e.weight > 0)
    retry = budget = None
    if r.retries is not None:
        rt = r.retries
        on: frozenset[Outcome] = frozenset().union(*(RETRY_CONDITIONS[c] for c in rt.on))
        retry = RetryPolicy(
            RetryConfig(
                attempts=rt.attempts,
                per_try_timeout=rt.per_try_timeout,
                on=on,
                backoff=BackoffConfig(base=rt.backoff.base, max=rt.backoff.max),
                non_idempotent=r.repeatable,
            )
        )
        budget = TokenBudget(ratio=rt.budget, reserve=float(rt.min_retries))
    hedge = hedge_budget = None
    if r.hedging is not None:
        hd = r.hedging
        hedge = HedgePolicy(
            HedgeConfig(
                delay=hd.delay,
                percentile=hd.delay_percentile,
                target=hd.hedge_target,
                headroom=hd.headroom,
                min_delay=hd.min_delay,
                max_delay=hd.max_delay,
                max_extra=hd.max_extra,
                budget_ratio=hd.budget,
            )
        )
        hedge_budget = TokenBudget(ratio=hd.budget, reserve=3.0)
    admission = None
    adaptive = False
    priority_header = None
    priority_tenants: frozenset[str] | None = None
    if r.admission is not None:
        a = r.admission
        admission = AdmissionConfig(
            max_concurrency=a.max_concurrency, queue=a.queue, queue_timeout=a.queue_timeout
        )
        adaptive = a.adaptive
        priority_header = a.priority_header.lower() if a.priority_header else None
        if a.priority_tenants is not None:
            priority_tenants = frozenset(a.priority_tenants)
    return RouteRuntime(
        name=r.name,
        match=match,
        split=WeightedSplit(entries),
        backends=live,
        sticky_header=r.sticky.header.lower() if r.sticky else None,
        timeout=r.timeout,
        retry=retry,
        retry_budget=budget,
        hedge=hedge,
        hedge_budget=hedge_budget,
        admission=admission,
        adaptive=adaptive,
        priority_header=priority_header,
        cache=_cache_config(r),
        fallback=_fallback_plan(r, rules),
        rate_limit=_rate_limit(r),
        canary=_canary(r),
        split_entries=tuple(entries),
        allow_tenants=frozenset(r.allow_tenants) if r.allow_tenants is not None else None,
        **_quality(r),
        protocol=protocol,
        repeatable=r.repeatable,
        priority_tenants=priority_tenants,
    )


def _hedge_delays(
    routes: Sequence[RouteRuntime], backends: Sequence[str], previous: Snapshot | None
) -> None:
    """Give each adaptive-hedging route its delay estimators, one per backend (fallback
    backends included); a reload keeps those of a route whose hedging did not change."""
    old = {r.name: r for r in previous.routes} if previous is not None else {}
    for route in routes:
        if route.hedge is None or not route.hedge.adaptive:
            continue
        before = old.get(route.name)
        keep = (
            before.hedge_delays
            if before is not None
            and before.hedge is not None
            and before.hedge.config == route.hedge.config
            else {}
        )
        route.hedge_delays = {
            name: keep[name] if name in keep else route.hedge.new_estimator() for name in backends
        }


def _quality(r: RouteModel) -> dict[str, Any]:
    """The route's quality, shadow and contract configs, and the tap's share of exchanges."""
    quality = shadow = contract = None
    if r.quality is not None:
        q = r.quality
        quality = QualityConfig(
            sample=q.sample,
            window=q.window,
            thresholds=DriftThresholds(
                psi=q.thresholds.psi,
                ks=q.thresholds.ks,
                js=q.thresholds.js,
                min_samples=q.min_samples,
            ),
        )
    if r.shadow is not None:
        sh = r.shadow
        shadow = ShadowConfig(
            backend=sh.backend,
            share=sh.share,
            max_concurrency=sh.max_concurrency,
            timeout=sh.timeout,
            max_body=sh.max_body,
        )
    if r.contract is not None:
        contract = ContractConfig(
            metadata_ttl=r.contract.metadata_ttl, fetch_timeout=r.contract.fetch_timeout
        )
    share = max(quality.sample if quality else 0.0, shadow.share if shadow else 0.0)
    return {"quality": quality, "shadow": shadow, "contract": contract, "tap_share": share}


def _canary(r: RouteModel) -> CanarySpec | None:
    c = r.canary
    if c is None:
        return None
    return CanarySpec(
        backend=c.backend,
        config=CanaryConfig(
            steps=tuple(c.steps),
            interval=c.interval,
            max_error_rate_increase=c.gates.max_error_rate_increase,
            max_p99_ratio=c.gates.max_p99_ratio,
            min_samples=c.gates.min_samples,
            max_failed_checks=c.max_failed_checks,
            max_output_drift=c.gates.max_output_drift,
            output_feature=c.gates.output_feature,
            min_output_samples=c.gates.min_output_samples,
        ),
    )


def _cache_config(r: RouteModel) -> CacheConfig | None:
    c = r.cache
    if c is None:
        return None
    return CacheConfig(
        ttl=c.ttl,
        stale_if_error=c.stale_if_error,
        max_entries=c.max_entries,
        max_entry_size=c.max_entry_size,
        vary=tuple(h.lower() for h in c.vary),
        ignore_fields=frozenset(c.ignore_fields),
        methods=frozenset(m.upper() for m in c.methods),
    )


def _fallback_plan(r: RouteModel, rules: Mapping[str, RuleSet]) -> FallbackPlan | None:
    if not r.fallback:
        return None
    steps = []
    for f in r.fallback:
        if f.cache:
            steps.append(FallbackStep(FallbackKind.CACHE))
        elif f.backend is not None:
            steps.append(
                FallbackStep(
                    FallbackKind.BACKEND,
                    backend=f.backend,
                    timeout=f.timeout or DEFAULT_FALLBACK_TIMEOUT,
                )
            )
        elif f.rules is not None:
            ruleset = rules.get(f.rules)
            if ruleset is None:
                raise ValueError(f"rules file {f.rules!r} was not loaded by the caller")
            steps.append(FallbackStep(FallbackKind.RULES, rules=ruleset))
    reserve = sum(s.timeout for s in steps if s.kind is FallbackKind.BACKEND)
    return FallbackPlan(tuple(steps), reserve)


def _rate_limit(r: RouteModel) -> RateLimitSpec | None:
    rl = r.rate_limit
    if rl is None:
        return None
    return RateLimitSpec(
        key=rl.key,
        header=rl.header.lower() if rl.header else None,
        rate=rl.rate,
        burst=float(rl.burst if rl.burst is not None else max(1, round(rl.rate))),
        on_store_error=rl.on_store_error,
    )


def _pairs(headers: object) -> Sequence[tuple[str, str]]:
    if isinstance(headers, Mapping):
        return list(headers.items())
    return [tuple(h) for h in headers]  # type: ignore[attr-defined]
