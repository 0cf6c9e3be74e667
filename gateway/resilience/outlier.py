"""Outlier detection with Envoy semantics, for the endpoints of one backend.

Two detectors, both fed by the outcomes the data path already classifies:

* consecutive failures (checked on every `record`): `consecutive_failures` backend
  failures in a row (`outcome.is_failure`) eject the endpoint; any success resets
  the streak. Outcomes that say nothing about the backend (`not is_countable`: a
  client's 4xx, a cancelled hedge loser) neither extend nor break a streak.
* failure percentage (checked by `sweep`, which the caller runs every `interval`
  seconds): an endpoint that served at least `request_volume` countable calls in
  the interval and failed at least `failure_percentage` of them is ejected, provided
  at least `minimum_hosts` endpoints reached that volume.

An ejection lasts `base_ejection * times`, capped at `max_ejection`, where `times`
is the endpoint's ejection multiplier: it grows by one per ejection (up to the
smallest value that reaches the cap, as Envoy bounds its backoff) and shrinks by one
for each sweep interval the endpoint spends un-ejected. Never more than
`max(1, floor(n * max_ejection_percent))` endpoints are ejected at once: like Envoy,
one endpoint is always ejectable even at 0 %. An ejection ends on its own at its
`until` (checked lazily) or when an active health check succeeds (`uneject`).

What the caller does: route around endpoints for which `is_ejected` is True, count
returned `Ejection`s in metrics, call `sweep` on a timer, call `uneject` on a passing
health check of an ejected endpoint.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.resilience.outcome import Outcome


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Outlier detection settings (Envoy defaults except where noted).

    consecutive_failures: streak that ejects; 0 disables this detector.
    interval: seconds between `sweep` calls (the caller's timer uses it).
    failure_percentage: fraction in [0, 1]; None disables this detector.
    request_volume: calls an endpoint needs in an interval to be judged by percentage.
    minimum_hosts: endpoints that must reach `request_volume` for percentage ejection.
    base_ejection / max_ejection: seconds; ejection time = base * times, capped.
    max_ejection_percent: fraction in [0, 1] of endpoints that may be ejected at once.
    """

    consecutive_failures: int = 5
    interval: float = 10.0
    failure_percentage: float | None = None
    request_volume: int = 20
    minimum_hosts: int = 1
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: float = 0.5

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0:
            raise ValueError(
                "outlier consecutive_failures must be 0 (disabled) or more, "
                f"got {self.consecutive_failures!r}"
            )
        if not (self.interval > 0 and math.isfinite(self.interval)):
            raise ValueError(
                f"outlier interval must be a positive number of seconds, got {self.interval!r}"
            )
        if self.failure_percentage is not None and not 0.0 <= self.failure_percentage <= 1.0:
            raise ValueError(
                "outlier failure_percentage must be a fraction in [0, 1] or None, "
                f"got {self.failure_percentage!r}"
            )
        if self.request_volume < 1:
            raise ValueError(
                f"outlier request_volume must be at least 1, got {self.request_volume!r}"
            )
        if self.minimum_hosts < 1:
            raise ValueError(
                f"outlier minimum_hosts must be at least 1, got {self.minimum_hosts!r}"
            )
        if not (self.base_ejection > 0 and math.isfinite(self.base_ejection)):
            raise ValueError(
                "outlier base_ejection must be a positive number of seconds, "
                f"got {self.base_ejection!r}"
            )
        if not (self.max_ejection >= self.base_ejection and math.isfinite(self.max_ejection)):
            raise ValueError(
                f"outlier max_ejection ({self.max_ejection!r}) must be at least "
                f"base_ejection ({self.base_ejection!r})"
            )
        if not 0.0 <= self.max_ejection_percent <= 1.0:
            raise ValueError(
                "outlier max_ejection_percent must be a fraction in [0, 1], "
                f"got {self.max_ejection_percent!r}"
            )

    def max_ejected(self, hosts: int) -> int:
        """Endpoints that may be ejected at once out of `hosts`: never below 1 (Envoy)."""
        return max(1, math.floor(hosts * self.max_ejection_percent + 1e-9))

    def ejection_time(self, times: int) -> float:
        """Seconds of the `times`-th consecutive ejection: base * times, capped at max."""
        return min(self.base_ejection * times, self.max_ejection)


class EjectionReason(enum.Enum):
    CONSECUTIVE_FAILURES = "consecutive_failures"
    FAILURE_PERCENTAGE = "failure_percentage"


@dataclass(frozen=True, slots=True)
class Ejection:
    """An ejection that just started: `endpoint` takes no traffic until `until`.

    `times` is the multiplier this ejection used (its length is base * times, capped).
    """

    endpoint: str
    reason: EjectionReason
    until: float
    times: int


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One endpoint as the admin view shows it."""

    endpoint: str
    ejected: bool
    until: float | None
    times: int
    ejections: int  # lifetime count
    consecutive_failures: int
    interval_calls: int
    interval_failures: int


class _Host:
    """Mutable per-endpoint state; shared between detectors across a reload."""

    __slots__ = ("calls", "clean", "ejections", "failures", "streak", "times", "until")

    def __init__(self) -> None:
        self.streak = 0
        self.until = -math.inf  # ejected while until > now
        self.times = 0
        self.ejections = 0
        self.calls = 0  # countable calls since the last sweep
        self.failures = 0
        self.clean = True  # not ejected at any point since the last sweep


class OutlierDetector:
    """Ejection bookkeeping for one backend's endpoints, identified by id."""

    __slots__ = ("_hosts", "_max_ejected", "_max_times", "config")

    def __init__(self, config: OutlierConfig, endpoints: Sequence[str]) -> None:
        if len(set(endpoints)) != len(endpoints):
            raise ValueError(f"outlier detector endpoints must be unique, got {list(endpoints)!r}")
        self.config = config
        self._hosts: dict[str, _Host] = {e: _Host() for e in endpoints}
        self._max_ejected = config.max_ejected(len(endpoints))
        self._max_times = math.ceil(config.max_ejection / config.base_ejection - 1e-9)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(self._hosts)

    def with_endpoints(self, endpoints: Sequence[str]) -> OutlierDetector:
        """A detector for a new endpoint set (policy reload), keeping the state of kept ids.

        The kept endpoints' state objects are shared, not copied: outcomes that in-flight
        requests still report through the old snapshot's detector count in the new one.
        Swap the new detector in and stop using the old one for decisions.
        """
        new = OutlierDetector(self.config, endpoints)
        for endpoint in new._hosts:
            old = self._hosts.get(endpoint)
            if old is not None:
                new._hosts[endpoint] = old
        return new

    # --- questions ---------------------------------------------------------------------------

    def is_ejected(self, endpoint: str, now: float) -> bool:
        """True while `endpoint` is ejected; unknown endpoints are never ejected. O(1)."""
        host = self._hosts.get(endpoint)
        return host is not None and host.until > now

    def ejected(self, now: float) -> frozenset[str]:
        """Every endpoint ejected at `now` (O(n): for metrics and the admin view)."""
        return frozenset(e for e, h in self._hosts.items() if h.until > now)

    def status(self, now: float) -> list[HostStatus]:
        """Per-endpoint state for the admin view, in endpoint order."""
        return [
            HostStatus(
                endpoint=e,
                ejected=h.until > now,
                until=h.until if h.until > now else None,
                times=h.times,
                ejections=h.ejections,
                consecutive_failures=h.streak,
                interval_calls=h.calls,
                interval_failures=h.failures,
            )
            for e, h in self._hosts.items()
        ]

    # --- reports -----------------------------------------------------------------------------

    def record(self, endpoint: str, outcome: Outcome, now: float) -> Ejection | None:
        """Report one attempt's outcome; returns the ejection it caused, if any.

        A streak that reaches the threshold is reset whether or not the ejection was
        allowed (Envoy does the same), so a capped endpoint needs a fresh streak.
        """
        host = self._hosts.get(endpoint)
        if host is None or not outcome.is_countable:
            return None
        host.calls += 1
        if not outcome.is_failure:
            host.streak = 0
            return None
        host.failures += 1
        threshold = self.config.consecutive_failures
        if threshold:
            host.streak += 1
            if host.streak >= threshold:
                host.streak = 0
                return self._eject(endpoint, host, EjectionReason.CONSECUTIVE_FAILURES, now)
        return None

    def sweep(self, now: float) -> list[Ejection]:
        """The interval check; call every `config.interval` seconds.

        Ejects by failure percentage over the interval just ended (worst first, within the
        cap), lets the multiplier of endpoints that stayed un-ejected all interval decay by
        one, and starts a new interval. Returns the ejections it made.
        """
        cfg = self.config
        ejections: list[Ejection] = []
        threshold = cfg.failure_percentage
        if threshold is not None:
            judged = [
                (h.failures / h.calls, i, e, h)
                for i, (e, h) in enumerate(self._hosts.items())
                if h.calls >= cfg.request_volume
            ]
            if len(judged) >= cfg.minimum_hosts:
                judged.sort(key=lambda t: (-t[0], t[1]))
                for rate, _, endpoint, host in judged:
                    if rate < threshold:
                        break
                    ejection = self._eject(endpoint, host, EjectionReason.FAILURE_PERCENTAGE, now)
                    if ejection is not None:
                        ejections.append(ejection)
        for host in self._hosts.values():
            if host.until > now:
                host.clean = False
            else:
                if host.clean and host.times > 0:
                    host.times -= 1
                host.clean = True
                host.until = -math.inf
            host.calls = host.failures = 0
        return ejections

    def uneject(self, endpoint: str, now: float) -> bool:
        """End an ejection early (an active health check passed); True if it was ejected.

        The multiplier is kept, so an endpoint that fails again is ejected for longer.
        """
        host = self._hosts.get(endpoint)
        if host is None or not host.until > now:
            return False
        host.until = -math.inf
        host.streak = 0
        return True

    # --- internals ---------------------------------------------------------------------------

    def _eject(
        self, endpoint: str, host: _Host, reason: EjectionReason, now: float
    ) -> Ejection | None:
        if host.until > now:
            return None
        active = 0
        for h in self._hosts.values():
            if h.until > now:
                active += 1
        if active >= self._max_ejected:
            return None
        times = host.times + 1 if host.times < self._max_times else self._max_times
        host.times = times
        host.until = until = now + self.config.ejection_time(times)
        host.ejections += 1
        host.clean = False
        host.streak = 0
        return Ejection(endpoint, reason, until, times)
