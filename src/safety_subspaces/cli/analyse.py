"""`safety-subspaces analyse NAME`: run any registered analysis (a built-in or a plugin's) on models given by role."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._help import add_allow_pickle, add_command, add_svd_method, key_value, name_help, show_registries

EXAMPLES = """\\
  # weight-update MSO, as `overlap weights` does it, with its options as KEY=VALUE:
  safety-subspaces analyse weight_overlap --model aligned=A --model useful=U --model base=B --reference aligned \\\\
      --arg updates=useful,base --arg eta=0.5,0.9 --out runs/w
  # energy kept for one fine-tune, random subspaces only:
  safety-subspaces analyse energy --model base=B --model aligned=A --model harmful=H --finetune harmful \\\\
      --arg subspaces=random --arg fractions=0.25,0.5 --out runs/e
  # an analysis a plugin registered (entry-point group safety_subspaces.analyses):
  safety-subspaces analyse my_analysis --model aligned=A --arg threshold=0.3 --out runs/mine
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add the analyse command."""
    parser = add_command(subparsers, common, "analyse", "Run a registered analysis (listed below) on models given by role.",
                         EXAMPLES, handler=run)
    parser.add_argument("analysis", metavar="NAME", help="a registered analysis")
    parser.add_argument("--model", action="append", type=key_value, default=[], metavar="ROLE=PATH",
                        help="a model and the role the analysis reads it as (repeat); " + name_help())
    parser.add_argument("--reference", default="aligned", metavar="ROLE", help="the reference model's role (default aligned)")
    parser.add_argument("--base", default="base", metavar="ROLE", help="the base model's role (default base)")
    parser.add_argument("--finetune", action="append", default=[], metavar="ROLE", help="a role that is a fine-tune (repeat)")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="an option of the analysis (repeat)")
    parser.add_argument("--out", required=True, type=Path, help="run directory (config.yaml, manifest.json, NAME.csv, figures/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random choices (default 0)")
    parser.add_argument("--zoo", type=Path, help="organism zoo for organism:NAME prompt sets (default: the built zoo)")
    parser.add_argument("--cache-dir", type=Path, help="SVD cache directory (default ~/.cache/safety-subspaces/svd)")
    add_svd_method(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    parser.add_argument("--dtype", default="auto", help="model dtype for analyses that load models (default auto)")
    add_allow_pickle(parser)
    parser.add_argument("--trust-remote-code", action="store_true", help="accept models that declare custom code")
    show_registries(parser, ("safety_subspaces.analyses", "ANALYSES"))


def run(args: argparse.Namespace) -> int:
    """Build the analysis from its options, run it into --out and say what it wrote."""
    from ..analyses import ANALYSES, AnalysisContext, build_analysis, run_analysis
    from ..errors import UserError
    from ..names import check_name
    from ..runtime import resolve_device

    models: dict[str, str] = {}
    for role, path in args.model:
        check_name(role, "--model")
        if role in models:
            raise UserError(f"--model {role}=...: given twice")
        models[role] = path
    name = ANALYSES.canonical(args.analysis, "analyse")
    options = ANALYSES.parse_pairs(name, args.arg, f"analyse {name} --arg")
    analysis = build_analysis(name, options, f"analyse {name}")
    context = AnalysisContext(models, reference=args.reference, base=args.base, finetunes=args.finetune, seed=args.seed,
                              device=resolve_device(args.device), dtype=args.dtype, svd_method=args.svd_method,
                              cache_dir=args.cache_dir, allow_pickle=args.allow_pickle,
                              trust_remote_code=args.trust_remote_code, zoo=args.zoo)
    result = run_analysis(analysis, context, args.out)
    if args.json:
        json.dump({"analysis": name, "run_dir": str(result.run_dir), "table": analysis.table.name, "rows": result.rows,
                   "notes": result.notes}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    for note in result.notes:
        print(f"note: {note}")
    print(f"{name}: {len(result.rows)} rows of {analysis.table.name} -> {result.run_dir / analysis.table.csv} "
          f"({result.seconds:.1f}s)")
    return 0
