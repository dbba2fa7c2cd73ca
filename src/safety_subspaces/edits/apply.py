"""Applying an edit: tensor by tensor into a written checkpoint, or in place on a loaded model with a bit-exact restore."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from .. import linalg
from ..checkpoints import Checkpoint, TensorFilter, stored_state
from ..errors import UserError
from ..registry import Spec
from ..subspaces import AlignmentSubspaces
from . import Edit, EditInputs, ProjectionSpec, make_edit
from .projections import Projection

EditLike = Edit | ProjectionSpec | Spec | str


def edited_blocks(edit: Edit | None, inputs: EditInputs, name: str, selected: bool) -> Iterator[tuple[slice, torch.Tensor]]:
    """The new weight of one tensor in row blocks (along dim 0): W_ref.float() + Δ̃ cast once to W_ref's dtype; W_FT
    itself where not selected. The edit's delta_blocks decides (a projection streams a tensor larger than one block)."""
    finetune, reference = inputs.finetune, inputs.reference
    info = reference.infos[name]
    blocks = linalg.row_blocks(info.shape)
    exact = None if edit is None or not selected or not info.dtype.is_floating_point else edit.exact(inputs, name)
    if edit is None or not selected or exact == "finetune":
        yield from ((rows, finetune.read_rows(name, rows).to(info.dtype)) for rows in blocks)
    elif not info.dtype.is_floating_point:
        yield from ((rows, finetune.read_rows(name, rows)) for rows in blocks)
    elif exact == "reference":
        yield from ((rows, reference.read_rows(name, rows)) for rows in blocks)
    else:
        for rows, update in edit.delta_blocks(inputs, name, blocks):
            # a projection's update is its own new buffer: W is added into it (no whole float32 copy of W)
            weight = reference.read_rows(name, rows).to(inputs.device)
            yield rows, linalg.add_update(weight, update, consume=isinstance(edit, Projection)).cpu()


def edited_weight(edit: Edit | None, inputs: EditInputs, name: str, selected: bool) -> torch.Tensor:
    """The new weight of one tensor, whole (its row blocks from edited_blocks put together)."""
    whole = None
    for rows, part in edited_blocks(edit, inputs, name, selected):
        if rows == slice(None):
            return part
        if whole is None:
            whole = torch.empty(inputs.reference.infos[name].shape, dtype=part.dtype)
        whole[rows] = part
    return whole


def prepared(edit: Edit | None, inputs: EditInputs, names: Sequence[str], select: Callable[[str], bool]) -> None:
    """Run the edit's global pass over the selected tensors."""
    if edit is not None:
        edit.prepare(inputs, [name for name in names if select(name)])


def edited_state(edit: EditLike, inputs: EditInputs, select: Callable[[str], bool]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every stored tensor of the reference layout with the edit applied (a tied alias gets a copy of its tensor)."""
    edit = make_edit(edit)
    prepared(edit, inputs, inputs.reference.names, select)
    return stored_state(inputs.reference, lambda name: edited_weight(edit, inputs, name, select(name)))


class LiveModel:
    """A loaded model whose weights are swapped in place: an edited fine-tune, another checkpoint, or the reference."""

    def __init__(self, model, subspaces: AlignmentSubspaces, names: Sequence[str]):
        self.model, self.subspaces = model, subspaces
        params = dict(model.named_parameters(remove_duplicate=False))
        missing = [name for name in names if name not in params]
        if missing:
            raise UserError(
                f"the loaded model has no parameter named {missing[0]} (and {len(missing) - 1} more) "
                "from the checkpoint; load the reference model the weights came from"
            )
        self.params = {name: params[name] for name in names}
        self.touched: set[str] = set()
        self.state = "reference"

    @torch.no_grad()
    def _set(self, name: str, value: torch.Tensor, rows: slice = slice(None)) -> None:
        """Copy a new value into a parameter (or into rows of it along dim 0)."""
        param = self.params[name]
        target = param.data if rows == slice(None) else param.data[rows]  # a 0-d parameter takes no slice
        target.copy_(value.to(device=param.device, dtype=param.dtype))
        self.touched.add(name)

    def _set_blocks(self, name: str, blocks: Iterable[tuple[slice, torch.Tensor]]) -> None:
        """Copy a new value into a parameter row block by row block."""
        for rows, value in blocks:
            self._set(name, value, rows)

    def _read_into(self, name: str, checkpoint: Checkpoint) -> None:
        """Copy a checkpoint's tensor into a parameter in row blocks."""
        self._set_blocks(name, ((rows, checkpoint.read_rows(name, rows))
                                for rows in linalg.row_blocks(checkpoint.infos[name].shape)))

    def apply(self, finetune: Checkpoint, edit: EditLike | None, select: Callable[[str], bool] = TensorFilter(),
              others: Mapping[str, Checkpoint] | None = None) -> Edit | None:
        """Set the weights of an edited fine-tune (edit None: the fine-tune itself; unselected tensors: W_FT)."""
        self.restore()
        built = make_edit(edit) if edit is not None else None
        inputs = EditInputs(self.subspaces, finetune, others)
        prepared(built, inputs, list(self.params), select)
        for name in self.params:
            self._set_blocks(name, edited_blocks(built, inputs, name, select(name)))
        self.state = f"{finetune.role}:{built.label if built else 'full'}"
        return built

    def load(self, checkpoint: Checkpoint) -> None:
        """Set the weights of another compatible checkpoint (e.g. the base model)."""
        self.restore()
        for name in self.params:
            self._read_into(name, checkpoint)
        self.state = checkpoint.role

    def restore(self) -> None:
        """Undo: put the reference weights back into every touched parameter."""
        for name in sorted(self.touched):
            self._read_into(name, self.subspaces.reference)
        self.touched.clear()
        self.state = "reference"


def describe(edit: Edit) -> dict[str, Any]:
    """What a written checkpoint's note says about its edit."""
    return {"edit": edit.name, **edit.options()}
