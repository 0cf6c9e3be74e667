"""Every drift score against a reference value computed independently (numpy and scipy)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from gateway.quality.drift import (
    PSI_FLOOR,
    DriftStat,
    DriftThresholds,
    compare,
    js_distance,
    ks,
    psi,
)
from gateway.quality.features import Features
from gateway.quality.sketch import KLL_K, CategoricalSketch, NumericSketch, Profile


def sketch(values: list[float]) -> NumericSketch:
    s = NumericSketch()
    s.update(values)
    return s


def labels(counts: dict[str, int]) -> CategoricalSketch:
    c = CategoricalSketch()
    for label, n in counts.items():
        c.update([label] * n)
    return c


def psi_reference(ref: list[float], cur: list[float], bins: int = 10) -> float:
    """PSI as docs/quality.md defines it, on the raw values with numpy."""
    r = np.asarray(ref)
    c = np.asarray(cur)
    edges = np.unique(np.quantile(r, [i / bins for i in range(1, bins)], method="inverted_cdf"))
    cuts = np.concatenate([[-np.inf], edges, [np.inf]])
    rs = np.array([np.mean((r > lo) & (r <= hi)) for lo, hi in itertools.pairwise(cuts)])
    cs = np.array([np.mean((c > lo) & (c <= hi)) for lo, hi in itertools.pairwise(cuts)])
    rs = np.maximum(rs, PSI_FLOOR)
    cs = np.maximum(cs, PSI_FLOOR)
    return float(np.sum((cs - rs) * np.log(cs / rs)))


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0, 3.0])
def test_psi_is_exact_while_the_sketches_hold_every_value(shift: float) -> None:
    rng = random.Random(7)
    ref = [rng.gauss(0, 1) for _ in range(KLL_K - 20)]
    cur = [rng.gauss(shift, 1) for _ in range(KLL_K - 50)]
    assert psi(sketch(ref), sketch(cur)) == pytest.approx(psi_reference(ref, cur), rel=1e-9)


def test_psi_on_discrete_values_collapses_repeated_edges() -> None:
    ref = [1.0] * 60 + [2.0] * 30 + [3.0] * 10
    cur = [1.0] * 20 + [2.0] * 30 + [3.0] * 40 + [4.0] * 10
    assert psi(sketch(ref), sketch(cur)) == pytest.approx(psi_reference(ref, cur), rel=1e-9)


def test_psi_of_a_constant_reference_has_two_bins() -> None:
    ref = [5.0] * 100
    cur = [5.0] * 50 + [6.0] * 50
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - PSI_FLOOR) * math.log(0.5 / PSI_FLOOR)
    assert psi(sketch(ref), sketch(cur)) == pytest.approx(expected, rel=1e-9)
    assert psi(sketch(ref), sketch(ref)) == 0.0


def test_psi_from_large_sketches_is_close_to_the_exact_value() -> None:
    gen = np.random.default_rng(3)
    ref = gen.normal(0, 1, 50_000)
    cur = gen.normal(0.25, 1.1, 50_000)
    exact = psi_reference(ref.tolist(), cur.tolist())
    # the bin edges move by up to the rank error (~1.3 %), so the bins do too
    assert psi(sketch(ref.tolist()), sketch(cur.tolist())) == pytest.approx(exact, abs=0.05)


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.2, 1.0), (0.0, 2.0), (2.0, 1.0)])
def test_ks_equals_scipy_while_the_sketches_hold_every_value(shift: float, scale: float) -> None:
    rng = random.Random(11)
    ref = [rng.gauss(0, 1) for _ in range(150)]
    cur = [rng.gauss(shift, scale) for _ in range(KLL_K)]
    expected = ks_2samp(ref, cur).statistic
    assert ks(sketch(ref), sketch(cur)) == pytest.approx(expected, abs=1e-12)


def test_ks_with_ties_equals_scipy() -> None:
    ref = [float(x % 5) for x in range(100)]
    cur = [float(x % 7) for x in range(120)]
    assert ks(sketch(ref), sketch(cur)) == pytest.approx(ks_2samp(ref, cur).statistic, abs=1e-12)


def test_ks_from_large_sketches_is_within_their_rank_error() -> None:
    gen = np.random.default_rng(5)
    ref = gen.normal(0, 1, 40_000)
    cur = gen.normal(0.1, 1, 60_000)
    expected = ks_2samp(ref, cur).statistic
    assert ks(sketch(ref.tolist()), sketch(cur.tolist())) == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize(
    ("p", "q"),
    [
        ({"a": 10, "b": 10}, {"a": 10, "b": 10}),
        ({"a": 90, "b": 10}, {"a": 50, "b": 50}),
        ({"a": 5, "b": 3, "c": 2}, {"b": 1, "c": 1, "d": 8}),
        ({"a": 1}, {"b": 1}),
    ],
)
def test_js_distance_equals_scipy(p: dict[str, int], q: dict[str, int]) -> None:
    keys = sorted(set(p) | set(q))
    expected = jensenshannon([p.get(k, 0) for k in keys], [q.get(k, 0) for k in keys], base=2)
    assert js_distance(labels(p), labels(q)) == pytest.approx(float(expected), abs=1e-12)


def test_scores_need_samples_on_both_sides() -> None:
    with pytest.raises(ValueError):
        psi(sketch([1.0]), NumericSketch())
    with pytest.raises(ValueError):
        ks(NumericSketch(), sketch([1.0]))
    with pytest.raises(ValueError):
        js_distance(CategoricalSketch(), labels({"a": 1}))


def features(values: list[float], classes: list[str]) -> Features:
    f = Features()
    f.numeric["x"] = values
    f.categorical["cls"] = classes
    return f


def test_compare_gives_no_verdict_below_min_samples_and_flags_drift_above() -> None:
    t = DriftThresholds(psi=0.2, ks=0.1, js=0.1, min_samples=100)
    ref, same, shifted, few = Profile(), Profile(), Profile(), Profile()
    rng = random.Random(1)
    for _ in range(300):
        ref.add(features([rng.gauss(0, 1)], [rng.choice("ab")]))
        same.add(features([rng.gauss(0, 1)], [rng.choice("ab")]))
        shifted.add(features([rng.gauss(1.5, 1)], [rng.choice("aaaab")]))
    for _ in range(50):
        few.add(features([rng.gauss(3, 1)], ["c"]))

    by = {(s.feature, s.stat): s for s in compare(ref, same, t)}
    assert set(by) == {("x", DriftStat.PSI), ("x", DriftStat.KS), ("cls", DriftStat.JS)}
    assert not any(s.drifted for s in by.values())
    assert all(s.value is not None for s in by.values())

    drifted = {(s.feature, s.stat): s for s in compare(ref, shifted, t)}
    assert drifted["x", DriftStat.PSI].drifted and drifted["x", DriftStat.KS].drifted
    assert drifted["cls", DriftStat.JS].drifted

    unjudged = compare(ref, few, t)
    assert all(s.value is None and not s.drifted for s in unjudged)
    assert {s.current_n for s in unjudged} == {50}


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError):
        DriftThresholds(psi=0)
    with pytest.raises(ValueError):
        DriftThresholds(js=1.5)
    with pytest.raises(ValueError):
        DriftThresholds(min_samples=0)
