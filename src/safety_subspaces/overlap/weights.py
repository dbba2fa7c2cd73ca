"""Mode Subspace Overlap of weight updates (paper §5, Figure 4): per tensor, per layer, at chosen depth percentiles.

Each update is W_update − W_reference per tensor (U − A = Δ_T^useful, B − A = −Δ_A, ...). Its exact spectrum is
computed once per tensor and cached on disk (shared with the project engine's cache when it holds W_ref − W_update);
one cross product of two bases then gives the MSO at every η. Tensors stream one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .. import __version__, progress
from ..checkpoints import Checkpoint, check_compatible, layer_index
from ..errors import UserError
from ..files import analysis_run_dir, check_run_dir, output_lock
from ..names import check_name
from ..checkpoints import TensorFilter
from ..projection import check_svd_method
from ..spectra import Spectrum, SpectrumCache, null_dirs_summary
from .common import (
    DEFAULT_ETAS,
    check_etas,
    check_percentiles,
    choose_pairs,
    depth_layer,
    mean_rows,
    mso_curve,
    pair_label,
)

WEIGHT_COLUMNS = ["pair", "name", "layer", "eta", "k_a", "k_b", "d", "mso", "mso_random", "scope", "tensors"]
NUMERIC = ("k_a", "k_b", "d", "mso", "mso_random")
AGGREGATION = (
    "layer rows: every numeric column (mso, mso_random, k_a, k_b, d) is the mean over the block's matrix (2-D) "
    "tensors with a non-empty basis (count in `tensors`); 1-D tensors (norms, biases) are not analysed"
)
DEPTH_RULE = "depth percentile p selects decoder layer floor(p/100 · L), at most L − 1, of layers 0 … L − 1"
DEFAULT_PERCENTILES = (70.0, 85.0)


@dataclass
class WeightOverlapConfig:
    """Inputs and grid of a weight-overlap run (paths as given by the user)."""

    reference: str
    updates: dict[str, str]
    out: Path
    etas: Sequence[float] = DEFAULT_ETAS
    tensors: str | None = None
    layers: Sequence[int] | None = None
    percentiles: Sequence[float] = DEFAULT_PERCENTILES
    pairs: Sequence[str] | None = None
    cache_dir: Path | None = None
    svd_method: str = "auto"
    device: str = "cpu"
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def validate(self) -> None:
        """Check names, η and options before anything is read."""
        if len(self.updates) < 2:
            raise UserError("weight overlap needs at least two updates; pass --update NAME=PATH twice or more")
        for name in self.updates:
            check_name(name, "--update")
        self.etas = check_etas(self.etas)
        self.percentiles = check_percentiles(self.percentiles)
        check_svd_method(self.svd_method)

    @property
    def select(self) -> TensorFilter:
        """The tensor filter."""
        return TensorFilter.of(self.tensors, self.layers)


@dataclass
class WeightOverlapResult:
    """What a weight-overlap run produced."""

    rows: list[dict]
    run_dir: Path
    pairs: list[str]
    depth_layers: dict[str, int]
    decompositions: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    ranks: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # update -> tensor -> (rank, r)


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
        self.computed = 0
        self.reused = 0

    def get(self, name: str, reference_tensor: Callable[[], torch.Tensor]) -> Spectrum:
        """The spectrum of this update's tensor `name`."""
        cached = self.cache.load(name) or self.mirror.load(name)
        if cached is not None:
            self.reused += 1
            return cached
        delta = self.update.read(name).to(device=self.device, dtype=torch.float32) - reference_tensor()
        spectrum = self.cache.get(name, delta)
        self.computed += 1
        return spectrum


def num_layers(checkpoint: Checkpoint, names: Sequence[str]) -> int:
    """L: the config's num_hidden_layers (text config for multimodal models), else 1 + the largest block index."""
    config = checkpoint.config
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}
    for source in (config, text):
        value = source.get("num_hidden_layers")
        if isinstance(value, int) and value > 0:
            return value
    indices = [i for i in (layer_index(name) for name in names) if i is not None]
    if not indices:
        raise UserError(f"{checkpoint.role}: cannot tell the number of layers (no num_hidden_layers, no layer names)")
    return max(indices) + 1


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


def open_inputs(config: WeightOverlapConfig) -> tuple[Checkpoint, dict[str, Checkpoint], list[str]]:
    """Open the reference and the updates, check they match, and list the matrix tensors to analyse."""
    options = {"allow_pickle": config.allow_pickle, "trust_remote_code": config.trust_remote_code}
    reference = Checkpoint(config.reference, role="reference", **options)
    updates = {name: Checkpoint(path, role=f"update {name}", **options) for name, path in config.updates.items()}
    shared = check_compatible({"reference": reference, **{f"update {n}": c for n, c in updates.items()}})
    select = config.select
    names = [name for name in shared if select(name) and len(reference.infos[name].shape) >= 2]
    if not names:
        raise UserError(f"no matrix tensor matches the filter ({select.describe()})")
    return reference, updates, names


def identity(config: WeightOverlapConfig, reference: Checkpoint, updates: Mapping[str, Checkpoint],
             pairs: Sequence[tuple[str, str]]) -> dict:
    """The resolved config that identifies a run (inputs by content fingerprint)."""
    return {
        "reference": {"path": str(reference.path), "fingerprint": reference.fingerprint()},
        "updates": {n: {"path": str(c.path), "fingerprint": c.fingerprint()} for n, c in updates.items()},
        "pairs": [pair_label(a, b) for a, b in pairs],
        "etas": list(config.etas),
        "tensors": config.tensors,
        "layers": list(config.layers) if config.layers is not None else None,
        "percentiles": list(config.percentiles),
        "svd_method": config.svd_method,
    }


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
            rows.extend(tensor_rows(name, spectra, pairs, etas, device))
            update(1, status=name)
    labels = [pair_label(a, b) for a, b in pairs]
    layers = layer_rows(rows, labels)
    total_layers = num_layers(reference, names)
    depth, chosen = depth_rows(layers, percentiles, total_layers)
    notes = [f"{label}: layer {layer} has no analysed tensor (filtered out)"
             for label, layer in chosen.items() if not any(row["layer"] == layer for row in layers)]
    return WeightOverlapResult(
        [*depth, *layers, *rows], Path(), labels, chosen,
        sum(s.computed for s in sources.values()), sum(s.reused for s in sources.values()), time.time() - started, notes,
        ranks,
    )


def run_weight_overlap(config: WeightOverlapConfig) -> WeightOverlapResult:
    """Validate, compute the rows, write the run directory and the figure."""
    config.validate()
    reference, updates, names = open_inputs(config)
    pairs = choose_pairs(list(updates), config.pairs, "update")
    run_identity = identity(config, reference, updates, pairs)
    with output_lock(config.out):
        check_run_dir(config.out, run_identity, kind="overlap-weights")
        result = overlap_rows(reference, updates, names, pairs, config.etas, config.percentiles,
                              cache_dir=config.cache_dir, svd_method=config.svd_method, device=config.device)
        result.run_dir = Path(config.out)
        write_run_dir(config, run_identity, result, len(names), num_layers(reference, names))
    return result


def write_run_dir(config: WeightOverlapConfig, run_identity: dict, result: WeightOverlapResult, tensor_count: int,
                  total_layers: int) -> None:
    """config.yaml, manifest.json, weight_overlap.csv and figures/weight_overlap.png, all at once."""
    from ..figures import weight_overlap_figure

    manifest = {
        "tool": f"safety-subspaces {__version__}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "updates": {name: f"W_{name} − W_reference" for name in config.updates},
        "mso": "||Q_a^T Q_b||_F^2 / min(k_a, k_b); k = smallest rank holding eta of the exact ||M||_F^2; "
               "mso_random = max(k_a, k_b) / d (d = output side of the tensor)",
        "numerical_rank": {key: null_dirs_summary(ranks) for key, ranks in result.ranks.items()},
        "aggregation": AGGREGATION,
        "depth_rule": DEPTH_RULE,
        "num_layers": total_layers,
        "depth_layers": result.depth_layers,
        "tensors": tensor_count,
        "filter": config.select.describe(),
        "decompositions": result.decompositions,
        "cache_hits": result.cache_hits,
        "seconds": round(result.seconds, 3),
        "notes": result.notes,
        "inputs": run_identity,
    }
    with analysis_run_dir(config.out, run_identity, kind="overlap-weights", manifest=manifest,
                          tables={"weight_overlap": (result.rows, WEIGHT_COLUMNS)}) as stage:
        weight_overlap_figure(result.rows, stage / "figures" / "weight_overlap.png")
