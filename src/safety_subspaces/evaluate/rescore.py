"""Re-scoring one harm evaluation: judge the stored replies of a finished `evaluate harm` run directory with another
judge, without loading or calling the model that wrote them (a study's re-scoring, built on this, is study/rescore.py).

The new judge's rows join the old ones in the run's results.csv, samples.jsonl and items.csv (the judge is part of
each row's identity). Judgments are journaled as they arrive (judgments.jsonl, keyed by the judge's identity), so an
interrupted re-scoring resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .. import files, layout
from ..errors import UserError
from .harm import RUN_KIND, HarmResult, judge_stored, sample_key
from .journal import Journal
from .judges import Judge, over_refusal
from .table import Labels, as_labels

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
