"""`safety-subspaces project`: energy kept under alignment-subspace projections, and projected checkpoints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import paper
from ._help import (
    add_allow_pickle,
    add_cache_options,
    add_command,
    add_profile,
    add_spec_options,
    add_svd_method,
    csv_list,
    key_value,
    name_help,
    positive,
    print_profile,
    rank_line,
    show_registries,
    specs,
)

EXAMPLES = """\
  safety-subspaces project --base B --aligned A \\
      --finetuned useful=U --finetuned harmful=H --finetuned contaminated=C \\
      --subspaces top_k,random_k,random --fractions 0.01,0.25,0.5,0.75,0.99 --out runs/energy
  # Δ_S instead of Δ_A:
  safety-subspaces project --base B --safety-tuned S --finetuned useful=U --out runs/energy-s
  # also write projected checkpoints (loadable by from_pretrained and lm-eval):
  safety-subspaces project --base B --aligned A --finetuned harmful=H --out runs/p \\
      --write parallel:top_k:0.25 --write orthogonal:random:0.5 --models-out models/
  # the same as edits with their options (any registered edit, listed below):
  safety-subspaces project --base B --aligned A --finetuned harmful=H --out runs/p --models-out models/ \\
      --edit parallel --edit-arg subspace=top_k --edit-arg fraction=0.25
  # only layer 7's MLP (the rest keeps the fine-tuned weights):
  safety-subspaces project ... --tensors 'mlp' --layers 7
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add the project command."""
    parser = add_command(
        subparsers, common, "project",
        "Split fine-tuning updates along alignment subspaces: energy kept, cosines, projected checkpoints.",
        EXAMPLES, handler=run,
    )
    parser.add_argument("--base", required=True, help="base model W_0 (directory or hub id)")
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--aligned", help="aligned model W_A (Δ_A = W_A - W_0)")
    reference.add_argument("--safety-tuned", help="safety-tuned model W_S, used instead of W_A (Δ_S = W_S - W_0)")
    parser.add_argument("--finetuned", action="append", type=key_value, default=[], metavar="NAME=PATH",
                        help="a fine-tune of the reference model (repeat: useful=U harmful=H contaminated=C); " + name_help())
    parser.add_argument("--subspaces", type=csv_list(str), default=list(paper.SUBSPACE_KINDS),
                        help=f"registered subspace kinds (listed below; default: {','.join(paper.SUBSPACE_KINDS)})")
    parser.add_argument("--fractions", type=csv_list(float), default=list(paper.FRACTIONS),
                        help=f"rank fractions in (0, 1] (default: {','.join(f'{f:g}' for f in paper.FRACTIONS)})")
    parser.add_argument("--schemes", type=csv_list(str), default=list(paper.SCHEMES),
                        help=f"projection schemes: edits such as parallel, orthogonal, opposite (default: {','.join(paper.SCHEMES)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subspaces (default 0)")
    parser.add_argument("--tensors", metavar="REGEX", help="only tensors whose name matches REGEX")
    parser.add_argument("--layers", type=csv_list(int), help="only tensors of these decoder layers, e.g. 3,7")
    parser.add_argument("--out", required=True, type=Path, help="run directory for config.yaml, manifest.json, energy.csv")
    parser.add_argument("--write", action="append", default=[], metavar="[FT:]SCHEME:SUBSPACE:FRACTION",
                        help="write a projected checkpoint to MODELS_OUT/FT/SCHEME-SUBSPACE-FRACTION (for every fine-tune unless "
                             "FT, a --finetuned NAME, is given); repeatable")
    add_spec_options(parser, "--edit", metavar="NAME",
                     help="write the checkpoint of every fine-tune edited by this registered edit (repeatable; "
                          "listed below) to MODELS_OUT/FT/LABEL", arg_help="an option of the --edit before it (repeatable)")
    parser.add_argument("--models-out", type=Path, help="directory for edited checkpoints (MODELS_OUT/FT/LABEL)")
    parser.add_argument("--shard-size", type=positive(float), default=2.0, help="max shard size of written checkpoints in GB (default 2)")
    parser.add_argument("--cache-dir", type=Path, help="SVD cache directory (default ~/.cache/safety-subspaces/svd)")
    add_svd_method(parser)
    parser.add_argument("--device", default="auto", help="where to decompose and project: auto, cpu, cuda (default auto)")
    add_allow_pickle(parser)
    parser.add_argument("--trust-remote-code", action="store_true", help="accept models that declare custom code")
    add_profile(parser)
    add_cache_options(parser)
    show_registries(parser, ("safety_subspaces.subspaces", "SUBSPACES"), ("safety_subspaces.edits", "EDITS"))


def run(args: argparse.Namespace) -> int:
    """Run the projection analysis and print the model-level energy table."""
    from ..analyses.energy import ProjectConfig, WriteRequest, run_project
    from ..edits import EDITS
    from ..errors import UserError
    from ..runtime import resolve_device
    from ..spectra import null_dirs_summary

    finetunes: dict[str, str] = {}
    for name, path in args.finetuned:
        if name in finetunes:
            raise UserError(f"--finetuned {name}=...: given twice")
        finetunes[name] = path
    config = ProjectConfig(
        base=args.base,
        reference=args.aligned or args.safety_tuned,
        reference_kind="aligned" if args.aligned else "safety_tuned",
        finetunes=finetunes,
        out=args.out,
        subspaces=args.subspaces,
        fractions=args.fractions,
        schemes=args.schemes,
        seed=args.seed,
        tensors=args.tensors,
        layers=args.layers,
        writes=[*(WriteRequest.parse(text) for text in args.write),
                *(WriteRequest(spec) for spec in specs(EDITS, args.edit, "--edit"))],
        models_out=args.models_out,
        shard_bytes=int(args.shard_size * 1024**3),
        cache_dir=args.cache_dir,
        svd_method=args.svd_method,
        device=resolve_device(args.device),
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        profile=args.profile,
    )
    result = run_project(config)
    print_profile(result.profile)
    model_rows = [row for row in result.rows if row["scope"] == "model"]
    ranks = null_dirs_summary(result.ranks)
    if args.json:
        json.dump({"reference": result.reference_kind, "run_dir": str(result.run_dir), "rows": model_rows,
                   "written": [str(p) for p in result.written], "numerical_rank": ranks}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_energy(model_rows, result.reference_kind, config.fractions)
        print(f"\nrun directory: {result.run_dir} (energy.csv has model, layer and tensor scopes)")
        print(rank_line(ranks, "Δ") + " (rank, null_dirs in energy.csv)")
        print(f"decompositions: {result.decompositions} computed, {result.cache_hits} reused from the cache; {result.seconds:.1f}s")
        for path in result.written:
            print(f"wrote {path}")
    return 0


def print_energy(rows: list[dict], reference_kind: str, fractions) -> None:
    """Print energy kept as fine-tune x subspace rows and fraction columns, one table per scheme."""
    from rich.table import Table

    from ..progress import stdout_console

    console = stdout_console()
    delta = "Δ_A (aligned)" if reference_kind == "aligned" else "Δ_S (safety-tuned)"
    for scheme in dict.fromkeys(row["scheme"] for row in rows):
        table = Table(title=f"energy kept, {scheme} projection onto subspaces of {delta}")
        table.add_column("fine-tune")
        table.add_column("subspace")
        for fraction in fractions:
            table.add_column(f"ϱ={fraction:g}", justify="right")
        table.add_column("cos(Δ_T, Δ)", justify="right")
        groups: dict[tuple[str, str], dict[float, dict]] = {}
        for row in rows:
            if row["scheme"] == scheme:
                groups.setdefault((row["finetune"], row["subspace"]), {})[row["fraction"]] = row
        for (finetune, subspace), by_fraction in groups.items():
            cells = [f"{by_fraction[f]['energy_kept']:.4f}" for f in fractions]
            cos_align = next(iter(by_fraction.values()))["cos_task_align"]
            table.add_row(finetune, subspace, *cells, f"{cos_align:+.4f}")
        console.print(table)
