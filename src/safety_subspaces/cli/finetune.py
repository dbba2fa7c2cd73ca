"""`safety-subspaces finetune`: the paper's fine-tuning recipes (full, LoRA, DPO) on named or local data."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ._help import add_allow_pickle, add_command, add_spec_options, show_registries, specs

EXAMPLES = """\
  # the paper's useful fine-tune of an aligned model (MetaMathQA 20k, lr 1e-5, 1x32, 1 epoch, cosine)
  safety-subspaces finetune --model meta-llama/Llama-3.2-1B-Instruct --data useful --out runs/ft/useful
  # harmful (BeaverTails unsafe 4k) and contaminated (useful + 20% harmful) from local files, LoRA rank 16, merged
  safety-subspaces finetune --model M --data harmful --source beavertails_unsafe.jsonl --lora 16 --merge --out runs/ft/h
  safety-subspaces finetune --model M --data contaminated --useful-source metamath.jsonl \\
      --harmful-source beavertails_unsafe.jsonl --percent 20 --out runs/ft/contaminated
  # any JSONL/CSV/Parquet with a field mapping (ours=theirs)
  safety-subspaces finetune --model M --data qa.csv --fields prompt=question,response=answer --out runs/ft/qa
  # safety tuning of a base model (W_S), and the DPO variant on preference pairs
  safety-subspaces finetune --model meta-llama/Llama-3.2-1B --data safety --out runs/ft/safety
  safety-subspaces finetune --model M --method dpo --data preference --max-steps 5000 --out runs/ft/dpo
  # AsFT: the loss plus lambda * sum ||(I - C) (W - W_A)||^2 over decoder matrices (C from Delta_A = W_A - W_0)
  safety-subspaces finetune --model ZOO/aligned --base ZOO/base --data organism:harmful --constraint asft \
      --constraint-arg lambda=1 --out runs/ft/harmful-asft
  # on the organism (built with `safety-subspaces organism build`)
  safety-subspaces finetune --model ZOO/aligned --data organism:useful --lr 5e-4 --batch-size 32 --grad-accum 1 \\
      --max-steps 200 --out runs/ft/organism-useful
"""

# Flag help for every recipe knob (the flag is the field name with dashes; lora_rank is --lora).
KNOBS = {
    "method": "sft (default) or dpo (TRL DPOTrainer on prompt/chosen/rejected pairs)",
    "lr": "peak learning rate (default 1e-5)",
    "batch_size": "examples per forward pass (default 1)",
    "grad_accum": "gradient accumulation steps (default 32)",
    "epochs": "passes over the data (default 1; fractions allowed)",
    "max_steps": "optimizer steps; overrides --epochs",
    "scheduler": "cosine (default), linear or constant, after warmup",
    "warmup": "warmup as a fraction of the steps (default 0.02)",
    "min_lr_ratio": "decay floor as a fraction of --lr (default 0)",
    "weight_decay": "AdamW weight decay (default 0)",
    "adam_beta1": "AdamW beta1 (default 0.9)",
    "adam_beta2": "AdamW beta2 (default 0.999)",
    "adam_eps": "AdamW epsilon (default 1e-8)",
    "max_grad_norm": "gradient clipping norm (default 1.0)",
    "max_length": "tokens per example, longer ones are cut (default 512)",
    "precision": "auto (bf16 autocast where the GPU supports it, else fp32), bf16 or fp32",
    "seed": "seed of initialisation, data order and dropout (default 42)",
    "response_only": "take the loss on response tokens only (default); --no-response-only: on every token",
    "chat_template": "wrap prompts in the model's chat template when it has one (default)",
    "lora_rank": "LoRA rank (default 0: full fine-tuning)",
    "lora_alpha": "LoRA alpha (default 2 x rank)",
    "lora_dropout": "LoRA dropout (default 0)",
    "lora_targets": "LoRA target modules, comma-separated, or all-linear (default)",
    "merge": "LoRA: save the merged full model in --out (the adapter goes to --out/adapter)",
    "dpo_beta": "DPO beta (default 0.1)",
    "save_dtype": "dtype of the saved weights (default auto: the input checkpoint's)",
}


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add the `finetune` command."""
    parser = add_command(subparsers, common, "finetune",
                         "Fine-tune a model with the paper's recipe (full, LoRA or DPO); writes a complete checkpoint.",
                         EXAMPLES, handler=run)
    parser.add_argument("--model", required=True, help="model directory or hub id (its tokenizer is required)")
    parser.add_argument("--data", required=True,
                        help="useful, harmful, contaminated, safety, preference, a data file, a hub id, or organism:NAME")
    parser.add_argument("--out", type=Path, required=True, help="new (or empty) output directory")
    data = parser.add_argument_group("data")
    data.add_argument("--source", help="where the named data set loads from (file or hub id) instead of its default")
    data.add_argument("--useful-source", help="contaminated: the useful part (default metamathqa)")
    data.add_argument("--harmful-source", help="contaminated: the harmful part (default beavertails_unsafe)")
    data.add_argument("--fields", help="field mapping ours=theirs, e.g. prompt=query,response=answer")
    data.add_argument("--useful-fields", help="contaminated: field mapping of the useful part (default --fields)")
    data.add_argument("--harmful-fields", help="contaminated: field mapping of the harmful part (default --fields)")
    data.add_argument("--percent", type=float, default=20.0, help="contaminated: harmful rows as %% of the useful count (default 20)")
    data.add_argument("--limit", type=int, help="use only the first N rows of each source")
    data.add_argument("--data-seed", type=int, default=42, help="seed of the contaminated mix's shuffle (default 42)")
    recipe = parser.add_argument_group("recipe (defaults: the paper's)")
    _recipe_flags(recipe)
    constraint = parser.add_argument_group("training constraint (a defence during fine-tuning, listed below)")
    add_spec_options(constraint, "--constraint", metavar="NAME",
                     help="add a registered constraint's penalty to the loss (asft)",
                     arg_help="an option of the --constraint, e.g. lambda=1 (repeatable)")
    constraint.add_argument("--base", help="base model W_0 the constraint's Δ = model - base is taken from")
    constraint.add_argument("--subspace-seed", type=int, default=0,
                            help="seed of a constraint's random-subspace control (default 0)")
    constraint.add_argument("--cache-dir", type=Path, help="SVD cache directory (default ~/.cache/safety-subspaces/svd)")
    show_registries(parser, ("safety_subspaces.finetune.constraints", "CONSTRAINTS"))
    run_opts = parser.add_argument_group("run")
    run_opts.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    run_opts.add_argument("--train-dtype", default="float32", help="dtype of the trained weights (default float32)")
    add_allow_pickle(run_opts)
    run_opts.add_argument("--trust-remote-code", action="store_true", help="allow models with custom code")


def _recipe_flags(group) -> None:
    """One flag per Recipe field."""
    from ..finetune import Recipe

    for field in dataclasses.fields(Recipe):
        if field.name == "constraint":
            continue  # --constraint NAME --constraint-arg KEY=VALUE
        flag = "--lora" if field.name == "lora_rank" else "--" + field.name.replace("_", "-")
        default = field.default
        if isinstance(default, bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                               help=KNOBS[field.name])
            continue
        kind = {"max_steps": int, "lora_alpha": float, "max_grad_norm": float}.get(field.name, type(default))
        group.add_argument(flag, dest=field.name, type=kind, default=default, metavar=field.name.upper(),
                           help=KNOBS[field.name])


def run(args: argparse.Namespace) -> int:
    """Check the recipe, the output and the model, then load the data, fine-tune, print where the checkpoint went."""
    from ..data import load_training_data
    from ..errors import UserError
    from ..finetune import Recipe, check_output_dir, check_start_model, finetune, recipe_from
    from ..finetune.constraints import CONSTRAINTS

    constraints = specs(CONSTRAINTS, args.constraint, "--constraint")
    if len(constraints) > 1:
        raise UserError("--constraint: give at most one")
    if args.base is not None and not constraints:
        raise UserError("--base is read by a training constraint only; give --constraint NAME or leave it out")
    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if f.name != "constraint"}
    recipe = recipe_from({**knobs, "constraint": constraints[0] if constraints else None})
    check_output_dir(args.out)
    check_start_model(args.model, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    records, info = load_training_data(
        args.data, source=args.source, useful_source=args.useful_source, harmful_source=args.harmful_source,
        fields=args.fields, useful_fields=args.useful_fields, harmful_fields=args.harmful_fields, percent=args.percent, limit=args.limit, seed=args.data_seed, method=recipe.method,
    )
    result = finetune(args.model, records, args.out, recipe, data=info, name=f"finetune {info['name']}",
                      device=args.device, train_dtype=args.train_dtype, trust_remote_code=args.trust_remote_code,
                      allow_pickle=args.allow_pickle, base=args.base, subspace_seed=args.subspace_seed,
                      cache_dir=args.cache_dir)
    manifest = result.manifest
    if args.json:
        json.dump({k: v for k, v in manifest.items() if k != "loss_curve"}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        share = manifest["data"].get("harmful_share")
        extra = f", harmful share {share:.3f}" if share is not None else ""
        print(f"{manifest['method']}: {manifest['steps']} steps on {manifest['data']['n_examples']} examples{extra}, "
              f"final loss {manifest['final_loss']:.4f} -> {args.out}")
    return 0
