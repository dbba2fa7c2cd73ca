"""A worker runs study jobs with the reference model resident, swapping edited weights in and out in place."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .. import layout, profiling
from ..analyses import AnalysisContext
from ..files import write_json
from .config import Study, parse_study
from .jobs import Job, kind_of

Rows = list[tuple[str, dict[str, Any]]]


@dataclass
class Context:
    """What every worker needs: the resolved study, local model paths by role, the run directory, device."""

    study: dict[str, Any]
    models: dict[str, str]
    run_dir: str
    device: str = "cpu"
    threads: int | None = None
    environment: dict[str, str] = field(default_factory=dict)
    profile: bool = False  # write each job's stage times to RUN_DIR/profile/JOB.json


class Worker:
    """Runs jobs; loads the reference model once and keeps it resident."""

    def __init__(self, context: Context, name: str = "local"):
        os.environ.update(context.environment)
        os.environ.setdefault("TQDM_DISABLE", "1")  # third-party bars; the study shows its own
        import transformers

        transformers.utils.logging.disable_progress_bar()
        self.context, self.name = context, name
        self.study: Study = parse_study(context.study)
        self.run_dir = Path(context.run_dir)
        if context.threads:
            from ..runtime import configure_threads

            configure_threads(context.threads)
        self._checkpoints: dict[str, Any] = {}
        self.keep_bytes = int(self.study.memory_gb * 1024**3 / 8)  # per checkpoint; bases get a quarter of the budget
        self._resident: tuple[Any, Any] | None = None
        self._subspaces: dict[int, Any] = {}
        self._live = None
        self._judges: dict[str, Any] = {}
        self._analysis_contexts: dict[int, WorkerContext] = {}

    def checkpoint(self, role: str):
        """The lazily opened checkpoint of a model role."""
        from ..checkpoints import Checkpoint

        if role not in self._checkpoints:
            self._checkpoints[role] = Checkpoint(self.context.models[role], role=role, keep_bytes=self.keep_bytes,
                                                 allow_pickle=self.study.allow_pickle)
        return self._checkpoints[role]

    @property
    def reference(self) -> str:
        """The reference model role (aligned or safety_tuned)."""
        return self.study.reference

    def subspaces(self, seed: int | None = None):
        """Alignment subspaces of Δ = W_ref - W_0 with random frames from a seed (default: the study's); one set of
        decompositions (cached on disk and in memory) serves every seed."""
        import copy

        from ..subspaces import AlignmentSubspaces

        seed = self.study.seed if seed is None else seed
        if not self._subspaces:
            self._subspaces[self.study.seed] = AlignmentSubspaces(
                self.checkpoint("base"), self.checkpoint(self.reference), seed=self.study.seed,
                method=self.study.projection.svd_method, device=self.context.device, keep_bytes=2 * self.keep_bytes,
            )
        if seed not in self._subspaces:
            reseeded = copy.copy(next(iter(self._subspaces.values())))  # shares the spectrum cache and memo
            reseeded.seed = seed
            self._subspaces[seed] = reseeded
        return self._subspaces[seed]

    def resident(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the reference model, loaded once."""
        if self._resident is None:
            from ..models import load_model, load_tokenizer

            path = self.context.models[self.reference]
            with profiling.stage("load"):
                model = load_model(path, dtype=self.study.dtype, device=self.context.device, role=self.reference,
                                   allow_pickle=self.study.allow_pickle)
                self._resident = (model, load_tokenizer(path, role=self.reference))
        return self._resident

    def live(self, seed: int | None = None):
        """The resident model wrapped for in-place weight swaps, its edits drawing random frames from a seed."""
        from ..edits.apply import LiveModel

        if self._live is None:
            model, _ = self.resident()
            self._live = LiveModel(model, self.subspaces(), self.checkpoint(self.reference).names)
        self._live.subspaces = self.subspaces(seed)  # same reference weights: restore() is unaffected
        return self._live

    def show(self, role: str) -> tuple[Any, Any]:
        """The resident model holding the weights of a model role (the reference, base, a fine-tune)."""
        live = self.live()
        if role == self.reference:
            live.restore()
        else:
            live.load(self.checkpoint(role))
        return self.resident()

    def judge(self, spec: Any, batch_size: int):
        """The judge of a spec (NAME or {name: NAME, k: v}), built once per worker and reused across jobs."""
        from ..evaluate.judges import JUDGES, JudgeRuntime, make_judge
        from ..files import config_digest

        spec = JUDGES.spec(spec, "evaluation.harm.judge")
        runtime = JudgeRuntime(device=self.context.device, batch_size=batch_size, allow_pickle=self.study.allow_pickle,
                               quiet=bool(os.environ.get("SAFETY_SUBSPACES_QUIET")))
        key = config_digest({"spec": spec.as_plain(), "runtime": runtime.__dict__})
        if key not in self._judges:
            self._judges[key] = make_judge(spec, runtime)
        return self._judges[key]

    def analysis_context(self, seed: int | None = None) -> "WorkerContext":
        """The study's models as an analysis context that reads through this worker (random frames from a seed)."""
        seed = self.study.seed if seed is None else seed
        if seed not in self._analysis_contexts:
            self._analysis_contexts[seed] = WorkerContext(self, seed)
        return self._analysis_contexts[seed]

    def run(self, job: Job) -> tuple[Rows, float]:
        """Run one job with its kind's handler; return its (table, row) results and its wall time."""
        start = time.perf_counter()
        with profiling.collecting(self.context.profile) as profile:
            rows = kind_of(job.kind).run(self, job)
        if profile is not None:
            write_json(self.run_dir / layout.PROFILES / f"{job.id}.json",
                       {"job": job.id, "kind": job.kind, "label": job.label, "stages": profile.table()})
        return rows, time.perf_counter() - start


class WorkerContext(AnalysisContext):
    """A worker's models as an analysis context: its checkpoints, its subspaces, its resident model lent per role."""

    def __init__(self, worker: Worker, seed: int | None = None):
        study = worker.study
        super().__init__(worker.context.models, reference=study.reference, finetunes=list(study.finetunes),
                         seed=study.seed if seed is None else seed, device=worker.context.device, dtype=study.dtype,
                         svd_method=study.projection.svd_method, allow_pickle=study.allow_pickle)
        self.worker = worker

    def checkpoint(self, role: str):
        """The worker's checkpoint of a role (memoised tensors included)."""
        return self.worker.checkpoint(role)

    def subspaces(self):
        """The worker's alignment subspaces, seeded as this context."""
        return self.worker.subspaces(self.seed)

    @contextmanager
    def loaded(self, role: str) -> Iterator[tuple[Any, Any]]:
        """The resident model holding the role's weights, put back to the reference afterwards."""
        model, tokenizer = self.worker.show(role)
        try:
            yield model, tokenizer
        finally:
            self.worker.live().restore()
