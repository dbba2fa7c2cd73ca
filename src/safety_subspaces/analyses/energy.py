"""Energy kept (paper §3-4, Figure 2): every fine-tune × subspace kind × projection scheme × rank fraction in one pass.

With the full left factor U of a tensor's Δ_A/S (or a random kind's frame of width at least the largest k), the row
energies of Fᵀ Δ_T give the parallel energy of every k at once; each scheme's kept energy and inner product follow
from it. The `project` command is this analysis' front end; it also writes edited checkpoints.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .. import __version__, layout, linalg, paper, profiling, progress
from ..checkpoints import Checkpoint, TensorFilter, check_compatible, layer_index, write_checkpoint
from ..edits import EditInputs, ProjectionSpec, check_fraction, make_edit
from ..edits.apply import describe, edited_state
from ..edits.projections import projection_class
from ..errors import UserError
from ..files import staged_dir
from ..names import check_name
from ..registry import Spec
from ..spectra import float_rows, null_dirs_summary, subtract_rows
from ..subspaces import SUBSPACES, AlignmentSubspaces, Columns
from ..tables import ENERGY
from . import ANALYSES, Analysis, AnalysisContext, AnalysisResult, RunSettings, run_analysis
from .common import check_svd_method

RANK_RULE = "k = min(max(1, round(fraction * min(m, n))), numerical rank of the tensor's delta)"


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
    """One tensor's energies for every fine-tune, kind and fraction from a single decomposition.

    Per fine-tune: one float64 pass for ||Δ_T||² and <Δ_T, Δ_A/S>, one product Uᵀ Δ_T over the columns of U that
    the column kinds use (top_k and random_k share it), and one product per dense frame; ||Δ_A/S||² is the
    spectrum's exact total. The reference's tensor is read once for every fine-tune; a tensor larger than one row
    block (linalg.STREAM_ELEMENTS) is streamed block by block (products summed over blocks), so no whole float32
    Δ_T or Δ_A/S is held beside U.
    """
    reference, device = subspaces.reference, subspaces.device
    blocks = linalg.row_blocks(reference.infos[name].shape)
    whole = block_deltas(subspaces, name, blocks[0]) if len(blocks) == 1 else None
    spectrum = subspaces.spectrum(name, whole[1] if whole else None)  # streamed: Δ_A/S is formed only to decompose
    ranks = {fraction: subspaces.rank(name, fraction) for fraction in fractions}
    k_max = max(ranks.values())
    choices = {kind: subspaces.choice(name, kind, k_max) for kind in kinds}
    columns = {kind: c.indices(k_max) for kind, c in choices.items() if isinstance(c, Columns)}
    frames = {kind: c for kind, c in choices.items() if not isinstance(c, Columns)}
    union = linalg.selection_union(columns) if columns else torch.zeros(0, dtype=torch.long)
    sums = {finetune: ([], [], {}) for finetune in finetunes}  # squares, dots, summed products (None: U's columns)
    for rows in blocks:
        reference_rows, align_rows = whole or block_deltas(subspaces, name, rows)
        products = {kind: frame[rows] for kind, frame in frames.items()}
        if union.numel():
            products[None] = linalg.take_columns(spectrum.left[rows].to(device), union)
        for finetune, checkpoint in finetunes.items():
            with profiling.stage("read"):
                task_rows = subtract_rows(float_rows(checkpoint, name, rows, device), reference_rows)
            squares, dots, coefficients = sums[finetune]
            with profiling.stage("products"):
                block_squares, block_dots = linalg.norm_sq_and_inner_parts(task_rows, align_rows)
                squares.extend(block_squares)
                dots.extend(block_dots)
                for key, frame_rows in products.items():
                    coefficients[key] = linalg.add_coefficients(coefficients.get(key), frame_rows, task_rows)
            del task_rows  # free it before the next fine-tune's is read
    ks = [ranks[f] for f in fractions]
    out = []
    for finetune, (squares, dots, coefficients) in sums.items():
        energies = kind_energies(coefficients, columns, union, spectrum.left.shape[1])
        record = TensorEnergies(
            finetune, name, layer_index(name), math.fsum(squares), spectrum.total, math.fsum(dots), spectrum.is_zero,
            spectrum.rank, spectrum.null_dirs, ranks,
        )
        for kind in kinds:
            for fraction, energy in zip(fractions, linalg.cumulative_energies(energies[kind], ks)):
                record.parallel[(kind, fraction)] = energy
        out.append(record)
    return out


def kind_energies(coefficients: Mapping[str | None, torch.Tensor], columns: Mapping[str, torch.Tensor],
                  union: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """Each kind's coefficient energies from the summed products: a dense frame's own, the column kinds' from the one
    product over the union of U's columns they use (key None; absent when they use none)."""
    energies = {kind: linalg.row_energies(product) for kind, product in coefficients.items() if kind is not None}
    if None in coefficients:
        energies.update(linalg.split_selections(linalg.row_energies(coefficients[None]), union, width, columns))
    else:
        energies.update({kind: torch.zeros(0, dtype=torch.float64) for kind in columns})
    return energies


def block_deltas(subspaces: AlignmentSubspaces, name: str, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_ref, Δ_A/S = W_ref - W_0) of one row block in float32, the reference's rows read once."""
    with profiling.stage("read"):
        reference_rows = float_rows(subspaces.reference, name, rows, subspaces.device)
        return reference_rows, subtract_rows(reference_rows.clone(), subspaces.base, name, rows)


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


def energy_table(
    subspaces: AlignmentSubspaces,
    finetunes: Mapping[str, Checkpoint],
    names: Sequence[str],
    *,
    kinds: Sequence[str] = paper.SUBSPACE_KINDS,
    fractions: Sequence[float] = paper.FRACTIONS,
    schemes: Sequence[str] = paper.SCHEMES,
    on_tensor: Callable[[str], None] | None = None,
) -> tuple[list[dict], list[TensorEnergies]]:
    """The whole energy table in one pass over tensors (each checkpoint tensor read once, each Δ decomposed once)."""
    records: list[TensorEnergies] = []
    for name in names:
        records.extend(tensor_energies(subspaces, finetunes, name, kinds, fractions))
        if on_tensor:
            on_tensor(name)
    return energy_rows(records, kinds=kinds, fractions=fractions, schemes=schemes), records


def floating_names(context: AnalysisContext, roles: Sequence[str], select: Callable[[str], bool]) -> list[str]:
    """The floating-point tensors shared by every role (names, shapes and architectures checked) that select keeps."""
    everything = {context.label(role): context.checkpoint(role) for role in roles}
    reference = context.checkpoint(context.reference)
    names = [n for n in check_compatible(everything) if reference.infos[n].dtype.is_floating_point and select(n)]
    if not names:
        raise UserError(f"no tensor matches the filter ({getattr(select, 'describe', lambda: 'given')()})")
    return names


@dataclass
class EnergyResult(AnalysisResult):
    """The energy table and the account of the decompositions behind it."""

    reference_kind: str = "aligned"
    filter: str = "all tensors"
    decompositions: int = 0
    cache_hits: int = 0
    ranks: dict[str, tuple[int, int]] = field(default_factory=dict)  # tensor -> (numerical rank of Δ, r = min(m, n))
    written: list[Path] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        """Reference, tensors, decompositions and the numerical-rank account."""
        return {
            "reference": self.reference_kind,
            "delta": "delta_align = W_A - W_0" if self.reference_kind == "aligned" else "delta_safety = W_S - W_0",
            "tensors": len(self.ranks), "filter": self.filter, "decompositions": self.decompositions,
            "cache_hits": self.cache_hits, "rank_rule": RANK_RULE, "numerical_rank": null_dirs_summary(self.ranks),
        }


@ANALYSES.register("energy")
class Energy(Analysis):
    """Energy kept and cosines of every fine-tune under every subspace kind, projection scheme and rank fraction."""

    table, kind = ENERGY, "project"
    relative_to_reference = uses_spectra = seeded = True

    def __init__(self, finetunes: list[str] | None = None, subspaces: list[str] = paper.SUBSPACE_KINDS,
                 fractions: list[float] = paper.FRACTIONS, schemes: list[str] = paper.SCHEMES,
                 tensors: str | None = None, layers: list[int] | None = None):
        """One pass over the tensors of base, reference and fine-tunes.

        Args:
            finetunes: the fine-tunes (model roles) to analyse; default: every fine-tune of the context.
            subspaces: registered subspace kinds of Δ_A/S.
            fractions: rank fractions ϱ in (0, 1].
            schemes: projection schemes (edits whose energy follows from the parallel energy).
            tensors: only tensors whose name matches this regular expression.
            layers: only tensors of these decoder layers.
        """
        self.finetunes = list(finetunes) if finetunes is not None else None
        self.subspaces = [SUBSPACES.canonical(s, "subspaces") for s in subspaces]
        self.fractions = [check_fraction(f, "fractions") for f in fractions]
        self.schemes = [projection_class(s, "schemes").name for s in schemes]
        self.select = TensorFilter.of(tensors, layers)

    def finetunes_of(self, context: AnalysisContext) -> list[str]:
        """The fine-tunes analysed."""
        chosen = self.finetunes if self.finetunes is not None else context.finetunes
        if not chosen:
            raise UserError("no fine-tune given; pass --finetuned NAME=PATH at least once")
        return chosen

    def roles(self, context: AnalysisContext, part: str | None = None) -> list[str]:
        """Base, reference and the fine-tunes."""
        return [context.base, context.reference, *self.finetunes_of(context)]

    def identity(self, context: AnalysisContext) -> dict[str, Any]:
        """Inputs by content fingerprint, and the grid."""
        return {
            "base": context.model_identity(context.base),
            "reference": {"kind": context.reference, **context.model_identity(context.reference)},
            "finetunes": {name: context.model_identity(name) for name in self.finetunes_of(context)},
            "subspaces": self.subspaces, "fractions": self.fractions, "schemes": self.schemes, "seed": context.seed,
            "tensors": self.select.pattern, "layers": list(self.select.layers) if self.select.layers is not None else None,
            "svd_method": context.svd_method,
        }

    def run(self, context: AnalysisContext, part: str | None = None) -> EnergyResult:
        """The energy table in one pass over the selected floating-point tensors."""
        finetunes = self.finetunes_of(context)
        names = floating_names(context, self.roles(context), self.select)
        subspaces = context.subspaces()
        computed, reused = subspaces.cache.computed, subspaces.cache.reused
        with progress.bar("energy kept", total=len(names)) as update:
            rows, records = energy_table(
                subspaces, {name: context.checkpoint(name) for name in finetunes}, names, kinds=self.subspaces,
                fractions=self.fractions, schemes=self.schemes, on_tensor=lambda name: update(1, status=name),
            )
        return EnergyResult(rows, reference_kind=context.reference, filter=self.select.describe(),
                            decompositions=subspaces.cache.computed - computed, cache_hits=subspaces.cache.reused - reused,
                            ranks={r.name: (r.rank, r.rank + r.null_dirs) for r in records})


# ---------------------------------------------------------------- the `project` front end


@dataclass(frozen=True)
class WriteRequest:
    """An edited checkpoint to write: an edit, for one fine-tune or (None) for every fine-tune."""

    edit: Spec
    finetune: str | None = None

    @classmethod
    def parse(cls, text: str) -> "WriteRequest":
        """Parse '[finetune:]scheme:subspace:fraction' (sugar for a projection edit)."""
        parts = text.split(":")
        if len(parts) == 4:
            return cls(ProjectionSpec.parse(":".join(parts[1:])).spec, parts[0])
        return cls(ProjectionSpec.parse(text).spec)


@dataclass
class ProjectConfig(RunSettings):
    """Everything the project command needs (paths as given by the user)."""

    base: str
    reference: str
    finetunes: dict[str, str]
    out: Path
    reference_kind: str = "aligned"
    subspaces: Sequence[str] = paper.SUBSPACE_KINDS
    fractions: Sequence[float] = paper.FRACTIONS
    schemes: Sequence[str] = paper.SCHEMES
    seed: int = 0
    tensors: str | None = None
    layers: Sequence[int] | None = None
    writes: Sequence[WriteRequest] = ()
    models_out: Path | None = None
    shard_bytes: int = 2 * 1024**3

    def validate(self) -> None:
        """Check the names and options before anything is read."""
        if not self.finetunes:
            raise UserError("no fine-tune given; pass --finetuned NAME=PATH at least once")
        for name in self.finetunes:
            check_name(name, "--finetuned")
            if name in ("base", self.reference_kind):
                raise UserError(f"--finetuned {name}=...: {name!r} names the {name} model here; choose another name")
        if not self.shard_bytes >= 1:
            raise UserError(f"--shard-size must be positive (in GB), got {self.shard_bytes / 1024**3:g}")
        self.fractions = [check_fraction(f, "--fractions") for f in self.fractions]
        self.schemes = [projection_class(s, "--schemes").name for s in self.schemes]
        self.subspaces = [SUBSPACES.canonical(s, "--subspaces") for s in self.subspaces]
        if self.writes and self.models_out is None:
            raise UserError("--write and --edit need --models-out DIR")
        for request in self.writes:
            if request.finetune is not None:
                check_name(request.finetune, "--write FT:...: fine-tune")
            if request.finetune is not None and request.finetune not in self.finetunes:
                raise UserError(f"--write {request.finetune}:...: no fine-tune named {request.finetune!r}")
        check_svd_method(self.svd_method)

    @property
    def select(self) -> TensorFilter:
        """The tensor filter."""
        return TensorFilter.of(self.tensors, self.layers)

    def context(self) -> AnalysisContext:
        """The models by role (base, the reference, each fine-tune) and the settings."""
        reference_label = self.reference_kind.replace("_", "-")
        return AnalysisContext(
            {"base": self.base, self.reference_kind: self.reference, **self.finetunes}, reference=self.reference_kind,
            finetunes=list(self.finetunes), labels={self.reference_kind: reference_label,
                                                    **{n: f"finetuned {n}" for n in self.finetunes}},
            seed=self.seed, **self.settings(),
        )

    def analysis(self) -> Energy:
        """The energy analysis of the grid."""
        return Energy(list(self.finetunes), list(self.subspaces), list(self.fractions), list(self.schemes),
                      self.tensors, list(self.layers) if self.layers is not None else None)




def model_targets(config: ProjectConfig) -> list[tuple[str, Spec, Path]]:
    """(fine-tune, edit, directory) of every edited checkpoint requested; refuses existing non-empty targets."""
    targets = []
    for request in config.writes:
        edit = make_edit(request.edit, "--write")
        if edit.reads:
            raise UserError(f"--edit {edit.name} reads {', '.join(edit.reads)} besides the fine-tune; apply it with "
                            f"`safety-subspaces defend {edit.name}`")
        label = edit.label
        for finetune in [request.finetune] if request.finetune else list(config.finetunes):
            directory = Path(config.models_out) / finetune / label  # type: ignore[arg-type]
            if directory.exists() and any(directory.iterdir()):
                raise UserError(f"model output {directory} exists and is not empty")
            targets.append((finetune, request.edit, directory))
    return targets


def run_project(config: ProjectConfig) -> EnergyResult:
    """Validate, compute the energy table in one pass, write edited checkpoints and the run directory."""
    config.validate()
    context = config.context()
    targets: list[tuple[str, Spec, Path]] = []

    def check_targets() -> None:
        targets.extend(model_targets(config))

    def write(result: EnergyResult) -> dict[str, Any]:
        result.written = write_models(config, context, targets)
        return {"written_models": [str(p) for p in result.written]}

    locks = [Path(config.models_out)] if config.writes and config.models_out is not None else []
    return run_analysis(config.analysis(), context, config.out, before=check_targets, after=write, locks=locks)  # type: ignore[arg-type,return-value]


def write_models(config: ProjectConfig, context: AnalysisContext, targets: list[tuple[str, Spec, Path]]) -> list[Path]:
    """Write every requested edited checkpoint atomically (all of them, or none)."""
    if not targets:
        return []
    written = []
    subspaces = context.subspaces()
    with profiling.stage("write"), staged_dir(Path(config.models_out)) as stage:  # type: ignore[arg-type]
        for finetune, spec, directory in progress.track(targets, "writing edited models"):
            edit = make_edit(spec, "--write")
            relative = directory.relative_to(config.models_out)  # type: ignore[arg-type]
            note = {
                "finetune": finetune, **describe(edit), "reference": config.reference_kind,
                "seed": config.seed, "filter": config.select.describe(), "tool": f"safety-subspaces {__version__}",
            }
            write_checkpoint(
                stage / relative,
                edited_state(edit, EditInputs(subspaces, context.checkpoint(finetune)), config.select),
                template=context.checkpoint(context.reference), shard_bytes=config.shard_bytes,
                extra_files={layout.EDIT_NOTE: json.dumps(note, indent=2) + "\n"},
            )
            written.append(directory)
    return written
