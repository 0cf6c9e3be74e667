"""A gateway watching a policy mounted from a Kubernetes ConfigMap reloads when the kubelet swaps it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from gateway.app import Gateway
from tests.integration.conftest import INFER_BODY, SimFactory
from tests.integration.test_sim import eventually
from tests.unit.control.test_reloader import ConfigMapVolume

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
    split: [{{backend: {backend}, weight: 100}}]
"""


async def test_configmap_swap_reloads_the_policy(
    tmp_path: Path, sims: SimFactory, http: aiohttp.ClientSession
) -> None:
    a, b = await sims(), await sims()
    vol = ConfigMapVolume(tmp_path)
    vol.create({"policy.yaml": POLICY.format(a=a.url, b=b.url, backend="clf-a")})
    gw = Gateway(
        tmp_path / "policy.yaml",
        listen=("127.0.0.1", 0),
        admin_listen=("127.0.0.1", 0),
        watch=True,
    )
    where = await gw.start()
    try:

        async def answered_by() -> str:
            url = f"{where.url}/v2/models/classifier/infer"
            async with http.post(url, json=INFER_BODY) as r:
                assert r.status == 200
                return r.headers["x-tailguard-backend"]

        assert await answered_by() == "clf-a"
        vol.update({"policy.yaml": POLICY.format(a=a.url, b=b.url, backend="clf-b")})
        backends: list[str] = []
        async with asyncio.timeout(10):
            while not backends or backends[-1] != "clf-b":
                backends.append(await answered_by())
        # a broken push keeps the last good policy serving
        rejected = gw.metrics.reloads.labels("rejected")
        vol.update({"policy.yaml": "version: 1\nroutes: [\n"})
        await eventually(lambda: rejected._value.get() >= 1, timeout=10)
        assert await answered_by() == "clf-b"
    finally:
        await gw.stop()
