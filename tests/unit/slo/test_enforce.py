"""The error-budget policy: freeze, blame, shed and override, decided from statuses alone."""

from __future__ import annotations

from gateway.slo.budget import FastBurnConfig, SliKind, SloBudget, SloConfig, SloStatus
from gateway.slo.enforce import ErrorBudgetPolicy

T0 = 1_800_000_000.0
CFG = SloConfig("avail", ("r",), SliKind.AVAILABILITY, 0.999)


def status(bad_every: int, canary_bad_share: float = 0.0, seconds: int = 300) -> SloStatus:
    """10 events a second for `seconds`; every `bad_every`-th bad (0: none)."""
    b = SloBudget(CFG)
    k = 0
    for s in range(seconds):
        for i in range(10):
            k += 1
            bad = bad_every > 0 and k % bad_every == 0
            blame = bad and (k // bad_every) % 100 < canary_bad_share * 100
            b.record(T0 + s + i / 10, bad, blame)
    return b.status(T0 + seconds - 0.001)


def test_no_burn_no_action() -> None:
    d = ErrorBudgetPolicy().decide(T0, "r", [(status(0), FastBurnConfig())], canary_weight=5.0)
    assert not d.burning and not d.acting


def test_fast_burn_freezes_a_live_canary_only() -> None:
    st = status(bad_every=20)  # 5 %: 50x
    policy = ErrorBudgetPolicy()
    d = policy.decide(T0, "r", [(st, FastBurnConfig())], canary_weight=5.0)
    assert d.burning == ("avail",) and d.freeze_canary and not d.rollback_canary
    assert "burns 50.0x over 1h" in d.reason
    no_canary = policy.decide(T0, "r", [(st, FastBurnConfig())], canary_weight=None)
    assert no_canary.burning and not no_canary.freeze_canary
    off = policy.decide(T0, "r", [(st, FastBurnConfig(freeze_canary=False))], canary_weight=5.0)
    assert not off.freeze_canary


def test_too_few_bad_events_is_no_evidence() -> None:
    st = status(bad_every=20, seconds=2)  # 50x, but only 1 bad event
    d = ErrorBudgetPolicy().decide(T0, "r", [(st, FastBurnConfig())], canary_weight=5.0)
    assert st.fast_burn and not d.burning and not d.acting


def test_a_canary_serving_most_errors_is_rolled_back() -> None:
    st = status(bad_every=20, canary_bad_share=0.8)
    d = ErrorBudgetPolicy().decide(T0, "r", [(st, FastBurnConfig())], canary_weight=5.0)
    assert d.rollback_canary and d.freeze_canary
    assert st.short_blame / st.short_bad > 0.8
    assert f"the canary served {st.short_blame / st.short_bad:.0%}" in d.reason
    # the same share at 50 % of the traffic is not twice its share: no blame
    d50 = ErrorBudgetPolicy().decide(T0, "r", [(st, FastBurnConfig())], canary_weight=50.0)
    assert not d50.rollback_canary and d50.freeze_canary
    # and below blame_share it is not the cause either
    low = status(bad_every=20, canary_bad_share=0.3)
    d_low = ErrorBudgetPolicy().decide(T0, "r", [(low, FastBurnConfig())], canary_weight=5.0)
    assert not d_low.rollback_canary
    off = FastBurnConfig(rollback_canary=False)
    assert not ErrorBudgetPolicy().decide(T0, "r", [(st, off)], canary_weight=5.0).rollback_canary


def test_shed_takes_the_highest_level_any_burning_slo_asks_for() -> None:
    st = status(bad_every=20)
    quiet = status(0)
    d = ErrorBudgetPolicy().decide(
        T0, "r",
        [(st, FastBurnConfig(shed_priority=0)), (st, FastBurnConfig(shed_priority=1)),
         (quiet, FastBurnConfig(shed_priority=2))],
    )  # fmt: skip
    assert d.shed_priority == 1


def test_an_override_suspends_every_action_until_it_ends() -> None:
    st = status(bad_every=20, canary_bad_share=0.9)
    cfg = FastBurnConfig(shed_priority=0)
    p = ErrorBudgetPolicy()
    d = p.decide(T0, "r", [(st, cfg)], canary_weight=5.0, override_until=T0 + 60)
    assert d.overridden and d.burning == ("avail",) and not d.acting
    assert "overridden" in d.reason
    after = p.decide(T0 + 61, "r", [(st, cfg)], canary_weight=5.0, override_until=T0 + 60)
    assert not after.overridden and after.rollback_canary and after.shed_priority == 0
