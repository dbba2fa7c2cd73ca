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
    """One table cell: a value (None when missing), how many items and seeds it rests on, and its 95 % interval (None
    when the run stored no per-item outcomes)."""

    value: float | None
    n: int = 0
    low: float | None = None
    high: float | None = None
    seeds: int = 1
    per_seed: tuple[float, ...] = ()  # a seeded kind's value at each frame seed (the spread the figures show)

    def interval(self, digits: int = 2) -> str:
        """The interval compactly, "[0.48, 0.55]" (empty without one)."""
        if self.low is None or self.high is None:
            return ""
        return f"[{fmt(self.low, digits)}, {fmt(self.high, digits)}]"


def headline(rows: Iterable[Mapping[str, Any]], group: str) -> list[Mapping[str, Any]]:
    """The headline rows of a metric group: the flagged ones (the task's utility metric, each judge's own headline:
    harm score, StrongREJECT score, WildGuard harmful rate, ...; the over-refusal rate); rows stored before judges
    flagged theirs, the harm score and over-refusal rate."""
    rows = [r for r in rows if r.get("metric_group") == group]
    if group == "utility" or any("headline" in r for r in rows):
        return [r for r in rows if r.get("headline") in (True, "True", "true")]
    return [r for r in rows if r.get("metric") == HEADLINES[group]]


def metric_title(rows: Sequence[Mapping[str, Any]], group: str) -> str:
    """How a table names its metric: the judge's scale label its rows carry ("StrongREJECT score (0–1)"), else the
    group's name."""
    labels = [r.get("label") for r in rows if r.get("label")]
    return str(labels[0]) if labels and group != "utility" else METRIC_NAMES[group]


def number(value: Any) -> float | None:
    """A stored number as a float (None for a missing one)."""
    return None if value in (None, "") or (isinstance(value, float) and math.isnan(value)) else float(value)


def value_of(rows: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]] = (), *, bootstrap: int = 2000,
             level: float = 0.95, **match: Any) -> Cell:
    """The cell of the rows matching all fields (layer None: whole-model rows): one row's value and interval, or, for a
    seeded kind's several frames (one row per seed), the mean over seeds with a bootstrap interval over items and seeds
    from their per-item outcomes."""
    from ... import stats
    from ...evaluate.comparisons import outcomes, select
    from ...runtime import stable_seed

    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if not found:
        return Cell(None)
    seeds = list(dict.fromkeys(r.get("seed") for r in found))
    first = found[0]
    if len(seeds) == 1:
        return Cell(number(first["value"]), int(first.get("n") or 0), number(first.get("ci_low")),
                    number(first.get("ci_high")))
    values = [number(r["value"]) for r in found if number(r["value"]) is not None]
    mean = sum(values) / len(values) if values else None
    where = {**match, "metric": first["metric"], "layer": first.get("layer"),
             **({"judge": first["judge"]} if first.get("judge") else {})}
    if not select(items, where):
        return Cell(mean, int(first.get("n") or 0), seeds=len(seeds), per_seed=tuple(values))
    side = outcomes(items, where)
    found_interval = stats.mean_interval(side.values, bootstrap=bootstrap, level=level,
                                         seed=stable_seed("cell", *sorted(map(str, where.items()))) % 2**32)
    return Cell(found_interval.estimate, side.n, found_interval.low, found_interval.high, side.values.shape[0],
                tuple(values))


@dataclass
class PaperTable:
    """A paper-style table: reference rows, then one row per subspace kind, one column per fraction."""

    title: str
    metric: str
    fractions: list[float]
    references: list[tuple[str, Cell]]
    subspaces: list[tuple[str, list[Cell]]]
    finetune: str = ""
    scheme: str = ""
    judge: str | None = None

    @property
    def start(self) -> Cell:
        """The reference model's cell (what the fine-tune started from)."""
        return self.references[1][1]

    @property
    def end(self) -> Cell:
        """The fine-tuned model's cell."""
        return self.references[-1][1]

    def as_rows(self) -> list[dict[str, Any]]:
        """Flat rows for CSV export."""
        def flat(name: str, fraction: Any, cell: Cell) -> dict[str, Any]:
            return {"table": self.title, "row": name, "fraction": fraction, "value": cell.value, "ci_low": cell.low,
                    "ci_high": cell.high, "n": cell.n, "seeds": cell.seeds}

        out = [flat(name, "", cell) for name, cell in self.references]
        for name, cells in self.subspaces:
            out.extend(flat(name, f, c) for f, c in zip(self.fractions, cells))
        return out


REFERENCE_NAMES = {"aligned": "Aligned", "safety_tuned": "Safety-tuned (W_S)"}


def paper_tables(evaluation: Sequence[Mapping[str, Any]], study: Study,
                 items: Sequence[Mapping[str, Any]] = ()) -> list[PaperTable]:
    """One table per (edit, fine-tune, metric, judge) of the grid, whole-model edits; cells with their intervals.

    The reference rows are Base, the reference model, the other reference model when the study names it (W_S beside
    W_A) and the fine-tune; a metric scored by several judges gets one table per judge."""
    fractions = list(study.projection.fractions)
    settings = {"bootstrap": study.inference.bootstrap, "level": study.inference.level}
    others = [role for role in REFERENCE_NAMES if role != study.reference and getattr(study.models, role) is not None]
    tables = []
    for entry in study.projection.grid:
        for group in entry.metrics:
            every = [r for r in headline(evaluation, group) if r.get("layer") is None]
            judges = list(dict.fromkeys(r.get("judge") for r in every)) or [None]
            for judge in judges:
                rows = [r for r in every if r.get("judge") == judge]
                cell = (lambda **match: value_of(rows, items, **settings, **match))
                references = [
                    ("Base", cell(model="base", variant="reference")),
                    (REFERENCE_NAMES[study.reference], cell(model=study.reference, variant="reference")),
                    *((REFERENCE_NAMES[role], cell(model=role, variant="reference")) for role in others),
                    (f"FT ({entry.finetune})", cell(model=entry.finetune, variant="reference")),
                ]
                subspaces = [
                    (kind, [cell(model=entry.finetune, variant="projected", scheme=entry.scheme, subspace=kind,
                                 fraction=f) for f in fractions])
                    for kind in study.projection.subspaces
                ]
                scored = f", judge {judge}" if judge and len(judges) > 1 else ""
                title = (f"{metric_title(rows, group)} of the {entry.finetune} fine-tune, {entry.scheme} "
                         f"projection{scored}")
                tables.append(PaperTable(title, group, fractions, references, subspaces, entry.finetune, entry.scheme,
                                         judge))
    return tables


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def cell_html(cell: Cell) -> str:
    """A cell's value with its interval in small type beneath ("0.530" / "[0.50, 0.56]")."""
    interval = cell.interval()
    return fmt(cell.value) + (f"<br><span class='ci'>{interval}</span>" if interval else "")


def table_html(table: PaperTable) -> str:
    """A paper table as HTML."""
    head = "".join(f"<th>ϱ = {f:g}</th>" for f in table.fractions)
    body = []
    for name, cell in table.references:
        body.append(f"<tr class='ref'><td>{html.escape(name)}</td><td colspan='{len(table.fractions)}'>"
                    f"{cell_html(cell)}</td></tr>")
    for name, cells in table.subspaces:
        body.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{cell_html(c)}</td>" for c in cells) + "</tr>")
    return (f"<table><caption>{html.escape(table.title)}</caption><thead><tr><th></th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")
