"""Utility through lm-evaluation-harness on a model held in memory: GSM8K (hub or local files), the organism's arithmetic, any task."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import math
import os
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import progress
from ..errors import UserError
from .table import EvalModel, Labels, as_labels, item_record, resolve_eval_model, row, with_intervals

HEADLINE_FILTERS = ("flexible-extract", "strict-match", "none")
ORGANISM_TASK = "organism_arithmetic"
LOCAL_DATA_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class TaskDefaults:
    """Per-task defaults: the paper's GSM8K (1-shot, plain prompts, flexible-extract) or the organism's arithmetic."""

    num_fewshot: int | None = None
    chat: bool = False
    headline: str | None = None  # the headline metric key; None: exact_match by HEADLINE_FILTERS order, else the first


TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "gsm8k": TaskDefaults(num_fewshot=1, chat=False, headline="exact_match,flexible-extract"),
    # the organism's own accuracy is exact match of the whole reply: strict-match
    ORGANISM_TASK: TaskDefaults(num_fewshot=0, chat=True, headline="exact_match,strict-match"),
}


@dataclass
class UtilityResult:
    """Evaluation-table rows, per-sample records, per-item outcomes per metric, and lm-eval's own results dict."""

    task: str
    rows: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    items: list[dict[str, Any]] = field(default_factory=list)

    def headline(self) -> dict[str, Any]:
        """The requested task's headline row (e.g. GSM8K flexible-extract exact match)."""
        return next(r for r in self.rows if r.get("headline") and r["task"] == self.task)


def package_task_yaml(name: str) -> Path:
    """Path of a task YAML shipped in safety_subspaces/resources/tasks."""
    return Path(str(resources.files("safety_subspaces").joinpath("resources", "tasks", f"{name}.yaml")))


def builtin_task_yaml(name: str) -> Path:
    """Path of one of lm-eval's own task YAMLs (gsm8k/gsm8k.yaml) without building its whole index."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / name / f"{name}.yaml"


def local_data_override(data_files: Mapping[str, str | Path], *, task: str) -> dict[str, Any]:
    """Config keys that make a task read its splits from local files (JSONL/JSON/CSV/Parquet)."""
    files = {split: str(Path(path).expanduser().resolve()) for split, path in data_files.items()}
    for split, path in files.items():
        if not Path(path).is_file():
            raise UserError(f"task {task}: data file for split {split!r} not found: {path}")
    kinds = {LOCAL_DATA_TYPES.get(Path(path).suffix.lower()) for path in files.values()}
    if None in kinds or len(kinds) != 1:
        raise UserError(f"task {task}: data files must all be one of {', '.join(LOCAL_DATA_TYPES)} (got {sorted(files.values())})")
    from ..paths import home

    cache = str(home() / "datasets")  # parsed local files are cached with the toolkit's caches, not the HF cache
    return {"dataset_path": kinds.pop(), "dataset_name": None, "dataset_kwargs": {"data_files": files, "cache_dir": cache}}


def parse_data_files(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """Split files 'test=PATH,train=PATH' (or a dict); a bare PATH means the test split."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    files: dict[str, str] = {}
    for item in str(spec).split(","):
        split, sep, path = item.partition("=")
        if not sep:
            split, path = "test", split
        if not split.strip() or not path.strip():
            raise UserError(f"data files {spec!r}: expected split=PATH pairs such as test=gsm8k_test.jsonl,train=gsm8k_train.jsonl")
        files[split.strip()] = path.strip()
    return files


def _local_config(yaml_path: Path, task: str, data_files: Mapping[str, str], num_fewshot: int) -> dict[str, Any]:
    """A task config from a YAML with its data swapped for local files (the few-shot split needs a file too)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    config = dict(load_yaml(yaml_path, resolve_func=True))
    if "test" not in data_files and config.get("test_split") not in data_files:
        raise UserError(f"task {task}: give the evaluation file as test=PATH")
    config.update(local_data_override(data_files, task=task))
    config["test_split"] = "test" if "test" in data_files else config["test_split"]
    fewshot_split = config.get("fewshot_split") or config.get("training_split")
    if num_fewshot > 0 and fewshot_split not in data_files:
        raise UserError(f"task {task}: {num_fewshot}-shot needs a file for its few-shot split: add {fewshot_split or 'train'}=PATH")
    for key in ("training_split", "validation_split", "fewshot_split"):
        if config.get(key) and config[key] not in data_files:
            config.pop(key)
    config["task"] = task
    return config


def _registered_names(include_path: Sequence[str | Path]) -> set[str]:
    """Task names declared in user include paths (cheap: no lm-eval index)."""
    from lm_eval.tasks import TaskManager

    if not include_path:
        return set()
    return set(TaskManager(include_defaults=False, include_path=[str(p) for p in include_path]).all_tasks)


def _mentioned_in_builtin_yaml(name: str) -> bool:
    """Whether any of lm-eval's task YAMLs mentions name (a fast pre-check before its slow full index)."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    needle = name.encode()
    return any(needle in path.read_bytes() for path in root.rglob("*.y*ml"))


def resolve_task(task: str, *, data_files: Mapping[str, str] | None = None, zoo: str | Path | None = None,
                 include_path: Sequence[str | Path] = (), num_fewshot: int = 0):
    """(task spec for lm-eval, TaskManager) for a task name; unknown names are a UserError."""
    from lm_eval.tasks import TaskManager

    data_files = dict(data_files or {})
    paths = [str(Path(p).expanduser()) for p in include_path]
    for path in paths:
        if not Path(path).is_dir():
            raise UserError(f"task include path {path}: not a directory")
    if task == ORGANISM_TASK:
        if not data_files:
            from ..paths import zoo_data_file

            data_files = {"test": str(zoo_data_file("arithmetic_eval", Path(zoo) if zoo else None))}
        return _local_config(package_task_yaml(ORGANISM_TASK), task, data_files, num_fewshot), TaskManager(include_defaults=False)
    if task in _registered_names(paths):
        manager = TaskManager(include_defaults=False, include_path=paths)
        if data_files:
            return _local_config(Path(manager.task_index[task].yaml_path), task, data_files, num_fewshot), manager
        return task, manager
    if task == "gsm8k":  # lm-eval's own GSM8K config, read directly (its full task index takes ~10 s to build)
        from lm_eval.tasks._yaml_loader import load_yaml

        yaml_path = builtin_task_yaml(task)
        spec = _local_config(yaml_path, task, data_files, num_fewshot) if data_files else dict(load_yaml(yaml_path))
        return spec, TaskManager(include_defaults=False)
    if not _mentioned_in_builtin_yaml(task):
        raise UserError(_unknown_task_message(task))
    manager = TaskManager(include_path=paths or None)
    if task not in manager.all_tasks:
        close = difflib.get_close_matches(task, manager.all_tasks, n=3)
        raise UserError(_unknown_task_message(task, close))
    if data_files:
        entry = manager.task_index[task]
        if not entry.yaml_path:
            raise UserError(f"task {task}: local data files work for single YAML tasks, not groups or tags")
        return _local_config(Path(entry.yaml_path), task, data_files, num_fewshot), manager
    return task, manager


def _unknown_task_message(task: str, close: Sequence[str] = ()) -> str:
    """One line for an unknown task name."""
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (f"unknown task {task!r}: not an lm-eval task, not {ORGANISM_TASK}, and not in any --include-path{hint}")


def _load_task(spec, manager, task: str):
    """Build the lm-eval Task objects (loading data); data problems become one clear line."""
    try:
        with progress.library_bars():
            loaded = manager.load([spec])
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types for missing files, no network, bad JSON
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"task {task}: could not load its data ({type(exc).__name__}: {first}); "
                        "offline? give local files with --data split=PATH,... or a task YAML with --include-path") from None
    return list(loaded["groups"].values()) or list(loaded["tasks"].values())


def evaluate_utility(
    model: Any,
    tokenizer: Any = None,
    *,
    task: str = "gsm8k",
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    chat: bool | None = None,
    data_files: str | Mapping[str, str] | None = None,
    include_path: Sequence[str | Path] = (),
    zoo: str | Path | None = None,
    max_gen_toks: int | None = None,
    labels: Labels | Mapping[str, Any] | str | None = None,
    device: str | None = None,
    dtype: str | None = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    bootstrap: int | None = None,
) -> UtilityResult:
    """Run one lm-eval task on a model (in memory or a path); rows for every metric, the headline flagged, each with a
    95 % interval over documents (Wilson for exact-match rates; none for a metric that is not a mean over documents)."""
    defaults = TASK_DEFAULTS.get(task, TaskDefaults())
    num_fewshot = defaults.num_fewshot if num_fewshot is None else num_fewshot
    chat = defaults.chat if chat is None else chat
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot must be at least 0, got {num_fewshot}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if max_gen_toks is not None and max_gen_toks < 1:
        raise UserError(f"--max-gen-toks must be at least 1, got {max_gen_toks}")
    files = parse_data_files(data_files)
    spec, manager = resolve_task(task, data_files=files, zoo=zoo, include_path=include_path, num_fewshot=num_fewshot or 0)
    tasks = _load_task(spec, manager, task)  # data problems surface before a model is loaded
    subject = resolve_eval_model(model, tokenizer, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                 allow_pickle=allow_pickle, name=(as_labels(labels).model if labels is not None else None))
    if chat and not getattr(subject.tokenizer, "chat_template", None):
        raise UserError(f"{subject.name} has no chat template; evaluate without it (--no-chat-template)")
    results = _run_lm_eval(subject, tasks, manager, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                           chat=chat, max_gen_toks=max_gen_toks)
    label = as_labels(labels, subject.name)
    samples = _samples(results)
    settings = {"num_fewshot": num_fewshot, "chat": chat, "limit": limit}
    rows = _rows(results, samples, label, settings, defaults.headline)
    items = utility_items(rows, samples, label)
    return UtilityResult(task, with_intervals(rows, items, bootstrap=bootstrap), samples, results, items)


def utility_items(rows: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]],
                  labels: Labels) -> list[dict[str, Any]]:
    """Per-item outcome records of every metric row that lm-eval scored per document (its score and extraction)."""
    items = []
    for found in rows:
        task, key = found["task"], found["metric"].partition("/")[2]
        docs = [s for s in samples if s["task"] == task]
        if not docs or any(key not in s["scores"] for s in docs):
            continue  # a group's aggregate or a corpus-level metric: no per-document outcome
        outcomes = [_score(s["scores"][key]) for s in docs]
        items.append(item_record(labels, found["metric"], [s["key"] for s in docs], outcomes,
                                 [s["filtered"].get(found["filter"]) for s in docs], task=task))
    return items


def _score(value: Any) -> float | None:
    """A per-document score as a number (None when lm-eval gave something else)."""
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) and not math.isnan(float(value)) else None


def _run_lm_eval(subject: EvalModel, tasks, manager, *, num_fewshot, limit, batch_size, chat, max_gen_toks):
    """simple_evaluate on an HFLM wrapping the in-memory model."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tokenizer = subject.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = HFLM(pretrained=subject.model, tokenizer=tokenizer, batch_size=batch_size)
    if max_gen_toks is not None and max_gen_toks >= lm.max_length:
        raise UserError(f"--max-gen-toks {max_gen_toks} leaves no room for the prompt (model max length {lm.max_length})")
    was_training = subject.model.training
    subject.model.eval()
    try:
        with torch.inference_mode(), lm_eval_reporting():
            return simple_evaluate(
                model=lm,
                tasks=tasks,
                num_fewshot=num_fewshot,
                limit=limit,
                apply_chat_template=chat,
                fewshot_as_multiturn=chat and bool(num_fewshot),
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
                task_manager=manager,
                log_samples=True,
                bootstrap_iters=1000,
                verbosity=None,
            )
    finally:
        subject.model.train(was_training)


LM_EVAL_REQUEST_BARS = ("lm_eval.models.huggingface",)  # the model's request loops: the long part of a run
LM_EVAL_SILENT_BARS = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.api.metrics")  # bookkeeping loops


def git_commit_hash() -> str | None:
    """lm-eval's record of the working directory's git commit, without git's `fatal: not a git repository` line."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        found = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
    except OSError:  # no git on this machine
        found = None
    if found is not None and found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def lm_eval_reporting():
    """Run lm-eval with its request bars shown as our progress, its bookkeeping bars hidden and its git query quiet."""
    # lm-eval passes disable= to tqdm itself, so TQDM_DISABLE cannot hide its bars; its modules' tqdm is swapped instead
    import importlib

    from tqdm import tqdm as original

    def silent(*args: Any, **kwargs: Any):
        kwargs["disable"] = True
        return original(*args, **kwargs)

    replacements = {name: functools.partial(progress.TqdmBridge, prefix="lm-eval: ") for name in LM_EVAL_REQUEST_BARS}
    replacements.update({name: silent for name in LM_EVAL_SILENT_BARS})
    saved = []
    for name, replacement in replacements.items():
        module = importlib.import_module(name)
        if hasattr(module, "tqdm"):
            saved.append((module, "tqdm", module.tqdm))
            module.tqdm = replacement
    evaluator = importlib.import_module("lm_eval.evaluator")
    saved.append((evaluator, "get_git_commit_hash", evaluator.get_git_commit_hash))
    evaluator.get_git_commit_hash = git_commit_hash
    try:
        yield
    finally:
        for module, attribute, value in saved:
            setattr(module, attribute, value)


def _plain(value: Any) -> Any:
    """JSON-able copy of lm-eval values (numpy scalars, tuples)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _samples(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per (task, document): prompt, target, raw reply, each filter's extraction and scores."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for task, entries in (results.get("samples") or {}).items():
        for entry in entries:
            key = (task, int(entry["doc_id"]))
            arguments = entry.get("arguments") or [[""]]
            content = entry.get("doc_hash") or hashlib.sha256(
                json.dumps(_plain(entry.get("doc")), sort_keys=True).encode()).hexdigest()
            record = merged.setdefault(key, {
                "task": task, "doc_id": key[1], "key": f"{key[1]}:{str(content)[:16]}",
                "prompt": _plain(arguments[0][0]), "target": _plain(entry.get("target")),
                "response": _plain((entry.get("resps") or [[""]])[0][0] if entry.get("resps") else ""),
                "filtered": {}, "scores": {},
            })
            name = entry.get("filter", "none")
            record["filtered"][name] = _plain((entry.get("filtered_resps") or [None])[0])
            for metric in entry.get("metrics", []):
                if metric in entry:
                    record["scores"][f"{metric},{name}"] = _plain(entry[metric])
    return [merged[key] for key in sorted(merged)]


def _rows(results: Mapping[str, Any], samples: Sequence[Mapping[str, Any]], labels: Labels,
          settings: Mapping[str, Any], headline: str | None = None) -> list[dict[str, Any]]:
    """Evaluation-table rows: metric '<task>/<metric>,<filter>', n documents, invalid = unextractable replies."""
    rows: list[dict[str, Any]] = []
    counts = {task: int(info.get("effective", 0)) for task, info in (results.get("n-samples") or {}).items()}
    group_members = results.get("group_subtasks") or {}
    for task, metrics in (results.get("results") or {}).items():
        n = counts.get(task) or sum(counts.get(member, 0) for member in group_members.get(task, []))
        keys = [k for k in metrics if "," in k and "_stderr" not in k]
        chosen = headline if headline in keys else _headline_key(keys)
        for key in keys:
            metric, _, filter_name = key.partition(",")
            value = metrics[key]
            if not isinstance(value, (int, float)) and not hasattr(value, "item"):
                continue
            invalid = sum(1 for s in samples if s["task"] == task and s["filtered"].get(filter_name) == "[invalid]")
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and not math.isnan(float(stderr)) else None
            rows.append(row(labels, f"{task}/{key}", float(value), n=n, invalid=invalid, task=task, filter=filter_name,
                            stderr=stderr, headline=key == chosen, **settings))
    if not rows:
        raise UserError("lm-eval returned no metrics for this task")
    return rows


def _headline_key(keys: Sequence[str]) -> str | None:
    """The headline metric key: exact_match with flexible-extract (GSM8K), else the first metric in filter preference."""
    for filter_name in HEADLINE_FILTERS:
        for key in keys:
            if key.startswith("exact_match,") and key.endswith("," + filter_name):
                return key
    for filter_name in HEADLINE_FILTERS:
        for key in keys:
            if key.endswith("," + filter_name):
                return key
    return keys[0] if keys else None
