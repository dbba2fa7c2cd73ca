"""What the evaluating job kinds share (evaluate, defence): their spec, labels, and the evaluation of one model variant.

Not a built-in itself (its name starts with _): the kinds that register are evaluate.py and defence.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ... import layout
from ...edits import EDITS
from ...profiling import stage
from ...registry import Spec
from ...tables import EVALUATION, ITEMS
from ..config import Benign, Harm, Utility
from . import Decomposition, Job, JobKind

if TYPE_CHECKING:
    from ..worker import Rows, Worker

Metric = Literal["utility", "harm", "benign"]
EditSpec = EDITS.spec_type()
LABELLED_OPTIONS = ("subspace", "fraction")  # edit options that have their own evaluation-table columns


@dataclass(frozen=True)
class EvaluationSettings:
    """The evaluation settings a job's rows depend on (over-refusal is judged by the harm judges that report refusal)."""

    utility: Utility | None = None
    harm: Harm | None = None
    benign: Benign | None = None


@dataclass(frozen=True)
class EvaluateSpec:
    """Evaluate one model variant: a model role itself (edit None), or a fine-tune with an edit applied in memory."""

    model: str
    metrics: list[Metric]
    settings: EvaluationSettings
    edit: EditSpec | None = None  # type: ignore[valid-type]
    layer: int | None = None
    tensors: str | None = None
    seed: int | None = None
    decomposition: Decomposition | None = None


def labels(spec: EvaluateSpec) -> dict[str, Any]:
    """Evaluation-table labels of a job's model variant."""
    if spec.edit is None:
        return {"model": spec.model, "variant": "reference"}
    options = spec.edit.options
    return {"model": spec.model, "variant": "projected", "subspace": options.get("subspace", ""),
            "scheme": spec.edit.name, "fraction": options.get("fraction")}


def harm_judges(worker: "Worker", harm: Harm, benign: bool) -> list[Any]:
    """The study's harm judges built on the worker (once per worker); on benign prompts those that report refusal
    (all of them when none does, so that the first one's error says why)."""
    judges = [worker.judge(judge, harm.batch_size) for judge in harm.judges]
    if not benign:
        return judges
    return [judge for judge in judges if judge.refusal() is not None] or judges


def swap_in(worker: "Worker", spec: EvaluateSpec):
    """Put the job's model variant into the resident model; return (model, tokenizer)."""
    from ...checkpoints import TensorFilter

    if spec.edit is None:
        return worker.show(spec.model)
    select = TensorFilter(spec.tensors, (spec.layer,) if spec.layer is not None else None)
    worker.live(spec.seed).apply(worker.checkpoint(spec.model), Spec(spec.edit.name, dict(spec.edit.options)), select)
    return worker.resident()


class Evaluating(JobKind):
    """Utility / harm / over-refusal of one model variant, evaluated in memory on the resident model."""

    spec = EvaluateSpec

    def label(self, spec: EvaluateSpec) -> str:
        """The model, or the fine-tune with its edit and layer."""
        if spec.edit is None:
            return spec.model
        values = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in spec.edit.options.values())
        layer = f" layer {spec.layer}" if spec.layer is not None else ""
        return f"{spec.model} {spec.edit.name} {values}{layer}"

    def tables(self, spec: EvaluateSpec) -> list[str]:
        """The evaluation table and the per-item outcomes behind it."""
        return [EVALUATION.name, ITEMS.name]

    def labels(self, spec: EvaluateSpec) -> dict[str, Any]:
        """Evaluation-table labels of the job's model variant."""
        return labels(spec)

    def swap_in(self, worker: "Worker", spec: EvaluateSpec) -> tuple[Any, Any, dict[str, Any]]:
        """Put the variant into the resident model: (model, tokenizer, extra row fields)."""
        return (*swap_in(worker, spec), {})

    def run(self, worker: "Worker", job: Job) -> "Rows":
        """evaluate() under the profile stage `evaluate`: its time outside the nested stages (swap, load, read, ...)
        is generation and judging."""
        with stage("evaluate"):
            return self.evaluate(worker, job)

    def evaluate(self, worker: "Worker", job: Job) -> "Rows":
        """Evaluate the variant on each metric; the resident model is restored afterwards.

        Rows: the evaluation table's, and one items record per metric (per-item outcomes keyed like the samples that
        samples/JOB/METRIC/ holds: replies and judgments, or lm-eval's per-document records).
        """
        from ...evaluate.harm import evaluate_harm, load_harm_prompts
        from ...evaluate.rescore import rescore_run
        from ...evaluate.table import write_outputs
        from ...evaluate.utility import evaluate_utility

        spec: EvaluateSpec = job.spec
        settings = spec.settings
        extra: dict[str, Any] = {"layer": spec.layer, "job": job.id, "reference": worker.reference}
        if spec.edit is not None:
            extra["seed"] = spec.seed  # the frame seed of a random subspace kind (one of random_seeds)
        if spec.edit is not None and set(spec.edit.options) - set(LABELLED_OPTIONS):
            extra["edit_options"] = {k: v for k, v in spec.edit.options.items() if k not in LABELLED_OPTIONS}
        with stage("swap"):
            model, tokenizer, more = self.swap_in(worker, spec)
        extra.update(more)
        rows: list[dict[str, Any]] = []
        items: list[dict[str, Any]] = []
        try:
            for metric in spec.metrics:
                if metric == "utility":
                    utility = settings.utility
                    result = evaluate_utility(
                        model, tokenizer, task=utility.task, num_fewshot=utility.num_fewshot, limit=utility.limit,
                        batch_size=utility.batch_size, chat=utility.chat, data_files=utility.data_files,
                        max_gen_toks=utility.max_gen_toks, labels=self.labels(spec),
                    )
                    rows.extend({**row, "metric_group": "utility", "task": utility.task} for row in result.rows)
                    items.extend({**record, "metric_group": "utility"} for record in result.items)
                    write_outputs(worker.run_dir / layout.SAMPLES / job.id / metric, result.rows, result.samples,
                                  result.items)
                    continue
                benign = metric == "benign"
                harm = settings.harm  # over-refusal uses the harm judges and generation settings
                prompts_from = settings.benign if benign else harm
                judges = harm_judges(worker, harm, benign)
                out_dir = worker.run_dir / layout.SAMPLES / job.id / metric
                first = evaluate_harm(
                    model, tokenizer, prompts=load_harm_prompts(prompts_from.prompts, limit=prompts_from.limit),
                    judge=judges[0], chat=harm.chat, max_new_tokens=harm.max_new_tokens, batch_size=harm.batch_size,
                    benign=benign, prompt_set=prompts_from.prompts, labels=self.labels(spec), out_dir=out_dir,
                )
                for result in [first, *(rescore_run(out_dir, judge) for judge in judges[1:])]:  # stored replies
                    rows.extend({**row, "metric_group": metric} for row in result.rows)
                    items.extend({**record, "metric_group": metric} for record in result.items or [])
        finally:
            with stage("swap"):
                worker.live().restore()
        return [*((EVALUATION.name, {**row, **extra}) for row in rows),
                *((ITEMS.name, {**record, **extra}) for record in items)]
