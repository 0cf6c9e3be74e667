"""Health thresholds: hysteresis against flapping checks, probe scheduling with jitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.resilience.health import HealthConfig, HealthState


def run(state: HealthState, results: str) -> list[tuple[bool, bool]]:
    """Feed "+"/"-" results; return (flipped, healthy) after each."""
    out = []
    for r in results:
        flipped = state.record(r == "+")
        out.append((flipped, state.healthy))
    return out


def test_turns_unhealthy_after_threshold_failures_and_back_after_threshold_passes() -> None:
    s = HealthState(HealthConfig(unhealthy_threshold=2, healthy_threshold=3))
    assert s.healthy
    assert run(s, "--") == [(False, True), (True, False)]
    assert (s.consecutive_fail, s.consecutive_ok) == (2, 0)
    assert run(s, "-++") == [(False, False), (False, False), (False, False)]
    assert run(s, "+") == [(True, True)]
    assert (s.consecutive_fail, s.consecutive_ok) == (0, 3)


def test_flapping_checks_do_not_flap_traffic() -> None:
    s = HealthState(HealthConfig(unhealthy_threshold=2, healthy_threshold=2))
    results = run(s, "-+-+-+-+-+-+" * 10)
    assert all(healthy for _, healthy in results)
    assert not any(flipped for flipped, _ in results)
    s2 = HealthState(HealthConfig(), initially_healthy=False)
    results = run(s2, "+-+-+-+-+-" * 10)
    assert not any(healthy for _, healthy in results)


def test_flips_exactly_once_per_change() -> None:
    s = HealthState(HealthConfig(unhealthy_threshold=3, healthy_threshold=1))
    flips = [f for f, _ in run(s, "--+---------+++")]
    assert flips == [False, False, False, False, False, True] + [False] * 6 + [True, False, False]


def test_threshold_of_one_reacts_to_each_result() -> None:
    s = HealthState(HealthConfig(unhealthy_threshold=1, healthy_threshold=1))
    assert run(s, "-+-") == [(True, False), (True, True), (True, False)]


def test_starting_unhealthy_needs_healthy_threshold_passes() -> None:
    s = HealthState(HealthConfig(healthy_threshold=2), initially_healthy=False)
    assert not s.healthy
    assert run(s, "++") == [(False, False), (True, True)]


def test_next_delay_uses_interval_or_idle_interval_with_jitter() -> None:
    s = HealthState(HealthConfig(interval=2.0, idle_interval=10.0, jitter=0.1))
    assert s.next_delay(False, 0.5) == 2.0
    assert s.next_delay(True, 0.5) == 10.0
    assert s.next_delay(False, 0.0) == pytest.approx(1.8)
    assert s.next_delay(True, 0.0) == pytest.approx(9.0)
    assert s.next_delay(False, 0.75) == pytest.approx(2.1)


def test_an_unhealthy_endpoint_is_probed_at_interval_even_when_idle() -> None:
    s = HealthState(
        HealthConfig(interval=2.0, idle_interval=10.0, jitter=0.0, unhealthy_threshold=1)
    )
    assert s.next_delay(True, 0.5) == 10.0
    s.record(False)
    assert not s.healthy
    # no traffic reaches it because it is unhealthy; slow probes would keep it out for long
    assert s.next_delay(True, 0.5) == 2.0
    s.record(True)
    s.record(True)
    assert s.healthy and s.next_delay(True, 0.5) == 10.0


@given(st.floats(0.0, 1.0, exclude_max=True), st.booleans())
def test_next_delay_stays_within_jitter(rnd: float, idle: bool) -> None:
    cfg = HealthConfig(interval=2.0, idle_interval=10.0, jitter=0.2)
    base = 10.0 if idle else 2.0
    d = HealthState(cfg).next_delay(idle, rnd)
    assert base * 0.8 - 1e-9 <= d <= base * 1.2 + 1e-9


def test_zero_jitter_is_exact() -> None:
    s = HealthState(HealthConfig(jitter=0.0))
    assert s.next_delay(False, 0.123) == 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "interval"),
        ({"idle_interval": -1}, "idle_interval"),
        ({"timeout": 0}, "timeout"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"unhealthy_threshold": 0}, "unhealthy_threshold"),
        ({"healthy_threshold": 0}, "healthy_threshold"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HealthConfig(**kwargs)  # type: ignore[arg-type]


@given(st.lists(st.booleans(), max_size=200), st.integers(1, 5), st.integers(1, 5))
def test_healthy_changes_only_after_a_full_run(results: list[bool], down: int, up: int) -> None:
    s = HealthState(HealthConfig(unhealthy_threshold=down, healthy_threshold=up))
    for i, ok in enumerate(results):
        before = s.healthy
        flipped = s.record(ok)
        assert flipped == (s.healthy != before)
        if flipped:
            need = up if ok else down
            assert len(results[: i + 1]) >= need
            assert all(r == ok for r in results[i + 1 - need : i + 1])


def revival_time(config: HealthConfig, revived_at: float, seed: int) -> float:
    """Seconds from an endpoint's revival until its checks call it healthy again, in virtual
    time: it died at 0 (probes fail instantly, as on a refused connection), probes follow
    `next_delay` with seeded jitter, each answers at once."""
    import random

    rng = random.Random(seed)
    state = HealthState(config)
    now = -config.interval * rng.random()  # probes run on their own phase
    while True:
        alive = now >= revived_at
        state.record(alive)
        if alive and state.healthy:
            return now - revived_at
        assert (
            alive or now < config.unhealthy_threshold * config.interval * 1.1 or not state.healthy
        )
        now += state.next_delay(idle=False, rnd=rng.random())


@pytest.mark.parametrize(("interval", "threshold"), [(2.0, 2), (2.0, 1), (1.0, 3), (0.5, 2)])
def test_a_revived_endpoint_is_healthy_within_threshold_probe_intervals(
    interval: float, threshold: int
) -> None:
    """The recovery stated in docs/performance.md: the next probe after the revival, then
    threshold - 1 more, each an interval apart (jitter ±10 %): between
    (threshold - 1) x interval x 0.9 and threshold x interval x 1.1."""
    config = HealthConfig(interval=interval, idle_interval=10.0, healthy_threshold=threshold)
    times = [revival_time(config, 20.0 + k * 0.173, k) for k in range(200)]
    assert min(times) >= (threshold - 1) * interval * 0.9 - 1e-9
    assert max(times) <= threshold * interval * 1.1 + 1e-9
    mean = sum(times) / len(times)
    assert mean == pytest.approx((threshold - 0.5) * interval, rel=0.1)
