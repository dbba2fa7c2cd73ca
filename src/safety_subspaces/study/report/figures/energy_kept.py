"""Figure 2: energy kept against the rank fraction, every subspace kind of the energy table."""

from __future__ import annotations

from pathlib import Path

from .... import plots
from . import ReportData, figure


@figure("energy_kept", position=2)
def energy_kept(report: ReportData) -> Path | None:
    """Energy kept.

    Model-scope energy kept, Σ‖Δ̃‖² / Σ‖Δ_T‖² pooled over every projected matrix, against the rank fraction ϱ: a panel
    per projection scheme, a colour per fine-tune, a dash per subspace kind; a seeded kind's line is the mean over its
    frame seeds with their range shaded. Compare metrics at equal energy kept, not only at equal ϱ.
    """
    rows = [row for row in report.tables.get("energy", []) if row["scope"] == "model"]
    return plots.energy_figure(rows, report.figures_dir / "energy_kept.png")
