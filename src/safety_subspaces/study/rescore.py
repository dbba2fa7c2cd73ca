"""Re-scoring a study or an `evaluate harm` run: judge the stored replies with another judge, never loading the model
that wrote them. A study's harm and over-refusal evaluations (samples/JOB/GROUP/) are each re-scored like one
`evaluate harm` run (evaluate/rescore.py); each evaluation job's new rows go to the store as one `rescore` job, and
the study's CSVs and report are written again, showing the new judge beside the old.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import files, layout
from ..errors import UserError
from ..evaluate.harm import RUN_KIND, judge_digest
from ..evaluate.judges import Judge
from ..evaluate.rescore import rescore_run

RESCORE_KIND = "rescore"  # the store's job kind of a re-scoring's rows
HARM_GROUPS = ("harm", "benign")  # a study's metric groups judged on stored replies (samples/JOB/GROUP/)


@dataclass
class Rescored:
    """What a re-scoring added: the new judge's rows, the run directories it judged, and those already done."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    skipped: int = 0


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
    from .report import write_report
    from .store import Store
    from ..tables import EVALUATION, ITEMS

    run_dir = Path(run_dir)
    digest = judge_digest(judge.identity())
    done = Rescored()
    with files.output_lock(run_dir):
        store = Store(run_dir / layout.STORE)
        try:
            evaluations = store.rows(EVALUATION.name)
            jobs = [job for job in store.jobs() if job["kind"] != RESCORE_KIND and job["status"] == "done"]
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
                for _, group in own:
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
