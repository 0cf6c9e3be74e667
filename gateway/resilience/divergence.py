"""Distances between two label distributions given as counts (pure arithmetic)."""

from __future__ import annotations

import math
from collections.abc import Mapping


def js_distance_counts(p: Mapping[str, int], q: Mapping[str, int]) -> float:
    """Jensen-Shannon distance (square root of the divergence, log base 2) in [0, 1].

    0 when both give every label the same share, 1 when they share no label. Raises
    ValueError when either side counted nothing: there is no distribution to compare.
    """
    np_, nq = sum(p.values()), sum(q.values())
    if np_ <= 0 or nq <= 0:
        raise ValueError("a Jensen-Shannon distance needs counts on both sides")
    total = 0.0
    for label in set(p) | set(q):
        a = p.get(label, 0) / np_
        b = q.get(label, 0) / nq
        m = (a + b) / 2
        if a > 0:
            total += a * math.log2(a / m)
        if b > 0:
            total += b * math.log2(b / m)
    return math.sqrt(max(total / 2, 0.0))
