"""Paired comparisons of any two evaluated variants on the items they share, and Holm's correction over a family.

Every variant of a study is scored on the same items (the same questions, the same prompts, the same judge), so a
difference between two variants is estimated from per-item pairs: the items table (`tables.ITEMS`) holds, per
evaluation cell and metric, one record with the items' keys and outcomes. A *variant* is named by a selector, a
mapping of identity fields to values, e.g.

    {"model": "harmful", "variant": "projected", "scheme": "parallel", "subspace": "top_k", "fraction": 0.25}

and a comparison is

    compare(items, a=SELECTOR, b=SELECTOR, metric="harm_score", judge="organism")

Every other identity field (IDENTITY: judge, task, layer, edit options, reference, ...) must then agree among the
records a selector picks, or the selection is ambiguous and refused: the judge is part of a row's identity, so a
study with several judges names the one it compares (or compares two judges by giving each side its own). Records
that differ only in `seed` are independent frames of one seeded variant (`random_seeds`): they are stacked as the
seeds of that side and resampled too. Fields a selector gives apply to the records; `common` fields apply to both
sides (the metric, the judge, the layer).

Statistics (`stats.statistic_draws`): items are resampled jointly for every array of one comparison (the pairing),
seeds with replacement per side; the estimate is the statistic of the means, its interval the percentile interval
of the bootstrap draws, its p-value the two-sided bootstrap p-value of "statistic = 0". `compare` gives mean(a) −
mean(b); `compare_share` gives the difference of two variants' shares of a change (variant − start) / (end − start),
a ratio bootstrapped as a ratio, per resample. A side may also be an `Outcomes` already built (e.g. interpolated at
equal energy kept by `interpolated`). `holm_adjust` fills `p_holm` over the rows of one family (or each value of a
grouping field).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import stats
from ..errors import UserError
from ..tables import COMPARISONS

IDENTITY = ("model", "variant", "subspace", "scheme", "fraction", "layer", "metric", "judge", "task", "prompts",
            "edit_options", "reference")
SEED = "seed"
SHARE_METHOD = "paired bootstrap of the share ratio"


@dataclass(frozen=True)
class Outcomes:
    """One side of a comparison: per-item outcomes (seeds, items) under the items' keys, and what they describe."""

    keys: tuple[str, ...]
    values: np.ndarray
    label: str = ""
    seeds: tuple[Any, ...] = (None,)
    identity: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Items."""
        return len(self.keys)

    def on(self, keys: Sequence[str]) -> np.ndarray:
        """The (seeds, len(keys)) outcomes of the given keys (every key must be one of this side's)."""
        position = {key: i for i, key in enumerate(self.keys)}
        return self.values[:, [position[key] for key in keys]]


def _same(value: Any, wanted: Any) -> bool:
    """Whether a stored field matches a selector's value (fractions as floats, options as plain JSON)."""
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and value not in (None, ""):
        try:
            return math.isclose(float(value), float(wanted), rel_tol=0, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    if isinstance(wanted, Mapping) or isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str) == json.dumps(wanted, sort_keys=True, default=str)
    if wanted is None:
        return value in (None, "")
    return value == wanted


def describe(where: Mapping[str, Any]) -> str:
    """A selector as a short label: its values joined by '/' (fraction as ϱ=…)."""
    parts = []
    for key, value in where.items():
        if value in (None, ""):
            continue
        parts.append(f"ϱ={value:g}" if key == "fraction" and isinstance(value, (int, float)) else str(value))
    return "/".join(parts) or "all"


def select(records: Sequence[Mapping[str, Any]], where: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The item records whose fields match every (field, value) of a selector (a missing field reads as None)."""
    return [record for record in records if all(_same(record.get(key), value) for key, value in where.items())]


def outcomes(records: Sequence[Mapping[str, Any]], where: Mapping[str, Any], *, label: str | None = None) -> Outcomes:
    """The outcomes of one variant: its records' items, seeds stacked (a seeded kind's frames); refused if the selector
    picks nothing, or records that differ in anything but the seed, or seeds scored on different items."""
    found = select(records, where)
    name = label or describe(where)
    if not found:
        raise UserError(f"comparison: no per-item outcomes match {name} ({dict(where)})")
    identities = {json.dumps({key: found_record.get(key) for key in IDENTITY}, sort_keys=True, default=str)
                  for found_record in found}
    if len(identities) > 1:
        differing = sorted(key for key in IDENTITY if len({json.dumps(r.get(key), default=str) for r in found}) > 1)
        raise UserError(f"comparison: {name} is ambiguous: its records differ in {', '.join(differing)}; name them")
    by_seed: dict[Any, Mapping[str, Any]] = {}
    for record in found:
        by_seed.setdefault(record.get(SEED), record)  # a resumed run stores each job once; duplicates are one seed
    seeds = sorted(by_seed, key=lambda s: (s is None, str(s)))
    keys = tuple(by_seed[seeds[0]]["keys"])
    if any(tuple(by_seed[s]["keys"]) != keys for s in seeds):
        raise UserError(f"comparison: the seeds of {name} were scored on different items")
    values = stats.as_outcomes([list(by_seed[s]["outcomes"]) for s in seeds])
    identity = {key: found[0].get(key) for key in IDENTITY}
    return Outcomes(keys, values, name, tuple(seeds), identity)


def shared_keys(sides: Sequence[Outcomes]) -> list[str]:
    """The keys every side holds, in the first side's order."""
    common = set(sides[0].keys).intersection(*(side.keys for side in sides[1:]))
    return [key for key in sides[0].keys if key in common]


def interpolated(points: Sequence[tuple[float, Outcomes]], x: float, *, label: str = "") -> Outcomes | None:
    """A side's outcomes at x between measured points (x_i, outcomes_i) of one curve (e.g. energy kept per fraction):
    per item, the same linear weight between the two bracketing points (stats.interpolate_outcomes), so the mean of
    the interpolated items is the interpolated mean and pairing with other sides is kept. Points with several seeds
    must have the same seeds (one frame per seed along the curve) or one seed (an anchor, broadcast). None outside the
    points' range."""
    if not points:
        return None
    xs = [float(px) for px, _ in points]
    found = stats.interpolation_weights(xs, float(x))
    if found is None:
        return None
    i, j, w = found
    left, right = points[i][1], points[j][1]
    keys = shared_keys([left, right])
    a, b = left.on(keys), right.on(keys)
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError("interpolating between points with different numbers of seeds")
    seeds = left.seeds if a.shape[0] >= b.shape[0] else right.seeds
    return Outcomes(tuple(keys), (1 - w) * a + w * b, label or left.label, seeds, left.identity)


def _side(records: Sequence[Mapping[str, Any]], side: Mapping[str, Any] | Outcomes,
          common: Mapping[str, Any]) -> Outcomes:
    """A selector (with the common fields) or ready outcomes."""
    return side if isinstance(side, Outcomes) else outcomes(records, {**common, **side})


def paired_draws(sides: Sequence[Outcomes], statistic: Callable[[np.ndarray], np.ndarray], *,
                 bootstrap: int = stats.BOOTSTRAP, seed: int = 0) -> stats.Draws:
    """A statistic of the sides' means on their shared items, with joint bootstrap draws (items once for all sides,
    each side's seeds resampled on their own)."""
    keys = shared_keys(sides)
    arrays = [side.on(keys) for side in sides]
    return stats.statistic_draws(arrays, statistic, bootstrap=bootstrap, seed=seed)


def _difference(means: np.ndarray) -> np.ndarray:
    """mean(a) − mean(b) of (..., 2) means."""
    return means[..., 0] - means[..., 1]


def _share_difference(means: np.ndarray) -> np.ndarray:
    """share(a) − share(b) of (..., 4) means (a, b, start, end): how much more of the change a keeps than b."""
    start, end = means[..., 2], means[..., 3]
    return stats.share_of_change(means[..., 0], start, end) - stats.share_of_change(means[..., 1], start, end)


def compare(records: Sequence[Mapping[str, Any]], a: Mapping[str, Any] | Outcomes, b: Mapping[str, Any] | Outcomes,
            *, bootstrap: int = stats.BOOTSTRAP, seed: int = 0, level: float = stats.LEVEL,
            **common: Any) -> stats.Comparison:
    """mean(a) − mean(b) of two variants on their shared items: paired-bootstrap interval and two-sided p-value.

    a, b: selectors (identity fields → values, e.g. {"model": "harmful", "subspace": "top_k", "fraction": 0.25}) or
    Outcomes; common: fields both selectors share (metric=..., judge=..., layer=...).
    """
    sides = [_side(records, a, common), _side(records, b, common)]
    found = paired_draws(sides, _difference, bootstrap=bootstrap, seed=seed)
    return as_comparison(found.summary(level, "paired bootstrap"), sides)


def share_draws(records: Sequence[Mapping[str, Any]], a: Mapping[str, Any] | Outcomes,
                b: Mapping[str, Any] | Outcomes, start: Mapping[str, Any] | Outcomes,
                end: Mapping[str, Any] | Outcomes, *, bootstrap: int = stats.BOOTSTRAP, seed: int = 0,
                **common: Any) -> tuple[stats.Draws, list[Outcomes]]:
    """The bootstrap draws of share(a) − share(b) (see compare_share) and the four sides; keep them to compare two
    such statistics on different items (stats.independent_difference)."""
    sides = [_side(records, side, common) for side in (a, b, start, end)]
    return paired_draws(sides, _share_difference, bootstrap=bootstrap, seed=seed), sides


def compare_share(records: Sequence[Mapping[str, Any]], a: Mapping[str, Any] | Outcomes,
                  b: Mapping[str, Any] | Outcomes, start: Mapping[str, Any] | Outcomes,
                  end: Mapping[str, Any] | Outcomes, *, bootstrap: int = stats.BOOTSTRAP, seed: int = 0,
                  level: float = stats.LEVEL, **common: Any) -> stats.Comparison:
    """share(a) − share(b), share(v) = (mean(v) − mean(start)) / (mean(end) − mean(start)): how much more of the change
    from start to end (aligned → fine-tuned) a keeps than b. The ratio is bootstrapped as a ratio: all four sides are
    resampled jointly on their shared items and the statistic recomputed per resample."""
    found, sides = share_draws(records, a, b, start, end, bootstrap=bootstrap, seed=seed, **common)
    return as_comparison(found.summary(level, SHARE_METHOD), sides)


def as_comparison(result: stats.Comparison, sides: Sequence[Outcomes]) -> stats.Comparison:
    """The comparison with each side's seed count."""
    return stats.Comparison(result.difference, result.low, result.high, result.p_value, result.n,
                            sides[0].values.shape[0], sides[1].values.shape[0], result.method, result.level)


def comparison_row(family: str, comparison: str, result: stats.Comparison, *, a: str, b: str, statistic: str,
                   at: str = "", **labels: Any) -> dict[str, Any]:
    """One row of the comparisons table (tables.COMPARISONS): labels (finetune, scheme, metric, judge, ...), the sides,
    where they are compared, the statistic and its estimate, interval, p-value (p_holm filled by holm_adjust)."""
    number = (lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
    return {**{column: None for column in COMPARISONS.columns}, **labels, "family": family, "comparison": comparison,
            "a": a, "b": b, "at": at, "statistic": statistic, "estimate": number(result.difference),
            "ci_low": number(result.low), "ci_high": number(result.high), "p_value": number(result.p_value),
            "p_holm": None, "n": result.n, "seeds_a": result.seeds_a, "seeds_b": result.seeds_b,
            "method": result.method}


def holm_adjust(rows: Sequence[Mapping[str, Any]], by: str | None = None) -> list[dict[str, Any]]:
    """Rows with p_holm: Holm's step-down adjustment over all rows (one family), or separately per value of `by`;
    rows without a p-value keep p_holm empty and are not counted."""
    out = [dict(found) for found in rows]
    groups: dict[Any, list[int]] = {}
    for index, found in enumerate(out):
        groups.setdefault(found.get(by) if by else None, []).append(index)
    for members in groups.values():
        p_values = [math.nan if out[i].get("p_value") is None else float(out[i]["p_value"]) for i in members]
        for i, adjusted in zip(members, stats.holm(p_values)):
            out[i]["p_holm"] = None if math.isnan(adjusted) else adjusted
    return out


def is_resolved(row: Mapping[str, Any]) -> bool:
    """Whether a comparison row's interval excludes 0 (the difference is supported at its level)."""
    low, high = row.get("ci_low"), row.get("ci_high")
    return low is not None and high is not None and (low > 0 or high < 0)
