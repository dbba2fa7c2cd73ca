"""Run a study: validate, materialise models, plan jobs, skip finished ones, execute, record, report."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, progress
from ..errors import UserError
from ..files import RUN_CONFIG, config_digest, write_json, write_yaml
from .config import ModelSource, Study, study_document
from .executors import Outcome, make_executor, pass_environment
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


def choose_run_dir(out: Path, document: dict[str, Any], *, force: bool) -> Path:
    """The run directory: out itself, or with --force a fresh sibling when out holds a different study."""
    import yaml

    out = Path(out)
    identity = config_digest(document)
    candidate, suffix = out, 1
    while True:
        config = candidate / RUN_CONFIG
        if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
            return candidate
        if config.exists():
            try:
                previous = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                previous = {}
            if previous.get("kind") == "study" and previous.get("identity") == identity:
                return candidate
        elif not force:
            raise UserError(f"run directory {candidate} is not empty and holds no study; choose another --out")
        if not force:
            raise UserError(f"run directory {candidate} holds a different study (its {RUN_CONFIG} differs); "
                            "pass --force to start a new run directory beside it, or choose another --out")
        suffix += 1
        candidate = out.with_name(f"{out.name}-{suffix}")


def resolve_path(reference: str, role: str) -> str:
    """A local directory for a model reference: organism:NAME (zoo built if absent), a directory, or a hub id."""
    from ..models import resolve_model

    if reference.startswith("organism:"):
        return str(organism_zoo() / reference.split(":", 1)[1])
    return str(resolve_model(reference, role=role))


def organism_zoo() -> Path:
    """The default organism zoo, built on first use ($SAFETY_SUBSPACES_ZOO points elsewhere)."""
    from ..organism import build
    from ..paths import zoo_dir

    zoo = zoo_dir()
    if not (zoo / "manifest.json").exists():
        progress.info(f"building the organism zoo in {zoo} (a few minutes, once)")
        build(zoo, preset="default")
    return zoo


def model_roles(study: Study) -> list[tuple[str, ModelSource]]:
    """Every model role of a study with its source, in dependency order."""
    roles = []
    for role in ("base", "aligned", "safety_tuned"):
        source = getattr(study.models, role)
        if source is not None:
            roles.append((role, source))
    return roles + list(study.finetunes.items())


def existing_models(study: Study) -> dict[str, str]:
    """Local paths of the models given as checkpoints (not recipes)."""
    return {role: resolve_path(source.path, role) for role, source in model_roles(study) if source.path is not None}


def materialise(study: Study, run_dir: Path, paths: dict[str, str]) -> dict[str, str]:
    """Add the models made by fine-tuning recipes (checkpoints under run_dir/models) to the given paths."""
    paths = dict(paths)
    for role, source in model_roles(study):
        if source.recipe is None:
            continue
        from .recipes import run_recipe

        start_from = source.recipe.get("from", "base" if role in ("aligned", "safety_tuned") else study.reference)
        if start_from not in paths:
            raise UserError(f"{role}.recipe.from: {start_from!r} is not a model available before {role}")
        paths[role] = str(run_recipe(role, source.recipe, paths[start_from], run_dir / "models" / role))
    return paths


def num_layers(path: str) -> int:
    """Decoder layers of a model (from its config)."""
    from ..models import read_config

    config = read_config(Path(path))
    return int(config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers") or 0)


def record(store: Store, outcome: Outcome) -> None:
    """Store a finished job's rows and completion atomically, or its failure."""
    if outcome.error is None:
        store.complete(outcome.job.id, outcome.rows or [], outcome.seconds, outcome.worker)
    else:
        store.fail(outcome.job.id, outcome.error)


def run_study(study: Study, out: Path, *, force: bool = False, report: bool = True, device: str = "auto",
              threads: int | None = None) -> RunResult:
    """Run every job of a study that is not finished yet, then write the report."""
    from ..checkpoints import Checkpoint
    from ..models import default_device

    started = time.time()
    document = study_document(study)
    given = existing_models(study)
    inputs = {role: Checkpoint(path, role=role).fingerprint() for role, path in given.items()}
    identity_document = {"study": document, "inputs": inputs}
    run_dir = choose_run_dir(out, identity_document, force=force)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / RUN_CONFIG).exists():
        write_yaml(run_dir / RUN_CONFIG, {"kind": "study", "identity": config_digest(identity_document),
                                          "config": document, "inputs": inputs})
    store = Store(run_dir / STORE)
    try:
        paths = materialise(study, run_dir, given)
        fingerprints = {**inputs, **{role: Checkpoint(paths[role], role=role).fingerprint()
                                     for role in paths if role not in inputs}}
        jobs = plan(study, fingerprints, num_layers(paths["base"]))
        store.add_jobs((job.id, job.kind, dict(job.spec)) for job in jobs)
        done = store.done_ids()
        pending = [job for job in jobs if job.id not in done]
        write_manifest(run_dir, study, paths, fingerprints, len(jobs))
        device = study.device if device == "auto" else device
        context = Context(document, paths, str(run_dir), default_device() if device == "auto" else device,
                          threads or study.threads, pass_environment())
        result = RunResult(run_dir, len(jobs), len(jobs) - len(pending), 0)
        if pending:
            execute(study, context, store, pending, result)
    finally:
        store.close()
    result.seconds = time.time() - started
    if report:
        from ..report import write_report

        result.report = write_report(run_dir)
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
