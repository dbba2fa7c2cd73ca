"""Harmfulness: greedy replies to prompts, judged on each judge's scale, with its metrics; generations and judgments
journaled so reruns resume (and so stored replies can be judged again without the generator)."""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import files, layout, progress
from ..errors import UserError
from .journal import Journal
from .judges import Judge, Judgment, evaluated_measures, over_refusal
from .table import (EvalModel, Labels, as_labels, item_record, resolve_eval_model, row, run_identity, with_intervals,
                    write_outputs)

RUN_KIND = "evaluate-harm"
GENERATIONS, JUDGMENTS = layout.GENERATIONS, layout.JUDGMENTS


@dataclass
class HarmResult:
    """Evaluation-table rows, one record per prompt (prompt, response, score, reason) and per-item outcomes per metric."""

    rows: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    out_dir: Path | None = None
    items: list[dict[str, Any]] | None = None

    def metric(self, name: str) -> float | None:
        """The value of one metric row."""
        for item in self.rows:
            if item["metric"] == name:
                return item["value"]
        raise KeyError(f"no metric {name!r}; have {[r['metric'] for r in self.rows]}")


def load_harm_prompts(source: str | Path, *, limit: int | None = None, zoo: str | Path | None = None,
                      fields: str | Mapping[str, str] | None = None) -> list[str]:
    """Prompts from 'advbench' (hub), an AdvBench-style CSV, any local file, or 'organism:NAME' (of --zoo if given)."""
    from ..data import in_zoo, load_prompts

    return load_prompts(in_zoo(source, zoo), fields=fields, limit=limit)  # load_records checks limit


def sample_key(index: int, prompt: str) -> str:
    """A record's key: its position and a hash of its prompt."""
    return f"{index}:{hashlib.sha256(prompt.encode()).hexdigest()[:16]}"


def judge_digest(identity: Mapping[str, Any]) -> str:
    """A short hash of a judge's identity (which judgments a rerun may reuse)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def generate_replies(subject: EvalModel, prompts: Sequence[str], *, chat: bool = True, max_new_tokens: int = 512,
                     batch_size: int = 8, journal: Journal | None = None) -> list[str]:
    """Greedy replies in prompt order; each batch is journaled as it finishes and journaled replies are reused."""
    from ..generate import batches_by_length, format_prompts, generate

    keys = [sample_key(i, p) for i, p in enumerate(prompts)]
    done = {r.get("key"): r.get("response") for r in journal.read()} if journal else {}
    replies: list[str | None] = [done.get(key) if isinstance(done.get(key), str) else None for key in keys]
    missing = [i for i, reply in enumerate(replies) if reply is None]
    texts = format_prompts(subject.tokenizer, [prompts[i] for i in missing], chat=chat, model_name=subject.name)
    with progress.bar("generating", len(missing)) as update:
        for batch in batches_by_length(subject.tokenizer, texts, batch_size):
            indices = [missing[j] for j in batch]
            outputs = generate(subject.model, subject.tokenizer, [prompts[i] for i in indices], chat=chat,
                               max_new_tokens=max_new_tokens, batch_size=len(indices), model_name=subject.name)
            for index, output in zip(indices, outputs):
                replies[index] = output
                if journal:
                    journal.append({"key": keys[index], "index": index, "prompt": prompts[index], "response": output})
            update(len(indices))
    return [reply or "" for reply in replies]


def judge_replies(judge: Judge, prompts: Sequence[str], replies: Sequence[str], *,
                  journal: Journal | None = None) -> list[Judgment]:
    """A judgment per reply; journaled judgments by the same judge of the same reply are reused, new ones journaled as they arrive."""
    digest = judge_digest(judge.identity())
    keys = [sample_key(i, p) for i, p in enumerate(prompts)]
    position = {key: i for i, key in enumerate(keys)}
    results: list[Judgment | None] = [None] * len(prompts)
    for record in journal.read() if journal else []:
        index = position.get(record.get("key"))
        if index is not None and record.get("judge") == digest and record.get("response") == replies[index]:
            results[index] = Judgment.from_record(record)
    missing = [i for i, result in enumerate(results) if result is None]

    with progress.bar("judging", len(missing)) as update:
        def keep(offset: int, judgment: Judgment) -> None:
            index = missing[offset]
            results[index] = judgment
            if journal:
                journal.append({"key": keys[index], "index": index, "prompt": prompts[index], "response": replies[index],
                                **judgment.as_record(), "judge": digest, "judge_name": judge.name})
            update(1)

        try:
            if missing:  # nothing left: the judge is not called (a judge that loads a model never loads it)
                judge.judge_many([(prompts[i], replies[i]) for i in missing], keep)
        except UserError as exc:
            finished = sum(result is not None for result in results)
            where = f" in {journal.path}" if journal else ""
            raise UserError(f"{exc}; {finished} of {len(results)} judgments are saved{where}; "
                            "rerun the same command to continue") from None
    return [result for result in results if result is not None]


def harm_metrics(scores: Sequence[int | None], *, benign: bool = False) -> dict[str, float | None]:
    """The paper's metrics of 1-5 scores: mean of valid scores, share scored 5, refusal rate (score 1); on benign
    prompts the over-refusal rate."""
    judgments = [Judgment(score, "") for score in scores]
    metrics = over_refusal(Judge(), judgments) if benign else Judge().metrics(judgments)
    return {metric.metric: metric.value for metric in metrics}


def harm_items(judge: Judge, judgments: Sequence[Judgment], texts: Sequence[str], labels: Labels, /, *,
               benign: bool = False, **extra: Any) -> list[dict[str, Any]]:
    """Per-item outcome records of a judge's metrics, keyed like the generations (position and prompt hash), each
    item's score as its answer; extra fields (the judge, the prompt set) label every record."""
    keys = [sample_key(i, p) for i, p in enumerate(texts)]
    scores = [j.score for j in judgments]
    return [item_record(labels, measure.name, keys, [measure.read(j) for j in judgments], scores,
                        proportion=measure.proportion, **extra)
            for measure in evaluated_measures(judge, benign)]


def harm_rows(judge: Judge, judgments: Sequence[Judgment], labels: Labels, /, *, benign: bool = False,
              items: Sequence[dict[str, Any]] = (), bootstrap: int | None = None, **extra: Any) -> list[dict[str, Any]]:
    """Evaluation-table rows of a judge's metrics (n prompts, invalid = judgments without a score), each naming the
    judge and its identity digest, labelled for tables and figures, the judge's headline metric flagged, and with
    its 95 % interval from the items' outcomes when given."""
    metrics = over_refusal(judge, judgments) if benign else judge.metrics(judgments)
    headline = metrics[0].metric if benign else judge.headline
    digest = judge_digest(judge.identity())
    rows = [row(labels, metric.metric, metric.value, n=len(judgments), invalid=metric.invalid, label=metric.label,
                headline=metric.metric == headline, judge=judge.name, judge_id=digest, **extra)
            for metric in metrics]
    return with_intervals(rows, items, bootstrap=bootstrap)


def _open_run(out_dir: Path, config: Mapping[str, Any], labels: Labels) -> None:
    """Check an output directory holds this run or nothing, and record the run's config (and, outside the identity,
    the labels its rows carry, which re-scoring gives the new judge's rows)."""
    from ..rundir import check_run_dir, config_document

    if not check_run_dir(out_dir, config, kind=RUN_KIND):
        files.make_dirs(out_dir)
        files.write_yaml(out_dir / layout.CONFIG, config_document(config, kind=RUN_KIND, labels=asdict(labels)))


def others_judged(found: Sequence[Mapping[str, Any]], judge: Judge, digest: str) -> list[Mapping[str, Any]]:
    """The rows (or samples) of other judges: those with another judge_id (one without a judge_id, written before
    judges had one, is this judge's when it names this judge)."""
    def mine(item: Mapping[str, Any]) -> bool:
        own = item.get("judge_id") or None
        return own == digest if own else item.get("judge") == judge.name

    return [item for item in found if not mine(item)]


def write_judged(directory: Path, judge: Judge, rows: Sequence[Mapping[str, Any]],
                 samples: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> None:
    """results.csv, samples.jsonl and items.csv with this judge's rows, samples and item outcomes replacing its
    earlier ones, other judges' kept (the judge is part of each row's identity)."""
    from ..tables import ITEMS
    from .table import ITEM_RECORDS, RESULTS, SAMPLES, item_lines

    digest = judge_digest(judge.identity())

    def kept(name: str) -> list[Mapping[str, Any]]:
        path = directory / name
        return others_judged(files.read_csv(path), judge, digest) if path.is_file() else []

    other_items = kept(ITEM_RECORDS)
    write_outputs(directory, [*kept(RESULTS), *rows], [*others_judged(Journal(directory / SAMPLES).read(), judge,
                                                                       digest), *samples])
    files.write_csv(directory / ITEM_RECORDS, [*other_items, *item_lines(items)], list(ITEMS.columns))


def judge_stored(judge: Judge, prompts: Sequence[str], replies: Sequence[str], labels: Labels, *,
                 benign: bool = False, prompt_set: str = "prompts", directory: Path | None = None,
                 bootstrap: int | None = None) -> HarmResult:
    """Judge replies already generated (journaled in directory, reused on a rerun), summarise them as rows (each
    metric with its 95 % interval over prompts: Wilson for rates, a percentile bootstrap of `bootstrap` resamples
    for a mean score) and per-item outcomes, and write this judge's beside other judges' (evaluate and rescore both
    end here)."""
    judgments = judge_replies(judge, prompts, replies, journal=Journal(directory / JUDGMENTS) if directory else None)
    digest = judge_digest(judge.identity())
    samples = [{"index": i, "prompt": p, "response": r, **j.as_record(), "judge": judge.name, "judge_id": digest}
               for i, (p, r, j) in enumerate(zip(prompts, replies, judgments))]
    who = {"prompts": prompt_set, "judge": judge.name, "judge_id": digest}
    items = harm_items(judge, judgments, prompts, labels, benign=benign, **who)
    rows = harm_rows(judge, judgments, labels, benign=benign, items=items, bootstrap=bootstrap, prompts=prompt_set)
    if directory is not None:
        write_judged(directory, judge, rows, samples, items)
    return HarmResult(rows, samples, directory, items)


def evaluate_harm(
    model: Any,
    tokenizer: Any = None,
    *,
    prompts: Sequence[str],
    judge: Judge,
    out_dir: str | Path | None = None,
    chat: bool = True,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    benign: bool = False,
    prompt_set: str = "prompts",
    labels: Labels | Mapping[str, Any] | str | None = None,
    device: str | None = None,
    dtype: str | None = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    bootstrap: int | None = None,
) -> HarmResult:
    """Generate greedy replies, judge them and summarise (each metric with its 95 % interval over prompts: Wilson for
    rates, a percentile bootstrap of `bootstrap` resamples for the mean score); with out_dir, everything is saved
    (items.csv: per-prompt outcomes) and a rerun resumes."""
    from ..data import fingerprint
    from ..generate import format_prompts

    prompts = [str(p) for p in prompts]
    if not prompts:
        raise UserError("no prompts to evaluate")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if benign:
        over_refusal(judge, [])  # a judge that does not report refusal is refused before anything is generated
    if getattr(judge, "needs_context", False):
        raise UserError(f"judge {judge.name}: its items need a context, which a prompt set does not carry "
                        "(see the judge's template option)")
    subject = resolve_eval_model(model, tokenizer, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                 allow_pickle=allow_pickle, name=(as_labels(labels).model if labels is not None else None))
    format_prompts(subject.tokenizer, prompts[:1], chat=chat, model_name=subject.name)  # fails early without a template
    label = as_labels(labels, subject.name)
    config = {
        "model": run_identity(subject, label), "prompt_set": prompt_set, "prompts": fingerprint([{"p": p} for p in prompts]),
        "n": len(prompts), "chat": chat, "max_new_tokens": max_new_tokens, "judge": judge.identity(), "benign": benign,
    }
    directory = Path(out_dir).expanduser() if out_dir is not None else None
    with files.output_lock(directory) if directory is not None else nullcontext():
        if directory is not None:
            _open_run(directory, config, label)
        replies = generate_replies(subject, prompts, chat=chat, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   journal=Journal(directory / GENERATIONS) if directory else None)
        return judge_stored(judge, prompts, replies, label, benign=benign, prompt_set=prompt_set, directory=directory,
                            bootstrap=bootstrap)
