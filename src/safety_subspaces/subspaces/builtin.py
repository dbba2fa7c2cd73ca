"""The paper's subspace kinds: top_k, random_k and random (docs/design.md §3)."""

from __future__ import annotations

import torch

from ..linalg import haar_frame, random_order
from ..spectra import Spectrum
from . import SUBSPACES, Columns, deterministic


@SUBSPACES.register("top_k")
@deterministic
def top_k(spectrum: Spectrum, k: int, seed: int) -> Columns:
    """The first k left singular vectors of Δ_A/S (largest singular values first)."""
    return Columns()


@SUBSPACES.register("random_k")
def random_k(spectrum: Spectrum, k: int, seed: int) -> Columns:
    """k of Δ_A/S's left singular vectors chosen uniformly without replacement (one seeded order, nested in k)."""
    return Columns(random_order(spectrum.rank, seed))


@SUBSPACES.register("random")
def random(spectrum: Spectrum, k: int, seed: int) -> torch.Tensor:
    """A Haar-random k-dimensional subspace of R^m: the first k columns of one seeded Gaussian frame, orthonormalised."""
    return haar_frame(spectrum.left.shape[0], k, seed, width=spectrum.rank, dtype=spectrum.left.dtype)
