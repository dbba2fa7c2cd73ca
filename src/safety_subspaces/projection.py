"""Weight-space projection (paper §3-4): alignment subspaces of Δ_A/S, energy kept in one pass, projected weights.

Data flow: checkpoints -> spectra (cached SVD of Δ_A/S) -> subspace frames -> energies / projected tensors.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from . import linalg
from .checkpoints import Checkpoint, check_compatible, layer_index
from .errors import UserError
from .memo import TensorMemo
from .runtime import stable_seed
from .spectra import Spectrum, SpectrumCache, difference

ENERGY_COLUMNS = [
    "finetune", "subspace", "scheme", "fraction", "k_total", "energy_kept",
    "cos_task_proj", "cos_task_align", "scope", "name",
]
DEFAULT_FRACTIONS = (0.01, 0.25, 0.5, 0.75, 0.99)
DEFAULT_SCHEMES = ("parallel", "orthogonal")
DEFAULT_SUBSPACES = linalg.SUBSPACE_KINDS


@dataclass(frozen=True)
class TensorFilter:
    """Which tensors a projection touches: a name regex and/or decoder layer indices (all by default)."""

    pattern: str | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise UserError(f"--tensors {self.pattern!r} is not a valid regular expression ({exc})") from None

    @classmethod
    def of(cls, tensors: str | None, layers: Sequence[int] | None) -> "TensorFilter":
        """A filter from CLI-style options (layers as any sequence)."""
        return cls(tensors, tuple(layers) if layers is not None else None)

    def __call__(self, name: str) -> bool:
        """Whether a tensor is selected."""
        if self.pattern is not None and not re.search(self.pattern, name):
            return False
        if self.layers is not None and layer_index(name) not in self.layers:
            return False
        return True

    def describe(self) -> str:
        """A short human description."""
        parts = []
        if self.pattern:
            parts.append(f"tensors ~ /{self.pattern}/")
        if self.layers is not None:
            parts.append("layers " + ",".join(map(str, self.layers)))
        return "; ".join(parts) or "all tensors"


@dataclass(frozen=True)
class ProjectionSpec:
    """One projected model: scheme x subspace kind x rank fraction (for one fine-tune)."""

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
        """Validate and canonicalise the three parts."""
        label = origin or f"{scheme}:{subspace}:{fraction}"
        try:
            scheme = linalg.canonical_scheme(scheme)
        except ValueError as exc:
            raise UserError(f"projection {label!r}: {exc}") from None
        if subspace not in linalg.SUBSPACE_KINDS:
            raise UserError(f"projection {label!r}: unknown subspace {subspace!r}; use one of {', '.join(linalg.SUBSPACE_KINDS)}")
        return cls(scheme, subspace, check_fraction(fraction, label))

    @property
    def label(self) -> str:
        """scheme-subspace-fraction, usable as a directory name."""
        return f"{self.scheme}-{self.subspace}-{self.fraction:g}"


SVD_METHODS = linalg.SVD_METHODS


def check_svd_method(method: str) -> str:
    """An exact decomposition method name (a UserError otherwise)."""
    if method not in SVD_METHODS:
        raise UserError(f"--svd-method {method!r}: use {', '.join(SVD_METHODS)}")
    return method


def check_fraction(value: float | str, what: str = "fraction") -> float:
    """A rank or energy fraction in (0, 1] (a UserError otherwise)."""
    try:
        return linalg.check_fraction(float(value), what)
    except (TypeError, ValueError):
        raise UserError(f"{what}: fraction {value!r} is outside (0, 1]") from None


class AlignmentSubspaces:
    """Per-tensor alignment subspaces of Δ = W_ref - W_0 (ref = aligned or safety-tuned), decomposed once (cached)."""

    def __init__(self, base: Checkpoint, reference: Checkpoint, *, seed: int = 0, cache_root=None,
                 method: str = "auto", device: str = "cpu", keep_bytes: int = 0):
        self.base, self.reference, self.seed, self.device = base, reference, seed, device
        self.cache = SpectrumCache(reference, base, root=cache_root, method=method, device=device)
        self._current: tuple[str, Spectrum] | None = None
        self._kept = TensorMemo(keep_bytes)  # spectra kept in memory between uses (workers swapping many projections)

    def delta_align(self, name: str) -> torch.Tensor:
        """Δ_A/S of one tensor in float32."""
        return difference(self.reference, self.base, name, device=self.device)

    def spectrum(self, name: str, delta: torch.Tensor | None = None) -> Spectrum:
        """The (disk-cached) spectrum of Δ_A/S for a tensor; in memory: the current tensor's, and up to keep_bytes more."""
        if self._current is None or self._current[0] != name:
            self._current = (name, self._kept.get(name, lambda: self.cache.get(name, delta)))
        return self._current[1]

    def rank(self, name: str, fraction: float) -> int:
        """k for a rank fraction: max(1, round(fraction * r)), r = min(m, n), capped at Δ's numerical rank (0 when Δ = 0)."""
        spectrum = self.spectrum(name)
        return linalg.rank_from_fraction(fraction, spectrum.r, spectrum.rank)

    def frame(self, name: str, kind: str, k: int) -> torch.Tensor:
        """The first k columns of the subspace frame of a kind; seeded by (seed, tensor name, kind)."""
        left = self.spectrum(name).left.to(self.device)
        return linalg.subspace_frame(kind, left, k, stable_seed(self.seed, name, kind))


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
                for fraction in fractions:
                    kept = sum(linalg.scheme_energy(r.parallel[(kind, fraction)], r.total_task, scheme) for r in members)
                    dot = sum(linalg.scheme_inner(r.parallel[(kind, fraction)], r.total_task, scheme) for r in members)
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


def projected_delta(subspaces: AlignmentSubspaces, name: str, delta_task: torch.Tensor, spec: ProjectionSpec) -> torch.Tensor:
    """Δ̃ for one tensor: the task update projected by the spec's scheme onto the spec's subspace."""
    k = subspaces.rank(name, spec.fraction)
    basis = subspaces.frame(name, spec.subspace, k)
    return linalg.project(basis, delta_task, spec.scheme)


def projected_weight(
    subspaces: AlignmentSubspaces, finetune: Checkpoint, name: str, spec: ProjectionSpec | None, selected: bool
) -> torch.Tensor:
    """The new weight of one tensor: W_ref.float() + Δ̃ cast once to W_ref's dtype; W_FT itself where not selected."""
    if spec is None or not selected:
        return finetune.read(name).to(subspaces.reference.infos[name].dtype)
    weight = subspaces.reference.read(name)
    if not weight.is_floating_point():
        return finetune.read(name)
    if subspaces.rank(name, spec.fraction) == 0:  # empty basis: P = 0 exactly
        return finetune.read(name).to(weight.dtype) if spec.scheme == "orthogonal" else weight
    delta_task = difference(finetune, subspaces.reference, name, device=subspaces.device)
    return linalg.projected_weight(weight.to(subspaces.device), projected_delta(subspaces, name, delta_task, spec)).cpu()


def projected_state(
    subspaces: AlignmentSubspaces, finetune: Checkpoint, spec: ProjectionSpec, select: Callable[[str], bool]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every stored tensor of the reference layout with the projection applied (a tied alias gets a copy of its tensor)."""
    reference = subspaces.reference
    for canonical in reference.names:
        tensor = projected_weight(subspaces, finetune, canonical, spec, select(canonical))
        yield canonical, tensor
        for alias in sorted(a for a, c in reference.aliases.items() if c == canonical):
            yield alias, tensor.clone()  # shards cannot share storage


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
    kinds: Sequence[str] = DEFAULT_SUBSPACES,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    schemes: Sequence[str] = DEFAULT_SCHEMES,
    on_tensor: Callable[[str], None] | None = None,
) -> tuple[list[dict], list[TensorEnergies]]:
    """The whole energy table in one pass over tensors (each checkpoint tensor read once, each Δ decomposed once)."""
    records: list[TensorEnergies] = []
    for name in names:
        records.extend(tensor_energies(subspaces, finetunes, name, kinds, fractions))
        if on_tensor:
            on_tensor(name)
    return energy_rows(records, kinds=kinds, fractions=fractions, schemes=schemes), records


class LiveModel:
    """A loaded model whose weights are swapped in place: a projection, another checkpoint, or back to the reference."""

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
    def _set(self, name: str, value: torch.Tensor) -> None:
        """Copy a new value into a parameter."""
        param = self.params[name]
        param.data.copy_(value.to(device=param.device, dtype=param.dtype))
        self.touched.add(name)

    def apply(self, finetune: Checkpoint, spec: ProjectionSpec | None, select: Callable[[str], bool] = TensorFilter()) -> None:
        """Set the weights of a projected fine-tune (spec None: the fine-tune itself; unselected tensors: W_FT)."""
        self.restore()
        for name in self.params:
            self._set(name, projected_weight(self.subspaces, finetune, name, spec, select(name)))
        self.state = f"{finetune.role}:{spec.label if spec else 'full'}"

    def load(self, checkpoint: Checkpoint) -> None:
        """Set the weights of another compatible checkpoint (e.g. the base model)."""
        self.restore()
        for name in self.params:
            self._set(name, checkpoint.read(name))
        self.state = checkpoint.role

    def restore(self) -> None:
        """Undo: put the reference weights back into every touched parameter."""
        for name in sorted(self.touched):
            self._set(name, self.subspaces.reference.read(name))
        self.touched.clear()
        self.state = "reference"
