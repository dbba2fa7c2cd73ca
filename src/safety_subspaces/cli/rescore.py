"""`safety-subspaces rescore RUN_DIR --judge NAME`: judge a run's stored replies with another judge, no generation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._help import add_allow_pickle, add_command, add_spec_options, show_registries, specs

EXAMPLES = """\
  # an evaluate harm run, judged again by WildGuard and by StrongREJECT (local weights)
  safety-subspaces rescore runs/eval/harm --judge wildguard --judge-arg model=/models/wildguard
  safety-subspaces rescore runs/eval/harm --judge strongreject --judge-arg model=/models/gemma-2b \\
      --judge-arg adapter=/models/strongreject-15k-v1
  # every harm and over-refusal evaluation of a study, then its CSVs and report are written again
  safety-subspaces rescore runs/organism --judge refusal
  # interrupted? rerun the same command: finished judgments are reused
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add `rescore`."""
    parser = add_command(subparsers, common, "rescore",
                         "Judge the stored replies of a study or an evaluate harm run with another judge "
                         "(the model that wrote them is never loaded).", EXAMPLES, handler=run_rescore)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a study run directory or an evaluate harm --out")
    add_spec_options(parser, "--judge", metavar="NAME", help="the judge (repeat for several; listed below)",
                     arg_help="an option of the judge before it, e.g. model=PATH (repeatable)")
    show_registries(parser, ("safety_subspaces.evaluate.judges", "JUDGES"))
    parser.add_argument("--batch-size", type=int, default=8, help="judge batch size (default 8)")
    parser.add_argument("--device", default="auto", help="the judge's device: auto, cpu, cuda, ... (default auto)")
    add_allow_pickle(parser)
    parser.add_argument("--trust-remote-code", action="store_true", help="accept judge models that declare custom code")


def run_rescore(args: argparse.Namespace) -> int:
    """Re-score with each judge given and print the rows it added."""
    from ..errors import UserError
    from ..evaluate import JUDGES, JudgeRuntime, make_judge
    from ..study.rescore import rescore
    from ..runtime import resolve_device

    chosen = specs(JUDGES, args.judge, "--judge")
    if not chosen:
        raise UserError("rescore needs a judge: --judge NAME")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    runtime = JudgeRuntime(device=resolve_device(args.device), batch_size=args.batch_size,
                           trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle, quiet=args.quiet)
    judges = [make_judge(spec, runtime) for spec in chosen]  # every judge's options checked before any judging
    rows = []
    for judge in judges:
        done = rescore(args.run_dir, judge)
        rows.extend(done.rows)
        if not args.json and not args.quiet:
            skipped = f", {done.skipped} evaluation job(s) already re-scored" if done.skipped else ""
            sys.stderr.write(f"judge {judge.name}: {len(done.runs)} run(s) judged{skipped}\n")
    if args.json:
        json.dump({"run_dir": str(args.run_dir), "rows": rows}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    for row in rows:
        value = "-" if row.get("value") is None else f"{row['value']:.4f}"
        where = " ".join(str(row[key]) for key in ("model", "variant", "subspace", "scheme", "fraction", "layer")
                         if row.get(key) not in (None, ""))
        print(f"{row['judge']:<13} {where:<40} {row['metric']:<24} {value} (n={row['n']}, invalid={row['invalid']})")
    return 0
