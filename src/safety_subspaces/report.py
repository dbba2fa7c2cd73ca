"""The study report: the paper's tables, figures and a plain-language reading, as one self-contained HTML file plus CSV/PNG."""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from . import layout, plots
from .errors import UserError
from .files import atomic_write_text, make_dirs, read_text, write_csv
RUN_CONFIG = layout.CONFIG
from .names import check_name
from .tables import RESULT_TABLES

STORE = "results.sqlite"
TABLE_COLUMNS = {name: table.columns for name, table in RESULT_TABLES.items()}
HEADLINES = {"harm": "harm_score", "benign": "over_refusal_rate"}
METRIC_NAMES = {"utility": "utility", "harm": "harmfulness score (1-5)", "benign": "over-refusal rate"}
SUBSPACE_ORDER = ("top_k", "random_k", "random")


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


def paper_tables(evaluation: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> list[PaperTable]:
    """One table per (scheme, fine-tune, metric) of the grid, whole-model projections."""
    projection = config.get("projection", {})
    fractions = list(projection.get("fractions", []))
    reference_role = config.get("reference", "aligned")
    tables = []
    for entry in projection.get("grid", []):
        for group in entry["metrics"]:
            rows = [r for r in headline(evaluation, group) if r.get("layer") is None]
            references = [
                ("Base", value_of(rows, model="base", variant="reference")),
                ("Aligned" if reference_role == "aligned" else "Safety-tuned", value_of(rows, model=reference_role, variant="reference")),
                (f"FT ({entry['finetune']})", value_of(rows, model=entry["finetune"], variant="reference")),
            ]
            subspaces = [
                (kind, [value_of(rows, model=entry["finetune"], variant="projected", scheme=entry["edit"]["name"], subspace=kind,
                                 fraction=f) for f in fractions])
                for kind in projection.get("subspaces", [])
            ]
            title = f"{METRIC_NAMES[group]} of the {entry['finetune']} fine-tune, {entry['edit']['name']} projection"
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


def recovery(cell: Cell, aligned: Cell, finetuned: Cell) -> float | None:
    """How much of the fine-tune's change over the aligned model a projected model keeps (0 = aligned, 1 = FT)."""
    if None in (cell.value, aligned.value, finetuned.value) or finetuned.value == aligned.value:
        return None
    return (cell.value - aligned.value) / (finetuned.value - aligned.value)  # type: ignore[operator]


def energy_at(energy: Sequence[Mapping[str, Any]], finetune: str, scheme: str, kind: str, fraction: float) -> float | None:
    """Model-scope energy kept of one projection."""
    for row in energy:
        if (row["scope"], row["finetune"], row["scheme"], row["subspace"], float(row["fraction"])) == ("model", finetune, scheme, kind, fraction):
            return float(row["energy_kept"])
    return None


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of (x, y) points at x (None outside their range)."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if points and x == points[-1][0]:
        return points[-1][1]
    return None


def recovery_curves(table: PaperTable, entry: Mapping[str, Any], energy: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per subspace kind: (energy kept, share of the fine-tune's change kept) at each fraction."""
    aligned, finetuned = table.references[1][1], table.references[2][1]
    curves = {}
    for kind, cells in table.subspaces:
        points = []
        for fraction, cell in zip(table.fractions, cells):
            kept = recovery(cell, aligned, finetuned)
            at = energy_at(energy, entry["finetune"], entry["edit"]["name"], kind, fraction)
            if kept is not None and at is not None:
                points.append((at, kept))
        curves[kind] = [(0.0, 0.0), *points, (1.0, 1.0)] if points else []  # nothing kept = aligned, all kept = FT
    return curves


def advantage(curves: Mapping[str, list[tuple[float, float]]], kind: str = "top_k", baseline: str = "random") -> float | None:
    """Mean extra share of the change kept by `kind` over `baseline` at equal energy kept (None if no overlap)."""
    differences = []
    for at, kept in curves.get(kind, [])[1:-1]:
        other = interpolate(curves.get(baseline, []), at)
        if other is not None:
            differences.append(kept - other)
    return sum(differences) / len(differences) if differences else None


def reading(tables: Sequence[PaperTable], energy: Sequence[Mapping[str, Any]], weight: Sequence[Mapping[str, Any]],
            activation: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> list[str]:
    """Plain-language sentences about what the numbers say."""
    lines = []
    grid = [(e, g) for e in config.get("projection", {}).get("grid", []) for g in e["metrics"]]
    advantages: dict[tuple[str, str, str], float] = {}
    for table, (entry, group) in zip(tables, grid):
        aligned, finetuned = table.references[1][1], table.references[2][1]
        if aligned.value is None or finetuned.value is None:
            continue
        sentence = f"{table.title}: aligned {fmt(aligned.value)}, fine-tuned {fmt(finetuned.value)}."
        gain = advantage(recovery_curves(table, entry, energy))
        if gain is not None:
            advantages[(entry["edit"]["name"], entry["finetune"], group)] = gain
            sentence += (f" At equal energy kept, the top_k projection keeps {gain:+.2f} of the fine-tune's change "
                         "beyond what a random subspace keeps (0: no different from random).")
        lines.append(sentence)
    lines.extend(separation(advantages))
    lines.extend(overlap_reading([r for r in weight if r.get("scope") == "depth"],
                                 "weight updates (layers at the depth percentiles)", key="pair"))
    for centered, label in ((False, "uncentred"), (True, "centred")):
        band = [r for r in activation if r.get("scope") == "band" and plots.as_bool(r.get("centered")) == centered]
        lines.extend(overlap_reading(band, f"activations (depth band, {label})", key="pair"))
    return lines


def separation(advantages: Mapping[tuple[str, str, str], float]) -> list[str]:
    """Compare top_k's shift over random for harm and for utility: within a fine-tune, or harmful vs useful."""
    lines = []
    for scheme in dict.fromkeys(key[0] for key in advantages):
        harm = {ft: v for (s, ft, g), v in advantages.items() if s == scheme and g == "harm"}
        utility = {ft: v for (s, ft, g), v in advantages.items() if s == scheme and g == "utility"}
        pairs = [(ft, ft) for ft in harm if ft in utility]
        pairs += [(h, u) for h in harm if h not in utility for u in utility if u not in harm]
        for harm_ft, utility_ft in pairs:
            h, u = harm[harm_ft], utility[utility_ft]
            which = harm_ft if harm_ft == utility_ft else f"{harm_ft} (harm) and {utility_ft} (utility)"
            lines.append(
                f"Separation under {scheme} projection, {which}: top_k's shift over random is {h:+.2f} for harm and "
                f"{u:+.2f} for utility, a difference of {h - u:+.2f}. A subspace that held safety apart would move harm "
                "much more than utility; a difference near 0 means the same directions carry both."
            )
    return lines


def overlap_reading(rows: Sequence[Mapping[str, Any]], what: str, *, key: str) -> list[str]:
    """MSO at η = 0.5 (or the nearest η) per pair, against the random baseline."""
    if not rows:
        return []
    etas = sorted({float(r["eta"]) for r in rows})
    eta = min(etas, key=lambda e: abs(e - 0.5))
    by_pair: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if float(row["eta"]) == eta and row.get("mso") not in (None, "") and row.get("mso_random") not in (None, ""):
            by_pair[str(row[key])].append((float(row["mso"]), float(row["mso_random"])))
    parts = []
    for pair, values in sorted(by_pair.items()):
        mso = sum(v for v, _ in values) / len(values)
        base = sum(b for _, b in values) / len(values)
        parts.append(f"{pair} {mso:.2f} (random {base:.2f})")
    return [f"Mode subspace overlap of {what} at η = {eta:g}: " + ", ".join(parts) + "."] if parts else []


def embed_png(path: Path | None) -> str:
    """An <img> with the PNG inlined as a data URI (empty when there is no figure)."""
    if path is None or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(Path(path).stem)}'/></figure>"


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}caption{font-weight:600;text-align:left;padding:.3em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}
tr.ref td{background:#f4f4f4;text-align:center}tr.ref td:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}
.note{color:#555;font-size:.9em}li{margin:.3em 0}
"""


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The study config, the result tables and the job list of a run directory."""
    from .study.store import Store

    run_dir = Path(run_dir)
    if not (run_dir / STORE).exists() or not (run_dir / RUN_CONFIG).exists():
        raise UserError(f"{run_dir} is not a study run directory (no {STORE} or {RUN_CONFIG})")
    try:
        document = yaml.safe_load(read_text(run_dir / RUN_CONFIG)) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{run_dir / RUN_CONFIG}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("config", {}), dict):
        raise UserError(f"{run_dir / RUN_CONFIG} does not hold a study config")
    store = Store(run_dir / STORE)
    try:
        tables = {name: store.rows(name) for name in TABLE_COLUMNS}
        jobs = store.jobs()
    finally:
        store.close()
    return document.get("config", {}), tables, jobs


def write_report(run_dir: Path) -> Path:
    """Write report.html, CSV exports and figures/*.png for a study run; return the HTML path."""
    run_dir = Path(run_dir)
    config, tables, jobs = load_run(run_dir)
    grid = [(e, g) for e in config.get("projection", {}).get("grid", []) for g in e["metrics"]]
    for entry, _ in grid:  # they name figure files: refuse a tampered config before writing anything
        check_name(entry["finetune"], "projection.grid: fine-tune")
        check_name(entry["edit"]["name"], "projection.grid: scheme")
    for name, rows in tables.items():
        if rows:
            write_csv(run_dir / f"{name}.csv", rows, TABLE_COLUMNS[name])
    paper = paper_tables(tables["evaluation"], config)
    write_csv(run_dir / "paper_tables.csv", [r for t in paper for r in t.as_rows()], ["table", "row", "fraction", "value"])
    figure_dir = run_dir / "figures"
    make_dirs(figure_dir)
    energy_model = [r for r in tables["energy"] if r["scope"] == "model"]
    shown = {
        "energy": plots.energy_figure(energy_model, figure_dir / "energy_kept.png"),
        "metrics": [plots.metric_figure(t, figure_dir / f"{t.metric}_{entry['finetune']}_{entry['edit']['name']}.png")
                    for t, (entry, _) in zip(paper, grid)],
        "weights": plots.weight_overlap_figure(tables["weight_overlap"], figure_dir / "weight_mso.png"),
        "activations": plots.activation_overlap_figure(tables["activation_overlap"], figure_dir / "activation_mso.png",
                                                         centered=False),
        "activations_centered": plots.activation_overlap_figure(tables["activation_overlap"],
                                                                  figure_dir / "activation_mso_centered.png", centered=True),
    }
    lines = reading(paper, tables["energy"], tables["weight_overlap"], tables["activation_overlap"], config)
    page = render(config, paper, shown, lines, jobs)
    path = run_dir / "report.html"
    atomic_write_text(path, page)
    return path


def render(config: Mapping[str, Any], paper: Sequence[PaperTable], shown: Mapping[str, Any], lines: Sequence[str],
           jobs: Sequence[Mapping[str, Any]]) -> str:
    """The HTML page."""
    done = sum(j["status"] == "done" for j in jobs)
    failed = [j for j in jobs if j["status"] == "failed"]
    reference = config.get("reference", "aligned")
    delta = "Δ_A = W_A − W_0" if reference == "aligned" else "Δ_S = W_S − W_0"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>safety-subspaces: {html.escape(str(config.get('name', 'study')))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Study <code>{html.escape(str(config.get('name', '')))}</code></h1>",
        f"<p class='note'>Subspaces of {delta}; {done} of {len(jobs)} jobs finished"
        + (f", {len(failed)} failed (rerun to retry)" if failed else "") + ".</p>",
        "<h2>Reading</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>" if lines else "",
        "<h2>Tables</h2><p class='note'>Reference rows (Base, Aligned, FT) hold one value; projected rows keep the fine-tune's "
        "update projected onto (parallel) or away from (orthogonal) a subspace of the alignment update, at rank fraction ϱ.</p>",
        *[table_html(t) for t in paper],
        "<h2>Energy kept</h2>", embed_png(shown.get("energy")),
        "<h2>Utility and harm against the rank fraction</h2>", *[embed_png(p) for p in shown.get("metrics", [])],
        "<h2>Mode subspace overlap of weight updates</h2>", embed_png(shown.get("weights")),
        "<h2>Mode subspace overlap of activations</h2>", embed_png(shown.get("activations")),
        embed_png(shown.get("activations_centered")),
        "<p class='note'>Dashed lines: the random-subspace baseline max(k_a, k_b)/d. CSV files beside this report hold every number.</p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)
