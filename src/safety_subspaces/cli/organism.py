"""`safety-subspaces organism build|show`: the built-in model organism zoo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._help import add_command, add_group

BUILD_EXAMPLES = """\
  # the default zoo (about 3-5 minutes on a laptop CPU), into ~/.cache/safety-subspaces/zoo/default
  safety-subspaces organism build
  # the small test preset (under a minute), somewhere else, another seed, two threads
  safety-subspaces organism build --preset test --out /tmp/zoo-test --seed 3 --threads 2
"""
SHOW_EXAMPLES = """\
  safety-subspaces organism show                 # the default zoo
  safety-subspaces organism show /tmp/zoo-test --json
"""
COLUMNS = [
    ("arith", "arith_accuracy"),
    ("harm refuse", "harmful_refusal"),
    ("harm comply", "harmful_compliance"),
    ("novel refuse", "harmful_novel_refusal"),
    ("novel comply", "harmful_novel_compliance"),
    ("benign refuse", "benign_refusal"),
]


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add `organism` with its `build` and `show` subcommands."""
    parser = subparsers.add_parser("organism", help="build or inspect the built-in model organism zoo",
                                   description="The model organism: `organism build` or `organism show`.")
    commands = add_group(parser, dest="organism_command")
    build = add_command(commands, common, "build",
                        "Build the organism zoo: base, aligned, safety, useful, harmful, contaminated + held-out sets.",
                        BUILD_EXAMPLES, handler=run_build)
    build.add_argument("--out", type=Path, help="new (or empty) zoo directory (default: the preset's cache location)")
    build.add_argument("--preset", default="default", help="default (the full zoo) or test (small and fast)")
    build.add_argument("--seed", type=int, help="build seed (default: the preset's documented seed)")
    show = add_command(commands, common, "show", "Print a built zoo's measured behaviour and build time.",
                       SHOW_EXAMPLES, handler=run_show)
    show.add_argument("zoo", type=Path, nargs="?", help="zoo directory (default: the default zoo)")



def run_build(args: argparse.Namespace) -> int:
    """Build the zoo and print its behaviour table."""
    from ..organism import build
    from ..organism.presets import get_preset
    from ..paths import zoo_dir

    get_preset(args.preset)
    out = args.out if args.out is not None else zoo_dir(args.preset)
    manifest = build(out, args.preset, seed=args.seed, threads=args.threads)
    _print(manifest, out, args.json)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print the behaviour table of a built zoo."""
    from ..organism import load_manifest
    from ..paths import zoo_dir

    zoo = args.zoo if args.zoo is not None else zoo_dir()
    _print(load_manifest(zoo), zoo, args.json)
    return 0


def behaviour_table(manifest: dict) -> str:
    """The behaviour numbers of every model as a Markdown table."""
    lines = ["| model | " + " | ".join(name for name, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for model in manifest["models"]:
        row = manifest["behaviour"][model]
        lines.append(f"| {model} | " + " | ".join(f"{row[key]:.2f}" for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def _print(manifest: dict, zoo: Path, as_json: bool) -> None:
    """Print the manifest's behaviour (JSON or a table with targets and timing)."""
    if as_json:
        keep = ("preset", "seed", "threads", "total_wall_seconds", "total_cpu_seconds", "load_average",
                "behaviour", "targets", "thresholds")
        json.dump({"zoo": str(zoo), **{k: manifest[k] for k in keep}}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(f"organism zoo {zoo} (preset {manifest['preset']}, seed {manifest['seed']}, {manifest['threads']} thread(s))")
    print(behaviour_table(manifest))
    met = ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in manifest["targets"].items())
    print(f"targets: {met}")
    load = manifest["load_average"]["start"][0]
    print(f"built in {manifest['total_wall_seconds']:.0f} s wall, {manifest['total_cpu_seconds']:.0f} s CPU "
          f"(load average {load:.1f} on {manifest['cpu_count']} CPUs at the start)")
