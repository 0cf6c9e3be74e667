"""Two replicas on one Redis judge drift against one reference (serialised sketches)."""

from __future__ import annotations

import os
import random

import aiohttp
import pytest

from gateway.quality.sketch import NumericSketch, Profile
from gateway.sim.outputs import Outputs
from tests.integration.conftest import GatewayFactory, SimFactory
from tests.integration.test_quality import CLASSES, infer_body, until

pytestmark = pytest.mark.redis

POLICY = """\
version: 1
state: {{store: redis, url: "{redis}", key_prefix: "{prefix}", timeout: 200ms}}
backends:
  model: {{protocol: kserve-v2, endpoints: [{{url: "{url}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: model, weight: 100}}]
    quality: {{sample: 100%, min_samples: 20}}
"""


async def test_a_reference_captured_on_one_replica_is_adopted_by_the_other(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession, redis_url: str
) -> None:
    sim = await sims(models=("classifier",), outputs=Outputs(classes=CLASSES))
    policy = POLICY.format(redis=redis_url, prefix=f"q{os.urandom(4).hex()}:", url=sim.url)
    one = await gateway(policy)
    two = await gateway(policy)
    rng = random.Random(2)
    for gw in (one, two):
        assert gw.listening is not None
        for _ in range(40):
            url = f"{gw.listening.url}/v2/models/classifier/infer"
            async with http.post(url, json=infer_body(rng)) as r:
                assert r.status == 200
    await until(lambda: one.quality.processed == 40 and two.quality.processed == 40)
    taken = one.quality.capture("classify", None, None, "test")
    assert taken["backends"]["model"]["exchanges"] == 40

    def adopted() -> bool:
        ref = two.quality.state()["routes"]["classify"]["quality"]["backends"]["model"]
        return ref["reference"] is not None and ref["reference"]["source"] == "store"

    await until(adopted, limit=10)
    mine = Profile.from_bytes(one.quality.export("classify", "model"))
    theirs = Profile.from_bytes(two.quality.export("classify", "model"))
    assert mine.exchanges == theirs.exchanges == 40
    assert mine.sketches.keys() == theirs.sketches.keys()
    for name, s in mine.sketches.items():  # the same sketches: counts and quantiles agree
        t = theirs.sketches[name]
        assert s.n == t.n
        if isinstance(s, NumericSketch):
            assert isinstance(t, NumericSketch)
            assert s.quantiles([0.1, 0.5, 0.9]) == t.quantiles([0.1, 0.5, 0.9])
        else:
            assert s.to_json() == t.to_json()
    # and the follower scores its own traffic against it
    await until(
        lambda: any(
            s["value"] is not None
            for s in two.quality.state()["routes"]["classify"]["quality"]["backends"]["model"][
                "scores"
            ]
        ),
        limit=5,
    )
