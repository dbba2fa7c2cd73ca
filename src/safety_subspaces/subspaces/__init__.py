"""Subspace kinds of Δ_A/S and the alignment subspaces: per tensor, a frame from the cached spectrum and a seed.

A kind is a registered function (spectrum, k, seed) -> frame: either `Columns` (columns of Δ_A/S's left singular
vectors U, in U's order or a seeded order) or a dense m × k orthonormal tensor. The seed is derived from
(study seed, tensor name, kind), so a tensor's subspace does not depend on which other tensors are visited; a kind
orders its directions once per tensor and the frame for k is the first k of that order, so subspaces are nested
across fractions. A dense frame (the `random` kind's Haar frame) is built once per (kind, seed, tensor, k) and kept
in the SVD cache beside the spectrum, so later runs and in-memory swaps read it instead of regenerating it; column
kinds cost a gather. Adding a kind is one new module in this package (or a plugin, entry-point group
`safety_subspaces.subspaces`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import defence_math, linalg
from ..checkpoints import Checkpoint
from ..memo import TensorMemo
from ..profiling import stage
from ..registry import Registry
from ..errors import UserError
from ..runtime import stable_seed
from ..spectra import Spectrum, SpectrumCache, difference

SUBSPACES = Registry("subspace kind", "safety_subspaces.subspaces", __name__, context=("spectrum", "k", "seed"),
                     flag="--subspaces")


@dataclass(frozen=True)
class Columns:
    """A frame made of columns of U: its first k (order None: U's own order) or the columns order[:k]."""

    order: torch.Tensor | None = None

    def take(self, left: torch.Tensor, k: int) -> torch.Tensor:
        """The first k columns of the frame."""
        return left[:, :k] if self.order is None else left[:, self.order[:k]]

    def indices(self, k: int) -> torch.Tensor:
        """The indices of U's columns that make the first k columns of the frame."""
        return torch.arange(k) if self.order is None else self.order[:k]


def deterministic(factory):
    """Mark a subspace kind whose frame ignores the seed (top_k): studies give it one frame, whatever random_seeds is."""
    factory.seeded = False
    return factory


def is_seeded(kind: str) -> bool:
    """Whether a registered kind's frame depends on the seed (every kind unless marked deterministic)."""
    return bool(getattr(SUBSPACES.get(kind, "subspace kind").factory, "seeded", True))


def checked_frame(kind: str, frame: torch.Tensor, m: int, k: int) -> torch.Tensor:
    """A dense frame, refused (ValueError naming the kind) unless it is m x k."""
    if tuple(frame.shape) != (m, k):
        raise ValueError(f"subspace kind {kind!r} gave a frame of shape {tuple(frame.shape)}, not {(m, k)}")
    return frame


def kind_choice(kind: str, spectrum: Spectrum, k: int, seed: int) -> Columns | torch.Tensor:
    """What a kind gives for one tensor's spectrum: Columns of U, or its first k dense orthonormal columns."""
    if k > spectrum.rank:
        raise ValueError(f"k = {k} exceeds the {spectrum.rank} available directions")
    made = SUBSPACES.build(kind, "subspace kind", spectrum=spectrum, k=k, seed=seed)
    return made if isinstance(made, Columns) else checked_frame(kind, made, spectrum.left.shape[0], k)


def kind_frame(kind: str, spectrum: Spectrum, k: int, seed: int) -> torch.Tensor:
    """The first k orthonormal columns of a kind's frame for one tensor's spectrum (on the spectrum's device)."""
    made = kind_choice(kind, spectrum, k, seed)
    frame = made.take(spectrum.left, k) if isinstance(made, Columns) else made
    return checked_frame(kind, frame, spectrum.left.shape[0], k).to(spectrum.left.device)


class AlignmentSubspaces:
    """Per-tensor alignment subspaces of Δ = W_ref - W_0 (ref = aligned or safety-tuned), decomposed once (cached)."""

    def __init__(self, base: Checkpoint, reference: Checkpoint, *, seed: int = 0, cache_root: Path | None = None,
                 method: str = "auto", device: str = "cpu", keep_bytes: int = 0):
        self.base, self.reference, self.seed, self.device = base, reference, seed, device
        self.cache = SpectrumCache(reference, base, root=cache_root, method=method, device=device)
        self._current: tuple[str, Spectrum] | None = None
        self._kept = TensorMemo(keep_bytes)  # spectra kept in memory between uses (workers swapping many edits)
        self._column_kinds: set[str] = set()  # kinds seen to give Columns (no frame cache look-up for them)

    def delta_align(self, name: str) -> torch.Tensor:
        """Δ_A/S of one tensor in float32."""
        return difference(self.reference, self.base, name, device=self.device)

    def spectrum(self, name: str, delta: torch.Tensor | None = None) -> Spectrum:
        """The (disk-cached) spectrum of Δ_A/S for a tensor; in memory: the current tensor's, and up to keep_bytes more."""
        if self._current is None or self._current[0] != name:
            self._current = (name, self._kept.get(name, lambda: self.cache.get(name, delta)))
        return self._current[1]

    def rank(self, name: str, fraction: float) -> int:
        """k for a rank fraction: max(1, round(fraction * r)), r = min(m, n), capped at Δ's numerical rank (0 when Δ = 0)."""
        spectrum = self.spectrum(name)
        return linalg.rank_from_fraction(fraction, spectrum.r, spectrum.rank)

    def kind_seed(self, name: str, kind: str) -> int:
        """The seed of a kind's random choices for one tensor: from (study seed, tensor name, kind)."""
        return stable_seed(self.seed, name, kind)

    def choice(self, name: str, kind: str, k: int) -> Columns | torch.Tensor:
        """A kind's first k directions for a tensor: Columns of U, or a dense frame on the device (built once, cached).

        A dense frame is kept in the SVD cache under (kind, seed, k), with the bits of the kind's own construction.
        """
        spectrum = self.spectrum(name)
        seed = self.kind_seed(name, kind)
        key = f"{kind}.s{seed}.k{k}"
        cached = None if kind in self._column_kinds else self.cache.load_frame(name, key)
        if cached is not None:
            return checked_frame(kind, cached, spectrum.left.shape[0], k).to(self.device)
        with stage("frames"):
            choice = kind_choice(kind, spectrum, k, seed)
        if isinstance(choice, Columns):
            self._column_kinds.add(kind)
            return choice
        self.cache.store_frame(name, key, choice)
        return choice.to(self.device)

    def frame(self, name: str, kind: str, k: int) -> torch.Tensor:
        """The first k columns of the subspace frame of a kind; seeded by (seed, tensor name, kind)."""
        return self.frame_rows(name, self.choice(name, kind, k), k, slice(None))

    def frame_rows(self, name: str, choice: Columns | torch.Tensor, k: int, rows: slice) -> torch.Tensor:
        """Rows of the first k columns of a frame from choice(name, kind, k), on the device (a gather of those rows only)."""
        if isinstance(choice, Columns):
            return choice.take(self.spectrum(name).left[rows].to(self.device), k)
        return choice[rows]

    def operator(self, name: str, projector: str, kind: str, fraction: float | None = None) -> defence_math.AlignmentOperator:
        """Safe LoRA's C (projector safe_lora) or P_k at a rank fraction (exact) of a tensor, built on a kind's frame.

        The frame's columns are paired with Δ_A/S's singular values in order, so every kind's C has C's spectrum.
        """
        if projector == "exact":
            return defence_math.projector(self.frame(name, kind, self.rank(name, fraction)))  # type: ignore[arg-type]
        spectrum = self.spectrum(name)
        frame = self.frame(name, kind, spectrum.rank)
        return defence_math.alignment_matrix(frame, spectrum.singular.to(frame.device), spectrum.total)


def operator_options(projector: str, subspace: str, fraction: float | None, where: str) -> tuple[str, str, float | None]:
    """Checked (projector, subspace kind, fraction) of a defence built on C or P_k (a UserError naming where)."""
    if projector not in defence_math.PROJECTORS:
        raise UserError(f"{where}: projector {projector!r} is not one of {', '.join(defence_math.PROJECTORS)}")
    subspace = SUBSPACES.canonical(subspace, f"{where}: subspace")
    if projector == "exact":
        if fraction is None:
            raise UserError(f"{where}: projector exact needs fraction (the rank fraction of P_k, in (0, 1])")
        try:
            return projector, subspace, linalg.check_fraction(float(fraction), "fraction")
        except (TypeError, ValueError):
            raise UserError(f"{where}: fraction {fraction!r} is outside (0, 1]") from None
    if fraction is not None:
        raise UserError(f"{where}: fraction is the exact projector's rank fraction; give projector=exact or leave it out")
    return projector, subspace, None
