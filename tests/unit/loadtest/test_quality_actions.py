"""The scenario language's quality and operator parts: generated inputs and their shift, sim
outputs, admin actions, quality SLOs, and the pure judging and summarising of samples."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import PolicyError
from gateway.loadtest.faults import ACTIONS, FaultContext, LocalSim, base_outputs
from gateway.loadtest.quality import (
    QualitySample,
    judge_quality,
    quality_lines,
    quality_series,
    quality_summary,
)
from gateway.loadtest.scenario import ShareBound, load_scenario_text
from gateway.loadtest.traffic import RequestMix
from gateway.resilience.canary import CanaryPhase
from gateway.sim import SimServer

QUALITY = """\
name: q
policy: p.yaml
sims:
  - {name: stable, outputs: {classes: 4}}
  - {name: candidate, outputs: {classes: 4, bias: [2.0]}}
  - {name: plain}
traffic:
  duration: 10s
  rate: 100/s
  requests:
    - {path: /v2/models/classifier/infer, name: gen, inputs: {shape: [2, 3], mean: 0.5}}
    - {path: /v2/models/other/infer, name: fixed, body: {inputs: []}}
timeline:
  - {at: 0s, do: capture, route: classify, for: 2s}
  - {at: 1s, do: outputs, sim: candidate, bias: [0.0, 1.0], disagree: 10%}
  - {at: 5s, do: shift-inputs, mean: 1.0, request: gen}
  - {at: 6s, do: switch, route: classify, to: stable}
  - {at: 7s, do: switch-back, route: classify}
phases:
  - name: all
    from: 0s
    to: 10s
    slo:
      shadow_agreement: {classify: "70% ± 5%"}
      canary: {classify: rolled-back}
      drift: [{route: classify, backend: stable, feature: input.INPUT0.value, detected: true}]
"""


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        load_scenario_text(text, "s.yaml")
    return [str(i) for i in e.value.issues]


def test_a_quality_scenario_loads() -> None:
    s = load_scenario_text(QUALITY)
    gen = s.traffic.requests[0].inputs
    assert gen is not None and gen.shape == (2, 3) and gen.elements == 6 and gen.mean == 0.5
    assert s.sims[1].outputs is not None and s.sims[1].outputs.bias == (2.0,)
    capture, outputs, shift, switch, back = s.timeline
    assert capture.for_ == 2.0 and capture.label == "capture classify"
    assert outputs.disagree == pytest.approx(0.1) and outputs.bias == (0.0, 1.0)
    assert shift.mean == 1.0 and shift.label == "shift-inputs gen"
    assert switch.label == "switch classify to stable" and back.label == "switch-back classify"
    slo = s.phases[0].slo
    assert slo.shadow_agreement["classify"] == ShareBound("±", 0.7, 0.05)
    assert slo.canary["classify"] == "rolled-back" and slo.drift[0].detected is True


def test_the_canary_phases_a_scenario_names_are_the_gateways() -> None:
    for phase in CanaryPhase:
        load_scenario_text(QUALITY.replace("rolled-back", phase.value))
    assert any("canary.classify" in i for i in issues(QUALITY.replace("rolled-back", "gone")))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("route: classify, for: 2s", "for: 2s", "'capture' needs route"),
        ("route: classify, to: stable", "route: classify", "'switch' needs to"),
        ("do: switch-back, route: classify", "do: switch-back, route: classify, to: a",
         "timeline[4].to: 'switch-back' takes no to"),
        ("mean: 1.0, request: gen", "request: gen", "'shift-inputs' needs mean or stddev"),
        ("request: gen", "request: fixed", "no request named 'fixed' has generated inputs"),
        ("sim: candidate, bias", "sim: plain, bias", "sim 'plain' has no outputs to change"),
        ("bias: [0.0, 1.0], disagree: 10%", "latency: 5ms", "'outputs' needs bias or disagree"),
        ("bias: [2.0]", "bias: [1, 2, 3, 4, 5]", "bias: has 5 entries for 4 classes"),
        ("name: fixed, body: {inputs: []}", "name: fixed, body: {}, inputs: {}",
         "give either body or inputs"),
        ('"70% ± 5%"', '"70%"', "expected a bound like '>= 90%', '<= 5%' or '70% ± 5%'"),
    ],
)  # fmt: skip
def test_each_quality_mistake_has_a_clear_message(old: str, new: str, expected: str) -> None:
    assert old in QUALITY
    found = issues(QUALITY.replace(old, new, 1))
    assert any(expected in i for i in found), found


def test_admin_actions_and_quality_slos_need_a_gateway_the_run_starts() -> None:
    text = QUALITY.replace("policy: p.yaml", "target: http://127.0.0.1:8080")
    found = issues(text)
    for k, do in ((0, "capture"), (3, "switch"), (4, "switch-back")):
        assert any(f"timeline[{k}].do: {do} needs a gateway this run starts" in i for i in found)
    for key in ("drift", "shadow_agreement", "canary"):
        assert any(f"phases[0].slo.{key}: read from the admin API" in i for i in found), key
    assert any("replicas are started by the run" in i
               for i in issues(text.replace("name: q\n", "name: q\nreplicas: 2\n")))  # fmt: skip


def test_share_bounds_around_a_value() -> None:
    bound = ShareBound("±", 0.7, 0.05)
    assert bound.holds(0.65) and bound.holds(0.75) and not bound.holds(0.751)
    assert str(bound) == "70% ± 5%"
    s = load_scenario_text(QUALITY.replace("70% ± 5%", "70% +- 3%"))
    assert s.phases[0].slo.shadow_agreement["classify"] == ShareBound("±", 0.7, 0.03)


def test_generated_inputs_are_fresh_seeded_and_shift_on_order() -> None:
    s = load_scenario_text(QUALITY)
    mix = RequestMix(s.traffic)
    gen = mix.requests[0]
    assert gen.headers["content-type"] == "application/json"
    bodies = [json.loads(gen.body_for(random.Random(7)) or b"") for _ in range(2)]
    assert bodies[0] == bodies[1]  # the same seed, the same values
    (tensor,) = bodies[0]["inputs"]
    assert tensor["name"] == "INPUT0" and tensor["shape"] == [2, 3] and len(tensor["data"]) == 6

    def mean_of(n: int) -> float:
        rng = random.Random(1)
        values = [v for _ in range(n) for v in json.loads(gen.body_for(rng) or b"")["inputs"][0]["data"]]  # fmt: skip
        return statistics.fmean(values)

    assert mean_of(300) == pytest.approx(0.5, abs=0.1)
    assert mix.shift_inputs("fixed", 3.0, None) == []  # it has a fixed body: nothing to move
    assert mix.shift_inputs(None, 3.0, 0.5) == ["gen"]
    assert mean_of(300) == pytest.approx(3.0, abs=0.1)
    assert mix.requests[1].body_for(random.Random(1)) == b'{"inputs":[]}'


async def test_the_outputs_action_changes_only_what_it_names() -> None:
    s = load_scenario_text(QUALITY)
    spec = s.sims[1]
    server = SimServer(models=("classifier",), name=spec.name, outputs=base_outputs(spec.outputs))
    ctx = FaultContext(scenario=s, scenario_file=Path("s.yaml"),
                       sims={"candidate": LocalSim(spec, server)}, base={})  # fmt: skip
    detail = await ACTIONS["outputs"](s.timeline[1], ctx)
    assert server.outputs.classes == 4 and server.outputs.bias == (0.0, 1.0)
    assert server.outputs.disagree_rate == pytest.approx(0.1)
    assert detail == "outputs bias 0, 1; 10% disagreeing on candidate"


async def test_admin_actions_without_a_gateway_fail_with_a_reason() -> None:
    from gateway.loadtest.faults import ActionError

    s = load_scenario_text(QUALITY)
    ctx = FaultContext(scenario=s, scenario_file=Path("s.yaml"), sims={}, base={})
    for action in (s.timeline[0], s.timeline[3], s.timeline[4]):
        with pytest.raises(ActionError, match="no admin API"):
            await ACTIONS[action.do](action, ctx)
    with pytest.raises(ActionError, match="no generated inputs"):
        await ACTIONS["shift-inputs"](s.timeline[2], ctx)


# --- judging samples ----------------------------------------------------------------------------


def sample(
    value: float | None, drifted: bool, rows: int, agreed: int, phase: str = "progressing"
) -> QualitySample:
    score = {"feature": "input.INPUT0.value", "stat": "ks", "value": value,
             "threshold": 0.15, "drifted": drifted}  # fmt: skip
    quality = {"routes": {"classify": {
        "quality": {"backends": {"stable": {"drifted": ["input.INPUT0.value"] if drifted else [],
                                            "scores": [score] if value is not None else []}}},
        "shadow": {"backend": "shadow", "rows": rows,
                   "agreement": round(agreed / rows, 4) if rows else None},
    }}}  # fmt: skip
    status: dict[str, Any] = {
        "routes": [{"name": "classify", "canary": {"phase": phase, "weight": 20.0}}],
        "canary_decisions": [
            {"route": "classify", "action": "rollback", "reason": "output drift 0.5 > 0.3"}
        ],
    }
    return QualitySample.from_answers(quality, status)


SAMPLES = {
    0.0: sample(None, False, 0, 0),
    1.0: sample(0.02, False, 100, 70),
    2.0: sample(0.03, False, 200, 139, "rolled-back"),
    3.0: sample(0.30, True, 300, 212, "rolled-back"),
    4.0: None,  # the admin API did not answer
}


def phase_of(text: str, start: str, end: str) -> Any:
    body = QUALITY.replace("from: 0s\n    to: 10s", f"from: {start}\n    to: {end}")
    return load_scenario_text(body.replace("detected: true", text)).phases[0]


def test_drift_is_judged_over_the_phase() -> None:
    detected = judge_quality(phase_of("detected: true", "0s", "4s"), SAMPLES)
    assert (
        "drift classify/stable input.INPUT0.value",
        "detected",
        "detected at 3s",
        True,
    ) in detected
    quiet = judge_quality(phase_of("detected: false", "0s", "2s"), SAMPLES)
    assert ("drift classify/stable input.INPUT0.value", "judged, not detected", "not detected",
            True) in quiet  # fmt: skip
    # a phase in which nothing was scored proves nothing either way
    for wanted in ("true", "false"):
        (drift, *_) = judge_quality(phase_of(f"detected: {wanted}", "0s", "1s").model_copy(
            update={"to": 0.5}), SAMPLES)  # fmt: skip
        assert drift[2] == "never scored" and drift[3] is False


def test_shadow_agreement_and_canary_are_judged_at_the_phase_bounds() -> None:
    verdicts = {v[0]: v for v in judge_quality(phase_of("detected: true", "1s", "3s"), SAMPLES)}
    assert verdicts["shadow agreement classify"] == (
        "shadow agreement classify", "70% ± 5%", "71.0% of 200", True,
    )  # fmt: skip
    assert verdicts["canary classify"][2:] == ("rolled-back", True)
    # the sample at the end is missing: unknown, which fails
    verdicts = {v[0]: v for v in judge_quality(phase_of("detected: true", "1s", "4s"), SAMPLES)}
    assert verdicts["shadow agreement classify"][2:] == ("unknown", False)
    assert verdicts["canary classify"][2:] == ("unknown", False)


def test_series_summary_and_text_report() -> None:
    series = quality_series(SAMPLES, 4.0)
    assert series["t"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    ks = series["drift"]["classify"]["stable"]["input.INPUT0.value"]["ks"]
    assert ks == {"threshold": 0.15, "values": [None, 0.02, 0.03, 0.30, None]}
    agreement = series["shadow"]["classify"]["agreement"]
    assert agreement[0] is None and agreement[1] == pytest.approx(0.7)
    assert agreement[2] == pytest.approx(0.69) and agreement[4] is None
    assert series["canary"]["classify"]["phase"][:3] == ["progressing", "progressing",
                                                         "rolled-back"]  # fmt: skip
    summary = quality_summary(SAMPLES, 4.0)
    route = summary["routes"]["classify"]
    assert route["drift"] == {"stable": {"input.INPUT0.value": 3.0}}
    assert route["shadow"]["compared"] == 300
    assert route["shadow"]["agreement"] == pytest.approx(212 / 300)
    assert route["canary"] == {"phase": "rolled-back", "weight": 20.0, "decided_at": 2.0,
                               "reason": "output drift 0.5 > 0.3"}  # fmt: skip
    lines = quality_lines(summary, [(2.5, "shift-inputs: inputs now mean 1 on gen")])
    assert lines[1] == "    2.50s  shift-inputs: inputs now mean 1 on gen"
    assert "  drift classify/stable: input.INPUT0.value at 3s" in lines
    assert "  shadow classify -> shadow: 70.7% agreement over 300 compared rows" in lines
    assert lines[-1] == (
        "  canary classify: rolled-back at 2s (weight 20%): output drift 0.5 > 0.3"
    )
