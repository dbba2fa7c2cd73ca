"""The shared overlap rules: depth band and percentile indexing, η checks, pairs, and MSO curves from spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safety_subspaces import linalg
from safety_subspaces.errors import UserError
from safety_subspaces.analyses.common import (
    check_depth,
    check_etas,
    choose_pairs,
    depth_band,
    depth_layer,
    mean_rows,
    mso_curve,
)
from safety_subspaces.spectra import Spectrum


def spectrum_of(matrix: torch.Tensor) -> Spectrum:
    """The exact left spectrum of a matrix, with its exact total."""
    left, singular = linalg.left_singular(matrix)
    return Spectrum(left, singular, linalg.frobenius_sq(matrix))


@pytest.mark.parametrize(
    "layers,expected",
    [
        (16, range(11, 15)),  # Llama-3.2-1B: L' = 17, floor(11.05) … floor(15.3) − 1
        (28, range(18, 26)),  # Qwen-2.5-1.5B: L' = 29, floor(18.85) … floor(26.1) − 1
        (32, range(21, 29)),  # Llama-2-7B: L' = 33, floor(21.45) … floor(29.7) − 1
        (19, range(13, 18)),  # L' = 20: 0.65 · 20 = 13 and 0.90 · 20 = 18 exactly
        (9, range(6, 9)),     # L' = 10: 0.90 · 10 = 9 exactly, so the band stops at 8
    ],
)
def test_depth_band_matches_design_rule(layers, expected):
    assert depth_band(layers + 1, 0.65, 0.90) == list(expected)


def test_depth_band_uses_the_decimal_written_not_its_binary_float():
    # 0.29 · 100 is 28.999999999999996 in floating point; the rule means floor(29) = 29
    assert depth_band(100, 0.29, 0.31) == [29, 30]
    assert depth_band(3, 0.65, 0.90) == [1]
    assert depth_band(2, 0.65, 0.90) == []  # too few hidden states for this band
    assert depth_band(10, 0.0, 1.0) == list(range(10))


def test_depth_percentile_layer_rule():
    assert depth_layer(70, 16) == 11 and depth_layer(85, 16) == 13
    assert depth_layer(70, 32) == 22 and depth_layer(85, 32) == 27
    assert depth_layer(100, 16) == 15  # clamped to the last layer
    assert depth_layer(0, 16) == 0


def test_check_etas_and_depth_refuse_bad_values():
    assert check_etas([0.5, 0.1, 0.5, 1.0]) == [0.1, 0.5, 1.0]
    for bad in ([0.0], [1.5], [-0.1], [float("nan")], []):
        with pytest.raises(UserError, match="--eta"):
            check_etas(bad)
    assert check_depth([0.65, 0.9]) == (0.65, 0.9)
    for bad in ([0.9, 0.65], [0.5], [0.1, 1.2]):
        with pytest.raises(UserError, match="--depth"):
            check_depth(bad)


def test_pairs_default_to_every_pair_and_validate_requests():
    assert choose_pairs(["u", "h", "b"], None, "update") == [("u", "h"), ("u", "b"), ("h", "b")]
    assert choose_pairs(["u", "h", "b"], ["h:b"], "update") == [("h", "b")]
    with pytest.raises(UserError, match="no update named 'x'"):
        choose_pairs(["u", "h"], ["u:x"], "update")
    with pytest.raises(UserError, match="NAME:NAME"):
        choose_pairs(["u", "h"], ["u-h"], "update")


def test_mso_curve_of_a_matrix_with_itself_is_one_and_of_orthogonal_spans_zero():
    generator = torch.Generator().manual_seed(0)
    frame = linalg.haar_frame(30, 12, 1)
    a = frame[:, :6] @ torch.randn(6, 20, generator=generator)
    b = frame[:, 6:] @ torch.randn(6, 20, generator=generator)
    etas = [0.1, 0.5, 0.9, 1.0]
    for row in mso_curve(spectrum_of(a), spectrum_of(a), etas):
        assert row["mso"] == pytest.approx(1.0, abs=1e-5)
        assert row["mso_random"] == pytest.approx(row["k_a"] / 30)
    for row in mso_curve(spectrum_of(a), spectrum_of(b), etas):
        assert row["mso"] == pytest.approx(0.0, abs=1e-6)
        assert row["k_a"] <= 6 and row["k_b"] <= 6


def test_mso_curve_equals_direct_bases_at_every_eta():
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(25, 10, generator=generator), torch.randn(25, 14, generator=generator)
    etas = [0.01, 0.3, 0.6, 0.9, 0.99]
    for eta, row in zip(etas, mso_curve(spectrum_of(a), spectrum_of(b), etas)):
        qa, qb = linalg.energy_basis(a, eta), linalg.energy_basis(b, eta)
        assert (row["k_a"], row["k_b"], row["d"]) == (qa.shape[1], qb.shape[1], 25)
        assert row["mso"] == pytest.approx(linalg.mso(qa, qb), abs=1e-6)


def test_mso_curve_ranks_use_the_exact_total_not_the_spectrum_sum():
    # σ² = 4, 3, 2, 1 (total 10): η = 0.5 needs k = 2 (4/10 < 0.5 <= 7/10). A truncated spectrum [2, √3] with the
    # exact total still gives 2; had the total been summed from the truncated spectrum (7), η = 0.5 would give k = 1.
    frame = linalg.haar_frame(8, 4, 0)
    singular = torch.tensor([2.0, math.sqrt(3), math.sqrt(2), 1.0])
    full = Spectrum(frame, singular, 10.0)
    truncated = Spectrum(frame[:, :2], singular[:2], 10.0)
    wrong_total = Spectrum(frame[:, :2], singular[:2], 7.0)
    assert [r["k_a"] for r in mso_curve(full, full, [0.4, 0.5, 0.71, 1.0])] == [1, 2, 3, 4]
    assert mso_curve(truncated, full, [0.5])[0]["k_a"] == 2
    assert mso_curve(wrong_total, full, [0.5])[0]["k_a"] == 1


def test_haar_random_pairs_land_within_monte_carlo_error_of_the_baseline():
    d, trials, etas = 24, 300, [0.3, 0.9]
    values = {eta: [] for eta in etas}
    baselines = {eta: [] for eta in etas}
    for t in range(trials):
        generator = torch.Generator().manual_seed(t)
        # Gaussian matrices: their left singular subspaces are Haar-distributed, independently of each other
        a, b = torch.randn(d, 6, generator=generator), torch.randn(d, 9, generator=generator)
        for row in mso_curve(spectrum_of(a), spectrum_of(b), etas):
            values[row["eta"]].append(row["mso"])
            baselines[row["eta"]].append(row["mso_random"])
    for eta in etas:
        sample = np.array(values[eta])
        error = sample.std(ddof=1) / math.sqrt(trials)
        assert abs(sample.mean() - np.mean(baselines[eta])) < 4 * error


def test_mean_rows_skips_empty_bases_and_counts_members():
    rows = [
        {"pair": "a vs b", "layer": 0, "mso": 0.2, "k_a": 1, "d": 10},
        {"pair": "a vs b", "layer": 0, "mso": 0.4, "k_a": 3, "d": 30},
        {"pair": "a vs b", "layer": 0, "mso": math.nan, "k_a": 0, "d": 30},
        {"pair": "a vs b", "layer": 1, "mso": math.nan, "k_a": 0, "d": 30},
    ]
    means = mean_rows(rows, ("pair", "layer"), ("mso", "k_a", "d"), "tensors")
    assert means[0] == {"pair": "a vs b", "layer": 0, "mso": pytest.approx(0.3), "k_a": 2.0, "d": 20.0, "tensors": 2}
    assert means[1]["tensors"] == 0 and math.isnan(means[1]["mso"])
