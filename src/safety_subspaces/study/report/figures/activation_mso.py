"""Figures 5 and 8: activation MSO against η over the depth band, uncentred and centred."""

from __future__ import annotations

from pathlib import Path

from .... import plots
from . import ReportData, figure


@figure("activation_mso", position=5)
def activation_mso(report: ReportData) -> list[Path | None]:
    """Mode subspace overlap of activations.

    MSO between the prompt sets' residual-stream subspaces, mean over the depth band, against η: a panel per model,
    uncentred then centred; shaded: the 95 % bootstrap interval over prompts; dashed: the random mean; dotted: the
    random null's 95 % quantile.
    """
    rows = report.tables.get("activation_overlap", [])
    return [plots.activation_overlap_figure(rows, report.figures_dir / name, centered=centered)
            for centered, name in ((False, "activation_mso.png"), (True, "activation_mso_centered.png"))]
