"""The policy model: defaults, immutability, and the rules a model built in Python obeys too."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.policy.load import load_policy_text
from gateway.policy.model import (
    AdmissionModel,
    BackendModel,
    BreakerModel,
    EndpointModel,
    FrozenMap,
    GatewayModel,
    HealthModel,
    HedgeModel,
    LocalityModel,
    MatchModel,
    OutlierModel,
    PolicyModel,
    PoolModel,
    RetryModel,
    RouteModel,
    SplitModel,
    StateModel,
    did_you_mean,
    policy_cross_checks,
)
from gateway.policy.schema import policy_json_schema


def policy(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1,
        "backends": {"a": {"endpoints": [{"url": "http://10.0.0.1:8000"}]}},
        "routes": [{"name": "r", "match": {"path_prefix": "/"},
                    "split": [{"backend": "a", "weight": 100}]}],
    }  # fmt: skip
    data.update(overrides)
    return data


def test_defaults_follow_the_key_list() -> None:
    gw = GatewayModel()
    assert (gw.region, gw.listen, gw.admin_listen, gw.max_body) == (
        "local", ("127.0.0.1", 8080), ("127.0.0.1", 9090), 4 << 20
    )  # fmt: skip
    assert (gw.max_concurrency, gw.deadline_header, gw.drain_timeout) == (
        None, "x-tailguard-deadline-ms", 10.0
    )  # fmt: skip
    assert (StateModel().store, StateModel().url, StateModel().timeout) == ("memory", None, 0.01)
    e = EndpointModel(url="http://h:1")
    assert (e.region, e.weight, e.grpc, e.drain) == (None, 1, None, False)
    assert PoolModel() == PoolModel.model_validate(
        {"max_connections": 64, "connect_timeout": "1s", "idle_timeout": "30s"}
    )
    with pytest.raises(ValidationError, match="expected a duration"):
        PoolModel.model_validate({"connect_timeout": 1.0})  # a unit is needed in Python too
    h = HealthModel()
    assert (h.path, h.expect, h.models, h.interval, h.idle_interval, h.timeout) == (
        None, (200,), True, 2.0, 10.0, 0.5
    )  # fmt: skip
    assert (h.jitter, h.unhealthy_threshold, h.healthy_threshold) == (0.1, 2, 2)
    o = OutlierModel()
    assert (o.consecutive_failures, o.interval, o.failure_percentage, o.request_volume) == (
        5, 10.0, None, 20
    )  # fmt: skip
    assert (o.base_ejection, o.max_ejection, o.max_ejection_percent) == (30.0, 300.0, 0.5)
    b = BreakerModel()
    assert (b.window, b.window_calls, b.minimum_calls, b.failure_rate, b.slow_call) == (
        10.0, None, 20, 0.5, None
    )  # fmt: skip
    assert (b.open_for, b.half_open_calls) == (15.0, 3)
    loc = LocalityModel()
    assert (loc.priority, loc.overprovisioning, loc.panic_threshold) == ((), 1.4, 0.5)
    r = RetryModel()
    assert (r.attempts, r.per_try_timeout, r.on, r.budget, r.min_retries) == (
        2, None, ("connect-failure", "reset", "timeout", "5xx"), 0.2, 3
    )  # fmt: skip
    assert (r.backoff.base, r.backoff.max, r.non_idempotent) == (0.025, 0.25, False)
    hd = HedgeModel()
    assert (hd.delay, hd.delay_percentile, hd.min_delay, hd.max_delay) == (0.05, None, 0.005, 1.0)
    assert (hd.max_extra, hd.budget) == (1, 0.1)
    a = AdmissionModel(max_concurrency=10)
    assert (a.queue, a.queue_timeout, a.priority_header, a.adaptive) == (
        0, 0.05, "x-tailguard-priority", False
    )  # fmt: skip
    p = PolicyModel.model_validate(policy())
    route = p.routes[0]
    assert (route.timeout, route.sticky, route.retries, route.hedging, route.admission) == (
        30.0, None, None, None, None
    )  # fmt: skip
    backend = p.backends["a"]
    assert (backend.protocol, backend.health, backend.outlier_detection) == ("http", None, None)
    assert backend.circuit_breaker is None
    assert backend.locality == LocalityModel()


def test_models_are_frozen_and_hashable() -> None:
    p = PolicyModel.model_validate(policy())
    q = PolicyModel.model_validate(policy())
    assert p == q
    assert hash(p) == hash(q)
    assert len({p, q}) == 1
    with pytest.raises(ValidationError):
        p.version = 1  # type: ignore[misc]
    assert isinstance(p.routes, tuple)
    assert isinstance(p.backends, FrozenMap)
    with pytest.raises(TypeError):
        p.backends["b"] = p.backends["a"]  # type: ignore[index]


def test_frozen_map() -> None:
    m = FrozenMap({"b": 1, "a": 2})
    assert list(m) == ["b", "a"]  # file order is kept
    assert m == {"a": 2, "b": 1}
    assert m == FrozenMap({"a": 2, "b": 1})
    assert hash(m) == hash(FrozenMap([("a", 2), ("b", 1)]))
    assert m != FrozenMap({"a": 2})
    assert m.get("c") is None
    assert len(m) == 2
    assert repr(m) == "FrozenMap({'b': 1, 'a': 2})"
    assert m.__eq__(3) is NotImplemented


def test_headers_and_methods_are_normalised() -> None:
    m = MatchModel.model_validate({"headers": {"X-Tenant": "Acme"}, "methods": ["post", "Get"]})
    assert dict(m.headers) == {"x-tenant": "Acme"}  # names lowercased, values exact
    assert m.methods == ("POST", "GET")
    assert hash(m) == hash(MatchModel.model_validate({"headers": {"x-tenant": "Acme"},
                                                     "methods": ["POST", "GET"]}))  # fmt: skip
    with pytest.raises(ValidationError) as e:
        MatchModel.model_validate({"headers": {"X-Count": 5}})
    assert e.value.errors()[0]["loc"] == ("headers", "X-Count")  # the key as written


def test_hedging_delay_is_one_key_two_attributes() -> None:
    fixed = HedgeModel.model_validate({"delay": "20ms"})
    assert (fixed.delay, fixed.delay_percentile) == (0.02, None)
    adaptive = HedgeModel(delay="p95")
    assert (adaptive.delay, adaptive.delay_percentile) == (None, 0.95)
    assert adaptive.model_dump(mode="json", by_alias=True)["delay"] == "p95"
    with pytest.raises(ValidationError):
        HedgeModel.model_validate({"delay_percentile": 0.95})


def test_rules_hold_for_models_built_in_python() -> None:
    with pytest.raises(ValidationError, match="must not be longer than the route's timeout"):
        RouteModel.model_validate(
            {"name": "r", "match": {"path": "/"}, "split": [{"backend": "a", "weight": 1}],
             "timeout": "1s", "retries": {"per_try_timeout": "2s"}}
        )  # fmt: skip
    with pytest.raises(ValidationError, match="backend 'b' is not defined in backends"):
        PolicyModel.model_validate(
            policy(routes=[{"name": "r", "match": {"path": "/"},
                            "split": [{"backend": "b", "weight": 1}]}])
        )  # fmt: skip
    with pytest.raises(ValidationError, match="must differ from listen"):
        GatewayModel.model_validate({"listen": "0.0.0.0:80", "admin_listen": "127.0.0.1:80"})
    GatewayModel.model_validate({"listen": ":0", "admin_listen": ":0"})  # port 0: both free
    GatewayModel.model_validate({"listen": "10.0.0.1:80", "admin_listen": "10.0.0.2:80"})
    with pytest.raises(ValidationError, match="required when store is redis"):
        StateModel(store="redis")
    with pytest.raises(ValidationError, match="set either window"):
        BreakerModel.model_validate({"window": "5s", "window_calls": 10})
    assert BreakerModel.model_validate({"window_calls": 10}).window_calls == 10
    with pytest.raises(ValidationError, match="listed twice"):
        BackendModel.model_validate({"endpoints": [{"url": "http://h:1"}, {"url": "http://h:1/"}]})


def test_split_weights() -> None:
    assert SplitModel(backend="a", weight=0).weight == 0
    assert SplitModel(backend="a", weight=2.5).weight == 2.5
    for bad in (-1, 101, True, "50"):
        with pytest.raises(ValidationError):
            SplitModel.model_validate({"backend": "a", "weight": bad})


def test_json_dump_is_a_valid_policy_again() -> None:
    text = """\
version: 1
gateway: {region: us, listen: ':8080', max_body: 1MiB}
backends:
  a:
    protocol: kserve-v2
    endpoints: [{url: http://10.0.0.1:8000, region: us, grpc: 10.0.0.1:8001}]
    health: {jitter: 5%}
    circuit_breaker: {window_calls: 50, slow_call: {duration: 800ms}}
routes:
  - name: r
    match: {model: m, headers: {X-A: b}}
    split: [{backend: a, weight: 100}]
    retries: {on: [5xx, 429]}
    hedging: {delay: p99.9}
"""
    p = load_policy_text(text)
    dumped = p.model_dump(mode="json", by_alias=True)
    assert dumped["gateway"]["listen"] == "0.0.0.0:8080"
    assert dumped["routes"][0]["hedging"]["delay"] == "p99.9"
    assert dumped["backends"]["a"]["health"]["jitter"] == "5%"
    assert PolicyModel.model_validate(dumped) == p


def test_cross_checks_tolerate_any_shape() -> None:
    data: Any
    for data in (
        None,
        [],
        {"routes": 5},
        {"routes": [5, {"split": 5}], "backends": []},
        {"backends": {"a": {"endpoints": [{"region": [1]}], "locality": 5}}},
        {"gateway": {"region": {}}, "backends": {"a": {"locality": {"priority": [1]}}}},
    ):
        assert policy_cross_checks(data) == []  # fmt: skip


def test_did_you_mean_ignores_case() -> None:
    assert did_you_mean("Retries", ["retries", "hedging"]) == " (did you mean 'retries'?)"
    assert did_you_mean("zzz", ["retries"]) == ""


def test_json_schema_for_editors() -> None:
    schema = policy_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["version", "backends", "routes"]
    defs = schema["$defs"]
    hedge = defs["HedgeModel"]["properties"]
    assert "delay_spec" not in hedge
    assert hedge["delay"]["default"] == "50ms"
    assert defs["RouteModel"]["properties"]["timeout"]["default"] == "30s"
    assert defs["RetryModel"]["properties"]["budget"]["default"] == "20%"
    assert defs["GatewayModel"]["properties"]["listen"]["default"] == "127.0.0.1:8080"
    assert defs["GatewayModel"]["properties"]["max_body"]["default"] == "4MiB"
    assert defs["BackendModel"]["properties"]["pool"]["default"]["connect_timeout"] == "1s"
    assert defs["RetryModel"]["properties"]["on"]["items"]["enum"] == [
        "connect-failure", "reset", "timeout", "5xx", "429"
    ]  # fmt: skip
    assert defs["BackendModel"]["additionalProperties"] is False
