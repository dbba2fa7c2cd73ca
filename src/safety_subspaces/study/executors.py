"""Executors run jobs and hand back results as each finishes: in this process, or on Ray actors with a resident model."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import ClassVar, Iterator, Sequence

from ..errors import UserError
from .config import Executor as ExecutorConfig
from .plan import Job
from .worker import Context, Rows, Worker, register_handlers

EXECUTORS: dict[str, type["BaseExecutor"]] = {}


@dataclass
class Outcome:
    """A finished job: its rows and time, or its error (a user error stops the study)."""

    job: Job
    rows: Rows | None
    seconds: float
    worker: str
    error: str | None = None
    user_error: bool = False


def executor(cls: type["BaseExecutor"]) -> type["BaseExecutor"]:
    """Register an executor class under its name."""
    EXECUTORS[cls.name] = cls
    return cls


def run_guarded(worker: Worker, job: Job) -> Outcome:
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

    name: ClassVar[str] = ""

    def __init__(self, context: Context, config: ExecutorConfig):
        self.context, self.config = context, config

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Yield one Outcome per job, in completion order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources."""


@executor
class LocalExecutor(BaseExecutor):
    """One in-process worker; jobs run one after another."""

    name = "local"

    def __init__(self, context: Context, config: ExecutorConfig):
        super().__init__(context, config)
        register_handlers()
        self.worker = Worker(context, "local")

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Run jobs in order."""
        for job in jobs:
            yield run_guarded(self.worker, job)


class _RemoteWorker:
    """The Ray actor body: a Worker kept alive between jobs."""

    def __init__(self, context: Context, name: str):
        register_handlers()
        self.worker = Worker(context, name)

    def run(self, job: Job) -> Outcome:
        """Run one job."""
        return run_guarded(self.worker, job)


@executor
class RayExecutor(BaseExecutor):
    """Ray actors, each holding the reference model resident; one GPU per actor where GPUs exist."""

    name = "ray"

    def __init__(self, context: Context, config: ExecutorConfig):
        super().__init__(context, config)
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs ray: pip install 'ray>=2.40'") from None
        self.ray = ray
        self.started_here = False
        if not ray.is_initialized():
            reachable(config.address)
            try:
                if config.address:
                    ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(1, config.workers or 1) * max(1, int(config.cpus_per_worker)),
                             include_dashboard=False, log_to_driver=False,
                             runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", **context.environment}})
                self.started_here = True
            except Exception as exc:
                raise UserError(f"the ray executor could not start ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        gpus = config.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        count = config.workers or max(1, int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus else 1)
        remote = ray.remote(num_cpus=config.cpus_per_worker, num_gpus=gpus)(_RemoteWorker)
        self.actors = [remote.remote(context, f"ray-{i}") for i in range(count)]

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Keep every actor busy with one job at a time; yield outcomes as they complete."""
        queue = list(jobs)
        running: dict = {}
        idle = list(self.actors)
        while queue or running:
            while queue and idle:
                actor = idle.pop()
                job = queue.pop(0)
                running[actor.run.remote(job)] = actor
            done, _ = self.ray.wait(list(running), num_returns=1)
            for ref in done:
                idle.append(running.pop(ref))
                try:
                    yield self.ray.get(ref)
                except Exception as exc:  # the actor died
                    raise UserError(f"a ray worker failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None

    def close(self) -> None:
        """Stop the actors (and Ray, if this executor started it)."""
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started_here:
            self.ray.shutdown()


def reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse a host:port Ray address that accepts no connection (Ray itself would retry for minutes)."""
    import socket

    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError):
        raise UserError(f"the ray executor could not start: nothing answers at {address}") from None


def make_executor(context: Context, config: ExecutorConfig) -> BaseExecutor:
    """The configured executor."""
    return EXECUTORS[config.kind](context, config)


def pass_environment() -> dict[str, str]:
    """Environment settings workers inherit (offline flags, caches, the zoo, threads, the judge key variable name)."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "SAFETY_SUBSPACES_HOME",
            "SAFETY_SUBSPACES_ZOO", "SAFETY_SUBSPACES_THREADS", "SAFETY_SUBSPACES_QUIET")
    return {key: os.environ[key] for key in keys if key in os.environ}
