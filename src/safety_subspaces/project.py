"""The `project` analysis: energy kept by every fine-tune x subspace x scheme x fraction, and projected checkpoints."""

from __future__ import annotations

import json
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import __version__, progress
from .checkpoints import Checkpoint, write_checkpoint
from .errors import UserError
from .files import analysis_run_dir, check_run_dir, output_lock, staged_dir
from .checkpoints import TensorFilter
from .edits import PAPER_SCHEMES, EditInputs, ProjectionSpec, check_fraction
from .edits.apply import edited_state
from .edits.projections import projection_class
from .names import check_name
from .projection import DEFAULT_FRACTIONS, ENERGY_COLUMNS, Inputs, check_svd_method, energy_table
from .subspaces import PAPER_KINDS, SUBSPACES, AlignmentSubspaces
from .spectra import null_dirs_summary


@dataclass(frozen=True)
class WriteRequest:
    """A projected checkpoint to write: a spec, for one fine-tune or (None) for every fine-tune."""

    spec: ProjectionSpec
    finetune: str | None = None

    @classmethod
    def parse(cls, text: str) -> "WriteRequest":
        """Parse '[finetune:]scheme:subspace:fraction'."""
        parts = text.split(":")
        if len(parts) == 4:
            return cls(ProjectionSpec.parse(":".join(parts[1:])), parts[0])
        return cls(ProjectionSpec.parse(text))


@dataclass
class ProjectConfig:
    """Everything the project analysis needs (paths as given by the user)."""

    base: str
    reference: str
    finetunes: dict[str, str]
    out: Path
    reference_kind: str = "aligned"
    subspaces: Sequence[str] = PAPER_KINDS
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    schemes: Sequence[str] = PAPER_SCHEMES
    seed: int = 0
    tensors: str | None = None
    layers: Sequence[int] | None = None
    writes: Sequence[WriteRequest] = ()
    models_out: Path | None = None
    shard_bytes: int = 2 * 1024**3
    cache_dir: Path | None = None
    svd_method: str = "auto"
    device: str = "cpu"
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def validate(self) -> None:
        """Check the grid and options before anything is read."""
        if not self.finetunes:
            raise UserError("no fine-tune given; pass --finetuned NAME=PATH at least once")
        for name in self.finetunes:
            check_name(name, "--finetuned")
        if not self.shard_bytes >= 1:
            raise UserError(f"--shard-size must be positive (in GB), got {self.shard_bytes / 1024**3:g}")
        self.fractions = [check_fraction(f, "--fractions") for f in self.fractions]
        self.schemes = [projection_class(s, "--schemes").name for s in self.schemes]
        self.subspaces = [SUBSPACES.canonical(s, "--subspaces") for s in self.subspaces]
        if self.writes and self.models_out is None:
            raise UserError("--write needs --models-out DIR")
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


@dataclass
class ProjectResult:
    """What a project run produced."""

    rows: list[dict]
    run_dir: Path
    reference_kind: str
    written: list[Path] = field(default_factory=list)
    decompositions: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    ranks: dict[str, tuple[int, int]] = field(default_factory=dict)  # tensor -> (numerical rank of Δ, r = min(m, n))


def open_inputs(config: ProjectConfig) -> Inputs:
    """Open and cross-check every checkpoint."""
    options = {"allow_pickle": config.allow_pickle, "trust_remote_code": config.trust_remote_code}
    base = Checkpoint(config.base, role="base", **options)
    reference = Checkpoint(config.reference, role=config.reference_kind.replace("_", "-"), **options)
    finetunes = {name: Checkpoint(path, role=f"finetuned {name}", **options) for name, path in config.finetunes.items()}
    return Inputs(base, reference, config.reference_kind, finetunes)


def identity(config: ProjectConfig, inputs: Inputs) -> dict:
    """The resolved config that identifies a run (inputs by content fingerprint)."""
    return {
        "base": {"path": str(inputs.base.path), "fingerprint": inputs.base.fingerprint()},
        "reference": {"kind": config.reference_kind, "path": str(inputs.reference.path), "fingerprint": inputs.reference.fingerprint()},
        "finetunes": {n: {"path": str(c.path), "fingerprint": c.fingerprint()} for n, c in inputs.finetunes.items()},
        "subspaces": list(config.subspaces),
        "fractions": list(config.fractions),
        "schemes": list(config.schemes),
        "seed": config.seed,
        "tensors": config.tensors,
        "layers": list(config.layers) if config.layers is not None else None,
        "svd_method": config.svd_method,
    }


def model_targets(config: ProjectConfig) -> list[tuple[str, ProjectionSpec, Path]]:
    """(fine-tune, spec, directory) of every projected checkpoint requested; refuses existing non-empty targets."""
    targets = []
    for request in config.writes:
        for finetune in [request.finetune] if request.finetune else list(config.finetunes):
            directory = Path(config.models_out) / finetune / request.spec.label  # type: ignore[arg-type]
            if directory.exists() and any(directory.iterdir()):
                raise UserError(f"model output {directory} exists and is not empty")
            targets.append((finetune, request.spec, directory))
    return targets


def run_project(config: ProjectConfig) -> ProjectResult:
    """Validate, compute the energy table in one pass, write projected checkpoints and the run directory."""
    started = time.time()
    config.validate()
    inputs = open_inputs(config)
    names = [n for n in inputs.check() if config.select(n)]
    if not names:
        raise UserError(f"no tensor matches the filter ({config.select.describe()})")
    run_identity = identity(config, inputs)
    with output_lock(config.out), output_lock(config.models_out) if config.writes else nullcontext():
        check_run_dir(config.out, run_identity, kind="project")
        targets = model_targets(config)
        subspaces = AlignmentSubspaces(
            inputs.base, inputs.reference, seed=config.seed, cache_root=config.cache_dir,
            method=config.svd_method, device=config.device,
        )
        with progress.bar("energy kept", total=len(names)) as update:
            rows, records = energy_table(
                subspaces, inputs.finetunes, names, kinds=config.subspaces, fractions=config.fractions,
                schemes=config.schemes, on_tensor=lambda name: update(1, status=name),
            )
        written = write_models(config, inputs, subspaces, targets)
        result = ProjectResult(rows, Path(config.out), config.reference_kind, written,
                               subspaces.cache.computed, subspaces.cache.reused, time.time() - started,
                               {r.name: (r.rank, r.rank + r.null_dirs) for r in records})
        write_run_dir(config, run_identity, result, len(names))
    return result


def write_models(config: ProjectConfig, inputs: Inputs, subspaces: AlignmentSubspaces,
                 targets: list[tuple[str, ProjectionSpec, Path]]) -> list[Path]:
    """Write every requested projected checkpoint atomically (all of them, or none)."""
    if not targets:
        return []
    written = []
    with staged_dir(Path(config.models_out)) as stage:  # type: ignore[arg-type]
        for finetune, spec, directory in progress.track(targets, "writing projected models"):
            relative = directory.relative_to(config.models_out)  # type: ignore[arg-type]
            note = {
                "finetune": finetune, "scheme": spec.scheme, "subspace": spec.subspace, "fraction": spec.fraction,
                "reference": config.reference_kind, "seed": config.seed, "filter": config.select.describe(),
                "tool": f"safety-subspaces {__version__}",
            }
            write_checkpoint(
                stage / relative,
                edited_state(spec, EditInputs(subspaces, inputs.finetunes[finetune]), config.select),
                template=inputs.reference, shard_bytes=config.shard_bytes,
                extra_files={"projection.json": json.dumps(note, indent=2) + "\n"},
            )
            written.append(directory)
    return written


def write_run_dir(config: ProjectConfig, run_identity: dict, result: ProjectResult, tensor_count: int) -> None:
    """config.yaml, manifest.json and energy.csv, all at once."""
    import torch

    manifest = {
        "tool": f"safety-subspaces {__version__}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "reference": config.reference_kind,
        "delta": "delta_align = W_A - W_0" if config.reference_kind == "aligned" else "delta_safety = W_S - W_0",
        "tensors": tensor_count,
        "filter": config.select.describe(),
        "decompositions": result.decompositions,
        "cache_hits": result.cache_hits,
        "seconds": round(result.seconds, 3),
        "written_models": [str(p) for p in result.written],
        "rank_rule": "k = min(max(1, round(fraction * min(m, n))), numerical rank of the tensor's delta)",
        "numerical_rank": null_dirs_summary(result.ranks),
        "inputs": run_identity,
    }
    with analysis_run_dir(config.out, run_identity, kind="project", manifest=manifest,
                          tables={"energy": (result.rows, ENERGY_COLUMNS)}):
        pass
