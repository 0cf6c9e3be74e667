"""`slos:` in the policy: validated like every other key, compiled into frozen SloConfig."""

from __future__ import annotations

import pytest

from gateway.app import compile_text
from gateway.errors import PolicyError
from gateway.slo.budget import SliKind

BASE = """\
version: 1
backends:
  a: {endpoints: [{url: "http://127.0.0.1:1"}]}
routes:
  - {name: classify, match: {path_prefix: /}, split: [{backend: a, weight: 100}]}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        compile_text(BASE + text, "p.yaml")
    return [str(i) for i in e.value.issues]


def test_an_slo_compiles_with_its_defaults() -> None:
    snap = compile_text(
        BASE + "slos:\n  avail: {routes: [classify], availability: {objective: 99.9%}}\n", "p.yaml"
    )
    (slo,) = snap.slos
    assert (slo.name, slo.routes, slo.kind) == ("avail", ("classify",), SliKind.AVAILABILITY)
    assert slo.objective == 0.999 and slo.window == 30 * 86400.0
    assert not slo.fallback_good and slo.latency_threshold is None
    fb = slo.fast_burn
    assert (fb.freeze_canary, fb.rollback_canary, fb.shed_priority) == (True, True, None)
    assert (fb.blame_share, fb.min_bad_events) == (0.5, 10)


def test_latency_slo_with_window_and_shedding() -> None:
    snap = compile_text(
        BASE
        + "slos:\n  fast:\n    routes: [classify]\n    window: 7d\n"
        + "    latency: {threshold: 300ms, objective: 99%}\n"
        + "    on_fast_burn: {shed: low}\n",
        "p.yaml",
    )
    (slo,) = snap.slos
    assert slo.kind is SliKind.LATENCY and slo.latency_threshold == pytest.approx(0.3)
    assert slo.window == 7 * 86400.0 and slo.fast_burn.shed_priority == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("slos:\n  s: {routes: [clasify], availability: {objective: 99%}}\n",
         "p.yaml:7:16: slos.s.routes[0]: no route named 'clasify' (did you mean 'classify'?)"),
        ("slos:\n  s: {routes: [classify], availability: {objective: 100%}}\n",
         "p.yaml:7:53: slos.s.availability.objective: must be more than 0% and less than 100%"),
        ("slos:\n  s: {routes: [classify]}\n",
         "p.yaml:7:6: slos.s: give exactly one of availability or latency"),
        ("slos:\n  s: {routes: [classify], window: 30, availability: {objective: 99%}}\n",
         "p.yaml:7:35: slos.s.window: expected a window like 30d, 7d or 12h"),
        ("slos:\n  s: {routes: [classify], window: 30s, availability: {objective: 99%}}\n",
         "p.yaml:7:35: slos.s.window: must be at least 1m"),
        ("slos:\n  s: {routes: [classify], availability: {objective: 99%, fallbak: good}}\n",
         "p.yaml:7:58: slos.s.availability.fallbak: unknown key 'fallbak' (did you mean 'fallback'?)"),
        ("slos:\n  s: {routes: [classify], availability: {objective: 99%}, on_fast_burn: {shed: critical}}\n",
         "p.yaml:7:80: slos.s.on_fast_burn.shed: must be one of 'sheddable', 'low' or 'normal'"),
        ("slos:\n  s: {routes: [classify, classify], availability: {objective: 99%}}\n",
         "p.yaml:7:26: slos.s.routes[1]: route 'classify' is listed twice"),
    ],
)  # fmt: skip
def test_bad_slos_are_refused_at_their_line(text: str, expected: str) -> None:
    found = issues(text)
    assert any(i.startswith(expected) for i in found), found
