"""Analyses: energy kept, weight-update MSO, activation MSO, and whatever a plugin adds, behind one protocol.

An analysis is a registered factory whose signature holds its options; it returns an `Analysis` that reads models
by role from an `AnalysisContext` and turns them into rows of one result table. The commands `project`,
`overlap weights` and `overlap activations` are front ends of the built-ins, `analyse NAME` runs any registered
analysis, and a study runs them as jobs (a study's worker is a context that keeps one model resident). Every
analysis run directory is written by `run_analysis` (config, manifest, CSV, figures; one identity rule). Adding an
analysis is one new module in this package (or a plugin, entry-point group `safety_subspaces.analyses`); analyses
never import each other: what two of them share lives in `common.py`.
"""

from __future__ import annotations

import gc
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence

from .. import profiling
from ..errors import UserError
from ..files import output_lock
from ..registry import Registry
from ..rundir import check_run_dir, write_run_dir
from ..tables import Table

if TYPE_CHECKING:
    from ..checkpoints import Checkpoint
    from ..subspaces import AlignmentSubspaces

ANALYSES = Registry("analysis", "safety_subspaces.analyses", __name__, flag="analyse NAME --arg KEY=VALUE")


class AnalysisContext:
    """The models an analysis reads, by role, and the settings it runs under (a study's worker supplies its own)."""

    def __init__(self, models: Mapping[str, str | Path], *, reference: str = "aligned", base: str = "base",
                 finetunes: Sequence[str] = (), labels: Mapping[str, str] | None = None, seed: int = 0,
                 device: str = "cpu", dtype: str = "auto", svd_method: str = "auto", cache_dir: Path | None = None,
                 allow_pickle: bool = False, trust_remote_code: bool = False, zoo: Path | None = None,
                 profile: bool = False):
        self.models = {role: str(path) for role, path in models.items()}
        self.reference, self.base, self.finetunes = reference, base, list(finetunes)
        self.labels = dict(labels or {})
        self.seed, self.device, self.dtype, self.svd_method, self.cache_dir = seed, device, dtype, svd_method, cache_dir
        self.allow_pickle, self.trust_remote_code, self.zoo = allow_pickle, trust_remote_code, zoo
        self.profile = profile  # collect per-stage times into the result and the manifest (--profile)
        self._checkpoints: dict[str, "Checkpoint"] = {}
        self._subspaces: "AlignmentSubspaces | None" = None

    def label(self, role: str) -> str:
        """How messages name a model role."""
        return self.labels.get(role, role)

    def path(self, role: str) -> str:
        """The local path of a model role."""
        if role not in self.models:
            raise UserError(f"no model {role!r} here; have {', '.join(self.models) or 'none'}")
        return self.models[role]

    def checkpoint(self, role: str) -> "Checkpoint":
        """A model role's checkpoint, opened once."""
        from ..checkpoints import Checkpoint

        if role not in self._checkpoints:
            self._checkpoints[role] = Checkpoint(self.path(role), role=self.label(role), allow_pickle=self.allow_pickle,
                                                 trust_remote_code=self.trust_remote_code)
        return self._checkpoints[role]

    def model_identity(self, role: str) -> dict[str, str]:
        """A model role's local path and content fingerprint (what run identities record)."""
        checkpoint = self.checkpoint(role)
        return {"path": str(checkpoint.path), "fingerprint": checkpoint.fingerprint()}

    def subspaces(self) -> "AlignmentSubspaces":
        """The alignment subspaces of Δ = W_reference − W_base (decompositions cached on disk)."""
        from ..subspaces import AlignmentSubspaces

        if self._subspaces is None:
            self._subspaces = AlignmentSubspaces(self.checkpoint(self.base), self.checkpoint(self.reference),
                                                 seed=self.seed, cache_root=self.cache_dir, method=self.svd_method,
                                                 device=self.device)
        return self._subspaces

    @contextmanager
    def loaded(self, role: str) -> Iterator[tuple[Any, Any]]:
        """(model, tokenizer) of a role for the block, freed afterwards."""
        from ..models import load_model, load_tokenizer

        path, label = self.path(role), self.label(role)
        with profiling.stage("load"):
            tokenizer = load_tokenizer(path, trust_remote_code=self.trust_remote_code, role=label)
            model = load_model(path, dtype=self.dtype, device=self.device, trust_remote_code=self.trust_remote_code,
                               allow_pickle=self.allow_pickle, role=label)
        try:
            yield model, tokenizer
        finally:
            del model
            gc.collect()


@dataclass(kw_only=True)
class RunSettings:
    """How a front end reads its models: where to compute, the decomposition method and cache, what loads may accept."""

    cache_dir: Path | None = None
    svd_method: str = "auto"
    device: str = "cpu"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    profile: bool = False

    def settings(self) -> dict[str, Any]:
        """These settings as AnalysisContext keywords."""
        return {"cache_dir": self.cache_dir, "svd_method": self.svd_method, "device": self.device,
                "allow_pickle": self.allow_pickle, "trust_remote_code": self.trust_remote_code,
                "profile": self.profile}


@dataclass
class AnalysisResult:
    """Rows of the analysis' table, its notes, and (once written) where its run directory is."""

    rows: list[dict[str, Any]]
    run_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    profile: list[dict[str, Any]] | None = None  # per-stage times (profiling.Profile.table) when profiled

    def manifest(self) -> dict[str, Any]:
        """What the run directory's manifest records beyond versions, timing, notes and inputs."""
        return {}

    def merge(self, other: "AnalysisResult") -> "AnalysisResult":
        """This result followed by another part's (rows and notes joined)."""
        self.rows.extend(other.rows)
        self.notes.extend(note for note in other.notes if note not in self.notes)
        return self


class Analysis:
    """A registered analysis built from its options: reads model roles from a context, gives rows of one table."""

    name: ClassVar[str] = ""
    table: ClassVar[Table]
    kind: ClassVar[str] = ""  # its run directories' kind (config.yaml); default: the name
    relative_to_reference: ClassVar[bool] = False  # rows are about updates relative to the reference model
    uses_spectra: ClassVar[bool] = False  # rows come from cached decompositions (their version identifies a job)
    seeded: ClassVar[bool] = False  # rows depend on the seed of random choices

    @property
    def run_kind(self) -> str:
        """The kind its run directories record."""
        return self.kind or self.name

    def roles(self, context: AnalysisContext, part: str | None = None) -> list[str]:
        """The model roles it reads, for one part or all (their fingerprints identify its results)."""
        return list(context.models)

    def parts(self, context: AnalysisContext) -> list[str | None]:
        """Units that run apart (a study gives each its own job): one, None, unless the analysis splits."""
        return [None]

    def label(self, part: str | None = None) -> str:
        """A short human description of one part, for progress lines."""
        return self.name.replace("_", " ") + (f" of {part}" if part else "")

    def check(self, context: AnalysisContext) -> None:
        """Validate what can be validated before any output is touched (nothing by default)."""

    def identity(self, context: AnalysisContext) -> dict[str, Any]:
        """What identifies a run directory of this analysis (inputs by content fingerprint)."""
        raise NotImplementedError

    def run(self, context: AnalysisContext, part: str | None = None) -> AnalysisResult:
        """The rows of one part."""
        raise NotImplementedError

    def write_files(self, result: AnalysisResult, stage: Path) -> None:
        """Figures and other files of a run directory, into its stage (nothing by default)."""


def build_analysis(name: str, options: Mapping[str, Any], where: str = "analysis") -> Analysis:
    """A registered analysis built from its options."""
    from ..registry import Spec

    built = ANALYSES.build(Spec(name, dict(options)), where)
    if not isinstance(built, Analysis):
        raise UserError(f"{where}: analysis {name!r} did not build an Analysis")
    return built


def run_parts(analysis: Analysis, context: AnalysisContext) -> AnalysisResult:
    """Every part of an analysis, joined into one result."""
    result: AnalysisResult | None = None
    for part in analysis.parts(context):
        found = analysis.run(context, part)
        result = found if result is None else result.merge(found)
    assert result is not None
    return result


def run_analysis(analysis: Analysis, context: AnalysisContext, out: Path, *, locks: Sequence[Path] = (),
                 before: Callable[[], Any] | None = None,
                 after: Callable[[AnalysisResult], Mapping[str, Any]] | None = None) -> AnalysisResult:
    """Check, then (holding the output's lock) run every part and write config, manifest, the table's CSV and figures.

    before() runs once the output is known to be free (checks of other outputs); after(result) runs before the run
    directory is written and returns more manifest entries (a front end's other outputs).
    """
    started = time.time()
    analysis.check(context)
    identity = analysis.identity(context)
    with ExitStack() as stack:
        for path in [out, *locks]:
            stack.enter_context(output_lock(path))
        check_run_dir(out, identity, kind=analysis.run_kind)
        if before is not None:
            before()
        with profiling.collecting(getattr(context, "profile", False)) as profile:
            result = run_parts(analysis, context)
            extra = dict(after(result)) if after is not None else {}
        result.seconds, result.run_dir = time.time() - started, Path(out)
        manifest = {**result.manifest(), **extra, "seconds": round(result.seconds, 3), "notes": result.notes,
                    "inputs": identity}
        if profile is not None:
            result.profile = manifest["profile"] = profile.table()
        write_run_dir(out, identity, kind=analysis.run_kind, manifest=manifest, tables={analysis.table: result.rows},
                      extra=lambda stage: analysis.write_files(result, stage))
    if analysis.uses_spectra:
        from ..spectra import evict_to_budget

        evict_to_budget(context.cache_dir)
    return result
