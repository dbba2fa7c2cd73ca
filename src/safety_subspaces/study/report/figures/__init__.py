"""The report's figures: each a registered function that draws PNGs from the report's data, one per module.

A figure's docstring's first line is its section heading in report.html, the paragraphs after it its caption, and
`position` orders the sections (the
paper's figure order; a figure without one comes after them). Adding a figure is one new module in this package (or
a plugin, entry-point group `safety_subspaces.figures`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .... import layout
from ....registry import Registry
from ...config import GridEntry, Study
from ..paper_tables import PaperTable

FIGURES = Registry("figure", "safety_subspaces.figures", __name__, context=("report",))
LAST = 1000  # the position of a figure that names none


@dataclass
class ReportData:
    """What figures draw from: the run directory, the typed study, its result tables, the paper tables, the jobs."""

    run_dir: Path
    study: Study
    tables: dict[str, list[dict[str, Any]]]
    paper: list[PaperTable]
    jobs: list[dict[str, Any]]

    @property
    def figures_dir(self) -> Path:
        """Where the figures go."""
        return self.run_dir / layout.FIGURES

    @property
    def grid(self) -> list[tuple[GridEntry, str]]:
        """(grid entry, metric) of every paper table, in table order."""
        return [(entry, metric) for entry in self.study.projection.grid for metric in entry.metrics]


def figure(name: str, position: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a report figure under name, shown at this position among the sections."""

    def register(draw: Callable[..., Any]) -> Callable[..., Any]:
        draw.position = position  # type: ignore[attr-defined]
        return FIGURES.register(name)(draw)

    return register


def caption_of(draw: Callable[..., Any]) -> str:
    """A figure's caption: its docstring after the first paragraph (the heading), unwrapped."""
    paragraphs = (draw.__doc__ or "").strip().split("\n\n")
    return " ".join(" ".join(line.strip() for line in part.splitlines()) for part in paragraphs[1:]).strip()


def draw_figures(report: ReportData) -> list[tuple[str, list[Path], str]]:
    """(section heading, PNG paths, caption) of every registered figure, in position order (figures with nothing to
    draw: no paths)."""
    entries = sorted((FIGURES.get(name) for name in FIGURES.names()),
                     key=lambda entry: getattr(entry.factory, "position", LAST))
    sections = []
    for entry in entries:
        drawn = FIGURES.build(entry.name, "figure", report=report)
        paths = [Path(p) for p in (drawn if isinstance(drawn, (list, tuple)) else [drawn]) if p is not None]
        sections.append((entry.summary.rstrip("."), paths, caption_of(entry.factory)))
    return sections
