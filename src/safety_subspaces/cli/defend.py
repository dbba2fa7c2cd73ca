"""`safety-subspaces defend`: apply a published subspace defence and write the defended model with defence.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._help import add_allow_pickle, add_command, add_svd_method, key_value, positive, show_registries

EXAMPLES = """\
  # Safe LoRA on a LoRA adapter (B <- C B on the 10 modules of lowest cosine); DIR is an adapter again
  safety-subspaces defend safe_lora --base B --aligned A --finetuned runs/ft/lora-adapter --out runs/def/safe_lora
  # threshold mode on a full fine-tune, the random-subspace control that keeps C's spectrum
  safety-subspaces defend safe_lora --base B --aligned A --finetuned F --out DIR \\
      --edit-arg mode=threshold --edit-arg threshold=0.5 --edit-arg subspace=random
  # SafeMERGE with a safety fine-tune of A, RESTA with a harmful fine-tune of A
  safety-subspaces defend safemerge --base B --aligned A --finetuned F --safety-update S --out DIR
  safety-subspaces defend resta --base B --aligned A --finetuned F --harmful H --edit-arg beta=1 --out DIR
  # LoX: W_A' = W_A + alpha U_k S_k V_k^T of Delta_A (before fine-tuning; fine-tune DIR afterwards)
  safety-subspaces defend lox --base B --aligned A --edit-arg k=6 --edit-arg alpha=1.25 --out DIR
  # AsFT acts during fine-tuning: safety-subspaces finetune --constraint asft --base B --model A ...
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add the defend command."""
    parser = add_command(subparsers, common, "defend",
                         "Apply a published subspace defence (Safe LoRA, SafeMERGE, RESTA, LoX) and write the "
                         "defended model with DIR/defence.json.", EXAMPLES, handler=run)
    parser.add_argument("defence", metavar="NAME", help="a registered defence: an edit or a transform (listed below)")
    parser.add_argument("--base", required=True, help="base model W_0 (directory or hub id)")
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--aligned", help="aligned model W_A (Δ_A = W_A - W_0)")
    reference.add_argument("--safety-tuned", help="safety-tuned model W_S, used instead of W_A (Δ_S = W_S - W_0)")
    parser.add_argument("--finetuned", help="the fine-tune to defend: a checkpoint or a PEFT LoRA adapter of the "
                                            "reference (edits only)")
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) directory for the defended model")
    parser.add_argument("--edit-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the defence (repeatable; listed below)")
    models = parser.add_argument_group("other models a defence reads")
    models.add_argument("--harmful", help="resta: the reference fine-tuned on harmful data (W_harmful)")
    models.add_argument("--safety-update", help="safemerge: a safety fine-tune of the reference, merged in")
    models.add_argument("--read", action="append", type=key_value, default=[], metavar="NAME=PATH",
                        help="another checkpoint a (plugin) defence reads, by the name it declares")
    parser.add_argument("--seed", type=int, default=0, help="seed of random-subspace controls and DARE (default 0)")
    parser.add_argument("--shard-size", type=positive(float), default=2.0, help="max shard size in GB (default 2)")
    parser.add_argument("--cache-dir", type=Path, help="SVD cache directory (default ~/.cache/safety-subspaces/svd)")
    add_svd_method(parser)
    parser.add_argument("--device", default="auto", help="where to decompose and edit: auto, cpu, cuda (default auto)")
    add_allow_pickle(parser)
    parser.add_argument("--trust-remote-code", action="store_true", help="accept models that declare custom code")
    show_registries(parser, ("safety_subspaces.edits", "EDITS"), ("safety_subspaces.transforms", "TRANSFORMS"))


def run(args: argparse.Namespace) -> int:
    """Parse the defence's options, apply it, print where the defended model went."""
    from ..defend import DefendConfig, defence_kind, defend, registries
    from ..errors import UserError
    from ..runtime import resolve_device

    kind = defence_kind(args.defence)
    registry = registries()[kind]
    name = registry.canonical(args.defence, "defend")
    options = registry.parse_pairs(name, args.edit_arg, f"defend {name} --edit-arg")
    others = {key: value for key, value in (("harmful", args.harmful), ("safety_update", args.safety_update))
              if value is not None}
    for key, path in args.read:
        if key in others:
            raise UserError(f"--read {key}=...: given twice")
        others[key] = path
    config = DefendConfig(
        defence=name, base=args.base, reference=args.aligned or args.safety_tuned,
        reference_kind="aligned" if args.aligned else "safety_tuned", out=args.out, options=options,
        finetuned=args.finetuned, others=others, seed=args.seed, shard_bytes=int(args.shard_size * 1024**3),
        cache_dir=args.cache_dir, svd_method=args.svd_method, device=resolve_device(args.device),
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
    )
    result = defend(config)
    record = result.record  # what defence.json holds, and its form
    if args.json:
        json.dump({**record, "out": str(result.out)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    pooled = record["pooled"]
    ratio = "energy_added" if record["kind"] == "transform" else "energy_kept"
    value = pooled.get(ratio)
    print(f"{record['defence']} ({record['when']}): {pooled['edited']} of {pooled['modules']} modules changed, "
          f"{ratio.replace('_', ' ')} {value:.4f} pooled -> {result.out} ({result.form})" if value is not None else
          f"{record['defence']}: no module changed -> {result.out} ({result.form})")
    return 0
