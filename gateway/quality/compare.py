"""Shadow against primary on the same request: what to compare and the running tallies (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.quality.features import Features
from gateway.resilience.canary import LatencyHistogram


@dataclass(frozen=True, slots=True)
class PairComparison:
    """One request answered by both: rows compared and agreeing, score and token differences.

    `score_diffs` holds, per compared row with score vectors of the same length, the mean
    absolute difference of the two vectors. `token_diff` is shadow minus primary
    completion tokens (chat), or None.
    """

    rows: int
    agreed: int
    score_diffs: tuple[float, ...]
    token_diff: int | None


def compare_answers(primary: Features, shadow: Features) -> PairComparison:
    """Compare two answers to the same request, row by row (a batch has one row per item)."""
    rows = min(len(primary.rows), len(shadow.rows))
    agreed = sum(1 for i in range(rows) if primary.rows[i] == shadow.rows[i])
    diffs = []
    for a, b in zip(primary.scores, shadow.scores, strict=False):
        if len(a) == len(b) and a:
            diffs.append(sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a))
    tokens = None
    if primary.tokens is not None and shadow.tokens is not None:
        tokens = shadow.tokens - primary.tokens
    return PairComparison(rows, agreed, tuple(diffs), tokens)


class ShadowTally:
    """What one route's shadow did since the gateway started (or the route changed)."""

    __slots__ = (
        "agreed", "pairs", "primary_latency", "results", "rows", "score_diff_sum",
        "score_diffs", "shadow_latency", "token_abs_sum", "token_pairs",
    )  # fmt: skip

    def __init__(self) -> None:
        self.results: dict[str, int] = {}
        self.pairs = 0
        self.rows = 0
        self.agreed = 0
        self.score_diffs = 0
        self.score_diff_sum = 0.0
        self.token_pairs = 0
        self.token_abs_sum = 0
        self.primary_latency = LatencyHistogram()
        self.shadow_latency = LatencyHistogram()

    def result(self, what: str) -> None:
        self.results[what] = self.results.get(what, 0) + 1

    def record(self, c: PairComparison, primary_latency: float, shadow_latency: float) -> None:
        self.pairs += 1
        self.rows += c.rows
        self.agreed += c.agreed
        self.score_diffs += len(c.score_diffs)
        self.score_diff_sum += sum(c.score_diffs)
        if c.token_diff is not None:
            self.token_pairs += 1
            self.token_abs_sum += abs(c.token_diff)
        self.primary_latency.record(primary_latency)
        self.shadow_latency.record(shadow_latency)

    def to_dict(self) -> dict[str, object]:
        def ms(h: LatencyHistogram, q: float) -> float | None:
            v = h.quantile(q)
            return None if v is None else round(v * 1000, 2)

        return {
            "results": dict(self.results),
            "pairs": self.pairs,
            "rows": self.rows,
            "agreement": round(self.agreed / self.rows, 4) if self.rows else None,
            "mean_score_diff": (
                round(self.score_diff_sum / self.score_diffs, 6) if self.score_diffs else None
            ),
            "mean_abs_token_diff": (
                round(self.token_abs_sum / self.token_pairs, 3) if self.token_pairs else None
            ),
            "primary_p50_ms": ms(self.primary_latency, 0.5),
            "primary_p99_ms": ms(self.primary_latency, 0.99),
            "shadow_p50_ms": ms(self.shadow_latency, 0.5),
            "shadow_p99_ms": ms(self.shadow_latency, 0.99),
        }
