"""The report's Defences section: each defence x fine-tune next to the reference, the undefended fine-tune and its
random-subspace controls (utility, harm, energy kept), and the paired comparisons that decide whether the defence
beats its control: defence − FT and defence − each control, per headline metric, in the `defences` family of the
comparisons table (Holm-corrected within the family).
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from ...errors import UserError
from ...evaluate.comparisons import comparison_row, compare, outcomes, select
from ...runtime import stable_seed
from ..config import DefenceEntry, Study
from .paper_tables import cell_html, fmt, headline, value_of

FAMILY = "defences"
DIFFERENCE = "difference"


def defence_sides(study: Study, entry: DefenceEntry, finetune: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, selector) of every row of a defence x fine-tune: the reference, the fine-tune, the defence, its controls."""
    published = entry.options.get("subspace") or ("top_k" if entry.takes_subspace() else "")
    sides = [(study.reference.replace("_", " ").capitalize(), {"model": study.reference, "variant": "reference"}),
             (f"FT ({finetune})", {"model": finetune, "variant": "reference"}),
             (f"{entry.name}" + (f" ({published})" if published else ""),
              {"model": finetune, "variant": "defence", "scheme": entry.name, "subspace": published})]
    for kind in entry.controls or []:
        sides.append((f"{entry.name} on {kind} (control)",
                      {"model": finetune, "variant": "control", "scheme": entry.name, "subspace": kind}))
    return sides


def metric_columns(evaluation: Sequence[Mapping[str, Any]], entry: DefenceEntry) -> list[tuple[str, str, str | None]]:
    """(metric group, metric, judge) of the entry's headline metrics, one per judge."""
    out = []
    for group in entry.metrics:
        out.extend(dict.fromkeys((group, str(r["metric"]), r.get("judge")) for r in headline(evaluation, group)))
    return out


def defence_comparisons(tables: Mapping[str, Sequence[Mapping[str, Any]]], study: Study) -> list[dict[str, Any]]:
    """defence − FT and defence − each control, per defence x fine-tune x headline metric (p_holm not yet filled)."""
    items, evaluation = tables.get("items") or [], tables.get("evaluation") or []
    settings, rows = study.inference, []
    for entry in study.defences:
        for finetune in entry.finetunes:
            sides = defence_sides(study, entry, finetune)
            (_, _), (ft_label, ft), (label, defended), *controls = sides
            for group, metric, judge in metric_columns(evaluation, entry):
                common = {"metric": metric, "layer": None, **({"judge": judge} if judge else {})}
                if not select(items, {**defended, **common}):
                    continue
                try:
                    side = outcomes(items, {**defended, **common})
                except UserError:
                    continue
                labels = {"finetune": finetune, "scheme": entry.name, "metric": metric, "judge": judge}
                for other_label, other in [(ft_label, ft), *controls]:
                    if not select(items, {**other, **common}):
                        continue
                    seed = stable_seed("defence", entry.name, finetune, metric, judge, other_label) % 2**32
                    result = compare(items, side, outcomes(items, {**other, **common}), bootstrap=settings.bootstrap,
                                     seed=seed, level=settings.level)
                    b = "FT" if other is ft else other["subspace"]
                    rows.append(comparison_row(FAMILY, f"{label} − {other_label}", result, a=label, b=b,
                                               statistic=DIFFERENCE, **labels))
    return rows


def energy_cell(evaluation: Sequence[Mapping[str, Any]], where: Mapping[str, Any]) -> str:
    """The pooled energy kept of a defended variant (mean over its rows' seeds), '' for reference rows."""
    values = [float(r["energy_kept"]) for r in evaluation
              if all(r.get(k) == v for k, v in where.items()) and r.get("energy_kept") is not None]
    if not values:
        return ""
    edited = {r.get("modules_edited") for r in evaluation if all(r.get(k) == v for k, v in where.items())}
    note = f" ({next(iter(edited))} modules)" if len(edited) == 1 and None not in edited else ""
    return fmt(sum(values) / len(values)) + note


def comparison_line(row: Mapping[str, Any]) -> str:
    """'harm_score: safe_lora (top_k) − FT = −0.41 [−0.5, −0.3], p_holm 0.001'."""
    def num(value: Any) -> str:
        return "—" if value is None else f"{float(value):+.3f}"

    p = row.get("p_holm")
    return (f"{row['metric']}{' (' + row['judge'] + ')' if row.get('judge') else ''}: {row['comparison']} = "
            f"{num(row.get('estimate'))} [{num(row.get('ci_low'))}, {num(row.get('ci_high'))}], "
            f"p_holm {'—' if p is None else f'{float(p):.3g}'}")


def defences_html(tables: Mapping[str, Sequence[Mapping[str, Any]]], study: Study,
                  comparisons: Sequence[Mapping[str, Any]]) -> str:
    """The Defences section: a table per defence x fine-tune and its comparisons (empty without defences)."""
    if not study.defences:
        return ""
    evaluation, items = tables.get("evaluation") or [], tables.get("items") or []
    parts = ["<h2>Defences</h2><p class='note'>Each defence applied in memory to a fine-tune, next to the reference, "
             "the undefended fine-tune and the same defence built on random subspaces that keep Σ (its controls). "
             "Energy kept: Σ‖Δ̃‖²/Σ‖Δ_T‖² over the modules the defence records. Comparisons are paired over items "
             "(bootstrap intervals; p-values Holm-corrected within the defences family).</p>"]
    for entry in study.defences:
        columns = metric_columns(evaluation, entry)
        for finetune in entry.finetunes:
            head = "".join(f"<th>{html.escape(metric)}{'<br>' + html.escape(judge) if judge else ''}</th>"
                           for _, metric, judge in columns) + "<th>energy kept</th>"
            body = []
            for label, where in defence_sides(study, entry, finetune):
                cells = []
                for group, metric, judge in columns:
                    match = {**where, "metric": metric, "layer": None, **({"judge": judge} if judge else {})}
                    cell = value_of(evaluation, items, bootstrap=study.inference.bootstrap, level=study.inference.level,
                                    **match)  # Cell(None) where no row matches
                    cells.append(f"<td>{cell_html(cell)}</td>")
                body.append(f"<tr><td>{html.escape(label)}</td>{''.join(cells)}<td>{energy_cell(evaluation, where)}</td></tr>")
            options = ", ".join(f"{k}={v}" for k, v in entry.options.items()) or "defaults"
            parts.append(f"<table><caption>{html.escape(entry.name)} on {html.escape(finetune)} ({html.escape(options)})"
                         f"</caption><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
            lines = [comparison_line(r) for r in comparisons
                     if r.get("family") == FAMILY and r.get("scheme") == entry.name and r.get("finetune") == finetune]
            if lines:
                parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    return "\n".join(parts)
