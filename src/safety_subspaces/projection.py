"""Weight-space projection (paper §3-4): alignment subspaces of Δ_A/S, energy kept in one pass, projected weights.

Data flow: checkpoints -> spectra (cached SVD of Δ_A/S) -> subspace frames -> energies / projected tensors.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from . import linalg
from .checkpoints import Checkpoint, check_compatible, layer_index
from .edits import PAPER_SCHEMES, check_fraction
from .edits.projections import projection_class
from .errors import UserError
from .spectra import difference
from .subspaces import PAPER_KINDS, AlignmentSubspaces

ENERGY_COLUMNS = [
    "finetune", "subspace", "scheme", "fraction", "k_total", "energy_kept",
    "cos_task_proj", "cos_task_align", "scope", "name",
]
DEFAULT_FRACTIONS = (0.01, 0.25, 0.5, 0.75, 0.99)  # the paper's rank fractions ϱ


SVD_METHODS = linalg.SVD_METHODS


def check_svd_method(method: str) -> str:
    """An exact decomposition method name (a UserError otherwise)."""
    if method not in SVD_METHODS:
        raise UserError(f"--svd-method {method!r}: use {', '.join(SVD_METHODS)}")
    return method


@dataclass
class TensorEnergies:
    """Per-tensor sufficient statistics of one fine-tune: totals, the task-alignment inner product, and parallel energies."""

    finetune: str
    name: str
    layer: int | None
    total_task: float
    total_align: float
    dot_task_align: float
    zero_align: bool
    rank: int  # numerical rank of Δ_A/S
    null_dirs: int  # r - rank: numerically zero directions of Δ_A/S, left out of every basis
    ranks: dict[float, int] = field(default_factory=dict)
    parallel: dict[tuple[str, float], float] = field(default_factory=dict)


def tensor_energies(
    subspaces: AlignmentSubspaces,
    finetunes: Mapping[str, Checkpoint],
    name: str,
    kinds: Sequence[str],
    fractions: Sequence[float],
) -> list[TensorEnergies]:
    """One tensor's energies for every fine-tune, kind and fraction from a single decomposition."""
    delta_align = subspaces.delta_align(name)
    spectrum = subspaces.spectrum(name, delta_align)
    ranks = {fraction: subspaces.rank(name, fraction) for fraction in fractions}
    k_max = max(ranks.values())
    frames = {kind: subspaces.frame(name, kind, k_max) for kind in kinds}
    total_align = linalg.frobenius_sq(delta_align)
    out = []
    for finetune, checkpoint in finetunes.items():
        delta_task = difference(checkpoint, subspaces.reference, name, device=subspaces.device)
        record = TensorEnergies(
            finetune, name, layer_index(name), linalg.frobenius_sq(delta_task), total_align,
            linalg.inner(delta_task, delta_align), spectrum.is_zero, spectrum.rank, spectrum.null_dirs, ranks,
        )
        for kind, frame in frames.items():
            energies = linalg.parallel_energies(frame, delta_task, [ranks[f] for f in fractions])
            for fraction, energy in zip(fractions, energies):
                record.parallel[(kind, fraction)] = energy
        out.append(record)
        del delta_task  # free it before the next fine-tune's is read
    return out


def aggregate(
    records: Iterable[TensorEnergies],
    *,
    kinds: Sequence[str],
    fractions: Sequence[float],
    schemes: Sequence[str],
    scope: str,
    key: Callable[[TensorEnergies], str],
) -> list[dict]:
    """Pool tensor statistics into energy-table rows (docs/design.md, result tables) at one scope."""
    groups: dict[tuple[str, str], list[TensorEnergies]] = defaultdict(list)
    for record in records:
        groups[(record.finetune, key(record))].append(record)
    rows = []
    for (finetune, name), members in groups.items():
        total_task = sum(r.total_task for r in members)
        total_align = sum(r.total_align for r in members)
        cos_align = linalg.cosine_from_parts(sum(r.dot_task_align for r in members), total_task, total_align)
        for kind in kinds:
            for scheme in schemes:
                math = projection_class(scheme)
                for fraction in fractions:
                    kept = sum(math.kept_energy(r.parallel[(kind, fraction)], r.total_task) for r in members)
                    dot = sum(math.inner(r.parallel[(kind, fraction)], r.total_task) for r in members)
                    row = {
                        "finetune": finetune, "subspace": kind, "scheme": scheme, "fraction": fraction,
                        "k_total": sum(r.ranks[fraction] for r in members),
                        "energy_kept": linalg.energy_kept(kept, total_task),
                        "cos_task_proj": linalg.cosine_from_parts(dot, total_task, kept),
                        "cos_task_align": cos_align,
                        "scope": scope, "name": name,
                    }
                    if scope == "tensor":
                        row["rank"], row["null_dirs"] = members[0].rank, members[0].null_dirs
                        if members[0].zero_align:
                            row["note"] = "delta_align is zero: empty basis"
                    rows.append(row)
    return rows


def energy_rows(records: Sequence[TensorEnergies], *, kinds, fractions, schemes) -> list[dict]:
    """Energy-table rows at model, layer and tensor scope."""
    grid = {"kinds": kinds, "fractions": fractions, "schemes": schemes}
    in_layers = [r for r in records if r.layer is not None]
    return [
        *aggregate(records, scope="model", key=lambda r: "", **grid),
        *aggregate(in_layers, scope="layer", key=lambda r: str(r.layer), **grid),
        *aggregate(records, scope="tensor", key=lambda r: r.name, **grid),
    ]


@dataclass
class Inputs:
    """The checkpoints of a weight-space analysis."""

    base: Checkpoint
    reference: Checkpoint
    reference_kind: str  # "aligned" (Δ_A) or "safety_tuned" (Δ_S)
    finetunes: dict[str, Checkpoint]

    def check(self) -> list[str]:
        """Names, shapes and architectures agree across every input; return the shared tensor names."""
        if not self.finetunes:
            raise UserError("no fine-tune given; pass --finetuned NAME=PATH at least once")
        everything = {"base": self.base, self.reference_kind: self.reference}
        everything.update({f"finetuned {n}": c for n, c in self.finetunes.items()})
        names = check_compatible(everything)
        return [n for n in names if self.reference.infos[n].dtype.is_floating_point]


def energy_table(
    subspaces: AlignmentSubspaces,
    finetunes: Mapping[str, Checkpoint],
    names: Sequence[str],
    *,
    kinds: Sequence[str] = PAPER_KINDS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    schemes: Sequence[str] = PAPER_SCHEMES,
    on_tensor: Callable[[str], None] | None = None,
) -> tuple[list[dict], list[TensorEnergies]]:
    """The whole energy table in one pass over tensors (each checkpoint tensor read once, each Δ decomposed once)."""
    records: list[TensorEnergies] = []
    for name in names:
        records.extend(tensor_energies(subspaces, finetunes, name, kinds, fractions))
        if on_tensor:
            on_tensor(name)
    return energy_rows(records, kinds=kinds, fractions=fractions, schemes=schemes), records


