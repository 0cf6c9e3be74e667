"""Active health check verdicts for one endpoint, with hysteresis.

The checker does the probing; `HealthState` decides. An endpoint turns unhealthy only
after `unhealthy_threshold` failed checks in a row and healthy again only after
`healthy_threshold` passing checks in a row, so a flapping check does not flap traffic.
`next_delay` tells the checker when to probe next: every `interval` while the endpoint
carries traffic, every `idle_interval` while it does not, spread by ± `jitter` so many
gateways do not probe in lockstep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """interval / idle_interval / timeout in seconds; jitter a fraction in [0, 1)."""

    interval: float = 2.0
    idle_interval: float = 10.0
    timeout: float = 0.5
    jitter: float = 0.1
    unhealthy_threshold: int = 2
    healthy_threshold: int = 2

    def __post_init__(self) -> None:
        for name in ("interval", "idle_interval", "timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(
                    f"health {name} must be a positive number of seconds, got {value!r}"
                )
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"health jitter must be a fraction in [0, 1), got {self.jitter!r}")
        if self.unhealthy_threshold < 1:
            raise ValueError(
                f"health unhealthy_threshold must be at least 1, got {self.unhealthy_threshold!r}"
            )
        if self.healthy_threshold < 1:
            raise ValueError(
                f"health healthy_threshold must be at least 1, got {self.healthy_threshold!r}"
            )


class HealthState:
    """One endpoint's health verdict; feed it every check result with `record`."""

    __slots__ = ("_healthy", "config", "consecutive_fail", "consecutive_ok")

    def __init__(self, config: HealthConfig, initially_healthy: bool = True) -> None:
        self.config = config
        self._healthy = initially_healthy
        self.consecutive_ok = 0
        self.consecutive_fail = 0

    @property
    def healthy(self) -> bool:
        """May the endpoint get traffic, as far as active checks can tell."""
        return self._healthy

    def record(self, ok: bool) -> bool:
        """Count one check result; True when it flipped `healthy` (log and update metrics)."""
        if ok:
            self.consecutive_ok += 1
            self.consecutive_fail = 0
            if not self._healthy and self.consecutive_ok >= self.config.healthy_threshold:
                self._healthy = True
                return True
        else:
            self.consecutive_fail += 1
            self.consecutive_ok = 0
            if self._healthy and self.consecutive_fail >= self.config.unhealthy_threshold:
                self._healthy = False
                return True
        return False

    def next_delay(self, idle: bool, rnd: float) -> float:
        """Seconds until the next check; `rnd` is a uniform draw in [0, 1) from the caller's RNG.

        `idle` means the endpoint carried no traffic lately, so it is probed less often, but
        only while it is healthy: an unhealthy endpoint carries no traffic *because* it is
        unhealthy, and must be probed at `interval` to come back soon (Envoy's
        `unhealthy_interval` defaults to `interval` for the same reason).
        """
        base = self.config.idle_interval if idle and self._healthy else self.config.interval
        return base * (1.0 + self.config.jitter * (2.0 * rnd - 1.0))
