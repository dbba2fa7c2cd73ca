"""Run a study in five stages: 1 resolve → 2 materialise → 3 plan → 4 execute → 5 report.

1. resolve: check every input, find each given model's local path; nothing is built or written.
2. materialise: build the organism zoo if an input needs it, choose and lock the run directory, write its config,
   fine-tune the recipes' models into it, fingerprint every model.
3. plan: the typed jobs with content-hash ids, registered in the store; finished ones are skipped.
4. execute: the pending jobs on the configured executor; each job's rows and completion commit together.
5. report: report.html, CSV tables and figures, from the store only.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .. import layout, progress, rundir
from ..errors import UserError
from ..files import make_dirs, output_lock, remove_created, write_json, write_yaml
from .config import Study, study_document
from .executors import Outcome, make_executor, pass_environment
from .inputs import CheckedInputs, build_zoo, check_inputs, model_roles
from .jobs import Job
from .plan import plan
from .store import Store
from .worker import Context


@dataclass
class RunResult:
    """What a study run did."""

    run_dir: Path
    planned: int
    skipped: int
    completed: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    report: Path | None = None


@dataclass
class Materialised:
    """Stage 2's result: the locked run directory, its store, and every model's local path and fingerprint."""

    run_dir: Path
    store: Store
    paths: dict[str, str]
    fingerprints: dict[str, str]


def choose_run_dir(out: Path, document: dict[str, Any] | None, *, force: bool) -> Path:
    """The run directory: out itself, or with --force a fresh sibling when out holds a different study."""
    return rundir.choose_run_dir(out, kind="study", identity=document, force=force, what="run directory")[0]


NOT_IDENTITY = ("allow_pickle", "inference")  # a permission, and settings that only shape the report


def identity_of(document: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    """What identifies a study run: the resolved config (less permissions such as allow_pickle and the report's
    inference settings) and input fingerprints."""
    science = {key: value for key, value in document.items() if key not in NOT_IDENTITY}
    if science.get("random_seeds") == 1:
        del science["random_seeds"]  # one frame per kind: the jobs of a run made before random_seeds existed
    return {"study": science, "inputs": inputs}


def fingerprint(study: Study, paths: dict[str, str]) -> dict[str, str]:
    """The content fingerprint of each model path."""
    from ..checkpoints import Checkpoint

    return {role: Checkpoint(path, role=role, allow_pickle=study.allow_pickle).fingerprint() for role, path in paths.items()}


# ---------------------------------------------------------------- 1. resolve


def resolve(study: Study) -> CheckedInputs:
    """Stage 1: check every input and find the local path of each model given as a checkpoint (nothing is built)."""
    return check_inputs(study, offline=False)


# ---------------------------------------------------------------- 2. materialise


def run_recipes(study: Study, run_dir: Path, paths: dict[str, str]) -> dict[str, str]:
    """The given paths plus the models fine-tuning recipes make (checkpoints under run_dir/models, reused if there).

    The resolve stage has checked that each recipe starts from a model available before it.
    """
    from .recipes import run_recipe, start_of

    paths = dict(paths)
    for role, source in model_roles(study):
        if source.recipe is not None:
            paths[role] = str(run_recipe(role, source.recipe, paths[start_of(study, role, source)],
                                         run_dir / layout.MODELS / role, allow_pickle=study.allow_pickle,
                                         base=paths.get("base"), seed=study.seed))
    return paths


@contextmanager
def materialised(study: Study, resolved: CheckedInputs, out: Path, *, force: bool) -> Iterator[Materialised]:
    """Stage 2: the zoo if needed, then the run directory (locked for the block, its config written) and every model."""
    if resolved.needs_zoo:
        build_zoo()
        resolved = resolve(study)  # what waited for the zoo is checked now
    document = study_document(study)
    inputs = fingerprint(study, resolved.paths)
    identity = identity_of(document, inputs)
    run_dir = choose_run_dir(out, identity, force=force)
    with output_lock(run_dir):
        if choose_run_dir(out, identity, force=force) != run_dir:
            raise UserError(f"run directory {run_dir} changed while this run was starting; run the command again")
        created = make_dirs(run_dir)
        if not (run_dir / layout.CONFIG).exists():
            try:
                write_yaml(run_dir / layout.CONFIG, rundir.config_document(identity, kind="study", config=document,
                                                                          inputs=inputs))
            except BaseException:
                remove_created(created)  # a run directory without its config would look like a foreign one
                raise
        store = Store(run_dir / layout.STORE)
        try:
            paths = run_recipes(study, run_dir, resolved.paths)
            from .recipes import run_defence_recipes

            paths = run_defence_recipes(study, run_dir, paths)
            made = {role: path for role, path in paths.items() if role not in inputs}
            yield Materialised(run_dir, store, paths, {**inputs, **fingerprint(study, made)})
        finally:
            store.close()


# ---------------------------------------------------------------- 3. plan


def plan_jobs(study: Study, made: Materialised) -> tuple[list[Job], list[Job]]:
    """Stage 3: (every job, the pending ones): planned, registered in the store, the manifest written."""
    from ..analyses.common import num_layers
    from ..model_dir import read_config

    jobs = plan(study, made.fingerprints, num_layers(read_config(Path(made.paths["base"]))))
    made.store.add_jobs((job.id, job.kind, job.plain()) for job in jobs)
    done = made.store.done_ids()
    write_manifest(made, study, jobs)
    return jobs, [job for job in jobs if job.id not in done]


def write_manifest(made: Materialised, study: Study, jobs: list[Job]) -> None:
    """manifest.json: versions, seed, model paths and fingerprints, job count and the tables the jobs fill."""
    from .jobs import kind_of

    tables = sorted({table for job in jobs for table in kind_of(job.kind).tables(job.spec)})
    write_json(made.run_dir / layout.MANIFEST, {
        **rundir.manifest_header(), "study": study.name, "seed": study.seed, "reference": study.reference,
        "models": {role: {"path": path, "fingerprint": made.fingerprints[role]} for role, path in made.paths.items()},
        "jobs": len(jobs), "tables": tables,
    })


# ---------------------------------------------------------------- 4. execute


def record(store: Store, outcome: Outcome) -> None:
    """Store a finished job's rows and completion atomically, or its failure."""
    if outcome.error is None:
        store.complete(outcome.job.id, outcome.rows or [], outcome.seconds, outcome.worker)
    else:
        store.fail(outcome.job.id, outcome.error)


def execute(study: Study, made: Materialised, pending: list[Job], result: RunResult, *, device: str,
            threads: int | None) -> None:
    """Stage 4: run pending jobs on the configured executor with a progress bar; stop at the first user error."""
    from ..runtime import resolve_device

    context = Context(study_document(study), made.paths, str(made.run_dir),
                      resolve_device(study.device if device == "auto" else device), threads or study.threads,
                      pass_environment())
    runner = make_executor(context, study.executor)
    try:
        with progress.bar(f"study {study.name}", total=len(pending)) as update:
            for count, outcome in enumerate(runner.run(pending), 1):
                record(made.store, outcome)
                if outcome.error is None:
                    result.completed += 1
                else:
                    result.failed.append((outcome.job.label, outcome.error))
                    if outcome.user_error:
                        raise UserError(f"job {outcome.job.label} ({outcome.job.id}): {outcome.error}")
                update(1, status=outcome.job.label)
                if not progress.enabled():  # no live bar (not a terminal): one line per job
                    state = "done" if outcome.error is None else "FAILED"
                    progress.info(f"[{count}/{len(pending)}] {outcome.job.kind} {outcome.job.label}: {state} "
                                  f"in {outcome.seconds:.1f}s")
    finally:
        runner.close()


# ---------------------------------------------------------------- the five stages


def run_study(study: Study, out: Path, *, force: bool = False, report: bool = True, device: str = "auto",
              threads: int | None = None) -> RunResult:
    """Resolve, materialise, plan, execute and report a study; finished jobs of an earlier run are kept.

    Nothing is created before the inputs are checked; the run directory is locked while the study runs.
    """
    started = time.time()
    resolved = resolve(study)
    with materialised(study, resolved, out, force=force) as made:
        jobs, pending = plan_jobs(study, made)
        result = RunResult(made.run_dir, len(jobs), len(jobs) - len(pending), 0)
        if pending:
            execute(study, made, pending, result, device=device, threads=threads)
        result.seconds = time.time() - started
        if report:
            from .report import write_report

            result.report = write_report(made.run_dir)
    return result


def default_study_path() -> Path:
    """The built-in organism study config."""
    return Path(__file__).resolve().parent.parent / "resources" / "studies" / "organism.yaml"
