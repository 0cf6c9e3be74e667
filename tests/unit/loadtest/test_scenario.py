"""Load-test scenarios: validation with located errors, the shipped files, and the pure parts
of a run (schedule, request mix, measuring, judging, templates, the action registry)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from gateway.errors import PolicyError
from gateway.loadtest.faults import ACTIONS, NoisyNeighbour, base_faults
from gateway.loadtest.runner import check_policy_template, judge, measure, per_second, percentile
from gateway.loadtest.scenario import (
    ACTION_NAMES,
    ScenarioModel,
    load_scenario,
    load_scenario_text,
    render_template,
)
from gateway.loadtest.traffic import RequestMix, RequestOutcome, RequestRecord, intended_times

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted((ROOT / "loadtests").glob("*.yaml"))

GOOD = """\
name: t
policy: p.yaml
sims:
  - {name: a, region: us-east, latency: 5ms}
  - {name: b, region: eu-west}
traffic:
  duration: 10s
  rate: 100/s
  requests: [{path: /v2/models/classifier/infer, body: {inputs: []}}]
timeline:
  - {at: 2s, do: kill, region: us-east}
  - {at: 4s, do: latency, sim: b, latency: 100ms, share: 5%}
phases:
  - name: all
    from: 1s
    to: 10s
    slo: {success: 99%, p99: 100ms, traffic: {region: {us-east: ">= 90%"}}}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        load_scenario_text(text, "s.yaml")
    return [str(i) for i in e.value.issues]


def test_a_good_scenario_loads_into_numbers() -> None:
    s = load_scenario_text(GOOD)
    assert s.traffic.rate == 100.0 and s.traffic.duration == 10.0
    assert s.sims[0].latency == 0.005
    assert s.timeline[1].latency == 0.1 and s.timeline[1].share == 0.05
    bound = s.phases[0].slo.traffic["region"]["us-east"]
    assert bound.holds(0.9) and not bound.holds(0.89)
    assert [x.name for x in s.sims_for(s.timeline[0])] == ["a"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_scenario_loads_and_its_policy_templates_compile(path: Path) -> None:
    s = load_scenario(path)
    assert s.policy is not None
    check_policy_template(s, s.resolve(path, s.policy))
    for action in s.timeline:
        if action.policy is not None:
            check_policy_template(s, s.resolve(path, action.policy))


def test_the_smoke_scenario_stays_short() -> None:
    s = load_scenario(ROOT / "loadtests" / "smoke.yaml")
    assert s.traffic.duration + s.warmup <= 15.0


def test_mistakes_are_reported_at_their_line_and_column_in_one_pass() -> None:
    text = GOOD.replace("do: kill, region: us-east", "do: kil, region: us-west").replace(
        "success: 99%", "success: 99"
    )
    found = issues(text)
    assert "s.yaml:11:18: timeline[0].do: unknown action 'kil' (did you mean 'kill'?)" in found
    assert any(i.startswith("s.yaml:11:31: timeline[0].region: no sim is in region") for i in found)
    assert any(
        i.startswith("s.yaml:17:20: phases[0].slo.success: expected a percentage") for i in found
    )
    assert len(found) == 3


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("rate: 100/s", "rate: 100", "traffic.rate: expected a rate like 100/s"),
        ("do: kill, region: us-east", "do: kill", "'kill' needs exactly one of sim or region"),
        ("latency: 100ms, share: 5%", "share: 5%", "'latency' needs latency"),
        ("at: 4s", "at: 12s", "timeline[1].at: happens after the traffic has ended"),
        ("to: 10s", "to: 11s", "phases[0].to: ends after the traffic has ended"),
        ("from: 1s", "from: 10s", "phases[0].to: must be after from"),
        ("sim: b,", "sim: c,", "timeline[1].sim: no sim named 'c'"),
        ('">= 90%"', '"> 90%"', "expected a bound like '>= 90%'"),
        ("policy: p.yaml", "", "give either policy (start a gateway) or target"),
        ("name: all", "nme: all", "unknown key 'nme' (did you mean 'name'?)"),
        ("{name: b, region: eu-west}", "{name: a}", "sims[1].name: sim 'a' is defined twice"),
    ],
)
def test_each_mistake_has_a_clear_message(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    found = issues(GOOD.replace(old, new, 1))
    assert any(expected in i for i in found), found


def test_actions_take_only_their_own_parameters() -> None:
    text = GOOD.replace("do: kill, region: us-east", "do: kill, region: us-east, rate: 5%")
    assert any("timeline[0].rate: 'kill' takes no rate" in i for i in issues(text))
    text = GOOD.replace("do: kill, region: us-east", "do: reload, region: us-east")
    found = issues(text)
    assert any("'reload' takes no region" in i for i in found)
    assert any("'reload' needs policy" in i for i in found)


def test_redis_actions_need_a_redis_and_target_sims_need_urls() -> None:
    text = GOOD.replace("do: kill, region: us-east", "do: redis-stop")
    assert any("redis-stop needs 'redis: true'" in i for i in issues(text))
    text = GOOD.replace("policy: p.yaml", "target: http://127.0.0.1:8080")
    assert any("with target, sims run elsewhere" in i for i in issues(text))


def test_every_action_name_has_an_implementation() -> None:
    assert set(ACTIONS) == set(ACTION_NAMES)


def test_the_noisy_neighbour_takes_no_target() -> None:
    text = GOOD.replace("do: kill, region: us-east", "do: neighbour-start, sim: a")
    assert any("'neighbour-start' takes no sim" in i for i in issues(text))
    load_scenario_text(GOOD.replace("do: kill, region: us-east", "do: neighbour-stop"), "s.yaml")


async def test_the_noisy_neighbour_burns_a_core_until_stopped() -> None:
    neighbour = NoisyNeighbour()
    await neighbour.stop()  # stopping one that never started is harmless
    await neighbour.start()
    assert neighbour.running
    pid = neighbour.pid
    await neighbour.start()  # one neighbour, not two
    assert neighbour.pid == pid is not None
    await asyncio.sleep(0.3)
    stat = await asyncio.to_thread(Path(f"/proc/{pid}/stat").read_text)
    fields = stat.rsplit(")", 1)[1].split()
    assert int(fields[11]) + int(fields[12]) > 0  # utime + stime: it has been burning CPU
    await neighbour.stop()
    assert not neighbour.running


def test_steps_must_start_at_zero_and_increase() -> None:
    text = GOOD.replace("rate: 100/s", "steps: [{at: 1s, rate: 10/s}, {at: 1s, rate: 20/s}]")
    found = issues(text)
    assert any("traffic.steps[0].at: the first step starts at 0s" in i for i in found)
    assert any("traffic.steps[1].at: steps must be in increasing time order" in i for i in found)


# --- templates ----------------------------------------------------------------------------------


def test_templates_substitute_sims_and_point_at_unknown_placeholders() -> None:
    text = "a: ${sim.east-a}\nb: ${sim.east-b}\nc: ${redis.url}\n"
    values = {"sim.east-a": "http://h:1", "sim.east-b": "http://h:2", "redis.url": "redis://r"}
    assert render_template(text, values) == "a: http://h:1\nb: http://h:2\nc: redis://r\n"
    with pytest.raises(PolicyError) as e:
        render_template(text, {"sim.east-a": "http://h:1"}, "p.yaml")
    found = [str(i) for i in e.value.issues]
    assert found[0] == "p.yaml:2:4: '${sim.east-b}': no such sim (did you mean 'east-a'?)"
    assert found[1].startswith("p.yaml:3:4: '${redis.url}': no Redis is started")


def test_a_template_naming_a_missing_sim_is_refused_before_the_run(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nbackends:\n  m:\n    endpoints: [{url: '${sim.zz}'}]\n"
        "routes: [{name: r, match: {path_prefix: /}, split: [{backend: m, weight: 100}]}]\n"
    )
    with pytest.raises(PolicyError, match="no such sim"):
        check_policy_template(load_scenario_text(GOOD), policy)


# --- traffic ------------------------------------------------------------------------------------


def _traffic(extra: str) -> ScenarioModel:
    return load_scenario_text(GOOD.replace("  rate: 100/s\n", extra))


def test_a_constant_rate_is_evenly_spaced() -> None:
    times = list(intended_times(_traffic("  rate: 4/s\n").traffic))
    assert len(times) == 40
    assert times[:3] == [0.0, 0.25, 0.5] and times[-1] == pytest.approx(9.75)


def test_steps_change_the_rate_on_time() -> None:
    s = _traffic("  steps: [{at: 0s, rate: 2/s}, {at: 5s, rate: 10/s}]\n")
    times = list(intended_times(s.traffic))
    assert len(times) == 5 * 2 + 5 * 10
    assert times[9] == 4.5 and times[10] == 5.0 and times[11] == pytest.approx(5.1)
    assert s.traffic.rate_at(4.9) == 2 and s.traffic.rate_at(5.0) == 10


def test_the_request_mix_follows_weights_and_draws_user_ids() -> None:
    s = load_scenario_text(
        GOOD.replace(
            "  requests: [{path: /v2/models/classifier/infer, body: {inputs: []}}]\n",
            "  requests:\n"
            "    - {name: heavy, path: /a, weight: 3, user_header: {name: X-User, users: 5}}\n"
            "    - {name: light, path: /b, method: get}\n",
        )
    )
    mix = RequestMix(s.traffic)
    rng = random.Random(3)
    picks = [mix.pick(rng) for _ in range(4000)]
    heavy = [h for r, h in picks if r.name == "heavy"]
    assert 0.72 < len(heavy) / len(picks) < 0.78
    assert {h["x-user"] for h in heavy} == {f"user-{i}" for i in range(5)}
    light = next(r for r, _ in picks if r.name == "light")
    assert light.method == "GET" and light.body is None


# --- measuring and judging ----------------------------------------------------------------------


def rec(t: float, ms: float, status: int = 200, region: str = "us-east") -> RequestRecord:
    outcome = RequestOutcome.OK if status == 200 else RequestOutcome.HTTP_ERROR
    return RequestRecord(t, ms / 1000, status, outcome, "r", backend="m", region=region)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_a_phase_is_measured_by_intended_time_and_judged_per_slo() -> None:
    records = [rec(1.0 + i / 100, 10.0) for i in range(98)]
    records += [rec(1.99, 500.0, 503), rec(1.995, 900.0, region="eu-west")]
    records += [RequestRecord(1.5, 0.0, 0, RequestOutcome.DROPPED, "r")]
    records += [rec(5.0, 10_000.0, 503)]  # outside the phase
    m = measure(records, 1.0, 2.0, backend_requests=110)
    assert (m.requests, m.ok, m.dropped) == (100, 99, 1)
    assert m.success == 0.99 and m.backend_per_request == 1.1
    assert m.p50 == 0.010 and m.p99 == 0.5
    assert m.shares["region"] == {"eu-west": 0.01, "us-east": 0.99}

    s = load_scenario_text(
        GOOD.replace(
            'slo: {success: 99%, p99: 100ms, traffic: {region: {us-east: ">= 90%"}}}',
            "slo: {success: 99.5%, p50: 20ms, p99: 100ms, max_backend_requests_per_request: 1.2,"
            ' max_dropped: 0%, traffic: {region: {us-east: ">= 99%", eu-west: "<= 0.5%"}}}',
        )
    )
    verdicts = {v.slo: v for v in judge(s.phases[0], m)}
    assert {k for k, v in verdicts.items() if v.passed} == {
        "p50 latency", "backend requests per request", "region us-east share",
    }  # fmt: skip
    assert verdicts["success"].measured == "99.00%" and verdicts["success"].wanted == ">= 99.5%"
    assert verdicts["p99 latency"].measured == "500.0ms"
    assert not verdicts["dropped by the generator"].passed
    assert not verdicts["region eu-west share"].passed


def test_an_unknown_backend_count_fails_its_slo_rather_than_passing() -> None:
    s = load_scenario_text(GOOD.replace("success: 99%", "max_backend_requests_per_request: 2"))
    (v,) = [
        v for v in judge(s.phases[0], measure([rec(1.5, 1.0)], 1, 2, None)) if "backend" in v.slo
    ]
    assert not v.passed and v.measured == "unknown"


def test_series_have_one_point_per_second() -> None:
    records = [rec(0.1, 5.0), rec(0.2, 7.0, 503), rec(2.5, 9.0, region="eu-west")]
    series = per_second(records, 3.0)
    assert series["t"] == [0, 1, 2]
    assert series["sent"] == [2, 0, 1] and series["success"] == [0.5, None, 1.0]
    assert series["region"] == {"eu-west": [0, 0, 1], "us-east": [2, 0, 0]}


def test_a_sim_starts_with_its_base_latency_and_tail() -> None:
    s = load_scenario(ROOT / "loadtests" / "hedging.yaml")
    f = base_faults(s.sims[0])
    assert f.latency.kind == "tail" and f.latency.ms == 4.0
    assert f.latency.tail_rate == 0.05 and f.latency.tail_factor == 20.0
