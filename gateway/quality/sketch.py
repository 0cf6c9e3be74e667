"""Mergeable summaries of feature values: what a profile is made of.

Numeric features go into Apache DataSketches KLL sketches (`kll_doubles_sketch`, k=200:
a normalised rank error of about 1.3 % at any size, a few KB each, mergeable across
time slices and replicas, with a portable binary form). Categorical features go into
fixed-cap label counts: at most `MAX_CATEGORIES` distinct labels, the rest counted under
`OTHER`, so a client that invents labels cannot grow memory or metrics.

A `Profile` is the sketches of one route and backend, one per feature, at most
`MAX_FEATURES` of them (the rest are refused and counted). Profiles merge (slices of a
window, replicas' references) and serialise to bytes (`to_bytes` / `from_bytes`) for
the state store and for reference files. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from datasketches import kll_doubles_sketch

from gateway.quality.features import Features

KLL_K = 200
MAX_CATEGORIES = 64
MAX_FEATURES = 64
OTHER = "__other__"
FORMAT = "tailguard-profile/1"


class NumericSketch:
    """A KLL quantile sketch of one numeric feature (non-finite values are not kept)."""

    __slots__ = ("_kll",)
    kind = "numeric"

    def __init__(self, kll: kll_doubles_sketch | None = None) -> None:
        self._kll = kll if kll is not None else kll_doubles_sketch(KLL_K)

    @property
    def n(self) -> int:
        return int(self._kll.n)

    def update(self, values: Sequence[float]) -> None:
        if len(values) <= 16:
            update = self._kll.update
            for v in values:
                if v - v == 0:  # finite (NaN and infinities give NaN)
                    update(v)
            return
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size:
            self._kll.update(arr)

    def merge(self, other: NumericSketch) -> None:
        self._kll.merge(other._kll)

    def copy(self) -> NumericSketch:
        return NumericSketch(kll_doubles_sketch.deserialize(self._kll.serialize()))

    def cdf(self, points: Sequence[float]) -> list[float]:
        """P(X <= x) at each of the ascending `points`."""
        if self._kll.is_empty() or not points:
            return [0.0] * len(points)
        return list(self._kll.get_cdf(list(points), True)[:-1])

    def quantiles(self, ranks: Sequence[float]) -> list[float]:
        """The smallest kept value whose inclusive rank reaches each rank (inverted CDF)."""
        return [float(self._kll.get_quantile(r, True)) for r in ranks]

    def items(self) -> list[float]:
        """The distinct values the sketch keeps, ascending (every value while n <= k)."""
        return sorted({float(v) for v, _ in self._kll})

    def to_json(self) -> Any:
        return base64.b64encode(self._kll.serialize()).decode("ascii")

    @classmethod
    def from_json(cls, data: Any) -> NumericSketch:
        if not isinstance(data, str):
            raise ValueError("a numeric sketch is a base64 string")
        try:
            raw = base64.b64decode(data, validate=True)
            return cls(kll_doubles_sketch.deserialize(raw))
        except (ValueError, RuntimeError, IndexError, MemoryError) as e:
            # the library's C++ checks surface as any of these
            raise ValueError(f"not a KLL sketch: {e}") from None


class CategoricalSketch:
    """Counts of at most `MAX_CATEGORIES` labels; later new labels count under `OTHER`."""

    __slots__ = ("counts",)
    kind = "categorical"

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self.counts: dict[str, int] = dict(counts or {})

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def update(self, labels: Iterable[str]) -> None:
        counts = self.counts
        for label in labels:
            if label in counts:
                counts[label] += 1
            elif len(counts) < MAX_CATEGORIES:
                counts[label] = 1
            else:
                counts[OTHER] = counts.get(OTHER, 0) + 1

    def merge(self, other: CategoricalSketch) -> None:
        for label, c in other.counts.items():
            if label in self.counts or len(self.counts) < MAX_CATEGORIES:
                self.counts[label] = self.counts.get(label, 0) + c
            else:
                self.counts[OTHER] = self.counts.get(OTHER, 0) + c

    def copy(self) -> CategoricalSketch:
        return CategoricalSketch(self.counts)

    def to_json(self) -> Any:
        return dict(self.counts)

    @classmethod
    def from_json(cls, data: Any) -> CategoricalSketch:
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in data.items()
        ):
            raise ValueError("a categorical sketch is an object of label counts")
        if len(data) > MAX_CATEGORIES + 1:
            raise ValueError(f"a categorical sketch holds at most {MAX_CATEGORIES} labels")
        return cls(data)


Sketch = NumericSketch | CategoricalSketch


class Profile:
    """One route and backend's features: a sketch per feature, at most `MAX_FEATURES`.

    `exchanges` counts the exchanges folded in; `refused` the feature values turned away
    because the feature cap was reached.
    """

    __slots__ = ("exchanges", "refused", "sketches")

    def __init__(self) -> None:
        self.sketches: dict[str, Sketch] = {}
        self.exchanges = 0
        self.refused = 0

    def add(self, features: Features) -> None:
        """Fold one exchange's features in."""
        self.exchanges += 1
        sketches = self.sketches
        for name, values in features.numeric.items():
            s = sketches.get(name)
            if s is None:
                if len(sketches) >= MAX_FEATURES:
                    self.refused += 1
                    continue
                s = sketches[name] = NumericSketch()
            if isinstance(s, NumericSketch):
                s.update(values)
        for name, labels in features.categorical.items():
            c = sketches.get(name)
            if c is None:
                if len(sketches) >= MAX_FEATURES:
                    self.refused += 1
                    continue
                c = sketches[name] = CategoricalSketch()
            if isinstance(c, CategoricalSketch):
                c.update(labels)

    def merge(self, other: Profile) -> None:
        """Fold `other` in (same features merge; new ones join while under the cap)."""
        self.exchanges += other.exchanges
        self.refused += other.refused
        for name, s in other.sketches.items():
            mine = self.sketches.get(name)
            if mine is None:
                if len(self.sketches) >= MAX_FEATURES:
                    self.refused += 1
                    continue
                self.sketches[name] = s.copy()
            elif isinstance(mine, NumericSketch):
                if isinstance(s, NumericSketch):
                    mine.merge(s)
            elif isinstance(s, CategoricalSketch):
                mine.merge(s)

    def copy(self) -> Profile:
        p = Profile()
        p.merge(self)
        return p

    @classmethod
    def merged(cls, profiles: Iterable[Profile]) -> Profile:
        out = cls()
        for p in profiles:
            out.merge(p)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "exchanges": self.exchanges,
            "features": {
                name: {"kind": s.kind, "sketch": s.to_json()} for name, s in self.sketches.items()
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> Profile:
        """Rebuild a profile from `to_json()`; ValueError names what is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        features = data.get("features")
        exchanges = data.get("exchanges")
        if not isinstance(features, dict) or not isinstance(exchanges, int):
            raise ValueError("a profile needs 'features' (an object) and 'exchanges' (a count)")
        if len(features) > MAX_FEATURES:
            raise ValueError(f"a profile holds at most {MAX_FEATURES} features")
        p = cls()
        p.exchanges = exchanges
        for name, entry in features.items():
            if not isinstance(entry, dict):
                raise ValueError(f"feature {name!r}: expected an object")
            kind = entry.get("kind")
            try:
                if kind == "numeric":
                    p.sketches[name] = NumericSketch.from_json(entry.get("sketch"))
                elif kind == "categorical":
                    p.sketches[name] = CategoricalSketch.from_json(entry.get("sketch"))
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except ValueError as e:
                raise ValueError(f"feature {name!r}: {e}") from None
        return p

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Profile:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"not JSON: {e}") from None
        return cls.from_json(data)
