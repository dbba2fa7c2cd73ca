"""Property tests of the pure math, cross-checked against numpy and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings, strategies as st

from safety_subspaces import linalg

SETTINGS = settings(max_examples=40, deadline=None)
dims = st.integers(min_value=1, max_value=24)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
fractions = st.floats(min_value=1e-3, max_value=1.0)


def gaussian(m: int, n: int, seed: int) -> torch.Tensor:
    """A seeded Gaussian matrix."""
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed))


def low_rank(m: int, n: int, rank: int, seed: int) -> torch.Tensor:
    """A seeded matrix of exactly the given rank."""
    return gaussian(m, rank, seed) @ gaussian(rank, n, seed + 1)


@SETTINGS
@given(m=dims, n=dims, seed=seeds)
def test_left_singular_matches_numpy(m, n, seed):
    matrix = gaussian(m, n, seed)
    left, singular = linalg.left_singular(matrix)
    r = min(m, n)
    assert left.shape == (m, r) and singular.shape == (r,)
    np.testing.assert_allclose(singular.numpy(), np.linalg.svd(matrix.numpy(), compute_uv=False), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose((left.T @ left).numpy(), np.eye(r), atol=1e-5)
    assert torch.all(singular[:-1] >= singular[1:])


@SETTINGS
@given(m=st.integers(40, 90), n=st.integers(1, 10), rank=st.integers(1, 10), seed=seeds)
def test_gram_method_agrees_with_svd_including_rank_deficient(m, n, rank, seed):
    rank = min(rank, n)
    matrix = low_rank(m, n, rank, seed)
    left_g, singular_g = linalg.left_singular(matrix, method="gram")
    left_s, singular_s = linalg.left_singular(matrix, method="svd")
    np.testing.assert_allclose(singular_g.numpy(), singular_s.numpy(), rtol=1e-4, atol=1e-4 * float(singular_s[0]))
    np.testing.assert_allclose((left_g.T @ left_g).numpy(), np.eye(n), atol=1e-5)
    # the spans of the non-null directions agree: all principal angles zero
    cosines = linalg.principal_cosines(left_g[:, :rank], left_s[:, :rank])
    np.testing.assert_allclose(cosines.numpy(), np.ones(rank), atol=1e-4)


def test_wide_matrix_uses_output_side():
    matrix = gaussian(5, 30, 0)
    left, singular = linalg.left_singular(matrix)
    assert left.shape == (5, 5)
    np.testing.assert_allclose((left @ torch.diag(singular) ** 2 @ left.T).numpy(), (matrix @ matrix.T).numpy(), atol=1e-3)


def test_zero_matrix_gives_empty_basis():
    left, singular = linalg.left_singular(torch.zeros(6, 4))
    assert left.shape == (6, 0) and singular.numel() == 0
    delta = gaussian(6, 4, 1)
    assert torch.equal(linalg.project(left, delta, "orthogonal"), delta)
    assert not torch.any(linalg.project(left, delta, "parallel"))


def test_as_matrix_shapes():
    assert linalg.as_matrix(torch.zeros(7)).shape == (7, 1)
    assert linalg.as_matrix(torch.zeros(3, 4, 5)).shape == (3, 20)
    assert linalg.matrix_rank_bound((7,)) == 1
    assert linalg.matrix_rank_bound((3, 4, 5)) == 3
    assert linalg.matrix_rank_bound((10, 4)) == 4


@SETTINGS
@given(m=dims, n=dims, seed=seeds, fraction=fractions, kind=st.sampled_from(linalg.SUBSPACE_KINDS))
def test_projectors_are_idempotent_and_complementary(m, n, seed, fraction, kind):
    align, task = gaussian(m, n, seed), gaussian(m, n, seed + 7)
    left, _ = linalg.left_singular(align)
    k = linalg.rank_from_fraction(fraction, left.shape[1])
    basis = linalg.subspace_frame(kind, left, k, seed)
    np.testing.assert_allclose((basis.T @ basis).numpy(), np.eye(k), atol=1e-5)
    par = linalg.project(basis, task, "parallel")
    orth = linalg.project(basis, task, "orthogonal")
    np.testing.assert_allclose(linalg.project(basis, par, "parallel").numpy(), par.numpy(), atol=1e-4)
    np.testing.assert_allclose(linalg.project(basis, orth, "orthogonal").numpy(), orth.numpy(), atol=1e-4)
    np.testing.assert_allclose((par + orth).numpy(), task.numpy(), atol=1e-4)
    np.testing.assert_allclose(linalg.project(basis, task, "opposite").numpy(), -par.numpy())
    total = linalg.frobenius_sq(task)
    e_par = linalg.energy_kept(linalg.frobenius_sq(par), total)
    e_orth = linalg.energy_kept(linalg.frobenius_sq(orth), total)
    assert e_par + e_orth == pytest.approx(1.0, abs=1e-4)


@SETTINGS
@given(m=dims, n=dims, seed=seeds, kind=st.sampled_from(linalg.SUBSPACE_KINDS))
def test_one_pass_energies_equal_direct_projection(m, n, seed, kind):
    align, task = gaussian(m, n, seed), gaussian(m, n, seed + 3)
    left, _ = linalg.left_singular(align)
    r = left.shape[1]
    frame = linalg.subspace_frame(kind, left, r, seed)
    ks = list(range(0, r + 1))
    one_pass = linalg.parallel_energies(frame, task, ks)
    for k, energy in zip(ks, one_pass):
        basis = linalg.subspace_frame(kind, left, k, seed)
        direct = linalg.frobenius_sq(linalg.project(basis, task, "parallel"))
        assert energy == pytest.approx(direct, rel=1e-4, abs=1e-5)


@SETTINGS
@given(n=st.integers(1, 20), seed=seeds)
def test_full_fraction_keeps_everything_for_square_full_rank(n, seed):
    align, task = gaussian(n, n, seed), gaussian(n, n, seed + 1)
    left, _ = linalg.left_singular(align)
    k = linalg.rank_from_fraction(1.0, left.shape[1])
    assert k == n
    (energy,) = linalg.parallel_energies(left, task, [k])
    assert linalg.energy_kept(energy, linalg.frobenius_sq(task)) == pytest.approx(1.0, abs=1e-5)


def test_frames_are_nested_across_fractions():
    left, _ = linalg.left_singular(gaussian(30, 12, 0))
    for kind in linalg.SUBSPACE_KINDS:
        small = linalg.subspace_frame(kind, left, 3, seed=5)
        large = linalg.subspace_frame(kind, left, 9, seed=5)
        np.testing.assert_allclose(small.numpy(), large[:, :3].numpy(), atol=1e-6)
        other_seed = linalg.subspace_frame(kind, left, 3, seed=6)
        if kind != "top_k":
            assert not torch.allclose(small, other_seed)


def test_rank_from_fraction_rule():
    assert linalg.rank_from_fraction(0.01, 10) == 1  # never zero
    assert linalg.rank_from_fraction(0.25, 10) == 2  # round-half-to-even of 2.5, as Python's round
    assert linalg.rank_from_fraction(0.5, 64) == 32
    assert linalg.rank_from_fraction(0.99, 64) == 63
    assert linalg.rank_from_fraction(1.0, 64) == 64
    assert linalg.rank_from_fraction(0.5, 0) == 0
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError):
            linalg.rank_from_fraction(bad, 10)


def test_energy_rank_uses_exact_total():
    singular = torch.tensor([3.0, 2.0, 1.0])
    # the spectrum holds 14 of a total of 20 (a truncated spectrum): 0.5 * 20 = 10 needs k = 2, not k = 1
    assert linalg.rank_from_energy(singular, 0.5, 20.0) == 2
    assert linalg.rank_from_energy(singular, 0.5, 14.0) == 1
    # unreachable targets use the whole spectrum
    assert linalg.rank_from_energy(singular, 0.9, 20.0) == 3
    matrix = gaussian(50, 20, 3)
    _, full = linalg.left_singular(matrix)
    total = linalg.frobenius_sq(matrix)
    assert linalg.rank_from_energy(full, 1.0, total) == 20
    for eta in (0.1, 0.5, 0.9):
        k = linalg.rank_from_energy(full, eta, total)
        energies = (full.double() ** 2).cumsum(0)
        assert energies[k - 1] >= eta * total * (1 - 1e-6)
        assert k == 1 or energies[k - 2] < eta * total


@SETTINGS
@given(d=st.integers(2, 30), ka=st.integers(1, 10), kb=st.integers(1, 10), seed=seeds)
def test_mso_is_mean_squared_cosine_of_scipy_principal_angles(d, ka, kb, seed):
    ka, kb = min(ka, d), min(kb, d)
    qa = linalg.haar_frame(d, ka, seed, dtype=torch.float64)
    qb = linalg.haar_frame(d, kb, seed + 1, dtype=torch.float64)
    angles = scipy.linalg.subspace_angles(qa.numpy(), qb.numpy())
    assert linalg.mso(qa, qb) == pytest.approx(float(np.mean(np.cos(angles) ** 2)), abs=1e-9)
    assert linalg.mso(qa, qa) == pytest.approx(1.0, abs=1e-9)
    assert 0.0 <= linalg.mso(qa, qb) <= 1.0 + 1e-12


def test_mso_nested_orthogonal_and_empty():
    q = linalg.haar_frame(20, 6, 0, dtype=torch.float64)
    assert linalg.mso(q[:, :2], q) == pytest.approx(1.0)
    assert linalg.mso(q[:, :3], q[:, 3:]) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(linalg.mso(q[:, :0], q))


@pytest.mark.parametrize("d,ka,kb", [(40, 4, 10), (64, 16, 16), (30, 1, 29)])
def test_random_baseline_within_monte_carlo_error(d, ka, kb):
    values = np.array(
        [linalg.mso(linalg.haar_frame(d, ka, 2 * t), linalg.haar_frame(d, kb, 2 * t + 1)) for t in range(400)]
    )
    standard_error = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - linalg.mso_random_baseline(ka, kb, d)) < 4 * standard_error + 1e-9


def test_random_subspace_is_haar():
    # E[(first coordinate of a uniform unit vector)^2] = 1/m; a biased generator fails this check
    m = 8
    values = np.array([float(linalg.haar_frame(m, 3, seed)[0, 2] ** 2) for seed in range(2000)])
    assert abs(values.mean() - 1 / m) < 4 * values.std(ddof=1) / math.sqrt(len(values))


@SETTINGS
@given(m=dims, n=dims, seed=seeds, scale=st.floats(min_value=-5, max_value=5).filter(lambda s: abs(s) > 1e-3))
def test_cosine_is_a_true_cosine(m, n, seed, scale):
    a = gaussian(m, n, seed)
    assert linalg.cosine(a, scale * a) == pytest.approx(math.copysign(1.0, scale), abs=1e-6)
    b = gaussian(m, n, seed + 1)
    expected = float(np.dot(a.numpy().ravel(), b.numpy().ravel()) / (np.linalg.norm(a.numpy()) * np.linalg.norm(b.numpy())))
    assert linalg.cosine(a, b) == pytest.approx(expected, abs=1e-6)


@SETTINGS
@given(n=st.integers(2, 30), d=st.integers(2, 12), seed=seeds, eta=fractions)
def test_second_moment_basis_matches_svd_of_activations(n, d, seed, eta):
    activations = gaussian(n, d, seed).double()
    from_moment = linalg.second_moment_basis(activations.T @ activations, eta)
    from_svd = linalg.energy_basis(activations.T.float(), eta)
    k = from_moment.shape[1]
    assert abs(k - from_svd.shape[1]) <= 1  # ties at the threshold may round either way
    k = min(k, from_svd.shape[1])
    if k:
        assert linalg.mso(from_moment[:, :k], from_svd[:, :k]) == pytest.approx(1.0, abs=1e-3)


def test_scheme_aliases_and_weight_cast():
    assert linalg.canonical_scheme("same") == "parallel"
    assert linalg.canonical_scheme("orth") == "orthogonal"
    assert linalg.canonical_scheme("opp") == "opposite"
    with pytest.raises(ValueError):
        linalg.canonical_scheme("sideways")
    weight = torch.randn(4, 4).to(torch.bfloat16)
    out = linalg.projected_weight(weight, torch.zeros(4, 4))
    assert out.dtype == torch.bfloat16 and torch.equal(out, weight)


@SETTINGS
@given(d=st.integers(2, 24), ra=st.integers(1, 12), rb=st.integers(1, 12), seed=seeds, data=st.data())
def test_overlap_table_gives_mso_of_every_rank_pair(d, ra, rb, seed, data):
    ra, rb = min(ra, d), min(rb, d)
    qa = linalg.haar_frame(d, ra, seed, dtype=torch.float64)
    qb = linalg.haar_frame(d, rb, seed + 1, dtype=torch.float64)
    table = linalg.overlap_table(qa, qb)
    ka, kb = data.draw(st.integers(1, ra)), data.draw(st.integers(1, rb))
    assert linalg.mso_from_table(table, ka, kb) == pytest.approx(linalg.mso(qa[:, :ka], qb[:, :kb]), abs=1e-12)
    assert math.isnan(linalg.mso_from_table(table, 0, kb))


@SETTINGS
@given(n=st.integers(1, 30), d=st.integers(1, 10), seed=seeds)
def test_centered_second_moment_equals_moment_of_centred_rows(n, d, seed):
    rows = gaussian(n, d, seed).double() + 3.0
    centred = rows - rows.mean(0)
    expected = centred.T @ centred
    got = linalg.centered_second_moment(rows.T @ rows, rows.sum(0), n)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-9 * (1 + float(expected.abs().max())))
