"""Transforms: defences that change the reference model before it is fine-tuned (LoX), W_ref -> W_ref'.

A transform is a registered factory whose signature holds its options; it returns a `Transform`: `weight(subspaces,
name)` gives a tensor's new weight from the reference and Δ_A/S's spectrum (None: unchanged), and `records()` its
per-tensor notes. Fine-tuning the written W_ref' with the same recipes, and evaluating those fine-tunes, is how a study
runs one. Adding a transform is one new module in this package (or a plugin, entry-point group
`safety_subspaces.transforms`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping

from ..errors import UserError
from ..registry import Registry, Spec

if TYPE_CHECKING:
    import torch

    from ..subspaces import AlignmentSubspaces

TRANSFORMS = Registry("transform", "safety_subspaces.transforms", __name__, flag="defend NAME")


class Transform:
    """A change of the reference model, tensor by tensor, built from its options."""

    name: ClassVar[str] = ""
    reads: ClassVar[Mapping[str, str]] = {}  # a transform reads no checkpoint beyond the base and the reference

    def options(self) -> dict[str, Any]:
        """The options the transform was built with."""
        return {}

    def weight(self, subspaces: "AlignmentSubspaces", name: str) -> "torch.Tensor | None":
        """The new weight of one tensor of the reference (its stored dtype), or None where it is unchanged."""
        raise NotImplementedError

    def records(self) -> list[dict[str, Any]]:
        """Per-tensor records of the last application (none by default)."""
        return []


def make_transform(spec: Spec | Transform | str, where: str = "transform") -> Transform:
    """A Transform from a registry spec, a name, or a Transform itself."""
    if isinstance(spec, Transform):
        return spec
    built = TRANSFORMS.build(spec, where)
    if not isinstance(built, Transform):
        raise UserError(f"{where}: transform {spec if isinstance(spec, str) else spec.name!r} did not build a Transform")
    return built


def transformed_state(transform: Transform, subspaces: "AlignmentSubspaces") -> Iterator[tuple[str, "torch.Tensor"]]:
    """Every stored tensor of the reference with the transform applied (a tied alias gets a copy of its tensor)."""
    from ..checkpoints import stored_state

    reference = subspaces.reference

    def weight_of(name: str) -> "torch.Tensor":
        new = transform.weight(subspaces, name) if reference.infos[name].dtype.is_floating_point else None
        return reference.read(name) if new is None else new

    return stored_state(reference, weight_of)
