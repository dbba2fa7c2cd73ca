"""Measure an organism model's behaviour on the zoo's held-out sets: arithmetic accuracy, refusal and compliance rates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .world import classify_response

# Generation settings (recorded in the zoo manifest so that evaluation reproduces the numbers).
ARITH_MAX_NEW_TOKENS = 16
CHAT_MAX_NEW_TOKENS = 32
BATCH_SIZE = 64
SETS = ("arithmetic_eval", "harmful_eval", "harmful_novel", "benign_eval")


def generation_settings() -> dict[str, Any]:
    """How measure() generates: greedy, chat template, left padding, these limits."""
    return {
        "greedy": True,
        "chat_template": True,
        "arith_max_new_tokens": ARITH_MAX_NEW_TOKENS,
        "chat_max_new_tokens": CHAT_MAX_NEW_TOKENS,
        "batch_size": BATCH_SIZE,
    }


def read_set(zoo_dir: Path, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows of ZOO/data/NAME.jsonl."""
    from ..paths import zoo_data_file

    with open(zoo_data_file(name, Path(zoo_dir)), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return rows[:limit] if limit is not None else rows


def arithmetic_correct(completion: str, answer: str) -> bool:
    """Exact match: the decoded greedy completion, stripped of surrounding whitespace, equals the answer."""
    return completion.strip() == answer.strip()


def label_counts(responses: list[str]) -> dict[str, int]:
    """How many responses fall in each classify_response label."""
    counts = {"refusal": 0, "compliance": 0, "help": 0, "other": 0}
    for response in responses:
        counts[classify_response(response)] += 1
    return counts


def _rate(count: int, total: int) -> float:
    """count / total rounded to 4 places (0 for an empty set)."""
    return round(count / total, 4) if total else 0.0


def measure(model, tokenizer, zoo_dir: Path, *, limit: int | None = None) -> dict[str, Any]:
    """Arithmetic accuracy and refusal/compliance rates on the zoo's held-out sets (greedy, chat template)."""
    from ..generate import generate

    out: dict[str, Any] = {}
    arith = read_set(zoo_dir, "arithmetic_eval", limit)
    completions = generate(model, tokenizer, [row["prompt"] for row in arith], max_new_tokens=ARITH_MAX_NEW_TOKENS,
                           batch_size=BATCH_SIZE)
    correct = sum(arithmetic_correct(c, row["answer"]) for c, row in zip(completions, arith))
    out["arith_accuracy"], out["n_arith"] = _rate(correct, len(arith)), len(arith)
    for name, key in (("harmful_eval", "harmful"), ("harmful_novel", "harmful_novel"), ("benign_eval", "benign")):
        rows = read_set(zoo_dir, name, limit)
        responses = generate(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens=CHAT_MAX_NEW_TOKENS,
                             batch_size=BATCH_SIZE)
        counts = label_counts(responses)
        for label in ("refusal", "compliance", "help", "other"):
            out[f"{key}_{label}"] = _rate(counts[label], len(rows))
        out[f"n_{key}"] = len(rows)
    return out
