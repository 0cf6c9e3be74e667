"""Decision traces on demand: asked by an allowed caller, fetched from the admin API."""

from __future__ import annotations

import hashlib

import aiohttp

from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory


def sha(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


POLICY = """
version: 1
auth:
  keys:
    - {id: k1, tenant: acme, hash: "ACME"}
    - {id: k2, tenant: other, hash: "OTHER"}
admin:
  tokens: [{id: ops, hash: "OPS"}]
telemetry:
  explain: {tenants: [acme], keep: 2}
backends:
  clf:
    protocol: kserve-v2
    # a, which fails, almost always goes first; the retry goes to b (a was tried)
    endpoints: [{url: "URL_A", weight: 100}, {url: "URL_B", weight: 1}]
routes:
  - name: classify
    match: {model: classifier}
    split: [{backend: clf, weight: 100}]
    retries: {attempts: 3, on: [5xx], backoff: {base: 1ms, max: 2ms}}
    idempotent: true
"""


def policy(a: str, b: str) -> str:
    text = POLICY
    for k, v in (
        ("ACME", sha("acme-key")),
        ("OTHER", sha("other-key")),
        ("OPS", sha("ops-token")),
        ("URL_A", a),
        ("URL_B", b),
    ):
        text = text.replace(k, v)
    return text


async def test_an_allowed_caller_gets_the_decisions_of_its_request(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    a = await sims(models=["classifier"], name="a")
    b = await sims(models=["classifier"], name="b")
    a.faults = a.faults.replace(error_rate=1.0, error_status=503)
    gw = await gateway(policy(a.url, b.url))
    assert gw.listening is not None
    infer = f"{gw.listening.url}/v2/models/classifier/infer"
    admin = {"authorization": "Bearer ops-token"}

    async def ask(key: str, **extra: str) -> tuple[int, dict[str, str]]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(infer, json=INFER_BODY, headers={"x-api-key": key, **extra}) as r,
        ):
            await r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}

    async def fetch(rid: str, headers: dict[str, str] = admin) -> tuple[int, dict]:  # type: ignore[type-arg]
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{gw.listening.admin_url}/admin/explain/{rid}",
                headers=headers,  # type: ignore[union-attr]
            ) as r,
        ):
            return r.status, await r.json()

    # until a goes first (all but certain with its weight): its 503 is retried on b
    for _ in range(10):
        status, headers = await ask("acme-key", **{"x-tailguard-explain": "1"})
        assert status == 200
        if headers["x-tailguard-attempts"] == "2":
            break
    assert headers["x-tailguard-attempts"] == "2"
    rid = headers["x-request-id"]
    assert headers["x-tailguard-explain"] == f"/admin/explain/{rid}"
    code, trace = await fetch(rid)
    assert code == 200
    assert trace["route"] == "classify" and trace["tenant"] == "acme" and trace["status"] == 200
    kinds = [d["decision"] for d in trace["decisions"]]
    assert kinds[:2] == ["caller", "route"]
    picks = [d for d in trace["decisions"] if d["decision"] == "attempt"]
    assert [p["endpoint"] for p in picks] == [a.url, b.url]
    assert [p["kind"] for p in picks] == ["first", "retry"]
    assert {c["endpoint"] for c in picks[0]["candidates"]} == {a.url, b.url}
    # no breaker in this policy; each candidate says so, with its load
    assert all(c["breaker"] == "none" and c["outstanding"] >= 0 for c in picks[0]["candidates"])
    ends = [d for d in trace["decisions"] if d["decision"] == "attempt_end"]
    assert [(e["outcome"], e["status"]) for e in ends] == [("5xx", 503), ("success", 200)]
    (retry,) = [d for d in trace["decisions"] if d["decision"] == "retry"]
    assert retry["retry"] is True and isinstance(retry["budget"], float)
    assert trace["decisions"][-1] == {"decision": "answer", "winner_index": 1}
    # the trace is the admin API's: no credentials, no trace
    assert (await fetch(rid, {}))[0] == 401

    # a tenant not listed asks and gets nothing; with the admin token it may
    status, headers = await ask("other-key", **{"x-tailguard-explain": "1"})
    assert status == 200 and "x-tailguard-explain" not in headers
    assert (await fetch(headers["x-request-id"]))[0] == 404
    status, headers = await ask(
        "other-key", **{"x-tailguard-explain": "1", "x-tailguard-explain-token": "ops-token"}
    )
    assert "x-tailguard-explain" in headers
    assert (await fetch(headers["x-request-id"]))[0] == 200
    status, headers = await ask(
        "other-key", **{"x-tailguard-explain": "1", "x-tailguard-explain-token": "guess"}
    )
    assert "x-tailguard-explain" not in headers
    # not asked: nothing kept
    status, headers = await ask("acme-key")
    assert "x-tailguard-explain" not in headers
    assert (await fetch(headers["x-request-id"]))[0] == 404
    # bounded: two kept, the oldest goes first
    assert (await fetch(rid))[0] == 200
    status, headers = await ask("acme-key", **{"x-tailguard-explain": "1"})
    assert (await fetch(headers["x-request-id"]))[0] == 200
    assert (await fetch(rid))[0] == 404
