"""The PNG report of a run, drawn from results.json alone (so it can be redrawn later).

Stacked panels share the time axis: latency percentiles per second (log scale), success
ratio per second, the burn rate of each policy SLO (when the policy has SLOs), the
gateway's quality findings (when its policy has quality, shadow or canary sections: drift
scores per feature as a multiple of their thresholds, shadow agreement, canary weight and
verdict), and where the traffic went (share per region, then per backend — or
per sim when there is one backend). Every timeline action is a dashed vertical line
with its label; every phase is a shaded span named with its verdict. matplotlib is an
optional dependency (`pip install tailguard[loadtest]`): it is imported here only, with
the Agg backend, and a run without it still writes results.json.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

_PASS, _FAIL = "#2e7d32", "#c62828"
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
_PHASE_SHADES = ("#e3f2fd", "#fff8e1", "#f3e5f5", "#e8f5e9", "#fce4ec")


def _shares(series: Mapping[str, Sequence[int]], sent: Sequence[int]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, counts in series.items():
        out[name] = [c / s * 100.0 if s else 0.0 for c, s in zip(counts, sent, strict=True)]
    return out


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _steps(values: Sequence[float]) -> list[float]:
    """Each per-second value held over its whole second: drawn flat, not as a ramp."""
    return [v for v in values for _ in (0, 1)]


def write_report(results: Mapping[str, Any], path: Path) -> tuple[Path | None, str | None]:
    """Draw the report to `path`; returns (path, None), or (None, why) when it cannot."""
    try:
        import matplotlib
    except ImportError:
        return (
            None,
            "matplotlib is not installed: no PNG report (pip install 'tailguard[loadtest]')",
        )
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    scenario = results["scenario"]
    series = results["series"]
    # one flat step per second: the bucket [k, k+1) is drawn from k to k+1
    t = [float(x + d) for x in series["t"] for d in (0, 1)]
    sent = series["sent"]
    backends = series.get("backend", {})
    split_kind, split_title = (
        ("backend", "traffic share per backend") if len(backends) > 1
        else ("sim", "traffic share per sim")
    )  # fmt: skip
    slo_series = series.get("slo") or {}
    has_slo = any(any(v is not None for v in s["burn"]) for s in slo_series.values())
    quality = series.get("quality") or {}
    drift_lines = _drift_lines(quality)
    panels = [("latency", 3.0), ("success", 2.0)]
    if has_slo:
        panels.append(("slo", 2.0))
    if drift_lines:
        panels.append(("drift", 2.4))
    if quality.get("shadow"):
        panels.append(("shadow", 1.6))
    if quality.get("canary"):
        panels.append(("canary", 1.4))
    panels += [("region", 1.6), (split_kind, 1.6)]
    fig, axes = plt.subplots(
        len(panels), 1, sharex=True, figsize=(13, 1.0 + 1.05 * sum(h for _, h in panels)),
        gridspec_kw={"height_ratios": [h for _, h in panels]},
    )  # fmt: skip
    ax_of = {kind: ax for (kind, _), ax in zip(panels, axes, strict=True)}
    passed = bool(results["passed"])
    verdict = "PASS" if passed else "FAIL"
    fig.suptitle(
        f"{scenario['name']} — {verdict}", fontsize=15, fontweight="bold",
        color=_PASS if passed else _FAIL, x=0.01, ha="left",
    )  # fmt: skip
    rate = (
        f"{scenario['rate']:g} req/s" if scenario.get("rate")
        else "steps " + ", ".join(f"{s['rate']:g}/s@{s['at']:g}s" for s in scenario["steps"])
    )  # fmt: skip
    totals = results["totals"]
    cpu = results["gateway"].get("cpu_us_per_request")
    sub = (f"{rate} for {scenario['duration']:g}s · {totals['requests']} requests · "
           f"success {(totals['success'] or 0) * 100:.2f}% · p99 {totals['p99_ms'] or 0:.1f} ms"
           + (f" · gateway CPU {cpu:.0f} µs/request" if cpu else ""))  # fmt: skip
    fig.text(0.01, 0.945, sub, fontsize=10, color="#444", ha="left")

    lat = axes[0]
    for key, color, label in (("p50_ms", "#1565c0", "p50"), ("p95_ms", "#ef6c00", "p95"),
                              ("p99_ms", "#c62828", "p99")):  # fmt: skip
        lat.plot(t, _steps(_nan(series[key])), color=color, label=label, linewidth=1.6)
    lat.set_yscale("log")
    # 1-2-5 ticks, so that even a range within one decade is labelled
    lat.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    lat.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g} ms"))
    lat.yaxis.set_minor_formatter(NullFormatter())
    lat.set_ylabel("latency (ms)")
    lat.grid(True, which="both", alpha=0.25)
    lat.legend(loc="upper right", fontsize=9, ncol=3)

    ok = axes[1]
    success = _steps([math.nan if v is None else v * 100.0 for v in series["success"]])
    ok.plot(t, success, color="#2e7d32", linewidth=1.6, label="success")
    ok.fill_between(t, success, 100.0, color="#c62828", alpha=0.25, step=None)
    dropped = series.get("dropped", [])
    if any(dropped):
        drop_pct = [
            d / (d + s) * 100.0 if d + s else 0.0 for d, s in zip(dropped, sent, strict=True)
        ]
        ok.plot(t, _steps([100.0 - d for d in drop_pct]), color="#6a1b9a", linewidth=1.0,
                linestyle=":", label="sent (not dropped by the generator)")  # fmt: skip
        ok.legend(loc="lower right", fontsize=9)
    low = min([v for v in success if not math.isnan(v)] or [100.0])
    ok.set_ylim(max(0.0, min(low, 99.0) - 2.0), 100.5)
    ok.set_ylabel("success (%)")
    ok.grid(True, alpha=0.25)

    if has_slo:
        burn_ax = axes[2]
        for i, (name, slo) in enumerate(slo_series.items()):
            burn_ax.plot(t, _steps(_nan(slo["burn"])), color=_PALETTE[i % len(_PALETTE)],
                         linewidth=1.6, label=name)  # fmt: skip
        for level, label, color in ((14.4, "page: 14.4x", _FAIL), (1.0, "1x", "#616161")):
            burn_ax.axhline(level, color=color, linestyle=":", linewidth=1.0)
            burn_ax.text(0.995, level, f"{label} ", transform=burn_ax.get_yaxis_transform(),
                         ha="right", va="bottom", fontsize=8, color=color)  # fmt: skip
        # symlog: a clean second (0x) and a burning one (1000x) on one axis
        burn_ax.set_yscale("symlog", linthresh=1.0)
        burn_ax.set_ylim(bottom=0)
        burn_ax.set_ylabel("burn rate (x budget)")
        burn_ax.set_title("SLO burn rate per second (error ratio / error budget)",
                          fontsize=9, loc="left", color="#444")  # fmt: skip
        burn_ax.grid(True, alpha=0.25)
        burn_ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)

    _draw_quality(ax_of, quality, drift_lines, results.get("quality") or {})

    for ax, (kind, _) in zip(axes[-2:], panels[-2:], strict=True):
        shares = _shares(series.get(kind, {}), sent)
        if shares:
            names = list(shares)
            colors = _PALETTE
            ax.stackplot(t, *[_steps(shares[n]) for n in names], labels=names,
                         colors=[colors[i % len(colors)] for i in range(len(names))],
                         alpha=0.85)  # fmt: skip
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
        ax.set_ylim(0, 100)
        ax.set_ylabel("share (%)")
        ax.set_title(
            "traffic share per region" if kind == "region" else split_title,
            fontsize=9, loc="left", color="#444",
        )  # fmt: skip
        ax.grid(True, alpha=0.25)

    duration = float(scenario["duration"])
    for k, phase in enumerate(results["phases"]):
        shade = _PHASE_SHADES[k % len(_PHASE_SHADES)]
        for ax in axes:
            ax.axvspan(phase["from"], phase["to"], color=shade, alpha=0.6, zorder=0, linewidth=0)
        mark = "PASS" if phase["passed"] else "FAIL"
        lat.text(
            (phase["from"] + phase["to"]) / 2, 1.02, f"{phase['name']}: {mark}",
            transform=lat.get_xaxis_transform(), ha="center", va="bottom", fontsize=9,
            fontweight="bold", color=_PASS if phase["passed"] else _FAIL,
        )  # fmt: skip
    for action in results["timeline"]:
        x = action["done_at"]
        for ax in axes:
            ax.axvline(x, color="#212121" if action["ok"] else _FAIL, linestyle="--",
                       linewidth=1.0, alpha=0.8)  # fmt: skip
        label = action["label"] + ("" if action["ok"] else " (FAILED)")
        ok.text(x, 0.03, " " + label, transform=ok.get_xaxis_transform(), rotation=90,
                va="bottom", ha="left", fontsize=8, color="#212121")  # fmt: skip
    axes[-1].set_xlim(0, duration)
    axes[-1].set_xlabel("seconds since traffic start (by intended send time)")

    fig.tight_layout(rect=(0, 0, 0.93, 0.94))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, None


_MAX_DRIFT_LINES = 8


def _drift_lines(quality: Mapping[str, Any]) -> list[tuple[str, list[float], float]]:
    """Per route, backend and feature: its score as a multiple of its threshold at each
    sample (the largest over its statistics), the features that came closest first."""
    lines = []
    for route, backends in (quality.get("drift") or {}).items():
        for backend, features in backends.items():
            for feature, stats in features.items():
                ratios: list[float] = []
                for k in range(len(quality["t"])):
                    best = math.nan
                    for cell in stats.values():
                        v, limit = cell["values"][k], cell.get("threshold")
                        if v is not None and limit:
                            best = v / limit if math.isnan(best) else max(best, v / limit)
                    ratios.append(best)
                peak = max((r for r in ratios if not math.isnan(r)), default=math.nan)
                if not math.isnan(peak):
                    lines.append((f"{route}/{backend} {feature}", ratios, peak))
    lines.sort(key=lambda x: -x[2])
    return lines[:_MAX_DRIFT_LINES]


def _draw_quality(
    ax_of: Mapping[str, Any],
    quality: Mapping[str, Any],
    drift_lines: Sequence[tuple[str, list[float], float]],
    summary: Mapping[str, Any],
) -> None:
    times = quality.get("t", [])
    if "drift" in ax_of:
        ax = ax_of["drift"]
        for i, (label, ratios, _) in enumerate(drift_lines):
            ax.plot(times, ratios, marker=".", linewidth=1.4, label=label,
                    color=_PALETTE[i % len(_PALETTE)])  # fmt: skip
        ax.axhline(1.0, color=_FAIL, linestyle=":", linewidth=1.0)
        ax.text(0.995, 1.0, "threshold ", transform=ax.get_yaxis_transform(), ha="right",
                va="bottom", fontsize=8, color=_FAIL)  # fmt: skip
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("score / threshold")
        ax.set_title("drift per feature (largest of PSI, KS, JS over its threshold; above 1: "
                     "drifted)", fontsize=9, loc="left", color="#444")  # fmt: skip
        ax.grid(True, alpha=0.25)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    routes = summary.get("routes", {})
    if "shadow" in ax_of:
        ax = ax_of["shadow"]
        for i, (route, sh) in enumerate(quality["shadow"].items()):
            pct = [math.nan if v is None else v * 100.0 for v in sh["agreement"]]
            overall = (routes.get(route, {}).get("shadow") or {}).get("agreement")
            label = route + ("" if overall is None else f" ({overall * 100:.1f}% overall)")
            ax.plot(times, pct, marker=".", linewidth=1.4, label=label,
                    color=_PALETTE[i % len(_PALETTE)])  # fmt: skip
        ax.set_ylim(0, 100)
        ax.set_ylabel("agreement (%)")
        ax.set_title("shadow answers agreeing with the primary's (each second)", fontsize=9,
                     loc="left", color="#444")  # fmt: skip
        ax.grid(True, alpha=0.25)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    if "canary" in ax_of:
        ax = ax_of["canary"]
        verdicts = []
        for i, (route, c) in enumerate(quality["canary"].items()):
            weight = [math.nan if v is None else float(v) for v in c["weight"]]
            ax.step(times, weight, where="post", linewidth=1.6, label=route,
                    color=_PALETTE[i % len(_PALETTE)])  # fmt: skip
            final = routes.get(route, {}).get("canary") or {}
            if final:
                at = f" at {final['decided_at']:g}s" if "decided_at" in final else ""
                verdicts.append(f"{route}: {final.get('phase')}{at}")
        ax.set_ylim(0, 105)
        ax.set_ylabel("canary weight (%)")
        ax.set_title("canary weight · " + "; ".join(verdicts), fontsize=9, loc="left",
                     color="#444")  # fmt: skip
        ax.grid(True, alpha=0.25)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
