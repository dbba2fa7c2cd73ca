"""`safety-subspaces evaluate utility|harm`: lm-eval utility and judged harmfulness of one model."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..evaluate.judges import DEFAULT_JUDGE
from ._help import add_allow_pickle, add_command, add_group, add_spec_options, show_registries

DEFAULT_OUT_ROOT = Path("runs") / "eval"  # like `run`'s runs/<study>: under the working directory, gitignored here

UTILITY_EXAMPLES = """\
  # the paper's setting: GSM8K test, 1-shot, flexible-extract exact match (needs the hub)
  safety-subspaces evaluate utility --model meta-llama/Llama-3.2-1B-Instruct --out runs/eval/gsm8k
  # offline, GSM8K from local files (lm-eval's GSM8K config with the data swapped)
  safety-subspaces evaluate utility --model M --task gsm8k --data test=gsm8k/test.jsonl,train=gsm8k/train.jsonl
  # the organism's held-out arithmetic (0-shot, chat template), a quick look at 50 items
  safety-subspaces evaluate utility --model ZOO/useful --task organism_arithmetic --zoo ZOO --limit 50
  # any lm-eval task, or your own YAML tasks
  safety-subspaces evaluate utility --model M --task mmlu --num-fewshot 5
  safety-subspaces evaluate utility --model M --task my_task --include-path my_tasks/
"""

HARM_EXAMPLES = """\
  # AdvBench judged by an LLM on any OpenAI-compatible endpoint (key from $OPENAI_API_KEY)
  safety-subspaces evaluate harm --model M --prompts harmful_behaviors.csv --judge rubric \\
      --judge-arg endpoint=https://api.openai.com/v1 --judge-arg model=gpt-4o --out runs/eval/harm
  # a local vLLM / llama.cpp server (set the key variable to any value if it needs none), patient and persistent
  JUDGE_KEY=EMPTY safety-subspaces evaluate harm --model M --prompts advbench --judge rubric \\
      --judge-arg endpoint=http://127.0.0.1:8000/v1 --judge-arg model=Qwen/Qwen2.5-7B-Instruct \\
      --judge-arg key_env=JUDGE_KEY --judge-arg timeout=120 --judge-arg retries=8
  # offline: refusal phrases (weak), or a local classifier model
  safety-subspaces evaluate harm --model M --prompts advbench.csv --judge refusal --limit 100
  safety-subspaces evaluate harm --model M --prompts advbench.csv --judge classifier --judge-arg model=path/to/guard
  # the organism, harmful and benign (over-refusal) held-out prompts
  safety-subspaces evaluate harm --model ZOO/harmful --prompts organism:harmful_eval --zoo ZOO --judge organism
  safety-subspaces evaluate harm --model ZOO/aligned --prompts organism:benign_eval --zoo ZOO --judge organism --benign
  # the classifier judges of current papers (local weights; on a GPU they load in bfloat16)
  safety-subspaces evaluate harm --model M --prompts advbench --judge strongreject --device cuda
  safety-subspaces evaluate harm --model M --prompts xstest_safe --judge wildguard --benign
  # rerun the same command after an interruption: finished generations and judgments are reused
  # judge the stored replies again with another judge, without generating: safety-subspaces rescore OUT --judge NAME
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add `evaluate` with its `utility` and `harm` subcommands."""
    parser = subparsers.add_parser("evaluate", help="utility (lm-eval) and harmfulness (judged generations) of a model",
                                   description="Evaluate a model: `evaluate utility` or `evaluate harm`.")
    commands = add_group(parser, dest="evaluate_command")

    utility = add_command(commands, common, "utility", "Utility through lm-evaluation-harness (default: GSM8K 1-shot).",
                          UTILITY_EXAMPLES, handler=run_utility)
    _model_options(utility)
    utility.add_argument("--task", default="gsm8k", help="lm-eval task, organism_arithmetic, or one of --include-path (default gsm8k)")
    utility.add_argument("--num-fewshot", type=int, help="few-shot examples (default: 1 for gsm8k, the task's own otherwise)")
    utility.add_argument("--limit", type=int, help="evaluate only the first N items")
    utility.add_argument("--data", metavar="SPLIT=PATH,...", help="local data files for the task, e.g. test=t.jsonl,train=tr.jsonl")
    utility.add_argument("--include-path", action="append", default=[], metavar="DIR", help="directory of your own lm-eval task YAMLs")
    utility.add_argument("--zoo", type=Path, help="organism zoo directory (default: the built zoo)")
    chat = utility.add_mutually_exclusive_group()
    chat.add_argument("--chat-template", dest="chat", action="store_true", default=None,
                      help="wrap prompts in the model's chat template (default for organism_arithmetic)")
    chat.add_argument("--no-chat-template", dest="chat", action="store_false", help="plain prompts (default for gsm8k)")
    utility.add_argument("--max-gen-toks", type=int, help="cap on generated tokens (default: the task's)")

    harm = add_command(commands, common, "harm", "Harmfulness: greedy replies to prompts, judged by a registered judge on its own scale.",
                       HARM_EXAMPLES, handler=run_harm)
    _model_options(harm)
    harm.add_argument("--prompts", default="advbench",
                      help="advbench (hub), an AdvBench CSV (goal,target), any JSONL/JSON/CSV/Parquet/TXT, or organism:NAME")
    harm.add_argument("--fields", help="field mapping for a prompt file, e.g. prompt=question")
    harm.add_argument("--limit", type=int, help="only the first N prompts")
    harm.add_argument("--zoo", type=Path, help="organism zoo for organism:NAME prompts (default: the built zoo)")
    add_spec_options(harm, "--judge", metavar="NAME", default=DEFAULT_JUDGE,
                     help=f"the judge (default {DEFAULT_JUDGE}; the judges and their options are listed below)",
                     arg_help="an option of the judge, e.g. model=gpt-4o-mini (repeatable); device, batch size, "
                              "--trust-remote-code and --allow-pickle come from this command")
    show_registries(harm, ("safety_subspaces.evaluate.judges", "JUDGES"))
    harm.add_argument("--raw-prompts", action="store_true", help="prompts as they are, without the chat template (reference code)")
    harm.add_argument("--max-new-tokens", type=int, default=512, help="generated tokens per reply (default 512)")
    harm.add_argument("--benign", action="store_true", help="the prompts are benign: report the over-refusal rate")


def _model_options(parser: argparse.ArgumentParser) -> None:
    """Options naming and loading the evaluated model, and the output directory."""
    parser.add_argument("--model", required=True, help="model directory or hub id")
    parser.add_argument("--name", help="model name in the result rows (default: --model)")
    parser.add_argument("--out", type=Path, help="output directory (default: runs/eval/<kind>-<model>-<hash>)")
    parser.add_argument("--batch-size", type=int, default=8, help="generation batch size (default 8)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default auto)")
    add_allow_pickle(parser)
    parser.add_argument("--trust-remote-code", action="store_true", help="accept models that declare custom code")



def _device(args: argparse.Namespace) -> str:
    """The device to run on."""
    from ..runtime import resolve_device

    return resolve_device(args.device)


def _out_dir(kind: str, args: argparse.Namespace, keys: list[str]) -> Path:
    """--out, or runs/eval/<kind>-<model>-<hash of the options that define the run> (said on stderr)."""
    from ..files import config_digest
    from ..progress import info

    if args.out is not None:
        return args.out
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(args.model)).name).strip("-") or "model"
    out = DEFAULT_OUT_ROOT / f"{kind}-{slug}-{config_digest({k: str(getattr(args, k)) for k in keys})}"
    info(f"output directory: {out} (choose another with --out)")
    return out


def run_utility(args: argparse.Namespace) -> int:
    """Evaluate utility with lm-eval and write results.csv and samples.jsonl."""
    from .. import files, layout
    from ..evaluate import evaluate_utility, write_outputs
    from ..rundir import check_run_dir, config_document

    keys = ["model", "task", "num_fewshot", "limit", "data", "include_path", "zoo", "chat", "max_gen_toks"]
    out = _out_dir("utility", args, keys)
    config = {key: (str(getattr(args, key)) if getattr(args, key) is not None else None) for key in keys}
    with files.output_lock(out):
        check_run_dir(out, config, kind="evaluate-utility")
        result = evaluate_utility(
            args.model, task=args.task, num_fewshot=args.num_fewshot, limit=args.limit, batch_size=args.batch_size,
            chat=args.chat, data_files=args.data, include_path=args.include_path, zoo=args.zoo,
            max_gen_toks=args.max_gen_toks, labels={"model": args.name or args.model}, device=_device(args),
            dtype=args.dtype, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
        )
        with files.staged_dir(out) as stage:
            write_outputs(stage, result.rows, result.samples, result.items)
            files.write_yaml(stage / layout.CONFIG, config_document(config, kind="evaluate-utility"))
    _print(args, result.rows, out, ["metric", "value", "ci_low", "ci_high", "stderr", "n", "invalid", "headline"])
    return 0


def run_harm(args: argparse.Namespace) -> int:
    """Generate, judge, and write results.csv, samples.jsonl and the journals."""
    from ..evaluate import JUDGES, JudgeRuntime, evaluate_harm, load_harm_prompts, make_judge
    from ._help import specs

    prompts = load_harm_prompts(args.prompts, limit=args.limit, zoo=args.zoo, fields=args.fields)
    chosen = specs(JUDGES, args.judge, "--judge", DEFAULT_JUDGE)[-1]  # like any single option: the last one given
    device = _device(args)
    runtime = JudgeRuntime(device=device, batch_size=args.batch_size, trust_remote_code=args.trust_remote_code,
                           allow_pickle=args.allow_pickle, quiet=args.quiet)
    judge = make_judge(chosen, runtime)
    keys = ["model", "prompts", "fields", "limit", "zoo", "judge", "raw_prompts", "max_new_tokens", "benign"]
    out = _out_dir("harm", args, keys)
    result = evaluate_harm(
        args.model, prompts=prompts, judge=judge, out_dir=out, chat=not args.raw_prompts,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, benign=args.benign,
        prompt_set=str(args.prompts), labels={"model": args.name or args.model}, device=device, dtype=args.dtype,
        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
    )
    _print(args, result.rows, out, ["metric", "value", "ci_low", "ci_high", "n", "invalid", "judge", "prompts"])
    return 0


def _print(args: argparse.Namespace, rows: list[dict], out: Path, columns: list[str]) -> None:
    """Rows as JSON (--json) or a table, and where the files are."""
    if args.json:
        json.dump({"out": str(out), "rows": rows}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    from rich.table import Table

    from ..progress import stdout_console

    table = Table(title=f"{rows[0]['model']}")
    for column in columns:
        numeric = column in ("value", "ci_low", "ci_high", "stderr", "n", "invalid")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")  # fold: never hide a metric name
    for item in rows:
        table.add_row(*[_cell(item.get(column)) for column in columns])
    stdout_console().print(table)
    print(f"results: {out / 'results.csv'} (95 % intervals over items: ci_low, ci_high), per-sample records: "
          f"{out / 'samples.jsonl'}, per-item outcomes: {out / 'items.csv'}")


def _cell(value) -> str:
    """A table cell."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
