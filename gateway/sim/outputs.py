"""What a simulated classifier answers: a knob to shift its outputs and to disagree.

With `classes` > 0 a KServe v2 answer also carries `PROBS`, an FP32 `[batch, classes]`
tensor of class probabilities: for each row x of the first input, the softmax of
`x[k % len(x)] + bias[k]` over classes k. The answer is a pure function of the input, so
two sims with the same settings agree on every request; `bias` shifts the mix of
predicted classes (a drifted model); `disagree_rate` is the share of answers whose
probabilities are rotated by one class, so the predicted class differs from what the
same settings would answer otherwise (a shadow that disagrees that often).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PROBS_NAME = "PROBS"
MAX_CLASSES = 1000
_KEYS = ("classes", "bias", "disagree_rate")


@dataclass(frozen=True, slots=True)
class Outputs:
    """The classifier's settings; the default adds nothing to answers."""

    classes: int = 0
    bias: tuple[float, ...] = ()
    disagree_rate: float = 0.0

    def __post_init__(self) -> None:
        c = self.classes
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_CLASSES:
            raise ValueError(f"outputs.classes must be an integer 0-{MAX_CLASSES}, got {c!r}")
        bias = tuple(self.bias)
        for b in bias:
            if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b):
                raise ValueError(f"outputs.bias must be a list of finite numbers, got {b!r}")
        if len(bias) > c:
            raise ValueError(f"outputs.bias has {len(bias)} entries for {c} classes")
        object.__setattr__(self, "bias", tuple(float(b) for b in bias))
        rate = self.disagree_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError(f"outputs.disagree_rate must be between 0 and 1, got {rate!r}")

    def probabilities(
        self, values: Sequence[float], shape: Sequence[int], rng: random.Random
    ) -> dict[str, Any] | None:
        """The `PROBS` output tensor for one request's first input, or None when off."""
        c = self.classes
        if c == 0 or not values:
            return None
        rows = shape[0] if len(shape) >= 2 and shape[0] > 0 else 1
        width = max(1, len(values) // rows)
        bias = self.bias + (0.0,) * (c - len(self.bias))
        data: list[float] = []
        for r in range(rows):
            row = values[r * width : (r + 1) * width] or [0.0]
            logits = [row[k % len(row)] + bias[k] for k in range(c)]
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            total = sum(exps)
            probs = [e / total for e in exps]
            if self.disagree_rate and rng.random() < self.disagree_rate:
                probs = probs[-1:] + probs[:-1]  # the winner moves to the next class
            data.extend(probs)
        return {"name": PROBS_NAME, "datatype": "FP32", "shape": [rows, c], "data": data}

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "bias": list(self.bias),
            "disagree_rate": self.disagree_rate,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Outputs:
        """Build from JSON; ValueError names the field on bad input."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"outputs must be an object, got {data!r}")
        unknown = sorted(str(k) for k in data if k not in _KEYS)
        if unknown:
            raise ValueError(
                f"unknown outputs field(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}"
            )
        bias = data.get("bias", ())
        if isinstance(bias, str) or not isinstance(bias, Sequence):
            raise ValueError(f"outputs.bias must be a list of numbers, got {bias!r}")
        return cls(
            classes=data.get("classes", 0),
            bias=tuple(bias),
            disagree_rate=data.get("disagree_rate", 0.0),
        )
