"""Generic paired comparisons of named variants on their shared items (evaluate/comparisons.py)."""

from __future__ import annotations

import numpy as np
import pytest

from safety_subspaces import stats
from safety_subspaces.errors import UserError
from safety_subspaces.evaluate.comparisons import (Outcomes, compare, compare_share, comparison_row, holm_adjust,
                                                   interpolated, outcomes)
from safety_subspaces.tables import COMPARISONS


def record(model, values, *, keys=None, seed=None, judge="organism", metric="harm_score", **labels):
    """One items record as the store keeps it."""
    keys = keys or [f"{i}:k{i}" for i in range(len(values))]
    return {"model": model, "variant": labels.pop("variant", "reference"), "subspace": labels.pop("subspace", ""),
            "scheme": labels.pop("scheme", ""), "fraction": labels.pop("fraction", None), "metric": metric,
            "judge": judge, "layer": None, "seed": seed, "keys": list(keys), "outcomes": list(values), **labels}


def test_compare_pairs_items_by_key_and_matches_the_paired_bootstrap():
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 6, 80).astype(float), rng.integers(1, 6, 80).astype(float)
    keys = [f"{i}:x" for i in range(80)]
    order = rng.permutation(80)  # b's record lists the same items in another order: pairing is by key
    items = [record("ft", a, keys=keys), record("aligned", b[order], keys=[keys[i] for i in order])]
    found = compare(items, {"model": "ft"}, {"model": "aligned"}, metric="harm_score", bootstrap=500, seed=3)
    direct = stats.paired_difference(a, b, bootstrap=500, seed=3)
    assert found.difference == pytest.approx(a.mean() - b.mean())
    assert (found.low, found.high, found.p_value, found.n) == pytest.approx((direct.low, direct.high, direct.p_value, 80))


def test_seeds_are_stacked_and_resampled_like_the_paired_bootstrap():
    rng = np.random.default_rng(1)
    top = rng.random(60)
    frames = rng.random((3, 60))
    items = [record("ft", top, subspace="top_k", variant="projected", seed=0),
             *(record("ft", frames[s], subspace="random", variant="projected", seed=s) for s in range(3))]
    found = compare(items, {"subspace": "top_k"}, {"subspace": "random"}, model="ft", bootstrap=400, seed=5)
    direct = stats.paired_difference(top, frames, bootstrap=400, seed=5)
    assert (found.seeds_a, found.seeds_b) == (1, 3)
    assert (found.difference, found.low, found.high) == pytest.approx((direct.difference, direct.low, direct.high))


def test_a_selection_that_mixes_judges_is_refused_and_naming_the_judge_resolves_it():
    items = [record("ft", [1.0, 2.0], judge="rubric"), record("ft", [3.0, 5.0], judge="organism"),
             record("aligned", [1.0, 1.0], judge="rubric"), record("aligned", [1.0, 2.0], judge="organism")]
    with pytest.raises(UserError, match="ambiguous.*judge"):
        compare(items, {"model": "ft"}, {"model": "aligned"}, metric="harm_score")
    with pytest.raises(UserError, match="no per-item outcomes match"):
        compare(items, {"model": "ft"}, {"model": "missing"}, judge="rubric")
    found = compare(items, {"model": "ft"}, {"model": "aligned"}, judge="organism", bootstrap=200)
    assert found.difference == pytest.approx(2.5)
    judges = compare(items, {"model": "ft", "judge": "organism"}, {"model": "ft", "judge": "rubric"}, bootstrap=200)
    assert judges.difference == pytest.approx(2.5)  # two judges of the same replies compared on the same items


def test_only_shared_items_are_compared_and_invalid_ones_dropped():
    items = [record("a", [1.0, 0.0, None, 1.0], keys=["p", "q", "r", "s"]),
             record("b", [0.0, 0.0, 1.0], keys=["q", "r", "p"])]
    found = compare(items, {"model": "a"}, {"model": "b"}, bootstrap=200)
    assert found.n == 2  # p and q: r is invalid in a, s is not in b
    assert found.difference == pytest.approx((1 + 0) / 2 - (1 + 0) / 2)


def test_false_positive_rate_of_compare_under_the_null_and_holm_family_rate():
    rng = np.random.default_rng(7)
    single, family = 0, 0
    trials = 200
    for trial in range(trials):
        rows = []
        for member in range(4):  # a family of four null comparisons on 0/1 items
            items = [record("a", rng.integers(0, 2, 120).astype(float)),
                     record("b", rng.integers(0, 2, 120).astype(float))]
            result = compare(items, {"model": "a"}, {"model": "b"}, bootstrap=300, seed=trial * 10 + member)
            rows.append(comparison_row("null", "a − b", result, a="a", b="b", statistic="difference"))
        single += rows[0]["p_value"] < 0.05
        family += any(row["p_holm"] < 0.05 for row in holm_adjust(rows))
    # nominal 5 %; binomial SE over 200 trials is 1.5 %: allow three
    assert single / trials < 0.05 + 3 * 0.0154
    assert family / trials <= 0.05 + 3 * 0.0154


def test_holm_adjust_per_family_and_row_shape():
    result = stats.Comparison(0.1, 0.0, 0.2, 0.01, 50)
    rows = [comparison_row(f, "x", stats.Comparison(0.1, 0.0, 0.2, p, 50), a="a", b="b", statistic="difference")
            for f, p in (("one", 0.01), ("one", 0.04), ("two", 0.03))]
    adjusted = holm_adjust(rows, by="family")
    assert [r["p_holm"] for r in adjusted] == pytest.approx([0.02, 0.04, 0.03])
    assert [r["p_holm"] for r in holm_adjust(rows)] == pytest.approx([0.03, 0.06, 0.06])
    assert list(comparison_row("f", "c", result, a="a", b="b", statistic="s"))[:len(COMPARISONS.columns)] == list(
        COMPARISONS.columns)


def test_interpolated_side_keeps_the_mean_and_the_pairing():
    keys = tuple(f"{i}" for i in range(5))
    low = Outcomes(keys, stats.as_outcomes([0.0, 1.0, 0.0, 1.0, 0.0]))
    high = Outcomes(keys[::-1], stats.as_outcomes([1.0, 1.0, 1.0, 1.0, 1.0]))
    middle = interpolated([(0.2, low), (0.6, high)], 0.3)
    assert middle is not None and middle.values.mean() == pytest.approx(0.75 * 0.4 + 0.25 * 1.0)
    assert middle.on(["1"]).item() == pytest.approx(1.0) and middle.on(["0"]).item() == pytest.approx(0.25)
    assert interpolated([(0.2, low), (0.6, high)], 0.7) is None


def test_share_of_change_is_bootstrapped_as_a_ratio():
    rng = np.random.default_rng(11)
    n = 400
    aligned = rng.normal(1.0, 0.5, n)
    finetuned = aligned + 1.0 + rng.normal(0, 0.3, n)
    top = aligned + 0.6 + rng.normal(0, 0.3, n)  # keeps 0.6 of the change
    random = aligned + 0.4 + rng.normal(0, 0.3, n)  # keeps 0.4
    items = [record(name, values) for name, values in
             (("top", top), ("random", random), ("aligned", aligned), ("ft", finetuned))]
    found = compare_share(items, {"model": "top"}, {"model": "random"}, {"model": "aligned"}, {"model": "ft"},
                          bootstrap=1000, seed=2)
    point = (top.mean() - random.mean()) / (finetuned.mean() - aligned.mean())
    assert found.difference == pytest.approx(point)
    assert found.low < 0.2 < found.high and found.low > 0 and found.p_value < 0.01
    assert found.method == "paired bootstrap of the share ratio"


def test_outcomes_of_seeds_on_different_items_are_refused():
    items = [record("r", [1.0, 0.0], seed=0, keys=["a", "b"]), record("r", [1.0, 0.0], seed=1, keys=["a", "c"])]
    with pytest.raises(UserError, match="different items"):
        outcomes(items, {"model": "r"})
