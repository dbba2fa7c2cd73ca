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


# ------------------------------------------------------------------ exact left bases against numpy's float64 SVD
def haar(m: int, n: int, seed: int) -> torch.Tensor:
    """m x n orthonormal columns (float64), Haar-distributed: the Q of a Gaussian by Cholesky QR, twice (fast when tall)."""
    q = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for _ in range(2):
        factor = torch.linalg.cholesky(q.T @ q)
        q = torch.linalg.solve_triangular(factor, q.T, upper=False).T
    return q


def prescribed(m: int, n: int, singular: torch.Tensor, seed: int, *, left: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 matrix U diag(singular) V^T (built in float64; U Haar unless given, V Haar)."""
    r = singular.numel()
    left = haar(m, r, seed) if left is None else left
    right = haar(n, r, seed + 1)
    return ((left * singular.double()) @ right.T).float()


def log_spectrum(r: int, cond: float) -> torch.Tensor:
    """r singular values log-uniformly spaced from 1 down to 1/cond."""
    return torch.logspace(0, -math.log10(cond), r, dtype=torch.float64)


def exact_low_rank(m: int, n: int, rank: int, seed: int) -> torch.Tensor:
    """A float32 matrix of exactly this rank: small dyadic factors (each holding an identity block, rows and columns
    shuffled) whose product float32 holds exactly."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.cat([torch.eye(rank) * 4, torch.randint(-256, 257, (m - rank, rank), generator=generator) / 64])
    b = torch.cat([torch.eye(rank), torch.randint(-2, 3, (rank, n - rank), generator=generator)], dim=1)
    product = a.double()[torch.randperm(m, generator=generator)] @ b.double()[:, torch.randperm(n, generator=generator)]
    return product.float()


def numpy_left(matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """numpy's float64 SVD of the matrix: left singular vectors and singular values."""
    u, s, _ = np.linalg.svd(matrix.double().numpy(), full_matrices=False)
    return u, s


def tolerance(singular: np.ndarray) -> float:
    """The accuracy target for a matrix of this spectrum: 1e-6 up to condition 1e6, 1e-4 beyond (to 1e8)."""
    positive = singular[singular > singular[0] * max(singular.shape[0], 1) * 1e-14]
    return 1e-6 if singular[0] / positive[-1] <= 1e6 else 1e-4


def separated_ranks(singular: np.ndarray, rank: int, relative_gap: float = 1e-8) -> list[int]:
    """The k (1..rank) whose top-k span is well defined: sigma_k - sigma_k+1 >= relative_gap * sigma_1; rank always."""
    ks = [k for k in range(1, rank) if singular[k - 1] - singular[k] >= relative_gap * singular[0]]
    return [*ks, rank]


def energies_engine(left: torch.Tensor, task: torch.Tensor, ks: list[int]) -> np.ndarray:
    """Energy kept by the top-k parallel projection for each k, the engine's way (float32 frame and update)."""
    return np.array(linalg.parallel_energies(left, task, ks)) / linalg.frobenius_sq(task)


def energies_numpy(u: np.ndarray, task: torch.Tensor, ks: list[int]) -> np.ndarray:
    """The same from numpy's float64 singular vectors."""
    t = task.double().numpy()
    coefficients = (u.T @ t) ** 2
    cumulative = np.cumsum(coefficients.sum(axis=1))
    return np.array([cumulative[k - 1] for k in ks]) / float(np.sum(t**2))


def numpy_rank(singular: np.ndarray, shape: tuple[int, int]) -> int:
    """numpy.linalg.matrix_rank's default rule on numpy's singular values: sigma > sigma_max * max(m, n) * eps."""
    return int(np.sum(singular > singular.max(initial=0) * max(shape) * np.finfo(np.float64).eps))


def check_left_basis(matrix: torch.Tensor, method: str, seed: int) -> None:
    """Everything the engine relies on, against numpy: rank, spectrum, orthonormality, span, energies."""
    left, singular = linalg.left_singular(matrix, method=method)
    u, s = numpy_left(matrix)
    rank = numpy_rank(s, tuple(matrix.shape))
    m = matrix.shape[0]
    assert left.shape == (m, rank) and singular.shape == (rank,) and left.dtype == torch.float32
    np.testing.assert_allclose(singular.numpy(), s[:rank], rtol=0, atol=1e-10 * s[0])
    np.testing.assert_allclose((left.double().T @ left.double()).numpy(), np.eye(rank), atol=1e-6)
    dense = matrix.double()
    residual = dense - left.double() @ (left.double().T @ dense)
    assert float(residual.norm() / dense.norm()) < 1e-6  # the basis spans the column space
    task = gaussian(*matrix.shape, seed + 99)
    ks = separated_ranks(s, rank)
    np.testing.assert_allclose(energies_engine(left, task, ks), energies_numpy(u, task, ks), rtol=0, atol=tolerance(s))


methods = st.sampled_from(linalg.SVD_METHODS)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 24), ratio=st.sampled_from([1, 1.5, 2, 3, 5, 10, 40, 80]), log_cond=st.floats(0, 8),
       wide=st.booleans(), method=methods, seed=seeds)
def test_left_bases_match_numpy_float64_up_to_condition_1e8(n, ratio, log_cond, wide, method, seed):
    m = max(n, round(ratio * n))
    matrix = prescribed(m, n, log_spectrum(n, 10**log_cond), seed)
    check_left_basis(matrix.T.contiguous() if wide else matrix, method, seed)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 24), ratio=st.sampled_from([1, 2, 4, 20, 60]), data=st.data(), wide=st.booleans(),
       method=methods, seed=seeds)
def test_exactly_rank_deficient_matrices_drop_their_null_directions(n, ratio, data, wide, method, seed):
    m = max(n, round(ratio * n))
    rank = data.draw(st.integers(1, n - 1))
    matrix = exact_low_rank(m, n, rank, seed)
    matrix = matrix.T.contiguous() if wide else matrix
    assert np.linalg.matrix_rank(matrix.double().numpy()) == rank
    left, singular = linalg.left_singular(matrix, method=method)
    assert left.shape[1] == rank == singular.numel()  # never completed with vectors outside the column space
    check_left_basis(matrix, method, seed)


@pytest.mark.parametrize("method,cond,rank", [("auto", 500.0, 64), ("auto", 1e8, 64), ("svd", 1e6, 64), ("auto", None, 40)])
def test_very_tall_examples_match_numpy(method, cond, rank):
    m, n = 200_000, 64
    matrix = exact_low_rank(m, n, rank, seed=3) if cond is None else prescribed(m, n, log_spectrum(n, cond), seed=3)
    check_left_basis(matrix, method, seed=3)


@pytest.mark.parametrize("wide", [False, True])
def test_chunked_qr_folds_row_blocks_exactly(monkeypatch, wide):
    monkeypatch.setattr(linalg, "QR_BLOCK_ELEMENTS", 4096)  # 512-row blocks of a 5000 x 8 matrix; R folded repeatedly
    matrix = prescribed(5000, 8, log_spectrum(8, 1e7), seed=11)
    assert linalg.block_rows(8) == 512
    r = linalg.tall_r_factor(matrix)
    np.testing.assert_allclose(torch.linalg.svdvals(r).numpy(), numpy_left(matrix)[1], rtol=0, atol=1e-13)
    check_left_basis(matrix.T.contiguous() if wide else matrix, "qr", seed=11)


def test_auto_method_rule():
    assert linalg.resolve_method("auto", (151_936, 896)) == "gram"
    assert linalg.resolve_method("auto", (896, 151_936)) == "gram"
    assert linalg.resolve_method("auto", (8192, 4096)) == "gram"
    assert linalg.resolve_method("auto", (4096, 4096)) == "svd"
    assert linalg.resolve_method("svd", (151_936, 896)) == "svd"
    with pytest.raises(ValueError, match="eigh"):
        linalg.resolve_method("eigh", (10, 2))


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("cond,route", [(1.0, "gram"), (999.0, "gram"), (1001.0, "qr"), (1e7, "qr"), (None, "qr")])
def test_gram_route_is_taken_only_when_its_spectrum_is_well_conditioned(monkeypatch, wide, cond, route):
    calls = []
    real_r = linalg.tall_r_factor
    monkeypatch.setattr(linalg, "tall_r_factor", lambda *a, **k: calls.append("qr") or real_r(*a, **k))
    m, n = 3000, 16
    matrix = exact_low_rank(m, n, 9, seed=1) if cond is None else prescribed(m, n, log_spectrum(n, cond), seed=1)
    matrix = matrix.T.contiguous() if wide else matrix
    for method in ("auto", "gram"):
        calls.clear()
        check_left_basis(matrix, method, seed=1)
        assert calls == ([] if route == "gram" else ["qr"])


def test_numerical_rank_is_numpys_rule():
    singular = torch.tensor([1.0, 1e-3, 1e-12, 1e-14], dtype=torch.float64)
    assert linalg.rank_tolerance(1.0, (1000, 4)) == pytest.approx(1000 * np.finfo(np.float64).eps)
    assert linalg.numerical_rank(singular, (1000, 4)) == 3  # 1e-14 < 1000 * eps64 = 2.2e-13 < 1e-12
    assert linalg.numerical_rank(singular, (100_000, 4)) == 2
    assert linalg.numerical_rank(singular[:0], (5, 4)) == 0


def test_regression_ill_conditioned_embedding_energy_at_full_fraction():
    # issue 10 §1: a 2048 x 32 Δ_A with spectrum 1 -> 1e-6 whose Gram route (float32 cut) kept 0.547 of an update
    # lying in its column space. Built exactly in float32: columns sigma_j h_j of distinct Hadamard columns (rows
    # shuffled), so U = H_cols / sqrt(m); Δ_T = H_cols G with small integers G. Top-k energy = the share of G's rows
    # of the k largest sigma_j: 1 at ϱ = 0.99 and 1.0 (k = 32 = r), and known at every other k.
    m, n = 2048, 32
    generator = torch.Generator().manual_seed(5)
    hadamard = torch.tensor(scipy.linalg.hadamard(m), dtype=torch.float32)
    columns = hadamard[torch.randperm(m, generator=generator)][:, torch.randperm(m, generator=generator)[:n]]
    singular = log_spectrum(n, 1e6).float()
    order = torch.randperm(n, generator=generator)  # Δ_A's columns in a shuffled order (V a permutation)
    align = (columns * singular)[:, order]
    coefficients = torch.randint(-3, 4, (n, 96), generator=generator).float()
    task = columns @ coefficients  # exact: small integers
    left, found = linalg.left_singular(align)
    np.testing.assert_allclose(found.numpy(), singular.double().numpy() * math.sqrt(m), rtol=0, atol=1e-13 * float(found[0]))
    row_energy = (coefficients.double() ** 2).sum(dim=1)
    for fraction in (0.25, 0.5, 0.75, 0.99, 1.0):
        k = linalg.rank_from_fraction(fraction, n, left.shape[1])
        (energy,) = linalg.parallel_energies(left, task, [k])
        expected = float(row_energy[:k].sum() / row_energy.sum())  # singular values are in descending column order
        assert linalg.energy_kept(energy, linalg.frobenius_sq(task)) == pytest.approx(expected, abs=1e-6)
    assert linalg.rank_from_fraction(0.99, n, left.shape[1]) == 32


def test_regression_very_tall_mso_at_high_eta():
    # issue 10 §1: on a 200,000-row matrix the float32 cut (2.4 % of sigma_max) replaced the small directions by the
    # same seeded random vectors in both bases, inflating MSO. Here the top-k bases of A and B share exactly every
    # other direction (B's are A's 1st, a new one, A's 2nd, a new one, ...), so MSO = 1/2 at every even k
    m, n = 200_000, 64
    columns = haar(m, 2 * n, seed=8)
    shared, fresh = columns[:, :n], columns[:, n:]
    order_b = torch.stack([shared[:, : n // 2], fresh[:, : n // 2]], dim=2).reshape(m, n)  # s0, f0, s1, f1, ...
    singular = torch.cat([torch.ones(1, dtype=torch.float64),
                          torch.logspace(math.log10(0.022), -2, n - 1, dtype=torch.float64)])
    a = prescribed(m, n, singular, seed=9, left=shared)
    b = prescribed(m, n, singular, seed=10, left=order_b)
    energy = (singular**2).cumsum(0)
    k = int(torch.searchsorted(energy, 0.99 * energy[-1])) + 1
    assert k % 2 == 0 and singular[k - 1] < 0.024 * singular[0]  # even, and below the old cut
    basis_a, basis_b = linalg.energy_basis(a, 0.99), linalg.energy_basis(b, 0.99)
    assert basis_a.shape[1] == basis_b.shape[1] == k
    assert linalg.mso(basis_a, basis_b) == pytest.approx(0.5, abs=1e-6)
    u_a, s_a = numpy_left(a)
    u_b, s_b = numpy_left(b)
    expected = float(np.sum((u_a[:, :k].T @ u_b[:, :k]) ** 2)) / k
    assert linalg.mso(basis_a, basis_b) == pytest.approx(expected, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(4, 20), ratio=st.sampled_from([2, 3, 8, 50]), log_cond=st.floats(0, 8), method=methods,
       seed=seeds, data=st.data())
def test_mso_of_ill_conditioned_pairs_matches_numpy(n, ratio, log_cond, method, seed, data):
    m = round(ratio * n)  # room for 2n orthonormal columns
    cond = 10**log_cond
    shared = data.draw(st.integers(0, n))
    columns = haar(m, 2 * n, seed)
    a = prescribed(m, n, log_spectrum(n, cond), seed + 2, left=columns[:, :n])
    mixed = torch.cat([columns[:, n - shared : n], columns[:, n : 2 * n - shared]], dim=1)  # A's last `shared` first
    b = prescribed(m, n, log_spectrum(n, cond) * 2.0, seed + 3, left=mixed)
    u_a, s_a = numpy_left(a)
    u_b, s_b = numpy_left(b)
    total_a, total_b = linalg.frobenius_sq(a), linalg.frobenius_sq(b)
    for eta in (0.3, 0.9, 0.99, 0.999999, 1.0):
        k_a, k_b = (int(np.searchsorted(np.cumsum(s**2), eta * total * (1 - 1e-6))) + 1 for s, total in
                    ((s_a, total_a), (s_b, total_b)))
        k_a, k_b = min(k_a, n), min(k_b, n)
        basis_a = linalg.energy_basis(a, eta, method=method)
        basis_b = linalg.energy_basis(b, eta, method=method)
        assert (basis_a.shape[1], basis_b.shape[1]) == (k_a, k_b)
        if not (k_a in separated_ranks(s_a, n) and k_b in separated_ranks(s_b, n)):
            continue  # a tie at the cut: the top-k span itself is not defined
        expected = float(np.sum((u_a[:, :k_a].T @ u_b[:, :k_b]) ** 2)) / min(k_a, k_b)
        assert linalg.mso(basis_a, basis_b) == pytest.approx(expected, abs=max(tolerance(s_a), tolerance(s_b)))


def test_wide_matrix_uses_output_side():
    matrix = gaussian(5, 30, 0)
    left, singular = linalg.left_singular(matrix)
    assert left.shape == (5, 5)
    np.testing.assert_allclose((left.double() @ torch.diag(singular) ** 2 @ left.double().T).numpy(), (matrix @ matrix.T).numpy(), atol=1e-3)


def test_zero_matrix_gives_empty_basis():
    left, singular = linalg.left_singular(torch.zeros(6, 4))
    assert left.shape == (6, 0) and singular.numel() == 0
    delta = gaussian(6, 4, 1)
    matrix, parallel = linalg.parallel_part(left, delta)
    assert torch.equal(matrix, delta) and not torch.any(parallel)


def test_as_matrix_shapes():
    assert linalg.as_matrix(torch.zeros(7)).shape == (7, 1)
    assert linalg.as_matrix(torch.zeros(3, 4, 5)).shape == (3, 20)
    assert linalg.matrix_rank_bound((7,)) == 1
    assert linalg.matrix_rank_bound((3, 4, 5)) == 3
    assert linalg.matrix_rank_bound((10, 4)) == 4


@SETTINGS
@given(n=st.integers(1, 20), seed=seeds)
def test_full_fraction_keeps_everything_for_square_full_rank(n, seed):
    align, task = gaussian(n, n, seed), gaussian(n, n, seed + 1)
    left, _ = linalg.left_singular(align)
    k = linalg.rank_from_fraction(1.0, left.shape[1])
    assert k == n
    (energy,) = linalg.parallel_energies(left, task, [k])
    assert linalg.energy_kept(energy, linalg.frobenius_sq(task)) == pytest.approx(1.0, abs=1e-5)


def test_rank_from_fraction_rule():
    assert linalg.rank_from_fraction(0.01, 10) == 1  # never zero
    assert linalg.rank_from_fraction(0.99, 64, 40) == 40  # capped at the numerical rank
    assert linalg.rank_from_fraction(0.5, 64, 40) == 32
    assert linalg.rank_from_fraction(0.5, 64, 0) == 0  # a zero matrix: the empty basis
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


def test_update_is_added_in_float32_and_cast_once():
    weight = torch.randn(4, 4).to(torch.bfloat16)
    out = linalg.add_update(weight, torch.zeros(4, 4))
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
