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
    """MSO against η on one axes: a solid line per series value, its bootstrap interval over prompts shaded where the
    rows carry one (mso_low, mso_high), its random baseline dashed and the null's 95 % quantile dotted, same colour."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(str(row[series]), []).append(row)
    for index, (label, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda r: as_float(r["eta"]))
        etas = [as_float(r["eta"]) for r in members]
        colour = f"C{index % 10}"
        ax.plot(etas, [as_float(r["mso"]) for r in members], marker="o", markersize=3, color=colour, label=label)
        low, high = [as_float(r.get("mso_low")) for r in members], [as_float(r.get("mso_high")) for r in members]
        if not all(math.isnan(v) for v in low + high):
            ax.fill_between(etas, low, high, color=colour, alpha=0.18, linewidth=0)
        ax.plot(etas, [as_float(r["mso_random"]) for r in members], linestyle="--", color=colour, alpha=0.7)
        q95 = [as_float(r.get("mso_random_q95")) for r in members]
        if not all(math.isnan(v) for v in q95):
            ax.plot(etas, q95, linestyle=":", color=colour, alpha=0.7)
    ax.set_xlabel("energy fraction η")
    ax.set_ylabel("MSO (0–1)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)


LEGEND_INCHES = 2.4  # the width kept right of the panels for the figure's legend


def legend_outside(figure, axes, *, extra: Sequence[tuple[object, str]] = ()) -> None:
    """One legend for the figure, to the right of the panels (the handles of every panel, each label once, then extra
    (handle, label) entries)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    for handle, label in extra:
        seen.setdefault(label, handle)
    right = 1 - LEGEND_INCHES / figure.get_figwidth()
    if seen:
        figure.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(right + 0.005, 0.5),
                      fontsize=7.5, frameon=False)
    figure.tight_layout(rect=(0, 0, right, 0.93))


def baseline_handles() -> list[tuple[object, str]]:
    """Legend entries for the MSO baselines drawn in each series' colour: dashed random mean, dotted 95 % quantile."""
    from matplotlib.lines import Line2D

    return [(Line2D([], [], color="0.4", linestyle="--"), "random subspaces: mean"),
            (Line2D([], [], color="0.4", linestyle=":"), "random subspaces: 95 % quantile")]


def panel_grid(count: int, *, width: float = 3.9, height: float = 3.2, columns: int = 3):
    """A figure with a grid of count panels (at most `columns` wide; unused ones hidden) and the visible axes."""
    columns = max(1, min(count, columns))
    grid_rows = math.ceil(count / columns)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(width * columns + LEGEND_INCHES, height * grid_rows + 0.6),
                                squeeze=False)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    return figure, list(axes.flat)[:count]


def panel_figure(panels: Mapping[str, Sequence[Row]], path: Path, *, title: str, series: str = "pair") -> Path | None:
    """One PNG with a panel per key of panels (MSO curves in each), one legend beside them; None when empty."""
    panels = {key: rows for key, rows in panels.items() if rows}
    if not panels:
        return None
    figure, axes = panel_grid(len(panels))
    for ax, (key, rows) in zip(axes, panels.items()):
        plot_mso_curves(ax, rows, series=series, title=key)
    figure.suptitle(title, fontsize=11)
    legend_outside(figure, axes, extra=baseline_handles())
    return save(figure, path)


def depth_panels(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Depth-scope weight-overlap rows by layer: percentiles that pick the same layer share one panel (a 2-layer
    model's 70th and 85th percentile layers are one layer), its title naming every percentile."""
    by_layer: dict[str, dict[str, list[Row]]] = {}
    for row in rows:
        if row.get("scope") == "depth":
            by_layer.setdefault(str(row["layer"]), {}).setdefault(str(row["name"]), []).append(row)
    panels = {}
    for layer, by_name in by_layer.items():
        names = list(by_name)
        title = f"layer {layer} ({' and '.join(names)} depth)"
        panels[title] = by_name[names[0]]  # the same layer's rows: identical numbers, drawn once
    return panels


def weight_overlap_figure(rows: Sequence[Row], path: Path) -> Path | None:
    """Weight-space MSO against η at each depth percentile (paper Figure 4): a panel per layer, a line per pair."""
    return panel_figure(depth_panels(rows), path,
                        title="Mode Subspace Overlap of weight updates (mean over the layer's matrices)")


def activation_overlap_figure(rows: Sequence[Row], path: Path, *, centered: bool) -> Path | None:
    """Activation MSO against η averaged over the depth band (paper Figures 5, 8): a panel per model, a line per pair,
    the bootstrap interval over prompts shaded."""
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
    figure, axes = panel_grid(len(schemes), width=4.4, height=3.6)
    for ax, scheme in zip(axes, schemes):
        for index, finetune in enumerate(finetunes):
            for kind, style in styles.items():
                members = [r for r in rows if (r["scheme"], r["finetune"], r["subspace"]) == (scheme, finetune, kind)]
                if not members:
                    continue
                by_fraction: dict[float, list[float]] = {}
                for r in members:  # one value per frame seed of a seeded kind
                    by_fraction.setdefault(as_float(r["fraction"]), []).append(as_float(r["energy_kept"]))
                xs = sorted(by_fraction)
                ax.plot(xs, [sum(by_fraction[x]) / len(by_fraction[x]) for x in xs], linestyle=style, marker="o",
                        markersize=3, color=f"C{index % 10}", label=f"{finetune}, {kind}")
                if any(len(v) > 1 for v in by_fraction.values()):
                    ax.fill_between(xs, [min(by_fraction[x]) for x in xs], [max(by_fraction[x]) for x in xs],
                                    color=f"C{index % 10}", alpha=0.15, linewidth=0)
        ax.set_title(f"{scheme} projection", fontsize=10)
        ax.set_xlabel("rank fraction ϱ")
        ax.set_ylabel("energy kept (share of ‖Δ_T‖²)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    figure.suptitle("Energy of the task update kept by the projection (shaded: range over random seeds)", fontsize=11)
    legend_outside(figure, axes)
    return save(figure, path)


UNITS = {"utility": "accuracy (0–1)", "harm": "harm score (1–5)", "benign": "over-refusal rate (0–1)"}
REFERENCE_STYLES = {"Base": ("0.55", 3.2, (0, (1, 1))), "FT": ("tab:red", 1.1, "-.")}


def reference_style(name: str) -> tuple[str, float, object]:
    """Colour, width and dash of a reference line: Base wide and dotted underneath (visible where another line
    coincides with it), the fine-tune red, the reference models black."""
    for prefix, style in REFERENCE_STYLES.items():
        if name.startswith(prefix):
            return style
    return ("k", 1.0, "--") if "W_S" not in name else ("tab:purple", 1.0, (0, (4, 2)))


def draw_metric_panel(ax, table) -> None:
    """One paper table on one axes: each kind's value with its 95 % interval as error bars against ϱ (kinds offset a
    little so their bars do not hide each other), each reference level as a line with its interval shaded."""
    styles = line_styles([kind for kind, _ in table.subspaces])
    width = 0.012 * (len(table.subspaces) - 1)
    for index, (kind, cells) in enumerate(table.subspaces):
        offset = -width / 2 + 0.012 * index
        points = [(f + offset, c) for f, c in zip(table.fractions, cells) if c.value is not None]
        if not points:
            continue
        xs, found = [p[0] for p in points], [p[1] for p in points]
        ys = [c.value for c in found]
        errors = [[max(0.0, c.value - c.low) if c.low is not None else 0.0 for c in found],
                  [max(0.0, c.high - c.value) if c.high is not None else 0.0 for c in found]]
        seeds = max(c.seeds for c in found)
        spread = [(x, v) for x, c in zip(xs, found) for v in c.per_seed]
        if spread:  # each frame seed's own value, faint, beside the mean over seeds
            ax.scatter(*zip(*spread), s=9, color=f"C{index % 10}", alpha=0.35, linewidths=0, zorder=2)
        ax.errorbar(xs, ys, yerr=errors, marker="o", markersize=3.5, linestyle=styles[kind], color=f"C{index % 10}",
                    capsize=2.5, linewidth=1.2, label=kind + (f" (mean of {seeds} seeds)" if seeds > 1 else ""),
                    zorder=3)
    for name, cell in table.references:
        if cell.value is None:
            continue
        colour, width, dash = reference_style(name)
        label = name if not name.startswith("FT") else "FT (fine-tuned)"
        ax.axhline(cell.value, color=colour, linewidth=width, linestyle=dash, label=label, zorder=1)
        if cell.low is not None and cell.high is not None:
            ax.axhspan(cell.low, cell.high, color=colour, alpha=0.08, linewidth=0, zorder=0)
    ax.set_xlabel("rank fraction ϱ")
    ax.set_ylabel(UNITS.get(table.metric, table.metric))
    ax.set_xlim(-0.03, 1.03)
    if table.metric in ("utility", "benign"):
        ax.set_ylim(-0.03, 1.03)
    elif table.metric == "harm":
        ax.set_ylim(0.9, 5.1)
    ax.grid(alpha=0.3)
    ax.set_title(table.title.replace(" fine-tune, ", ",\n"), fontsize=9)


def metric_grid_figure(tables: Sequence, path: Path) -> Path | None:
    """Every paper table's metric against the rank fraction in one grid of panels (paper Figure 3), with intervals."""
    tables = [t for t in tables if any(c.value is not None for _, cells in t.subspaces for c in cells)]
    if not tables:
        return None
    figure, axes = panel_grid(len(tables), width=3.7, height=3.1)
    for ax, table in zip(axes, tables):
        draw_metric_panel(ax, table)
    figure.suptitle("Utility and harm of projected models against the rank fraction (error bars, shading: 95 % "
                    "intervals; faint dots: single random seeds)", fontsize=10.5)
    legend_outside(figure, axes)
    return save(figure, path)


def reference_bars_figure(groups: Mapping[str, Sequence[tuple[str, float, float | None, float | None]]],
                          path: Path, *, title: str) -> Path | None:
    """Bars of the reference models' values per metric (a panel per metric), each with its 95 % interval: groups maps
    a metric to (model, value, low, high)."""
    groups = {metric: bars for metric, bars in groups.items() if bars}
    if not groups:
        return None
    figure, axes = panel_grid(len(groups), width=3.8, height=3.0)
    for ax, (metric, bars) in zip(axes, groups.items()):
        names = [b[0] for b in bars]
        values = [b[1] for b in bars]
        errors = [[max(0.0, b[1] - b[2]) if b[2] is not None else 0.0 for b in bars],
                  [max(0.0, b[3] - b[1]) if b[3] is not None else 0.0 for b in bars]]
        ax.bar(range(len(bars)), values, yerr=errors, capsize=3, color=[f"C{i % 10}" for i in range(len(bars))])
        ax.set_xticks(range(len(bars)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(UNITS.get(metric, metric))
        if metric in UNITS and metric != "harm":
            ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3, axis="y")
        ax.set_title(metric, fontsize=9.5)
    figure.suptitle(title, fontsize=10.5)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    return save(figure, path)
