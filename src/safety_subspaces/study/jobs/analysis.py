"""The analysis job: one part of a registered analysis (energy, weight or activation overlap, a plugin's) in a worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...analyses import ANALYSES, build_analysis
from . import JOB_KINDS, Decomposition, Job, JobKind

if TYPE_CHECKING:
    from ..worker import Rows, Worker

AnalysisName = ANALYSES.spec_type()


@dataclass(frozen=True)
class AnalysisSpec:
    """A registered analysis with its options, the part of it this job runs, and what its rows depend on."""

    analysis: AnalysisName  # type: ignore[valid-type]
    part: str | None = None
    seed: int | None = None
    decomposition: Decomposition | None = None


@JOB_KINDS.register("analysis")
class RunAnalysis(JobKind):
    """One part of a registered analysis on the study's models, the worker's resident model lent to it."""

    spec = AnalysisSpec

    def label(self, spec: AnalysisSpec) -> str:
        """The analysis' own label of the part."""
        return build_analysis(spec.analysis.name, spec.analysis.options).label(spec.part)

    def tables(self, spec: AnalysisSpec) -> list[str]:
        """The analysis' table."""
        return [build_analysis(spec.analysis.name, spec.analysis.options).table.name]

    def run(self, worker: "Worker", job: Job) -> "Rows":
        """The analysis' rows (with the reference role when they are about updates relative to it)."""
        spec: AnalysisSpec = job.spec
        analysis = build_analysis(spec.analysis.name, spec.analysis.options, f"analysis {spec.analysis.name}")
        result = analysis.run(worker.analysis_context(spec.seed), spec.part)
        extra = {"reference": worker.reference} if analysis.relative_to_reference else {}
        if analysis.seeded and spec.seed is not None:
            extra["seed"] = spec.seed  # the frame seed its random subspace kinds used (one of random_seeds)
        return [(analysis.table.name, {**row, **extra}) for row in result.rows]
