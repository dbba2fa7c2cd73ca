"""The report's paper-style tables: per (scheme, fine-tune, metric) of the grid, reference rows and one row per kind."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..config import Study

HEADLINES = {"harm": "harm_score", "benign": "over_refusal_rate"}
METRIC_NAMES = {"utility": "utility", "harm": "harmfulness score (1-5)", "benign": "over-refusal rate"}


@dataclass
class Cell:
    """One table cell: a value (None when missing) and how many items it rests on."""

    value: float | None
    n: int = 0


def headline(rows: Iterable[Mapping[str, Any]], group: str) -> list[Mapping[str, Any]]:
    """The headline rows of a metric group: the task's flagged utility metric, the harm score, the over-refusal rate."""
    rows = [r for r in rows if r.get("metric_group") == group]
    if group == "utility":
        return [r for r in rows if r.get("headline")]
    return [r for r in rows if r.get("metric") == HEADLINES[group]]


def value_of(rows: Sequence[Mapping[str, Any]], **match: Any) -> Cell:
    """The value of the single row matching all fields (layer None: whole-model rows)."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if not found:
        return Cell(None)
    return Cell(found[0]["value"], int(found[0].get("n") or 0))


@dataclass
class PaperTable:
    """A paper-style table: reference rows, then one row per subspace kind, one column per fraction."""

    title: str
    metric: str
    fractions: list[float]
    references: list[tuple[str, Cell]]
    subspaces: list[tuple[str, list[Cell]]]

    def as_rows(self) -> list[dict[str, Any]]:
        """Flat rows for CSV export."""
        out = [{"table": self.title, "row": name, "fraction": "", "value": cell.value} for name, cell in self.references]
        for name, cells in self.subspaces:
            out.extend({"table": self.title, "row": name, "fraction": f, "value": c.value} for f, c in zip(self.fractions, cells))
        return out


def paper_tables(evaluation: Sequence[Mapping[str, Any]], study: Study) -> list[PaperTable]:
    """One table per (edit, fine-tune, metric) of the grid, whole-model edits."""
    fractions = list(study.projection.fractions)
    tables = []
    for entry in study.projection.grid:
        for group in entry.metrics:
            rows = [r for r in headline(evaluation, group) if r.get("layer") is None]
            references = [
                ("Base", value_of(rows, model="base", variant="reference")),
                ("Aligned" if study.reference == "aligned" else "Safety-tuned",
                 value_of(rows, model=study.reference, variant="reference")),
                (f"FT ({entry.finetune})", value_of(rows, model=entry.finetune, variant="reference")),
            ]
            subspaces = [
                (kind, [value_of(rows, model=entry.finetune, variant="projected", scheme=entry.scheme, subspace=kind,
                                 fraction=f) for f in fractions])
                for kind in study.projection.subspaces
            ]
            title = f"{METRIC_NAMES[group]} of the {entry.finetune} fine-tune, {entry.scheme} projection"
            tables.append(PaperTable(title, group, fractions, references, subspaces))
    return tables


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def table_html(table: PaperTable) -> str:
    """A paper table as HTML."""
    head = "".join(f"<th>ϱ = {f:g}</th>" for f in table.fractions)
    body = []
    for name, cell in table.references:
        body.append(f"<tr class='ref'><td>{html.escape(name)}</td><td colspan='{len(table.fractions)}'>{fmt(cell.value)}</td></tr>")
    for name, cells in table.subspaces:
        body.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{fmt(c.value)}</td>" for c in cells) + "</tr>")
    return (f"<table><caption>{html.escape(table.title)}</caption><thead><tr><th></th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")
