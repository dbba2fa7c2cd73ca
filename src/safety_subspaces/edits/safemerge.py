"""SafeMERGE (Djuhera et al., 2025; github.com/aladinD/SafeMERGE): merge drifting modules with a safety fine-tune.

The gate is Safe LoRA's cosine with a strict comparison (cos < threshold, 0.35 by default); a selected module's update
becomes w₁ Δ_T + w₂ Δ_S' (linear) or w₁ DARE(Δ_T) + w₂ DARE(Δ_S') (dare_linear, seeded per tensor), where
Δ_S' = W_safety − W_ref is the update of a safety fine-tune of the same reference. Every other tensor keeps Δ_T.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from .. import defence_math
from ..errors import UserError
from ..runtime import stable_seed
from . import EDITS, EditInputs, check_fraction
from .defence import GatedDefence

if TYPE_CHECKING:
    import torch


@EDITS.register("safemerge")
class SafeMerge(GatedDefence):
    """SafeMERGE: merge the modules whose update drifts from C with the same module of a safety fine-tune."""

    strict = True
    reads = {"safety_update": "a safety fine-tune of the same reference, whose update is merged in"}

    def __init__(self, modules: str | None = None, mode: Literal["number", "threshold"] = "threshold",
                 threshold: float = 0.35, num_layers: int = 10, projector: Literal["safe_lora", "exact"] = "safe_lora",
                 subspace: str = "top_k", fraction: float | None = None, weights: list[float] = [0.8, 0.2],  # noqa: B006
                 combination: Literal["linear", "dare_linear"] = "linear", density: float = 0.5, rescale: bool = True):
        """SafeMERGE's gate and merge, with the source's defaults (get_safemerge_model.py L80-84, utils.py L130).

        Args:
            modules: regular expression of the modules it may merge; default: the adapter's target modules, else every 2-D tensor inside decoder blocks.
            mode: threshold (cos < threshold, as published) or number (the num_layers modules of lowest cosine).
            threshold: the threshold mode's cosine bound (strictly below it is merged).
            num_layers: how many modules the number mode merges.
            projector: safe_lora (C = V Vᵀ / ‖V‖_F, as published) or exact (the projector P_k at rank fraction fraction).
            subspace: the subspace kind the gate's operator is built on: top_k (as published), or the controls random_k and random.
            fraction: the exact projector's rank fraction ϱ in (0, 1] (exact only).
            weights: [w₁, w₂], the weights of the fine-tune's and the safety fine-tune's updates.
            combination: linear (w₁ Δ_T + w₂ Δ_S') or dare_linear (each update DARE'd first, seeded per tensor).
            density: dare_linear's keep probability in (0, 1].
            rescale: dare_linear divides kept entries by density (false: as SafeMERGE's pinned peft 0.14, which does not).
        """
        self.setup(modules=modules, mode=mode, threshold=threshold, num_layers=num_layers, projector=projector,
                   subspace=subspace, fraction=fraction)
        if len(weights) != 2:
            raise UserError(f"safemerge: weights must be two numbers [fine-tune, safety], got {weights}")
        self.weights, self.combination, self.rescale = [float(w) for w in weights], combination, rescale
        self.density = check_fraction(density, "safemerge: density")

    def options(self) -> dict[str, Any]:
        """The gate's, the operator's and the merge's options."""
        return {**super().options(), "weights": self.weights, "combination": self.combination, "density": self.density,
                "rescale": self.rescale}

    def edit(self, inputs: EditInputs, name: str, delta_task: "torch.Tensor") -> "torch.Tensor":
        """w₁ Δ_T + w₂ Δ_S' (each DARE'd first under dare_linear)."""
        safety = inputs.update_of("safety_update", name)
        seeds = [stable_seed(inputs.seed, name, "dare", i) for i in range(2)]
        return defence_math.merge_updates([delta_task, safety], self.weights, combination=self.combination,
                                          density=self.density, seeds=seeds, rescale=self.rescale)
