"""Plan a study's jobs: each a kind and a spec, identified by a content hash of both and of its inputs' fingerprints."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from .config import Study
from ..schema import as_plain

TABLES = {"energy": "energy", "evaluate": "evaluation", "weight_overlap": "weight_overlap",
          "activation_overlap": "activation_overlap"}


@dataclass(frozen=True)
class Job:
    """One unit of work: what to do (kind, spec) and its content-hash id."""

    id: str
    kind: str
    spec: Mapping[str, Any]

    @property
    def label(self) -> str:
        """A short human description for progress lines."""
        spec = self.spec
        if self.kind == "evaluate":
            if spec["variant"] == "projected":
                layer = f" layer {spec['layer']}" if spec.get("layer") is not None else ""
                return f"{spec['finetune']} {spec['scheme']} {spec['subspace']} {spec['fraction']:g}{layer}"
            return f"{spec['model']}"
        if self.kind == "activation_overlap":
            return f"activations of {spec['model']}"
        return self.kind.replace("_", " ")


def job_id(kind: str, spec: Mapping[str, Any], fingerprints: Mapping[str, str]) -> str:
    """A content hash of the kind, the spec and the fingerprints of the models it touches."""
    payload = json.dumps({"kind": kind, "spec": spec, "inputs": dict(sorted(fingerprints.items()))}, sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=10).hexdigest()


def make_job(kind: str, spec: dict[str, Any], fingerprints: Mapping[str, str], models: list[str]) -> Job:
    """A job whose id covers the fingerprints of the given models."""
    return Job(job_id(kind, spec, {m: fingerprints[m] for m in models}), kind, spec)


def layer_choices(study: Study, num_layers: int) -> list[int | None]:
    """None for whole-model projections; layer indices for one-layer-at-a-time ones."""
    layers = study.projection.layers
    if layers == "all":
        return [None]
    if layers == "each":
        return list(range(num_layers))
    return list(layers)  # type: ignore[arg-type]


def evaluation_settings(study: Study, metrics: list[str]) -> dict[str, Any]:
    """The evaluation settings a job's results depend on (over-refusal is judged by the harm judge)."""
    evaluation = as_plain(study.evaluation)
    needed = [*metrics, "harm"] if "benign" in metrics else metrics
    return {metric: evaluation[metric] for metric in needed}


def reference_metrics(study: Study) -> dict[str, list[str]]:
    """Which metrics each reference row (base, reference, each fine-tune) is evaluated on."""
    by_finetune: dict[str, list[str]] = {}
    for entry in study.projection.grid:
        by_finetune.setdefault(entry.finetune, [])
        for metric in entry.metrics:
            if metric not in by_finetune[entry.finetune]:
                by_finetune[entry.finetune].append(metric)
    every = sorted({m for ms in by_finetune.values() for m in ms}, key=["utility", "harm", "benign"].index)
    rows = {"base": every, study.reference: every}
    rows.update(by_finetune)
    if study.evaluation.benign is not None:  # over-refusal of every reference row
        rows = {model: [*metrics, "benign"] if "benign" not in metrics else metrics for model, metrics in rows.items()}
    return {model: metrics for model, metrics in rows.items() if metrics}


def plan(study: Study, fingerprints: Mapping[str, str], num_layers: int) -> list[Job]:
    """Every analysis job of a study (models already materialised and fingerprinted)."""
    jobs: list[Job] = []
    reference = study.reference
    projection = as_plain(study.projection)
    if study.projection.energy:
        schemes = sorted({entry.scheme for entry in study.projection.grid} or {"parallel", "orthogonal"})
        spec = {"subspaces": projection["subspaces"], "fractions": projection["fractions"], "schemes": schemes,
                "tensors": projection["tensors"], "svd_method": projection["svd_method"], "seed": study.seed}
        jobs.append(make_job("energy", spec, fingerprints, ["base", reference, *study.finetunes]))
    if study.evaluation.references:
        for model, metrics in reference_metrics(study).items():
            spec = {"variant": "reference", "model": model, "metrics": metrics,
                    "settings": evaluation_settings(study, metrics)}
            jobs.append(make_job("evaluate", spec, fingerprints, [model, reference]))
    for entry in study.projection.grid:
        for layer in layer_choices(study, num_layers):
            for subspace in study.projection.subspaces:
                for fraction in study.projection.fractions:
                    spec = {
                        "variant": "projected", "finetune": entry.finetune, "scheme": entry.scheme,
                        "subspace": subspace, "fraction": fraction, "layer": layer,
                        "tensors": projection["tensors"], "metrics": list(entry.metrics), "seed": study.seed,
                        "svd_method": projection["svd_method"], "settings": evaluation_settings(study, list(entry.metrics)),
                    }
                    jobs.append(make_job("evaluate", spec, fingerprints, ["base", reference, entry.finetune]))
    if study.overlap.weights is not None:
        spec = as_plain(study.overlap.weights)
        jobs.append(make_job("weight_overlap", spec, fingerprints, [reference, *study.overlap.weights.updates]))
    if study.overlap.activations is not None:
        spec = as_plain(study.overlap.activations)
        for model in study.overlap.activations.models:
            jobs.append(make_job("activation_overlap", {**spec, "model": model}, fingerprints, [model]))
    return jobs
