"""Rows of the evaluation table (docs/design.md §8) and the model being evaluated."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import layout
from ..errors import UserError
from ..tables import EVALUATION, ITEMS

RESULTS, SAMPLES, ITEM_RECORDS = layout.RESULTS, layout.SAMPLE_RECORDS, ITEMS.csv
EVAL_COLUMNS = list(EVALUATION.columns)
LABEL_FIELDS = ("model", "variant", "subspace", "scheme", "fraction")
MEAN_TOLERANCE = 1e-9  # a metric is a mean over items when the mean of its item outcomes matches it to this


@dataclass(frozen=True)
class Labels:
    """What a row describes: which model, and (for projected models) which variant, subspace, scheme, fraction."""

    model: str = "model"
    variant: str = ""
    subspace: str = ""
    scheme: str = ""
    fraction: float | None = None


def as_labels(labels: Labels | Mapping[str, Any] | str | None, default_model: str = "model") -> Labels:
    """Labels from a Labels, a dict of its fields, a model name, or None."""
    if isinstance(labels, Labels):
        return labels
    if labels is None:
        return Labels(model=default_model)
    if isinstance(labels, str):
        return Labels(model=labels)
    unknown = set(labels) - set(Labels.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown evaluation label(s) {sorted(unknown)}; use {sorted(Labels.__dataclass_fields__)}")
    return Labels(**{"model": default_model, **dict(labels)})


def row(labels: Labels, metric: str, value: float | None, *, n: int, invalid: int = 0, **extra: Any) -> dict[str, Any]:
    """One plain-dict row of the evaluation table."""
    number = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    return {
        "model": labels.model,
        "variant": labels.variant,
        "subspace": labels.subspace,
        "scheme": labels.scheme,
        "fraction": labels.fraction,
        "metric": metric,
        "value": number,
        "n": int(n),
        "invalid": int(invalid),
        **extra,
    }


def item_record(labels: Labels, metric: str, keys: Sequence[str], outcomes: Sequence[float | None],
                answers: Sequence[Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One evaluation cell's per-item outcomes for one metric (the store keeps them so, one record per cell and metric).

    outcomes[i] is item i's own value of the metric (correct 0/1, a judge's score, refused 0/1; None when unusable),
    keys[i] the item's key in the samples (position and content hash), answers[i] what it yielded (an extracted answer,
    a score). An extra `proportion=False` marks a score whose 0/1 outcomes are not a proportion (no Wilson interval).
    """
    if len(keys) != len(outcomes) or (answers is not None and len(answers) != len(outcomes)):
        raise ValueError("keys, outcomes and answers need one entry per item")
    plain = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in outcomes]
    return {**{field: getattr(labels, field) for field in LABEL_FIELDS}, "metric": metric, "keys": list(keys),
            "outcomes": plain, "answers": list(answers) if answers is not None else None, **extra}


def item_lines(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The items table in long form: one line per item of each record (items.csv)."""
    lines = []
    for record in records:
        labels = {key: value for key, value in record.items() if key not in ("keys", "outcomes", "answers")}
        answers = record.get("answers") or [None] * len(record["outcomes"])
        for index, (key, outcome, answer) in enumerate(zip(record["keys"], record["outcomes"], answers)):
            lines.append({**labels, "item": index, "key": key, "outcome": outcome, "answer": answer})
    return lines


def is_mean_of(outcomes: Any, value: float | None) -> bool:
    """Whether a metric's value is the mean of its per-item outcomes (over valid items, then over seeds)."""
    from ..stats import as_outcomes, point_mean

    if value is None:
        return False
    mean = point_mean(as_outcomes(outcomes))
    return not math.isnan(mean) and abs(mean - float(value)) <= MEAN_TOLERANCE * max(1.0, abs(float(value)))


def interval_seed(row: Mapping[str, Any]) -> int:
    """The bootstrap seed of a cell: a stable hash of what it describes (the same cell gets the same interval)."""
    from ..runtime import stable_seed

    return stable_seed("interval", *(row.get(key) for key in (*LABEL_FIELDS, "layer", "metric", "edit_options")))


def interval_fields(outcomes: Any, value: float | None, *, bootstrap: int | None = None, seed: int = 0,
                    level: float | None = None, proportion: bool = True) -> dict[str, Any]:
    """ci_low, ci_high and ci_method of a cell from its per-item outcomes ((items,) or (seeds, items)).

    Wilson for one seed of 0/1 outcomes of a proportion, else a percentile bootstrap over items (and seeds) — a score
    (proportion False, e.g. a 1–5 harm score) is bootstrapped even when every item happens to score 0 or 1; no
    interval when the metric is not the mean of the outcomes (a corpus-level metric) or nothing is valid.
    """
    from .. import stats

    if not is_mean_of(outcomes, value):
        return {"ci_low": None, "ci_high": None, "ci_method": "none: not a mean over items"}
    found = stats.mean_interval(outcomes, bootstrap=bootstrap or stats.BOOTSTRAP, seed=seed, level=level or stats.LEVEL,
                                method="auto" if proportion else "bootstrap")
    if math.isnan(found.low):
        return {"ci_low": None, "ci_high": None, "ci_method": "none"}
    return {"ci_low": found.low, "ci_high": found.high, "ci_method": found.method}


def with_intervals(rows: Sequence[dict[str, Any]], items: Sequence[Mapping[str, Any]], *,
                   bootstrap: int | None = None) -> list[dict[str, Any]]:
    """Rows with the interval of each metric from the item record of the same metric (rows without one unchanged)."""
    by_metric = {record["metric"]: record for record in items}
    out = []
    for found in rows:
        record = by_metric.get(found["metric"])
        if record is not None:
            found = {**found, **interval_fields(record["outcomes"], found["value"], bootstrap=bootstrap,
                                                seed=interval_seed(found), proportion=record.get("proportion", True)),
                     "seeds": 1}
        out.append(found)
    return out


@dataclass
class EvalModel:
    """A model and tokenizer in memory, with the name rows carry and a reference for run identities."""

    model: Any
    tokenizer: Any
    name: str
    reference: str = ""
    in_memory: bool = False


def run_identity(subject: EvalModel, labels: Labels) -> Any:
    """What identifies the evaluated model in a run directory: its files, or for a model in memory its labels."""
    return {"in_memory": asdict(labels)} if subject.in_memory else subject.reference


def model_reference(path: Path) -> str:
    """A cheap identity of a model directory: its path and the size and mtime of its weight files."""
    parts = [str(Path(path).resolve())]
    for weight in sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin")):
        stat = weight.stat()
        parts.append(f"{weight.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return "|".join(parts)


def resolve_eval_model(
    model: Any,
    tokenizer: Any = None,
    *,
    name: str | None = None,
    dtype: str | None = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> EvalModel:
    """An EvalModel from an in-memory model (tokenizer required) or a model path / hub id (loaded here)."""
    from ..models import load_model, load_tokenizer
    from ..runtime import resolve_device
    from ..model_dir import resolve_model

    if isinstance(model, (str, os.PathLike)):
        directory = resolve_model(model)
        tok = tokenizer if tokenizer is not None else load_tokenizer(directory, trust_remote_code=trust_remote_code)
        loaded = load_model(directory, dtype=dtype, device=resolve_device(device),
                            trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        return EvalModel(loaded, tok, name or str(model), model_reference(directory))
    if tokenizer is None:
        raise UserError("an in-memory model needs its tokenizer (pass tokenizer=...)")
    guess = getattr(getattr(model, "config", None), "name_or_path", "") or "model"
    return EvalModel(model, tokenizer, name or str(guess), f"in-memory:{name or guess}", in_memory=True)


def write_outputs(directory: Path, rows: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]],
                  items: Sequence[Mapping[str, Any]] = ()) -> None:
    """results.csv (the evaluation table), samples.jsonl (one record per sample) and items.csv (per-item outcomes,
    keyed like the samples), each written atomically."""
    from .. import files

    files.write_csv(Path(directory) / RESULTS, rows, EVAL_COLUMNS)
    text = "".join(json.dumps(s, ensure_ascii=False, sort_keys=True, default=str) + "\n" for s in samples)
    files.atomic_write_text(Path(directory) / SAMPLES, text)
    if items:
        files.write_csv(Path(directory) / ITEM_RECORDS, item_lines(items), list(ITEMS.columns))
