"""Job handlers: energy table, evaluation of a model variant, weight and activation overlap."""

from __future__ import annotations

from typing import Any

from .plan import Job
from .worker import Rows, Worker, handles


@handles("energy")
def energy(worker: Worker, job: Job) -> Rows:
    """The energy table of every fine-tune under the study's subspaces, fractions and schemes."""
    from ..checkpoints import TensorFilter
    from ..analyses.energy import energy_table

    spec = job.spec
    subspaces = worker.subspaces()
    select = TensorFilter(spec["tensors"])
    names = [n for n in worker.checkpoint(worker.reference).names if select(n)
             and worker.checkpoint(worker.reference).infos[n].dtype.is_floating_point]
    finetunes = {name: worker.checkpoint(name) for name in worker.study.finetunes}
    rows, _ = energy_table(subspaces, finetunes, names, kinds=spec["subspaces"], fractions=spec["fractions"],
                           schemes=spec["schemes"])
    return [("energy", {**row, "reference": worker.reference}) for row in rows]


def _labels(spec: dict[str, Any]) -> dict[str, Any]:
    """Evaluation-table labels of a job's model variant."""
    if spec["variant"] == "reference":
        return {"model": spec["model"], "variant": "reference"}
    return {"model": spec["finetune"], "variant": "projected", "subspace": spec["subspace"],
            "scheme": spec["scheme"], "fraction": spec["fraction"]}


def _swap_in(worker: Worker, spec: dict[str, Any]):
    """Put the job's model variant into the resident model; return (model, tokenizer)."""
    from ..checkpoints import TensorFilter
    from ..edits import ProjectionSpec

    if spec["variant"] == "reference":
        return worker.show(spec["model"])
    select = TensorFilter(spec.get("tensors"), (spec["layer"],) if spec.get("layer") is not None else None)
    worker.live().apply(worker.checkpoint(spec["finetune"]),
                        ProjectionSpec.build(spec["scheme"], spec["subspace"], spec["fraction"]), select)
    return worker.resident()


@handles("evaluate")
def evaluate(worker: Worker, job: Job) -> Rows:
    """Utility / harm / over-refusal of one model variant, evaluated in memory."""
    from ..evaluate.harm import evaluate_harm, load_harm_prompts
    from ..evaluate.utility import evaluate_utility

    spec = job.spec
    settings = spec["settings"]
    labels = _labels(spec)
    extra = {"layer": spec.get("layer"), "job": job.id, "reference": worker.reference}
    model, tokenizer = _swap_in(worker, spec)
    rows: list[dict[str, Any]] = []
    try:
        for metric in spec["metrics"]:
            options = settings[metric]
            if metric == "utility":
                result = evaluate_utility(
                    model, tokenizer, task=options["task"], num_fewshot=options["num_fewshot"], limit=options["limit"],
                    batch_size=options["batch_size"], chat=options["chat"], data_files=options["data_files"],
                    max_gen_toks=options["max_gen_toks"], labels=labels,
                )
                rows.extend({**row, "metric_group": "utility", "task": options["task"]} for row in result.rows)
            else:
                benign = metric == "benign"
                harm_options = settings["harm"]  # over-refusal uses the harm judge and generation settings
                prompts = load_harm_prompts(options["prompts"], limit=options["limit"])
                judge = worker.judge(harm_options["judge"], harm_options["batch_size"])
                result = evaluate_harm(
                    model, tokenizer, prompts=prompts, judge=judge, chat=harm_options["chat"],
                    max_new_tokens=harm_options["max_new_tokens"], batch_size=harm_options["batch_size"],
                    benign=benign, prompt_set=options["prompts"], labels=labels,
                    out_dir=worker.run_dir / "samples" / job.id / metric,
                )
                rows.extend({**row, "metric_group": metric} for row in result.rows)
    finally:
        worker.live().restore()
    return [("evaluation", {**row, **extra}) for row in rows]


@handles("weight_overlap")
def weight_overlap(worker: Worker, job: Job) -> Rows:
    """MSO of every pair of weight updates relative to the reference model, per tensor, layer and depth."""
    from ..analyses.common import choose_pairs
    from ..analyses.weight_overlap import overlap_rows
    from ..checkpoints import TensorFilter

    spec = job.spec
    reference = worker.checkpoint(worker.reference)
    updates = {name: worker.checkpoint(name) for name in spec["updates"]}
    select = TensorFilter(spec["tensors"])
    names = [n for n in reference.names if select(n) and len(reference.infos[n].shape) >= 2]
    pairs = choose_pairs(list(updates), None, "update")
    result = overlap_rows(reference, updates, names, pairs, spec["eta"], spec["percentiles"],
                          svd_method=worker.study.projection.svd_method, device=worker.context.device)
    return [("weight_overlap", {**row, "reference": worker.reference}) for row in result.rows]


@handles("activation_overlap")
def activation_overlap(worker: Worker, job: Job) -> Rows:
    """MSO of the prompt sets' residual-stream activations in one model (swapped into the resident model)."""
    from ..analyses.activation_overlap import ActivationOverlap, load_prompt_sets

    spec = job.spec
    analysis = ActivationOverlap(dict(spec["prompts"]), [spec["model"]], spec["n"], eta=spec["eta"], depth=spec["depth"],
                                 window=spec["window"], raw_prompts=spec["raw_prompts"], batch_size=spec["batch_size"])
    sets, _ = load_prompt_sets(analysis.prompts, analysis.n)
    model, tokenizer = worker.show(spec["model"])
    try:
        result = analysis.model_overlap(model, tokenizer, spec["model"], sets)
    finally:
        worker.live().restore()
    return [("activation_overlap", row) for row in result.rows]
