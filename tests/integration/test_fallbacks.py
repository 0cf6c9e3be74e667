"""Fallbacks over real sockets: stale cache, rules, backup backends, fresh hits, reserved time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

ROOT = Path(__file__).resolve().parents[2]
KSERVE_RULES = ROOT / "fallbacks" / "kserve-v2.yaml"
INFER = "/v2/models/classifier/infer"


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: Any = INFER_BODY,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    async with http.post(url + INFER, json=body, headers=headers or {}) as r:
        data = await r.json(content_type=None)
        return r.status, {k.lower(): v for k, v in r.headers.items()}, data


CACHED = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
    cache: {{ttl: {ttl}, stale_if_error: 1h, ignore_fields: [id], methods: [POST]}}
    fallback:
      - cache: true
"""


async def test_stale_answers_are_served_when_every_backend_is_down(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(CACHED.format(a=sim.url, ttl="0s"))
    assert gw.listening is not None
    url = gw.listening.url
    status, headers, fresh = await post(http, url, {**INFER_BODY, "id": "first"})
    assert status == 200 and "x-tailguard-fallback" not in headers
    await asyncio.sleep(0.01)  # the cache write is off the request path

    await sim.die()
    # the same request (another id, which the key ignores) gets the stored answer
    status, headers, stale = await post(http, url, {**INFER_BODY, "id": "second"})
    assert status == 200
    assert headers["x-tailguard-fallback"] == "cache"
    assert int(headers["age"]) >= 0
    assert stale == fresh
    assert "x-tailguard-backend" not in headers

    # a request never answered before has nothing to fall back on: the error says what was tried
    other = {**INFER_BODY, "inputs": [{**INFER_BODY["inputs"][0], "data": [9, 9, 9, 9]}]}  # type: ignore[dict-item]
    status, headers, err = await post(http, url, other)
    assert status in (502, 503)
    message = err["error"]
    assert "primary:" in message and "cache: no cached answer" in message
    m = gw.metrics
    assert m.fallbacks.labels("classify", "cache")._value.get() == 1
    assert m.fallback_failures.labels("classify", "cache")._value.get() == 1


async def test_fresh_answers_come_from_the_cache_without_asking_the_backend(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(CACHED.format(a=sim.url, ttl="1h"))
    assert gw.listening is not None
    first = await post(http, gw.listening.url)
    await asyncio.sleep(0.01)
    before = sim.stats.by_kind["infer"]
    hits = [await post(http, gw.listening.url) for _ in range(5)]
    assert sim.stats.by_kind["infer"] == before  # none reached the backend
    for status, headers, body in hits:
        assert status == 200 and headers["x-tailguard-cache"] == "hit" and body == first[2]
    # a request outside the cache's methods is never cached
    async with http.get(gw.listening.url + "/v2/models/classifier") as r:
        assert r.status == 200 and "x-tailguard-cache" not in r.headers


RULES = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
    fallback:
      - rules: {rules}
"""


async def test_a_rules_fallback_answers_in_kserve_v2_that_tritonclient_parses(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    import tritonclient.http as triton

    sim = await sims(models=["classifier"])
    gw = await gateway(RULES.format(a=sim.url, rules=KSERVE_RULES))
    await sim.die()
    assert gw.listening is not None
    url = gw.listening.url.removeprefix("http://")

    def call() -> tuple[np.ndarray, str | None]:
        client = triton.InferenceServerClient(url=url)
        try:
            inp = triton.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32), binary_data=False)
            result = client.infer("classifier", [inp], request_id="abc-1")
            return result.as_numpy("OUTPUT0"), result.get_response().get("id")
        finally:
            client.close()

    out, rid = await asyncio.to_thread(call)
    assert out is not None and out.dtype == np.float32
    assert rid == "abc-1"  # the request's id substituted into the answer
    assert gw.metrics.fallbacks.labels("classify", "rules")._value.get() == 1


BACKUP = """
version: 1
backends:
  big:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}, {{url: "{b}"}}]
    circuit_breaker: {{window_calls: 10, minimum_calls: 4, failure_rate: 50%, open_for: 30s}}
  small:
    protocol: kserve-v2
    endpoints: [{{url: "{c}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: big, weight: 100}}]
    timeout: 2s
    retries: {{attempts: 2, non_idempotent: true, backoff: {{base: 1ms, max: 2ms}}}}
    fallback:
      - backend: small
        timeout: 500ms
"""


async def test_a_backup_backend_answers_when_every_breaker_is_open(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = await sims(models=["classifier"]), await sims(models=["classifier"])
    c = await sims(models=["classifier"])
    for s in (a, b):
        s.faults = s.faults.replace(error_rate=1.0, error_status=503)
    gw = await gateway(BACKUP.format(a=a.url, b=b.url, c=c.url))
    assert gw.listening is not None
    results = [await post(http, gw.listening.url) for _ in range(20)]
    assert all(status == 200 for status, _, _ in results)
    assert all(h["x-tailguard-fallback"] == "backend" for _, h, _ in results)
    assert all(h["x-tailguard-backend"] == "small" for _, h, _ in results)
    # once both breakers are open the primary is not even tried
    primary_calls = a.stats.by_kind["infer"] + b.stats.by_kind["infer"]
    more = [await post(http, gw.listening.url) for _ in range(10)]
    assert all(status == 200 for status, _, _ in more)
    assert a.stats.by_kind["infer"] + b.stats.by_kind["infer"] == primary_calls
    assert c.stats.by_kind["infer"] == 30


async def test_the_backup_gets_its_reserved_time_when_the_primary_hangs(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b = await sims(models=["classifier"]), await sims(models=["classifier"])
    c = await sims(models=["classifier"])
    for s in (a, b):
        s.faults = s.faults.replace(hang_rate=1.0)
    gw = await gateway(BACKUP.format(a=a.url, b=b.url, c=c.url))
    assert gw.listening is not None
    status, headers, _ = await post(http, gw.listening.url)
    # the route has 2s; the primary got 1.5s and was cut, the backup its 500ms
    assert status == 200 and headers["x-tailguard-fallback"] == "backend"
    for s in (a, b):
        s.faults = s.faults.replace(hang_rate=0.0)


async def test_the_final_error_lists_every_step(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a = await sims(models=["classifier"])
    c = await sims(models=["classifier"])
    rules = tmp_path / "none.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - name: only-chat\n    match: {path: /v1/chat/completions}\n"
        "    respond: {body: {}}\n"
    )
    policy = f"""
version: 1
backends:
  big: {{protocol: kserve-v2, endpoints: [{{url: "{a.url}"}}]}}
  small: {{protocol: kserve-v2, endpoints: [{{url: "{c.url}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: big, weight: 100}}]
    timeout: 2s
    fallback:
      - {{backend: small, timeout: 300ms}}
      - {{rules: {rules}}}
"""
    gw = await gateway(policy)
    await a.die()
    await c.die()
    assert gw.listening is not None
    status, _, err = await post(http, gw.listening.url)
    assert status == 502
    message = err["error"]
    assert message.startswith("primary: ")
    assert "small: " in message and "rules: no rule matched" in message


async def test_one_tenants_cached_answers_are_never_served_to_another(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    from gateway.auth import hash_key

    sim = await sims(models=["classifier"])
    gw = await gateway(
        f"""
version: 1
auth:
  keys:
    - {{id: a, tenant: acme, hash: "{hash_key("key-of-acme-0123456789abcdef")}"}}
    - {{id: b, tenant: globex, hash: "{hash_key("key-of-globex-0123456789abcdef")}"}}
backends:
  clf: {{protocol: kserve-v2, endpoints: [{{url: "{sim.url}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    cache: {{ttl: 1h, ignore_fields: [id], methods: [POST]}}
"""
    )
    assert gw.listening is not None
    acme = {"x-api-key": "key-of-acme-0123456789abcdef"}
    globex = {"x-api-key": "key-of-globex-0123456789abcdef"}
    await post(http, gw.listening.url, headers=acme)
    await asyncio.sleep(0.01)
    _, hit, _ = await post(http, gw.listening.url, headers=acme)
    assert hit.get("x-tailguard-cache") == "hit"
    before = sim.stats.by_kind["infer"]
    status, other, _ = await post(http, gw.listening.url, headers=globex)
    assert status == 200 and "x-tailguard-cache" not in other
    assert sim.stats.by_kind["infer"] == before + 1
