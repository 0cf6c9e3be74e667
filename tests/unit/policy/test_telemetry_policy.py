from __future__ import annotations

import pytest

from gateway.errors import PolicyError
from gateway.policy.compile import compile_policy
from gateway.policy.load import load_policy_text

BASE = """\
version: 1
telemetry:
{telemetry}
backends:
  b: {{endpoints: [{{url: "http://127.0.0.1:1"}}]}}
routes:
  - {{name: r, match: {{path_prefix: /}}, split: [{{backend: b, weight: 100}}]}}
"""


def test_telemetry_section_compiles_into_frozen_settings() -> None:
    text = BASE.format(
        telemetry="  access_log: {path: a.log, sample: 5%}\n"
        "  tracing: {endpoint: 'http://c:4318', protocol: http, sample_ratio: 25%,"
        " headers: {x-k: v}}\n"
        "  explain: {keep: 10}\n"
        "  max_label_values: 7"
    )
    snap = compile_policy(load_policy_text(text, "p.yaml"), source="p.yaml", text=text)
    t = snap.settings.telemetry
    assert t.access_log is not None and t.access_log.path == "a.log" and t.access_log.sample == 0.05
    assert t.tracing is not None and t.tracing.protocol == "http"
    assert t.tracing.sample_ratio == 0.25 and dict(t.tracing.headers) == {"x-k": "v"}
    assert t.explain is not None and t.explain.tenants == frozenset() and t.explain.keep == 10
    assert t.max_label_values == 7


@pytest.mark.parametrize(
    ("telemetry", "where"),
    [
        ("  tracing: {endpoint: x, protocl: grpc}", "protocl"),
        ("  tracing: {protocol: thrift}", "protocol"),
        ("  access_log: {sample: 0%}", "sample"),
        ("  tracing: {sample_ratio: 150%}", "sample_ratio"),
        ("  max_label_values: 0", "max_label_values"),
    ],
)
def test_bad_telemetry_keys_are_refused_with_their_line(telemetry: str, where: str) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy_text(BASE.format(telemetry=telemetry), "p.yaml")
    assert any(i.line == 3 and where in str(i) for i in e.value.issues), e.value.issues


def test_explain_tenants_need_auth_to_know_tenants() -> None:
    with pytest.raises(PolicyError) as e:
        load_policy_text(BASE.format(telemetry="  explain: {tenants: [t1]}"), "p.yaml")
    assert any("needs the top-level auth section" in str(i) for i in e.value.issues)
