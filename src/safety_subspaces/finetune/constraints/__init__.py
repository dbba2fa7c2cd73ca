"""Fine-tuning constraints: defences that act during fine-tuning (AsFT) as a penalty added to every step's loss.

A constraint is a registered factory whose signature holds its options; it returns a `Constraint`, whose
`bind(model, subspaces, device)` gives a `Penalty` for the model about to be trained: a callable with no arguments
returning the differentiable penalty of the current weights (Δ_A/S's operators, and the starting weights, are built
once in bind). A recipe names one as `constraint: NAME` or `{name: NAME, option: value}` (on the command line
`finetune --constraint NAME --constraint-arg KEY=VALUE --base W_0`). Adding a constraint is one new module in this
package (or a plugin, entry-point group `safety_subspaces.constraints`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ...errors import UserError
from ...registry import Registry, Spec

if TYPE_CHECKING:
    import torch

    from ...subspaces import AlignmentSubspaces

CONSTRAINTS = Registry("constraint", "safety_subspaces.constraints", __name__, flag="--constraint")


class Penalty:
    """The penalty of a bound constraint: call it for the current value (differentiable); it keeps every value seen."""

    def __init__(self, compute: Callable[[], "torch.Tensor"], modules: list[str]):
        self.compute, self.modules = compute, modules
        self.values: list[float] = []

    def __call__(self) -> "torch.Tensor":
        """The penalty of the weights as they are now (recorded)."""
        value = self.compute()
        self.values.append(float(value.detach()))
        return value


class Constraint:
    """A training constraint built from its options: bound to a model, it gives the penalty added to the loss."""

    name: ClassVar[str] = ""

    def options(self) -> dict[str, Any]:
        """The options the constraint was built with."""
        return {}

    def bind(self, model: Any, subspaces: "AlignmentSubspaces", device: str) -> Penalty:
        """The penalty for this model (full or PEFT LoRA), whose weights now are the reference's."""
        raise NotImplementedError


def constraint_spec(value: Any, where: str = "constraint") -> Spec | None:
    """A recipe's constraint (NAME, {name: NAME, k: v} or a Spec) as a Spec with every option checked; None stays None."""
    if value is None:
        return None
    spec = CONSTRAINTS.spec(value, where)
    CONSTRAINTS.options(spec.name, spec.options, where)  # required options given, types right
    return spec


def make_constraint(spec: Spec | str, where: str = "constraint") -> Constraint:
    """A Constraint from a registry spec or name."""
    built = CONSTRAINTS.build(spec, where)
    if not isinstance(built, Constraint):
        raise UserError(f"{where}: constraint {spec if isinstance(spec, str) else spec.name!r} did not build a Constraint")
    return built
