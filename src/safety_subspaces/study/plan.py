"""Plan a study's jobs: typed specs (study/jobs/), each identified by a content hash of itself and its inputs."""

from __future__ import annotations

from typing import Mapping

from .. import paper
from ..analyses import AnalysisContext, build_analysis
from ..edits import EDITS
from ..edits.projections import is_projection
from ..registry import Spec
from ..runtime import frame_seeds
from ..spectra import CACHE_VERSION
from ..subspaces import is_seeded
from .config import GridEntry, Study
from .jobs import Decomposition, Job, make_job
from .jobs.analysis import AnalysisSpec
from .jobs.defence import DefenceSpec
from .jobs.evaluate import EvaluateSpec, EvaluationSettings

METRICS = ("utility", "harm", "benign")


def layer_choices(study: Study, num_layers: int) -> list[int | None]:
    """None for whole-model edits; layer indices for one-layer-at-a-time ones."""
    layers = study.projection.layers
    if layers == "all":
        return [None]
    if layers == "each":
        return list(range(num_layers))
    return list(layers)  # type: ignore[arg-type]


def evaluation_settings(study: Study, metrics: list[str]) -> EvaluationSettings:
    """The evaluation settings a job's results depend on (over-refusal is judged by the harm judge)."""
    needed = [*metrics, "harm"] if "benign" in metrics else metrics
    return EvaluationSettings(**{metric: getattr(study.evaluation, metric) for metric in needed})


def decomposition(study: Study) -> Decomposition:
    """What the study's cached spectra come from."""
    return Decomposition(CACHE_VERSION, study.projection.svd_method)


def edit_seeds(study: Study, edit: Spec) -> list[int]:
    """The frame seeds an edit variant is evaluated with: every one of random_seeds for an edit on a seeded subspace
    kind, the study seed alone otherwise (top_k and edits without a subspace are deterministic)."""
    kind = edit.options.get("subspace")
    seeded = isinstance(kind, str) and is_seeded(kind)
    return frame_seeds(study.seed, study.random_seeds if seeded else 1)


def reference_metrics(study: Study) -> dict[str, list[str]]:
    """Which metrics each reference row (base, reference, each fine-tune) is evaluated on."""
    by_finetune: dict[str, list[str]] = {}
    for entry in study.projection.grid:
        by_finetune.setdefault(entry.finetune, [])
        for metric in entry.metrics:
            if metric not in by_finetune[entry.finetune]:
                by_finetune[entry.finetune].append(metric)
    every = sorted({m for ms in by_finetune.values() for m in ms}, key=METRICS.index)
    rows = {"base": every, study.reference: every}
    other = "safety_tuned" if study.reference == "aligned" else "aligned"
    if getattr(study.models, other) is not None:  # the other reference model (W_S beside W_A): a reference row too
        rows[other] = every
    rows.update(by_finetune)
    for defence in study.defences:  # a defended fine-tune is read beside the undefended one and the reference
        for model in (*defence.finetunes, study.reference):
            rows[model] = sorted({*rows.get(model, []), *defence.metrics}, key=METRICS.index)
    if study.evaluation.benign is not None:  # over-refusal of every reference row
        rows = {model: [*metrics, "benign"] if "benign" not in metrics else metrics for model, metrics in rows.items()}
    return {model: metrics for model, metrics in rows.items() if metrics}


def grid_edits(study: Study, entry: GridEntry) -> list[Spec]:
    """The entry's edit once per subspace kind and rank fraction of the grid (for the options the edit takes)."""
    accepts = EDITS.get(entry.edit.name).accepts
    kinds = study.projection.subspaces if accepts("subspace") else [None]
    fractions = study.projection.fractions if accepts("fraction") else [None]
    out = []
    for subspace in kinds:
        for fraction in fractions:
            grid = {key: value for key, value in (("subspace", subspace), ("fraction", fraction)) if value is not None}
            out.append(entry.edit.with_options(**grid))
    return out


def defence_jobs(study: Study, fingerprints: Mapping[str, str]) -> list[Job]:
    """Every defence entry x fine-tune x variant (published, then each control; a seeded control per frame seed)."""
    from .recipes import trained_defences

    jobs = []
    for entry, finetune, role, kind, made in trained_defences(study):  # lox, asft: the models they made
        spec = DefenceSpec(finetune, list(entry.metrics), evaluation_settings(study, list(entry.metrics)), role=role,
                           scheme=entry.name, subspace=kind, trained=made)
        jobs.append(make_job("defence", spec, fingerprints, ["base", study.reference, made]))
    for entry in study.defences:
        if entry.kind != "edit":
            continue
        others = entry.read_roles()
        for finetune in entry.finetunes:
            for role, edit in entry.variants():
                for seed in edit_seeds(study, edit):
                    spec = DefenceSpec(finetune, list(entry.metrics), evaluation_settings(study, list(entry.metrics)),
                                       edit, None, study.projection.tensors, seed, decomposition(study), role, others)
                    jobs.append(make_job("defence", spec, fingerprints,
                                         ["base", study.reference, finetune, *others.values()]))
    return jobs


def analysis_specs(study: Study) -> list[Spec]:
    """Every analysis of the study: energy (from the projection grid), the overlaps, then any others named."""
    specs = []
    if study.projection.energy:
        schemes = sorted({e.edit.name for e in study.projection.grid if is_projection(e.edit.name)} or paper.SCHEMES)
        specs.append(Spec("energy", {"subspaces": list(study.projection.subspaces),
                                     "fractions": list(study.projection.fractions), "schemes": schemes,
                                     "tensors": study.projection.tensors}))
    specs.extend(spec for spec in (study.overlap.weights, study.overlap.activations) if spec is not None)
    return [*specs, *study.analyses]


def seeded_variants(spec: Spec, seeds: list[int]) -> list[tuple[Spec, int]]:
    """(spec, seed) per frame seed of a seeded analysis: the whole analysis at the first seed, then at each further seed
    only over the seeded subspace kinds when the analysis takes a `subspaces` option (energy: random kinds only)."""
    kinds = spec.options.get("subspaces")
    out = [(spec, seeds[0])]
    if isinstance(kinds, list):
        seeded = [kind for kind in kinds if is_seeded(kind)]
        out.extend((spec.with_options(subspaces=seeded), seed) for seed in seeds[1:] if seeded)
    return out


def analysis_jobs(study: Study, fingerprints: Mapping[str, str]) -> list[Job]:
    """One job per part of every analysis (a seeded analysis per frame seed too); its id covers the models it reads."""
    context = AnalysisContext({role: "" for role in fingerprints}, reference=study.reference,
                              finetunes=list(study.finetunes))
    jobs = []
    for spec in analysis_specs(study):
        analysis = build_analysis(spec.name, spec.options)
        variants = seeded_variants(spec, frame_seeds(study.seed, study.random_seeds)) if analysis.seeded else [(spec, None)]
        for variant, seed in variants:
            for part in analysis.parts(context):
                typed = AnalysisSpec(variant, part, seed, decomposition(study) if analysis.uses_spectra else None)
                jobs.append(make_job("analysis", typed, fingerprints, analysis.roles(context, part)))
    return jobs


def plan(study: Study, fingerprints: Mapping[str, str], num_layers: int) -> list[Job]:
    """Every job of a study (models already materialised and fingerprinted): analyses and evaluations."""
    reference = study.reference
    analyses = analysis_jobs(study, fingerprints)
    jobs: list[Job] = [job for job in analyses if job.spec.analysis.name == "energy"]
    if study.evaluation.references:
        for model, metrics in reference_metrics(study).items():
            spec = EvaluateSpec(model, metrics, evaluation_settings(study, metrics))
            jobs.append(make_job("evaluate", spec, fingerprints, [model, reference]))
    for entry in study.projection.grid:
        for layer in layer_choices(study, num_layers):
            for edit in grid_edits(study, entry):
                for seed in edit_seeds(study, edit):
                    spec = EvaluateSpec(entry.finetune, list(entry.metrics),
                                        evaluation_settings(study, list(entry.metrics)), edit, layer,
                                        study.projection.tensors, seed, decomposition(study))
                    jobs.append(make_job("evaluate", spec, fingerprints, ["base", reference, entry.finetune]))
    jobs.extend(defence_jobs(study, fingerprints))
    return [*jobs, *(job for job in analyses if job.spec.analysis.name != "energy")]
