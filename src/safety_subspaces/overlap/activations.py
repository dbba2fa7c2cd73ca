"""Mode Subspace Overlap of activations (paper §6, Figures 5 and 8): do prompt sets share residual-stream subspaces?

For each model, prompt set and hidden-state index, the pooled residual-stream vectors A (n × d) are streamed into the
float64 second moment AᵀA (and column sums, for the centred variant); its eigenvectors are the left singular vectors of
Aᵀ, and MSO compares those of two prompt sets at every η. Memory is bounded by the indices analysed (the depth band by
default), never all layers × all prompts.
"""

from __future__ import annotations

import gc
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .. import __version__, linalg, progress
from ..data import fingerprint as data_fingerprint
from ..data import in_zoo, load_prompts, load_records
from ..errors import UserError
from ..files import analysis_run_dir, check_run_dir, output_lock
from ..names import check_name
from ..model_dir import read_config, resolve_model
from ..spectra import Spectrum
from .capture import CaptureStats, Moments, Window, capture
from .common import (
    DEFAULT_ETAS,
    check_depth,
    check_etas,
    choose_pairs,
    depth_band,
    mean_rows,
    mso_curve,
    pair_label,
)

ACTIVATION_COLUMNS = [
    "model", "pair", "layer", "eta", "centered", "k_a", "k_b", "d", "mso", "mso_random",
    "scope", "layers", "n_a", "n_b", "window",
]
NUMERIC = ("k_a", "k_b", "d", "mso", "mso_random")
DEFAULT_DEPTH = (0.65, 0.90)
DEFAULT_N = 5000
CANCELLATION = 1e-12  # a centred trace below this share of the uncentred one is round-off: the set has no spread
INDEX_RULE = (
    "hidden-state index i of L' = L + 1: the residual stream entering decoder block i (0 = embedding output); "
    "index L = the last block's output before the final norm (HF's hidden_states[L] is after it)"
)
BAND_RULE = "depth band LOW,HIGH = indices floor(LOW·L') … floor(HIGH·L') − 1; band rows are means over those indices"


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
class ActivationOverlapConfig:
    """Inputs and options of an activation-overlap run."""

    models: dict[str, str]
    prompts: dict[str, str]
    out: Path
    n: int = DEFAULT_N
    allow_fewer: bool = False
    etas: Sequence[float] = DEFAULT_ETAS
    depth: Sequence[float] = DEFAULT_DEPTH
    window: str = "last"
    chat: bool = True
    all_layers: bool = False
    pairs: Sequence[str] | None = None
    batch_size: int = 8
    max_length: int | None = None
    dtype: str = "auto"
    device: str = "cpu"
    save_activations: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
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


@dataclass
class ActivationOverlapResult:
    """What an activation-overlap run produced."""

    rows: list[dict]
    run_dir: Path
    bands: dict[str, list[int]]
    counts: dict[str, int]
    throughput: dict[str, float]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def hidden_size(config: Mapping) -> int | None:
    """hidden_size of a model config (its text config for multimodal models)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}
    return config.get("hidden_size") or text.get("hidden_size") or config.get("n_embd") or config.get("d_model")


def check_hidden_sizes(models: Mapping[str, str]) -> dict[str, Path]:
    """Resolve every model and refuse a comparison of models with different hidden sizes (before loading weights)."""
    paths = {name: resolve_model(ref, role=f"model {name}") for name, ref in models.items()}
    sizes = {name: hidden_size(read_config(path, role=f"model {name}")) for name, path in paths.items()}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{name} has {size}" for name, size in sizes.items())
        raise UserError(f"models in one comparison must share a hidden size: {listing}")
    return paths


def load_prompt_sets(config: ActivationOverlapConfig) -> tuple[dict[str, list[str]], list[str]]:
    """The first n prompts of every set (or all of a smaller set, with a note, when allowed)."""
    sets, notes = {}, []
    for name, text in config.prompts.items():
        prompts = PromptSource.parse(text).load(config.zoo)
        if len(prompts) < config.n:
            if not config.allow_fewer:
                raise UserError(
                    f"prompt set {name!r} ({text}) has {len(prompts)} prompts, fewer than --n {config.n}; "
                    f"lower --n or pass --allow-fewer to use all {len(prompts)}"
                )
            note = f"prompt set {name!r} has {len(prompts)} prompts, fewer than --n {config.n}: using all of them"
            notes.append(note)
            progress.info(f"warning: {note}")
        sets[name] = prompts[: config.n]
    return sets, notes


def set_spectrum(moments: Moments, index: int, centered: bool) -> Spectrum:
    """Eigenvectors of one set's (centred) second moment at one index, as a left spectrum with its exact total."""
    second = moments.second[index]
    total = float(torch.trace(second.double()))
    if centered:
        second = linalg.centered_second_moment(second, moments.total[index], moments.count)
        spread = float(torch.trace(second))
        # identical vectors (e.g. the embedding of a shared last token) leave only round-off after centring: no basis
        total = spread if spread > CANCELLATION * total else 0.0
    vectors, singular = linalg.second_moment_spectrum(second)
    return Spectrum(vectors, singular.cpu(), total)


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


def identity(config: ActivationOverlapConfig, paths: Mapping[str, Path], sets: Mapping[str, list[str]],
             pairs: Sequence[tuple[str, str]]) -> dict:
    """The resolved config that identifies a run (models by content fingerprint, prompt sets by content hash)."""
    from ..checkpoints import Checkpoint

    return {
        "models": {
            name: {"path": str(path), "fingerprint": Checkpoint(path, role=f"model {name}", allow_pickle=config.allow_pickle,
                                                                 trust_remote_code=config.trust_remote_code).fingerprint()}
            for name, path in paths.items()
        },
        "prompts": {name: {"source": config.prompts[name], "n": len(prompts),
                           "fingerprint": data_fingerprint([{"prompt": p} for p in prompts])}
                    for name, prompts in sets.items()},
        "pairs": [pair_label(a, b) for a, b in pairs],
        "etas": list(config.etas),
        "depth": list(config.depth),
        "window": Window.parse(config.window).label,
        "chat_template": config.chat,
        "all_layers": config.all_layers,
        "max_length": config.max_length,
        "dtype": config.dtype,
    }


@dataclass
class ModelOverlap:
    """One model's activation-overlap rows, its depth band, capture throughput and (if kept) the pooled vectors."""

    rows: list[dict]
    band: list[int]
    tokens_per_second: float
    kept: dict[str, torch.Tensor]


def model_overlap(model, tokenizer, model_name: str, sets: Mapping[str, list[str]], pairs: Sequence[tuple[str, str]],
                  config: ActivationOverlapConfig) -> ModelOverlap:
    """Capture one loaded model's prompt sets and compare them: band rows, then per-layer rows."""
    window = Window.parse(config.window)
    role = f"model {model_name}"
    needed = [name for name in sets if any(name in pair for pair in pairs)]
    hidden_states = model.config.get_text_config().num_hidden_layers + 1
    band = depth_band(hidden_states, *config.depth)
    if not band:
        raise UserError(f"--depth {config.depth[0]:g},{config.depth[1]:g} selects no hidden state of {model_name} "
                        f"({hidden_states} hidden states); widen the band")
    indices = list(range(hidden_states)) if config.all_layers else band
    stats = CaptureStats()
    moments = {}
    with progress.bar(f"activations of {model_name}", total=sum(len(sets[n]) for n in needed)) as update:
        for set_name in needed:
            moments[set_name] = capture(
                model, tokenizer, sets[set_name], indices, window=window, chat=config.chat,
                batch_size=config.batch_size, max_length=config.max_length, keep=config.save_activations,
                model_name=role, on_batch=lambda count, s=set_name: update(count, status=s), stats=stats,
            )
    per_layer = model_rows(model_name, moments, indices, pairs, config.etas, window.label)
    kept = ({f"{model_name}/{s}/{i}": moments[s].stacked(i) for s in needed for i in indices}
            if config.save_activations else {})
    return ModelOverlap([*band_rows(per_layer, band), *per_layer], band,
                        stats.tokens / stats.seconds if stats.seconds else float("nan"), kept)


def run_activation_overlap(config: ActivationOverlapConfig) -> ActivationOverlapResult:
    """Validate, then (holding the output's lock) capture, compare and write the run directory."""
    started = time.time()
    config.validate()
    sets, notes = load_prompt_sets(config)  # before models: a prompt error should not wait for a download
    pairs = choose_pairs(list(sets), config.pairs, "prompt set")
    paths = check_hidden_sizes(config.models)
    run_identity = identity(config, paths, sets, pairs)
    with output_lock(config.out):
        check_run_dir(config.out, run_identity, kind="overlap-activations")
        return capture_and_write(config, run_identity, paths, sets, pairs, notes, started)


def capture_and_write(config: ActivationOverlapConfig, run_identity: dict, paths: Mapping[str, Path],
                      sets: Mapping[str, list[str]], pairs: Sequence[tuple[str, str]], notes: list[str],
                      started: float) -> ActivationOverlapResult:
    """Capture each model's prompt sets (one model in memory at a time), compare them and write the run directory."""
    from ..models import load_model, load_tokenizer

    needed = [name for name in sets if any(name in pair for pair in pairs)]
    rows: list[dict] = []
    bands: dict[str, list[int]] = {}
    throughput: dict[str, float] = {}
    kept: dict[str, torch.Tensor] = {}
    for model_name, path in paths.items():
        role = f"model {model_name}"
        tokenizer = load_tokenizer(path, trust_remote_code=config.trust_remote_code, role=role)
        model = load_model(path, dtype=config.dtype, device=config.device, trust_remote_code=config.trust_remote_code,
                           allow_pickle=config.allow_pickle, role=role)
        result = model_overlap(model, tokenizer, model_name, sets, pairs, config)
        rows.extend(result.rows)
        bands[model_name] = result.band
        throughput[model_name] = result.tokens_per_second
        kept.update(result.kept)
        del model, result
        gc.collect()
    result = ActivationOverlapResult(rows, Path(config.out), bands, {n: len(sets[n]) for n in needed}, throughput,
                                     time.time() - started, notes)
    write_run_dir(config, run_identity, result, kept)
    return result


def write_run_dir(config: ActivationOverlapConfig, run_identity: dict, result: ActivationOverlapResult,
                  kept: Mapping[str, torch.Tensor]) -> None:
    """config.yaml, manifest.json, activation_overlap.csv, figures and (if asked) activations.safetensors, all at once."""
    from ..figures import activation_overlap_figure

    manifest = {
        "tool": f"safety-subspaces {__version__}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hidden_states": INDEX_RULE,
        "band_rule": BAND_RULE,
        "bands": result.bands,
        "token": "the last non-pad prompt token (left padding; gathered by attention mask)"
                 if Window.parse(config.window).label == "last" else f"mean over the window {Window.parse(config.window).label}",
        "mso": "uncentred: eigenvectors of AᵀA; centred: of (A − mean)ᵀ(A − mean); k = smallest rank holding eta of the "
               "trace; mso_random = max(k_a, k_b) / d",
        "prompt_counts": result.counts,
        "tokens_per_second": {k: round(v, 1) for k, v in result.throughput.items()},
        "seconds": round(result.seconds, 3),
        "notes": result.notes,
        "inputs": run_identity,
    }
    with analysis_run_dir(config.out, run_identity, kind="overlap-activations", manifest=manifest,
                          tables={"activation_overlap": (result.rows, ACTIVATION_COLUMNS)}) as stage:
        for centered, name in ((False, "activation_overlap_uncentered.png"), (True, "activation_overlap_centered.png")):
            activation_overlap_figure(result.rows, stage / "figures" / name, centered=centered)
        if kept:
            from safetensors.torch import save_file

            save_file({key: value.contiguous() for key, value in kept.items()}, str(stage / "activations.safetensors"))
