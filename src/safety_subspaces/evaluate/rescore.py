"""Re-scoring: judge the stored replies of a finished harm evaluation (an `evaluate harm` run, or every harm and
over-refusal evaluation of a study) with another judge, without loading or calling the model that wrote them.

The new judge's rows join the old ones: in the run's results.csv and samples.jsonl (the judge is part of each row's
identity), and in a study's store as one `rescore` job per evaluation job, from which the study's CSVs and report
are written again. Judgments are journaled as they arrive (judgments.jsonl, keyed by the judge's identity), so an
interrupted re-scoring resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import files, layout
from ..errors import UserError
from .harm import RUN_KIND, HarmResult, judge_digest, judge_stored, sample_key
from .journal import Journal
from .judges import Judge, over_refusal
from .table import Labels, as_labels

RESCORE_KIND = "rescore"  # the store's job kind of a re-scoring's rows
HARM_GROUPS = ("harm", "benign")  # a study's metric groups judged on stored replies (samples/JOB/GROUP/)


@dataclass
class Rescored:
    """What a re-scoring added: the new judge's rows, the run directories it judged, and those already done."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    skipped: int = 0


@dataclass(frozen=True)
class StoredRun:
    """A harm evaluation's stored replies, with what its rows need: labels, prompt set, benign or not."""

    directory: Path
    prompts: list[str]
    replies: list[str]
    labels: Labels
    prompt_set: str
    benign: bool


def stored_labels(directory: Path, document: Mapping[str, Any]) -> Labels:
    """The labels the run's rows carry: recorded in config.yaml, else those of its results.csv rows."""
    recorded = document.get("labels")
    if isinstance(recorded, Mapping):
        return as_labels({key: value for key, value in recorded.items() if key in Labels.__dataclass_fields__})
    results = directory / layout.RESULTS
    if results.is_file():
        found = files.read_csv(results)
        if found:
            first = found[0]
            fraction = first.get("fraction") or None
            return Labels(model=first.get("model") or "model", variant=first.get("variant") or "",
                          subspace=first.get("subspace") or "", scheme=first.get("scheme") or "",
                          fraction=float(fraction) if fraction is not None else None)
    raise UserError(f"{directory}: neither {layout.CONFIG} nor {layout.RESULTS} says which model the replies are "
                    "from; finish the run with its evaluate harm command first")


def read_stored(directory: Path) -> StoredRun:
    """The replies of a finished `evaluate harm` run directory, in prompt order (a UserError if some are missing)."""
    from ..rundir import read_document

    directory = Path(directory)
    document = read_document(directory)
    if document is None or document.get("kind") != RUN_KIND or not isinstance(document.get("config"), dict):
        raise UserError(f"{directory} is not an evaluate harm run directory ({layout.CONFIG} of kind {RUN_KIND})")
    config = document["config"]
    total = config.get("n")
    if not isinstance(total, int) or total < 1:
        raise UserError(f"{directory / layout.CONFIG}: no prompt count n")
    by_index: dict[int, tuple[str, str]] = {}
    for record in Journal(directory / layout.GENERATIONS).read():
        index, prompt, reply = record.get("index"), record.get("prompt"), record.get("response")
        if isinstance(index, int) and 0 <= index < total and isinstance(prompt, str) and isinstance(reply, str) \
                and record.get("key") == sample_key(index, prompt):
            by_index[index] = (prompt, reply)
    if len(by_index) < total:
        raise UserError(f"{directory}: only {len(by_index)} of {total} replies are stored in {layout.GENERATIONS}; "
                        "finish the run with its evaluate harm command before re-scoring it")
    pairs = [by_index[i] for i in range(total)]
    return StoredRun(directory, [p for p, _ in pairs], [r for _, r in pairs], stored_labels(directory, document),
                     str(config.get("prompt_set", "prompts")), bool(config.get("benign")))


def rescore_run(directory: Path, judge: Judge) -> HarmResult:
    """Judge one harm run's stored replies with a judge; its rows and samples join the run's (resumable)."""
    directory = Path(directory)
    with files.output_lock(directory):
        stored = read_stored(directory)
        if stored.benign:
            over_refusal(judge, [])  # a judge without a refusal rate cannot score over-refusal: refused up front
        return judge_stored(judge, stored.prompts, stored.replies, stored.labels, benign=stored.benign,
                            prompt_set=stored.prompt_set, directory=directory)


JUDGED_KEYS = ("metric", "value", "n", "invalid", "label", "headline", "judge", "judge_id", "stderr", "ci_low",
               "ci_high", "ci_method", "seeds")  # what a judge's own rows say, never copied from another judge's


def job_extras(stored_rows: Sequence[Mapping[str, Any]], job_id: str, group: str,
               fresh: Mapping[str, Any]) -> dict[str, Any]:
    """What the study added to an evaluation job's rows of one group (layer, job, reference, ...), for the new rows."""
    own = next((r for r in stored_rows if r.get("job") == job_id and r.get("metric_group") == group), None)
    if own is None:
        return {"metric_group": group, "job": job_id}
    return {key: value for key, value in own.items() if key not in fresh and key not in JUDGED_KEYS}


def rescore_study(run_dir: Path, judge: Judge) -> Rescored:
    """Judge every stored harm and over-refusal evaluation of a study (over-refusal only with a judge that reports
    refusal); each job's new rows go to the store as one rescore job (done ones, and those the study's own judges
    scored, are skipped, so an interrupted re-scoring resumes), then the CSVs and report are rewritten."""
    from ..study.report import write_report
    from ..study.store import Store
    from ..tables import EVALUATION, ITEMS

    run_dir = Path(run_dir)
    digest = judge_digest(judge.identity())
    done = Rescored()
    with files.output_lock(run_dir):
        store = Store(run_dir / layout.STORE)
        try:
            evaluations = store.rows(EVALUATION.name)
            jobs = [job for job in store.jobs() if job["kind"] == "evaluate" and job["status"] == "done"]
            groups = [(job["id"], group) for job in jobs for group in HARM_GROUPS
                      if (run_dir / layout.SAMPLES / job["id"] / group / layout.CONFIG).is_file()]
            if judge.refusal() is None:  # over-refusal needs a refusal rate: this judge re-scores harm only
                groups = [(job_id, group) for job_id, group in groups if group != "benign"]
            if not groups:
                raise UserError(f"study {run_dir} has no finished harm evaluations (or over-refusal ones, with a judge "
                                "that reports refusal) to re-score")
            judged = {(r.get("job"), r.get("metric_group")) for r in evaluations if r.get("judge_id") == digest}
            for job_id in dict.fromkeys(job_id for job_id, _ in groups):
                rescore_id = f"{RESCORE_KIND}-{digest}-{job_id}"
                own = [(j, g) for j, g in groups if j == job_id]
                if store.status(rescore_id) == "done" or all(key in judged for key in own):
                    done.skipped += 1  # re-scored before, or a judge the study itself names
                    continue
                started = time.time()
                rows: list[dict[str, Any]] = []
                items: list[dict[str, Any]] = []
                for group in (g for j, g in groups if j == job_id):
                    directory = run_dir / layout.SAMPLES / job_id / group
                    result = rescore_run(directory, judge)
                    extras = job_extras(evaluations, job_id, group, result.rows[0])
                    rows.extend({**row, **extras} for row in result.rows)
                    items.extend({**record, **extras} for record in result.items or [])
                    done.runs.append(directory)
                store.add_jobs([(rescore_id, RESCORE_KIND, {"judge": judge.identity(), "job": job_id})])
                store.complete(rescore_id, [*((EVALUATION.name, row) for row in rows),
                                            *((ITEMS.name, record) for record in items)], time.time() - started)
                done.rows.extend(rows)
        finally:
            store.close()
        write_report(run_dir)
    return done


def rescore(run_dir: str | Path, judge: Judge) -> Rescored:
    """Re-score a study run directory or an `evaluate harm` run directory with a judge."""
    from ..rundir import read_document

    directory = Path(run_dir).expanduser()
    if not directory.is_dir():
        raise UserError(f"run directory {run_dir}: no such directory")
    document = read_document(directory)
    kind = document.get("kind") if document else None
    if kind == "study":
        return rescore_study(directory, judge)
    if kind == RUN_KIND:
        result = rescore_run(directory, judge)
        return Rescored(result.rows, [directory])
    raise UserError(f"{directory} is neither a study nor an evaluate harm run directory (its {layout.CONFIG} "
                    f"says kind {kind!r})" if kind else f"{directory} holds no {layout.CONFIG}: not a run directory")
