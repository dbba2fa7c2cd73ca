"""The report's reading: plain-language sentences computed from the numbers (what each subspace keeps, separation,
and MSO against its baseline)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

from ... import plots
from ..config import Study
from .paper_tables import Cell, PaperTable, fmt


def recovery(cell: Cell, aligned: Cell, finetuned: Cell) -> float | None:
    """How much of the fine-tune's change over the aligned model a projected model keeps (0 = aligned, 1 = FT)."""
    if None in (cell.value, aligned.value, finetuned.value) or finetuned.value == aligned.value:
        return None
    return (cell.value - aligned.value) / (finetuned.value - aligned.value)  # type: ignore[operator]


def energy_at(energy: Sequence[Mapping[str, Any]], finetune: str, scheme: str, kind: str, fraction: float) -> float | None:
    """Model-scope energy kept of one projection."""
    for row in energy:
        if (row["scope"], row["finetune"], row["scheme"], row["subspace"], float(row["fraction"])) == ("model", finetune, scheme, kind, fraction):
            return float(row["energy_kept"])
    return None


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of (x, y) points at x (None outside their range)."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if points and x == points[-1][0]:
        return points[-1][1]
    return None


def recovery_curves(table: PaperTable, finetune: str, scheme: str,
                    energy: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per subspace kind: (energy kept, share of the fine-tune's change kept) at each fraction."""
    aligned, finetuned = table.start, table.end
    curves = {}
    for kind, cells in table.subspaces:
        points = []
        for fraction, cell in zip(table.fractions, cells):
            kept = recovery(cell, aligned, finetuned)
            at = energy_at(energy, finetune, scheme, kind, fraction)
            if kept is not None and at is not None:
                points.append((at, kept))
        curves[kind] = [(0.0, 0.0), *points, (1.0, 1.0)] if points else []  # nothing kept = aligned, all kept = FT
    return curves


def advantage(curves: Mapping[str, list[tuple[float, float]]], kind: str = "top_k", baseline: str = "random") -> float | None:
    """Mean extra share of the change kept by `kind` over `baseline` at equal energy kept (None if no overlap)."""
    differences = []
    for at, kept in curves.get(kind, [])[1:-1]:
        other = interpolate(curves.get(baseline, []), at)
        if other is not None:
            differences.append(kept - other)
    return sum(differences) / len(differences) if differences else None


def reading(tables: Sequence[PaperTable], energy: Sequence[Mapping[str, Any]], weight: Sequence[Mapping[str, Any]],
            activation: Sequence[Mapping[str, Any]], study: Study) -> list[str]:
    """Plain-language sentences about what the numbers say."""
    lines = []
    entries = {(entry.finetune, entry.scheme): entry for entry in study.projection.grid}
    advantages: dict[tuple[str, str, str], float] = {}
    for table in tables:  # one per (grid entry, metric group, judge)
        entry, group = entries[table.finetune, table.scheme], table.metric
        aligned, finetuned = table.start, table.end
        if aligned.value is None or finetuned.value is None:
            continue
        sentence = f"{table.title}: aligned {fmt(aligned.value)}, fine-tuned {fmt(finetuned.value)}."
        gain = advantage(recovery_curves(table, entry.finetune, entry.scheme, energy))
        if gain is not None:
            advantages.setdefault((entry.scheme, entry.finetune, group), gain)  # the first judge's, with several
            sentence += (f" At equal energy kept, the top_k projection keeps {gain:+.2f} of the fine-tune's change "
                         "beyond what a random subspace keeps (0: no different from random).")
        lines.append(sentence)
    lines.extend(separation(advantages))
    lines.extend(overlap_reading([r for r in weight if r.get("scope") == "depth"],
                                 "weight updates (layers at the depth percentiles)", key="pair"))
    for centered, label in ((False, "uncentred"), (True, "centred")):
        band = [r for r in activation if r.get("scope") == "band" and plots.as_bool(r.get("centered")) == centered]
        lines.extend(overlap_reading(band, f"activations (depth band, {label})", key="pair"))
    return lines


def separation(advantages: Mapping[tuple[str, str, str], float]) -> list[str]:
    """Compare top_k's shift over random for harm and for utility: within a fine-tune, or harmful vs useful."""
    lines = []
    for scheme in dict.fromkeys(key[0] for key in advantages):
        harm = {ft: v for (s, ft, g), v in advantages.items() if s == scheme and g == "harm"}
        utility = {ft: v for (s, ft, g), v in advantages.items() if s == scheme and g == "utility"}
        pairs = [(ft, ft) for ft in harm if ft in utility]
        pairs += [(h, u) for h in harm if h not in utility for u in utility if u not in harm]
        for harm_ft, utility_ft in pairs:
            h, u = harm[harm_ft], utility[utility_ft]
            which = harm_ft if harm_ft == utility_ft else f"{harm_ft} (harm) and {utility_ft} (utility)"
            lines.append(
                f"Separation under {scheme} projection, {which}: top_k's shift over random is {h:+.2f} for harm and "
                f"{u:+.2f} for utility, a difference of {h - u:+.2f}. A subspace that held safety apart would move harm "
                "much more than utility; a difference near 0 means the same directions carry both."
            )
    return lines


def overlap_reading(rows: Sequence[Mapping[str, Any]], what: str, *, key: str) -> list[str]:
    """MSO at η = 0.5 (or the nearest η) per pair, against the random baseline."""
    if not rows:
        return []
    etas = sorted({float(r["eta"]) for r in rows})
    eta = min(etas, key=lambda e: abs(e - 0.5))
    by_pair: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if float(row["eta"]) == eta and row.get("mso") not in (None, "") and row.get("mso_random") not in (None, ""):
            by_pair[str(row[key])].append((float(row["mso"]), float(row["mso_random"])))
    parts = []
    for pair, values in sorted(by_pair.items()):
        mso = sum(v for v, _ in values) / len(values)
        base = sum(b for _, b in values) / len(values)
        parts.append(f"{pair} {mso:.2f} (random {base:.2f})")
    return [f"Mode subspace overlap of {what} at η = {eta:g}: " + ", ".join(parts) + "."] if parts else []
