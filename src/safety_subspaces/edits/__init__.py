"""Edits: what turns a fine-tune's update Δ_T (and whatever else an edit reads) into the update that is applied.

An edit is a registered factory whose signature holds its options; it returns an `Edit`: `delta(inputs, name,
delta_task)` gives Δ̃ for one tensor, an optional `prepare(inputs, names)` runs one global pass over the selected
tensors first (a defence that ranks modules before choosing some), `exact(inputs, name)` names tensors whose edited
weight is exactly a stored one, and `records()` returns per-tensor notes for a report. `EditInputs` gives access to
the base and reference checkpoints, Δ_A/S's spectra and frames (by subspace kind), the fine-tune (a checkpoint, or a
LoRA adapter read as its merged weights), other named checkpoints (those the edit declares in `reads`) and the seed.
An edit with an adapter form (`adapter`) can be written back as a LoRA adapter. The projection schemes (parallel, orthogonal, opposite) are the first edits; the
`scheme:subspace:fraction` syntax (`ProjectionSpec`) is sugar for one of them with its two options. Adding an edit is
one new module in this package (or a plugin, entry-point group `safety_subspaces.edits`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping, Sequence

from ..errors import UserError
from ..registry import Registry, Spec

if TYPE_CHECKING:
    import torch

    from ..checkpoints import Checkpoint
    from ..subspaces import AlignmentSubspaces

EDITS = Registry("edit", "safety_subspaces.edits", __name__, flag="--edit")
LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


class EditInputs:
    """What an edit may read: base, reference and fine-tune checkpoints, Δ_A/S spectra and frames, other checkpoints, seed."""

    def __init__(self, subspaces: "AlignmentSubspaces", finetune: "Checkpoint",
                 others: Mapping[str, "Checkpoint"] | None = None):
        self.subspaces, self.finetune = subspaces, finetune
        self.others = dict(others or {})

    @property
    def base(self) -> "Checkpoint":
        """W_0."""
        return self.subspaces.base

    @property
    def reference(self) -> "Checkpoint":
        """W_A or W_S: the model the fine-tune started from."""
        return self.subspaces.reference

    @property
    def seed(self) -> int:
        """The seed of every random choice."""
        return self.subspaces.seed

    @property
    def device(self) -> str:
        """Where tensors are computed."""
        return self.subspaces.device

    def delta_task(self, name: str, rows: slice = slice(None)) -> "torch.Tensor":
        """Δ_T = W_FT - W_ref of one tensor (or rows of it along dim 0), in float32."""
        from ..spectra import difference

        return difference(self.finetune, self.reference, name, device=self.device, rows=rows)

    def update_of(self, role: str, name: str) -> "torch.Tensor":
        """W_other - W_ref of one tensor for another checkpoint the edit reads (a safety or harmful fine-tune), in float32."""
        from ..spectra import difference

        return difference(self.checkpoint(role), self.reference, name, device=self.device)

    @property
    def adapter_targets(self) -> list[str] | None:
        """The weights a LoRA fine-tune adapts (None: the fine-tune is a full checkpoint)."""
        return getattr(self.finetune, "targets", None)

    def checkpoint(self, name: str) -> "Checkpoint":
        """Another named checkpoint the edit reads (a safety fine-tune, a harmful fine-tune)."""
        if name not in self.others:
            raise UserError(f"this edit reads the checkpoint {name!r}, which was not given "
                            f"(have: {', '.join(self.others) or 'none'})")
        return self.others[name]


class Edit:
    """An edit built from its options: per-tensor Δ̃, an optional global pass first, exact shortcuts, records."""

    name: ClassVar[str] = ""
    reads: ClassVar[Mapping[str, str]] = {}  # other checkpoints it reads (EditInputs.others), name -> what it is

    def options(self) -> dict[str, Any]:
        """The options the edit was built with (its identity in labels and notes)."""
        return {}

    def prepare(self, inputs: EditInputs, names: Sequence[str]) -> None:
        """A global pass over the selected tensors before any delta (none by default)."""

    def exact(self, inputs: EditInputs, name: str) -> str | None:
        """'finetune' or 'reference' where the edited weight is exactly that stored weight (then delta is not called)."""
        return None

    def delta(self, inputs: EditInputs, name: str, delta_task: "torch.Tensor") -> "torch.Tensor":
        """Δ̃ of one tensor (the same shape as Δ_T, float32)."""
        raise NotImplementedError

    def delta_blocks(self, inputs: EditInputs, name: str, blocks: Sequence[slice]
                     ) -> "Iterator[tuple[slice, torch.Tensor]]":
        """Δ̃ in row blocks (along dim 0) of the given plan; by default the whole tensor in one block, from delta."""
        yield slice(None), self.delta(inputs, name, inputs.delta_task(name))

    def adapter(self, inputs: EditInputs, name: str, lora_b: "torch.Tensor", lora_a: "torch.Tensor"
                ) -> "tuple[torch.Tensor, torch.Tensor] | None":
        """A LoRA module's edited factors (B, A) whose s · B · A is this tensor's Δ̃; None: the edit has no adapter form."""
        return None

    def records(self) -> list[dict[str, Any]]:
        """Per-module records of the last application (name, layer, cosine, edited, kept and total energy); none by default."""
        return []

    @property
    def spec(self) -> Spec:
        """The edit as a registry spec."""
        return Spec(self.name, self.options())

    @property
    def label(self) -> str:
        """name-value-value..., usable as a directory name (parallel-top_k-0.25)."""
        parts = [self.name, *(f"{v:g}" if isinstance(v, float) else str(v) for v in self.options().values())]
        return LABEL_UNSAFE.sub("_", "-".join(parts))


def check_reads(edit: Edit, given: Mapping[str, Any], flag: Any = None) -> None:
    """Every checkpoint the edit reads is given and nothing else is (a UserError naming flag(name) otherwise)."""
    flag = flag or (lambda name: name)
    for name, what in edit.reads.items():
        if name not in given:
            raise UserError(f"{edit.name} needs {flag(name)} ({what})")
    for name in given:
        if name not in edit.reads:
            raise UserError(f"{flag(name)} is not read by {edit.name}"
                            + (f" (it reads {', '.join(map(flag, edit.reads))})" if edit.reads else ""))


def check_fraction(value: Any, what: str = "fraction") -> float:
    """A rank or energy fraction in (0, 1] (a UserError otherwise)."""
    from .. import linalg

    try:
        return linalg.check_fraction(float(value), what)
    except (TypeError, ValueError):
        raise UserError(f"{what}: fraction {value!r} is outside (0, 1]") from None


@dataclass(frozen=True)
class ProjectionSpec:
    """Sugar for a projection edit: 'scheme:subspace:fraction' (parallel:top_k:0.25)."""

    scheme: str
    subspace: str
    fraction: float

    @classmethod
    def parse(cls, text: str) -> "ProjectionSpec":
        """Parse 'scheme:subspace:fraction', e.g. parallel:top_k:0.25."""
        parts = text.split(":")
        if len(parts) != 3:
            raise UserError(f"projection {text!r}: expected scheme:subspace:fraction, e.g. parallel:top_k:0.25")
        scheme, subspace, fraction = parts
        return cls.build(scheme, subspace, fraction, origin=text)

    @classmethod
    def build(cls, scheme: str, subspace: str, fraction: float | str, *, origin: str = "") -> "ProjectionSpec":
        """Validate and canonicalise the three parts against the edit and subspace registries."""
        from ..subspaces import SUBSPACES

        label = origin or f"{scheme}:{subspace}:{fraction}"
        scheme = EDITS.canonical(scheme, f"projection {label!r}")
        if not EDITS.get(scheme).accepts("subspace"):
            raise UserError(f"projection {label!r}: edit {scheme!r} is not a projection; use --edit {scheme}")
        subspace = SUBSPACES.canonical(subspace, f"projection {label!r}")
        return cls(scheme, subspace, check_fraction(fraction, label))

    @property
    def label(self) -> str:
        """scheme-subspace-fraction, usable as a directory name."""
        return f"{self.scheme}-{self.subspace}-{self.fraction:g}"

    @property
    def spec(self) -> Spec:
        """The edit this sugar names."""
        return Spec(self.scheme, {"subspace": self.subspace, "fraction": self.fraction})


def make_edit(spec: "Spec | ProjectionSpec | Edit | str", where: str = "edit") -> Edit:
    """An Edit from a registry spec, the scheme:subspace:fraction sugar, an edit name, or an Edit itself."""
    if isinstance(spec, Edit):
        return spec
    if isinstance(spec, ProjectionSpec):
        spec = spec.spec
    built = EDITS.build(spec, where)
    if not isinstance(built, Edit):
        raise UserError(f"{where}: edit {spec if isinstance(spec, str) else spec.name!r} did not build an Edit")
    return built
