"""Figure 3: each paper table's metric against the rank fraction, with the reference levels, in one grid."""

from __future__ import annotations

from pathlib import Path

from .... import plots
from . import ReportData, figure


@figure("metrics", position=3)
def metrics(report: ReportData) -> Path | None:
    """Utility and harm against the rank fraction.

    One panel per paper table (scheme, fine-tune, metric): each subspace kind's value at each rank fraction ϱ with its
    95 % interval over items as error bars (a seeded kind: the mean over its frame seeds, the interval over items and
    seeds; faint dots: each frame seed's own value); kinds are drawn a little apart along ϱ so their bars stay visible. Horizontal lines: the reference models
    (Base wide and dotted beneath the others, so it shows where another level coincides with it; the reference model,
    W_S where the study names it, the fine-tune red), each with its interval shaded.
    """
    return plots.metric_grid_figure(report.paper, report.figures_dir / "metrics.png")
