"""The Ray executor: actors that each keep the reference model resident; one GPU per actor where GPUs exist."""

from __future__ import annotations

from typing import Iterator, Sequence

from ...errors import UserError
from ..jobs import Job
from ..worker import Context, Worker
from . import EXECUTORS, BaseExecutor, Outcome, run_guarded


class _RemoteWorker:
    """The Ray actor body: a Worker kept alive between jobs."""

    def __init__(self, context: Context, name: str):
        self.worker = Worker(context, name)

    def run(self, job: Job) -> Outcome:
        """Run one job."""
        return run_guarded(self.worker, job)


@EXECUTORS.register("ray")
class RayExecutor(BaseExecutor):
    """Ray actors, each holding the reference model resident; one GPU per actor where GPUs exist."""

    def __init__(self, context: Context, *, address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float | None = None, cpus_per_worker: float = 1.0):
        """Connect to a cluster (or start a local instance) and start the actors.

        Args:
            address: a Ray cluster to connect to (host:port, auto, ray://...); default: start a local instance.
            workers: how many actors (default: one per GPU of the cluster, else one).
            gpus_per_worker: GPUs per actor (default: 1 when the cluster has GPUs, else 0).
            cpus_per_worker: CPUs per actor.
        """
        self.check(address=address, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker)
        super().__init__(context)
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs ray: pip install 'ray>=2.40'") from None
        self.ray = ray
        self.started_here = False
        if not ray.is_initialized():
            reachable(address)
            try:
                if address:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(1, workers or 1) * max(1, int(cpus_per_worker)),
                             include_dashboard=False, log_to_driver=False,
                             runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", **context.environment}})
                self.started_here = True
            except Exception as exc:
                raise UserError(f"the ray executor could not start ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        gpus = gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        count = workers or max(1, int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus else 1)
        remote = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus)(_RemoteWorker)
        self.actors = [remote.remote(context, f"ray-{i}") for i in range(count)]

    @staticmethod
    def check(*, address: str | None = None, workers: int | None = None, gpus_per_worker: float | None = None,
              cpus_per_worker: float = 1.0, where: str = "executor") -> None:
        """Worker counts and resources are positive."""
        if workers is not None and not workers >= 1:
            raise UserError(f"{where}.workers: must be at least 1, got {workers!r}")
        if gpus_per_worker is not None and not gpus_per_worker >= 0:
            raise UserError(f"{where}.gpus_per_worker: must be at least 0, got {gpus_per_worker!r}")
        if not cpus_per_worker > 0:
            raise UserError(f"{where}.cpus_per_worker: must be greater than 0, got {cpus_per_worker!r}")

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
