"""Drift scores between two profiles: PSI and KS for numbers, Jensen-Shannon for labels.

Pure: sketches in, numbers out. The definitions (docs/quality.md says why these):

* PSI (population stability index) over `PSI_BINS` bins cut at the reference's deciles
  (inverted-CDF quantiles, so a bin edge is a value the reference holds; repeated edges
  collapse, so a constant feature has two bins: up to the value and above it). Bins are
  right-closed: (-inf, e1], (e1, e2], ..., (ek, +inf). PSI = sum (c - r) * ln(c / r) over
  bins, with each share floored at `PSI_FLOOR` so that an empty bin is a large finite
  term rather than infinity.
* KS: the two-sample Kolmogorov-Smirnov statistic sup |F_ref(x) - F_cur(x)|, evaluated at
  every value either sketch keeps. While a sketch holds at most k values it keeps them
  all and the statistic is exact (it equals scipy's `ks_2samp` statistic); past that it
  is within the sketches' rank error (about 1.3 % each at k = 200).
* JS: the Jensen-Shannon distance (the square root of the divergence, logarithms base 2),
  in [0, 1]: 0 for the same label shares, 1 for disjoint labels.

A score is only given when both sides hold at least `min_samples` values; below that
there is no verdict (None), never a guess.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.quality.sketch import CategoricalSketch, NumericSketch, Profile
from gateway.resilience.divergence import js_distance_counts

PSI_BINS = 10
PSI_FLOOR = 1e-4


class DriftStat(enum.StrEnum):
    """Which statistic a score is; the value is the metric label."""

    PSI = "psi"
    KS = "ks"
    JS = "js"


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    """Scores above these are drift; `min_samples` values per side before any verdict."""

    psi: float = 0.2
    ks: float = 0.1
    js: float = 0.1
    min_samples: int = 200

    def __post_init__(self) -> None:
        for name in ("psi", "ks", "js"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"drift threshold {name} must be a positive number, got {v!r}")
        if self.ks > 1 or self.js > 1:
            raise ValueError("the ks and js thresholds are at most 1 (both scores are in [0, 1])")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be at least 1, got {self.min_samples!r}")

    def of(self, stat: DriftStat) -> float:
        value: float = getattr(self, stat.value)
        return value


@dataclass(frozen=True, slots=True)
class DriftScore:
    """One feature's score for one statistic; `value` None means too few samples to judge."""

    feature: str
    stat: DriftStat
    value: float | None
    threshold: float
    reference_n: int
    current_n: int

    @property
    def drifted(self) -> bool:
        return self.value is not None and self.value > self.threshold

    def to_dict(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "stat": self.stat.value,
            "value": None if self.value is None else round(self.value, 6),
            "threshold": self.threshold,
            "reference_n": self.reference_n,
            "current_n": self.current_n,
            "drifted": self.drifted,
        }


def _shares(cdf: Sequence[float]) -> list[float]:
    out = []
    prev = 0.0
    for f in (*cdf, 1.0):
        out.append(max(f - prev, 0.0))
        prev = f
    return out


def psi(reference: NumericSketch, current: NumericSketch, bins: int = PSI_BINS) -> float:
    """Population stability index of `current` against `reference` (see the module doc)."""
    if reference.n == 0 or current.n == 0:
        raise ValueError("psi needs values on both sides")
    edges = sorted(set(reference.quantiles([i / bins for i in range(1, bins)])))
    r = _shares(reference.cdf(edges))
    c = _shares(current.cdf(edges))
    total = 0.0
    for ri, ci in zip(r, c, strict=True):
        ri, ci = max(ri, PSI_FLOOR), max(ci, PSI_FLOOR)
        total += (ci - ri) * math.log(ci / ri)
    return total


def ks(reference: NumericSketch, current: NumericSketch) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (see the module doc)."""
    if reference.n == 0 or current.n == 0:
        raise ValueError("ks needs values on both sides")
    points = sorted(set(reference.items()) | set(current.items()))
    fr = reference.cdf(points)
    fc = current.cdf(points)
    return max(abs(a - b) for a, b in zip(fr, fc, strict=True))


def js_distance(reference: CategoricalSketch, current: CategoricalSketch) -> float:
    """Jensen-Shannon distance (base 2) between the label shares of two sketches."""
    if reference.n == 0 or current.n == 0:
        raise ValueError("js needs labels on both sides")
    return js_distance_counts(reference.counts, current.counts)


def score_feature(
    name: str,
    reference: NumericSketch | CategoricalSketch,
    current: NumericSketch | CategoricalSketch | None,
    thresholds: DriftThresholds,
) -> list[DriftScore]:
    """The scores of one feature (PSI and KS, or JS); empty when the kinds differ."""
    rn = reference.n
    cn = current.n if current is not None else 0
    enough = rn >= thresholds.min_samples and cn >= thresholds.min_samples
    if isinstance(reference, NumericSketch):
        if current is not None and not isinstance(current, NumericSketch):
            return []
        out = []
        for stat, fn in ((DriftStat.PSI, psi), (DriftStat.KS, ks)):
            value = fn(reference, current) if enough and current is not None else None
            out.append(DriftScore(name, stat, value, thresholds.of(stat), rn, cn))
        return out
    if current is not None and not isinstance(current, CategoricalSketch):
        return []
    value = js_distance(reference, current) if enough and current is not None else None
    return [DriftScore(name, DriftStat.JS, value, thresholds.js, rn, cn)]


def compare(reference: Profile, current: Profile, thresholds: DriftThresholds) -> list[DriftScore]:
    """Every feature of the reference scored against the current profile, in name order."""
    out: list[DriftScore] = []
    for name in sorted(reference.sketches):
        out.extend(
            score_feature(name, reference.sketches[name], current.sketches.get(name), thresholds)
        )
    return out
