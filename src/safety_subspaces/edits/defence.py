"""What the gated defences (Safe LoRA, SafeMERGE) share: their modules, Δ_A/S's operator, the cosine gate, records.

A gated defence computes cos(C Δ_T, Δ_T) for each of its modules in the global `prepare` pass, decides which modules
the gate selects (threshold or Safe LoRA's number mode), and then edits only those; every other tensor keeps the
fine-tuned weight exactly. C is Safe LoRA's alignment matrix or, with `projector: exact`, P_k at a rank fraction,
each built on the frame of a subspace kind (top_k as published; random_k and random are the controls that keep Σ).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from .. import defence_math, linalg
from ..checkpoints import is_decoder_matrix, layer_index, module_pattern
from ..errors import UserError
from . import Edit, EditInputs

if TYPE_CHECKING:
    import torch


def select_modules(infos: Mapping[str, Any], names: Sequence[str], targets: Sequence[str] | None, pattern: str | None,
                   where: str) -> list[str]:
    """A defence's modules among names: the adapter's targets (or every 2-D tensor inside decoder blocks), or the 2-D
    tensors matching pattern (among the targets, for an adapter); a UserError naming where when none is left."""
    candidates = [n for n in names if len(infos[n].shape) == 2 and (targets is None or n in targets)]
    if pattern is None:
        chosen = candidates if targets is not None else [n for n in candidates if is_decoder_matrix(n, infos[n].shape)]
    else:
        match = module_pattern(pattern, where)
        chosen = [n for n in candidates if match(n)]
    if not chosen:
        what = f"matches no 2-D {'adapted ' if targets is not None else ''}tensor" if pattern else "found no module"
        raise UserError(f"{where}: modules {pattern or 'default'} {what}")
    return chosen


def defence_modules(inputs: EditInputs, names: Sequence[str], pattern: str | None, where: str) -> list[str]:
    """A defence's modules among names, for the fine-tune EditInputs holds (see select_modules)."""
    return select_modules(inputs.reference.infos, names, inputs.adapter_targets, pattern, where)


def module_record(name: str, cosine: float | None, edited: bool, kept: float | None, total: float) -> dict[str, Any]:
    """One module's record: its name and layer, its gate cosine, whether it was edited, ‖Δ̃‖² and ‖Δ_T‖²."""
    return {"name": name, "layer": layer_index(name), "cosine": cosine, "edited": edited, "kept": kept, "total": total}


class GatedDefence(Edit):
    """A defence that edits the modules a cosine gate selects and keeps Δ_T exactly everywhere else."""

    strict: ClassVar[bool] = False  # the threshold comparison: cos < threshold (strict) or cos <= threshold

    def setup(self, *, modules: str | None, mode: str, threshold: float, num_layers: int, projector: str,
              subspace: str, fraction: float | None) -> None:
        """Check and keep the options every gated defence has."""
        from ..subspaces import operator_options

        where = self.name
        if mode not in defence_math.GATE_MODES:
            raise UserError(f"{where}: mode {mode!r} is not one of {', '.join(defence_math.GATE_MODES)}")
        if num_layers < 0:
            raise UserError(f"{where}: num_layers must be at least 0, got {num_layers}")
        if not math.isfinite(threshold):
            raise UserError(f"{where}: threshold must be a finite number, got {threshold}")
        self.gating = defence_math.Gating(mode=mode, threshold=threshold, num_layers=num_layers, strict=self.strict)
        self.projector, self.subspace, self.fraction = operator_options(projector, subspace, fraction, where)
        self.modules, self.mode, self.threshold, self.num_layers = modules, mode, threshold, num_layers
        self.cosines: dict[str, float] = {}
        self.decisions: dict[str, bool] = {}
        self._records: dict[str, dict[str, Any]] = {}

    def options(self) -> dict[str, Any]:
        """The gate's and the operator's options."""
        return {"modules": self.modules, "mode": self.mode, "threshold": self.threshold, "num_layers": self.num_layers,
                "projector": self.projector, "subspace": self.subspace, "fraction": self.fraction}

    def operator(self, inputs: EditInputs, name: str) -> defence_math.AlignmentOperator:
        """C or P_k of a module, on the subspace kind's frame."""
        return inputs.subspaces.operator(name, self.projector, self.subspace, self.fraction)

    def prepare(self, inputs: EditInputs, names: Sequence[str]) -> None:
        """The gate: every module's cosine cos(C Δ_T, Δ_T), then the modules it selects."""
        modules = defence_modules(inputs, names, self.modules, self.name)
        self.cosines, self._records = {}, {}
        for name in modules:
            delta_task = inputs.delta_task(name)
            self.cosines[name] = defence_math.module_cosine(self.operator(inputs, name), delta_task)
            total = linalg.frobenius_sq(delta_task)
            self._records[name] = module_record(name, self.cosines[name], False, total, total)
        self.decisions = self.gating.decide(self.cosines)

    def selected(self, name: str) -> bool:
        """Whether the gate selected a module (after prepare)."""
        return self.decisions.get(name, False)

    def exact(self, inputs: EditInputs, name: str) -> str | None:
        """Every tensor the gate did not select keeps the fine-tuned weight."""
        return None if self.selected(name) else "finetune"

    def delta(self, inputs: EditInputs, name: str, delta_task: "torch.Tensor") -> "torch.Tensor":
        """Δ̃ of a selected module (recorded with its energy); Δ_T itself elsewhere."""
        if not self.selected(name):
            return delta_task
        edited = self.edit(inputs, name, delta_task)
        self._records[name].update(edited=True, kept=linalg.frobenius_sq(edited))
        return edited

    def edit(self, inputs: EditInputs, name: str, delta_task: "torch.Tensor") -> "torch.Tensor":
        """Δ̃ of a module the gate selected."""
        raise NotImplementedError

    def records(self) -> list[dict[str, Any]]:
        """Every module's record, in the gate's order."""
        return [dict(record) for record in self._records.values()]
