"""Figure 4: weight-update MSO against η at the depth percentiles."""

from __future__ import annotations

from pathlib import Path

from .... import plots
from . import ReportData, figure


@figure("weight_mso", position=4)
def weight_mso(report: ReportData) -> Path | None:
    """Mode subspace overlap of weight updates.

    MSO between the energy-η subspaces of two updates (mean over the layer's matrices) against η, a panel per layer at
    the depth percentiles (percentiles that pick the same layer share one panel); dashed: the mean MSO of random
    subspaces of the same dimensions, dotted: its 95 % quantile (Monte Carlo). A line above the dotted one overlaps
    more than chance.
    """
    return plots.weight_overlap_figure(report.tables.get("weight_overlap", []), report.figures_dir / "weight_mso.png")
