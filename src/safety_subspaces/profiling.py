"""Per-stage timing (`--profile`): wall and CPU seconds of read, decompose, frames, products, write, evaluate, swap.

Code marks its stages with `stage(name)`; while a `Profile` is active (`collecting()`), each stage's time is added
to it, exclusive of the stages nested inside it (a decomposition that reads its tensor counts the read under
"read"), so the stages add up to at most the wall time of the block. With no active profile, `stage` costs two
attribute look-ups. CPU seconds are the process's (every thread), from time.process_time.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

STAGES = ("read", "decompose", "cache", "frames", "products", "write", "evaluate", "swap", "load", "capture")
STAGE_HELP = {
    "read": "checkpoint tensors read, cast to float32 and differenced",
    "decompose": "exact decompositions of Δ tensors (float64)",
    "cache": "SVD/frame cache files read and written",
    "frames": "subspace frames built (Haar frames, column orders)",
    "products": "Fᵀ Δ_T products and the float64 norms and inner products",
    "write": "edited checkpoints and run files written",
    "evaluate": "generation, judges and utility of evaluated models",
    "swap": "edited weights computed and copied into a resident model",
    "load": "models loaded into memory",
    "capture": "forward passes capturing activations",
}


@dataclass
class Totals:
    """Accumulated exclusive wall and CPU seconds of one stage and how often it ran."""

    wall: float = 0.0
    cpu: float = 0.0
    calls: int = 0


@dataclass
class Profile:
    """Stage totals collected while active, and the wall/CPU time of the whole collecting block."""

    stages: dict[str, Totals] = field(default_factory=dict)
    wall: float = 0.0
    cpu: float = 0.0
    _stack: list[list[float]] = field(default_factory=list)  # per open stage: [wall, cpu] spent in nested stages

    def add(self, name: str, wall: float, cpu: float, calls: int = 1) -> None:
        """Add time to a stage."""
        totals = self.stages.setdefault(name, Totals())
        totals.wall += wall
        totals.cpu += cpu
        totals.calls += calls

    def merge(self, rows: Iterable[Mapping]) -> None:
        """Add the rows of another profile's table (e.g. a study job's) to this one."""
        for row in rows:
            if row["stage"] in ("other", "total"):
                continue
            self.add(row["stage"], float(row["wall_s"]), float(row["cpu_s"]), int(row.get("calls", 0)))

    def table(self) -> list[dict]:
        """Rows stage, wall_s, cpu_s, calls (known stages first), then "other" (the rest) and "total"."""
        order = [s for s in STAGES if s in self.stages] + sorted(s for s in self.stages if s not in STAGES)
        rows = [{"stage": s, "wall_s": round(self.stages[s].wall, 4), "cpu_s": round(self.stages[s].cpu, 4),
                 "calls": self.stages[s].calls} for s in order]
        staged_wall = sum(t.wall for t in self.stages.values())
        staged_cpu = sum(t.cpu for t in self.stages.values())
        if self.wall > 0:
            rows.append({"stage": "other", "wall_s": round(max(self.wall - staged_wall, 0.0), 4),
                         "cpu_s": round(max(self.cpu - staged_cpu, 0.0), 4), "calls": 0})
            rows.append({"stage": "total", "wall_s": round(self.wall, 4), "cpu_s": round(self.cpu, 4), "calls": 0})
        return rows


_ACTIVE: ContextVar[Profile | None] = ContextVar("safety_subspaces_profile", default=None)


def active() -> Profile | None:
    """The profile collecting now, if any."""
    return _ACTIVE.get()


@contextmanager
def collecting(enabled: bool = True) -> Iterator[Profile | None]:
    """Collect stage times for the block into a new Profile (None and nothing collected when not enabled)."""
    if not enabled:
        yield None
        return
    profile = Profile()
    token = _ACTIVE.set(profile)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield profile
    finally:
        profile.wall += time.perf_counter() - wall
        profile.cpu += time.process_time() - cpu
        _ACTIVE.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the block's time under a stage of the active profile (exclusive of nested stages)."""
    profile = _ACTIVE.get()
    if profile is None:
        yield
        return
    wall, cpu = time.perf_counter(), time.process_time()
    profile._stack.append([0.0, 0.0])
    try:
        yield
    finally:
        nested_wall, nested_cpu = profile._stack.pop()
        spent_wall, spent_cpu = time.perf_counter() - wall, time.process_time() - cpu
        profile.add(name, spent_wall - nested_wall, spent_cpu - nested_cpu)
        if profile._stack:
            profile._stack[-1][0] += spent_wall
            profile._stack[-1][1] += spent_cpu


def format_table(rows: list[dict]) -> str:
    """The profile table as aligned text lines (stage, wall s, CPU s, calls, share of the total wall)."""
    total = next((r["wall_s"] for r in rows if r["stage"] == "total"), 0.0) or sum(r["wall_s"] for r in rows)
    lines = [f"{'stage':<10} {'wall s':>9} {'CPU s':>9} {'calls':>7} {'wall %':>7}"]
    for row in rows:
        share = 100 * row["wall_s"] / total if total else 0.0
        calls = str(row["calls"]) if row["calls"] else ""
        lines.append(f"{row['stage']:<10} {row['wall_s']:>9.3f} {row['cpu_s']:>9.3f} {calls:>7} {share:>6.1f}%")
    return "\n".join(lines)
