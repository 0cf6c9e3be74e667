"""A profile of the last `window` seconds, kept as slices that merge on demand (pure)."""

from __future__ import annotations

import math
from collections import deque

from gateway.quality.features import Features
from gateway.quality.sketch import Profile


class ProfileWindow:
    """The current profile of one route and backend: `slices` slices of `window / slices`.

    `add` folds an exchange into the slice of `now`; `profile(now)` merges the slices that
    still overlap the window. Old slices are dropped as time moves on, so memory stays at
    `slices + 1` profiles whatever the traffic.
    """

    __slots__ = ("_parts", "_slice", "_slices")

    def __init__(self, window: float, slices: int) -> None:
        if not (window > 0 and math.isfinite(window)) or slices < 1:
            raise ValueError("a profile window needs a positive duration and at least 1 slice")
        self._slice = window / slices
        self._slices = slices
        self._parts: deque[tuple[int, Profile]] = deque()

    def _index(self, now: float) -> int:
        return math.floor(now / self._slice)

    def _trim(self, index: int) -> None:
        parts = self._parts
        while parts and parts[0][0] <= index - self._slices - 1:
            parts.popleft()

    def add(self, features: Features, now: float) -> None:
        index = self._index(now)
        parts = self._parts
        if not parts or parts[-1][0] < index:
            parts.append((index, Profile()))
            self._trim(index)
        parts[-1][1].add(features)

    def profile(self, now: float) -> Profile:
        """The merged profile of the last window (the running slice and `slices` before it)."""
        index = self._index(now)
        self._trim(index)
        return Profile.merged(p for i, p in self._parts if i > index - self._slices - 1)
