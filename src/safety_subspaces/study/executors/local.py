"""The local executor: one in-process worker; jobs run one after another."""

from __future__ import annotations

from typing import Iterator, Sequence

from ..jobs import Job
from ..worker import Context, Worker
from . import EXECUTORS, BaseExecutor, Outcome, run_guarded


@EXECUTORS.register("local")
class LocalExecutor(BaseExecutor):
    """One in-process worker; jobs run one after another."""

    def __init__(self, context: Context):
        super().__init__(context)
        self.worker = Worker(context, "local")

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Run jobs in order."""
        for job in jobs:
            yield run_guarded(self.worker, job)
