"""Job kinds of a study: each a registered class with its typed spec (a frozen dataclass) and its handler.

A job is a kind, a spec and an id: a content hash of both and of the fingerprints of the models it reads. The
planner builds specs, the store keeps them as plain data (`as_plain`), and `Job.parse` reads them back with the schema
builder. A worker looks a job's handler up here; handlers import the worker type, never the other way round.
Adding a job kind is one new module in this package (or a plugin, entry-point group `safety_subspaces.jobs`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ...registry import Registry
from ...schema import as_plain, build

JOB_KINDS = Registry("job kind", "safety_subspaces.jobs", __name__)


@dataclass(frozen=True)
class Decomposition:
    """What cached spectra come from: the cache version and the SVD method (a change of either recomputes the rows)."""

    version: str
    method: str


class JobKind:
    """A kind of study job: its spec type, a label for progress lines, and the handler that turns a spec into rows."""

    spec: ClassVar[type]

    def label(self, spec: Any) -> str:
        """A short human description."""
        raise NotImplementedError

    def tables(self, spec: Any) -> list[str]:
        """The result tables its rows go to."""
        raise NotImplementedError

    def run(self, worker: Any, job: "Job") -> list[tuple[str, dict[str, Any]]]:
        """The job's (table, row) results, computed by a study worker."""
        raise NotImplementedError


def kind_of(name: str) -> JobKind:
    """The registered job kind of a name."""
    return JOB_KINDS.build(name, "job kind")


@dataclass(frozen=True)
class Job:
    """One unit of work: what to do (kind, typed spec) and its content-hash id."""

    id: str
    kind: str
    spec: Any

    @property
    def label(self) -> str:
        """A short human description for progress lines."""
        return kind_of(self.kind).label(self.spec)

    def plain(self) -> dict[str, Any]:
        """The spec as plain data (what the store keeps)."""
        return as_plain(self.spec)

    @classmethod
    def parse(cls, job_id: str, kind: str, plain: Mapping[str, Any]) -> "Job":
        """A stored job read back into its typed spec."""
        return cls(job_id, kind, build(kind_of(kind).spec, dict(plain), f"job {job_id}"))


def job_id(kind: str, spec: Any, fingerprints: Mapping[str, str]) -> str:
    """A content hash of the kind, the spec (as plain data) and the fingerprints of the models it touches."""
    payload = json.dumps({"kind": kind, "spec": as_plain(spec), "inputs": dict(sorted(fingerprints.items()))},
                         sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=10).hexdigest()


def make_job(kind: str, spec: Any, fingerprints: Mapping[str, str], models: list[str]) -> Job:
    """A job whose id covers the fingerprints of the given models."""
    return Job(job_id(kind, spec, {m: fingerprints[m] for m in models}), kind, spec)
