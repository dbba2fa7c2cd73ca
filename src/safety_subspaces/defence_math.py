"""The pure mathematics of the weight-space defences: Safe LoRA, SafeMERGE, RESTA, LoX and AsFT (docs/defences.md).

No files, no models: tensors in, tensors or numbers out, ValueError on bad input (the edits turn it into a
UserError). A tensor is the matrix of its stored layout (`linalg.as_matrix`), "left" is the output side, and the
alignment update V = Δ_A (or Δ_S) of a tensor is known through its cached thin spectrum V = U Σ Wᵀ (U: m × rank,
σ: rank values, descending) and its exact ‖V‖²_F.

Every Δ_A-based defence sees V only through an operator F diag(λ) Fᵀ on the output side, never formed as an m × m
matrix: Safe LoRA's alignment matrix C = V Vᵀ / ‖V‖_F = U diag(σ²) Uᵀ / ‖V‖_F (λ_i = σ_i² / ‖V‖_F; symmetric,
positive semi-definite, not idempotent), or the orthogonal projector P_k = U_k U_kᵀ (λ = 1). A subspace control
replaces U by another frame F of a subspace kind (its columns paired with σ in order) and keeps Σ and W: the control
update is V_F = F Σ Wᵀ = F Uᵀ V, so C_F has exactly C's eigenvalues and LoX's added term keeps its singular values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from . import linalg

PROJECTORS = ("safe_lora", "exact")
GATE_MODES = ("threshold", "number")
COMBINATIONS = ("linear", "dare_linear")
COSINE_DECIMALS = 5  # Safe LoRA model.py L100 and SafeMERGE utils.py L118 round the gate cosine to 5 decimals


@dataclass(frozen=True)
class AlignmentOperator:
    """A symmetric operator F diag(λ) Fᵀ on the output side (m × m), applied without being formed."""

    frame: torch.Tensor  # m × q, orthonormal columns
    eigenvalues: torch.Tensor  # (q,): the eigenvalue of each frame column

    def __post_init__(self) -> None:
        if self.frame.ndim != 2 or tuple(self.eigenvalues.shape) != (self.frame.shape[1],):
            raise ValueError(f"frame {tuple(self.frame.shape)} and eigenvalues {tuple(self.eigenvalues.shape)} disagree")

    @property
    def size(self) -> int:
        """m: the output dimension the operator acts on."""
        return int(self.frame.shape[0])

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> "AlignmentOperator":
        """The same operator with its factors on a device in a dtype (built once, applied every training step)."""
        return AlignmentOperator(self.frame.to(device=device, dtype=dtype), self.eigenvalues.to(device=device, dtype=dtype))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """F (λ ⊙ (Fᵀ X)) for a tensor X with m rows (its matrix view), in X's shape, float32 or wider."""
        if x.shape[0] != self.size:
            raise ValueError(f"an operator of size {self.size} cannot act on a tensor of shape {tuple(x.shape)}")
        matrix = linalg.as_matrix(x)
        dtype = torch.promote_types(torch.promote_types(matrix.dtype, self.frame.dtype), torch.float32)
        frame = self.frame.to(device=matrix.device, dtype=dtype)
        weights = self.eigenvalues.to(device=matrix.device, dtype=dtype)
        out = frame @ (weights[:, None] * (frame.T @ matrix.to(dtype)))
        return out.reshape(x.shape)

    def complement(self, x: torch.Tensor) -> torch.Tensor:
        """(I − F diag(λ) Fᵀ) X: AsFT's I − C when the operator is C."""
        applied = self.apply(x)
        return x.to(applied.dtype) - applied

    def dense(self) -> torch.Tensor:
        """The m × m matrix itself (small tensors and tests only)."""
        return (self.frame * self.eigenvalues.to(self.frame.dtype)) @ self.frame.T


def alignment_norm(singular: torch.Tensor, total: float | None = None) -> float:
    """‖V‖_F: the square root of the exact total ‖V‖²_F when given, else ‖σ‖₂ of the spectrum."""
    if total is not None:
        return math.sqrt(max(float(total), 0.0))
    return float(torch.linalg.vector_norm(singular.double()))


def alignment_matrix(frame: torch.Tensor, singular: torch.Tensor, total: float | None = None) -> AlignmentOperator:
    """Safe LoRA's C_F = F diag(σ²) Fᵀ / ‖V‖_F, frame column i paired with σ_i (F = U: C = V Vᵀ / ‖V‖_F); V = 0: zero."""
    if frame.shape[1] != singular.shape[0]:
        raise ValueError(f"a frame of {frame.shape[1]} columns for {singular.shape[0]} singular values")
    norm = alignment_norm(singular, total)
    if norm == 0.0 or frame.shape[1] == 0:
        return AlignmentOperator(frame.new_zeros(frame.shape[0], 0), frame.new_zeros(0))
    return AlignmentOperator(frame, (singular.double() ** 2 / norm).to(frame.dtype))


def projector(frame: torch.Tensor) -> AlignmentOperator:
    """The orthogonal projector F Fᵀ onto a frame's columns (P_k = U_k U_kᵀ for the top-k frame)."""
    return AlignmentOperator(frame, torch.ones(frame.shape[1], dtype=frame.dtype, device=frame.device))


def control_update(left: torch.Tensor, frame: torch.Tensor, delta_align: torch.Tensor) -> torch.Tensor:
    """V_F = F_q U_qᵀ V (q = frame columns) as a matrix: V's top q singular triplets with U_q replaced by F, Σ and W kept."""
    matrix = linalg.as_matrix(delta_align)
    dtype = torch.promote_types(torch.promote_types(matrix.dtype, left.dtype), torch.float32)
    q = frame.shape[1]
    if q > left.shape[1]:
        raise ValueError(f"a frame of {q} columns for {left.shape[1]} singular directions")
    coefficients = left[:, :q].to(device=matrix.device, dtype=dtype).T @ matrix.to(dtype)  # = Σ_q W_qᵀ (thin SVD)
    return frame.to(device=matrix.device, dtype=dtype) @ coefficients


# ------------------------------------------------------------------------------------------- cosine, gates


def module_cosine(operator: AlignmentOperator, delta: torch.Tensor, *, decimals: int | None = COSINE_DECIMALS) -> float:
    """cos(C X, X) over all entries, rounded as the sources round it; 0 when either side is zero."""
    matrix = linalg.as_matrix(delta)
    applied = operator.apply(matrix)
    value = linalg.cosine(applied, matrix.to(applied.dtype))
    value = 0.0 if math.isnan(value) else value
    return value if decimals is None else float(np.round(value, decimals))


def _finite(cosines: Mapping[str, float]) -> dict[str, float]:
    """The cosines as floats, each finite (a ValueError naming the module otherwise)."""
    out = {name: float(value) for name, value in cosines.items()}
    for name, value in out.items():
        if not math.isfinite(value):
            raise ValueError(f"module {name!r} has a non-finite cosine {value!r}")
    return out


def gate_threshold(cosines: Mapping[str, float], threshold: float, *, strict: bool) -> dict[str, bool]:
    """Select the modules with cos < threshold (strict: SafeMERGE) or cos <= threshold (Safe LoRA)."""
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return {name: (value < threshold if strict else value <= threshold) for name, value in _finite(cosines).items()}


def gate_number(cosines: Mapping[str, float], num_layers: int) -> dict[str, bool]:
    """Safe LoRA's number mode: cos <= the num_layers-th smallest cosine (ties select more; all when n >= modules)."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(f"num_layers must be a non-negative integer, got {num_layers!r}")
    values = _finite(cosines)
    if num_layers == 0 or not values:
        return {name: False for name in values}
    cutoff = float(np.sort(np.array(list(values.values()), dtype=np.float64))[:num_layers][-1])
    return {name: value <= cutoff for name, value in values.items()}


@dataclass(frozen=True)
class Gating:
    """Which modules a cosine gate selects: threshold mode (strict < or <=) or Safe LoRA's number mode."""

    mode: str = "number"
    threshold: float = 0.5
    num_layers: int = 10
    strict: bool = False

    def __post_init__(self) -> None:
        if self.mode not in GATE_MODES:
            raise ValueError(f"unknown gate mode {self.mode!r}; use one of {', '.join(GATE_MODES)}")

    def decide(self, cosines: Mapping[str, float]) -> dict[str, bool]:
        """Per-module decisions (True: the module is edited), in the cosines' order."""
        if self.mode == "threshold":
            return gate_threshold(cosines, self.threshold, strict=self.strict)
        return gate_number(cosines, self.num_layers)


# ------------------------------------------------------------------------------------------ DARE, merges


def dare(tensor: torch.Tensor, density: float, seed: int, *, rescale: bool = True) -> torch.Tensor:
    """Drop And REscale: keep each entry with probability density (seeded), divided by density when rescale."""
    density = linalg.check_fraction(density, "density")
    if density == 1.0:
        return tensor.clone()
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand(tensor.shape, generator=generator, dtype=torch.float64) < density).to(tensor.device)
    kept = torch.where(mask, tensor, torch.zeros((), dtype=tensor.dtype, device=tensor.device))
    return kept / density if rescale else kept


def merge_updates(deltas: Sequence[torch.Tensor], weights: Sequence[float], *, combination: str = "linear",
                  density: float = 1.0, seeds: Sequence[int] = (), rescale: bool = True) -> torch.Tensor:
    """Σ w_i Δ_i (linear) or Σ w_i DARE(Δ_i) (dare_linear, one seed per update), in float32 or wider."""
    weights = [float(w) for w in weights]
    if len(weights) != len(deltas) or not deltas:
        raise ValueError(f"{len(deltas)} updates but {len(weights)} merge weights")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"merge weights must be finite, got {weights}")
    if combination == "linear":
        parts = [delta.float() for delta in deltas]
    elif combination == "dare_linear":
        if len(seeds) != len(deltas):
            raise ValueError(f"dare_linear needs one seed per update ({len(deltas)}), got {len(seeds)}")
        parts = [dare(delta.float(), density, seed, rescale=rescale) for delta, seed in zip(deltas, seeds)]
    else:
        raise ValueError(f"unknown combination {combination!r}; use one of {', '.join(COMBINATIONS)}")
    out = torch.zeros_like(parts[0])
    for weight, part in zip(weights, parts):
        out += weight * part
    return out


def resta_delta(delta_task: torch.Tensor, delta_harmful: torch.Tensor, *, beta: float, density: float | None = None,
                seed: int = 0, rescale: bool = True) -> torch.Tensor:
    """Δ̃ = DARE(Δ_T) − β Δ_H with Δ_H = W_harmful − W_A, so W_A + Δ̃ = W_FT + β (W_A − W_harmful) without DARE."""
    if delta_task.shape != delta_harmful.shape:
        raise ValueError(f"task update {tuple(delta_task.shape)} and harmful update {tuple(delta_harmful.shape)} differ")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta!r}")
    task = delta_task.float() if density is None else dare(delta_task.float(), density, seed, rescale=rescale)
    return task - beta * delta_harmful.float()


# --------------------------------------------------------------------------------------------------- LoX


def lox_update(left: torch.Tensor, frame: torch.Tensor, delta_align: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """α F_k U_kᵀ Δ_A in Δ_A's shape (k = frame columns; F = U_k: α U_k Σ_k W_kᵀ, the rank-k truncation of Δ_A)."""
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    return (alpha * control_update(left, frame, delta_align)).reshape(delta_align.shape)


# -------------------------------------------------------------------------------------------------- AsFT


def asft_penalty(operator: AlignmentOperator, delta: torch.Tensor, *, weight: float) -> torch.Tensor:
    """λ ‖(I − C) ΔW‖²_F of a full update ΔW = W − W_A, differentiable in ΔW (the operator is a constant)."""
    residual = operator.complement(linalg.as_matrix(delta))
    return weight * (residual**2).sum()


def asft_lora_penalty(operator: AlignmentOperator, lora_b: torch.Tensor, lora_a: torch.Tensor, *, weight: float,
                      scaling: float = 1.0) -> torch.Tensor:
    """λ s² ‖(I − C) B A‖²_F as ⟨MᵀM, A Aᵀ⟩ with M = (I − C) B (B A never formed); AsFT's code takes s = 1."""
    residual = operator.complement(lora_b)
    a = lora_a.to(residual.dtype)
    return weight * scaling**2 * ((residual.T @ residual) * (a @ a.T)).sum()
