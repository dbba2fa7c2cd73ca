"""Inference for every number: intervals, paired comparisons, multiplicity, power and the MSO null. Pure (numpy only).

Conventions: per-item outcomes are float arrays with NaN for items without a valid outcome (an unparsable
judgment); an array of shape (S, n) holds S independent seeds of one variant scored on the same n items (S = 1 for
deterministic variants). Every random draw takes an explicit seed, so the same inputs give the same interval.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LEVEL = 0.95
BOOTSTRAP = 2000
POWER = 0.8
MSO_NULL_DRAWS = 2000
# beyond this smaller rank, the MSO null's 95 % quantile is its exact-moment normal quantile: measured against 6,000
# Monte-Carlo draws over k = 12…20, k_b = k…8k, d = k_b + 1…3000, the largest gap was 0.004 (near-full subspaces,
# MSO ≈ 0.95) and under 0.002 elsewhere, the Monte-Carlo error of 2,000 draws; Monte Carlo costs ~k³ per draw
MSO_NULL_EXACT_MAX_K = 16


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (inverse CDF) at p."""
    from scipy.stats import norm

    return float(norm.ppf(p))


def _normal_cdf(x: float) -> float:
    """The standard normal CDF at x."""
    return 0.5 * math.erfc(-x / math.sqrt(2))


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval at `level`, the number of items and seeds it rests on, and how."""

    estimate: float
    low: float
    high: float
    n: int
    seeds: int = 1
    method: str = "bootstrap"
    level: float = LEVEL

    def contains(self, value: float) -> bool:
        """Whether value lies inside the closed interval."""
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Comparison:
    """A paired difference a − b over shared items: estimate, interval, two-sided p-value (and Holm's, once adjusted)."""

    difference: float
    low: float
    high: float
    p_value: float
    n: int
    seeds_a: int = 1
    seeds_b: int = 1
    method: str = "paired bootstrap"
    level: float = LEVEL
    p_holm: float | None = None


def as_outcomes(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Per-item outcomes as a float (S, n) array (one row for a 1-D input), None → NaN."""
    array = np.array([np.nan if v is None else v for v in np.ravel(values)], dtype=float).reshape(np.shape(values))
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"outcomes must be (items,) or (seeds, items), got shape {array.shape}")
    return array


def is_binary(values: np.ndarray) -> bool:
    """Whether every valid outcome is 0 or 1."""
    valid = values[~np.isnan(values)]
    return bool(valid.size) and bool(np.all((valid == 0) | (valid == 1)))


def wilson_interval(successes: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes of n); (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    z = _normal_quantile(1 - (1 - level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def resample_counts(n: int, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap resamples of n items as multiplicities: a (bootstrap, n) array of multinomial counts."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)


def weighted_means(outcomes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean over valid items of each seed under each resample: (S, n) × (B, n) → (S, B) (NaN if none valid)."""
    valid = ~np.isnan(outcomes)
    total = np.where(valid, outcomes, 0.0) @ counts.T
    weight = valid.astype(float) @ counts.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / weight


def seed_choice(seeds: int, draws: int, rng: np.random.Generator) -> np.ndarray | None:
    """Which seeds each resample averages: a (draws, seeds) array of seed indices drawn with replacement (None if S = 1)."""
    return None if seeds == 1 else rng.integers(0, seeds, size=(draws, seeds))


def seeds_averaged(means: np.ndarray, chosen: np.ndarray | None) -> np.ndarray:
    """The mean over the chosen seeds per resample: (S, B) → (B,) (NaN seeds skipped)."""
    if chosen is None:
        return means[0]
    picked = np.take_along_axis(means.T, chosen, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample whose every seed is NaN stays NaN
        return np.nanmean(picked, axis=1)


def seed_resample(means: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Average over seeds drawn with replacement, per resample: (S, B) → (B,) (no draw when S = 1)."""
    return seeds_averaged(means, seed_choice(means.shape[0], means.shape[1], rng))


def point_mean(outcomes: np.ndarray) -> float:
    """Mean over seeds of the mean over valid items (nan when nothing is valid)."""
    with np.errstate(invalid="ignore"):
        per_seed = np.array([np.nanmean(row) if np.any(~np.isnan(row)) else np.nan for row in outcomes])
    return float(np.nanmean(per_seed)) if np.any(~np.isnan(per_seed)) else math.nan


def percentile_bounds(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The (1 − level)/2 and 1 − (1 − level)/2 percentiles of finite bootstrap draws."""
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return math.nan, math.nan
    tail = (1 - level) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def mean_interval(values, *, bootstrap: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL,
                  method: str = "auto") -> Interval:
    """The mean of per-item outcomes with a 95 % interval: Wilson for one seed of 0/1 outcomes, else percentile bootstrap.

    method: "auto", "wilson" or "bootstrap" (items, and seeds when there are several, resampled with replacement).
    """
    outcomes = as_outcomes(values)
    seeds, n = outcomes.shape
    valid = int(np.sum(~np.isnan(outcomes)))
    estimate = point_mean(outcomes)
    if valid == 0:
        return Interval(math.nan, math.nan, math.nan, n, seeds, "none", level)
    if method == "auto":
        method = "wilson" if seeds == 1 and is_binary(outcomes) else "bootstrap"
    if method == "wilson":
        if seeds != 1 or not is_binary(outcomes):
            raise ValueError("the Wilson interval needs one seed of 0/1 outcomes")
        low, high = wilson_interval(float(np.nansum(outcomes)), valid, level)
        return Interval(estimate, low, high, valid, 1, "wilson", level)
    if method != "bootstrap":
        raise ValueError(f"unknown interval method {method!r}; use auto, wilson or bootstrap")
    rng = np.random.default_rng(seed)
    draws = seed_resample(weighted_means(outcomes, resample_counts(n, bootstrap, rng)), rng)
    low, high = percentile_bounds(draws, level)
    return Interval(estimate, low, high, n, seeds, "bootstrap", level)


def bootstrap_z_p_value(estimate: float, draws: np.ndarray) -> float:
    """Two-sided p-value of 'no difference' from the bootstrap standard error: 2·Φ(−|estimate| / sd(draws)).

    The percentile p-value, 2·min(P(d* ≤ 0), P(d* ≥ 0)), cannot go below 2/(B + 1), which no Holm family of more than
    0.05·(B + 1)/2 comparisons could ever pass; the normal approximation with the bootstrap SE has no such floor. A
    statistic with no spread in its draws has p = 0 when it is not 0 (every resample agrees) and 1 when it is.
    """
    finite = draws[np.isfinite(draws)]
    if not finite.size or math.isnan(estimate):
        return math.nan
    spread = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
    if spread <= 1e-12 * max(1.0, abs(estimate)):
        return 0.0 if abs(estimate) > 1e-12 else 1.0
    return float(min(1.0, 2 * _normal_cdf(-abs(estimate) / spread)))


def paired_difference(a, b, *, bootstrap: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> Comparison:
    """mean(a) − mean(b) over the same items, with a paired-bootstrap interval and two-sided p-value (from the
    bootstrap standard error: bootstrap_z_p_value).

    a, b: outcomes (items,) or (seeds, items) on the same items in the same order. Items are resampled jointly for
    both variants (the pairing); each variant's seeds are resampled independently (seed variation). An item with no
    valid outcome in either variant is left out of both.
    """
    return statistic_draws([a, b], lambda means: means[..., 0] - means[..., 1], bootstrap=bootstrap,
                           seed=seed).summary(level, "paired bootstrap")


def shared_items(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Items with a valid outcome in at least one seed of every array: a boolean (n,) mask."""
    return np.logical_and.reduce([np.any(~np.isnan(array), axis=0) for array in arrays])


def joint_mean_draws(arrays: Sequence, *, groups: Sequence[object] | None = None, bootstrap: int = BOOTSTRAP,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Bootstrap means of several variants scored on the same items, resampled jointly: (point (K,), draws (B, K), n).

    arrays: K outcome arrays (S_k, n) on the same n items in the same order. Every resample draws items once for all
    of them (the pairing), and seeds with replacement per group: arrays in the same group (e.g. one random subspace
    kind at several fractions, whose seed s is one frame) share the seed draw; by default each array is its own group.
    Items without a valid outcome in every array are left out of all.
    """
    arrays = [as_outcomes(array) for array in arrays]
    if len({array.shape[1] for array in arrays}) != 1:
        raise ValueError(f"paired outcomes need the same items: {[array.shape[1] for array in arrays]}")
    groups = list(range(len(arrays))) if groups is None else list(groups)
    if len(groups) != len(arrays):
        raise ValueError("give one group label per array")
    keep = shared_items(arrays)
    arrays = [array[:, keep] for array in arrays]
    n = int(keep.sum())
    point = np.array([point_mean(array) for array in arrays])
    if n == 0:
        return point, np.full((bootstrap, len(arrays)), np.nan), 0
    rng = np.random.default_rng(seed)
    counts = resample_counts(n, bootstrap, rng)
    chosen: dict[object, np.ndarray | None] = {}
    columns = []
    for array, group in zip(arrays, groups):
        if group not in chosen:
            chosen[group] = seed_choice(array.shape[0], bootstrap, rng)
        choice = chosen[group]
        if choice is not None and choice.max(initial=0) >= array.shape[0]:
            raise ValueError(f"arrays of group {group!r} need the same number of seeds")
        columns.append(seeds_averaged(weighted_means(array, counts), choice))
    return point, np.stack(columns, axis=1), n


@dataclass(frozen=True)
class Draws:
    """A statistic's point estimate, its bootstrap draws, the items it rests on and the seeds of each variant."""

    estimate: float
    draws: np.ndarray
    n: int
    seeds: tuple[int, ...] = (1,)

    def summary(self, level: float = LEVEL, method: str = "joint paired bootstrap") -> Comparison:
        """The estimate with its percentile interval and the two-sided bootstrap p-value of 'statistic = 0'."""
        if self.n == 0:
            return Comparison(math.nan, math.nan, math.nan, math.nan, 0, self.seeds[0], max(self.seeds[1:] or (1,)),
                              method, level)
        low, high = percentile_bounds(self.draws, level)
        return Comparison(self.estimate, low, high, bootstrap_z_p_value(self.estimate, self.draws), self.n, self.seeds[0],
                          max(self.seeds[1:] or (1,)), method, level)


def statistic_draws(arrays: Sequence, statistic, *, groups: Sequence[object] | None = None,
                    bootstrap: int = BOOTSTRAP, seed: int = 0) -> Draws:
    """Any statistic of several variants' means on shared items (a difference, a ratio of differences), with its
    joint bootstrap draws (items resampled once for all arrays, seeds per group, as in joint_mean_draws).

    statistic: maps a (..., K) array of means (the point estimate's (K,), the draws' (B, K)) to (...) values.
    """
    point, draws, n = joint_mean_draws(arrays, groups=groups, bootstrap=bootstrap, seed=seed)
    seeds = tuple(as_outcomes(array).shape[0] for array in arrays)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = float(statistic(point)) if n else math.nan
        values = np.asarray(statistic(draws), dtype=float)
    return Draws(estimate, values, n, seeds)


def paired_statistic(arrays: Sequence, statistic, *, groups: Sequence[object] | None = None,
                     bootstrap: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> Comparison:
    """statistic_draws summarised: the estimate, its percentile interval and two-sided bootstrap p-value."""
    return statistic_draws(arrays, statistic, groups=groups, bootstrap=bootstrap, seed=seed).summary(level)


def share_of_change(variant, reference, finetuned) -> np.ndarray:
    """(variant − reference) / (finetuned − reference): how much of a fine-tune's change a variant keeps (0 … 1)."""
    return (np.asarray(variant) - np.asarray(reference)) / (np.asarray(finetuned) - np.asarray(reference))


def independent_difference(a: Draws, b: Draws, level: float = LEVEL) -> Comparison:
    """a − b of two statistics on different items (independent bootstrap draws of each): interval and p-value."""
    difference = Draws(a.estimate - b.estimate, a.draws - b.draws, min(a.n, b.n), (max(a.seeds), max(b.seeds)))
    return difference.summary(level, "independent bootstrap")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control); NaN entries stay NaN and are not counted."""
    order = [i for i in sorted(range(len(p_values)), key=lambda i: p_values[i]) if not math.isnan(p_values[i])]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def interpolation_weights(xs: Sequence[float], x: float) -> tuple[int, int, float] | None:
    """(i, j, w) with x = (1 − w)·xs[i] + w·xs[j] for the closest bracketing pair of points; None outside their range."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    for left, right in zip(order, order[1:]):
        if xs[left] <= x <= xs[right]:
            span = xs[right] - xs[left]
            return left, right, 0.0 if span == 0 else (x - xs[left]) / span
    if len(xs) == 1 and xs[0] == x:
        return 0, 0, 0.0
    return None


def interpolate_outcomes(energies: Sequence[float], outcomes: Sequence[np.ndarray], energy: float) -> np.ndarray | None:
    """Per-item outcomes at an energy kept between measured fractions: the same linear weight for every item.

    The mean of interpolated items is the interpolated mean, so pairing with another variant's items is kept.
    """
    found = interpolation_weights(list(energies), energy)
    if found is None:
        return None
    i, j, w = found
    return (1 - w) * np.asarray(outcomes[i], dtype=float) + w * np.asarray(outcomes[j], dtype=float)


def paired_sd(a, b) -> float:
    """Standard deviation of per-item differences a − b of two pilot variants (one seed each)."""
    a, b = as_outcomes(a)[0], as_outcomes(b)[0]
    difference = a - b
    difference = difference[~np.isnan(difference)]
    return float(np.std(difference, ddof=1)) if difference.size > 1 else math.nan


def bounded_sd(mean: float, low: float, high: float) -> float:
    """The largest standard deviation an outcome on [low, high] with this mean can have: sqrt((mean−low)(high−mean))."""
    return math.sqrt(max(0.0, (mean - low) * (high - mean)))


def minimum_detectable_difference(sd_difference: float, n: int, *, alpha: float = 0.05, power: float = POWER) -> float:
    """Smallest true paired difference a two-sided test at level alpha detects with this power on n items (normal)."""
    if n <= 0:
        return math.nan
    return (_normal_quantile(1 - alpha / 2) + _normal_quantile(power)) * sd_difference / math.sqrt(n)


def power_of(effect: float, sd_difference: float, n: int, *, alpha: float = 0.05) -> float:
    """Power of a two-sided level-alpha paired test to detect a true difference `effect` on n items (normal)."""
    if n <= 0 or sd_difference <= 0:
        return math.nan
    shift = abs(effect) * math.sqrt(n) / sd_difference
    z = _normal_quantile(1 - alpha / 2)
    return _normal_cdf(shift - z) + _normal_cdf(-shift - z)


def mso_null_moments(k_a: int, k_b: int, d: int) -> tuple[float, float]:
    """Mean and variance of ‖Q_aᵀQ_b‖_F² for independent Haar subspaces of dims k_a, k_b in R^d (exact)."""
    mean = k_a * k_b / d
    variance = 2 * k_a * k_b * (d - k_a) * (d - k_b) / (d * d * (d - 1) * (d + 2)) if d > 1 else 0.0
    return mean, variance


def _bartlett_wishart(k: int, df: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of a k×k Wishart(I, df) matrix (df ≥ k) by Bartlett's decomposition: (draws, k, k)."""
    lower = np.tril(rng.standard_normal((draws, k, k)), -1)
    diagonal = np.sqrt(rng.chisquare(df - np.arange(k), size=(draws, k)))
    lower[:, np.arange(k), np.arange(k)] = diagonal
    return lower @ np.swapaxes(lower, 1, 2)


def mso_null_draws(k_a: int, k_b: int, d: int, *, draws: int = MSO_NULL_DRAWS, seed: int = 0) -> np.ndarray:
    """Monte-Carlo draws of MSO between independent Haar subspaces of dims k_a, k_b in R^d.

    ‖Q_aᵀQ_b‖² is tr(W₁(W₁+W₂)⁻¹) with W₁ ~ Wishart_k(I, K) and W₂ ~ Wishart_k(I, d − K), k = min, K = max of the
    ranks (fix Q_a to coordinate axes; the Gaussian matrix spanning Q_b splits into the rows inside and outside).
    """
    small, big = min(k_a, k_b), max(k_a, k_b)
    if small == 0 or d <= 0:
        return np.full(draws, math.nan)
    if big >= d:
        return np.ones(draws)
    rng = np.random.default_rng(seed)
    inside = _bartlett_wishart(small, big, draws, rng)
    outside = _bartlett_wishart(small, d - big, draws, rng) if d - big >= small else None
    if outside is None:  # fewer outside rows than columns: draw the Gaussian rows themselves
        rows = rng.standard_normal((draws, d - big, small))
        outside = np.swapaxes(rows, 1, 2) @ rows
    traces = np.trace(np.linalg.solve(inside + outside, inside), axis1=1, axis2=2)
    return traces / small


def mso_null_member_draws(k_a: int, k_b: int, d: int, *, draws: int = MSO_NULL_DRAWS, seed: int = 0) -> np.ndarray:
    """Draws of one MSO under the null, by the branch mso_null_quantile uses: Monte Carlo, exact-moment normal, or 1."""
    small = min(k_a, k_b)
    if small == 0 or d <= 0:
        return np.full(draws, math.nan)
    if max(k_a, k_b) >= d:
        return np.ones(draws)
    if small <= MSO_NULL_EXACT_MAX_K:
        return mso_null_draws(k_a, k_b, d, draws=draws, seed=seed)
    mean, variance = mso_null_moments(k_a, k_b, d)
    normal = np.random.default_rng(seed).standard_normal(draws)
    return np.clip((mean + normal * math.sqrt(variance)) / small, 0.0, 1.0)


def mso_null_mean_quantile(members: Sequence[tuple[int, int, int]], *, q: float = LEVEL, draws: int = MSO_NULL_DRAWS,
                           seed: int = 0, member_draws=None) -> float:
    """The q-quantile of the mean MSO of independent Haar pairs, one per (k_a, k_b, d) member (a layer's tensors, a
    band's hidden states): what a mean row of MSO would show if every member's subspaces were random.

    member_draws(k_a, k_b, d, draws, seed) -> draws may be a memoised mso_null_member_draws; member i is seeded seed + i.
    """
    members = [member for member in members if min(member[0], member[1]) > 0 and member[2] > 0]
    if not members:
        return math.nan
    draw = member_draws or (lambda k_a, k_b, d, draws, seed: mso_null_member_draws(k_a, k_b, d, draws=draws, seed=seed))
    total = np.zeros(draws)
    for index, (k_a, k_b, d) in enumerate(members):
        total += draw(int(k_a), int(k_b), int(d), draws, seed + index)
    return float(np.quantile(total / len(members), q))


def mso_null_quantile(k_a: int, k_b: int, d: int, *, q: float = LEVEL, draws: int = MSO_NULL_DRAWS,
                      seed: int = 0) -> tuple[float, str]:
    """The q-quantile of MSO under independent Haar subspaces, and how it was obtained ("monte carlo" or "normal").

    Monte Carlo (Wishart representation) while min(k_a, k_b) ≤ MSO_NULL_EXACT_MAX_K; above it, the exact mean and
    variance with a normal quantile (the trace of many weakly dependent terms).
    """
    small = min(k_a, k_b)
    if small == 0 or d <= 0:
        return math.nan, "none"
    if max(k_a, k_b) >= d:
        return 1.0, "exact"
    if small <= MSO_NULL_EXACT_MAX_K:
        return float(np.quantile(mso_null_draws(k_a, k_b, d, draws=draws, seed=seed), q)), "monte carlo"
    mean, variance = mso_null_moments(k_a, k_b, d)
    return min(1.0, (mean + _normal_quantile(q) * math.sqrt(variance)) / small), "normal"
