"""The quality keys of a policy: compiled values, and mistakes named at their line."""

from __future__ import annotations

import pytest

from gateway.app import compile_text
from gateway.errors import PolicyError
from gateway.policy.load import load_policy_text

BASE = """\
version: 1
backends:
  a: {protocol: kserve-v2, endpoints: [{url: "http://10.0.0.1:8000"}]}
  b: {protocol: kserve-v2, endpoints: [{url: "http://10.0.0.2:8000"}]}
  chat: {protocol: openai, endpoints: [{url: "http://10.0.0.3:8000"}]}
routes:
  - name: r
    match: {path_prefix: /}
    split: [{backend: a, weight: 100}]
"""


def issues(extra: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        load_policy_text(BASE + extra, "p.yaml")
    return [str(i) for i in e.value.issues]


def test_quality_shadow_and_contract_compile_into_frozen_configs() -> None:
    snap = compile_text(
        BASE
        + "    quality: {sample: 5%, window: 2m, min_samples: 50, thresholds: {ks: 0.2}}\n"
        + "    shadow: {backend: b, share: 25%, max_concurrency: 3, timeout: 500ms}\n"
        + "    contract: {metadata_ttl: 30s}\n",
        "p.yaml",
    )
    r = snap.routes[0]
    assert r.quality is not None and r.shadow is not None and r.contract is not None
    assert (r.quality.sample, r.quality.window) == (0.05, 120.0)
    assert (r.quality.thresholds.ks, r.quality.thresholds.psi) == (0.2, 0.2)
    assert r.quality.thresholds.min_samples == 50
    assert (r.shadow.backend, r.shadow.share, r.shadow.max_concurrency, r.shadow.timeout) == (
        "b", 0.25, 3, 0.5,
    )  # fmt: skip
    assert r.contract.metadata_ttl == 30.0
    assert r.tap_share == 0.25  # the larger of the sample and the shadow share
    plain = compile_text(BASE, "p.yaml").routes[0]
    assert (plain.quality, plain.shadow, plain.contract, plain.tap_share) == (None, None, None, 0.0)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "    shadow: {backend: bb}\n",
            "p.yaml:10:23: routes[0].shadow.backend: backend 'bb' is not defined in backends (did you mean 'b'?)",
        ),
        ("    shadow: {backend: a}\n", "routes[0].shadow.backend: 'a' already serves this route"),
        ("    shadow: {backend: chat}\n", "routes[0].shadow.backend: backend 'chat' speaks openai"),
        ("    quality: {sample: 5}\n", "routes[0].quality.sample"),
        ("    quality: {samples: 5%}\n", "routes[0].quality.samples"),
        ("    quality: {thresholds: {js: 2.0}}\n", "routes[0].quality.thresholds.js"),
        ("    shadow: {backend: b, share: 0%}\n", "routes[0].shadow.share"),
    ],
)
def test_mistakes_are_named_at_their_place(extra: str, expected: str) -> None:
    found = issues(extra)
    assert any(expected in i for i in found), found


def test_contracts_need_kserve_backends_and_output_gates_need_quality() -> None:
    text = BASE.replace(
        "split: [{backend: a, weight: 100}]", "split: [{backend: chat, weight: 100}]"
    )
    with pytest.raises(PolicyError) as e:
        load_policy_text(text + "    contract: {}\n", "p.yaml")
    assert any(
        "routes[0].contract: model contracts are KServe v2" in str(i) for i in e.value.issues
    )
    canary = "    canary: {backend: b, gates: {max_output_drift: 0.1}}\n"
    text = BASE.replace(
        "split: [{backend: a, weight: 100}]",
        "split: [{backend: a, weight: 100}, {backend: b, weight: 0}]",
    )
    with pytest.raises(PolicyError) as e:
        load_policy_text(text + canary, "p.yaml")
    assert any(
        "routes[0].canary.gates.max_output_drift: needs the route's quality" in str(i)
        for i in e.value.issues
    )
    snap = compile_text(text + canary + "    quality: {}\n", "p.yaml")
    assert snap.routes[0].canary is not None
    assert snap.routes[0].canary.config.max_output_drift == 0.1
