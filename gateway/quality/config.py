"""Compiled quality settings of one route: frozen, validated, read by the tap and the worker."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gateway.quality.drift import DriftThresholds

# How many slices a profile window is cut into: the window slides by one slice at a time.
WINDOW_SLICES = 4


@dataclass(frozen=True, slots=True)
class QualityConfig:
    """Feature sampling and drift scoring of one route.

    sample: share of the route's answered exchanges whose features are profiled, in [0, 1].
    window: seconds of traffic the current profile covers (it slides by window / slices).
    thresholds: drift thresholds and the minimum sample size before any verdict.
    """

    sample: float
    window: float
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample <= 1.0:
            raise ValueError(f"quality sample must be a share in [0, 1], got {self.sample!r}")
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError(f"quality window must be a positive duration, got {self.window!r}")


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    """Mirroring a share of a route's requests to a backend whose answers are only compared.

    share: fraction of the route's answered requests mirrored, in (0, 1].
    max_concurrency: shadow requests of this route in flight at once; more are skipped.
    timeout: seconds a shadow request may take before it counts as timed out.
    max_body: bytes of a shadow answer read at most (a longer one is dropped, not compared).
    """

    backend: str
    share: float
    max_concurrency: int = 8
    timeout: float = 2.0
    max_body: int = 1 << 20

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"shadow share must be in (0, 1], got {self.share!r}")
        if self.max_concurrency < 1:
            raise ValueError(f"shadow max_concurrency must be >= 1, got {self.max_concurrency!r}")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"shadow timeout must be a positive duration, got {self.timeout!r}")


@dataclass(frozen=True, slots=True)
class ContractConfig:
    """Checking KServe v2 inputs against the model's metadata before they reach a backend.

    metadata_ttl: seconds a fetched `/v2/models/<m>` answer is trusted.
    fetch_timeout: seconds one metadata fetch may take; a request waiting for it waits at
        most this long (then it is let through unchecked and counted).
    """

    metadata_ttl: float = 60.0
    fetch_timeout: float = 1.0

    def __post_init__(self) -> None:
        for name in ("metadata_ttl", "fetch_timeout"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"contract {name} must be a positive duration, got {v!r}")
