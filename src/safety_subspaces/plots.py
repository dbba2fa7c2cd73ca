"""Plots of result rows (PNG, matplotlib Agg) for analyses and the report: rows as returned or as read from CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Row = Mapping[str, object]


def as_float(value: object) -> float:
    """A cell as a float (CSV strings included; empty is nan)."""
    if value is None or value == "":
        return math.nan
    return float(value)  # type: ignore[arg-type]


def as_bool(value: object) -> bool:
    """A cell as a bool (CSV 'True'/'False' included)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def save(figure, path: Path) -> Path:
    """Write a figure as PNG atomically and close it."""
    import io

    from .files import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=120, format="png")
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def plot_mso_curves(ax, rows: Sequence[Row], *, series: str = "pair", title: str = "") -> None:
    """MSO against η on one axes, a solid line per series value with its random baseline dashed in the same colour."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(str(row[series]), []).append(row)
    for index, (label, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda r: as_float(r["eta"]))
        etas = [as_float(r["eta"]) for r in members]
        colour = f"C{index % 10}"
        ax.plot(etas, [as_float(r["mso"]) for r in members], marker="o", markersize=3, color=colour, label=label)
        ax.plot(etas, [as_float(r["mso_random"]) for r in members], linestyle="--", color=colour, alpha=0.7,
                label=f"{label} (random)")
    ax.set_xlabel("energy fraction η")
    ax.set_ylabel("MSO")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)


def panel_figure(panels: Mapping[str, Sequence[Row]], path: Path, *, title: str, series: str = "pair") -> Path | None:
    """One PNG with a panel per key of panels (MSO curves in each); None when there is nothing to plot."""
    panels = {key: rows for key, rows in panels.items() if rows}
    if not panels:
        return None
    count = len(panels)
    columns = min(count, 3)
    grid_rows = math.ceil(count / columns)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(max(4.2 * columns, 7.0), 3.6 * grid_rows), squeeze=False)
    for ax, (key, rows) in zip(axes.flat, panels.items()):
        plot_mso_curves(ax, rows, series=series, title=key)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ncol = min(max(len(labels) // 2, 1), 4)  # legend columns fill top-down: each holds a pair and its baseline
    figure.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, (0.05 + 0.025 * math.ceil(len(labels) / ncol)) / grid_rows, 1, 0.95))
    return save(figure, path)


def weight_overlap_figure(rows: Sequence[Row], path: Path) -> Path | None:
    """Weight-space MSO against η at each depth percentile (paper Figure 4): a panel per percentile, a line per pair."""
    panels: dict[str, list[Row]] = {}
    for row in rows:
        if row.get("scope") == "depth":
            panels.setdefault(f"layer {row['layer']} ({row['name']} depth)", []).append(row)
    return panel_figure(panels, path, title="Mode Subspace Overlap of weight updates (mean over the layer's matrices)")


def activation_overlap_figure(rows: Sequence[Row], path: Path, *, centered: bool) -> Path | None:
    """Activation MSO against η averaged over the depth band (paper Figures 5, 8): a panel per model, a line per pair."""
    panels: dict[str, list[Row]] = {}
    for row in rows:
        if row.get("scope") == "band" and as_bool(row["centered"]) == centered:
            panels.setdefault(f"{row['model']} (hidden states {row['layer']})", []).append(row)
    kind = "centred" if centered else "uncentred"
    return panel_figure(panels, path, title=f"Mode Subspace Overlap of activations ({kind}, mean over the depth band)")


LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2)), (0, (3, 1, 1, 1)))


def line_styles(names: Sequence[str]) -> dict[str, object]:
    """A line style per name, in order (cycling when there are more names than styles): every subspace kind gets one."""
    return {name: LINE_STYLES[index % len(LINE_STYLES)] for index, name in enumerate(dict.fromkeys(names))}


def energy_figure(rows: Sequence[Row], path: Path) -> Path | None:
    """Energy kept against the rank fraction (paper Figure 2): a panel per scheme, a colour per fine-tune, a dash per subspace."""
    rows = [r for r in rows if r.get("scope", "model") == "model"]
    if not rows:
        return None
    schemes = list(dict.fromkeys(str(r["scheme"]) for r in rows))
    finetunes = list(dict.fromkeys(str(r["finetune"]) for r in rows))
    styles = line_styles([str(r["subspace"]) for r in rows])
    figure, axes = plt.subplots(1, len(schemes), figsize=(4.6 * len(schemes), 3.8), squeeze=False)
    for ax, scheme in zip(axes.flat, schemes):
        for index, finetune in enumerate(finetunes):
            for kind, style in styles.items():
                members = sorted((r for r in rows if (r["scheme"], r["finetune"], r["subspace"]) == (scheme, finetune, kind)),
                                 key=lambda r: as_float(r["fraction"]))
                if members:
                    ax.plot([as_float(r["fraction"]) for r in members], [as_float(r["energy_kept"]) for r in members],
                            linestyle=style, marker="o", markersize=3, color=f"C{index % 10}", label=f"{finetune} {kind}")
        ax.set_title(f"{scheme} projection", fontsize=10)
        ax.set_xlabel("rank fraction ϱ")
        ax.set_ylabel("energy kept")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, frameon=False)
    figure.suptitle("Energy of the task update kept by the projection", fontsize=11)
    figure.tight_layout()
    return save(figure, path)


def metric_figure(table, path: Path) -> Path | None:
    """A metric against the rank fraction per subspace kind, with Base / Aligned / FT reference lines (paper Figure 3)."""
    if not any(c.value is not None for _, cells in table.subspaces for c in cells):
        return None
    figure, ax = plt.subplots(figsize=(5.6, 3.8))
    styles = line_styles([kind for kind, _ in table.subspaces])
    for index, (kind, cells) in enumerate(table.subspaces):
        points = [(f, c.value) for f, c in zip(table.fractions, cells) if c.value is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, linestyle=styles[kind], color=f"C{index % 10}", label=kind)
    for (name, cell), colour in zip(table.references, ("0.5", "k", "tab:red")):
        if cell.value is not None:
            ax.axhline(cell.value, color=colour, linewidth=0.9, linestyle="-.", label=name)
    ax.set_xlabel("rank fraction ϱ")
    ax.set_ylabel(table.metric)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(table.title, fontsize=9)
    figure.tight_layout()
    return save(figure, path)
