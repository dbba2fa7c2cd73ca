"""RESTA (Bhardwaj, Anh, Poria; ACL 2024): add a safety vector back to the fine-tuned model.

W = W_FT + β (W_ref − W_harmful) on every floating-point tensor, where W_harmful is the reference fine-tuned on
harmful data; so Δ̃ = Δ_T − β (W_harmful − W_ref). Optionally DARE (seeded per tensor) drops entries of Δ_T first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from .. import defence_math, linalg
from ..errors import UserError
from ..runtime import stable_seed
from . import EDITS, Edit, EditInputs, check_fraction
from .defence import module_record

if TYPE_CHECKING:
    import torch


@EDITS.register("resta")
class Resta(Edit):
    """RESTA: Δ̃ = Δ_T − β (W_harmful − W_ref), i.e. W = W_FT + β (W_ref − W_harmful); optional DARE on Δ_T."""

    reads = {"harmful": "the reference fine-tuned on harmful data (W_harmful)"}

    def __init__(self, beta: float = 1.0, density: float | None = None, rescale: bool = True):
        """The safety vector's weight and the optional DARE of the task update.

        Args:
            beta: β, the weight of the safety vector W_ref − W_harmful.
            density: DARE's keep probability in (0, 1] on Δ_T (default: no DARE).
            rescale: DARE divides kept entries by density.
        """
        if not math.isfinite(beta):
            raise UserError(f"resta: beta must be a finite number, got {beta}")
        self.beta, self.rescale = beta, rescale
        self.density = None if density is None else check_fraction(density, "resta: density")
        self._records: dict[str, dict[str, Any]] = {}

    def options(self) -> dict[str, Any]:
        """beta, density and rescale."""
        return {"beta": self.beta, "density": self.density, "rescale": self.rescale}

    def prepare(self, inputs: EditInputs, names: Sequence[str]) -> None:
        """Start a new application's records."""
        self._records = {}

    def delta(self, inputs: EditInputs, name: str, delta_task: "torch.Tensor") -> "torch.Tensor":
        """DARE(Δ_T) − β Δ_H of one tensor, recorded with its energy."""
        harmful = inputs.update_of("harmful", name)
        edited = defence_math.resta_delta(delta_task, harmful, beta=self.beta, density=self.density,
                                          seed=stable_seed(inputs.seed, name, "dare"), rescale=self.rescale)
        self._records[name] = module_record(name, None, True, linalg.frobenius_sq(edited), linalg.frobenius_sq(delta_task))
        return edited

    def records(self) -> list[dict[str, Any]]:
        """Every tensor's record."""
        return [dict(record) for record in self._records.values()]
