"""Weighted traffic split between backends, random or sticky (canaries, A/B, migrations).

`pick(rnd)` spreads requests by weight: a bisect over cumulative weights.

`pick_sticky(key)` sends every request with the same key (a user id, a session) to the
same backend, with shares matching the weights, using weighted rendezvous hashing
(Schindelhauer & Schomaker; the "logarithmic method"): each backend scores
-ln(u) / weight, with u in (0, 1) a stable 64-bit hash of (key, backend), and the lowest
score wins. -ln(u) is exponentially distributed, so backend i wins with probability
exactly wᵢ / Σw. Because a backend's score depends only on its own weight:

- same key, same weights → same backend (on every replica: the hash is stable across
  processes, unlike Python's `hash`);
- raising one backend's weight (others lowered or not) only lowers its own score, so keys
  move only ONTO it; lowering it moves keys only OFF it; backends whose weights all scale
  by the same factor keep their relative order. A canary going 5 % → 25 % keeps every user
  it already had, and a rollback returns each user to where they were before.

Entries with weight 0 are kept (so a split can name a backend at 0 % during a rollout)
but never picked. Cost: `pick` O(log n); `pick_sticky` one 8-byte BLAKE2b per backend.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

_U_SCALE = 2.0**-52
# Sticky answers remembered per split before the memo starts over.
STICKY_MEMO_SIZE = 65_536


@dataclass(frozen=True, slots=True)
class SplitEntry:
    """One backend of a split and its weight (any non-negative scale: 95/5 or 0.95/0.05)."""

    backend: str
    weight: float

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend:
            raise ValueError(f"split backend must be a non-empty name, got {self.backend!r}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(
                f"split weight of '{self.backend}' must be a finite number >= 0, "
                f"got {self.weight!r}"
            )


class WeightedSplit:
    """A weighted choice among backends; immutable, built once per route per policy snapshot."""

    __slots__ = ("_backends", "_cum", "_entries", "_hashers", "_inv_weights", "_memo", "_total")

    def __init__(self, entries: Sequence[SplitEntry]) -> None:
        entries = tuple(entries)
        if not entries:
            raise ValueError("a split needs at least one backend")
        seen: set[str] = set()
        for e in entries:
            if e.backend in seen:
                raise ValueError(f"split names backend '{e.backend}' more than once")
            seen.add(e.backend)
        live = [e for e in entries if e.weight > 0]
        if not live:
            raise ValueError("split weights must sum to more than 0")
        self._entries = entries
        self._backends = tuple(e.backend for e in live)
        cum: list[float] = []
        total = 0.0
        for e in live:
            total += e.weight
            cum.append(total)
        self._cum = tuple(cum)
        self._total = total
        self._inv_weights = tuple(1.0 / e.weight for e in live)
        # One keyed BLAKE2b state per backend, copied per key: the key (≤ 64 bytes) is a
        # digest of the backend name, so any name length works and names never collide.
        self._memo: dict[str | bytes, str] = {}
        self._hashers = tuple(
            hashlib.blake2b(
                digest_size=8, key=hashlib.blake2b(e.backend.encode(), digest_size=32).digest()
            )
            for e in live
        )

    @property
    def entries(self) -> tuple[SplitEntry, ...]:
        return self._entries

    @property
    def backends(self) -> tuple[str, ...]:
        """Backends that can be picked (weight > 0), in entry order."""
        return self._backends

    def share(self, backend: str) -> float:
        """The fraction of traffic `backend` receives (0.0 when absent or weight 0)."""
        for e in self._entries:
            if e.backend == backend:
                return e.weight / self._total
        return 0.0

    def pick(self, rnd: float) -> str:
        """The backend for a non-sticky request; `rnd` uniform in [0, 1)."""
        backends = self._backends
        if len(backends) == 1:
            return backends[0]
        i = bisect_right(self._cum, rnd * self._total)
        return backends[i] if i < len(backends) else backends[-1]

    def pick_sticky(self, key: str | bytes) -> str:
        """The backend for every request carrying `key`; stable while the weights are.

        Answers are remembered per split (a new split, after a reload or a canary step, starts
        afresh): the same users come back, and a dict lookup is far cheaper than the hashes.
        """
        backends = self._backends
        if len(backends) == 1:
            return backends[0]
        memo = self._memo
        hit = memo.get(key)
        if hit is not None:
            return hit
        if len(memo) >= STICKY_MEMO_SIZE:
            memo.clear()  # bounded: a flood of distinct keys costs hashes, never memory
        memo[key] = answer = self._rendezvous(key)
        return answer

    def _rendezvous(self, key: str | bytes) -> str:
        backends = self._backends
        data = key.encode() if isinstance(key, str) else key
        best = 0
        best_score = math.inf
        log = math.log
        for i, (hasher, inv_w) in enumerate(zip(self._hashers, self._inv_weights, strict=True)):
            h = hasher.copy()
            h.update(data)
            # top 52 bits + 0.5 → u strictly inside (0, 1), exactly representable
            u = ((int.from_bytes(h.digest(), "big") >> 12) + 0.5) * _U_SCALE
            score = -log(u) * inv_w
            if score < best_score:
                best_score = score
                best = i
        return backends[best]

    def __repr__(self) -> str:
        inner = ", ".join(f"{e.backend}={e.weight:g}" for e in self._entries)
        return f"WeightedSplit({inner})"


def rendezvous_order(key: str, ids: Sequence[str]) -> list[int]:
    """Indices of `ids` ranked for `key` (highest random weight first): stable while `ids` are.

    Removing one id moves only the keys ranked first on it, each to its next choice, so a
    sequence stays on its endpoint as long as that endpoint is there and usable.
    """
    data = key.encode()
    scores = []
    for i, ident in enumerate(ids):
        h = hashlib.blake2b(data, digest_size=8, key=ident.encode()[:64])
        scores.append((int.from_bytes(h.digest(), "big"), i))
    scores.sort(reverse=True)
    return [i for _, i in scores]
