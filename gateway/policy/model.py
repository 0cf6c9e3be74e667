"""The policy language v1 as frozen, validated pydantic models.

Field names equal the YAML keys (one exception, see `HedgeModel`). Units are parsed here
once (`units.py`), so compiled objects only ever see seconds, fractions, bytes and
`(host, port)` pairs. Unknown keys are errors (`extra="forbid"`): a typo must never
silently become a default.

Every model is frozen and hashable, because the compiled snapshot is immutable:
sequences are tuples, and mappings (`backends`, `match.headers`) are `FrozenMap`, a
read-only, hashable `Mapping` that keeps the file's order.

Checks that need several fields of one model live in that model's `after` validator and
raise `checks_failed(...)`, which carries each problem's location relative to the model,
so the loader can point at the exact YAML node (`routes[0].retries.per_try_timeout`)
instead of at the enclosing mapping. Checks across the whole file (a split naming an
undefined backend, route names used twice, locality regions without endpoints) are
`policy_cross_checks`, which reads plain data so that the loader can run it in the same
pass as schema validation even when other parts of the file are invalid; `PolicyModel`
runs it as well, so a model built in Python obeys the same rules.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SerializerFunctionWrapHandler,
    Strict,
    WithJsonSchema,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from gateway.policy.units import (
    Duration,
    DurationOrZero,
    HedgeDelay,
    HedgeDelayValue,
    HostPort,
    Percent,
    PercentBelowFull,
    PositivePercent,
    PositiveSize,
    Rate,
    Window,
    parse_hostport,
    parse_percent,
)
from gateway.resilience.hedge import DEFAULT_TARGET_OF_BUDGET
from gateway.resilience.outcome import RETRY_CONDITIONS
from gateway.state.target import URL_PATTERN as REDIS_URL_PATTERN
from gateway.state.target import parse_redis_url

__all__ = [
    "AT_KEY",
    "DEFAULT_FALLBACK_TIMEOUT",
    "DEFAULT_HEALTH_PATHS",
    "NAME_PATTERN",
    "PRIORITY_VALUES",
    "AdminModel",
    "AdminTokenModel",
    "AdmissionModel",
    "ApiKeyModel",
    "AuthModel",
    "BackendModel",
    "BackoffModel",
    "BalancerModel",
    "BreakerModel",
    "CacheModel",
    "CanaryGatesModel",
    "CanaryModel",
    "ContractModel",
    "DriftThresholdsModel",
    "EndpointModel",
    "FallbackStepModel",
    "FrozenMap",
    "FrozenModel",
    "GatewayModel",
    "HealthModel",
    "HedgeModel",
    "JwtModel",
    "LocalityModel",
    "MatchModel",
    "OutlierModel",
    "PolicyModel",
    "PoolModel",
    "Problem",
    "QualityModel",
    "RateLimitModel",
    "RetryModel",
    "RouteModel",
    "ShadowModel",
    "SloAvailabilityModel",
    "SloFastBurnModel",
    "SloLatencyModel",
    "SloModel",
    "SlowCallModel",
    "SplitModel",
    "StateModel",
    "StickyModel",
    "TlsModel",
    "checks_failed",
    "did_you_mean",
    "policy_cross_checks",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
HEADER_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
METHOD_PATTERN = r"^[A-Za-z]+$"
DEFAULT_HEALTH_PATHS = {"kserve-v2": "/v2/health/ready", "openai": "/v1/models", "http": "/"}
PRIORITY_VALUES = {"critical": 4, "high": 3, "normal": 2, "low": 1, "sheddable": 0}

# A problem found by a check: where (relative to the checked model), and what is wrong.
# A location ends with AT_KEY to point at a mapping key rather than at its value (the
# same marker pydantic uses for errors in mapping keys).
Problem = tuple[tuple[str | int, ...], str]
AT_KEY = "[key]"


def checks_failed(*problems: Problem) -> PydanticCustomError:
    """The error a model validator raises for one or more located problems.

    `load_yaml_model` turns each `(relative location, message)` into its own issue at that
    node; other callers see one pydantic error whose message joins them.
    """
    return PydanticCustomError(
        "checks",
        "{message}",
        {"message": "; ".join(m for _, m in problems), "problems": problems},
    )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """The hint " (did you mean 'x'?)" for the closest choice (ignoring case), or ""."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


def _error(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, "{message}", {"message": message})


# --- a hashable mapping -------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """A read-only, hashable mapping that keeps insertion order.

    Validated by pydantic as a `dict[K, V]` (so errors are located by key) and then
    frozen; serialized back as a plain dict.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        args = get_args(source) or (Any, Any)
        inner = handler.generate_schema(dict[args[0], args[1]])  # type: ignore[valid-type]
        return core_schema.no_info_after_validator_function(
            cls,
            inner,
            serialization=core_schema.wrap_serializer_function_ser_schema(
                lambda v, nxt: nxt(dict(v)), schema=inner
            ),
        )


# --- small value types ---------------------------------------------------------------------

# Numbers and booleans are strict: `weight: true`, `attempts: 2.0`, `drain: 1` and quoted
# numbers are errors, not silently converted. (Strict floats still take YAML integers.)
Bool = Annotated[bool, Strict()]


def _name(value: str) -> str:
    if not re.fullmatch(NAME_PATTERN, value):
        raise _error(
            "name",
            "must start with a letter or digit and hold only letters, digits, '_', '.' and '-'",
        )
    return value


def _header(value: str) -> str:
    if not re.fullmatch(HEADER_PATTERN, value):
        raise _error("header_name", f"'{value}' is not a valid HTTP header name")
    return value.lower()


def _method(value: str) -> str:
    if not re.fullmatch(METHOD_PATTERN, value):
        raise _error("method", f"'{value}' is not an HTTP method")
    return value.upper()


def _url_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value) or "?" in value:
        raise _error("url_path", "expected a path starting with '/', without spaces or '?'")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise _error("blank", "must not be empty")
    return value


def _endpoint_url(value: str) -> str:
    hint = "expected an http(s) URL like http://10.0.0.1:8000 or https://host:443/base"
    if any(c.isspace() for c in value):
        raise _error("url", hint)
    try:
        parts = urlsplit(value)
    except ValueError:
        raise _error("url", hint) from None
    try:
        port = parts.port
    except ValueError:
        raise _error("url", "the URL's port must be a number between 1 and 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _error("url", hint)
    if parts.username is not None or parts.password is not None:
        raise _error("url", "credentials in the URL are not allowed (URLs are logged)")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise _error("url", "a backend URL has no query or fragment")
    if port == 0:
        raise _error("url", "the URL's port must be a number between 1 and 65535")
    return value


def _grpc_address(value: str) -> str:
    _host, port = parse_hostport(value)
    if value.strip().startswith(":") or port == 0:
        raise _error("grpc", "expected HOST:PORT of the gRPC server, like 10.0.0.1:8001")
    return value.strip()


def _redis_url(value: str) -> str:
    try:
        parse_redis_url(value)
    except ValueError as e:
        raise _error("redis_url", str(e)) from None
    return value


def _retry_condition(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `429` is an integer in YAML
    if isinstance(value, str) and value not in RETRY_CONDITIONS:
        hint = did_you_mean(value, RETRY_CONDITIONS) or f" (one of: {', '.join(RETRY_CONDITIONS)})"
        raise _error("retry_condition", f"unknown condition '{value}'{hint}")
    return value


def _version(value: object) -> object:
    if type(value) is not int or value != 1:
        raise _error("version", "must be 1 (this gateway reads policy language version 1)")
    return value


def _pattern(pattern: str, **extra: Any) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern, **extra})


Name = Annotated[str, AfterValidator(_name), _pattern(NAME_PATTERN)]
HeaderName = Annotated[str, AfterValidator(_header), _pattern(HEADER_PATTERN)]
Method = Annotated[str, AfterValidator(_method), _pattern(METHOD_PATTERN, examples=["POST"])]
UrlPath = Annotated[str, AfterValidator(_url_path), _pattern(r"^/\S*$")]
Text = Annotated[str, AfterValidator(_not_blank), WithJsonSchema({"type": "string"})]
EndpointUrl = Annotated[
    str,
    AfterValidator(_endpoint_url),
    _pattern(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", examples=["http://10.0.0.1:8000"]),
]
GrpcAddress = Annotated[
    str, AfterValidator(_grpc_address), _pattern(r"^\S+:\d{1,5}$", examples=["10.0.0.1:8001"])
]
RedisUrl = Annotated[str, AfterValidator(_redis_url), _pattern(REDIS_URL_PATTERN)]
RetryCondition = Annotated[
    str,
    BeforeValidator(_retry_condition),
    WithJsonSchema({"enum": list(RETRY_CONDITIONS)}),
]
Status = Annotated[int, Strict(), Field(ge=100, le=599)]


class FrozenModel(BaseModel):
    """Base of every policy (and rule file) model: immutable, hashable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- gateway and state ---------------------------------------------------------------------

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
# The data listener when the policy names none (see gateway.proxy.listener and h1_server).
DEFAULT_LISTENER: Literal["aiohttp", "httptools"] = "httptools"


# The gRPC listener's defaults: Triton's own server defaults where it has one (so a client
# tuned for Triton is treated the same through the gateway), a bound where it has none.
GRPC_MAX_CONCURRENT_STREAMS = 1000
GRPC_MAX_CONNECTION_AGE = 30 * 60.0
GRPC_MAX_CONNECTION_AGE_GRACE = 5 * 60.0
GRPC_KEEPALIVE_TIME = 2 * 3600.0
GRPC_KEEPALIVE_TIMEOUT = 20.0
GRPC_MIN_PING_INTERVAL = 5 * 60.0
GRPC_MAX_PING_STRIKES = 2
GRPC_MAX_PINGS_WITHOUT_DATA = 2
# gRPC takes its times as 32-bit milliseconds: about 24 days at most.
_GRPC_MAX_MS = 2**31 - 1


class GrpcListenerModel(FrozenModel):
    max_concurrent_streams: Annotated[int, Strict(), Field(ge=1, le=2**31 - 1)] = (
        GRPC_MAX_CONCURRENT_STREAMS
    )
    max_send_message: PositiveSize | None = None  # None: gateway.max_body
    max_connection_idle: Duration | None = None  # None: gateway.idle_timeout
    max_connection_age: Duration | None = GRPC_MAX_CONNECTION_AGE  # None: never
    max_connection_age_grace: Duration = GRPC_MAX_CONNECTION_AGE_GRACE
    keepalive_time: Duration = GRPC_KEEPALIVE_TIME
    keepalive_timeout: Duration = GRPC_KEEPALIVE_TIMEOUT
    permit_keepalive_without_calls: Bool = False
    min_ping_interval: Duration = GRPC_MIN_PING_INTERVAL
    max_ping_strikes: Annotated[int, Strict(), Field(ge=0, le=1000)] = GRPC_MAX_PING_STRIKES
    max_pings_without_data: Annotated[int, Strict(), Field(ge=0, le=1000)] = (
        GRPC_MAX_PINGS_WITHOUT_DATA
    )

    @model_validator(mode="after")
    def _milliseconds(self) -> GrpcListenerModel:
        for name in (
            "max_connection_idle",
            "max_connection_age",
            "max_connection_age_grace",
            "keepalive_time",
            "keepalive_timeout",
            "min_ping_interval",
        ):
            value = getattr(self, name)
            if value is not None and value * 1000 > _GRPC_MAX_MS:
                raise checks_failed(((name,), "must be at most 24d (gRPC counts 32-bit ms)"))
        return self


class GatewayModel(FrozenModel):
    region: Text = "local"
    listen: HostPort = ("127.0.0.1", 8080)
    admin_listen: HostPort = ("127.0.0.1", 9090)
    # the gRPC listener (inference.GRPCInferenceService), off unless given
    grpc_listen: HostPort | None = None
    max_body: PositiveSize = 4 << 20
    max_concurrency: Annotated[int, Strict(), Field(ge=1)] | None = None
    deadline_header: HeaderName | None = "x-tailguard-deadline-ms"
    drain_timeout: Duration = 10.0
    quality_queue: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1024
    tls: TlsModel | None = None
    admin_tls: TlsModel | None = None
    # what each listener allows one client (slow or idle clients must not hold slots)
    header_timeout: Duration = 10.0
    idle_timeout: Duration = 60.0
    body_timeout: Duration = 30.0
    max_connections: Annotated[int, Strict(), Field(ge=1)] = 10_000
    max_header_size: PositiveSize = 16 * 1024
    # the gRPC listener's own limits (the ones above apply to it too, see GrpcLimits)
    grpc: GrpcListenerModel = GrpcListenerModel()
    # what serves the data port: aiohttp's server, or the lean one on llhttp (httptools)
    listener: Literal["aiohttp", "httptools"] = DEFAULT_LISTENER

    @model_validator(mode="after")
    def _distinct_listeners(self) -> GatewayModel:
        (host, port), (ahost, aport) = self.listen, self.admin_listen
        same_host = host == ahost or host in _WILDCARD_HOSTS or ahost in _WILDCARD_HOSTS
        if port == aport and port != 0 and same_host:
            raise checks_failed((("admin_listen",), f"must differ from listen (port {port})"))
        if self.grpc_listen is not None:
            ghost, gport = self.grpc_listen
            for name, (h, p) in (("listen", self.listen), ("admin_listen", self.admin_listen)):
                same = h == ghost or h in _WILDCARD_HOSTS or ghost in _WILDCARD_HOSTS
                if gport == p and gport != 0 and same:
                    raise checks_failed((("grpc_listen",), f"must differ from {name} (port {p})"))
        if not 1024 <= self.max_header_size <= 1 << 20:
            raise checks_failed((("max_header_size",), "must be between 1KiB and 1MiB"))
        return self


class TlsModel(FrozenModel):
    cert: Text
    key: Text


class StateModel(FrozenModel):
    store: Literal["memory", "redis"] = "memory"
    url: RedisUrl | None = None
    timeout: Duration = 0.01
    key_prefix: Text = "tailguard:"
    retry_after: Duration = 1.0
    share_ejections: Bool = True
    suspect_for: Duration = 10.0

    @model_validator(mode="after")
    def _url_for_redis(self) -> StateModel:
        if self.store == "redis" and self.url is None:
            raise checks_failed((("url",), "required when store is redis"))
        return self


# --- backends ------------------------------------------------------------------------------


class EndpointModel(FrozenModel):
    url: EndpointUrl | None = None
    region: Text | None = None
    weight: Annotated[int, Strict(), Field(ge=1, le=1000)] = 1
    grpc: GrpcAddress | None = None
    drain: Bool = False

    @model_validator(mode="after")
    def _an_address(self) -> EndpointModel:
        if self.url is None and self.grpc is None:
            raise checks_failed((("url",), "an endpoint needs url, grpc, or both"))
        return self


class PoolModel(FrozenModel):
    max_connections: Annotated[int, Strict(), Field(ge=1)] = 64
    connect_timeout: Duration = 1.0
    idle_timeout: Duration = 30.0


class HealthModel(FrozenModel):
    path: UrlPath | None = None
    expect: Annotated[tuple[Status, ...], Field(min_length=1)] = (200,)
    models: Bool = True
    interval: Duration = 2.0
    idle_interval: Duration = 10.0
    timeout: Duration = 0.5
    jitter: PercentBelowFull = 0.1
    unhealthy_threshold: Annotated[int, Strict(), Field(ge=1)] = 2
    healthy_threshold: Annotated[int, Strict(), Field(ge=1)] = 2


class OutlierModel(FrozenModel):
    consecutive_failures: Annotated[int, Strict(), Field(ge=0)] = 5
    interval: Duration = 10.0
    failure_percentage: Percent | None = None
    request_volume: Annotated[int, Strict(), Field(ge=1)] = 20
    base_ejection: Duration = 30.0
    max_ejection: Duration = 300.0
    max_ejection_percent: Percent = 0.5

    @model_validator(mode="after")
    def _ejection_order(self) -> OutlierModel:
        if self.max_ejection < self.base_ejection:
            raise checks_failed((("max_ejection",), "must be at least base_ejection"))
        return self


class SlowCallModel(FrozenModel):
    duration: Duration
    rate: PositivePercent = 1.0


class BreakerModel(FrozenModel):
    window: Duration = 10.0
    window_calls: Annotated[int, Strict(), Field(ge=1)] | None = None
    minimum_calls: Annotated[int, Strict(), Field(ge=1)] = 20
    failure_rate: PositivePercent = 0.5
    slow_call: SlowCallModel | None = None
    open_for: Duration = 15.0
    half_open_calls: Annotated[int, Strict(), Field(ge=1)] = 3

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A count-based breaker dumps without the (default) time window, so that the dump
        # is a valid breaker again.
        out = handler(self)
        if self.window_calls is not None and isinstance(out, dict):
            out.pop("window", None)
        return out

    @model_validator(mode="after")
    def _one_window(self) -> BreakerModel:
        if self.window_calls is not None and "window" in self.model_fields_set:
            raise checks_failed(
                (("window_calls",), "set either window (time-based) or window_calls, not both")
            )
        return self


class LocalityModel(FrozenModel):
    priority: tuple[Text, ...] = ()
    overprovisioning: Annotated[float, Strict(), Field(ge=1.0, le=1e6)] = 1.4
    panic_threshold: Percent = 0.5

    @model_validator(mode="after")
    def _unique_regions(self) -> LocalityModel:
        seen: set[str] = set()
        problems: list[Problem] = []
        for k, region in enumerate(self.priority):
            if region in seen:
                problems.append((("priority", k), f"region '{region}' is listed twice"))
            seen.add(region)
        if problems:
            raise checks_failed(*problems)
        return self


class BalancerModel(FrozenModel):
    kind: Literal["p2c", "peak_ewma"] = "p2c"
    min_share: Percent = 0.1
    decay: Duration = 10.0


class BackendModel(FrozenModel):
    protocol: Literal["kserve-v2", "openai", "http"] = "http"
    endpoints: Annotated[tuple[EndpointModel, ...], Field(min_length=1)]
    pool: PoolModel = PoolModel()
    health: HealthModel | None = None
    outlier_detection: OutlierModel | None = None
    circuit_breaker: BreakerModel | None = None
    locality: LocalityModel = LocalityModel()
    balancer: BalancerModel = BalancerModel()

    @model_validator(mode="after")
    def _unique_endpoints(self) -> BackendModel:
        seen: set[str] = set()
        problems: list[Problem] = []
        for k, e in enumerate(self.endpoints):
            key = e.url.rstrip("/") if e.url is not None else f"grpc://{e.grpc}"
            if key in seen:
                field, shown = ("url", e.url) if e.url is not None else ("grpc", e.grpc)
                problems.append(
                    (("endpoints", k, field), f"endpoint '{shown}' is listed twice in this backend")
                )
            seen.add(key)
            if e.url is None and self.protocol != "kserve-v2":
                problems.append(
                    (
                        ("endpoints", k, "url"),
                        "only kserve-v2 endpoints may have a grpc address alone",
                    )
                )
        if problems:
            raise checks_failed(*problems)
        return self


# --- routes --------------------------------------------------------------------------------


class MatchModel(FrozenModel):
    path_prefix: UrlPath | None = None
    path: UrlPath | None = None
    model: Text | None = None
    headers: FrozenMap[HeaderName, str] = FrozenMap()
    methods: tuple[Method, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _headers_once(cls, data: Any) -> Any:
        headers = data.get("headers") if isinstance(data, Mapping) else None
        if isinstance(headers, Mapping):
            seen: set[str] = set()
            for name in headers:
                if isinstance(name, str) and name.lower() in seen:
                    raise checks_failed(
                        (
                            ("headers", name, AT_KEY),
                            f"header '{name}' is given twice (names ignore case)",
                        )
                    )
                seen.add(str(name).lower())
        return data

    @model_validator(mode="after")
    def _something(self) -> MatchModel:
        if not (self.path_prefix or self.path or self.model or self.headers or self.methods):
            raise checks_failed(
                ((), "needs at least one of path_prefix, path, model, headers or methods")
            )
        return self


class SplitModel(FrozenModel):
    backend: Name
    weight: Annotated[float, Strict(), Field(ge=0, le=100)]


class StickyModel(FrozenModel):
    header: HeaderName


class BackoffModel(FrozenModel):
    base: DurationOrZero = 0.025
    max: DurationOrZero = 0.25

    @model_validator(mode="after")
    def _order(self) -> BackoffModel:
        if self.max < self.base:
            raise checks_failed((("max",), "must be at least base"))
        return self


class RetryModel(FrozenModel):
    attempts: Annotated[int, Strict(), Field(ge=1, le=10)] = 2
    per_try_timeout: Duration | None = None
    on: Annotated[tuple[RetryCondition, ...], Field(min_length=1)] = (
        "connect-failure",
        "reset",
        "timeout",
        "5xx",
    )
    budget: Percent = 0.2
    min_retries: Annotated[int, Strict(), Field(ge=0)] = 3
    backoff: BackoffModel = BackoffModel()
    non_idempotent: Bool = False


class HedgeModel(FrozenModel):
    """Send an extra attempt when the first is slow: after a fixed delay, a percentile, or
    an adaptive delay that hedges the slowest `target` share of requests."""

    # The one key that is not a field name: YAML `delay` holds a duration, a percentile or
    # `adaptive`, parsed into `delay_spec` and read through the properties `delay` (fixed
    # seconds, or None), `delay_percentile` (0.95 for `p95`, or None) and `adaptive`.
    delay_spec: HedgeDelay = Field(default=HedgeDelayValue(0.05, None), alias="delay")
    target: PositivePercent | None = None
    headroom: Percent = 0.25
    min_delay: DurationOrZero = 0.005
    max_delay: Duration = 1.0
    max_extra: Annotated[int, Strict(), Field(ge=1, le=3)] = 1
    budget: Percent = 0.1

    @property
    def delay(self) -> float | None:
        """The fixed hedge delay in seconds, or None when it is a percentile or adaptive."""
        return self.delay_spec.seconds

    @property
    def delay_percentile(self) -> float | None:
        """The latency percentile (0.95 for `p95`) used as the delay, or None."""
        return self.delay_spec.percentile

    @property
    def adaptive(self) -> bool:
        """`delay: adaptive`: the delay follows `hedge_target`."""
        return self.delay_spec.adaptive

    @property
    def hedge_target(self) -> float | None:
        """The share of requests an adaptive delay hedges: `target`, by default 80 % of the
        budget; None unless adaptive."""
        if not self.adaptive:
            return None
        return self.target if self.target is not None else DEFAULT_TARGET_OF_BUDGET * self.budget

    @model_validator(mode="after")
    def _clamp_order(self) -> HedgeModel:
        problems: list[Problem] = []
        if self.max_delay < self.min_delay:
            problems.append((("max_delay",), "must be at least min_delay"))
        if self.target is not None and not self.adaptive:
            problems.append((("target",), "only an adaptive delay (delay: adaptive) has a target"))
        if self.adaptive and self.budget <= 0:
            problems.append((("budget",), "must be above 0% for an adaptive delay"))
        elif self.target is not None and self.target > self.budget:
            problems.append(
                (
                    ("target",),
                    "must not exceed the budget: the budget, not the delay, would then choose "
                    "which requests are hedged",
                )
            )
        if problems:
            raise checks_failed(*problems)
        return self


class AdmissionModel(FrozenModel):
    max_concurrency: Annotated[int, Strict(), Field(ge=1)]
    queue: Annotated[int, Strict(), Field(ge=0)] = 0
    queue_timeout: DurationOrZero = 0.05
    priority_header: HeaderName | None = "x-tailguard-priority"
    # tenants whose priority header is honoured; None: every caller's
    priority_tenants: tuple[Name, ...] | None = None
    adaptive: Bool = False


class CacheModel(FrozenModel):
    ttl: DurationOrZero = 0.0
    stale_if_error: DurationOrZero = 3600.0
    max_entries: Annotated[int, Strict(), Field(ge=1)] = 10_000
    max_entry_size: PositiveSize = 1 << 20
    vary: tuple[HeaderName, ...] = ()
    ignore_fields: tuple[Text, ...] = ()
    methods: Annotated[tuple[Method, ...], Field(min_length=1)] = ("GET", "POST")

    @model_validator(mode="after")
    def _keeps_something(self) -> CacheModel:
        if self.ttl == 0 and self.stale_if_error == 0:
            raise checks_failed((("ttl",), "ttl and stale_if_error cannot both be 0"))
        return self


class FallbackStepModel(FrozenModel):
    cache: Bool | None = None
    backend: Name | None = None
    timeout: Duration | None = None
    rules: Text | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> FallbackStepModel:
        kinds = [k for k in ("cache", "backend", "rules") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise checks_failed(((), "give exactly one of cache, backend or rules"))
        if self.cache is False:
            raise checks_failed((("cache",), "must be true (leave the step out to disable it)"))
        if self.timeout is not None and self.backend is None:
            raise checks_failed((("timeout",), "only a backend step has a timeout"))
        return self


class RateLimitModel(FrozenModel):
    key: Literal["client_ip", "api_key", "header", "tenant"] = "client_ip"
    header: HeaderName | None = None
    rate: Rate
    burst: Annotated[int, Strict(), Field(ge=1)] | None = None
    on_store_error: Literal["local", "allow", "deny"] = "local"

    @model_validator(mode="after")
    def _header_for_header_key(self) -> RateLimitModel:
        if self.key == "header" and self.header is None:
            raise checks_failed((("header",), "required when key is header"))
        return self


class CanaryGatesModel(FrozenModel):
    max_error_rate_increase: Percent = 0.01
    max_p99_ratio: Annotated[float, Strict(), Field(ge=1.0, le=1000)] = 1.25
    min_samples: Annotated[int, Strict(), Field(ge=1)] = 50
    # Jensen-Shannon distance between the canary's and the baseline's output labels
    max_output_drift: Annotated[float, Strict(), Field(gt=0, le=1)] | None = None
    output_feature: Text | None = None
    min_output_samples: Annotated[int, Strict(), Field(ge=1)] = 50


class CanaryModel(FrozenModel):
    backend: Name
    steps: Annotated[
        tuple[Annotated[float, Strict(), Field(gt=0, le=100)], ...], Field(min_length=1)
    ] = (5.0, 25.0, 50.0, 100.0)
    interval: Duration = 60.0
    gates: CanaryGatesModel = CanaryGatesModel()
    max_failed_checks: Annotated[int, Strict(), Field(ge=1)] = 2

    @model_validator(mode="after")
    def _ascending(self) -> CanaryModel:
        steps = self.steps
        for k in range(1, len(steps)):
            if steps[k] <= steps[k - 1]:
                raise checks_failed((("steps", k), "steps must be strictly ascending"))
        if steps[0] >= 100:
            raise checks_failed((("steps", 0), "the first step must be below 100"))
        return self


class DriftThresholdsModel(FrozenModel):
    psi: Annotated[float, Strict(), Field(gt=0, le=100)] = 0.2
    ks: Annotated[float, Strict(), Field(gt=0, le=1)] = 0.1
    js: Annotated[float, Strict(), Field(gt=0, le=1)] = 0.1


class QualityModel(FrozenModel):
    sample: Percent = 0.05
    window: Duration = 300.0
    min_samples: Annotated[int, Strict(), Field(ge=1)] = 200
    thresholds: DriftThresholdsModel = DriftThresholdsModel()


class ShadowModel(FrozenModel):
    backend: Name
    share: PositivePercent = 0.1
    max_concurrency: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 8
    timeout: Duration = 2.0
    max_body: PositiveSize = 1 << 20


class ContractModel(FrozenModel):
    metadata_ttl: Duration = 60.0
    fetch_timeout: Duration = 1.0


# Time a backup-backend fallback step gets when its `timeout` is not given.
DEFAULT_FALLBACK_TIMEOUT = 1.0


class RouteModel(FrozenModel):
    name: Name
    match: MatchModel
    split: Annotated[tuple[SplitModel, ...], Field(min_length=1)]
    sticky: StickyModel | None = None
    timeout: Duration = 30.0
    retries: RetryModel | None = None
    hedging: HedgeModel | None = None
    admission: AdmissionModel | None = None
    cache: CacheModel | None = None
    fallback: tuple[FallbackStepModel, ...] = ()
    rate_limit: RateLimitModel | None = None
    canary: CanaryModel | None = None
    allow_tenants: tuple[Name, ...] | None = None
    quality: QualityModel | None = None
    shadow: ShadowModel | None = None
    contract: ContractModel | None = None
    # every request of this route may be sent more than once (retried after it may have
    # reached a backend, or hedged), whatever its method; inference usually is
    idempotent: Bool = False

    @property
    def repeatable(self) -> bool:
        """The one rule retries and hedges share: may a non-idempotent request be repeated?

        `retries.non_idempotent: true` is the older spelling of `idempotent: true`.
        """
        return self.idempotent or (self.retries is not None and self.retries.non_idempotent)

    @model_validator(mode="after")
    def _route_checks(self) -> RouteModel:
        problems: list[Problem] = []
        if self.canary is not None:
            names = [s.backend for s in self.split]
            if self.canary.backend not in names:
                problems.append(
                    (("canary", "backend"), f"'{self.canary.backend}' must be one of this route's split backends")
                )  # fmt: skip
            elif len(names) < 2:
                problems.append((("split",), "a canary needs a baseline backend beside it"))
            if self.canary.gates.max_output_drift is not None and self.quality is None:
                problems.append(
                    (("canary", "gates", "max_output_drift"),
                     "needs the route's quality section (outputs are read from sampled answers)")
                )  # fmt: skip
        if self.shadow is not None and self.shadow.backend in {s.backend for s in self.split}:
            problems.append(
                (("shadow", "backend"), f"'{self.shadow.backend}' already serves this route; a shadow is another backend")
            )  # fmt: skip
        seen: set[str] = set()
        for j, s in enumerate(self.split):
            if s.backend in seen:
                problems.append(
                    (("split", j, "backend"), f"backend '{s.backend}' appears twice in this split")
                )
            seen.add(s.backend)
        # Also what `sticky` needs: at least one entry with weight > 0 to hash onto.
        if not any(s.weight > 0 for s in self.split):
            problems.append((("split",), "weights must add up to more than 0"))
        r = self.retries
        if r is not None and r.per_try_timeout is not None and r.per_try_timeout > self.timeout:
            problems.append(
                (("retries", "per_try_timeout"), "must not be longer than the route's timeout")
            )
        reserve = 0.0
        for k, step in enumerate(self.fallback):
            if step.cache and (self.cache is None or self.cache.stale_if_error == 0):
                problems.append(
                    (
                        ("fallback", k, "cache"),
                        "needs the route's cache with a stale_if_error window",
                    )
                )
            if step.backend is not None:
                reserve += step.timeout or DEFAULT_FALLBACK_TIMEOUT
        if reserve >= self.timeout:
            problems.append(
                (("fallback",), f"backup steps reserve {reserve:g}s, which leaves nothing of the route's timeout")
            )  # fmt: skip
        if problems:
            raise checks_failed(*problems)
        return self


# --- service level objectives -------------------------------------------------------------


def _objective(value: Any) -> float:
    fraction = parse_percent(value)
    if not 0.0 < fraction < 1.0:
        raise _error("objective", "must be more than 0% and less than 100% (like 99.9%)")
    return round(fraction, 12)  # 99.9 / 100 is 0.9990000000000001 in binary


# A target share of good events: more than 0 % and less than 100 % (a 100 % objective leaves
# no error budget to spend, so every burn rate would divide by zero).
Objective = Annotated[
    float,
    BeforeValidator(_objective),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?%$", "examples": ["99.9%"]}),
]


class SloAvailabilityModel(FrozenModel):
    """Good = answered without a gateway or backend error; 4xx answers are not counted."""

    objective: Objective
    fallback: Literal["good", "bad"] = "bad"


class SloLatencyModel(FrozenModel):
    """Good = a successful answer within `threshold`; failed requests are availability's."""

    threshold: Duration
    objective: Objective


class SloFastBurnModel(FrozenModel):
    """What the gateway does while the budget burns fast (1h and 5m windows above 14.4x)."""

    freeze_canary: Bool = True
    rollback_canary: Bool = True
    blame_share: PositivePercent = 0.5
    min_bad_events: Annotated[int, Strict(), Field(ge=1)] = 10
    shed: Literal["sheddable", "low", "normal"] | None = None


class SloModel(FrozenModel):
    routes: Annotated[tuple[Name, ...], Field(min_length=1)]
    window: Window = 30 * 86400.0
    availability: SloAvailabilityModel | None = None
    latency: SloLatencyModel | None = None
    on_fast_burn: SloFastBurnModel = SloFastBurnModel()

    @model_validator(mode="after")
    def _one_objective(self) -> SloModel:
        if (self.availability is None) == (self.latency is None):
            raise checks_failed(((), "give exactly one of availability or latency"))
        seen: set[str] = set()
        for k, route in enumerate(self.routes):
            if route in seen:
                raise checks_failed((("routes", k), f"route '{route}' is listed twice"))
            seen.add(route)
        if self.window < 60.0:
            raise checks_failed((("window",), "must be at least 1m"))
        return self


# --- auth ----------------------------------------------------------------------------------

KeyHash = Annotated[
    str,
    Field(pattern=r"^sha256:[0-9a-fA-F]{64}$"),
]


class ApiKeyModel(FrozenModel):
    id: Name
    tenant: Name
    hash: KeyHash


class JwtModel(FrozenModel):
    algorithms: Annotated[tuple[Literal["HS256", "RS256"], ...], Field(min_length=1)] = ("HS256",)
    secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    public_key_file: Text | None = None
    issuer: Text | None = None
    audience: Text | None = None
    tenant_claim: Text = "sub"
    leeway: DurationOrZero = 30.0

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> JwtModel:
        if "HS256" in self.algorithms and self.secret_env is None:
            raise checks_failed((("secret_env",), "HS256 needs secret_env (or the secrets file's jwt_secret)"))  # fmt: skip
        if "RS256" in self.algorithms and self.public_key_file is None:
            raise checks_failed((("public_key_file",), "RS256 needs public_key_file"))
        return self


class AuthModel(FrozenModel):
    api_key_header: HeaderName = "x-api-key"
    keys: tuple[ApiKeyModel, ...] = ()
    secrets_file: Text | None = None
    jwt: JwtModel | None = None
    allow_anonymous: Bool = False


class AdminTokenModel(FrozenModel):
    id: Name
    hash: KeyHash


class AdminModel(FrozenModel):
    tokens: tuple[AdminTokenModel, ...] = ()


# --- telemetry -----------------------------------------------------------------------------


class AccessLogModel(FrozenModel):
    # "stdout", or a file path (relative to the policy file), opened when the gateway starts
    path: Text = "stdout"
    sample: PositivePercent = 1.0


class TracingModel(FrozenModel):
    # OTLP collector; None: the OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT environment, else none
    endpoint: Text | None = None
    protocol: Literal["grpc", "http"] = "grpc"
    sample_ratio: Percent = 1.0
    headers: FrozenMap[Text, Text] = FrozenMap()
    service_name: Text = "tailguard"


class ExplainModel(FrozenModel):
    # tenants who may ask for a decision trace; the admin token always may
    tenants: tuple[Name, ...] = ()
    keep: Annotated[int, Strict(), Field(ge=1, le=100_000)] = 1000


class TelemetryModel(FrozenModel):
    access_log: AccessLogModel | None = None
    tracing: TracingModel | None = None
    explain: ExplainModel | None = None
    # distinct values a data-derived label (model, tenant) may take before folding into "other"
    max_label_values: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 100
    # the data and model layers (tensor layouts, tokens, finish reasons) read from the bodies
    model_metrics: Annotated[bool, Strict()] = True


# --- the policy ----------------------------------------------------------------------------


class PolicyModel(FrozenModel):
    version: Annotated[Literal[1], BeforeValidator(_version)]
    gateway: GatewayModel = GatewayModel()
    state: StateModel = StateModel()
    auth: AuthModel | None = None
    admin: AdminModel = AdminModel()
    telemetry: TelemetryModel = TelemetryModel()
    backends: Annotated[FrozenMap[Name, BackendModel], Field(min_length=1)]
    routes: Annotated[tuple[RouteModel, ...], Field(min_length=1)]
    slos: FrozenMap[Name, SloModel] = FrozenMap()

    @model_validator(mode="after")
    def _cross_checks(self) -> PolicyModel:
        problems = policy_cross_checks(self.model_dump(by_alias=True))
        if problems:
            raise checks_failed(*problems)
        return self


def policy_cross_checks(data: Any) -> list[Problem]:
    """Checks across the whole policy, on plain data (YAML as loaded, or a model dump).

    Defensive about types: whatever is malformed here is reported by schema validation,
    so it is skipped. Locations are absolute (from the top of the file).
    """
    if not isinstance(data, Mapping):
        return []
    problems: list[Problem] = []
    backends = data.get("backends")
    backends = backends if isinstance(backends, Mapping) else None
    gateway = data.get("gateway")
    local = gateway.get("region", "local") if isinstance(gateway, Mapping) else "local"
    local = local if isinstance(local, str) else "local"

    routes = data.get("routes")
    names: dict[str, int] = {}
    for i, route in enumerate(routes if isinstance(routes, list | tuple) else ()):
        if not isinstance(route, Mapping):
            continue
        name = route.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(
                    (("routes", i, "name"), f"route name '{name}' is already used by routes[{names[name]}]")
                )  # fmt: skip
            names.setdefault(name, i)
        split = route.get("split")
        for j, entry in enumerate(split if isinstance(split, list | tuple) else ()):
            backend = entry.get("backend") if isinstance(entry, Mapping) else None
            if backends is not None and isinstance(backend, str) and backend not in backends:
                hint = did_you_mean(backend, (str(b) for b in backends))
                problems.append(
                    (("routes", i, "split", j, "backend"),
                     f"backend '{backend}' is not defined in backends{hint}")
                )  # fmt: skip
        fallback = route.get("fallback")
        for k, step in enumerate(fallback if isinstance(fallback, list | tuple) else ()):
            backend = step.get("backend") if isinstance(step, Mapping) else None
            if backends is not None and isinstance(backend, str) and backend not in backends:
                hint = did_you_mean(backend, (str(b) for b in backends))
                problems.append(
                    (("routes", i, "fallback", k, "backend"),
                     f"backend '{backend}' is not defined in backends{hint}")
                )  # fmt: skip

        _quality_cross_checks(i, route, backends, problems)

    slos = data.get("slos")
    for slo_name, slo in slos.items() if isinstance(slos, Mapping) else ():
        slo_routes = slo.get("routes") if isinstance(slo, Mapping) else None
        for k, route_name in enumerate(slo_routes if isinstance(slo_routes, list | tuple) else ()):
            if isinstance(route_name, str) and route_name not in names:
                hint = did_you_mean(route_name, names)
                problems.append(
                    (("slos", slo_name, "routes", k), f"no route named '{route_name}'{hint}")
                )

    has_auth = isinstance(data.get("auth"), Mapping)
    for i, route in enumerate(routes if isinstance(routes, list | tuple) else ()):
        if isinstance(route, Mapping) and route.get("allow_tenants") is not None and not has_auth:
            problems.append(
                (("routes", i, "allow_tenants"), "needs the top-level auth section to know tenants")
            )  # fmt: skip

    telemetry = data.get("telemetry")
    explain = telemetry.get("explain") if isinstance(telemetry, Mapping) else None
    if isinstance(explain, Mapping) and explain.get("tenants") and not has_auth:
        problems.append(
            (("telemetry", "explain", "tenants"), "needs the top-level auth section to know tenants")
        )  # fmt: skip

    for name, backend in (backends or {}).items():
        if not isinstance(backend, Mapping):
            continue
        endpoints = backend.get("endpoints")
        regions: set[str] = set()
        for e in endpoints if isinstance(endpoints, list | tuple) else ():
            region = e.get("region") if isinstance(e, Mapping) else None
            regions.add(region if isinstance(region, str) else local)
        locality = backend.get("locality")
        priority = locality.get("priority") if isinstance(locality, Mapping) else None
        for k, region in enumerate(priority if isinstance(priority, list | tuple) else ()):
            if isinstance(region, str) and region not in regions:
                problems.append(
                    (("backends", name, "locality", "priority", k),
                     f"region '{region}' has no endpoints in this backend")
                )  # fmt: skip
    return problems


def _protocol(backends: Mapping[str, Any] | None, name: object) -> str | None:
    b = backends.get(name) if backends is not None and isinstance(name, str) else None
    if not isinstance(b, Mapping):
        return None
    p = b.get("protocol", "http")
    return p if isinstance(p, str) else None


def _quality_cross_checks(
    i: int, route: Mapping[str, Any], backends: Mapping[str, Any] | None, problems: list[Problem]
) -> None:
    """A shadow names a defined backend of the route's protocol; contracts are KServe v2."""
    split = route.get("split")
    entries = [
        e for e in (split if isinstance(split, list | tuple) else ()) if isinstance(e, Mapping)
    ]
    protocols = {_protocol(backends, e.get("backend")) for e in entries} - {None}
    shadow = route.get("shadow")
    name = shadow.get("backend") if isinstance(shadow, Mapping) else None
    if isinstance(name, str) and backends is not None:
        if name not in backends:
            hint = did_you_mean(name, (str(b) for b in backends))
            problems.append(
                (("routes", i, "shadow", "backend"), f"backend '{name}' is not defined in backends{hint}")
            )  # fmt: skip
        else:
            theirs = _protocol(backends, name)
            if protocols and theirs not in protocols:
                problems.append(
                    (("routes", i, "shadow", "backend"),
                     f"backend '{name}' speaks {theirs}, the route's backends {', '.join(sorted(str(p) for p in protocols))}: answers could not be compared")
                )  # fmt: skip
    if isinstance(route.get("contract"), Mapping) and protocols - {"kserve-v2"}:
        problems.append(
            (("routes", i, "contract"), "model contracts are KServe v2 metadata: every split backend must be kserve-v2")
        )  # fmt: skip
