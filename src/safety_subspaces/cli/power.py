"""`safety-subspaces power`: the smallest difference a study of n items can detect, before spending GPU hours."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ._help import add_command

EXAMPLES = """\
  safety-subspaces power --metric harm --n 520 --baseline 1.55 --effect 0.1     # worst-case SD of the 1-5 scale
  safety-subspaces power --metric utility --n 1319 --baseline 0.5
  safety-subspaces power --metric harm --n 520 --pilot runs/organism          # SD of FT - aligned in a pilot run
  safety-subspaces power --metric harm --n 520 --pilot runs/organism \\
      --a model=harmful,variant=projected,subspace=top_k,scheme=parallel,fraction=0.25 \\
      --b model=harmful,variant=projected,subspace=random,scheme=parallel,fraction=0.25
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add the power command."""
    parser = add_command(subparsers, common, "power",
                         "The minimum detectable paired difference at n items (and the power for an effect).",
                         EXAMPLES, handler=run)
    parser.add_argument("--metric", required=True, help="harm (score 1-5), utility (accuracy) or benign (over-refusal)")
    parser.add_argument("--n", type=int, required=True, help="items every variant is scored on (e.g. 520 AdvBench prompts)")
    parser.add_argument("--baseline", type=float, help="the expected mean of the metric (sets the worst-case SD)")
    parser.add_argument("--effect", type=float, help="a difference to report the power for, and the items it needs")
    parser.add_argument("--scale", help="LOW,HIGH range of one item's outcome (default: the metric's)")
    parser.add_argument("--pilot", type=Path, help="a study run directory: use the SD of per-item differences there")
    parser.add_argument("--a", help="with --pilot: the first variant, KEY=VALUE,... (default: the first fine-tune; "
                        "judge=NAME picks a judge where several scored the run, default the study's first)")
    parser.add_argument("--b", help="with --pilot: the second variant (default: the reference model)")
    parser.add_argument("--alpha", type=float, default=0.05, help="two-sided test level (default 0.05)")
    parser.add_argument("--power", type=float, default=0.8, help="power to size for (default 0.8)")


def run(args: argparse.Namespace) -> int:
    """Size a comparison."""
    from ..errors import UserError
    from ..study import power

    if args.pilot is not None:
        sd, source = power.pilot_sd(args.pilot, args.metric, power.parse_selector(args.a, "--a"),
                                       power.parse_selector(args.b, "--b"))
    else:
        if args.a or args.b:
            raise UserError("--a and --b need --pilot RUN_DIR")
        if args.baseline is None:
            raise UserError("--baseline: give the metric's expected mean (or --pilot RUN_DIR)")
        scale = None
        if args.scale:
            try:
                scale = tuple(float(v) for v in args.scale.split(","))
            except ValueError:
                raise UserError(f"--scale: give LOW,HIGH numbers, got {args.scale!r}") from None
            if len(scale) != 2:
                raise UserError(f"--scale: give LOW,HIGH numbers, got {args.scale!r}")
        sd = power.worst_case_sd(args.metric, args.baseline, args.effect or 0.0, scale)
        source = power.WORST_CASE
    plan = power.plan_power(args.metric, args.n, sd, source, effect=args.effect, alpha=args.alpha, power=args.power)
    if args.json:
        json.dump(asdict(plan), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(plan.lines()))
    return 0
