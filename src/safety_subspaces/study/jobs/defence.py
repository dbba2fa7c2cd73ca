"""The defence job: utility, harm and over-refusal of a fine-tune defended in memory by a post-hoc defence (an edit
such as safe_lora, safemerge or resta), as published or as its random-subspace control.

It is the evaluate job with two differences: the edit reads other study models (`others`: the checkpoint name the
edit declares -> the model role, e.g. harmful -> harmful), and its rows are labelled variant `defence` or `control`
with the defence's pooled energy kept Σ‖Δ̃‖² / Σ‖Δ_T‖² and the number of modules it changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ...registry import Spec
from . import JOB_KINDS
from ._evaluation import EvaluateSpec, Evaluating

if TYPE_CHECKING:
    from ..worker import Worker


@dataclass(frozen=True)
class DefenceSpec(EvaluateSpec):
    """Evaluate one fine-tune defended by an edit in memory: the published defence or one of its controls."""

    role: Literal["defence", "control"] = "defence"
    others: dict[str, str] = field(default_factory=dict)  # checkpoint the edit reads -> study model role
    scheme: str = ""  # a training-time defence (edit None): its name
    subspace: str = ""  # ... and its subspace kind
    trained: str | None = None  # ... and the model role it made (the fine-tune trained with or after the defence)


@JOB_KINDS.register("defence")
class Defence(Evaluating):
    """Utility / harm / over-refusal of a defended fine-tune, evaluated in memory on the resident model."""

    spec = DefenceSpec

    def label(self, spec: DefenceSpec) -> str:
        """The fine-tune, the defence and its subspace."""
        name, subspace = (spec.edit.name, spec.edit.options.get("subspace")) if spec.edit else (spec.scheme, spec.subspace)
        return f"{spec.model} {name}" + (f" on {subspace}" if subspace else "") + f" ({spec.role})"

    def labels(self, spec: DefenceSpec) -> dict[str, Any]:  # type: ignore[override]
        """variant defence or control, scheme the defence's name, subspace its kind (top_k by default)."""
        if spec.edit is None:
            return {"model": spec.model, "variant": spec.role, "subspace": spec.subspace, "scheme": spec.scheme,
                    "fraction": None}
        options = spec.edit.options
        subspace = options.get("subspace", "top_k" if _takes_subspace(spec.edit.name) else "")
        return {"model": spec.model, "variant": spec.role, "subspace": subspace, "scheme": spec.edit.name,
                "fraction": options.get("fraction")}

    def swap_in(self, worker: "Worker", spec: DefenceSpec) -> tuple[Any, Any, dict[str, Any]]:  # type: ignore[override]
        """Apply the defence with the checkpoints it reads; the pooled energy kept and modules changed as extras."""
        from ...checkpoints import TensorFilter
        from ...defend import defence_summary

        if spec.trained is not None:  # a training-time defence: the model it made, as it is
            model, tokenizer = worker.show(spec.trained)
            return model, tokenizer, {"trained": spec.trained}
        select = TensorFilter(spec.tensors, (spec.layer,) if spec.layer is not None else None)
        others = {name: worker.checkpoint(role) for name, role in spec.others.items()}
        built = worker.live(spec.seed).apply(worker.checkpoint(spec.model), Spec(spec.edit.name, dict(spec.edit.options)),
                                             select, others=others)
        pooled = defence_summary(built.records() if built is not None else [])["pooled"]
        model, tokenizer = worker.resident()
        return model, tokenizer, {"energy_kept": pooled.get("energy_kept"), "modules_edited": pooled.get("edited"),
                                  "modules": pooled.get("modules")}


def _takes_subspace(edit: str) -> bool:
    """Whether an edit has a subspace option."""
    from ...edits import EDITS

    return EDITS.get(edit).accepts("subspace")
