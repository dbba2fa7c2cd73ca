"""One fine-tuning run: check inputs, train (full, LoRA or DPO), write a complete checkpoint and its manifest."""

from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import layout, progress
from ..errors import UserError
from ..files import follow_umask, output_lock, staged_dir, write_json
from .recipe import Recipe
from .sft import diverged, encode_examples, plan_steps, train_loop, uses_chat

MANIFEST = layout.MANIFEST
IN_MEMORY = "<in-memory>"


@dataclass
class FinetuneResult:
    """A finished run: the trained model and tokenizer (in memory), its manifest and where it was written."""

    model: Any
    tokenizer: Any
    manifest: dict[str, Any]
    out: Path


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a trained model."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("safety-subspaces", "torch", "transformers", "tokenizers", "peft", "trl"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def check_output_dir(out: Path) -> None:
    """Refuse an output path that is a file or a non-empty directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory; choose a new --out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output directory {out} is not empty; choose a new --out")


def required_fields(recipe: Recipe) -> tuple[str, ...]:
    """Record fields the method trains on."""
    return ("prompt", "chosen", "rejected") if recipe.method == "dpo" else ("prompt", "response")


def clean_records(records: Sequence[Mapping[str, Any]], recipe: Recipe, *, name: str) -> tuple[list[dict], int]:
    """Keep records whose training fields are non-empty strings (DPO: chosen != rejected); error if none remain."""
    fields = required_fields(recipe)
    kept = []
    for record in records:
        missing = [f for f in fields if f not in record]
        if missing:
            raise UserError(f"data {name}: a record has no field {missing[0]!r} (needs {', '.join(fields)})")
        values = [record[f] for f in fields]
        if not all(isinstance(v, str) and v.strip() for v in values):
            continue
        if recipe.method == "dpo" and record["chosen"].strip() == record["rejected"].strip():
            continue
        kept.append({f: record[f] for f in fields})
    dropped = len(records) - len(kept)
    if not kept:
        raise UserError(f"data {name} is empty after filtering ({dropped} records without usable {', '.join(fields)})")
    return kept, dropped


def _dtype_name(dtype) -> str:
    """'float32' for torch.float32."""
    return str(dtype).replace("torch.", "")


def _source_dtype(model_dir: Path) -> str | None:
    """The dtype a checkpoint directory stores its weights in, from config.json."""
    from ..model_dir import read_config

    config = read_config(model_dir)
    return config.get("dtype") or config.get("torch_dtype")


def _load(model, tokenizer, *, trust_remote_code: bool, allow_pickle: bool, train_dtype: str):
    """(model copy or loaded model, tokenizer, reference name, stored dtype name); the tokenizer is checked first."""
    from ..models import load_model, load_tokenizer

    if isinstance(model, (str, os.PathLike)):
        ref = str(model)
        model_dir = check_start_model(ref, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        stored = _source_dtype(model_dir)
        loaded = load_model(model_dir, dtype=train_dtype, trust_remote_code=trust_remote_code,
                            allow_pickle=allow_pickle)
        return loaded, tokenizer, ref, stored or _dtype_name(loaded.dtype)
    if tokenizer is None:
        raise UserError("an in-memory model needs its tokenizer (pass tokenizer=...)")
    stored = _dtype_name(next(model.parameters()).dtype)
    from ..models import torch_dtype

    clone = copy.deepcopy(model)
    wanted = torch_dtype(train_dtype)
    if wanted is not None:
        clone.to(wanted)
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or IN_MEMORY
    return clone, tokenizer, name, stored


def check_start_model(ref: str | os.PathLike, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> Path:
    """The local directory of the model to fine-tune, checked before any data is read: config, code, weights, tokenizer."""
    from ..checkpoints import Checkpoint
    from ..models import load_tokenizer

    checkpoint = Checkpoint(ref, role="model", allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    load_tokenizer(checkpoint.path, trust_remote_code=trust_remote_code)
    checkpoint.close()
    return checkpoint.path


def _lora_config(recipe: Recipe):
    """The peft LoraConfig for the recipe."""
    from peft import LoraConfig

    targets: Any = recipe.lora_targets
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha if recipe.lora_alpha is not None else 2 * recipe.lora_rank,
        lora_dropout=recipe.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def _prepare_generation_config(model, tokenizer) -> None:
    """Make sure generation stops at the tokenizer's end token and pads with its pad token."""
    config = model.generation_config
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def save_checkpoint(model, tokenizer, directory: Path) -> None:
    """Save model (safetensors, config, generation config) and tokenizer (with chat template) into directory."""
    _prepare_generation_config(model, tokenizer)
    with progress.library_bars(False):  # transformers' shard-writing bar: never useful
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    follow_umask(directory)  # safetensors writes its files 0600


def _save(model, tokenizer, stage: Path, recipe: Recipe, save_dtype: str) -> Any:
    """Write the trained model (merged, adapter, or full) and tokenizer into stage; return the model to keep."""
    from ..models import torch_dtype

    if recipe.lora_rank:
        if not recipe.merge:
            save_checkpoint(model, tokenizer, stage)  # adapter only
            return model
        save_checkpoint(model, tokenizer, stage / "adapter")
        model = model.merge_and_unload()
    dtype = torch_dtype(save_dtype)
    if dtype is not None and next(model.parameters()).dtype != dtype:
        model = model.to(dtype)
    save_checkpoint(model, tokenizer, stage)
    return model


@dataclass
class Training:
    """What a training step produced: the trained model, its per-step losses, and what it trained on."""

    model: Any
    losses: list[float]
    planned_steps: int
    n_examples: int
    n_tokens: int | None  # response tokens the loss was taken on (SFT)
    too_long: int = 0  # examples dropped because nothing of the response fits in max_length (SFT)
    penalty: Any = None  # the bound constraint's Penalty (its modules and per-step values), if the recipe had one


def train_sft(model, tokenizer, records: Sequence[Mapping[str, Any]], recipe: Recipe, *, device: str, name: str,
              label: str, peft_config=None, stop: Callable[[Any, int], bool] | None = None,
              constrain: Callable[[Any], Any] | None = None) -> Training:
    """Full or LoRA SFT with the own torch loop: encode with response-only labels, plan the steps, train.

    constrain(model), if given, binds the recipe's constraint to the model about to be trained (after LoRA wrapping).
    """
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    penalty = constrain(model) if constrain is not None else None
    examples, too_long = encode_examples(tokenizer, records, recipe)
    if not examples:
        raise UserError(f"data {label} is empty after filtering: no response fits in max length {recipe.max_length}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, steps = plan_steps(examples, recipe, pad_id)
    losses = train_loop(model, steps, total, recipe, device=device, description=name, stop=stop, penalty=penalty)
    tokens = sum(sum(1 for label_id in e.labels[1:] if label_id != -100) for e in examples)
    return Training(model, losses, total, len(examples), tokens, too_long, penalty)


def train(model, tokenizer, records: Sequence[Mapping[str, Any]], recipe: Recipe, *, device: str, name: str, label: str,
          stop: Callable[[Any, int], bool] | None = None, constrain: Callable[[Any], Any] | None = None) -> Training:
    """Seed, then train by the recipe's method (SFT or DPO, full or LoRA)."""
    import torch

    torch.manual_seed(recipe.seed)
    peft_config = _lora_config(recipe) if recipe.lora_rank else None
    if recipe.method != "dpo":
        return train_sft(model, tokenizer, records, recipe, device=device, name=name, label=label,
                         peft_config=peft_config, stop=stop, constrain=constrain)
    from .dpo import train_dpo

    total = recipe.total_steps(len(records))
    trained, losses = train_dpo(model, tokenizer, records, recipe, device=device, total=total, description=name,
                                peft_config=peft_config)
    return Training(trained, losses, total, len(records), None)


def run_manifest(*, name: str, model_ref: str, recipe: Recipe, data: Mapping[str, Any] | None,
                 records: Sequence[Mapping[str, Any]], dropped: int, training: Training, chat: bool, device: str,
                 train_dtype: str, save_dtype: str, wall: float, cpu: float, extra: Mapping[str, Any] | None) -> dict:
    """The manifest of a fine-tuning run: what trained on what, how, for how long, with which versions.

    records are the records kept after cleaning; dropped counts those cleaning removed.
    """
    import torch

    from ..data import fingerprint

    losses = training.losses
    return {
        "kind": "finetune",
        "name": name,
        "model": model_ref,
        "method": recipe.kind,
        "recipe": recipe.to_dict(),
        "data": {
            **dict(data or {}),
            "n_records": len(records) + dropped,
            "n_examples": training.n_examples,
            "n_dropped": dropped + training.too_long,
            "response_tokens": training.n_tokens,
            "fingerprint": fingerprint(records),
        },
        "chat_template": chat,
        "seed": recipe.seed,
        "steps": len(losses) if recipe.method != "dpo" else training.planned_steps,
        "planned_steps": training.planned_steps,
        "stopped_early": recipe.method != "dpo" and len(losses) < training.planned_steps,
        "final_loss": losses[-1] if losses else None,
        "loss_curve": _thin(losses),
        "device": device,
        "train_dtype": train_dtype,
        "save_dtype": save_dtype,
        "threads": torch.get_num_threads(),
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "versions": versions(),
        **dict(extra or {}),
    }


def finetune(
    model,
    records: Sequence[Mapping[str, Any]],
    out: Path,
    recipe: Recipe | None = None,
    *,
    tokenizer=None,
    data: Mapping[str, Any] | None = None,
    name: str = "finetune",
    device: str | None = None,
    train_dtype: str = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    extra: Mapping[str, Any] | None = None,
    stop: Callable[[Any, int], bool] | None = None,
    base: str | os.PathLike | None = None,
    subspace_seed: int = 0,
    cache_dir: Path | None = None,
) -> FinetuneResult:
    """Fine-tune a model (path, hub id, or in-memory model + tokenizer) on records; write checkpoint + manifest to out.

    Steps: check the recipe and the output, clean the records, load the model, train, check it stayed finite, write.
    `stop(model, step)`, if given, is asked after every optimizer step whether to stop early (SFT only). A recipe's
    constraint (AsFT) reads Δ = model − base: it needs the model as a checkpoint and `base` (W_0); its subspace
    controls are seeded by subspace_seed, and spectra are cached under cache_dir.
    """
    from ..runtime import resolve_device

    recipe = (recipe or Recipe()).validate()
    if stop is not None and recipe.method == "dpo":
        raise UserError("early stopping is available for SFT runs only")
    out = Path(out)
    with output_lock(out):
        check_output_dir(out)
        constrain, described = constraint_binder(recipe, model, base, seed=subspace_seed, cache_dir=cache_dir,
                                                 allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        label = (data or {}).get("name", name)
        records, dropped = clean_records(records, recipe, name=label)
        model, tokenizer, model_ref, stored_dtype = _load(model, tokenizer, trust_remote_code=trust_remote_code,
                                                          allow_pickle=allow_pickle, train_dtype=train_dtype)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        device = resolve_device(device)
        model.to(device)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        training = train(model, tokenizer, records, recipe, device=device, name=name, label=label, stop=stop,
                         constrain=(lambda m: constrain(m, device)) if constrain is not None else None)
        wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
        if training.penalty is not None:
            extra = {**dict(extra or {}), "constraint": {**described, **penalty_summary(training.penalty)}}
        check_trained(training.model, training.losses, name)
        save_dtype = stored_dtype if recipe.save_dtype == "auto" else recipe.save_dtype
        manifest = run_manifest(name=name, model_ref=model_ref, recipe=recipe, data=data, records=records,
                                dropped=dropped, training=training,
                                chat=uses_chat(tokenizer, recipe), device=device, train_dtype=train_dtype,
                                save_dtype=save_dtype, wall=wall, cpu=cpu, extra=extra)
        with staged_dir(out) as stage:
            trained = _save(training.model, tokenizer, stage, recipe, save_dtype)
            write_json(stage / MANIFEST, manifest)
        return FinetuneResult(model=trained, tokenizer=tokenizer, manifest=manifest, out=out)


def constraint_binder(recipe: Recipe, model: Any, base: str | os.PathLike | None, *, seed: int,
                      cache_dir: Path | None, allow_pickle: bool, trust_remote_code: bool
                      ) -> tuple[Callable[[Any, str], Any] | None, dict[str, Any]]:
    """(bind(model, device) -> Penalty, the constraint's description) for a recipe's constraint; (None, {}) without one.

    Checked before any data is read: the constraint builds, the model is a checkpoint and the base W_0 is given.
    """
    if recipe.constraint is None:
        return None, {}
    from ..checkpoints import Checkpoint, check_compatible
    from ..subspaces import AlignmentSubspaces
    from .constraints import make_constraint

    constraint = make_constraint(recipe.constraint, "constraint")
    if not isinstance(model, (str, os.PathLike)):
        raise UserError(f"constraint {constraint.name} reads the model being fine-tuned from its checkpoint; give the "
                        "model as a directory")
    if base is None:
        raise UserError(f"constraint {constraint.name} needs the base model W_0 (Δ = model - base): give --base")
    opened = {"base": Checkpoint(base, role="base", allow_pickle=allow_pickle, trust_remote_code=trust_remote_code),
              "model": Checkpoint(model, role="model", allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)}
    check_compatible(opened)
    described = {"name": constraint.name, **constraint.options(), "base": str(opened["base"].path), "seed": seed}

    def bind(trained: Any, device: str) -> Any:
        subspaces = AlignmentSubspaces(opened["base"], opened["model"], seed=seed, cache_root=cache_dir)
        return constraint.bind(trained, subspaces, device)

    return bind, described


def penalty_summary(penalty: Any) -> dict[str, Any]:
    """A bound constraint's modules and its penalty per step (first, last, thinned curve)."""
    values = penalty.values
    return {"modules": len(penalty.modules), "penalty_first": values[0] if values else None,
            "penalty_final": values[-1] if values else None, "penalty_curve": _thin(values)}


def check_trained(model, losses: Sequence[float], name: str) -> None:
    """Refuse to save a run whose loss or weights became NaN or Inf."""
    import math

    from ..models import check_finite_weights

    bad = next((step for step, loss in enumerate(losses, 1) if not math.isfinite(loss)), None)
    if bad is not None:
        raise diverged(name, bad, losses[bad - 1])
    try:
        check_finite_weights(model, role=name, where="the trained model")
    except UserError as exc:
        raise UserError(f"{exc}; no checkpoint was written (lower --lr, or check the data)") from None


def _thin(values: Sequence[float], points: int = 200) -> list[float]:
    """At most `points` evenly spaced values (always including the last), rounded."""
    if len(values) <= points:
        return [round(v, 5) for v in values]
    stride = len(values) / points
    picked = [values[int(i * stride)] for i in range(points - 1)] + [values[-1]]
    return [round(v, 5) for v in picked]
