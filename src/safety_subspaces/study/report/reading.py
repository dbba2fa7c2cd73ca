"""The report's reading: plain-language sentences that state a conclusion only where its interval supports it.

First what was measured (models, task, judge, n, seeds, interval method); then per paper table the fine-tune's change
(or "too small to compare") and top_k against each control at equal energy kept, from the comparisons table (Holm's
p per family); then the separation of harm from utility; then MSO against the 95 % quantile of its random null.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

from ... import plots
from ..config import Study
from ...evaluate.comparisons import is_resolved
from .comparisons import CHANGE, CONTROLS, SEPARATION, SHARE, change_is_resolved
from .paper_tables import METRIC_NAMES, PaperTable, fmt

ALPHA = 0.05
WHAT = {"utility": "utility", "harm": "the harm score", "benign": "over-refusal"}


def ci(row: Mapping[str, Any], digits: int = 2) -> str:
    """"95 % CI [low, high]" of a comparison row."""
    return f"95 % CI [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"


def p_text(row: Mapping[str, Any]) -> str:
    """"p = 0.003 (Holm)" ("p < 0.001 (Holm)" below that)."""
    p = row.get("p_holm")
    if p is None:
        return "p not computed"
    return "p < 0.001 (Holm)" if p < 0.001 else f"p = {p:.3f} (Holm)"


def significant(row: Mapping[str, Any], alpha: float = ALPHA) -> bool:
    """Whether a comparison holds after Holm's correction in its family."""
    p = row.get("p_holm")
    return p is not None and p < alpha


def where(row: Mapping[str, Any]) -> str:
    """Where a comparison is made, shortly ("ϱ = 0.25")."""
    return str(row.get("at") or "").split("(")[-1].rstrip(")")


def verdicts(rows: Sequence[Mapping[str, Any]], supported, quiet: str) -> str:
    """Each supported row in words (supported(row) -> text), then the others as one `quiet` clause with their CIs;
    a row whose interval excludes 0 but which fails Holm's correction says so."""
    parts = [f"{supported(row)} at {where(row)} ({ci(row)}, {p_text(row)})" for row in rows if significant(row)]
    rest = [row for row in rows if not significant(row)]
    if rest:
        parts.append(f"{quiet} at " + "; ".join(
            f"{where(row)} ({ci(row)}" + (", not significant after Holm's correction" if is_resolved(row) else "")
            + ")" for row in rest))
    return "; ".join(parts)


def change_sentence(title: str, group: str, row: Mapping[str, Any]) -> str:
    """The fine-tune's change: resolvable ("moves … by …, CI …") or too small to compare."""
    what = WHAT.get(group, group)
    if not change_is_resolved(row):
        why = ("its interval includes 0" if row["ci_low"] <= 0 <= row["ci_high"]
               else "its interval is wider than the change itself")
        return (f"{title}: change too small to compare: the fine-tune moves {what} by {row['estimate']:+.3f} "
                f"({ci(row, 3)}: {why}), below the resolution of {row['n']} items; no shares of it are reported.")
    return f"{title}: the fine-tune moves {what} by {row['estimate']:+.3f} ({ci(row, 3)}, n = {row['n']})."


def control_sentences(group: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """top_k against each control kind at equal energy kept: each supported difference, then the indistinguishable."""
    what = WHAT.get(group, group).replace("the ", "")
    by_kind: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["statistic"] == SHARE:
            by_kind[row["b"]].append(row)
    out = []
    for kind, found in by_kind.items():
        text = verdicts(found, lambda row: f"top_k keeps {abs(row['estimate']):.2f} "
                        f"{'more' if row['estimate'] > 0 else 'less'} of the {what} change than {kind}",
                        "indistinguishable")
        out.append(f"  top_k vs {kind} at equal energy kept: {text}.")
    return out


def separation_sentences(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Harm against utility: does top_k keep more of one change than of the other beyond a control?"""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["scheme"], row["finetune"], row["comparison"].split(":")[0])].append(row)
    out = []
    for (scheme, finetune, comparison), found in groups.items():
        text = verdicts(found, lambda row: f"top_k's extra share is larger for "
                        f"{'harm' if row['estimate'] > 0 else 'utility'} by {abs(row['estimate']):.2f}",
                        "no difference between the harm and utility shares")
        out.append(f"Separation ({scheme} projection, {finetune}, {comparison} at equal energy kept): {text}. A "
                   "subspace that held safety apart would keep much more of the harm change than of the utility one.")
    return out


def measured(study: Study, evaluation: Sequence[Mapping[str, Any]], has_items: bool) -> list[str]:
    """What was measured: models, task, judge, prompt sets, n, seeds, and how intervals and tests were made."""
    models = {role: getattr(study.models, role) for role in ("base", "aligned", "safety_tuned")}
    label = (lambda source: source.path or "a fine-tuning recipe")  # noqa: E731
    names = ", ".join(f"{role} = {label(source)}" for role, source in models.items() if source is not None)
    finetunes = ", ".join(f"{role} = {label(source)}" for role, source in study.finetunes.items())
    parts = []
    for group in ("utility", "harm", "benign"):
        rows = [r for r in evaluation if r.get("metric_group") == group and r.get("variant") == "reference"]
        if not rows:
            continue
        n = max(int(r.get("n") or 0) for r in rows)
        if group == "utility":
            tasks = ", ".join(sorted({str(r.get("task")) for r in rows if r.get("task")}))
            parts.append(f"utility: task {tasks}, n = {n} items")
        else:
            judges = ", ".join(sorted({str(r.get("judge")) for r in rows if r.get("judge")}))
            prompts = ", ".join(sorted({str(r.get("prompts")) for r in rows if r.get("prompts")}))
            parts.append(f"{METRIC_NAMES[group]}: judge {judges} on {prompts}, n = {n} prompts")
    seeds = (f"random subspace kinds with {study.random_seeds} seeds (independent frames), top_k deterministic"
             if study.random_seeds > 1 else "one seed per random subspace kind (no seed spread)")
    lines = [f"Measured: models {names}; fine-tunes {finetunes}; " + "; ".join(parts) + f"; {seeds}; study seed "
             f"{study.seed}."]
    if has_items:
        lines.append(f"Intervals are 95 %: Wilson for a single-seed 0/1 rate, else a percentile bootstrap over items "
                     f"(and seeds) with {study.inference.bootstrap} resamples; comparisons are paired over shared items "
                     "with two-sided bootstrap p-values, Holm-adjusted within each family of the comparisons table.")
    else:
        lines.append("This run stored no per-item outcomes (it was made before they were): values are shown without "
                     "intervals and nothing is tested; rerun the study to get them.")
    return lines


def reading(tables: Sequence[PaperTable], comparisons: Sequence[Mapping[str, Any]],
            weight: Sequence[Mapping[str, Any]], activation: Sequence[Mapping[str, Any]], study: Study,
            evaluation: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Plain-language sentences about what the numbers support."""
    lines = measured(study, evaluation, bool(comparisons))
    for table in tables:
        if table.start.value is None or table.end.value is None:
            continue
        mine = [r for r in comparisons if (r.get("finetune"), r.get("scheme"), r.get("metric_group"),
                                            r.get("judge")) == (table.finetune, table.scheme, table.metric, table.judge)]
        change = next((r for r in mine if r["family"] == CHANGE), None)
        if change is None:
            lines.append(f"{table.title}: reference {fmt(table.start.value)}, fine-tuned {fmt(table.end.value)} "
                         "(no per-item outcomes: no interval).")
            continue
        lines.append(change_sentence(table.title, table.metric, change))
        if change_is_resolved(change):
            lines.extend(control_sentences(table.metric, [r for r in mine if r["family"] == CONTROLS]))
    lines.extend(separation_sentences([r for r in comparisons if r["family"] == SEPARATION]))
    lines.extend(overlap_reading([r for r in weight if r.get("scope") == "depth"],
                                 "weight updates (layers at the depth percentiles)", key="pair"))
    for centered, label in ((False, "uncentred"), (True, "centred")):
        band = [{**r, "in": f"{r.get('model')}: {r.get('pair')}"} for r in activation
                if r.get("scope") == "band" and plots.as_bool(r.get("centered")) == centered]
        lines.extend(overlap_reading(band, f"activations (depth band, {label}; 95 % bootstrap intervals over prompts)",
                                     key="in"))
    return lines


def _number(value: Any) -> float | None:
    """A stored number (None when empty)."""
    return None if value in (None, "") else float(value)


def overlap_reading(rows: Sequence[Mapping[str, Any]], what: str, *, key: str) -> list[str]:
    """MSO at η = 0.5 (or the nearest η) per pair, against its random null's mean and 95 % quantile (and, where the
    rows carry one, the MSO's own bootstrap interval over prompts)."""
    if not rows:
        return []
    etas = sorted({float(r["eta"]) for r in rows})
    eta = min(etas, key=lambda e: abs(e - 0.5))
    by_pair: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if float(row["eta"]) == eta and _number(row.get("mso")) is not None:
            by_pair[str(row[key])].append(row)
    parts = []
    for pair, found in sorted(by_pair.items()):
        mean = lambda field: (sum(_number(r.get(field)) for r in found) / len(found)  # noqa: E731
                              if all(_number(r.get(field)) is not None for r in found) else None)
        mso, base, q95 = mean("mso"), mean("mso_random"), mean("mso_random_q95")
        low, high = mean("mso_low"), mean("mso_high")
        text = f"{pair} {mso:.2f}"
        if low is not None and high is not None and len(found) == 1:
            text += f" [{low:.2f}, {high:.2f}]"
        if q95 is not None:
            verdict = "above chance" if (low if low is not None and len(found) == 1 else mso) > q95 else "not clearly above chance"
            text += f" (random {base:.2f}, 95 % null quantile {q95:.2f}: {verdict})"
        elif base is not None:
            text += f" (random {base:.2f})"
        parts.append(text)
    return [f"Mode subspace overlap of {what} at η = {eta:g}: " + ", ".join(parts) + "."] if parts else []
