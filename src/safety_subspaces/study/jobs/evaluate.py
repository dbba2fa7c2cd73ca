"""The evaluate job: utility, harm and over-refusal of one model variant (a model itself, or an edited fine-tune)."""

from __future__ import annotations

from . import JOB_KINDS
from ._evaluation import EvaluateSpec, EvaluationSettings, Evaluating

__all__ = ["Evaluate", "EvaluateSpec", "EvaluationSettings"]


@JOB_KINDS.register("evaluate")
class Evaluate(Evaluating):
    """Utility / harm / over-refusal of one model variant, evaluated in memory on the resident model."""
