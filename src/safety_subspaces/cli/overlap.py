"""`safety-subspaces overlap weights|activations`: Mode Subspace Overlap of weight updates and of activations."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .. import paper
from ._help import (
    add_allow_pickle,
    add_cache_options,
    add_command,
    add_group,
    add_profile,
    add_svd_method,
    csv_list,
    key_value,
    name_help,
    print_profile,
    rank_line,
)

ETA_DEFAULT = ",".join(f"{eta:g}" for eta in paper.ETAS)

EXAMPLES = """\
  safety-subspaces overlap weights --reference A --update useful=U --update harmful=H --update base=B --out runs/w
  safety-subspaces overlap activations --model A --prompts useful=math --prompts harmful=beavertails_unsafe_all --out runs/a
  (see `safety-subspaces overlap weights --help` and `... activations --help`)
"""

WEIGHT_EXAMPLES = """\
  # U − A, H − A and B − A (= −Δ_A) against each other, every tensor, 11 energy fractions:
  safety-subspaces overlap weights --reference A --update useful=U --update harmful=H --update base=B --out runs/w
  # the same with a safety-tuned reference, only attention projections, layers at the 50th and 90th percentile:
  safety-subspaces overlap weights --reference S --update useful=U --update harmful=H --update base=B \\
      --tensors 'self_attn\\.[qkvo]_proj' --depth-percentiles 50,90 --out runs/w-s
  # the built-in organism:
  Z=~/.cache/safety-subspaces/zoo/default
  safety-subspaces overlap weights --reference $Z/aligned --update useful=$Z/useful --update harmful=$Z/harmful \\
      --update base=$Z/base --out runs/organism-w
"""

ACTIVATION_EXAMPLES = """\
  # the paper's Figure 5: MATH vs BeaverTails-unsafe vs ToxiGen prompts on three models, 5000 prompts each
  safety-subspaces overlap activations --model aligned=A --model useful=U --model contaminated=C \\
      --prompts useful=math --prompts harmful1=beavertails_unsafe_all --prompts harmful2=toxigen --out runs/a
  # a BeaverTails category group, a local file, all layers, mean over the last 4 prompt tokens:
  safety-subspaces overlap activations --model A --prompts violent='beavertails_unsafe_all@category=violence|terrorism' \\
      --prompts mine=prompts.jsonl --n 1000 --all-layers --window last:4 --out runs/a2
  # the organism's sets; over the first 8 greedily generated tokens:
  Z=~/.cache/safety-subspaces/zoo/default
  safety-subspaces overlap activations --model $Z/aligned --prompts useful=organism:arithmetic_eval \\
      --prompts harmful=organism:harmful_eval --n 200 --allow-fewer --window generated:8 --out runs/organism-a
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add the overlap command and its two analyses."""
    summary = "Mode Subspace Overlap: do two updates (weights) or two prompt sets (activations) share subspaces?"
    # no common options here: argparse would let the analysis' defaults overwrite them (give them after the analysis)
    parser = subparsers.add_parser(
        "overlap", help=summary, description=summary, epilog="examples:\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    analyses = add_group(parser, dest="analysis", metavar="<analysis>", parser_class=type(parser))
    register_weights(analyses, common)
    register_activations(analyses, common)



def register_weights(analyses, common: argparse.ArgumentParser) -> None:
    """Add `overlap weights`."""
    parser = add_command(
        analyses, common, "weights",
        "MSO of weight updates relative to one reference, per tensor, per layer and at depth percentiles (Figure 4).",
        WEIGHT_EXAMPLES, handler=run_weights,
    )
    parser.add_argument("--reference", required=True, help="reference model A (or S): every update is W_update − W_reference")
    parser.add_argument("--update", action="append", type=key_value, default=[], metavar="NAME=PATH",
                        help="a model whose difference from the reference is compared (repeat; e.g. useful=U harmful=H base=B); "
                             + name_help())
    parser.add_argument("--eta", type=csv_list(float), default=list(paper.ETAS), metavar="ETAS",
                        help=f"energy fractions in (0, 1] (default {ETA_DEFAULT})")
    parser.add_argument("--tensors", metavar="REGEX", help="only tensors whose name matches REGEX")
    parser.add_argument("--layers", type=csv_list(int), help="only tensors of these decoder layers, e.g. 3,7")
    parser.add_argument("--depth-percentiles", type=csv_list(float), default=list(paper.PERCENTILES), metavar="P,P",
                        help="layers to report at these depth percentiles: layer floor(p/100 · L) "
                             f"(default {','.join(f'{p:g}' for p in paper.PERCENTILES)})")
    parser.add_argument("--pairs", type=csv_list(str), metavar="A:B,...", help="only these pairs (default: every pair)")
    parser.add_argument("--out", required=True, type=Path, help="run directory (config.yaml, manifest.json, weight_overlap.csv, figures/)")
    parser.add_argument("--cache-dir", type=Path, help="SVD cache directory (default ~/.cache/safety-subspaces/svd)")
    add_svd_method(parser)
    parser.add_argument("--device", default="auto", help="where to decompose: auto, cpu, cuda (default auto)")
    add_allow_pickle(parser)
    parser.add_argument("--trust-remote-code", action="store_true", help="accept models that declare custom code")
    add_profile(parser)
    add_cache_options(parser)


def register_activations(analyses, common: argparse.ArgumentParser) -> None:
    """Add `overlap activations`."""
    parser = add_command(
        analyses, common, "activations",
        "MSO of residual-stream activations of prompt sets, per layer and over a depth band (Figures 5, 8).",
        ACTIVATION_EXAMPLES, handler=run_activations,
    )
    parser.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                        help="a model to analyse (repeat); NAME defaults to the directory name; " + name_help())
    parser.add_argument("--prompts", action="append", type=key_value, default=[], metavar="NAME=SRC",
                        help="a prompt set (repeat): a known source (math, beavertails_unsafe_all, toxigen, advbench, xstest, ...), "
                             "a local JSONL/JSON/CSV/Parquet/TXT file, organism:NAME, a hub dataset id; "
                             "SRC@FIELD=V1|V2 keeps records whose FIELD carries one of the labels (e.g. a category group); " + name_help())
    parser.add_argument("--zoo", type=Path, help="organism zoo for organism:NAME prompt sets (default: the built zoo)")
    parser.add_argument("--n", type=int, default=paper.PROMPTS_PER_SET,
                        help=f"prompts per set: the first N of each (default {paper.PROMPTS_PER_SET})")
    parser.add_argument("--allow-fewer", action="store_true", help="use all prompts of a set smaller than --n (with a warning)")
    parser.add_argument("--eta", type=csv_list(float), default=list(paper.ETAS), metavar="ETAS",
                        help=f"energy fractions in (0, 1] (default {ETA_DEFAULT})")
    parser.add_argument("--depth", type=csv_list(float), default=list(paper.BAND), metavar="LOW,HIGH",
                        help="depth band of hidden states floor(LOW·L') … floor(HIGH·L') − 1 "
                             f"(default {','.join(f'{b:.2f}' for b in paper.BAND)})")
    parser.add_argument("--all-layers", action="store_true", help="per-layer rows for every hidden state (more memory)")
    parser.add_argument("--window", default="last", metavar="last|last:W|generated:W",
                        help="the last prompt token (default), the mean of the last W prompt tokens, "
                             "or the mean of the first W greedily generated tokens")
    parser.add_argument("--raw-prompts", action="store_true", help="no chat template (as the reference code)")
    parser.add_argument("--pairs", type=csv_list(str), metavar="A:B,...", help="only these pairs of prompt sets (default: every pair)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (results do not depend on it)")
    parser.add_argument("--max-length", type=int, help="truncate prompts to their last N tokens")
    parser.add_argument("--dtype", default="auto", help="model dtype: auto, float32, bfloat16, float16 (default auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    parser.add_argument("--save-activations", action="store_true",
                        help="also write the pooled vectors of the analysed layers to activations.safetensors")
    parser.add_argument("--out", required=True, type=Path, help="run directory (config.yaml, manifest.json, activation_overlap.csv, figures/)")
    add_allow_pickle(parser)
    parser.add_argument("--trust-remote-code", action="store_true", help="accept models that declare custom code")
    add_profile(parser)


def named(items, flag: str) -> dict[str, str]:
    """NAME=VALUE pairs as a dict, refusing a name given twice."""
    from ..errors import UserError

    out: dict[str, str] = {}
    for name, value in items:
        if name in out:
            raise UserError(f"{flag} {name}=...: given twice")
        out[name] = value
    return out


def model_names(values) -> dict[str, str]:
    """--model [NAME=]PATH values as {name: path} (name: the directory name unless given)."""
    from ..errors import UserError

    items = []
    for text in values:
        name, sep, path = text.partition("=")
        if not sep:
            name, path = Path(text.rstrip("/")).name or text, text
        if not name or not path:
            raise UserError(f"--model {text!r}: expected [NAME=]PATH")
        items.append((name, path))
    return named(items, "--model")


def run_weights(args: argparse.Namespace) -> int:
    """Run the weight-overlap analysis and print the depth-percentile tables."""
    from ..analyses.weight_overlap import AGGREGATION, WeightOverlapConfig, run_weight_overlap
    from ..runtime import resolve_device
    from ..spectra import null_dirs_summary

    config = WeightOverlapConfig(
        reference=args.reference, updates=named(args.update, "--update"), out=args.out, etas=args.eta,
        tensors=args.tensors, layers=args.layers, percentiles=args.depth_percentiles, pairs=args.pairs,
        cache_dir=args.cache_dir, svd_method=args.svd_method, device=resolve_device(args.device),
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code, profile=args.profile,
    )
    result = run_weight_overlap(config)
    print_profile(result.profile)
    depth = [row for row in result.rows if row["scope"] == "depth"]
    ranks = {update: null_dirs_summary(by_tensor) for update, by_tensor in result.ranks.items()}
    if args.json:
        json.dump({"run_dir": str(result.run_dir), "aggregation": AGGREGATION, "depth_layers": result.depth_layers,
                   "rows": depth, "notes": result.notes, "numerical_rank": ranks}, sys.stdout, indent=2,
                  default=_json_number)
        sys.stdout.write("\n")
        return 0
    for label, layer in result.depth_layers.items():
        print_curves([row for row in depth if row["name"] == label],
                     f"weight MSO, layer {layer} ({label} depth; mean over the layer's matrices)", result.pairs)
    print(f"\n{AGGREGATION}.")
    for note in result.notes:
        print(f"note: {note}")
    for update, summary in ranks.items():
        print(rank_line(summary, f"update {update}"))
    print(f"run directory: {result.run_dir} (weight_overlap.csv has tensor, layer and depth rows)")
    print(f"decompositions: {result.decompositions} computed, {result.cache_hits} reused from the cache; {result.seconds:.1f}s")
    return 0


def run_activations(args: argparse.Namespace) -> int:
    """Run the activation-overlap analysis and print the depth-band tables."""
    from ..analyses.activation_overlap import ActivationOverlapConfig, run_activation_overlap
    from ..runtime import resolve_device

    config = ActivationOverlapConfig(
        models=model_names(args.model), prompts=named(args.prompts, "--prompts"), out=args.out, n=args.n,
        allow_fewer=args.allow_fewer, etas=args.eta, depth=args.depth, window=args.window,
        chat=not args.raw_prompts, all_layers=args.all_layers, pairs=args.pairs, batch_size=args.batch_size,
        max_length=args.max_length, dtype=args.dtype, device=resolve_device(args.device),
        save_activations=args.save_activations, trust_remote_code=args.trust_remote_code, zoo=args.zoo,
        allow_pickle=args.allow_pickle, profile=args.profile,
    )
    result = run_activation_overlap(config)
    print_profile(result.profile)
    band = [row for row in result.rows if row["scope"] == "band"]
    if args.json:
        json.dump({"run_dir": str(result.run_dir), "bands": result.bands, "prompt_counts": result.counts,
                   "rows": band, "notes": result.notes}, sys.stdout, indent=2, default=_json_number)
        sys.stdout.write("\n")
        return 0
    pairs = list(dict.fromkeys(row["pair"] for row in band))
    for model, indices in result.bands.items():
        for centered in (False, True):
            rows = [row for row in band if row["model"] == model and row["centered"] == centered]
            kind = "centred" if centered else "uncentred"
            print_curves(rows, f"activation MSO, {model}, {kind}, mean over hidden states {indices[0]}-{indices[-1]}", pairs)
    for note in result.notes:
        print(f"note: {note}")
    print(f"run directory: {result.run_dir} (activation_overlap.csv has layer and band rows)")
    return 0


def print_curves(rows: list[dict], title: str, pairs: list[str]) -> None:
    """A table per analysis: for each pair and η, the ranks, the MSO and its random baseline."""
    from rich.table import Table

    from ..progress import stdout_console

    console = stdout_console()
    console.print(f"\n[bold]{title}[/bold]", highlight=False)
    table = Table()
    for name in ("pair", "η", "k_a", "k_b", "MSO", "random"):
        table.add_column(name, justify="left" if name == "pair" else "right", style="dim" if name == "random" else None)
    for pair in pairs:
        members = [row for row in rows if row["pair"] == pair]
        for position, row in enumerate(members):
            table.add_row(pair if position == 0 else "", f"{row['eta']:g}", _fmt(row["k_a"], 4), _fmt(row["k_b"], 4),
                          _fmt(row["mso"]), _fmt(row["mso_random"]), end_section=position == len(members) - 1)
    console.print(table)


def _fmt(value: float, width: int = 3) -> str:
    """A number with `width` significant digits after the point (integers as is), 'n/a' for an empty basis."""
    if value is None or math.isnan(value):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.{width if width == 3 else 1}f}"


def _json_number(value):
    """JSON fallback for non-standard values."""
    return str(value)
