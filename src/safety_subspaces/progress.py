"""Progress bars (rich) for long work; quiet when not attached to a terminal or when asked."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def enabled() -> bool:
    """Whether progress bars are shown (stderr is a terminal and SAFETY_SUBSPACES_QUIET is unset)."""
    return sys.stderr.isatty() and not os.environ.get("SAFETY_SUBSPACES_QUIET")


def make_progress() -> Progress:
    """A rich Progress with count, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled(),
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over items with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in items:
            yield item
            progress.advance(task)


@contextmanager
def bar(description: str, total: int | None):
    """A context manager yielding update(advance=1, status=None) for one progress bar."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")

        def update(advance: float = 1, status: str | None = None) -> None:
            if status is None:
                progress.advance(task, advance)
            else:
                progress.update(task, advance=advance, status=status)

        yield update


def info(message: str) -> None:
    """Print a status line to stderr unless quiet."""
    if not os.environ.get("SAFETY_SUBSPACES_QUIET"):
        console.print(message, highlight=False)
