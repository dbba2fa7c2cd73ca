"""Figure 3: each paper table's metric against the rank fraction, with the Base, Aligned and FT levels."""

from __future__ import annotations

from pathlib import Path

from .... import plots
from . import ReportData, figure


@figure("metrics", position=3)
def metrics(report: ReportData) -> list[Path | None]:
    """Utility and harm against the rank fraction."""
    return [plots.metric_figure(table, report.figures_dir / ("_".join(
        filter(None, (table.metric, table.finetune, table.scheme, table.judge))) + ".png")) for table in report.paper]
