"""Run a study: validate, materialise models, plan jobs, skip finished ones, execute, record, report."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, progress
from ..errors import UserError
from .. import rundir
from ..files import make_dirs, output_lock, remove_created, write_json, write_yaml
from ..layout import CONFIG as RUN_CONFIG
from .config import Study, study_document
from .executors import Outcome, make_executor, pass_environment
from .inputs import check_inputs, model_roles
from .plan import TABLES, Job, plan
from .store import Store
from .worker import Context

STORE = "results.sqlite"


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


def choose_run_dir(out: Path, document: dict[str, Any] | None, *, force: bool) -> Path:
    """The run directory: out itself, or with --force a fresh sibling when out holds a different study."""
    return rundir.choose_run_dir(out, kind="study", identity=document, force=force, what="run directory")[0]


def materialise(study: Study, run_dir: Path, paths: dict[str, str]) -> dict[str, str]:
    """Add the models made by fine-tuning recipes (checkpoints under run_dir/models) to the given paths.

    check_inputs has already checked that each recipe starts from a model available before it.
    """
    from .recipes import run_recipe

    paths = dict(paths)
    for role, source in model_roles(study):
        if source.recipe is not None:
            start_from = source.recipe.get("from", "base" if role in ("aligned", "safety_tuned") else study.reference)
            paths[role] = str(run_recipe(role, source.recipe, paths[start_from], run_dir / "models" / role,
                                         allow_pickle=study.allow_pickle))
    return paths


def num_layers(path: str) -> int:
    """Decoder layers of a model (from its config)."""
    from ..model_dir import read_config

    config = read_config(Path(path))
    return int(config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers") or 0)


def record(store: Store, outcome: Outcome) -> None:
    """Store a finished job's rows and completion atomically, or its failure."""
    if outcome.error is None:
        store.complete(outcome.job.id, outcome.rows or [], outcome.seconds, outcome.worker)
    else:
        store.fail(outcome.job.id, outcome.error)


def identity_of(document: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    """What identifies a study run: the resolved config (less permissions such as allow_pickle) and input fingerprints."""
    science = {key: value for key, value in document.items() if key != "allow_pickle"}
    return {"study": science, "inputs": inputs}


def run_study(study: Study, out: Path, *, force: bool = False, report: bool = True, device: str = "auto",
              threads: int | None = None) -> RunResult:
    """Check every input, then run every job of a study that is not finished yet, then write the report.

    Nothing is created before the inputs are checked; the run directory is locked while the study runs.
    """
    from ..checkpoints import Checkpoint

    started = time.time()
    document = study_document(study)
    given = check_inputs(study, offline=False).paths
    inputs = {role: Checkpoint(path, role=role, allow_pickle=study.allow_pickle).fingerprint()
              for role, path in given.items()}
    identity_document = identity_of(document, inputs)
    run_dir = choose_run_dir(out, identity_document, force=force)
    with output_lock(run_dir):
        if choose_run_dir(out, identity_document, force=force) != run_dir:
            raise UserError(f"run directory {run_dir} changed while this run was starting; run the command again")
        created = make_dirs(run_dir)
        if not (run_dir / RUN_CONFIG).exists():
            try:
                write_yaml(run_dir / RUN_CONFIG, rundir.config_document(identity_document, kind="study", config=document,
                                                                        inputs=inputs))
            except BaseException:
                remove_created(created)  # a run directory without its config would look like a foreign one
                raise
        result = run_jobs(study, run_dir, given, inputs, device=device, threads=threads)
        result.seconds = time.time() - started
        if report:
            from ..report import write_report

            result.report = write_report(run_dir)
    return result


def run_jobs(study: Study, run_dir: Path, given: dict[str, str], inputs: dict[str, str], *, device: str,
             threads: int | None) -> RunResult:
    """Materialise recipe models, plan the jobs, skip finished ones and execute the rest, recording each."""
    from ..checkpoints import Checkpoint
    from ..runtime import resolve_device

    store = Store(run_dir / STORE)
    try:
        paths = materialise(study, run_dir, given)
        fingerprints = {**inputs, **{role: Checkpoint(paths[role], role=role, allow_pickle=study.allow_pickle).fingerprint()
                                     for role in paths if role not in inputs}}
        jobs = plan(study, fingerprints, num_layers(paths["base"]))
        store.add_jobs((job.id, job.kind, dict(job.spec)) for job in jobs)
        done = store.done_ids()
        pending = [job for job in jobs if job.id not in done]
        write_manifest(run_dir, study, paths, fingerprints, len(jobs))
        device = study.device if device == "auto" else device
        context = Context(study_document(study), paths, str(run_dir), resolve_device(device),
                          threads or study.threads, pass_environment())
        result = RunResult(run_dir, len(jobs), len(jobs) - len(pending), 0)
        if pending:
            execute(study, context, store, pending, result)
    finally:
        store.close()
    return result


def execute(study: Study, context: Context, store: Store, pending: list[Job], result: RunResult) -> None:
    """Run pending jobs on the configured executor with a progress bar; stop at the first user error."""
    runner = make_executor(context, study.executor)
    try:
        with progress.bar(f"study {study.name}", total=len(pending)) as update:
            for count, outcome in enumerate(runner.run(pending), 1):
                record(store, outcome)
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


def write_manifest(run_dir: Path, study: Study, paths: dict[str, str], fingerprints: dict[str, str], jobs: int) -> None:
    """manifest.json: versions, seed, input paths and fingerprints, job count."""
    import torch

    write_json(run_dir / "manifest.json", {
        "tool": f"safety-subspaces {__version__}", "python": platform.python_version(), "torch": torch.__version__,
        "study": study.name, "seed": study.seed, "reference": study.reference,
        "models": {role: {"path": path, "fingerprint": fingerprints[role]} for role, path in paths.items()},
        "jobs": jobs, "tables": sorted(set(TABLES.values())),
    })


def default_study_path() -> Path:
    """The built-in organism study config."""
    return Path(__file__).resolve().parent.parent / "resources" / "studies" / "organism.yaml"
