"""`safety-subspaces run`: one config, one command, the whole paper; resumable, distributed, reported."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._help import add_allow_pickle, add_command, add_spec_options, at_least, show_registries

EXAMPLES = """\
  safety-subspaces run                                  # the built-in organism study (builds the zoo if absent)
  safety-subspaces run studies/qwen2.5-1.5b.yaml --out runs/qwen1.5b
  safety-subspaces run studies/llama-3.2-1b.yaml --executor ray --ray-address auto
  safety-subspaces run my-study.yaml --check            # validate the config and its local inputs, run nothing
  # interrupted? run the same command again: finished jobs are kept, the rest run.
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add the run command."""
    parser = add_command(subparsers, common, "run",
                         "Run a study (default: the built-in organism study) and write its report.", EXAMPLES, handler=run)
    parser.add_argument("study", nargs="?", type=Path, help="study YAML (default: the built-in organism study)")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<study name>)")
    parser.add_argument("--force", action="store_true",
                        help="if the run directory holds a different study, start a new one beside it (never mixes results)")
    add_spec_options(parser, "--executor", metavar="NAME", help="override the config's executor (listed below)",
                     arg_help="an option of the --executor before it (repeatable)")
    parser.add_argument("--ray-address", help="connect to this Ray cluster (the ray executor's address option)")
    parser.add_argument("--workers", type=at_least(1), help="number of Ray workers (the ray executor's workers option)")
    parser.add_argument("--random-seeds", type=at_least(1), metavar="S",
                        help="independent frames of every random subspace kind (the config's random_seeds)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: the config's, else auto)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and everything `run` checks first (local models and their compatibility, "
                             "local prompt sets against n, data files, judge settings), then exit without running a job")
    add_allow_pickle(parser)
    parser.add_argument("--no-report", action="store_true", help="skip writing the report")
    show_registries(parser, ("safety_subspaces.study.executors", "EXECUTORS"))


def run(args: argparse.Namespace) -> int:
    """Validate and run a study."""
    from ..study.config import load_study, study_document
    from ..study.inputs import check_inputs
    from ..study.runner import choose_run_dir, default_study_path, run_study

    path = args.study or default_study_path()
    study = load_study(path)
    study.executor = executor_override(study.executor, args)
    study.allow_pickle = study.allow_pickle or args.allow_pickle
    if args.random_seeds is not None:
        study.random_seeds = args.random_seeds
    out = args.out or Path("runs") / study.name
    if args.check:
        notes = check_inputs(study, offline=True).notes
        choose_run_dir(out, None, force=args.force)
        if args.json:
            json.dump(study_document(study), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            from ..study.power import study_power_lines

            print(f"{path}: valid study {study.name!r}")
            for note in notes:
                print(f"  not checked: {note}")  # what only `run` can fetch
            for line in study_power_lines(study):
                print(f"  power: {line}")
        return 0
    result = run_study(study, out, force=args.force, report=not args.no_report, device=args.device,
                       threads=args.threads)
    summary = {"run_dir": str(result.run_dir), "jobs": result.planned, "skipped": result.skipped,
               "completed": result.completed, "failed": len(result.failed), "seconds": round(result.seconds, 1),
               "report": str(result.report) if result.report else None}
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"study {study.name}: {result.completed} jobs run, {result.skipped} already done, "
              f"{len(result.failed)} failed, {result.seconds:.0f}s")
        for label, error in result.failed:
            print(f"  failed: {label}: {error}")
        if result.report:
            print(f"report: {result.report}")
    return 1 if result.failed else 0


def executor_override(configured, args: argparse.Namespace):
    """The study's executor with the command line's --executor/--executor-arg, --ray-address and --workers applied."""
    from ..registry import Spec
    from ..study.executors import EXECUTORS, check_executor
    from ._help import specs

    spec = specs(EXECUTORS, args.executor, "--executor")[-1] if args.executor else None
    if spec is None:
        spec = Spec("ray", dict(configured.options)) if args.ray_address and configured.name != "ray" else configured
    elif spec.name == configured.name:
        spec = configured.with_options(**spec.options)
    extra = {key: value for key, value in (("address", args.ray_address), ("workers", args.workers)) if value}
    spec = spec.with_options(**extra) if extra else spec
    spec = Spec(spec.name, EXECUTORS.options(spec.name, spec.options, f"--executor {spec.name}", partial=True))
    check_executor(spec, f"--executor {spec.name}")
    return spec
