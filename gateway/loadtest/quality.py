"""Data and model quality in a load test: what the gateway said about drift, its shadow and
its canaries, sampled through the admin API during the run, and the verdicts on it.

The runner reads `GET /admin/quality` and `GET /admin/status` of the first replica every
second and at every phase bound (`QualitySample`); everything here is pure: samples in,
series, a summary and verdicts out, so `results.json` holds what the report draws and a
test can judge made-up samples. Drift profiles are per replica: with several replicas,
the samples are the first replica's view (it sees its share of the traffic).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.loadtest.scenario import PhaseModel

__all__ = [
    "QualitySample",
    "judge_quality",
    "quality_lines",
    "quality_series",
    "quality_summary",
    "wants_quality",
]


@dataclass(frozen=True, slots=True)
class QualitySample:
    """The admin API's answers at one moment: `/admin/quality`, each canary's state and
    the last decision it made (with its reason)."""

    quality: Mapping[str, Any]
    canaries: Mapping[str, Mapping[str, Any]]  # route -> {"phase", "weight", ...}
    decisions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_answers(
        cls, quality: Mapping[str, Any], status: Mapping[str, Any] | None
    ) -> QualitySample:
        canaries = {
            str(r["name"]): r["canary"]
            for r in (status or {}).get("routes", [])
            if isinstance(r, Mapping) and isinstance(r.get("canary"), Mapping)
        }
        decisions = {
            str(d["route"]): d
            for d in (status or {}).get("canary_decisions", [])
            if isinstance(d, Mapping) and "route" in d
        }
        return cls(quality, canaries, decisions)

    def scores(self, route: str, backend: str) -> list[Mapping[str, Any]]:
        b = self._backend(route, backend)
        return list(b.get("scores", [])) if b else []

    def _backend(self, route: str, backend: str) -> Mapping[str, Any] | None:
        entry = self.quality.get("routes", {}).get(route) or {}
        q = entry.get("quality") or {}
        found = q.get("backends", {}).get(backend)
        return found if isinstance(found, Mapping) else None

    def shadow(self, route: str) -> Mapping[str, Any] | None:
        entry = self.quality.get("routes", {}).get(route) or {}
        sh = entry.get("shadow")
        return sh if isinstance(sh, Mapping) else None

    def shadow_counts(self, route: str) -> tuple[int, int] | None:
        """(agreed, compared) rows so far; None when the route has no shadow."""
        sh = self.shadow(route)
        if sh is None:
            return None
        rows = int(sh.get("rows") or 0)
        agreement = sh.get("agreement")
        agreed = round(float(agreement) * rows) if agreement is not None else 0
        return agreed, rows


Samples = Mapping[float, QualitySample | None]


def wants_quality(routes: Sequence[Any]) -> bool:
    """Whether a policy's routes give the admin API anything to sample (quality, shadow,
    canary), from the loaded policy model's routes."""
    return any(
        getattr(r, "quality", None) is not None
        or getattr(r, "shadow", None) is not None
        or getattr(r, "canary", None) is not None
        for r in routes
    )


def _in(samples: Samples, start: float, end: float) -> list[tuple[float, QualitySample]]:
    return [(t, s) for t, s in sorted(samples.items()) if start <= t <= end and s is not None]


def _at(samples: Samples, t: float) -> QualitySample | None:
    """The sample taken at `t` (every phase bound is sampled)."""
    return samples.get(t)


def drift_detected(
    samples: Samples, start: float, end: float, route: str, backend: str, feature: str
) -> tuple[bool, bool, float | None]:
    """(judged, drifted, first time drifted) for one feature over [start, end].

    Judged: some sample scored the feature (a value, not an absence for want of samples).
    """
    judged, first = False, None
    for t, s in _in(samples, start, end):
        for score in s.scores(route, backend):
            if score.get("feature") != feature:
                continue
            if score.get("value") is not None:
                judged = True
            if score.get("drifted") and first is None:
                first = t
    return judged, first is not None, first


def judge_quality(phase: PhaseModel, samples: Samples) -> list[tuple[str, str, str, bool]]:
    """The quality verdicts of a phase: (slo, wanted, measured, passed) each."""
    slo = phase.slo
    out: list[tuple[str, str, str, bool]] = []
    for d in slo.drift:
        judged, drifted, first = drift_detected(
            samples, phase.from_, phase.to, d.route, d.backend, d.feature
        )
        name = f"drift {d.route}/{d.backend} {d.feature}"
        wanted = "detected" if d.detected else "judged, not detected"
        if not judged and not drifted:
            measured = "never scored"
        elif drifted:
            measured = f"detected at {first:g}s"
        else:
            measured = "not detected"
        passed = drifted if d.detected else judged and not drifted
        out.append((name, wanted, measured, passed))
    for route, bound in slo.shadow_agreement.items():
        a, b = _at(samples, phase.from_), _at(samples, phase.to)
        ca = a.shadow_counts(route) if a is not None else None
        cb = b.shadow_counts(route) if b is not None else None
        name = f"shadow agreement {route}"
        if ca is None or cb is None or cb[1] - ca[1] <= 0:
            out.append((name, str(bound), "unknown", False))
            continue
        agreed, rows = cb[0] - ca[0], cb[1] - ca[1]
        share = agreed / rows
        out.append((name, str(bound), f"{share * 100:.1f}% of {rows}", bound.holds(share)))
    for route, wanted in slo.canary.items():
        s = _at(samples, phase.to)
        state = s.canaries.get(route) if s is not None else None
        measured = str(state.get("phase")) if state is not None else "unknown"
        out.append((f"canary {route}", wanted, measured, measured == wanted))
    return out


def _seconds(samples: Samples, duration: float) -> list[float]:
    n = max(1, math.ceil(duration - 1e-9))
    return [float(k) for k in range(n + 1)]


def quality_series(samples: Samples, duration: float) -> dict[str, Any]:
    """Per-second series for results.json and the report (None where nothing was known).

    drift: route -> backend -> feature -> stat -> {threshold, values}; shadow: route ->
    agreement over each second (and rows compared so far); canary: route -> phase and
    weight at each second.
    """
    times = _seconds(samples, duration)
    drift: dict[str, dict[str, dict[str, dict[str, dict[str, Any]]]]] = {}
    for k, t in enumerate(times):
        s = samples.get(t)
        if s is None:
            continue
        for route, entry in s.quality.get("routes", {}).items():
            for backend, b in ((entry.get("quality") or {}).get("backends") or {}).items():
                for score in b.get("scores", []):
                    feature, stat = str(score.get("feature")), str(score.get("stat"))
                    cell = (
                        drift.setdefault(route, {}).setdefault(backend, {})
                        .setdefault(feature, {}).setdefault(stat, {
                            "threshold": score.get("threshold"), "values": [None] * len(times),
                        })
                    )  # fmt: skip
                    cell["values"][k] = score.get("value")
    shadow: dict[str, dict[str, list[Any]]] = {}
    canary: dict[str, dict[str, list[Any]]] = {}
    for k, t in enumerate(times):
        s = samples.get(t)
        if s is None:
            continue
        for route in s.quality.get("routes", {}):
            counts = s.shadow_counts(route)
            if counts is None:
                continue
            series = shadow.setdefault(
                route, {"agreement": [None] * len(times), "rows": [None] * len(times)}
            )
            series["rows"][k] = counts[1]
            prev = samples.get(times[k - 1]) if k else None
            before = prev.shadow_counts(route) if prev is not None else None
            if before is not None and counts[1] > before[1]:
                series["agreement"][k] = (counts[0] - before[0]) / (counts[1] - before[1])
        for route, state in s.canaries.items():
            series = canary.setdefault(
                route, {"phase": [None] * len(times), "weight": [None] * len(times)}
            )
            series["phase"][k] = state.get("phase")
            series["weight"][k] = state.get("weight")
    return {"t": times, "drift": drift, "shadow": shadow, "canary": canary}


def quality_summary(samples: Samples, duration: float) -> dict[str, Any]:
    """Per route: features found drifted (when first, by backend), the shadow's agreement
    over the run, each canary's last phase (and when it was rolled back or promoted)."""
    routes: dict[str, Any] = {}
    ordered = [(t, s) for t, s in sorted(samples.items()) if s is not None]
    for t, s in ordered:
        for route, entry in s.quality.get("routes", {}).items():
            r = routes.setdefault(route, {})
            for backend, b in ((entry.get("quality") or {}).get("backends") or {}).items():
                first = r.setdefault("drift", {}).setdefault(backend, {})
                for feature in b.get("drifted", []):
                    first.setdefault(feature, t)
        for route, state in s.canaries.items():
            c = routes.setdefault(route, {}).setdefault("canary", {})
            phase = state.get("phase")
            if phase in ("rolled-back", "promoted") and "decided_at" not in c:
                c["decided_at"] = t
                c["reason"] = (s.decisions.get(route) or {}).get("reason")
            c["phase"], c["weight"] = phase, state.get("weight")
    if ordered:
        last = ordered[-1][1]
        for route in last.quality.get("routes", {}):
            counts = last.shadow_counts(route)
            if counts is not None:
                agreed, rows = counts
                routes.setdefault(route, {})["shadow"] = {
                    "backend": (last.shadow(route) or {}).get("backend"),
                    "compared": rows,
                    "agreement": agreed / rows if rows else None,
                }
    return {"routes": routes, "samples": len(ordered), "duration": duration}


def quality_lines(summary: Mapping[str, Any], shifts: Sequence[tuple[float, str]]) -> list[str]:
    """The quality section of the text report: the timeline's actions (when the inputs
    shifted), then one line per finding."""
    lines: list[str] = []
    routes = summary.get("routes", {})
    if not routes:
        return lines
    lines.append("quality (the first replica's admin API, sampled every second):")
    for at, label in shifts:
        lines.append(f"  {at:6.2f}s  {label}")
    for route, r in sorted(routes.items()):
        for backend, features in sorted((r.get("drift") or {}).items()):
            if features:
                found = ", ".join(f"{f} at {t:g}s" for f, t in sorted(features.items(),
                                                                       key=lambda x: x[1]))  # fmt: skip
                lines.append(f"  drift {route}/{backend}: {found}")
            else:
                lines.append(f"  drift {route}/{backend}: none detected")
        sh = r.get("shadow")
        if sh is not None:
            agreement = sh["agreement"]
            text = "n/a" if agreement is None else f"{agreement * 100:.1f}%"
            lines.append(f"  shadow {route} -> {sh['backend']}: {text} agreement "
                         f"over {sh['compared']} compared rows")  # fmt: skip
        c = r.get("canary")
        if c is not None:
            when = f" at {c['decided_at']:g}s" if "decided_at" in c else ""
            why = f": {c['reason']}" if c.get("reason") else ""
            lines.append(f"  canary {route}: {c['phase']}{when} (weight {c['weight']:g}%){why}")
    return lines
