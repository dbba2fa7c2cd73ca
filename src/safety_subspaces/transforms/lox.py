"""LoX (Perin et al., COLM 2025; github.com/VITA-Group/LoX): extrapolate the top-k of Δ_A before fine-tuning.

W_A' = W_A + α · U_k Σ_k V_kᵀ per tensor of two or more dimensions (the rank-k truncation of Δ_A, from the cached
spectrum as α · U_k U_kᵀ Δ_A); 1-D tensors are unchanged. The controls replace U_k by k columns of another subspace
kind's frame and keep Σ_k: α · F_k U_kᵀ Δ_A has exactly the singular values of the published term.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .. import defence_math, linalg
from ..checkpoints import layer_index, module_pattern
from ..edits import check_fraction
from ..errors import UserError
from ..subspaces import SUBSPACES, AlignmentSubspaces
from . import TRANSFORMS, Transform

if TYPE_CHECKING:
    import torch


@TRANSFORMS.register("lox")
class Lox(Transform):
    """LoX: W_A' = W_A + α · U_k Σ_k V_kᵀ of Δ_A per tensor (a training-free pre-fine-tuning extrapolation)."""

    def __init__(self, alpha: float = 1.0, k: int = 0, fraction: float | None = None, subspace: str = "top_k",
                 modules: str | None = None):
        """The extrapolation, with the source's defaults (LoX.py --k 0 --coef 1.0).

        Args:
            alpha: α, the extrapolation factor.
            k: the rank k of every tensor's truncation (0: full rank, as the source's default), at most its numerical rank.
            fraction: a rank fraction ϱ in (0, 1] instead of k (k = max(1, round(ϱ·r)) per tensor).
            subspace: the subspace kind whose first k directions carry Σ_k: top_k (as published), or the controls random_k and random.
            modules: regular expression of the tensors it changes; default: every tensor of two or more dimensions (embeddings included, as the source).
        """
        if not math.isfinite(alpha):
            raise UserError(f"lox: alpha must be a finite number, got {alpha}")
        if k < 0:
            raise UserError(f"lox: k must be 0 (full rank) or positive, got {k}")
        if fraction is not None and k != 0:
            raise UserError("lox: give k or fraction, not both")
        if fraction is not None:
            fraction = check_fraction(fraction, "lox")
        self.alpha, self.k, self.fraction, self.modules = alpha, k, fraction, modules
        self.subspace = SUBSPACES.canonical(subspace, "lox: subspace")
        self.select = module_pattern(modules, "lox")
        self._records: dict[str, dict[str, Any]] = {}

    def options(self) -> dict[str, Any]:
        """alpha, k, fraction, subspace and modules."""
        return {"alpha": self.alpha, "k": self.k, "fraction": self.fraction, "subspace": self.subspace,
                "modules": self.modules}

    def rank(self, subspaces: AlignmentSubspaces, name: str) -> int:
        """k of one tensor: from the fraction, or the given k (0: all), capped at Δ_A's numerical rank."""
        if self.fraction is not None:
            return subspaces.rank(name, self.fraction)
        rank = subspaces.spectrum(name).rank
        return rank if self.k == 0 else min(self.k, rank)

    def weight(self, subspaces: AlignmentSubspaces, name: str) -> "torch.Tensor | None":
        """W_A + α F_k U_kᵀ Δ_A (fp32 sum, cast once to W_A's dtype) on a selected tensor of 2+ dimensions."""
        info = subspaces.reference.infos[name]
        if len(info.shape) < 2 or not self.select(name):
            return None
        delta_align = subspaces.delta_align(name)
        spectrum = subspaces.spectrum(name, delta_align)
        k = self.rank(subspaces, name)
        frame = subspaces.frame(name, self.subspace, k)
        update = defence_math.lox_update(spectrum.left.to(frame.device), frame, delta_align, alpha=self.alpha)
        total = linalg.frobenius_sq(delta_align)
        self._records[name] = {"name": name, "layer": layer_index(name), "k": k, "edited": k > 0,
                               "kept": linalg.frobenius_sq(update), "total": total}
        weight = subspaces.reference.read(name)
        return linalg.add_update(weight.to(frame.device), update).cpu()

    def records(self) -> list[dict[str, Any]]:
        """Per tensor: k, ‖α F_k Σ_k‖² (kept) and ‖Δ_A‖² (total)."""
        return [dict(record) for record in self._records.values()]
