"""Power before spending GPU hours: the smallest paired difference a study of n items detects, from a worst-case SD
of the metric's scale or from a pilot run's per-item outcomes (the `power` command and `run --check`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import stats
from ..errors import UserError

SCALES: dict[str, tuple[float, float]] = {"harm": (1.0, 5.0), "utility": (0.0, 1.0), "benign": (0.0, 1.0)}
UNITS = {"harm": "harm score (1–5)", "utility": "accuracy", "benign": "over-refusal rate"}
WORST_CASE = ("worst case: each variant's per-item outcomes at the largest SD their scale allows for their mean, "
              "uncorrelated between the two variants (pairing with positively correlated items only lowers it)")


@dataclass(frozen=True)
class PowerPlan:
    """What a paired comparison on n items can detect: the SD of per-item differences, where it came from, and the
    minimum detectable difference (and, for a given effect, the power and the items needed)."""

    metric: str
    n: int
    sd: float
    source: str
    alpha: float
    power: float
    detectable: float
    effect: float | None = None
    power_at_effect: float | None = None
    n_for_effect: int | None = None

    def lines(self) -> list[str]:
        """The plan in words."""
        unit = UNITS.get(self.metric, self.metric)
        out = [f"{self.metric}: on n = {self.n} paired items, a two-sided test at α = {self.alpha:g} detects a "
               f"difference of {self.detectable:.3f} ({unit}) with {self.power:.0%} power "
               f"(SD of per-item differences {self.sd:.3f}: {self.source})"]
        if self.effect is not None:
            out.append(f"  an effect of {self.effect:g}: power {self.power_at_effect:.0%}; "
                       f"{self.n_for_effect} items give {self.power:.0%} power")
        return out


def scale_of(metric: str, scale: tuple[float, float] | None = None) -> tuple[float, float]:
    """The range of a metric's per-item outcomes (harm score 1–5, 0/1 for rates), or the one given."""
    if scale is not None:
        low, high = scale
        if not low < high:
            raise UserError(f"--scale: give LOW,HIGH with LOW < HIGH, got {low:g},{high:g}")
        return float(low), float(high)
    if metric not in SCALES:
        raise UserError(f"--metric: {metric!r} has no known scale; use {', '.join(SCALES)} or give --scale LOW,HIGH")
    return SCALES[metric]


def worst_case_sd(metric: str, baseline: float, effect: float = 0.0, scale: tuple[float, float] | None = None) -> float:
    """The SD of per-item differences in the worst case (WORST_CASE) for variants with means baseline, baseline + effect."""
    low, high = scale_of(metric, scale)
    for name, value in (("--baseline", baseline), ("--baseline + --effect", baseline + effect)):
        if not low <= value <= high:
            raise UserError(f"{name}: {value:g} is outside the {metric} scale [{low:g}, {high:g}]")
    return math.hypot(stats.bounded_sd(baseline, low, high), stats.bounded_sd(baseline + effect, low, high))


def items_for(effect: float, sd: float, *, alpha: float, power: float) -> int:
    """Paired items needed to detect a true difference `effect` with this power (normal approximation)."""
    z = stats._normal_quantile(1 - alpha / 2) + stats._normal_quantile(power)
    return max(2, math.ceil((z * sd / abs(effect)) ** 2))


def plan_power(metric: str, n: int, sd: float, source: str, *, effect: float | None = None, alpha: float = 0.05,
               power: float = stats.POWER) -> PowerPlan:
    """The power plan of a paired comparison of n items whose per-item differences have this SD."""
    if n < 2:
        raise UserError(f"--n: need at least 2 items, got {n}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise UserError(f"--alpha and --power must lie strictly between 0 and 1, got {alpha:g} and {power:g}")
    if not sd > 0:
        raise UserError(f"the SD of per-item differences is {sd:g}: the two variants never differ, nothing to size")
    detectable = stats.minimum_detectable_difference(sd, n, alpha=alpha, power=power)
    if effect is None or effect == 0:
        return PowerPlan(metric, n, sd, source, alpha, power, detectable)
    return PowerPlan(metric, n, sd, source, alpha, power, detectable, effect,
                     stats.power_of(effect, sd, n, alpha=alpha), items_for(effect, sd, alpha=alpha, power=power))


def pilot_sd(run_dir: Path, metric: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[float, str]:
    """The paired SD of per-item differences a − b in a stored run (the headline metric of a metric group) and a
    description naming its n; seeded variants use their first seed."""
    from ..evaluate.comparisons import describe, outcomes, shared_keys
    from .report import load_run

    study, tables, _ = load_run(Path(run_dir))
    items = [r for r in tables.get("items") or [] if r.get("metric_group") == metric]
    if not items:
        raise UserError(f"--pilot: {run_dir} stores no per-item outcomes of {metric} (a run made before they were "
                        "stored, or a study without that metric)")
    headline = _headline_metric(tables.get("evaluation") or [], metric)
    common = {"metric": headline, "layer": None}
    a = dict(a) or {"model": _first_finetune(study, metric), "variant": "reference"}
    b = dict(b) or {"model": study.reference, "variant": "reference"}
    judge = "" if "judge" in a or "judge" in b else _default_judge(study, items)
    if judge:
        common["judge"] = judge
    sides = [outcomes(items, {**common, **a}), outcomes(items, {**common, **b})]
    keys = shared_keys(sides)
    sd = stats.paired_sd(sides[0].on(keys)[:1], sides[1].on(keys)[:1])
    if math.isnan(sd):
        raise UserError(f"--pilot: {describe(a)} and {describe(b)} share fewer than two valid items")
    by = f", judge {judge}" if judge else ""
    return sd, f"pilot {run_dir}: {describe(a)} − {describe(b)} on {len(keys)} items{by}"


def _default_judge(study, items: Sequence[Mapping[str, Any]]) -> str:
    """The study's first harm judge when the items were scored by several judges (else none: nothing to choose)."""
    judged = list(dict.fromkeys(str(r["judge"]) for r in items if r.get("judge")))
    if len(judged) < 2:
        return ""
    harm = study.evaluation.harm
    first = harm.judges[0].name if harm is not None and harm.judges else ""
    return first if first in judged else judged[0]


def _headline_metric(evaluation, group: str) -> str:
    """The headline metric name of a metric group in a run's evaluation rows."""
    from .report.paper_tables import headline

    names = list(dict.fromkeys(str(r["metric"]) for r in headline(evaluation, group)))
    if not names:
        raise UserError(f"--pilot: the run has no headline {group} rows")
    return names[0]


def _first_finetune(study, group: str) -> str:
    """The first fine-tune whose grid entry is evaluated on a metric group."""
    for entry in study.projection.grid:
        if group in entry.metrics:
            return entry.finetune
    raise UserError(f"--pilot: no grid entry of the run evaluates {group}")


def parse_selector(text: str | None, option: str) -> dict[str, Any]:
    """KEY=VALUE,KEY=VALUE as a selector of evaluation fields (fraction and seed as numbers)."""
    if not text:
        return {}
    selector: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option}: give KEY=VALUE pairs separated by commas, got {part!r}")
        key, value = key.strip(), value.strip()
        selector[key] = float(value) if key in ("fraction", "seed") else value
    return selector


def study_power_lines(study, *, baselines: Mapping[str, float] | None = None) -> list[str]:
    """For `run --check`: per comparison family (each metric of the grid), the minimum detectable paired difference at
    the study's n (its evaluation limit, else its prompt set's size when known), worst case for the scale."""
    baselines = {"harm": 3.0, "utility": 0.5, "benign": 0.5, **(baselines or {})}
    settings = {"utility": study.evaluation.utility, "harm": study.evaluation.harm, "benign": study.evaluation.benign}
    groups = list(dict.fromkeys(group for entry in study.projection.grid for group in entry.metrics))
    lines = []
    for group in groups:
        n = getattr(settings.get(group), "limit", None)
        sd = worst_case_sd(group, baselines[group])
        if n is None:
            line = (f"{group}: n is known once the items load; worst case at mean {baselines[group]:g}: "
                    + ", ".join(f"n = {size}: {stats.minimum_detectable_difference(sd, size, power=study.inference.power):.3f}"
                                for size in (100, 200, 520, 1319)))
        else:
            plan = plan_power(group, int(n), sd, "worst case for the scale", power=study.inference.power,
                              alpha=1 - study.inference.level)
            line = plan.lines()[0]
        lines.append(line)
    return lines
