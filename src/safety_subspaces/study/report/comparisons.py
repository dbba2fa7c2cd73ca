"""The report's comparisons (the `comparisons` table): per (fine-tune, scheme, metric, judge) of the grid, whether the
fine-tune's change is resolvable, and top_k against every other subspace kind at equal rank fraction and at equal
energy kept, through the generic machinery of evaluate.comparisons. Holm's correction runs per family over the whole
report: `change` (FT − reference) and `top_k vs controls`.

At equal energy kept: top_k at fraction ϱ keeps energy e (model scope, its energy row); a control kind's curve is
its per-item outcomes at its fractions' energies, anchored at energy 0 by the reference model (Δ̃ = 0) and at 1 by the
fine-tune (Δ̃ = Δ_T); it is interpolated linearly at e, item by item and seed by seed (each seed with its own frame's
energies). When the change is resolvable the statistic is the difference of shares of the change kept,
(variant − reference)/(FT − reference), bootstrapped as a ratio; otherwise the difference of the metric itself.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ... import stats
from ...evaluate.comparisons import (SHARE_METHOD, Outcomes, as_comparison, comparison_row, compare, holm_adjust,
                                     interpolated, outcomes, select, share_draws)
from ...errors import UserError
from ...runtime import stable_seed
from ..config import Study
from .defences import defence_comparisons
from .paper_tables import headline

CHANGE, CONTROLS, SEPARATION = "change", "top_k vs controls", "separation"
DIFFERENCE, SHARE = "difference", "share of change kept"
SEPARATED = "share kept: harm − utility"
BASELINE = "top_k"


def change_is_resolved(row: Mapping[str, Any]) -> bool:
    """Whether a fine-tune's change (FT − reference, paired) is big enough to take shares of: its interval excludes 0
    and its half-width is at most half the change."""
    low, high, estimate = row.get("ci_low"), row.get("ci_high"), row.get("estimate")
    if None in (low, high, estimate):
        return False
    return (low > 0 or high < 0) and (high - low) / 2 <= abs(estimate) / 2


def headline_metrics(evaluation: Sequence[Mapping[str, Any]], group: str) -> list[tuple[str, str | None]]:
    """(metric, judge) of a metric group's headline rows, one per judge (utility rows have none)."""
    return list(dict.fromkeys((str(r["metric"]), r.get("judge")) for r in headline(evaluation, group)))


def energy_of(energy: Sequence[Mapping[str, Any]], finetune: str, scheme: str, kind: str, fraction: float,
              seed: Any = None) -> float | None:
    """Model-scope energy kept of one projection (of one frame seed when given; else the first stored)."""
    for row in energy:
        if (row.get("scope"), row.get("finetune"), row.get("scheme"), row.get("subspace")) != ("model", finetune,
                                                                                                scheme, kind):
            continue
        if not math.isclose(float(row["fraction"]), float(fraction)):
            continue
        if seed is None or row.get("seed") in (None, seed):
            return float(row["energy_kept"])
    return None


def control_curve(items: Sequence[Mapping[str, Any]], energy: Sequence[Mapping[str, Any]], *, kind: str,
                  finetune: str, scheme: str, fractions: Sequence[float], start: Outcomes, end: Outcomes,
                  common: Mapping[str, Any]) -> tuple[list[Any], list[list[tuple[float, Outcomes]]]]:
    """A control kind's seeds and, per seed, its (energy kept, outcomes) points sorted by energy, anchored at the
    reference model (energy 0) and the fine-tune (energy 1)."""
    projected = {"model": finetune, "variant": "projected", "scheme": scheme, "subspace": kind, **common}
    seeds = list(dict.fromkeys(record.get("seed") for record in select(items, projected)))
    curves = []
    for seed in seeds:
        points = [(0.0, start), (1.0, end)]
        for fraction in fractions:
            at = energy_of(energy, finetune, scheme, kind, fraction, seed)
            where = {**projected, "fraction": fraction, **({"seed": seed} if seed is not None else {})}
            if at is not None and select(items, where):
                points.append((at, outcomes(items, where)))
        curves.append(sorted(points, key=lambda p: p[0]))
    return seeds, curves


def control_at_energy(seeds: Sequence[Any], curves: Sequence[Sequence[tuple[float, Outcomes]]], target: float,
                      kind: str) -> Outcomes | None:
    """A control kind's per-item outcomes interpolated at energy kept `target`, seed by seed (None if out of range)."""
    rows = []
    for points in curves:
        found = interpolated(points, target, label=f"{kind} at energy {target:.3f}")
        if found is None:
            return None
        rows.append(found)
    if not rows:
        return None
    keys = [key for key in rows[0].keys if all(key in r.keys for r in rows)]
    values = np.concatenate([r.on(keys) for r in rows], axis=0)
    return Outcomes(tuple(keys), values, rows[0].label, tuple(seeds), rows[0].identity)


def study_comparisons(tables: Mapping[str, Sequence[Mapping[str, Any]]], study: Study) -> list[dict[str, Any]]:
    """Every comparison of a study's report, Holm-adjusted per family (empty when no per-item outcomes are stored)."""
    items, evaluation, energy = tables.get("items") or [], tables.get("evaluation") or [], tables.get("energy") or []
    if not items:
        return []
    settings = study.inference
    rows: list[dict[str, Any]] = []
    shares: dict[tuple, stats.Draws] = {}  # (scheme, finetune, group, kind, fraction) → draws of a share difference
    kinds = [kind for kind in study.projection.subspaces if kind != BASELINE]
    fractions = list(study.projection.fractions)
    for entry in study.projection.grid:
        for group in entry.metrics:
            for metric, judge in headline_metrics(evaluation, group):
                common = {"metric": metric, "layer": None, **({"judge": judge} if judge else {})}
                labels = {"finetune": entry.finetune, "scheme": entry.scheme, "metric": metric, "judge": judge,
                          "metric_group": group}

                def bootstrap_seed(*parts: Any) -> int:
                    return stable_seed("comparison", entry.finetune, entry.scheme, metric, judge, *parts) % 2**32

                try:
                    start = outcomes(items, {"model": study.reference, "variant": "reference", **common})
                    end = outcomes(items, {"model": entry.finetune, "variant": "reference", **common})
                except UserError:
                    continue  # a run made before items were stored, or a metric without per-item outcomes
                change = comparison_row(CHANGE, f"FT − {study.reference}", compare(
                    items, end, start, bootstrap=settings.bootstrap, seed=bootstrap_seed("change"),
                    level=settings.level), a=f"FT ({entry.finetune})", b=study.reference, statistic=DIFFERENCE,
                    **labels)
                rows.append(change)
                resolved = change_is_resolved(change)
                curves = {kind: control_curve(items, energy, kind=kind, finetune=entry.finetune, scheme=entry.scheme,
                                              fractions=fractions, start=start, end=end, common=common)
                          for kind in kinds}
                for fraction in fractions:
                    top = {"model": entry.finetune, "variant": "projected", "scheme": entry.scheme,
                           "subspace": BASELINE, "fraction": fraction}
                    if not select(items, {**top, **common}):
                        continue
                    top_side = outcomes(items, {**top, **common})
                    target = energy_of(energy, entry.finetune, entry.scheme, BASELINE, fraction)
                    for kind in kinds:
                        other = {**top, "subspace": kind}
                        if select(items, {**other, **common}):
                            result = compare(items, top_side, outcomes(items, {**other, **common}),
                                             bootstrap=settings.bootstrap, seed=bootstrap_seed(kind, fraction),
                                             level=settings.level)
                            rows.append(comparison_row(CONTROLS, f"{BASELINE} − {kind}", result, a=BASELINE, b=kind,
                                                       at=f"ϱ = {fraction:g}", statistic=DIFFERENCE, **labels))
                        if target is None:
                            continue
                        control = control_at_energy(*curves[kind], target, kind)
                        if control is None:
                            continue
                        seed = bootstrap_seed(kind, fraction, "energy")
                        if resolved:
                            draws, sides = share_draws(items, top_side, control, start, end,
                                                       bootstrap=settings.bootstrap, seed=seed)
                            shares[(entry.scheme, entry.finetune, group, kind, fraction)] = draws
                            result = as_comparison(draws.summary(settings.level, SHARE_METHOD), sides)
                        else:
                            result = compare(items, top_side, control, bootstrap=settings.bootstrap, seed=seed,
                                             level=settings.level)
                        rows.append(comparison_row(
                            CONTROLS, f"{BASELINE} − {kind}", result, a=BASELINE, b=kind,
                            at=f"energy kept {target:.3f} (ϱ = {fraction:g})",
                            statistic=SHARE if resolved else DIFFERENCE, **labels))
    rows.extend(separation_rows(shares, settings.level))
    rows.extend(defence_comparisons(tables, study))
    return holm_adjust(rows, by="family")


def separation_pairs(keys: Sequence[tuple]) -> list[tuple[tuple, tuple]]:
    """(harm key, utility key) of shares to set against each other: the same fine-tune scored on both, else each
    harm-only fine-tune against each utility-only one, under the same scheme, kind and fraction."""
    harm = {k for k in keys if k[2] == "harm"}
    utility = {k for k in keys if k[2] == "utility"}
    both = {(k[0], k[1]) for k in harm} & {(k[0], k[1]) for k in utility}
    pairs = []
    for h in sorted(harm, key=str):
        for u in sorted(utility, key=str):
            if (h[0], h[3], h[4]) != (u[0], u[3], u[4]):
                continue
            same = h[1] == u[1]
            if same or ((h[0], h[1]) not in both and (u[0], u[1]) not in both):
                pairs.append((h, u))
    return pairs


def separation_rows(shares: Mapping[tuple, stats.Draws], level: float) -> list[dict[str, Any]]:
    """How much more of the harm change than of the utility change top_k keeps beyond a control at equal energy (the
    two shares rest on different items: independent bootstrap draws subtracted)."""
    rows = []
    for h, u in separation_pairs(list(shares)):
        result = stats.independent_difference(shares[h], shares[u], level)
        which = h[1] if h[1] == u[1] else f"{h[1]} (harm), {u[1]} (utility)"
        rows.append(comparison_row(SEPARATION, f"{BASELINE} − {h[3]}: harm − utility", result, a="harm",
                                   b="utility", at=f"equal energy kept (ϱ = {h[4]:g})", statistic=SEPARATED,
                                   finetune=which, scheme=h[0], metric="harm, utility"))
    return rows
