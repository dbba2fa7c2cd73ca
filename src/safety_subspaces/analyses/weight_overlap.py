"""Mode Subspace Overlap of weight updates (paper §5, Figure 4): per tensor, per layer, at chosen depth percentiles.

Each update is W_update − W_reference per tensor (U − A = Δ_T^useful, B − A = −Δ_A, ...). Its exact spectrum is
computed once per tensor and cached on disk (shared with the energy analysis' cache when it holds W_ref − W_update);
one cross product of two bases then gives the MSO at every η. Tensors stream one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import layout, paper, progress
from ..checkpoints import Checkpoint, TensorFilter, check_compatible, layer_index
from ..errors import UserError
from ..names import check_name
from ..plots import weight_overlap_figure
from ..profiling import stage
from ..spectra import Spectrum, SpectrumCache, null_dirs_summary
from ..tables import WEIGHT_OVERLAP
from . import ANALYSES, Analysis, AnalysisContext, AnalysisResult, RunSettings, run_analysis
from .common import (
    check_etas,
    check_percentiles,
    check_svd_method,
    choose_pairs,
    depth_layer,
    mean_rows,
    mso_curve,
    num_layers,
    pair_label,
)

NUMERIC = ("k_a", "k_b", "d", "mso", "mso_random")
AGGREGATION = (
    "layer rows: every numeric column (mso, mso_random, k_a, k_b, d) is the mean over the block's matrix (2-D) "
    "tensors with a non-empty basis (count in `tensors`); 1-D tensors (norms, biases) are not analysed"
)
DEPTH_RULE = "depth percentile p selects decoder layer floor(p/100 · L), at most L − 1, of layers 0 … L − 1"
MSO_RULE = ("||Q_a^T Q_b||_F^2 / min(k_a, k_b); k = smallest rank holding eta of the exact ||M||_F^2; "
            "mso_random = max(k_a, k_b) / d (d = output side of the tensor)")


@dataclass
class WeightOverlapResult(AnalysisResult):
    """The weight-overlap rows, the layers chosen at each depth percentile and the decompositions behind them."""

    pairs: list[str] = field(default_factory=list)
    depth_layers: dict[str, int] = field(default_factory=dict)
    decompositions: int = 0
    cache_hits: int = 0
    ranks: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # update -> tensor -> (rank, r)
    num_layers: int = 0
    tensor_count: int = 0
    filter: str = "all tensors"

    def manifest(self) -> dict[str, Any]:
        """Updates, rules, chosen layers and the decompositions."""
        return {
            "updates": {name: f"W_{name} − W_reference" for name in self.ranks}, "mso": MSO_RULE,
            "numerical_rank": {key: null_dirs_summary(ranks) for key, ranks in self.ranks.items()},
            "aggregation": AGGREGATION, "depth_rule": DEPTH_RULE, "num_layers": self.num_layers,
            "depth_layers": self.depth_layers, "tensors": self.tensor_count, "filter": self.filter,
            "decompositions": self.decompositions, "cache_hits": self.cache_hits,
        }


class UpdateSpectra:
    """Per-tensor spectra of one update W_update − W_reference, from the disk cache or decomposed once.

    A cached spectrum of W_reference − W_update (the project engine's Δ_A when the update is the base) has the same
    singular values and the same left singular vectors up to sign, so it is reused as is: MSO ignores signs.
    """

    def __init__(self, update: Checkpoint, reference: Checkpoint, *, root: Path | None, method: str, device: str):
        self.update = update
        self.cache = SpectrumCache(update, reference, root=root, method=method, device=device)
        self.mirror = SpectrumCache(reference, update, root=root, method=method, device=device)
        self.device = device
        self.reused = 0  # spectra read back (a miss is counted by the cache: self.cache.computed)

    def get(self, name: str, reference_tensor: Callable[[], torch.Tensor]) -> Spectrum:
        """The spectrum of this update's tensor `name`."""
        cached = self.cache.load(name) or self.mirror.load(name)
        if cached is not None:
            self.reused += 1
            return cached
        with stage("read"):
            delta = self.update.read(name).to(device=self.device, dtype=torch.float32) - reference_tensor()
        return self.cache.get(name, delta)


def tensor_rows(name: str, spectra: Mapping[str, Spectrum], pairs: Sequence[tuple[str, str]], etas: Sequence[float],
                device: str = "cpu") -> list[dict]:
    """Rows of one tensor: the MSO curve of every pair of updates."""
    layer = layer_index(name)
    moved = {key: dataclasses.replace(s, left=s.left.to(device)) for key, s in spectra.items()}
    rows = []
    for a, b in pairs:
        ranks = {"rank_a": moved[a].rank, "rank_b": moved[b].rank,
                 "null_dirs_a": moved[a].null_dirs, "null_dirs_b": moved[b].null_dirs}
        for point in mso_curve(moved[a], moved[b], etas):
            rows.append({"pair": pair_label(a, b), "name": name, "layer": layer, **point, "scope": "tensor", "tensors": 1,
                         **ranks})
    return rows


def layer_rows(rows: Sequence[dict], pairs: Sequence[str]) -> list[dict]:
    """Per-layer means over each block's matrix tensors (scope 'layer'), by layer, then pair in the given order, then η."""
    inside = [row for row in rows if row["scope"] == "tensor" and row["layer"] is not None]
    means = mean_rows(inside, ("pair", "layer", "eta"), NUMERIC, "tensors")
    means.sort(key=lambda r: (r["layer"], pairs.index(r["pair"]), r["eta"]))
    return [{**row, "name": "", "scope": "layer"} for row in means]


def depth_rows(layers: Sequence[dict], percentiles: Sequence[float], total_layers: int) -> tuple[list[dict], dict[str, int]]:
    """Copies of the layer rows at each depth percentile (scope 'depth', name 'p70'), and the layer each one chose."""
    chosen = {f"p{p:g}": depth_layer(p, total_layers) for p in percentiles}
    rows = [
        {**row, "name": label, "scope": "depth"}
        for label, layer in chosen.items()
        for row in layers
        if row["layer"] == layer
    ]
    return rows, chosen


def overlap_rows(reference: Checkpoint, updates: Mapping[str, Checkpoint], names: Sequence[str],
                 pairs: Sequence[tuple[str, str]], etas: Sequence[float], percentiles: Sequence[float], *,
                 cache_dir: Path | None = None, svd_method: str = "auto", device: str = "cpu") -> WeightOverlapResult:
    """Stream every tensor once (spectra cached) into depth, layer and tensor rows; nothing is written but the cache."""
    started = time.time()
    sources = {
        name: UpdateSpectra(checkpoint, reference, root=cache_dir, method=svd_method, device=device)
        for name, checkpoint in updates.items()
    }
    needed = sorted({name for pair in pairs for name in pair}, key=list(updates).index)
    rows: list[dict] = []
    ranks: dict[str, dict[str, tuple[int, int]]] = {key: {} for key in needed}
    with progress.bar("weight overlap", total=len(names)) as update:
        for name in names:
            reference_tensor = functools.cache(
                lambda: reference.read(name).to(device=device, dtype=torch.float32)  # noqa: B023 (same iteration)
            )
            spectra = {key: sources[key].get(name, reference_tensor) for key in needed}
            for key, spectrum in spectra.items():
                ranks[key][name] = (spectrum.rank, spectrum.r)
            with stage("products"):
                rows.extend(tensor_rows(name, spectra, pairs, etas, device))
            update(1, status=name)
    labels = [pair_label(a, b) for a, b in pairs]
    layers = layer_rows(rows, labels)
    total_layers = num_layers(reference.config, names, reference.role)
    depth, chosen = depth_rows(layers, percentiles, total_layers)
    notes = [f"{label}: layer {layer} has no analysed tensor (filtered out)"
             for label, layer in chosen.items() if not any(row["layer"] == layer for row in layers)]
    return WeightOverlapResult(
        [*depth, *layers, *rows], notes=notes, seconds=time.time() - started, pairs=labels, depth_layers=chosen,
        decompositions=sum(s.cache.computed for s in sources.values()), cache_hits=sum(s.reused for s in sources.values()),
        ranks=ranks, num_layers=total_layers, tensor_count=len(names),
    )


@ANALYSES.register("weight_overlap")
class WeightOverlap(Analysis):
    """MSO of every pair of weight updates relative to the reference, per tensor, per layer and at depth percentiles."""

    table, kind = WEIGHT_OVERLAP, "overlap-weights"
    relative_to_reference = uses_spectra = True

    def __init__(self, updates: list[str], eta: list[float] = paper.ETAS,
                 percentiles: list[float] = paper.PERCENTILES, tensors: str | None = None,
                 layers: list[int] | None = None, pairs: list[str] | None = None):
        """Each update is W_update − W_reference; pairs of them are compared.

        Args:
            updates: the models (roles) whose difference from the reference is compared, at least two.
            eta: energy fractions η in (0, 1].
            percentiles: depth percentiles p in [0, 100]: layer floor(p/100 · L) is reported.
            tensors: only tensors whose name matches this regular expression.
            layers: only tensors of these decoder layers.
            pairs: only these pairs A:B of updates (default: every pair).
        """
        if len(updates) < 2:
            raise UserError("updates: weight overlap needs at least two updates to compare")
        self.updates = list(updates)
        self.etas = check_etas(eta, "eta")
        self.percentiles = check_percentiles(percentiles, "percentiles")
        self.select = TensorFilter.of(tensors, layers)
        self.pairs = choose_pairs(self.updates, pairs, "update", "pairs")

    def roles(self, context: AnalysisContext, part: str | None = None) -> list[str]:
        """The reference and the updates."""
        return [context.reference, *self.updates]

    def identity(self, context: AnalysisContext) -> dict[str, Any]:
        """Inputs by content fingerprint, pairs and the grid."""
        return {
            "reference": context.model_identity(context.reference),
            "updates": {n: context.model_identity(n) for n in self.updates},
            "pairs": [pair_label(a, b) for a, b in self.pairs], "etas": self.etas, "tensors": self.select.pattern,
            "layers": list(self.select.layers) if self.select.layers is not None else None,
            "percentiles": self.percentiles, "svd_method": context.svd_method,
        }

    def run(self, context: AnalysisContext, part: str | None = None) -> WeightOverlapResult:
        """Stream every selected matrix tensor once into depth, layer and tensor rows."""
        reference = context.checkpoint(context.reference)
        updates = {name: context.checkpoint(name) for name in self.updates}
        shared = check_compatible({context.label(r): context.checkpoint(r) for r in self.roles(context)})
        names = [name for name in shared if self.select(name) and len(reference.infos[name].shape) >= 2]
        if not names:
            raise UserError(f"no matrix tensor matches the filter ({self.select.describe()})")
        result = overlap_rows(reference, updates, names, self.pairs, self.etas, self.percentiles,
                              cache_dir=context.cache_dir, svd_method=context.svd_method, device=context.device)
        result.filter = self.select.describe()
        return result

    def write_files(self, result: AnalysisResult, stage: Path) -> None:
        """figures/weight_overlap.png."""
        weight_overlap_figure(result.rows, stage / layout.FIGURES / "weight_overlap.png")


# ---------------------------------------------------------------- the `overlap weights` front end


@dataclass
class WeightOverlapConfig(RunSettings):
    """Inputs and grid of a weight-overlap run (paths as given by the user)."""

    reference: str
    updates: dict[str, str]
    out: Path
    etas: Sequence[float] = paper.ETAS
    tensors: str | None = None
    layers: Sequence[int] | None = None
    percentiles: Sequence[float] = paper.PERCENTILES
    pairs: Sequence[str] | None = None

    def validate(self) -> None:
        """Check names and options before anything is read."""
        if len(self.updates) < 2:
            raise UserError("weight overlap needs at least two updates; pass --update NAME=PATH twice or more")
        self.etas = check_etas(self.etas)
        self.percentiles = check_percentiles(self.percentiles)
        choose_pairs(list(self.updates), self.pairs, "update")
        for name in self.updates:
            check_name(name, "--update")
            if name == "reference":
                raise UserError("--update reference=...: 'reference' names the reference model; choose another name")
        check_svd_method(self.svd_method)

    def context(self) -> AnalysisContext:
        """The reference and the updates by role."""
        return AnalysisContext({"reference": self.reference, **self.updates}, reference="reference",
                               labels={n: f"update {n}" for n in self.updates}, **self.settings())

    def analysis(self) -> WeightOverlap:
        """The weight-overlap analysis of the options (η, percentiles and pairs checked here)."""
        return WeightOverlap(list(self.updates), list(self.etas), list(self.percentiles), self.tensors,
                             list(self.layers) if self.layers is not None else None,
                             list(self.pairs) if self.pairs is not None else None)


def run_weight_overlap(config: WeightOverlapConfig) -> WeightOverlapResult:
    """Validate, compute the rows, write the run directory and the figure."""
    config.validate()
    return run_analysis(config.analysis(), config.context(), config.out)  # type: ignore[return-value]
