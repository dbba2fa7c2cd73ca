"""Executors run a study's jobs and hand back results as each finishes: in this process, or on Ray actors.

An executor is a registered class built from the worker context and its options (`executor: NAME` or
`{name: NAME, k: v}` in a study, `run --executor NAME --executor-arg k=v`); a class may define `check(**options)`
to validate them before anything starts. Executors only run jobs; only the driver writes the store. Adding an
executor is one new module in this package (or a plugin, entry-point group `safety_subspaces.executors`).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ...errors import UserError
from ...registry import Registry, Spec
from ..jobs import Job

EXECUTORS = Registry("executor", "safety_subspaces.executors", __name__, context=("context",), flag="--executor")
DEFAULT_EXECUTOR = "local"


@dataclass
class Outcome:
    """A finished job: its rows and time, or its error (a user error stops the study)."""

    job: Job
    rows: list[tuple[str, dict[str, Any]]] | None
    seconds: float
    worker: str
    error: str | None = None
    user_error: bool = False


def run_guarded(worker: Any, job: Job) -> Outcome:
    """Run a job, turning errors into an Outcome (user errors flagged)."""
    try:
        rows, seconds = worker.run(job)
        return Outcome(job, rows, seconds, worker.name)
    except UserError as exc:
        return Outcome(job, None, 0.0, worker.name, str(exc), user_error=True)
    except Exception as exc:  # a bug or a resource problem: record it, keep the other jobs going
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return Outcome(job, None, 0.0, worker.name, detail)


class BaseExecutor:
    """Runs jobs; yields outcomes as they complete."""

    def __init__(self, context: Any):
        self.context = context

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Yield one Outcome per job, in completion order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources."""


def check_executor(spec: Spec, where: str = "executor") -> None:
    """Check an executor's options without starting it (its class's `check`, if it has one)."""
    entry = EXECUTORS.get(spec.name, where)
    options = EXECUTORS.options(spec.name, spec.options, where)
    check = getattr(entry.factory, "check", None)
    if check is not None:
        check(where=where, **options)


def make_executor(context: Any, spec: Spec) -> BaseExecutor:
    """The configured executor, started."""
    return EXECUTORS.build(spec, "executor", context=context)


def pass_environment() -> dict[str, str]:
    """Environment settings workers inherit (offline flags, caches, the zoo, threads, the judge key variable name)."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "SAFETY_SUBSPACES_HOME",
            "SAFETY_SUBSPACES_ZOO", "SAFETY_SUBSPACES_THREADS", "SAFETY_SUBSPACES_QUIET",
            "SAFETY_SUBSPACES_CACHE_BUDGET", "SAFETY_SUBSPACES_CACHE_DTYPE")
    return {key: os.environ[key] for key in keys if key in os.environ}
