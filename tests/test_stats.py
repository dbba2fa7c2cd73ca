"""Inference: interval coverage, the paired test's size, Holm's family-wise rate, power and the MSO null."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety_subspaces import stats

# Monte-Carlo tolerance: a rate estimated from R repetitions has standard error sqrt(p(1-p)/R); allow 3 of them.
def within_mc(rate: float, nominal: float, repetitions: int) -> bool:
    """Whether an estimated rate is within 3 Monte-Carlo standard errors of its nominal value."""
    return abs(rate - nominal) <= 3 * math.sqrt(nominal * (1 - nominal) / repetitions)


def test_bootstrap_interval_covers_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    repetitions, n, true_mean = 400, 200, 2.4  # 0.5·1 + 0.1·(2+3+4) + 0.2·5
    hits = 0
    for rep in range(repetitions):
        scores = rng.choice([1, 2, 3, 4, 5], size=n, p=[0.5, 0.1, 0.1, 0.1, 0.2]).astype(float)
        hits += stats.mean_interval(scores, bootstrap=600, seed=rep, method="bootstrap").contains(true_mean)
    assert within_mc(hits / repetitions, 0.95, repetitions), hits / repetitions


def test_wilson_interval_covers_a_proportion_at_the_nominal_rate():
    rng = np.random.default_rng(2)
    repetitions, n, p = 1000, 120, 0.15
    hits = sum(stats.mean_interval(rng.random(n) < p).contains(p) for _ in range(repetitions))
    assert within_mc(hits / repetitions, 0.95, repetitions), hits / repetitions
    assert stats.mean_interval([0, 1, 1, 0]).method == "wilson"


def test_wilson_matches_scipy():
    from scipy.stats import binomtest

    result = binomtest(17, 80).proportion_ci(0.95, method="wilson")
    assert stats.wilson_interval(17, 80) == pytest.approx((result.low, result.high), abs=1e-12)


def test_paired_test_false_positive_rate_under_the_null_is_near_five_percent():
    rng = np.random.default_rng(3)
    repetitions, n = 400, 200
    rejections = 0
    for rep in range(repetitions):
        item_effect = rng.normal(size=n)  # items differ in difficulty; both variants see the same items
        a = (item_effect + rng.normal(size=n) > 0.5).astype(float)
        b = (item_effect + rng.normal(size=n) > 0.5).astype(float)
        rejections += stats.paired_difference(a, b, bootstrap=600, seed=rep).p_value < 0.05
    assert within_mc(rejections / repetitions, 0.05, repetitions), rejections / repetitions


def test_paired_interval_covers_a_true_difference_with_seeds():
    rng = np.random.default_rng(4)
    repetitions, n, seeds = 300, 150, 3
    hits = 0
    for rep in range(repetitions):
        base = rng.normal(size=n)
        a = base + rng.normal(size=n) + 0.3
        # every seed of b is a different random variant of the same items (seed-level noise included)
        b = base[None, :] + rng.normal(size=(seeds, n)) + rng.normal(scale=0.2, size=(seeds, 1))
        comparison = stats.paired_difference(a, b, bootstrap=600, seed=rep)
        hits += comparison.low <= 0.3 <= comparison.high
    # seed resampling with 3 seeds is conservative-to-nominal; it must not undercover
    assert hits / repetitions >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / repetitions), hits / repetitions


def test_paired_test_detects_a_real_difference():
    rng = np.random.default_rng(5)
    a = (rng.random(520) < 0.40).astype(float)
    b = np.where(rng.random(520) < 0.5, a, (rng.random(520) < 0.25).astype(float))
    comparison = stats.paired_difference(a, b, seed=0)
    assert comparison.p_value < 0.01 and comparison.low > 0
    assert comparison.difference == pytest.approx(a.mean() - b.mean())


def test_paired_difference_drops_items_invalid_in_both_and_checks_alignment():
    a = [1.0, None, 3.0, 5.0]
    b = [1.0, None, 2.0, 5.0]
    comparison = stats.paired_difference(a, b, bootstrap=200)
    assert comparison.n == 3 and comparison.difference == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        stats.paired_difference([1, 2], [1, 2, 3])


def test_holm_controls_the_family_wise_error_rate():
    rng = np.random.default_rng(6)
    repetitions, family, n = 300, 8, 120
    any_rejected = 0
    for rep in range(repetitions):
        p_values = []
        for member in range(family):
            a, b = rng.normal(size=n), rng.normal(size=n)
            p_values.append(stats.paired_difference(a, b, bootstrap=400, seed=rep * family + member).p_value)
        any_rejected += min(stats.holm(p_values)) < 0.05
    rate = any_rejected / repetitions
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / repetitions), rate


@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=12))
def test_holm_is_monotone_and_bounded(p_values):
    adjusted = stats.holm(p_values)
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    assert all(adjusted[i] >= p_values[i] - 1e-15 and adjusted[i] <= 1 for i in range(len(p_values)))
    assert all(adjusted[order[i]] <= adjusted[order[i + 1]] for i in range(len(order) - 1))


def test_holm_matches_statsmodels_style_reference():
    # hand-computed: sorted p = .01, .02, .03, .5 → 4·.01, 3·.02, 2·.03, 1·.5 with running maxima
    assert stats.holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert math.isnan(stats.holm([0.01, math.nan])[1])


def test_interpolated_outcomes_keep_the_pairing_and_the_mean():
    low, high = np.array([0.0, 1.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.0, 1.0])
    at = stats.interpolate_outcomes([0.2, 0.6], [low, high], 0.5)
    assert at == pytest.approx(0.25 * low + 0.75 * high)
    assert at.mean() == pytest.approx(0.25 * low.mean() + 0.75 * high.mean())
    assert stats.interpolate_outcomes([0.2, 0.6], [low, high], 0.7) is None


def test_minimum_detectable_difference_and_power_agree():
    sd, n = 1.2, 520
    mdd = stats.minimum_detectable_difference(sd, n)
    assert mdd == pytest.approx((1.959964 + 0.841621) * sd / math.sqrt(n), rel=1e-5)
    assert stats.power_of(mdd, sd, n) == pytest.approx(0.8, abs=0.002)
    assert stats.power_of(0.0, sd, n) == pytest.approx(0.05, abs=1e-9)


def test_power_by_simulation():
    """The normal power formula against the paired test's rejection rate on simulated data."""
    rng = np.random.default_rng(7)
    n, effect, repetitions = 200, 0.25, 300
    rejections = sum(
        stats.paired_difference(rng.normal(effect, 1, n), np.zeros(n), bootstrap=400, seed=r).p_value < 0.05
        for r in range(repetitions)
    )
    predicted = stats.power_of(effect, 1.0, n)
    assert within_mc(rejections / repetitions, predicted, repetitions), (rejections / repetitions, predicted)


def direct_mso_draws(k_a: int, k_b: int, d: int, draws: int, seed: int) -> np.ndarray:
    """MSO of pairs of Haar subspaces drawn directly (QR of Gaussian matrices)."""
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for i in range(draws):
        qa, _ = np.linalg.qr(rng.standard_normal((d, k_a)))
        qb, _ = np.linalg.qr(rng.standard_normal((d, k_b)))
        out[i] = np.sum((qa.T @ qb) ** 2) / min(k_a, k_b)
    return out


@pytest.mark.parametrize("k_a,k_b,d", [(3, 5, 20), (10, 4, 30), (1, 1, 8), (6, 40, 48), (12, 12, 16)])
def test_mso_null_quantile_matches_direct_simulation(k_a, k_b, d):
    direct = direct_mso_draws(k_a, k_b, d, 3000, seed=11)
    quantile, method = stats.mso_null_quantile(k_a, k_b, d, draws=4000, seed=3)
    assert method == "monte carlo"
    # the 95 % quantile of 3000 direct draws has a sampling spread of about its local density's inverse / sqrt(n)
    assert quantile == pytest.approx(np.quantile(direct, 0.95), abs=0.02 + 0.05 * np.std(direct))
    draws = stats.mso_null_draws(k_a, k_b, d, draws=4000, seed=3)
    mean, variance = stats.mso_null_moments(k_a, k_b, d)
    small = min(k_a, k_b)
    assert draws.mean() == pytest.approx(mean / small, abs=4 * math.sqrt(variance / 4000) / small + 1e-12)


def test_mso_null_normal_branch_agrees_with_monte_carlo_at_the_switch():
    k, d = stats.MSO_NULL_EXACT_MAX_K, 256
    monte_carlo = np.quantile(stats.mso_null_draws(k, k + 8, d, draws=3000, seed=0), 0.95)
    normal, method = stats.mso_null_quantile(k + 1, k + 8, d)
    assert method == "normal"
    assert normal == pytest.approx(monte_carlo, abs=0.01)


def test_mso_null_edge_cases():
    assert stats.mso_null_quantile(5, 20, 20) == (1.0, "exact")
    assert math.isnan(stats.mso_null_quantile(0, 3, 10)[0])
    assert stats.mso_null_moments(3, 5, 20)[0] == pytest.approx(0.75)


def test_intervals_are_seeded_and_reproducible():
    values = np.random.default_rng(8).normal(size=100)
    first = stats.mean_interval(values, seed=5)
    assert first == stats.mean_interval(values, seed=5)
    assert first != stats.mean_interval(values, seed=6)


def test_joint_draws_of_a_difference_are_the_paired_bootstrap():
    rng = np.random.default_rng(21)
    a, b = rng.random((3, 70)), rng.random(70)
    joint = stats.paired_statistic([a, b], lambda m: m[..., 0] - m[..., 1], bootstrap=500, seed=4)
    direct = stats.paired_difference(a, b, bootstrap=500, seed=4)
    assert (joint.difference, joint.low, joint.high, joint.p_value, joint.n) == pytest.approx(
        (direct.difference, direct.low, direct.high, direct.p_value, direct.n))


def test_grouped_arrays_share_their_seed_draw():
    # two arrays of one group (a seeded kind at two fractions: seed s is one frame) resample the same seeds, so their
    # difference has no seed variation when the frames' offsets cancel
    rng = np.random.default_rng(2)
    base = rng.random(50)
    offsets = np.array([[0.0], [0.5], [1.0]])
    first, second = base + offsets, base + 0.1 + offsets
    grouped = stats.statistic_draws([first, second], lambda m: m[..., 1] - m[..., 0], groups=["r", "r"], seed=1)
    apart = stats.statistic_draws([first, second], lambda m: m[..., 1] - m[..., 0], seed=1)
    assert np.allclose(grouped.draws, 0.1) and np.std(apart.draws) > 0.05


def test_mean_of_members_null_quantile_matches_direct_simulation():
    members = [(3, 5, 20), (2, 4, 16), (4, 4, 24)]
    direct = np.mean([direct_mso_draws(*m, 2000, seed=30 + i) for i, m in enumerate(members)], axis=0)
    quantile = stats.mso_null_mean_quantile(members, draws=3000, seed=9)
    assert quantile == pytest.approx(np.quantile(direct, 0.95), abs=0.02)
    assert quantile < max(stats.mso_null_quantile(*m)[0] for m in members)  # a mean of independent draws spreads less


def test_p_values_resolve_below_the_bootstrap_floor_so_a_large_holm_family_can_pass():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.5, 1, 200), rng.normal(0, 1, 200)
    found = stats.paired_difference(a, b, bootstrap=500, seed=1)
    assert found.p_value < 2 / 501 and stats.holm([found.p_value] * 120)[0] < 0.05
    z = (a - b).mean() / ((a - b).std(ddof=1) / math.sqrt(200))
    assert found.p_value == pytest.approx(2 * stats._normal_cdf(-abs(z)), rel=0.5)  # bootstrap SE ≈ the plain SE
    assert stats.bootstrap_z_p_value(0.3, np.full(100, 0.3)) == 0.0
    assert stats.bootstrap_z_p_value(0.0, np.zeros(100)) == 1.0
