"""Fault draws and validation: seeded randomness in, fates out, no sockets."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest

from gateway.sim.faults import NO_FAULT, FaultKind, Faults, Latency

N = 10_000


def kinds(faults: Faults, seed: int = 7, n: int = N) -> Counter[FaultKind]:
    rng = random.Random(seed)
    return Counter(faults.draw(rng).kind for _ in range(n))


def test_a_healthy_server_never_fails_and_draws_no_randomness() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    assert all(Faults().draw(rng) is NO_FAULT for _ in range(100))
    assert rng.getstate() == state


@pytest.mark.parametrize(
    ("field", "kind"),
    [
        ("error_rate", FaultKind.ERROR),
        ("reset_rate", FaultKind.RESET),
        ("hang_rate", FaultKind.HANG),
        ("truncate_rate", FaultKind.TRUNCATE),
    ],
)
def test_each_rate_is_its_share_of_requests(field: str, kind: FaultKind) -> None:
    counts = kinds(Faults.from_dict({field: 0.2}))
    assert abs(counts[kind] / N - 0.2) < 0.015
    assert counts[kind] + counts[FaultKind.NONE] == N


def test_rates_are_exclusive_shares_that_add_up() -> None:
    faults = Faults(error_rate=0.1, reset_rate=0.2, hang_rate=0.05, truncate_rate=0.15)
    counts = kinds(faults)
    for kind, share in [
        (FaultKind.ERROR, 0.1),
        (FaultKind.RESET, 0.2),
        (FaultKind.HANG, 0.05),
        (FaultKind.TRUNCATE, 0.15),
        (FaultKind.NONE, 0.5),
    ]:
        assert abs(counts[kind] / N - share) < 0.015, kind


def test_rate_one_always_and_rate_zero_never() -> None:
    assert kinds(Faults(reset_rate=1.0), n=1000) == Counter({FaultKind.RESET: 1000})
    assert kinds(Faults(error_rate=0.0, latency=Latency("fixed", 1)), n=1000) == Counter(
        {FaultKind.NONE: 1000}
    )


def test_same_seed_same_fates() -> None:
    faults = Faults(error_rate=0.3, latency=Latency("lognormal", 10, sigma=1.0))
    a, b = random.Random(42), random.Random(42)
    assert [faults.draw(a) for _ in range(500)] == [faults.draw(b) for _ in range(500)]


def test_fixed_latency_is_exact() -> None:
    draw = Faults(latency=Latency("fixed", 25)).draw(random.Random(0))
    assert draw.kind is FaultKind.NONE
    assert draw.delay_s == pytest.approx(0.025)


def test_uniform_latency_stays_in_bounds() -> None:
    rng = random.Random(3)
    delays = [Latency("uniform", 10, max_ms=30).draw(rng) for _ in range(N)]
    assert min(delays) >= 0.010 and max(delays) <= 0.030
    assert statistics.mean(delays) == pytest.approx(0.020, abs=0.001)


def test_lognormal_latency_has_ms_as_median() -> None:
    rng = random.Random(4)
    delays = [Latency("lognormal", 20, sigma=0.8).draw(rng) for _ in range(N)]
    assert statistics.median(delays) == pytest.approx(0.020, rel=0.05)
    assert max(delays) > 0.1  # a real tail, not a constant


def test_tail_latency_mixes_base_and_tail_requests() -> None:
    rng = random.Random(5)
    latency = Latency("tail", 8, tail_rate=0.05, tail_factor=20)
    delays = Counter(round(latency.draw(rng), 6) for _ in range(N))
    assert set(delays) == {0.008, 0.16}
    assert abs(delays[0.16] / N - 0.05) < 0.008


def test_a_tail_with_max_ms_has_a_jittering_fast_mode() -> None:
    rng = random.Random(5)
    latency = Latency("tail", 16, max_ms=24, tail_rate=0.05, tail_factor=25)
    delays = [latency.draw(rng) for _ in range(N)]
    slow = [d for d in delays if d > 0.1]
    fast = [d for d in delays if d <= 0.1]
    assert set(slow) == {0.4} and abs(len(slow) / N - 0.05) < 0.008
    assert 0.016 <= min(fast) < 0.0165 and 0.0235 < max(fast) <= 0.024


def test_latency_comes_with_every_fate() -> None:
    rng = random.Random(6)
    faults = Faults(error_rate=0.5, latency=Latency("fixed", 5))
    assert {faults.draw(rng).delay_s for _ in range(100)} == {0.005}


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"error_rate": 1.5}, "error_rate must be between 0 and 1"),
        ({"reset_rate": -0.1}, "reset_rate must be between 0 and 1"),
        ({"hang_rate": "often"}, "hang_rate must be a number"),
        ({"error_rate": True}, "error_rate must be a number"),
        ({"error_rate": 0.6, "reset_rate": 0.6}, "must be <= 1"),
        ({"error_status": 200}, "error_status must be an HTTP error status 400-599"),
        ({"error_status": "503"}, "error_status must be an HTTP error status"),
        ({"stream_delay_ms": -1}, "stream_delay_ms must be >= 0"),
        ({"retry_after": 0.5}, "retry_after must be a whole number of seconds"),
        ({"retry_after": -1}, "retry_after must be a whole number of seconds"),
        ({"ready": "yes"}, "ready must be true or false"),
        ({"unready_models": "classifier"}, "unready_models must be a list"),
        ({"unready_models": [1]}, "unready_models must be a list"),
        ({"eror_rate": 0.1}, "unknown faults field(s) eror_rate"),
        ({"latency": {"kind": "gaussian"}}, "latency.kind must be one of none, fixed"),
        ({"latency": {"kind": "uniform", "ms": 5}}, "latency.max_ms is required"),
        ({"latency": {"kind": "uniform", "ms": 5, "max_ms": 1}}, "latency.max_ms (1.0) must be"),
        ({"latency": {"ms": -3}}, "latency.ms must be >= 0"),
        ({"latency": {"ms": float("nan")}}, "latency.ms must be finite"),
        ({"latency": {"kind": "tail", "ms": 5, "tail_factor": 0.5}}, "tail_factor must be >= 1"),
        ({"latency": {"kind": "tail", "ms": 5, "max_ms": 4}}, "max_ms"),
        ({"latency": {"kind": "tail", "ms": 5, "tail_rate": 2}}, "latency.tail_rate must be"),
        ({"latency": {"delay": 5}}, "unknown latency field(s) delay"),
        ({"latency": 5}, "latency must be an object"),
    ],
)
def test_bad_faults_are_refused_with_the_field_and_reason(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as e:
        Faults.from_dict(data)
    assert message in str(e.value)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ValueError, match="hang_rate must be between 0 and 1"):
        Faults(hang_rate=2)
    with pytest.raises(ValueError, match=r"latency\.kind"):
        Latency("spiky")


def test_from_dict_and_to_dict_round_trip() -> None:
    faults = Faults(
        latency=Latency("uniform", 5, max_ms=50),
        error_rate=0.1,
        error_status=429,
        reset_rate=0.05,
        stream_delay_ms=20,
        unready_models=frozenset({"b", "a"}),
        ready=False,
        retry_after=2,
    )
    data = faults.to_dict()
    assert data["unready_models"] == ["a", "b"]
    assert Faults.from_dict(data) == faults
    assert Faults.from_dict(None) == Faults() == Faults.from_dict({})


def test_latency_kind_defaults_to_fixed_when_ms_is_given() -> None:
    assert Faults.from_dict({"latency": {"ms": 5}}).latency == Latency("fixed", 5)
    assert Faults.from_dict({"latency": {}}).latency == Latency()


def test_retry_after_accepts_whole_json_numbers() -> None:
    assert Faults.from_dict({"retry_after": 3.0}).retry_after == 3


def test_merge_keeps_what_the_patch_does_not_name() -> None:
    base = Faults(error_rate=0.1, latency=Latency("tail", 8, tail_rate=0.1))
    merged = base.merge({"reset_rate": 0.2, "latency": {"ms": 50}})
    assert merged.error_rate == 0.1 and merged.reset_rate == 0.2
    assert merged.latency == Latency("tail", 50, tail_rate=0.1)
    # a patch naming only `ms` on a server without latency means a fixed latency
    assert Faults().merge({"latency": {"ms": 50}}).latency == Latency("fixed", 50)
    with pytest.raises(ValueError, match="unknown faults field"):
        base.merge({"nope": 1})


def test_replace_validates_and_accepts_a_latency_mapping() -> None:
    faults = Faults().replace(hang_rate=1.0, latency={"kind": "fixed", "ms": 3})
    assert faults.hang_rate == 1.0 and faults.latency == Latency("fixed", 3)
    assert Faults().replace(unready_models=["x"]).unready_models == frozenset({"x"})
    with pytest.raises(ValueError, match="must be <= 1"):
        faults.replace(error_rate=0.5)
    with pytest.raises(ValueError, match="unknown faults field"):
        faults.replace(typo=1)


def test_readiness() -> None:
    faults = Faults(unready_models=frozenset({"b"}))
    assert faults.is_ready("a") and not faults.is_ready("b")
    assert not Faults(ready=False).is_ready("a")
