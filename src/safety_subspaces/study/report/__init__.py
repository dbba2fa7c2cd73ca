"""The study report (stage 5): the paper's tables, registered figures and a plain-language reading, as one
self-contained HTML file beside CSV tables and PNGs, computed from the store and the typed study only."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Sequence

from ... import layout
from ...errors import UserError
from ...files import atomic_write_text, make_dirs, write_csv
from ...rundir import read_document
from ...tables import COMPARISONS, ITEMS, PAPER_TABLES, RESULT_TABLES, Table
from ..config import Study, parse_study
from .figures import ReportData, draw_figures
from .comparisons import study_comparisons
from .paper_tables import PaperTable, paper_tables, table_html
from .reading import reading

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}caption{font-weight:600;text-align:left;padding:.3em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}
tr.ref td{background:#f4f4f4;text-align:center}tr.ref td:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}
.note{color:#555;font-size:.9em}li{margin:.3em 0}
"""


def study_tables(study: Study) -> dict[str, Table]:
    """The result tables a study's jobs fill: the built-in ones, and those of every analysis it names (a plugin's too)."""
    from ...analyses import build_analysis
    from ..plan import analysis_specs

    tables = dict(RESULT_TABLES)
    for spec in analysis_specs(study):
        table = build_analysis(spec.name, spec.options).table
        tables.setdefault(table.name, table)
    return tables


def load_run(run_dir: Path) -> tuple[Study, dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The typed study of a run directory (its stored config parsed back), its result tables and its jobs."""
    from ..store import Store

    run_dir = Path(run_dir)
    config = run_dir / layout.CONFIG
    if not (run_dir / layout.STORE).exists() or not config.exists():
        raise UserError(f"{run_dir} is not a study run directory (no {layout.STORE} or {layout.CONFIG})")
    document = read_document(run_dir)
    if document is None or document.get("kind") != "study" or not isinstance(document.get("config"), dict):
        raise UserError(f"{config} does not hold a study config")
    try:
        study = parse_study(document["config"], origin=str(config))
    except UserError as exc:
        raise UserError(f"{config}: {exc}") from None
    store = Store(run_dir / layout.STORE)
    try:
        tables = {name: store.rows(name) for name in study_tables(study)}
        jobs = store.jobs()
    finally:
        store.close()
    return study, tables, jobs


def write_report(run_dir: Path) -> Path:
    """Write report.html, CSV exports (items.csv: one line per item; comparisons.csv) and figures/*.png for a study
    run; return the HTML path."""
    from ...evaluate.table import item_lines

    run_dir = Path(run_dir)
    study, tables, jobs = load_run(run_dir)
    schemas = study_tables(study)
    for name, rows in tables.items():
        if rows:
            write_csv(run_dir / schemas[name].csv, item_lines(rows) if name == ITEMS.name else rows, schemas[name].columns)
    comparisons = study_comparisons(tables, study)
    if comparisons:
        write_csv(run_dir / COMPARISONS.csv, comparisons, COMPARISONS.columns)
    paper = paper_tables(tables["evaluation"], study, tables.get(ITEMS.name) or [])
    write_csv(run_dir / PAPER_TABLES.csv, [r for t in paper for r in t.as_rows()], PAPER_TABLES.columns)
    make_dirs(run_dir / layout.FIGURES)
    sections = draw_figures(ReportData(run_dir, study, tables, paper, jobs))
    lines = reading(paper, tables["energy"], tables["weight_overlap"], tables["activation_overlap"], study)
    path = run_dir / layout.REPORT
    atomic_write_text(path, render(study, paper, sections, lines, jobs))
    return path


def embed_png(path: Path | None) -> str:
    """An <img> with the PNG inlined as a data URI (empty when there is no figure)."""
    if path is None or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(Path(path).stem)}'/></figure>"


def render(study: Study, paper: Sequence[PaperTable], sections: Sequence[tuple[str, Sequence[Path]]],
           lines: Sequence[str], jobs: Sequence[Mapping[str, Any]]) -> str:
    """The HTML page."""
    done = sum(j["status"] == "done" for j in jobs)
    failed = [j for j in jobs if j["status"] == "failed"]
    delta = "Δ_A = W_A − W_0" if study.reference == "aligned" else "Δ_S = W_S − W_0"
    name = html.escape(study.name)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>safety-subspaces: {name}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Study <code>{name}</code></h1>",
        f"<p class='note'>Subspaces of {delta}; {done} of {len(jobs)} jobs finished"
        + (f", {len(failed)} failed (rerun to retry)" if failed else "") + ".</p>",
        "<h2>Reading</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>" if lines else "",
        "<h2>Tables</h2><p class='note'>Reference rows (Base, Aligned, FT) hold one value; projected rows keep the fine-tune's "
        "update projected onto (parallel) or away from (orthogonal) a subspace of the alignment update, at rank fraction ϱ.</p>",
        *[table_html(t) for t in paper],
        *[part for heading, paths in sections for part in (f"<h2>{html.escape(heading)}</h2>", *map(embed_png, paths))],
        "<p class='note'>Dashed lines: the random-subspace baseline max(k_a, k_b)/d. CSV files beside this report hold every number.</p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)
