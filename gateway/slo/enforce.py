"""The error-budget policy: what a route does while one of its SLOs burns its budget fast.

While the fast-burn condition holds (burn above 14.4x over both the 1h and the 5m window,
scaled to the SLO's window) and the short window holds at least `min_bad_events` bad
events, a route's canary stops stepping up (frozen where it is), a canary that causes the
burn is rolled back, and, if the SLO says so, low-priority requests are shed first. All of
it is released as soon as the condition stops holding. An operator's override suspends it
on one route until a given time.

A canary is the cause when it served at least `blame_share` of the bad events in the short
window and at least twice its share of the traffic: at 5 % weight a canary serving half
the errors fails ten times as often as the baseline, while a canary at 60 % that serves
60 % of the errors is no worse than the rest.

`ErrorBudgetPolicy.decide` is pure and keeps no state: the controller asks it on every tick
and acts on what changed since the last answer (that is when it writes the audit log).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.slo.budget import FAST_BURN, FastBurnConfig, SloStatus


@dataclass(frozen=True, slots=True)
class RouteBudgetDecision:
    """What one route does now because of its SLOs' budgets.

    burning: the route's SLOs in fast burn with enough evidence (whatever the override).
    overridden: an operator suspended enforcement until `override_until` (wall seconds).
    freeze_canary: hold the canary (do not step up); rollback_canary: take it off now.
    shed_priority: refuse requests of this priority value and below; None sheds nothing.
    reason: the numbers behind it, in words, for the audit log and `tailguard status`.
    """

    route: str
    burning: tuple[str, ...] = ()
    overridden: bool = False
    override_until: float | None = None
    freeze_canary: bool = False
    rollback_canary: bool = False
    shed_priority: int | None = None
    reason: str = ""

    @property
    def acting(self) -> bool:
        return self.freeze_canary or self.rollback_canary or self.shed_priority is not None

    def to_dict(self) -> dict[str, object]:
        return {
            "route": self.route,
            "burning": list(self.burning),
            "overridden": self.overridden,
            "override_until": self.override_until,
            "freeze_canary": self.freeze_canary,
            "rollback_canary": self.rollback_canary,
            "shed_priority": self.shed_priority,
            "reason": self.reason,
        }


class ErrorBudgetPolicy:
    """Decides, per route, from its SLOs' statuses; see the module docstring."""

    __slots__ = ()

    def decide(
        self,
        now: float,
        route: str,
        slos: Sequence[tuple[SloStatus, FastBurnConfig]],
        *,
        canary_weight: float | None = None,
        override_until: float | None = None,
    ) -> RouteBudgetDecision:
        """`canary_weight` is the route's live canary weight in percent (None: no live canary).

        `override_until` (the same clock as `now`) suspends every action while `now` is
        before it; the decision still says which SLOs burn.
        """
        burning = [(s, cfg) for s, cfg in slos if s.fast_burn and s.short_bad >= cfg.min_bad_events]
        if not burning:
            return RouteBudgetDecision(route)
        names = tuple(s.name for s, _ in burning)
        reason = "; ".join(_burn_text(s) for s, _ in burning)
        if override_until is not None and now < override_until:
            return RouteBudgetDecision(
                route, names, overridden=True, override_until=override_until,
                reason=f"{reason}; enforcement overridden by an operator",
            )  # fmt: skip
        live_canary = canary_weight is not None
        freeze = live_canary and any(cfg.freeze_canary for _, cfg in burning)
        rollback = False
        if live_canary and canary_weight is not None and canary_weight > 0:
            traffic_share = canary_weight / 100.0
            for s, cfg in burning:
                if not cfg.rollback_canary or s.short_bad == 0:
                    continue
                share = s.short_blame / s.short_bad
                if share >= max(cfg.blame_share, min(1.0, 2.0 * traffic_share)):
                    rollback = True
                    reason += (
                        f"; the canary served {share:.0%} of the {s.short_bad} bad events in "
                        f"{FAST_BURN.short} at {canary_weight:g}% of the traffic"
                    )
                    break
        shed_levels = [cfg.shed_priority for _, cfg in burning if cfg.shed_priority is not None]
        return RouteBudgetDecision(
            route,
            names,
            freeze_canary=freeze,
            rollback_canary=rollback,
            shed_priority=max(shed_levels) if shed_levels else None,
            reason=reason,
        )


def _burn_text(s: SloStatus) -> str:
    long, short = s.window_status(FAST_BURN.long), s.window_status(FAST_BURN.short)
    return (
        f"SLO {s.name} burns {long.burn_rate or 0:.1f}x over {FAST_BURN.long} and "
        f"{short.burn_rate or 0:.1f}x over {FAST_BURN.short} (fast burn above "
        f"{FAST_BURN.factor:g}x; {s.short_bad} bad of {short.total})"
    )


__all__ = ["ErrorBudgetPolicy", "RouteBudgetDecision"]
