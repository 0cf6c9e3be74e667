"""A clockless token budget that bounds extra attempts (retries, hedges) to a share of traffic.

Why: during an outage every request fails, and a retry policy of "2 attempts" alone
doubles the load on backends that are already drowning (a retry storm). Finagle's
`RetryBudget` and gRPC's retry throttling cap extra attempts to a fraction of the
primary traffic instead. This is the same idea without a clock: every primary
request earns `ratio` tokens (`deposit`), every extra attempt costs one whole token
(`try_spend`). The bucket starts at `reserve` (so the first few requests of a quiet
route can still retry) and never holds more than `max(cap, reserve)` tokens (so a long
healthy spell cannot bank an unbounded burst for the start of the next outage).

Guarantee: over any sequence of calls, extra attempts granted ≤ reserve + ratio x deposits
(and at any point in time ≤ max(cap, reserve) + ratio x deposits since then).

Tokens are counted in integer micro-tokens, so ten deposits at ratio 0.1 earn exactly
one token (float sums would give 0.9999999999999999 and silently deny it).

The caller's contract: call `deposit()` once per primary request (not per attempt),
and `try_spend()` only when an extra attempt will really be sent if it returns True
— it is the last check before sending. One budget is shared by all requests of a
route; it is not thread-safe (the gateway runs it on one event loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_SCALE = 1_000_000  # micro-tokens per token
_ONE = _SCALE


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """Budget settings.

    ratio: tokens earned per primary request; 0.2 lets extra attempts add ≤ 20 % load.
        Resolution is one micro-token (ratios are rounded to 6 decimals).
    reserve: tokens in the bucket at start; also the floor of the capacity.
    cap: most tokens the bucket holds; the effective capacity is max(cap, reserve).
    """

    ratio: float = 0.2
    reserve: float = 3.0
    cap: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio) and self.ratio >= 0):
            raise ValueError(
                f"budget ratio must be a finite fraction >= 0 (0.2 = 20 %), got {self.ratio!r}"
            )
        if not (math.isfinite(self.reserve) and self.reserve >= 0):
            raise ValueError(f"budget reserve must be a finite number >= 0, got {self.reserve!r}")
        if not (math.isfinite(self.cap) and self.cap >= 0):
            raise ValueError(f"budget cap must be a finite number >= 0, got {self.cap!r}")

    @property
    def capacity(self) -> float:
        return max(self.cap, self.reserve)


class TokenBudget:
    """Token bucket filled by primary requests and drained by extra attempts. See module doc."""

    __slots__ = ("_balance", "_capacity", "_earn", "config")

    def __init__(self, ratio: float, reserve: float = 3.0, cap: float = 10.0) -> None:
        self.config = BudgetConfig(ratio=ratio, reserve=reserve, cap=cap)
        self._earn = round(ratio * _SCALE)
        self._capacity = round(self.config.capacity * _SCALE)
        self._balance = round(reserve * _SCALE)

    @classmethod
    def from_config(cls, config: BudgetConfig) -> TokenBudget:
        return cls(config.ratio, config.reserve, config.cap)

    def deposit(self) -> None:
        """Credit one primary request: `ratio` tokens, up to the capacity."""
        b = self._balance + self._earn
        self._balance = b if b < self._capacity else self._capacity

    def try_spend(self) -> bool:
        """Take one token for an extra attempt; False (and nothing taken) when under one token.

        On False the caller must not send the extra attempt (and should count it as
        budget-exhausted in metrics).
        """
        if self._balance >= _ONE:
            self._balance -= _ONE
            return True
        return False

    def can_spend(self) -> bool:
        """Whether `try_spend` would succeed now; takes nothing (for admin views and metrics)."""
        return self._balance >= _ONE

    @property
    def balance(self) -> float:
        """Tokens currently in the bucket (fractional)."""
        return self._balance / _SCALE

    @property
    def capacity(self) -> float:
        return self._capacity / _SCALE

    def __repr__(self) -> str:
        c = self.config
        return (
            f"TokenBudget(ratio={c.ratio!r}, reserve={c.reserve!r}, cap={c.cap!r}, "
            f"balance={self.balance!r})"
        )
