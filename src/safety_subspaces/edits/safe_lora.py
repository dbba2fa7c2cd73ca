"""Safe LoRA (Hsu et al., NeurIPS 2024; github.com/IBM/SafeLoRA): project drifting modules onto the alignment matrix.

For each module the gate selects (cos(C Δ_T, Δ_T) at most threshold, or the num_layers lowest cosines), Δ̃ = C Δ_T
with C = V Vᵀ / ‖V‖_F of V = Δ_A/S; on a LoRA adapter the same edit is B ← C B (A and the scaling kept), written
back as an adapter. Every other tensor keeps Δ_T. docs/defences.md states the formula, defaults and sources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from . import EDITS, EditInputs
from .defence import GatedDefence

if TYPE_CHECKING:
    import torch


@EDITS.register("safe_lora")
class SafeLora(GatedDefence):
    """Safe LoRA: Δ̃ = C Δ_T on the modules whose update drifts from the alignment matrix C (B ← C B on adapters)."""

    def __init__(self, modules: str | None = None, mode: Literal["number", "threshold"] = "number",
                 threshold: float = 0.5, num_layers: int = 10, projector: Literal["safe_lora", "exact"] = "safe_lora",
                 subspace: str = "top_k", fraction: float | None = None):
        """Safe LoRA's gate and projection, with the source's defaults (config.py L35-48).

        Args:
            modules: regular expression of the modules it may edit; default: the adapter's target modules, else every 2-D tensor inside decoder blocks.
            mode: number (project the num_layers modules of lowest cosine, ties included) or threshold (cos <= threshold).
            threshold: the threshold mode's cosine bound.
            num_layers: how many modules the number mode projects.
            projector: safe_lora (C = V Vᵀ / ‖V‖_F, as published) or exact (the projector P_k at rank fraction fraction).
            subspace: the subspace kind C or P_k is built on: top_k (as published), or the controls random_k and random.
            fraction: the exact projector's rank fraction ϱ in (0, 1] (exact only).
        """
        self.setup(modules=modules, mode=mode, threshold=threshold, num_layers=num_layers, projector=projector,
                   subspace=subspace, fraction=fraction)

    def edit(self, inputs: EditInputs, name: str, delta_task: "torch.Tensor") -> "torch.Tensor":
        """C Δ_T."""
        return self.operator(inputs, name).apply(delta_task).float()

    def adapter(self, inputs: EditInputs, name: str, lora_b: "torch.Tensor", lora_a: "torch.Tensor"):
        """(C B, A) on a selected module, (B, A) elsewhere: s (C B) A = C Δ_T."""
        if not self.selected(name):
            return lora_b, lora_a
        return self.operator(inputs, name).apply(lora_b.float()).float(), lora_a
