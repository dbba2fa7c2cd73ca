"""Mode Subspace Overlap of activations (paper §6, Figures 5 and 8): do prompt sets share residual-stream subspaces?

For each model, prompt set and hidden-state index, the pooled residual-stream vectors A (n × d) are streamed into the
float64 second moment AᵀA (and column sums, for the centred variant); its eigenvectors are the left singular vectors of
Aᵀ, and MSO compares those of two prompt sets at every η. Memory is bounded by the indices analysed (the depth band by
default), never all layers × all prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .. import layout, linalg, paper, progress
from ..data import fingerprint as data_fingerprint
from ..data import in_zoo, load_prompts, load_records
from ..errors import UserError
from ..model_dir import read_config, resolve_model
from ..names import check_name
from ..plots import activation_overlap_figure
from ..profiling import stage
from ..spectra import Spectrum
from ..tables import ACTIVATION_OVERLAP
from . import ANALYSES, Analysis, AnalysisContext, AnalysisResult, RunSettings, run_analysis
from .capture import CaptureStats, Moments, Window, capture
from .common import (
    check_depth,
    check_etas,
    choose_pairs,
    depth_band,
    NULL_RULE,
    mean_rows,
    mso_curve,
    pair_label,
)

NUMERIC = ("k_a", "k_b", "d", "mso", "mso_random")
CANCELLATION = 1e-12  # a centred trace below this share of the uncentred one is round-off: the set has no spread
INDEX_RULE = (
    "hidden-state index i of L' = L + 1: the residual stream entering decoder block i (0 = embedding output); "
    "index L = the last block's output before the final norm (HF's hidden_states[L] is after it)"
)
MSO_RULE = ("uncentred: eigenvectors of AᵀA; centred: of (A − mean)ᵀ(A − mean); k = smallest rank holding eta of the "
            "trace; mso_random = max(k_a, k_b) / d")
BAND_RULE = "depth band LOW,HIGH = indices floor(LOW·L') … floor(HIGH·L') − 1; band rows are means over those indices"
BOOTSTRAP_RULE = ("mso_low, mso_high: 95 % percentile-bootstrap interval over prompts (each set's prompts resampled with "
                  "replacement, independently per set, jointly across its hidden states; band rows: the replicate's band "
                  "mean) from per-prompt vectors of the band's hidden states kept in float32: n × d × band × sets × 4 "
                  "bytes per model")


@dataclass(frozen=True)
class PromptSource:
    """A prompt set's source, optionally restricted to records whose field matches one of some values."""

    source: str
    field: str | None = None
    values: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "PromptSource":
        """Parse 'SRC' or 'SRC@FIELD=VALUE[|VALUE…]' (e.g. beavertails_unsafe_all@category=violence|terrorism)."""
        source, sep, condition = text.partition("@")
        if not sep:
            return cls(text)
        name, eq, values = condition.partition("=")
        chosen = tuple(v.strip() for v in values.split("|") if v.strip())
        if not source or not eq or not name.strip() or not chosen:
            raise UserError(f"prompt source {text!r}: expected SRC@FIELD=VALUE[|VALUE...], e.g. beavertails_unsafe_all@category=violence")
        return cls(source, name.strip(), chosen)

    def load(self, zoo: Path | None = None) -> list[str]:
        """All prompts of the source that pass the condition, in source order (organism:NAME from zoo if given)."""
        source = in_zoo(self.source, zoo)
        if self.field is None:
            return load_prompts(source)
        records = [r for r in load_records(source) if matches(field_value(r, self.field), self.values)]
        if not records:
            raise UserError(f"prompt source {self.source!r}: no record has {self.field} in {' | '.join(self.values)}")
        return [str(record["prompt"]).strip() for record in records]


def field_value(record: Mapping, name: str):
    """A record's field (kept under '_name' when the source maps only the prompt)."""
    return record.get(name, record.get(f"_{name}"))


def label_matches(label: object, wanted: Sequence[str]) -> bool:
    """Whether a label is a wanted value, or has one among its comma-separated parts (BeaverTails 'violence,incitement')."""
    text = str(label)
    return text in wanted or any(part.strip() in wanted for part in text.split(","))


def matches(value, wanted: Sequence[str]) -> bool:
    """Whether a field value carries a wanted label: as its text, as a list member, or as a true key of a dict."""
    if isinstance(value, Mapping):
        return any(bool(flag) and label_matches(key, wanted) for key, flag in value.items())
    if isinstance(value, (list, tuple)):
        return any(label_matches(v, wanted) for v in value)
    return value is not None and label_matches(value, wanted)


@dataclass
class ActivationOverlapResult(AnalysisResult):
    """The activation-overlap rows, each model's depth band, prompt counts, capture throughput and kept vectors."""

    bands: dict[str, list[int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    window: str = "last"

    def manifest(self) -> dict[str, Any]:
        """Index and band rules, bands, the token rule, counts and throughput."""
        token = ("the last non-pad prompt token (left padding; gathered by attention mask)" if self.window == "last"
                 else f"mean over the window {self.window}")
        return {
            "hidden_states": INDEX_RULE, "band_rule": BAND_RULE, "bands": self.bands, "token": token, "mso": MSO_RULE,
            "mso_null": NULL_RULE, "bootstrap": BOOTSTRAP_RULE,
            "prompt_counts": self.counts, "tokens_per_second": {k: round(v, 1) for k, v in self.throughput.items()},
        }

    def merge(self, other: AnalysisResult) -> "ActivationOverlapResult":
        """Another model's rows, band, throughput and vectors added to these."""
        super().merge(other)
        assert isinstance(other, ActivationOverlapResult)
        self.bands.update(other.bands)
        self.throughput.update(other.throughput)
        self.kept.update(other.kept)
        return self


def hidden_size(config: Mapping) -> int | None:
    """hidden_size of a model config (its text config for multimodal models)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}
    return config.get("hidden_size") or text.get("hidden_size") or config.get("n_embd") or config.get("d_model")


def check_hidden_sizes(models: Mapping[str, str], labels: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Resolve every model and refuse a comparison of models with different hidden sizes (before loading weights)."""
    labels = {name: (labels or {}).get(name, f"model {name}") for name in models}
    paths = {name: resolve_model(ref, role=labels[name]) for name, ref in models.items()}
    sizes = {name: hidden_size(read_config(path, role=labels[name])) for name, path in paths.items()}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{name} has {size}" for name, size in sizes.items())
        raise UserError(f"models in one comparison must share a hidden size: {listing}")
    return paths


def moment_spectrum(second: torch.Tensor, column_sum: torch.Tensor, count: float, centered: bool) -> Spectrum:
    """Eigenvectors of a (centred) second moment AᵀA (column sums and row count given), as a left spectrum with its
    exact total."""
    total = float(torch.trace(second.double()))
    if centered:
        second = linalg.centered_second_moment(second, column_sum, count)
        spread = float(torch.trace(second))
        # identical vectors (e.g. the embedding of a shared last token) leave only round-off after centring: no basis
        total = spread if spread > CANCELLATION * total else 0.0
    vectors, singular = linalg.second_moment_spectrum(second)
    return Spectrum(vectors, singular.cpu(), total)


def set_spectrum(moments: Moments, index: int, centered: bool) -> Spectrum:
    """Eigenvectors of one set's (centred) second moment at one index, as a left spectrum with its exact total."""
    return moment_spectrum(moments.second[index], moments.total[index], moments.count, centered)


def weighted_moment(vectors: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(second moment, column sums, row count) of one resample of a set: prompt i counted weights[i] times."""
    weighted = vectors * weights[:, None]
    return vectors.T @ weighted, weighted.sum(0), float(weights.sum())


def weighted_spectrum(vectors: torch.Tensor, weights: torch.Tensor, centered: bool) -> Spectrum:
    """The spectrum of one resample of a set: prompt i counted weights[i] times in the (centred) second moment."""
    return moment_spectrum(*weighted_moment(vectors, weights), centered)


def bootstrap_intervals(vectors: Mapping[str, Mapping[int, torch.Tensor]], pairs: Sequence[tuple[str, str]],
                        indices: Sequence[int], etas: Sequence[float], *, replicates: int, seed: int,
                        level: float = 0.95, on_replicate=None) -> dict[tuple, tuple[float, float]]:
    """Percentile-bootstrap intervals of activation MSO over prompts, per (pair, index or "band", centred, η).

    Each replicate draws every prompt set's prompts with replacement (sets independently; one draw for all hidden
    states of a set, which share its prompts), recomputes each set's (centred) second moment from its kept vectors,
    and the MSO of every pair at every η; a band value is the replicate's mean over the band's indices.
    """
    from .. import stats

    rng = np.random.default_rng(seed)
    names = list(vectors)
    sizes = {name: int(next(iter(vectors[name].values())).shape[0]) for name in names}
    values: dict[tuple, list[float]] = {}
    for _ in range(replicates):
        weights = {name: torch.from_numpy(rng.multinomial(size, np.full(size, 1.0 / size)).astype(np.float64))
                   for name, size in sizes.items()}
        band: dict[tuple, list[float]] = {}
        for index in indices:
            moments = {name: weighted_moment(vectors[name][index], weights[name]) for name in names}  # both centrings
            for centered in (False, True):
                spectra = {name: moment_spectrum(*moments[name], centered) for name in names}
                for a, b in pairs:
                    for point in mso_curve(spectra[a], spectra[b], etas, null=False):
                        key = (pair_label(a, b), index, centered, point["eta"])
                        values.setdefault(key, []).append(point["mso"])
                        band.setdefault((pair_label(a, b), "band", centered, point["eta"]), []).append(point["mso"])
        for key, members in band.items():
            finite = [m for m in members if np.isfinite(m)]
            values.setdefault(key, []).append(float(np.mean(finite)) if finite else math.nan)
        if on_replicate is not None:
            on_replicate()
    return {key: stats.percentile_bounds(np.asarray(draws, dtype=float), level) for key, draws in values.items()}


def with_bounds(rows: Sequence[dict], bounds: Mapping[tuple, tuple[float, float]]) -> list[dict]:
    """Rows with mso_low and mso_high from bootstrap bounds (band rows by "band", per-layer rows by their index)."""
    out = []
    for row in rows:
        key = (row["pair"], "band" if row["scope"] == "band" else row["layer"], row["centered"], row["eta"])
        low, high = bounds.get(key, (None, None))
        out.append({**row, "mso_low": low, "mso_high": high})
    return out


def model_rows(model_name: str, moments: Mapping[str, Moments], indices: Sequence[int],
               pairs: Sequence[tuple[str, str]], etas: Sequence[float], window: str) -> list[dict]:
    """Per-layer rows of one model: every pair, uncentred and centred, at every η."""
    rows = []
    for index in indices:
        for centered in (False, True):
            spectra = {name: set_spectrum(moments[name], index, centered) for name in {n for pair in pairs for n in pair}}
            for a, b in pairs:
                for point in mso_curve(spectra[a], spectra[b], etas):
                    rows.append({
                        "model": model_name, "pair": pair_label(a, b), "layer": index, **point, "centered": centered,
                        "scope": "layer", "layers": 1, "n_a": moments[a].count, "n_b": moments[b].count, "window": window,
                    })
    return rows


def band_rows(rows: Sequence[dict], band: Sequence[int]) -> list[dict]:
    """Means over the depth band of the per-layer rows (scope 'band', layer 'FIRST-LAST')."""
    inside = [row for row in rows if row["layer"] in band]
    means = mean_rows(inside, ("model", "pair", "centered", "eta", "n_a", "n_b", "window"), NUMERIC, "layers")
    label = f"{band[0]}-{band[-1]}"
    return [{**row, "layer": label, "scope": "band"} for row in means]


@ANALYSES.register("activation_overlap")
class ActivationOverlap(Analysis):
    """MSO of the residual-stream activations of prompt sets within each model, per hidden state and over a depth band."""

    table, kind = ACTIVATION_OVERLAP, "overlap-activations"
    seeded = True  # the prompt bootstrap's resampling

    def __init__(self, prompts: dict[str, str], models: list[str] | None = None, n: int = paper.PROMPTS_PER_SET,
                 allow_fewer: bool = False, eta: list[float] = paper.ETAS, depth: list[float] = paper.BAND,
                 window: str = "last", raw_prompts: bool = False, all_layers: bool = False,
                 pairs: list[str] | None = None, batch_size: int = 8, max_length: int | None = None,
                 save_activations: bool = False, bootstrap: int = 500):
        """Every pair of prompt sets, in each model.

        Args:
            prompts: prompt sets by name: a known source, a local file, organism:NAME or a hub id (SRC@FIELD=V1|V2 filters).
            models: the models (roles) to analyse; default: every model of the context.
            n: prompts per set (the first n of each).
            allow_fewer: use all prompts of a set smaller than n (with a note) instead of refusing it.
            eta: energy fractions η in (0, 1].
            depth: the depth band [low, high] of hidden states floor(low·L') … floor(high·L') − 1.
            window: last (the last prompt token), last:W (mean of the last W) or generated:W (first W generated tokens).
            raw_prompts: use the prompts as they are, without the chat template (the reference code's way).
            all_layers: per-layer rows for every hidden state, not only the band's (more memory).
            pairs: only these pairs A:B of prompt sets (default: every pair).
            batch_size: prompts per forward pass (results do not depend on it).
            max_length: truncate prompts to their last max_length tokens.
            save_activations: also keep the pooled vectors of the analysed layers (activations.safetensors).
            bootstrap: resamples of the prompts for the 95 % interval of each band-index and band MSO (0: none); keeps
                each set's pooled vectors of the band in float32 (n × d × band size × 4 bytes per set); the
                resampling is seeded by the context's seed.
        """
        if len(prompts) < 2:
            raise UserError("prompts: activation overlap needs at least two prompt sets to compare")
        for name in prompts:
            check_name(name, "prompts: prompt set")
        for name, value in (("n", n), ("batch_size", batch_size), ("max_length", max_length)):
            if value is not None and value < 1:
                raise UserError(f"{name}: must be at least 1, got {value}")
        if bootstrap < 0 or 0 < bootstrap < 100:
            raise UserError(f"bootstrap: give 0 (no interval) or at least 100 resamples, got {bootstrap}")
        self.bootstrap = bootstrap
        self.prompts, self.models = dict(prompts), list(models) if models is not None else None
        self.n, self.allow_fewer, self.etas = n, allow_fewer, check_etas(eta, "eta")
        self.depth, self.window = check_depth(depth, "depth"), Window.parse(window)
        self.chat, self.all_layers = not raw_prompts, all_layers
        self.pairs = choose_pairs(list(self.prompts), pairs, "prompt set", "pairs")
        self.batch_size, self.max_length, self.save_activations = batch_size, max_length, save_activations
        self._sets: tuple[dict[str, list[str]], list[str]] | None = None

    def parts(self, context: AnalysisContext) -> list[str | None]:
        """One part per model (a study swaps each into its resident model)."""
        return list(self.models if self.models is not None else context.models)

    def roles(self, context: AnalysisContext, part: str | None = None) -> list[str]:
        """The models (of one part: its model)."""
        return [part] if part is not None else [p for p in self.parts(context) if p is not None]

    def label(self, part: str | None = None) -> str:
        """activations of MODEL."""
        return f"activations of {part}" if part else "activation overlap"

    def prompt_sets(self, context: AnalysisContext) -> tuple[dict[str, list[str]], list[str]]:
        """The first n prompts of every set (or all of a smaller set, with a note, when allowed); loaded once."""
        if self._sets is None:
            self._sets = load_prompt_sets(self.prompts, self.n, allow_fewer=self.allow_fewer, zoo=context.zoo)
        return self._sets

    def check(self, context: AnalysisContext) -> None:
        """Prompt sets first (a prompt error should not wait for a download), then the models' hidden sizes."""
        self.prompt_sets(context)
        check_hidden_sizes({role: context.path(role) for role in self.roles(context)},
                           {role: context.label(role) for role in self.roles(context)})

    def identity(self, context: AnalysisContext) -> dict[str, Any]:
        """Models by content fingerprint, prompt sets by content hash, and the options."""
        sets, _ = self.prompt_sets(context)
        return {
            "models": {role: context.model_identity(role) for role in self.roles(context)},
            "prompts": {name: {"source": self.prompts[name], "n": len(prompts),
                               "fingerprint": data_fingerprint([{"prompt": p} for p in prompts])}
                        for name, prompts in sets.items()},
            "pairs": [pair_label(a, b) for a, b in self.pairs], "etas": self.etas, "depth": list(self.depth),
            "window": self.window.label, "chat_template": self.chat, "all_layers": self.all_layers,
            "max_length": self.max_length, "dtype": context.dtype, "bootstrap": self.bootstrap, "seed": context.seed,
        }

    def run(self, context: AnalysisContext, part: str | None = None) -> ActivationOverlapResult:
        """Capture one model's prompt sets and compare them: band rows, then per-layer rows."""
        sets, notes = self.prompt_sets(context)
        with context.loaded(part) as (model, tokenizer):  # type: ignore[arg-type]
            result = self.model_overlap(model, tokenizer, part, sets, seed=context.seed)  # type: ignore[arg-type]
        result.notes = list(notes)
        return result

    def model_overlap(self, model, tokenizer, model_name: str, sets: Mapping[str, list[str]],
                      seed: int = 0) -> ActivationOverlapResult:
        """Capture one loaded model's prompt sets and compare them: band rows, then per-layer rows (intervals over
        prompts by a seeded bootstrap unless bootstrap is 0)."""
        role = f"model {model_name}"
        needed = [name for name in sets if any(name in pair for pair in self.pairs)]
        hidden_states = model.config.get_text_config().num_hidden_layers + 1
        band = depth_band(hidden_states, *self.depth)
        if not band:
            raise UserError(f"--depth {self.depth[0]:g},{self.depth[1]:g} selects no hidden state of {model_name} "
                            f"({hidden_states} hidden states); widen the band")
        indices = list(range(hidden_states)) if self.all_layers else band
        stats = CaptureStats()
        moments = {}
        with progress.bar(f"activations of {model_name}", total=sum(len(sets[n]) for n in needed)) as update:
            for set_name in needed:
                with stage("capture"):
                    moments[set_name] = capture(
                        model, tokenizer, sets[set_name], indices, window=self.window, chat=self.chat,
                        batch_size=self.batch_size, max_length=self.max_length,
                        keep=self.save_activations or (band if self.bootstrap else False),
                        model_name=role, on_batch=lambda count, s=set_name: update(count, status=s), stats=stats,
                    )
        per_layer = model_rows(model_name, moments, indices, self.pairs, self.etas, self.window.label)
        rows = [*band_rows(per_layer, band), *per_layer]
        if self.bootstrap:
            from ..runtime import stable_seed

            vectors = {name: {i: moments[name].stacked(i).double() for i in band} for name in needed}
            with progress.bar(f"prompt bootstrap of {model_name}", total=self.bootstrap) as update:
                bounds = bootstrap_intervals(vectors, self.pairs, band, self.etas, replicates=self.bootstrap,
                                             seed=stable_seed(seed, "activation bootstrap", model_name),
                                             on_replicate=lambda: update(1))
            rows = with_bounds(rows, bounds)
        kept = ({f"{model_name}/{s}/{i}": moments[s].stacked(i) for s in needed for i in indices}
                if self.save_activations else {})
        return ActivationOverlapResult(
            rows, bands={model_name: band}, counts={n: len(sets[n]) for n in needed},
            throughput={model_name: stats.tokens / stats.seconds if stats.seconds else float("nan")}, kept=kept,
            window=self.window.label,
        )

    def write_files(self, result: AnalysisResult, stage: Path) -> None:
        """The uncentred and centred figures, and (if asked) activations.safetensors."""
        for centered, name in ((False, "activation_overlap_uncentered.png"), (True, "activation_overlap_centered.png")):
            activation_overlap_figure(result.rows, stage / layout.FIGURES / name, centered=centered)
        kept = getattr(result, "kept", {})
        if kept:
            from safetensors.torch import save_file

            save_file({key: value.contiguous() for key, value in kept.items()}, str(stage / layout.ACTIVATIONS))


def load_prompt_sets(prompts: Mapping[str, str], n: int, *, allow_fewer: bool = False,
                     zoo: Path | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """The first n prompts of every set (or all of a smaller set, with a note, when allowed)."""
    sets, notes = {}, []
    for name, text in prompts.items():
        found = PromptSource.parse(text).load(zoo)
        if len(found) < n:
            if not allow_fewer:
                raise UserError(
                    f"prompt set {name!r} ({text}) has {len(found)} prompts, fewer than --n {n}; "
                    f"lower --n or pass --allow-fewer to use all {len(found)}"
                )
            note = f"prompt set {name!r} has {len(found)} prompts, fewer than --n {n}: using all of them"
            notes.append(note)
            progress.info(f"warning: {note}")
        sets[name] = found[:n]
    return sets, notes


# ---------------------------------------------------------------- the `overlap activations` front end


@dataclass
class ActivationOverlapConfig(RunSettings):
    """Inputs and options of an activation-overlap run (as the command line gives them)."""

    models: dict[str, str]
    prompts: dict[str, str]
    out: Path
    n: int = paper.PROMPTS_PER_SET
    allow_fewer: bool = False
    etas: Sequence[float] = paper.ETAS
    depth: Sequence[float] = paper.BAND
    window: str = "last"
    chat: bool = True
    all_layers: bool = False
    pairs: Sequence[str] | None = None
    batch_size: int = 8
    max_length: int | None = None
    dtype: str = "auto"
    save_activations: bool = False
    zoo: Path | None = None  # organism zoo for organism:NAME prompt sets (default: the built one)

    def validate(self) -> None:
        """Check names and options before anything is loaded."""
        if not self.models:
            raise UserError("no model given; pass --model [NAME=]PATH at least once")
        if len(self.prompts) < 2:
            raise UserError("activation overlap needs at least two prompt sets; pass --prompts NAME=SRC twice or more")
        for name in self.models:
            check_name(name, "--model")
        for name in self.prompts:
            check_name(name, "--prompts")
        if self.n < 1:
            raise UserError(f"--n must be at least 1, got {self.n}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 1:
            raise UserError(f"--max-length must be at least 1, got {self.max_length}")
        self.etas = check_etas(self.etas)
        self.depth = check_depth(self.depth)
        Window.parse(self.window)

    def context(self) -> AnalysisContext:
        """The models by name."""
        return AnalysisContext(self.models, reference="", labels={n: f"model {n}" for n in self.models},
                               dtype=self.dtype, zoo=self.zoo, **self.settings())

    def analysis(self) -> ActivationOverlap:
        """The activation-overlap analysis of the options."""
        return ActivationOverlap(
            dict(self.prompts), list(self.models), self.n, self.allow_fewer, list(self.etas), list(self.depth),
            self.window, not self.chat, self.all_layers, list(self.pairs) if self.pairs is not None else None,
            self.batch_size, self.max_length, self.save_activations,
        )


def run_activation_overlap(config: ActivationOverlapConfig) -> ActivationOverlapResult:
    """Validate, then (holding the output's lock) capture, compare and write the run directory."""
    config.validate()
    choose_pairs(list(config.prompts), config.pairs, "prompt set")
    return run_analysis(config.analysis(), config.context(), config.out)  # type: ignore[return-value]
