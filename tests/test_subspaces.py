"""Every registered subspace kind and projection scheme, property-tested on random matrices (numpy cross-checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from safety_subspaces import linalg
from safety_subspaces.edits import EDITS
from safety_subspaces.edits.projections import is_projection, projection_class
from safety_subspaces.errors import UserError
from safety_subspaces.spectra import Spectrum
from safety_subspaces.subspaces import SUBSPACES, kind_frame

SETTINGS = settings(max_examples=30, deadline=None)
dims = st.integers(min_value=1, max_value=24)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
fractions = st.floats(min_value=1e-3, max_value=1.0)
KINDS = SUBSPACES.names()
SCHEMES = [name for name in EDITS.names() if is_projection(name)]


def gaussian(m: int, n: int, seed: int) -> torch.Tensor:
    """A seeded Gaussian matrix."""
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed))


def spectrum_of(matrix: torch.Tensor) -> Spectrum:
    """The spectrum a cache would hold for matrix."""
    left, singular = linalg.left_singular(matrix)
    return Spectrum(left, singular, linalg.frobenius_sq(matrix), linalg.matrix_rank_bound(matrix.shape))


def projected(scheme: str, basis: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Δ̃ of a projection scheme for a basis."""
    matrix, parallel = linalg.parallel_part(basis, delta)
    return projection_class(scheme).combine(matrix, parallel).reshape(delta.shape)


@SETTINGS
@given(m=dims, n=dims, seed=seeds, fraction=fractions, kind=st.sampled_from(KINDS))
def test_frames_are_orthonormal_and_projectors_idempotent_and_complementary(m, n, seed, fraction, kind):
    spectrum, task = spectrum_of(gaussian(m, n, seed)), gaussian(m, n, seed + 7)
    k = linalg.rank_from_fraction(fraction, spectrum.r, spectrum.rank)
    basis = kind_frame(kind, spectrum, k, seed)
    np.testing.assert_allclose((basis.T @ basis).numpy(), np.eye(k), atol=1e-5)
    par, orth = projected("parallel", basis, task), projected("orthogonal", basis, task)
    np.testing.assert_allclose(projected("parallel", basis, par).numpy(), par.numpy(), atol=1e-4)
    np.testing.assert_allclose(projected("orthogonal", basis, orth).numpy(), orth.numpy(), atol=1e-4)
    np.testing.assert_allclose((par + orth).numpy(), task.numpy(), atol=1e-4)
    np.testing.assert_allclose(projected("opposite", basis, task).numpy(), -par.numpy())
    total = linalg.frobenius_sq(task)
    e_par = linalg.energy_kept(linalg.frobenius_sq(par), total)
    e_orth = linalg.energy_kept(linalg.frobenius_sq(orth), total)
    assert e_par + e_orth == pytest.approx(1.0, abs=1e-4)


@SETTINGS
@given(m=dims, n=dims, seed=seeds, kind=st.sampled_from(KINDS), scheme=st.sampled_from(SCHEMES))
def test_one_pass_energies_equal_direct_projection_for_every_scheme(m, n, seed, kind, scheme):
    spectrum, task = spectrum_of(gaussian(m, n, seed)), gaussian(m, n, seed + 3)
    r = spectrum.rank
    frame = kind_frame(kind, spectrum, r, seed)
    ks = list(range(0, r + 1))
    total = linalg.frobenius_sq(task)
    math = projection_class(scheme)
    for k, parallel in zip(ks, linalg.parallel_energies(frame, task, ks)):
        tilde = projected(scheme, kind_frame(kind, spectrum, k, seed), task)
        tolerance = 1e-6 * max(total, 1.0)  # float32 round-off of the complement, relative to the whole update
        assert math.kept_energy(parallel, total) == pytest.approx(linalg.frobenius_sq(tilde), rel=1e-4, abs=tolerance)
        assert math.inner(parallel, total) == pytest.approx(linalg.inner(task, tilde), rel=1e-4, abs=tolerance)


@pytest.mark.parametrize("kind", KINDS)
def test_frames_are_nested_across_fractions_and_seeded(kind):
    spectrum = spectrum_of(gaussian(30, 12, 0))
    small, large = kind_frame(kind, spectrum, 3, seed=5), kind_frame(kind, spectrum, 9, seed=5)
    np.testing.assert_allclose(small.numpy(), large[:, :3].numpy(), atol=1e-6)
    assert torch.equal(small, kind_frame(kind, spectrum, 3, seed=5))


@pytest.mark.parametrize("kind", ["random_k", "random"])
def test_random_kinds_depend_on_the_seed(kind):
    spectrum = spectrum_of(gaussian(30, 12, 0))
    assert not torch.allclose(kind_frame(kind, spectrum, 3, seed=5), kind_frame(kind, spectrum, 3, seed=6))


def test_a_frame_never_exceeds_the_numerical_rank():
    spectrum = spectrum_of(gaussian(6, 2, 0))
    with pytest.raises(ValueError, match="exceeds the 2 available directions"):
        kind_frame("top_k", spectrum, 3, 0)


def test_scheme_aliases_and_non_projection_edits():
    assert [EDITS.canonical(a) for a in ("same", "orth", "opp")] == ["parallel", "orthogonal", "opposite"]
    with pytest.raises(UserError, match="unknown edit 'sideways'"):
        EDITS.canonical("sideways")
    with pytest.raises(UserError, match="unknown subspace kind 'diagonal'"):
        SUBSPACES.canonical("diagonal")
