"""The reference models on every metric they were evaluated on: harm, utility and over-refusal, with intervals."""

from __future__ import annotations

from pathlib import Path

from .... import plots
from ..paper_tables import HEADLINES, REFERENCE_NAMES, headline, number
from . import ReportData, figure


def reference_bars(report: ReportData) -> dict[str, list[tuple[str, float, float | None, float | None]]]:
    """Per metric group, (model, value, ci_low, ci_high) of each reference model's headline row (whole model)."""
    rows = [r for r in report.tables.get("evaluation", []) if r.get("variant") == "reference" and r.get("layer") is None]
    names = {"base": "Base", **REFERENCE_NAMES}
    groups = {}
    for group in ("utility", *HEADLINES):
        found = headline(rows, group)
        groups[group] = [(names.get(str(r["model"]), f"FT ({r['model']})"), float(r["value"]), number(r.get("ci_low")),
                          number(r.get("ci_high"))) for r in found if number(r.get("value")) is not None]
    return groups


@figure("references", position=6)
def references(report: ReportData) -> Path | None:
    """Reference models: utility, harm and over-refusal.

    Each reference model (Base W_0, the aligned W_A, the safety-tuned W_S where the study names it, every fine-tune)
    on every metric it was evaluated on, with its 95 % interval over items: the levels the projected models are read
    against, and the over-refusal rate on benign prompts (a defence that refuses everything would lower harm too).
    """
    return plots.reference_bars_figure(reference_bars(report), report.figures_dir / "references.png",
                                       title="Reference models (error bars: 95 % intervals over items)")
