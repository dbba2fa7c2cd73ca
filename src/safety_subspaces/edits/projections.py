"""The paper's projection schemes as edits: Δ̃ = P Δ_T (parallel), (I − P) Δ_T (orthogonal), −P Δ_T (opposite).

P = B Bᵀ for the basis B of the first k columns of a subspace kind's frame of Δ_A/S, k from the rank fraction
(docs/design.md §3-4). Each scheme also says how its kept energy and its inner product with Δ_T follow from the
parallel energy ‖P Δ_T‖², which lets the energy table fill every scheme from one pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

from . import EDITS, Edit, EditInputs, check_fraction

if TYPE_CHECKING:
    import torch


class Projection(Edit):
    """Δ̃ = sign · Q Δ_T with Q = P (the subspace) or I − P (its complement): the projection schemes' one shape."""

    complement: ClassVar[bool] = False  # Q = I − P instead of P
    sign: ClassVar[int] = 1  # +1 keeps Q Δ_T, −1 subtracts it

    def __init__(self, subspace: str = "top_k", *, fraction: float):
        """A projection onto the first k directions of a subspace kind's frame of Δ_A/S.

        Args:
            subspace: a registered subspace kind of Δ_A/S (top_k, random_k, random, ...).
            fraction: the rank fraction ϱ in (0, 1]; k = max(1, round(ϱ·r)), at most the numerical rank.
        """
        from ..subspaces import SUBSPACES

        self.subspace = SUBSPACES.canonical(subspace, f"{self.name}: subspace")
        self.fraction = check_fraction(fraction, f"{self.name}: fraction")

    def options(self) -> dict[str, Any]:
        """subspace and fraction."""
        return {"subspace": self.subspace, "fraction": self.fraction}

    def exact(self, inputs: EditInputs, name: str) -> str | None:
        """An empty basis (Δ_A/S of the tensor is zero) gives P = 0: the fine-tune's weight for I − P, else the reference's."""
        if inputs.subspaces.rank(name, self.fraction) == 0:
            return "finetune" if self.complement and self.sign > 0 else "reference" if not self.complement else None
        return None

    def delta(self, inputs: EditInputs, name: str, delta_task: "torch.Tensor") -> "torch.Tensor":
        """Δ̃ from the parallel part P Δ_T of this tensor's update."""
        from ..linalg import parallel_part

        k = inputs.subspaces.rank(name, self.fraction)
        matrix, parallel = parallel_part(inputs.subspaces.frame(name, self.subspace, k), delta_task)
        return self.combine(matrix, parallel).reshape(delta_task.shape)

    def delta_blocks(self, inputs: EditInputs, name: str, blocks: Sequence[slice]) -> Iterator[tuple[slice, "torch.Tensor"]]:
        """Δ̃ row block by row block: Bᵀ Δ_T summed over Δ_T's row blocks, then each block's Δ̃ from B's rows (no whole
        float32 Δ_T, P Δ_T or Δ̃; Δ_T's rows are read twice). One block: delta on the whole tensor (read once)."""
        from ..linalg import add_coefficients, as_matrix

        if len(blocks) == 1:
            yield from super().delta_blocks(inputs, name, blocks)
            return
        subspaces = inputs.subspaces
        k = subspaces.rank(name, self.fraction)
        choice = subspaces.choice(name, self.subspace, k)
        coefficients = None
        for rows in blocks:
            coefficients = add_coefficients(coefficients, subspaces.frame_rows(name, choice, k, rows),
                                            inputs.delta_task(name, rows))
        for rows in blocks:
            delta_rows = inputs.delta_task(name, rows)
            parallel = subspaces.frame_rows(name, choice, k, rows).float() @ coefficients
            yield rows, self.combine(as_matrix(delta_rows), parallel).reshape(delta_rows.shape)

    @classmethod
    def combine(cls, matrix: "torch.Tensor", parallel: "torch.Tensor") -> "torch.Tensor":
        """Δ̃ from Δ_T (as a matrix) and P Δ_T, written over parallel's buffer (which it consumes: no new m x n tensor)."""
        import torch

        kept = torch.sub(matrix, parallel, out=parallel) if cls.complement else parallel
        return kept if cls.sign > 0 else kept.neg_()

    @classmethod
    def kept_energy(cls, parallel: float, total: float) -> float:
        """‖Δ̃‖² from ‖P Δ_T‖² and ‖Δ_T‖² (clamped at 0 against round-off)."""
        return max(total - parallel, 0.0) if cls.complement else parallel

    @classmethod
    def inner(cls, parallel: float, total: float) -> float:
        """⟨Δ_T, Δ̃⟩ = sign · ‖Q Δ_T‖², Q being an orthogonal projector."""
        kept = cls.kept_energy(parallel, total)
        return kept if cls.sign > 0 else -kept


@EDITS.register("parallel", aliases=("same",))
class Parallel(Projection):
    """Keep the part of Δ_T inside the subspace: Δ̃ = P Δ_T."""


@EDITS.register("orthogonal", aliases=("orth",))
class Orthogonal(Projection):
    """Keep the part of Δ_T outside the subspace: Δ̃ = (I − P) Δ_T."""

    complement = True


@EDITS.register("opposite", aliases=("opp",))
class Opposite(Projection):
    """Subtract the part of Δ_T inside the subspace: Δ̃ = −P Δ_T (the reference code's third scheme, not the paper's)."""

    sign = -1


def is_projection(name: str) -> bool:
    """Whether a registered edit is a projection scheme (its energy follows from the parallel energy)."""
    factory = EDITS.get(name).factory
    return isinstance(factory, type) and issubclass(factory, Projection)


def projection_class(scheme: str, where: str = "scheme") -> type[Projection]:
    """The Projection class of a registered scheme (a UserError for an edit that has no one-pass energy)."""
    from ..errors import UserError

    name = EDITS.canonical(scheme, where)
    if not is_projection(name):
        schemes = ", ".join(n for n in EDITS.names() if is_projection(n))
        raise UserError(f"{where}: edit {name!r} is not a projection scheme; an energy table needs one of {schemes}")
    return EDITS.get(name).factory
