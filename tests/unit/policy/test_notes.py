"""Valid policies that will not do what they seem to: `validate` says so."""

from __future__ import annotations

from gateway.app import compile_text

POLICY = """
version: 1
backends:
  clf: {{protocol: {protocol}, endpoints: [{{url: "http://10.0.0.1:8000"}}]}}
routes:
  - name: classify
    match: {{path_prefix: /, {methods}}}
    split: [{{backend: clf, weight: 100}}]
    hedging: {{delay: 20ms}}
    {extra}
"""


def notes(protocol: str = "kserve-v2", methods: str = "", extra: str = "") -> tuple[str, ...]:
    return compile_text(
        POLICY.format(protocol=protocol, methods=methods, extra=extra), "p.yaml"
    ).notes


def test_hedging_a_post_only_route_never_applies() -> None:
    (note,) = notes(methods="methods: [POST]")
    assert "hedging never applies" in note and "idempotent: true" in note


def test_hedging_on_inference_routes_applies_to_gets_only() -> None:
    (note,) = notes()
    assert "GET requests only" in note


def test_no_note_when_the_route_may_repeat_its_requests() -> None:
    assert notes(methods="methods: [POST]", extra="idempotent: true") == ()
    assert notes(methods="methods: [POST]", extra="retries: {non_idempotent: true}") == ()
    assert notes(protocol="http", methods="methods: [GET]") == ()
