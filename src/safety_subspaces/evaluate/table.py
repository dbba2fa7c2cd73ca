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
from ..tables import EVALUATION

RESULTS, SAMPLES = layout.RESULTS, layout.SAMPLE_RECORDS
EVAL_COLUMNS = list(EVALUATION.columns)


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


def write_outputs(directory: Path, rows: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]]) -> None:
    """results.csv (the evaluation table) and samples.jsonl (one record per sample), each written atomically."""
    from .. import files

    files.write_csv(Path(directory) / RESULTS, rows, EVAL_COLUMNS)
    text = "".join(json.dumps(s, ensure_ascii=False, sort_keys=True, default=str) + "\n" for s in samples)
    files.atomic_write_text(Path(directory) / SAMPLES, text)
