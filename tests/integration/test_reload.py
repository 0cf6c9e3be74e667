"""Hot reload under load: no request fails, bad policies are refused, the last good one serves."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import aiohttp

from gateway.app import Gateway
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

POLICY = """\
version: 1
backends:
  clf-a:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
  clf-b:
    protocol: kserve-v2
    endpoints: [{{url: "{b}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split:
      - {{backend: clf-a, weight: {wa}}}
      - {{backend: clf-b, weight: {wb}}}
    timeout: {timeout}
"""

# Each one is wrong in a different place; the error must name the line.
INVALID = [
    ("split:\n      - {{backend: clf-a, weight: {wa}}}", "split:\n      - {{backend: nope, weight: 1}}"),
    ("timeout: {timeout}", "timeout: 5"),
    ("protocol: kserve-v2\n    endpoints: [{{url: \"{b}\"}}]", "protocol: kserve-v9\n    endpoints: [{{url: \"{b}\"}}]"),
    ("    timeout: {timeout}", "    timeout: {timeout}\n    surprise: true"),
    ("version: 1", "version: 1\nversion: 1"),
]  # fmt: skip

LINE_ISSUE = re.compile(r":\d+:\d+: ")


def valid_policy(a: str, b: str, i: int) -> str:
    return POLICY.format(a=a, b=b, wa=100 - 10 * i, wb=10 * i, timeout=f"{2000 + i}ms")


def invalid_policy(a: str, b: str, i: int) -> str:
    old, new = INVALID[i % len(INVALID)]
    template = POLICY.replace(old, new)
    assert template != POLICY
    return template.format(a=a, b=b, wa=50, wb=50, timeout="2s")


class Load:
    """Steady client traffic until stopped; keeps every status (0 = the client saw an error)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, concurrency: int = 8) -> None:
        self.statuses: list[int] = []
        self._http = http
        self._url = f"{url}/v2/models/classifier/infer"
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(concurrency)]

    async def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                async with self._http.post(self._url, json=INFER_BODY) as r:
                    await r.read()
                    self.statuses.append(r.status)
            except aiohttp.ClientError:
                self.statuses.append(0)

    async def stop(self) -> list[int]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.statuses


def admin(gw: Gateway) -> str:
    assert gw.listening is not None
    return gw.listening.admin_url


async def served_sha(http: aiohttp.ClientSession, gw: Gateway) -> str:
    async with http.get(f"{admin(gw)}/admin/status") as r:
        assert r.status == 200
        return str((await r.json())["policy"]["sha256"])


async def test_ten_reloads_under_load_alternating_valid_and_invalid(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(name="a")
    b = await sims(name="b")
    gw = await gateway(valid_policy(a.url, b.url, 0))
    assert gw.listening is not None
    last_good = hashlib.sha256(valid_policy(a.url, b.url, 0).encode()).hexdigest()
    assert await served_sha(http, gw) == last_good

    load = Load(http, gw.listening.url)
    await asyncio.sleep(0.1)
    for i in range(10):
        before = len(load.statuses)
        if i % 2 == 0:
            text = valid_policy(a.url, b.url, i // 2 + 1)
            async with http.post(f"{admin(gw)}/admin/policy?persist=false", data=text) as r:
                result = await r.json()
                assert r.status == 200, result
            assert result["applied"] is True and result["issues"] == []
            assert "route classify changed" in result["changes"]
            last_good = hashlib.sha256(text.encode()).hexdigest()
            assert result["sha256"] == last_good
        else:
            text = invalid_policy(a.url, b.url, i // 2)
            async with http.post(f"{admin(gw)}/admin/policy?persist=false", data=text) as r:
                result = await r.json()
                assert r.status == 422, result
            assert result["applied"] is False
            assert result["issues"], result
            for issue in result["issues"]:
                assert issue.startswith(str(gw.policy_path)), issue
                assert LINE_ISSUE.search(issue), issue
        assert await served_sha(http, gw) == last_good
        assert gw.snapshot.sha256 == last_good
        # traffic kept flowing across this reload
        for _ in range(200):
            if len(load.statuses) >= before + 20:
                break
            await asyncio.sleep(0.01)
    statuses = await load.stop()

    assert len(statuses) > 200
    assert statuses.count(200) == len(statuses), sorted(set(statuses))
    # the last valid policy is the one that routes: a fifth of the traffic goes to clf-b now
    assert gw.snapshot.routes[0].timeout == 2.005
    assert gw.metrics.reloads.labels("applied")._value.get() == 5
    assert gw.metrics.reloads.labels("rejected")._value.get() == 5
    # persist=false: the file on disk is still the first policy, and the API says they differ
    assert gw.policy_path.read_text() == valid_policy(a.url, b.url, 0)
    async with http.get(f"{admin(gw)}/admin/policy") as r:
        got = await r.json()
    assert got["sha256"] == last_good == hashlib.sha256(got["text"].encode()).hexdigest()
    assert got["file_sha256"] == hashlib.sha256(valid_policy(a.url, b.url, 0).encode()).hexdigest()


async def test_file_reload_keeps_the_last_good_policy(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(name="a")
    b = await sims(name="b")
    gw = await gateway(valid_policy(a.url, b.url, 0))
    good = gw.snapshot.sha256
    path: Path = gw.policy_path

    await asyncio.to_thread(path.write_text, invalid_policy(a.url, b.url, 1))
    async with http.post(f"{admin(gw)}/admin/reload") as r:
        result = await r.json()
        assert r.status == 422
    assert all(i.startswith(f"{path}:") and LINE_ISSUE.search(i) for i in result["issues"])
    assert gw.snapshot.sha256 == good

    await asyncio.to_thread(path.write_text, valid_policy(a.url, b.url, 3))
    async with http.post(f"{admin(gw)}/admin/reload") as r:
        result = await r.json()
        assert r.status == 200, result
    assert result["applied"] and result["previous_sha256"] == good
    on_disk = await asyncio.to_thread(path.read_bytes)
    assert gw.snapshot.sha256 == hashlib.sha256(on_disk).hexdigest()


async def test_dry_run_and_validate_change_nothing(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(name="a")
    b = await sims(name="b")
    gw = await gateway(valid_policy(a.url, b.url, 0))
    good = gw.snapshot.sha256
    text = valid_policy(a.url, b.url, 2)
    for path in ("/admin/policy?dry_run=true", "/admin/policy/validate"):
        async with http.post(f"{admin(gw)}{path}", data=text) as r:
            result = await r.json()
            assert r.status == 200, result
        assert result["dry_run"] is True and result["applied"] is False
        assert result["changes"] == ["route classify changed"]
        assert gw.snapshot.sha256 == good
    async with http.post(
        f"{admin(gw)}/admin/policy/validate", data=invalid_policy(a.url, b.url, 0)
    ) as r:
        assert r.status == 422
        assert "split" in "".join((await r.json())["issues"])
    assert gw.snapshot.sha256 == good
    assert gw.metrics.reloads.labels("rejected")._value.get() == 0


async def test_apply_persists_to_the_policy_file(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(name="a")
    b = await sims(name="b")
    gw = await gateway(valid_policy(a.url, b.url, 0))
    text = valid_policy(a.url, b.url, 4)
    async with http.post(f"{admin(gw)}/admin/policy", data=text) as r:
        assert r.status == 200
    assert gw.policy_path.read_text() == text
    async with http.get(f"{admin(gw)}/admin/policy") as r:
        got = await r.json()
    assert got["text"] == text and got["sha256"] == gw.snapshot.sha256 == got["file_sha256"]


async def test_a_reload_that_removes_an_endpoint_closes_its_pool(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(name="a")
    b = await sims(name="b")
    gw = await gateway(valid_policy(a.url, b.url, 5))
    assert gw.listening is not None
    for _ in range(20):  # traffic opens a pool to each endpoint
        async with http.post(
            f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY
        ) as r:
            assert r.status == 200
    assert gw.transports.endpoint_ids() == set(gw.snapshot.endpoint_states())
    only_a = (
        f'version: 1\nbackends:\n  clf-a: {{protocol: kserve-v2, endpoints: [{{url: "{a.url}"}}]}}\n'
        "routes:\n  - {name: classify, match: {model: classifier}, split: [{backend: clf-a, weight: 100}]}\n"
    )
    result = await gw.reload(only_a, actor="test")
    assert result.applied, result.issues
    for _ in range(50):
        if gw.transports.endpoint_ids() <= set(gw.snapshot.endpoint_states()):
            break
        await asyncio.sleep(0.01)
    assert all(b.url not in eid for eid in gw.transports.endpoint_ids())
