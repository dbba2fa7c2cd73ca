"""Figure 2: energy kept against the rank fraction, every subspace kind of the energy table."""

from __future__ import annotations

from pathlib import Path

from .... import plots
from . import ReportData, figure


@figure("energy_kept", position=2)
def energy_kept(report: ReportData) -> Path | None:
    """Energy kept."""
    rows = [row for row in report.tables.get("energy", []) if row["scope"] == "model"]
    return plots.energy_figure(rows, report.figures_dir / "energy_kept.png")
