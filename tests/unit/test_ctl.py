"""The admin client's pure parts: the status tables, reload summaries, the gateway's messages."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.ctl import (
    AdminClientConfig,
    error_message,
    render_reload,
    render_status,
    render_table,
)


def endpoint(url: str, **over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "url": url,
        "region": "us-east",
        "usable": True,
        "health": "healthy",
        "breaker": "closed",
        "ejected": False,
        "suspect": False,
        "draining": False,
        "in_flight": 0,
        "p50_ms": 4.26,
        "p99_ms": 12.0,
    }
    e.update(over)
    return e


STATUS: dict[str, Any] = {
    "policy": {"source": "/etc/tailguard/policy.yaml", "sha256": "0123456789abcdef" * 4},
    "ready": True,
    "region": "us-east",
    "store": {"kind": "redis", "available": False},
    "routes": [
        {
            "name": "classify",
            "timeout_s": 2.0,
            "split": [
                {"backend": "clf-v1", "weight": 75.0},
                {"backend": "clf-v2", "weight": 25.0},
            ],
            "canary": {
                "backend": "clf-v2",
                "phase": "progressing",
                "weight": 25.0,
                "step": 1,
                "failed_checks": 1,
            },
            "fallback": ["cache", "rules"],
            "rate_limit": None,
        },
        {
            "name": "chat",
            "timeout_s": 30.0,
            "split": [{"backend": "llm", "weight": 100.0}],
            "canary": None,
            "fallback": [],
            "rate_limit": None,
        },
    ],
    "backends": [
        {
            "name": "clf-v1",
            "protocol": "kserve-v2",
            "endpoints": [
                endpoint("http://10.0.0.1:8000", in_flight=7, grpc="10.0.0.1:8001"),
                endpoint(
                    "http://10.1.0.1:8000",
                    region="eu-west",
                    usable=False,
                    health="unhealthy",
                    breaker="open",
                    ejected=True,
                    p50_ms=None,
                    p99_ms=None,
                ),
                endpoint("http://10.0.0.2:8000", usable=False, draining=True, ejected=True),
            ],
        },
        {
            "name": "clf-v2",
            "protocol": "kserve-v2",
            "endpoints": [endpoint("grpc://10.0.0.3:8001", grpc="10.0.0.3:8001")],
        },
        {"name": "llm", "protocol": "openai", "endpoints": []},
    ],
    "canary_decisions": [
        {"route": "classify", "action": "promote-step", "reason": "passed; next step: 5% -> 25%"},
    ],
}


def rows(text: str, first: str) -> list[list[str]]:
    """The table that starts with the header whose first column is `first`, split in cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first + " "))
    out = []
    for line in lines[start:]:
        if not line.strip():
            break
        out.append(line.split("  "))
    return [[c.strip() for c in r if c.strip()] for r in out]


def test_header_line_says_what_runs_and_whether_state_is_shared() -> None:
    first = render_status(STATUS).splitlines()[0]
    assert first == (
        "policy /etc/tailguard/policy.yaml (0123456789ab)  ready yes  region us-east  "
        "store redis (unavailable: local state)"
    )
    available = {**STATUS, "store": {"kind": "memory", "available": True}, "ready": False}
    assert (
        render_status(available).splitlines()[0].endswith("ready no  region us-east  store memory")
    )


def test_routes_table_shows_split_canary_weight_and_fallbacks() -> None:
    table = rows(render_status(STATUS), "ROUTE")
    assert table == [
        ["ROUTE", "SPLIT", "CANARY", "FALLBACK", "TIMEOUT s"],
        ["classify", "clf-v1 75%, clf-v2 25%", "clf-v2 25% progressing (1 failed checks)",
         "cache, rules", "2"],
        ["chat", "llm 100%", "-", "-", "30"],
    ]  # fmt: skip


def test_endpoints_table_shows_health_breaker_ejection_load_and_latency() -> None:
    table = rows(render_status(STATUS), "BACKEND")
    assert table[0] == [
        "BACKEND", "ENDPOINT", "GRPC", "REGION", "STATE", "HEALTH", "BREAKER", "EJECTED",
        "IN-FLIGHT", "P50 ms", "P99 ms",
    ]  # fmt: skip
    assert table[1:] == [
        ["clf-v1", "http://10.0.0.1:8000", "10.0.0.1:8001", "us-east", "serving", "healthy",
         "closed", "no", "7", "4.3", "12.0"],
        ["clf-v1", "http://10.1.0.1:8000", "-", "eu-west", "ejected", "unhealthy", "open", "yes",
         "0", "-", "-"],
        # draining is what the operator did, so it is named before an ejection
        ["clf-v1", "http://10.0.0.2:8000", "-", "us-east", "draining", "healthy", "closed", "yes",
         "0", "4.3", "12.0"],
        # an endpoint known by its gRPC address alone
        ["clf-v2", "grpc://10.0.0.3:8001", "10.0.0.3:8001", "us-east", "serving", "healthy",
         "closed", "no", "0", "4.3", "12.0"],
    ]  # fmt: skip


def test_columns_line_up() -> None:
    lines = render_status(STATUS).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("BACKEND "))
    table = lines[start : start + 5]
    for header in ("ENDPOINT", "GRPC", "STATE", "IN-FLIGHT", "P99 ms"):
        col = table[0].index(header)
        for line in table[1:]:
            assert line[col - 2 : col] == "  " and line[col] != " ", (header, line)


def test_recent_canary_decisions_are_listed() -> None:
    text = render_status(STATUS)
    assert text.endswith(
        "recent canary decisions:\n  classify: promote-step: passed; next step: 5% -> 25%"
    )
    assert "recent canary decisions" not in render_status({**STATUS, "canary_decisions": []})


def test_empty_and_partial_answers_still_render() -> None:
    text = render_status({})
    assert "no routes" in text and "no endpoints" in text
    assert text.splitlines()[0].startswith("policy ? (?)  ready no")


def test_render_table_pads_and_strips() -> None:
    assert render_table(("A", "LONG"), [("xyz", None), ("x", True)]) == (
        "A    LONG\nxyz  -\nx    yes"
    )


def test_reload_summaries() -> None:
    base = {"sha256": "f" * 64, "changes": ["route classify changed"], "issues": []}
    assert render_reload({**base, "applied": True, "dry_run": False}) == (
        "policy ffffffffffff applied: route classify changed"
    )
    assert render_reload({**base, "applied": False, "dry_run": True, "changes": []}) == (
        "policy ffffffffffff is valid (no changes); nothing applied (dry run)"
    )


def test_error_message_prefers_the_gateways_own_words() -> None:
    issues = ["p.yaml:8:30: routes[0].split[0].weight: must be at most 100", "p.yaml:9:1: x"]
    assert error_message(422, {"issues": issues, "applied": False}) == "\n".join(issues)
    body = {"error": {"code": "unauthorized", "message": "admin credentials required"}}
    assert error_message(401, body) == "admin credentials required (HTTP 401)"
    assert error_message(502, {"text": "<html>Bad Gateway</html>\n"}) == (
        "HTTP 502: <html>Bad Gateway</html>"
    )
    assert error_message(500, {}) == "HTTP 500"


@pytest.mark.parametrize("url", ["127.0.0.1:9090", "ftp://x", "http://"])
def test_client_config_refuses_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        AdminClientConfig(url)


def test_client_config_refuses_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        AdminClientConfig("http://127.0.0.1:9090", timeout=0)


SLO_STATE: dict[str, Any] = {
    "slos": [
        {
            "name": "classify-availability", "routes": ["classify"], "kind": "availability",
            "objective": 0.999, "budget_remaining": 0.958, "fast_burn": True, "severity": "page",
            "windows": [
                {"window": w, "burn_rate": r}
                for w, r in (("5m", 30.0), ("30m", 30.0), ("1h", 30.0), ("2h", 15.0),
                             ("6h", 5.0), ("1d", 1.25), ("3d", 0.42))
            ],
        },
        {
            "name": "classify-latency", "routes": ["classify"], "kind": "latency",
            "objective": 0.99, "budget_remaining": 1.0, "fast_burn": False, "severity": None,
            "windows": [{"window": "5m", "burn_rate": None}],
        },
    ],
    "routes": [
        {"route": "classify", "burning": ["classify-availability"], "freeze_canary": True,
         "rollback_canary": False, "shed_priority": 0, "overridden": False,
         "reason": "SLO classify-availability burns 30.0x over 1h"},
    ],
}  # fmt: skip


def test_slo_table_shows_budget_burn_rates_and_the_policy_at_work() -> None:
    from gateway.ctl import render_slos

    text = render_slos(SLO_STATE)
    avail = rows(text, "classify-availability")[0]
    assert avail[1:4] == ["classify", "availability 99.9%", "95.8%"]
    assert avail[4:8] == ["30.0x", "30.0x", "5.0x", "0.4x"]
    assert avail[8:] == ["▇▇▇▆▄▃▁", "FAST BURN (page)"]
    latency = rows(text, "classify-latency")[0]
    assert latency[4] == "-" and latency[-1] == "ok"
    assert text.endswith(
        "error-budget policy:\n  classify: canary frozen, shedding priority <= 0: "
        "SLO classify-availability burns 30.0x over 1h"
    )
    assert render_slos({}) == "no SLOs"
    # inside `tailguard status`, after the endpoints
    assert render_status({**STATUS, "slo": SLO_STATE}).count("classify-availability") == 2


def test_sparkline_levels() -> None:
    from gateway.ctl import burn_sparkline

    rates = [None, 0.1, 0.9, 2, 5, 10, 20, 50, 1000]
    assert burn_sparkline([{"burn_rate": r} for r in rates]) == "·▁▂▃▄▅▆▇█"


def test_the_last_canary_verdict_shows_with_its_reason_and_time() -> None:
    route = STATUS["routes"][0]
    last = {"verdict": "fail", "action": "hold", "reason": "canary error rate 9% > 1%",
            "time": 1_700_000_000.0}  # fmt: skip
    status = {
        **STATUS,
        "routes": [{**route, "canary": {**route["canary"], "last_verdict": last}}],
    }
    text = render_status(status)
    table = rows(text, "ROUTE")
    assert table[1][2] == "clf-v2 25% progressing (1 failed checks) last fail"
    assert "last canary verdicts:\n  classify: fail at 22:13:20Z: canary error rate 9% > 1%" in text


def test_recent_state_changes_are_listed_newest_last() -> None:
    changes = [
        {"time": 1_700_000_000.0 + i, "kind": "health", "what": f"change {i}"} for i in range(12)
    ]
    text = render_status({**STATUS, "recent_changes": changes})
    listed = text.split("recent state changes:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert listed[0] == "  22:13:22Z change 2" and listed[-1] == "  22:13:31Z change 11"
    assert len(listed) == 10
    assert "recent state changes" not in render_status({**STATUS, "recent_changes": []})
