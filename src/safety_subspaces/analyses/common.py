"""What analyses share: the SVD-method check, η grids, pairs, MSO curves from spectra, means over rows, depth rules."""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from itertools import combinations
from typing import Iterable, Mapping, Sequence

from .. import linalg
from ..errors import UserError
from ..spectra import Spectrum

PAIR_SEPARATOR = " vs "


def check_svd_method(method: str, where: str = "--svd-method") -> str:
    """An exact decomposition method name, one of linalg.SVD_METHODS (a UserError naming where otherwise)."""
    if method not in linalg.SVD_METHODS:
        raise UserError(f"{where} {method!r}: use {', '.join(linalg.SVD_METHODS)}")
    return method


def num_layers(config: Mapping, names: Sequence[str] = (), role: str = "model") -> int:
    """L: a config's num_hidden_layers (its text config's for multimodal models), else 1 + the largest block index."""
    from ..checkpoints import layer_index

    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}
    for source in (config, text):
        value = source.get("num_hidden_layers")
        if isinstance(value, int) and value > 0:
            return value
    indices = [i for i in (layer_index(name) for name in names) if i is not None]
    if not indices:
        raise UserError(f"{role}: cannot tell the number of layers (no num_hidden_layers, no layer names)")
    return max(indices) + 1


def check_etas(etas: Iterable[float], flag: str = "--eta") -> list[float]:
    """The η values, each in (0, 1], sorted and deduplicated (UserError naming the first bad one)."""
    values = []
    for eta in etas:
        try:
            values.append(linalg.check_fraction(float(eta), "eta"))
        except (TypeError, ValueError):
            raise UserError(f"{flag}: energy fraction {eta!r} is outside (0, 1]") from None
    if not values:
        raise UserError(f"{flag}: give at least one energy fraction in (0, 1]")
    return sorted(set(values))


def pair_label(a: str, b: str) -> str:
    """The label of a pair in result tables and legends: 'a vs b'."""
    return f"{a}{PAIR_SEPARATOR}{b}"


def choose_pairs(names: Sequence[str], requested: Sequence[str] | None, what: str,
                 flag: str = "--pairs") -> list[tuple[str, str]]:
    """Every unordered pair of names in the given order, or the requested 'a:b' pairs (validated)."""
    if not requested:
        return list(combinations(names, 2))
    pairs = []
    for text in requested:
        a, sep, b = text.partition(":")
        if not sep or not a or not b:
            raise UserError(f"{flag} {text!r}: expected NAME:NAME, e.g. useful:harmful")
        for name in (a, b):
            if name not in names:
                raise UserError(f"{flag} {text!r}: no {what} named {name!r} (have {', '.join(names)})")
        pairs.append((a, b))
    return pairs


def spectrum_ranks(spectrum: Spectrum, etas: Sequence[float]) -> list[int]:
    """k for each η: the smallest rank holding η of the spectrum's exact total energy."""
    return [linalg.rank_from_energy(spectrum.singular, eta, spectrum.total) for eta in etas]


NULL_RULE = ("mso_random_q95: the 95 % quantile of MSO between independent Haar subspaces of dims k_a, k_b in R^d "
             "(Monte Carlo, 2,000 draws, for min(k_a, k_b) <= 16; exact-moment normal above); on mean rows, the 95 % "
             "quantile of the mean of independent such draws, one per member (tensor or hidden state)")


@functools.lru_cache(maxsize=65536)
def null_quantile(k_a: int, k_b: int, d: int) -> float:
    """The 95 % quantile of MSO for independent random subspaces of these dimensions (memoised)."""
    from .. import stats

    return stats.mso_null_quantile(k_a, k_b, d)[0]


@functools.lru_cache(maxsize=1024)
def _member_draws(k_a: int, k_b: int, d: int, draws: int, seed: int):
    """Null draws of one member of a mean row (memoised, read-only)."""
    from .. import stats

    values = stats.mso_null_member_draws(k_a, k_b, d, draws=draws, seed=seed)
    values.setflags(write=False)
    return values


def null_quantile_of_mean(members: Sequence[Mapping]) -> float:
    """The 95 % quantile of the mean MSO of independent random subspaces with each member row's k_a, k_b and d."""
    from .. import stats

    triples = [(int(row["k_a"]), int(row["k_b"]), int(row["d"])) for row in members]
    return stats.mso_null_mean_quantile(triples, member_draws=_member_draws)


def mso_curve(a: Spectrum, b: Spectrum, etas: Sequence[float], *, null: bool = True) -> list[dict]:
    """eta, k_a, k_b, d, mso, mso_random (and unless null is False mso_random_q95) for every η, from one cross product
    of the two bases."""
    ks_a, ks_b = spectrum_ranks(a, etas), spectrum_ranks(b, etas)
    d = int(a.left.shape[0])
    if int(b.left.shape[0]) != d:
        raise ValueError(f"bases live in different spaces (d = {d} and {int(b.left.shape[0])})")
    table = linalg.overlap_table(a.left[:, : max(ks_a)], b.left[:, : max(ks_b)])
    rows = []
    for eta, k_a, k_b in zip(etas, ks_a, ks_b):
        row = {"eta": eta, "k_a": k_a, "k_b": k_b, "d": d,
               "mso": linalg.mso_from_table(table, k_a, k_b), "mso_random": linalg.mso_random_baseline(k_a, k_b, d)}
        if null:
            row["mso_random_q95"] = null_quantile(k_a, k_b, d) if min(k_a, k_b) > 0 else math.nan
        rows.append(row)
    return rows


def mean_rows(rows: Sequence[Mapping], keys: Sequence[str], numeric: Sequence[str], count_field: str) -> list[dict]:
    """One row per distinct value of keys: the mean of each numeric field over rows with a finite mso; count_field counts them.

    When the rows carry mso_random_q95, the mean row's is the null quantile of the mean (null_quantile_of_mean).
    """
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    out = []
    for group_key, members in groups.items():
        finite = [row for row in members if is_finite(row["mso"])]
        mean = {field: (sum(float(row[field]) for row in finite) / len(finite) if finite else math.nan) for field in numeric}
        if finite and all("mso_random_q95" in row for row in finite):
            mean["mso_random_q95"] = null_quantile_of_mean(finite)
        out.append({**dict(zip(keys, group_key)), **mean, count_field: len(finite)})
    return out


def is_finite(value) -> bool:
    """Whether a value is a finite number."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def exact_fraction(value: float) -> Fraction:
    """The decimal the user wrote (0.65 is 13/20, not the nearest binary float)."""
    return Fraction(repr(float(value)))


def depth_band(num_hidden_states: int, low: float, high: float) -> list[int]:
    """Hidden-state indices floor(low·L') … floor(high·L') − 1 of the L' = L + 1 hidden states (the reference code's rule)."""
    start = math.floor(exact_fraction(low) * num_hidden_states)
    stop = math.floor(exact_fraction(high) * num_hidden_states)
    return list(range(max(start, 0), min(stop, num_hidden_states)))


def check_depth(depth: Sequence[float], flag: str = "--depth") -> tuple[float, float]:
    """A depth band (low, high) with 0 <= low < high <= 1."""
    if len(depth) != 2:
        raise UserError(f"{flag}: expected two fractions LOW,HIGH such as 0.65,0.90, got {len(depth)} value(s)")
    low, high = (float(x) for x in depth)
    if not (0 <= low < high <= 1):
        raise UserError(f"{flag} {low:g},{high:g}: need 0 <= LOW < HIGH <= 1")
    return low, high


def depth_layer(percentile: float, num_layers: int) -> int:
    """The decoder layer at a depth percentile: floor(p/100 · L), at most L − 1 (layers 0 … L − 1)."""
    if num_layers <= 0:
        raise ValueError("a model needs at least one layer")
    return min(num_layers - 1, math.floor(exact_fraction(percentile) / 100 * num_layers))


def check_percentiles(percentiles: Sequence[float], flag: str = "--depth-percentiles") -> list[float]:
    """Depth percentiles, each in [0, 100]."""
    values = [float(p) for p in percentiles]
    bad = [p for p in values if not 0 <= p <= 100]
    if bad:
        raise UserError(f"{flag}: {bad[0]:g} is outside [0, 100]")
    return values
