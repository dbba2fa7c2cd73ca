"""Evaluation: utility through lm-evaluation-harness, harmfulness through greedy generation and pluggable judges.

Library first: every function takes a model held in memory (with its tokenizer) or a model path, and returns plain-dict
rows of the evaluation table (docs/design.md §8) plus per-sample records.
"""

from .harm import HarmResult, evaluate_harm, harm_metrics, load_harm_prompts
from .judges import JUDGES, Judge, JudgeRuntime, Judgment, make_judge, parse_score
from .table import EVAL_COLUMNS, Labels, write_outputs
from .utility import UtilityResult, evaluate_utility

__all__ = [
    "EVAL_COLUMNS", "HarmResult", "JUDGES", "Judge", "JudgeRuntime", "Judgment", "Labels", "UtilityResult", "evaluate_harm",
    "evaluate_utility", "harm_metrics", "load_harm_prompts", "make_judge", "parse_score", "write_outputs",
]
