"""AsFT (Yang et al., AAAI 2026; github.com/PKU-YuanGroup/AsFT): keep the update near the alignment matrix's range.

loss + λ Σ_modules ‖(I − C) ΔW‖²_F, with C = V Vᵀ / ‖V‖_F of V = Δ_A/S per module (or the exact projector P_k with
`projector: exact`), ΔW = W − W_ref on a full fine-tune and B A (s · B A with `lora_scaling`) on a LoRA fine-tune.
C is applied through Δ_A/S's cached spectrum on the training device; it is never formed as an m × m matrix. The
published code is LoRA-only, squared Frobenius, summed over modules, on the raw B A (docs/defences.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from ... import defence_math
from ...errors import UserError
from . import CONSTRAINTS, Constraint, Penalty

if TYPE_CHECKING:
    from ...subspaces import AlignmentSubspaces


def lora_modules(model: Any) -> dict[str, tuple[Any, Any, float]]:
    """A PEFT model's LoRA modules by the weight they adapt: (lora_B weight, lora_A weight, scaling s)."""
    from ...adapters import LORA_KEY, weight_name

    params = dict(model.named_parameters())
    sides: dict[str, dict[str, str]] = {}
    for key in params:
        match = LORA_KEY.match(key)
        if match is not None:
            sides.setdefault(match["module"], {})[match["side"]] = key
    found = {}
    modules = dict(model.named_modules())
    for module, keys in sides.items():
        scaling = getattr(modules.get(module), "scaling", {}) or {}
        adapter = keys["A"].split(".lora_A.")[-1].rsplit(".weight", 1)[0] if ".lora_A." in keys["A"] else "default"
        found[weight_name(module)] = (params[keys["B"]], params[keys["A"]], float(scaling.get(adapter, 1.0)))
    return found


@CONSTRAINTS.register("asft")
class Asft(Constraint):
    """AsFT: add λ Σ ‖(I − C) ΔW‖²_F over the modules to the loss (ΔW = W − W_A, or B A on LoRA)."""

    def __init__(self, lambda_: float = 1.0, projector: Literal["safe_lora", "exact"] = "safe_lora",
                 subspace: str = "top_k", fraction: float | None = None, modules: str | None = None,
                 lora_scaling: bool = False):
        """The regulariser, with the source's defaults (scripts pass --lambda_reg 1; C as Safe LoRA's).

        Args:
            lambda_: λ, the penalty's weight (the source's scripts use 1; 0 turns it off).
            projector: safe_lora (C = V Vᵀ / ‖V‖_F, as published) or exact (the projector P_k at rank fraction fraction).
            subspace: the subspace kind C or P_k is built on: top_k (as published), or the controls random_k and random.
            fraction: the exact projector's rank fraction ϱ in (0, 1] (exact only).
            modules: regular expression of the modules penalised; default: the adapter's modules (LoRA), else every 2-D tensor inside decoder blocks.
            lora_scaling: LoRA: penalise s · B A (the applied update) instead of the source's raw B A.
        """
        from ...subspaces import operator_options

        if not math.isfinite(lambda_) or lambda_ < 0:
            raise UserError(f"asft: lambda must be a finite number >= 0, got {lambda_}")
        self.weight, self.modules, self.lora_scaling = float(lambda_), modules, lora_scaling
        self.projector, self.subspace, self.fraction = operator_options(projector, subspace, fraction, "asft")

    def options(self) -> dict[str, Any]:
        """lambda, the operator's options, modules and lora_scaling."""
        return {"lambda": self.weight, "projector": self.projector, "subspace": self.subspace,
                "fraction": self.fraction, "modules": self.modules, "lora_scaling": self.lora_scaling}

    def bind(self, model: Any, subspaces: "AlignmentSubspaces", device: str) -> Penalty:
        """The penalty over the selected modules, each operator built once on the training device."""
        from ...edits.defence import select_modules

        infos = subspaces.reference.infos
        lora = lora_modules(model)
        params = dict(model.named_parameters())
        names = [n for n in subspaces.reference.names if infos[n].dtype.is_floating_point]
        if lora:
            chosen = select_modules(infos, names, list(lora), self.modules, "asft")
        else:
            chosen = [n for n in select_modules(infos, names, None, self.modules, "asft") if n in params]
            if not chosen:
                raise UserError("asft: none of its modules is a parameter of the model being trained")
        operators = {n: subspaces.operator(n, self.projector, self.subspace, self.fraction).to(device) for n in chosen}
        weight = self.weight
        if lora:
            factors = {n: lora[n] for n in chosen}
            scale = {n: factors[n][2] if self.lora_scaling else 1.0 for n in chosen}

            def compute():
                return sum(defence_math.asft_lora_penalty(operators[n], factors[n][0], factors[n][1], weight=weight,
                                                          scaling=scale[n]) for n in chosen)
        else:
            start = {n: params[n].detach().clone() for n in chosen}

            def compute():
                return sum(defence_math.asft_penalty(operators[n], params[n] - start[n], weight=weight) for n in chosen)

        return Penalty(compute, chosen)
