"""Blue/green at the gateway: a route switched wholly to one backend, and back, on every replica."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.cli import build_parser
from gateway.ctl import ctl_main
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

INFER = "/v2/models/classifier/infer"

POLICY = """\
version: 1
state: {state}
backends:
  blue: {{protocol: kserve-v2, endpoints: [{{url: "{blue}"}}]}}
  green: {{protocol: kserve-v2, endpoints: [{{url: "{green}"}}]}}
  chat: {{protocol: openai, endpoints: [{{url: "{blue}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: blue, weight: 100}}]
    sticky: {{header: x-user}}
    timeout: 2s
"""


async def answered_by(http: aiohttp.ClientSession, gw: Gateway, n: int = 20) -> set[str]:
    assert gw.listening is not None
    seen = set()
    for k in range(n):
        headers = {"x-user": f"u{k}"}
        async with http.post(gw.listening.url + INFER, json=INFER_BODY, headers=headers) as r:
            assert r.status == 200
            seen.add(r.headers["x-tailguard-backend"])
    return seen


async def test_switch_and_back_on_one_gateway_is_audited_and_survives_a_reload(
    sims: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    blue, green = await sims(models=["classifier"]), await sims(models=["classifier"])
    text = POLICY.format(state="{store: memory}", blue=blue.url, green=green.url)
    policy, audit = tmp_path / "policy.yaml", tmp_path / "audit.jsonl"
    policy.write_text(text)
    gw = Gateway(
        policy, listen=("127.0.0.1", 0), admin_listen=("127.0.0.1", 0), audit_log=str(audit)
    )
    await gw.start()
    try:
        await switch_and_back(gw, http, text, audit)
    finally:
        await gw.stop()


async def switch_and_back(gw: Gateway, http: aiohttp.ClientSession, text: str, audit: Path) -> None:
    assert await answered_by(http, gw) == {"blue"}
    result = gw.switches.switch("classify", "green", "test")
    assert result["to"] == "green" and result["previous"] is None
    assert await answered_by(http, gw) == {"green"}  # sticky hashing is set aside too
    assert gw.metrics.route_switched.labels("classify", "green")._value.get() == 1
    # a reload that keeps the route and the backend keeps the switch
    assert (await gw.reload(text.replace("timeout: 2s", "timeout: 3s"), actor="test")).applied
    assert await answered_by(http, gw) == {"green"}
    gw.switches.switch("classify", None, "test")
    assert await answered_by(http, gw) == {"blue"}
    samples = gw.metrics.route_switched.collect()[0].samples
    assert samples == []  # the gauge is gone with the switch, not left at 0
    text_lines = await asyncio.to_thread(audit.read_text)
    entries = [json.loads(line) for line in text_lines.splitlines()]
    switches = [
        (e["actor"], e["to"], e["previous"]) for e in entries if e["event"] == "route-switch"
    ]
    assert switches == [("test", "green", None), ("test", None, "green")]


async def test_a_switch_is_refused_clearly(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    blue, green = await sims(models=["classifier"]), await sims(models=["classifier"])
    gw = await gateway(POLICY.format(state="{store: memory}", blue=blue.url, green=green.url))
    assert gw.listening is not None
    admin = gw.listening.admin_url
    cases = [
        ("classify", {"to": "purple"}, 400, "backend 'purple' is not defined"),
        ("classify", {"to": "chat"}, 400, "speaks openai"),
        ("nope", {"to": "green"}, 404, "no route named 'nope'"),
        ("classify", {}, 400, '{"to": BACKEND}'),
    ]
    for route, body, status, message in cases:
        async with http.post(f"{admin}/admin/routes/{route}/switch", json=body) as r:
            assert r.status == status, await r.text()
            assert message in (await r.json())["error"]["message"]
    assert await answered_by(http, gw, 5) == {"blue"}


@pytest.mark.redis
async def test_every_replica_follows_a_switch_within_two_seconds(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession, redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="tailguard.audit")
    blue, green = await sims(models=["classifier"]), await sims(models=["classifier"])
    state = f'{{store: redis, url: "{redis_url}", key_prefix: "sw{os.urandom(3).hex()}:", timeout: 100ms}}'
    text = POLICY.format(state=state, blue=blue.url, green=green.url)
    replicas = [await gateway(text) for _ in range(3)]
    asked = replicas[1]
    assert asked.listening is not None
    admin = asked.listening.admin_url

    async def all_follow(target: str | None) -> float:
        t0 = time.monotonic()
        while any(r.snapshot.routes[0].switched_to != target for r in replicas):
            assert time.monotonic() - t0 < 2.0, [r.snapshot.routes[0].switched_to for r in replicas]
            await asyncio.sleep(0.02)
        return time.monotonic() - t0

    # through the CLI, as an operator would
    code, said = await asyncio.to_thread(
        ctl, ["--admin", admin, "route", "switch", "classify", "--to", "green"]
    )
    assert code == 0
    assert said == "route classify now sends all traffic to backend green\n"
    await all_follow("green")
    for r in replicas:
        assert await answered_by(http, r, 5) == {"green"}
    code, said = await asyncio.to_thread(
        ctl, ["--admin", admin, "route", "switch", "classify", "--back"]
    )
    assert (code, said) == (0, "route classify now sends all traffic to its policy split\n")
    await all_follow(None)
    for r in replicas:
        assert await answered_by(http, r, 5) == {"blue"}
    # the asked replica audited its switches; the two others, that they followed them
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tailguard.audit"]
    kinds = [(e["event"], e["to"]) for e in events if e["event"].startswith("route-switch")]
    assert kinds.count(("route-switch", "green")) == 1
    assert kinds.count(("route-switch-followed", "green")) == 2
    assert kinds.count(("route-switch-followed", None)) == 2


def ctl(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = ctl_main(build_parser().parse_args(["ctl", *argv]), env={}, out=out)
    return code, out.getvalue()
