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
from .defences import defences_html
from .paper_tables import PaperTable, paper_tables, table_html
from .reading import reading, significant

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 1.5em 1em 0;display:inline-table;vertical-align:top}
table.comparisons{display:table}caption{font-weight:600;text-align:left;padding:.3em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}
tr.ref td{background:#f4f4f4;text-align:center}tr.ref td:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}
.note{color:#555;font-size:.9em}li{margin:.3em 0}.ci{color:#666;font-size:.8em}
table.comparisons{font-size:.85em}tr.sig td{font-weight:600}
figcaption{color:#444;font-size:.85em;max-width:1000px}
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
    lines = reading(paper, comparisons, tables["weight_overlap"], tables["activation_overlap"], study,
                    tables["evaluation"])
    path = run_dir / layout.REPORT
    atomic_write_text(path, render(study, paper, sections, lines, jobs, comparisons,
                                   defences_html(tables, study, comparisons)))
    return path


def embed_png(path: Path | None, caption: str = "") -> str:
    """A <figure> with the PNG inlined as a data URI and its caption (empty when there is no figure)."""
    if path is None or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(Path(path).stem)}'/>{text}</figure>"


def comparisons_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparisons table, compactly: what is compared where, the estimate with its interval, p and Holm's p."""
    if not rows:
        return ""
    def number(value: Any, digits: int = 3) -> str:
        return "–" if value is None else f"{float(value):.{digits}f}"

    head = "".join(f"<th>{h}</th>" for h in ("family", "fine-tune", "scheme", "metric", "comparison", "at",
                                               "statistic", "estimate [95 % CI]", "p", "p (Holm)", "n", "seeds"))
    body = []
    for row in rows:
        mark = " class='sig'" if significant(row) else ""
        cells = [row["family"], row.get("finetune") or "", row.get("scheme") or "",
                 (row.get("metric_group") or row.get("metric") or "") + (f" ({row['judge']})" if row.get("judge") else ""),
                 row["comparison"], row.get("at") or "", row["statistic"],
                 f"{number(row['estimate'])} [{number(row['ci_low'])}, {number(row['ci_high'])}]",
                 number(row["p_value"]), number(row["p_holm"]), str(row["n"]),
                 f"{row.get('seeds_a', 1)}/{row.get('seeds_b', 1)}"]
        body.append(f"<tr{mark}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<h2>Comparisons</h2><p class='note'>Paired over the items both sides share; 95 % percentile-bootstrap "
            "intervals over items and seeds; two-sided bootstrap p-values, Holm-adjusted within each family; bold: "
            "Holm p &lt; 0.05. At equal energy kept, the control's curve is interpolated item by item between its "
            "fractions (anchored at the reference model, energy 0, and the fine-tune, energy 1). comparisons.csv "
            "holds every row.</p>"
            f"<table class='comparisons'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def render(study: Study, paper: Sequence[PaperTable], sections: Sequence[tuple[str, Sequence[Path], str]],
           lines: Sequence[str], jobs: Sequence[Mapping[str, Any]],
           comparisons: Sequence[Mapping[str, Any]] = (), defences: str = "") -> str:
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
        "update projected onto (parallel) or away from (orthogonal) a subspace of the alignment update, at rank fraction ϱ. "
        "Beneath each value, its 95 % interval over items (and seeds)"
        + (f"; random kinds average {study.random_seeds} seeds" if study.random_seeds > 1 else "") + ".</p>",
        *[table_html(t) for t in paper],
        defences,
        comparisons_html(comparisons),
        *[part for heading, paths, caption in sections if paths
          for part in (f"<h2>{html.escape(heading)}</h2>", *(embed_png(p, caption) for p in paths))],
        "<p class='note'>MSO figures: dashed, the random-subspace mean max(k_a, k_b)/d; dotted, its 95 % quantile. CSV "
        "files beside this report hold every number (items.csv: every item's outcome; comparisons.csv).</p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)
