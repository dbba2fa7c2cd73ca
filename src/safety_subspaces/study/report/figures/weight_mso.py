"""Figure 4: weight-update MSO against η at the depth percentiles."""

from __future__ import annotations

from pathlib import Path

from .... import plots
from . import ReportData, figure


@figure("weight_mso", position=4)
def weight_mso(report: ReportData) -> Path | None:
    """Mode subspace overlap of weight updates."""
    return plots.weight_overlap_figure(report.tables.get("weight_overlap", []), report.figures_dir / "weight_mso.png")
