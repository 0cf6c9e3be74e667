"""The policy language v1 as frozen, validated models.

Field names equal the YAML keys. Units are parsed here once (`units.py`), so
compiled objects only ever see seconds, fractions and bytes. Unknown keys are
errors (`extra="forbid"`): a typo must never silently become a default.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.policy.units import Duration, HostPort, Percent, Size
from gateway.resilience.outcome import RETRY_CONDITIONS

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayModel(Strict):
    region: str = "local"
    listen: HostPort = ("127.0.0.1", 8080)
    admin_listen: HostPort = ("127.0.0.1", 9090)
    max_body: Size = 4 << 20
    max_concurrency: int | None = Field(default=None, ge=1)
    deadline_header: str | None = "x-tailguard-deadline-ms"
    drain_timeout: Duration = 10.0

    @model_validator(mode="after")
    def _distinct_ports(self) -> GatewayModel:
        if self.listen == self.admin_listen and self.listen[1] != 0:
            raise ValueError("admin_listen must differ from listen")
        return self


class StateModel(Strict):
    store: Literal["memory", "redis"] = "memory"
    url: str | None = None
    timeout: Duration = 0.005


class EndpointModel(Strict):
    url: str
    region: str | None = None
    weight: int = Field(default=1, ge=1, le=1000)
    grpc: str | None = None
    drain: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+(:\d+)?(/[^?#\s]*)?$", v):
            raise ValueError("expected an http(s) URL like http://10.0.0.1:8000")
        return v


class PoolModel(Strict):
    max_connections: int = Field(default=64, ge=1)
    connect_timeout: Duration = 1.0
    idle_timeout: Duration = 30.0


class HealthModel(Strict):
    path: str | None = None
    expect: tuple[int, ...] = (200,)
    models: bool = True
    interval: Duration = 2.0
    idle_interval: Duration = 10.0
    timeout: Duration = 0.5
    jitter: Percent = 0.1
    unhealthy_threshold: int = Field(default=2, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)


class OutlierModel(Strict):
    consecutive_failures: int = Field(default=5, ge=0)
    interval: Duration = 10.0
    failure_percentage: Percent | None = None
    request_volume: int = Field(default=20, ge=1)
    base_ejection: Duration = 30.0
    max_ejection: Duration = 300.0
    max_ejection_percent: Percent = 0.5

    @model_validator(mode="after")
    def _order(self) -> OutlierModel:
        if self.max_ejection < self.base_ejection:
            raise ValueError("max_ejection must be at least base_ejection")
        return self


class SlowCallModel(Strict):
    duration: Duration
    rate: Percent = 1.0


class BreakerModel(Strict):
    window: Duration = 10.0
    window_calls: int | None = Field(default=None, ge=1)
    minimum_calls: int = Field(default=20, ge=1)
    failure_rate: Percent = 0.5
    slow_call: SlowCallModel | None = None
    open_for: Duration = 15.0
    half_open_calls: int = Field(default=3, ge=1)


class LocalityModel(Strict):
    priority: tuple[str, ...] = ()
    overprovisioning: float = Field(default=1.4, ge=1.0)
    panic_threshold: Percent = 0.5


class BackendModel(Strict):
    protocol: Literal["kserve-v2", "openai", "http"] = "http"
    endpoints: tuple[EndpointModel, ...] = Field(min_length=1)
    pool: PoolModel = PoolModel()
    health: HealthModel | None = None
    outlier_detection: OutlierModel | None = None
    circuit_breaker: BreakerModel | None = None
    locality: LocalityModel = LocalityModel()


class MatchModel(Strict):
    path_prefix: str | None = None
    path: str | None = None
    model: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    methods: tuple[str, ...] = ()

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, v: object) -> object:
        if isinstance(v, dict):
            return tuple((str(k).lower(), str(x)) for k, x in v.items())
        return v

    @model_validator(mode="after")
    def _something(self) -> MatchModel:
        if not (self.path_prefix or self.path or self.model or self.headers or self.methods):
            raise ValueError("needs at least one of path_prefix, path, model, headers, methods")
        return self


class SplitModel(Strict):
    backend: str
    weight: float = Field(ge=0, le=100)


class StickyModel(Strict):
    header: str


class BackoffModel(Strict):
    base: Duration = 0.025
    max: Duration = 0.25


class RetryModel(Strict):
    attempts: int = Field(default=2, ge=1, le=10)
    per_try_timeout: Duration | None = None
    on: tuple[str, ...] = ("connect-failure", "reset", "timeout", "5xx")
    budget: Percent = 0.2
    min_retries: int = Field(default=3, ge=0)
    backoff: BackoffModel = BackoffModel()
    non_idempotent: bool = False

    @field_validator("on")
    @classmethod
    def _on(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for c in v:
            if c not in RETRY_CONDITIONS:
                raise ValueError(f"unknown condition '{c}' (one of: {', '.join(RETRY_CONDITIONS)})")
        return v


class HedgeModel(Strict):
    delay: float | None = None
    delay_percentile: float | None = None
    min_delay: Duration = 0.005
    max_delay: Duration = 1.0
    max_extra: int = Field(default=1, ge=1, le=3)
    budget: Percent = 0.1

    @model_validator(mode="before")
    @classmethod
    def _delay(cls, data: object) -> object:
        if isinstance(data, dict) and "delay" in data:
            data = dict(data)
            raw = data["delay"]
            m = _PERCENTILE.match(raw) if isinstance(raw, str) else None
            if m:
                data.pop("delay")
                data["delay_percentile"] = float(m.group(1)) / 100
            else:
                from gateway.policy.units import parse_duration

                data["delay"] = parse_duration(raw) if raw is not None else None
        return data


class AdmissionModel(Strict):
    max_concurrency: int = Field(ge=1)
    queue: int = Field(default=0, ge=0)
    queue_timeout: Duration = 0.05
    priority_header: str | None = "x-tailguard-priority"
    adaptive: bool = False


class RouteModel(Strict):
    name: str = Field(pattern=NAME)
    match: MatchModel
    split: tuple[SplitModel, ...] = Field(min_length=1)
    sticky: StickyModel | None = None
    timeout: Duration = 30.0
    retries: RetryModel | None = None
    hedging: HedgeModel | None = None
    admission: AdmissionModel | None = None


class PolicyModel(Strict):
    version: Literal[1]
    gateway: GatewayModel = GatewayModel()
    state: StateModel = StateModel()
    backends: dict[str, BackendModel] = Field(min_length=1)
    routes: tuple[RouteModel, ...] = Field(min_length=1)
