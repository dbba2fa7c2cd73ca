"""The fine-tuning recipe: every knob with the paper's defaults, its validation and its learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from ..errors import UserError

METHODS = ("sft", "dpo")
SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class Recipe:
    """How to fine-tune; defaults are the paper's: full FT, AdamW, lr 1e-5, 1x32, 1 epoch, cosine, warmup 0.02."""

    method: str = "sft"
    lr: float = 1e-5
    batch_size: int = 1
    grad_accum: int = 32
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    scheduler: str = "cosine"
    warmup: float = 0.02  # fraction of the optimizer steps
    min_lr_ratio: float = 0.0  # cosine/linear decay floor, as a fraction of lr
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    max_length: int = 512
    precision: str = "auto"  # auto: bf16 autocast where the hardware supports it, else fp32
    seed: int = 42
    response_only: bool = True  # loss on response tokens only
    chat_template: bool = True  # wrap prompts in the model's chat template when it has one
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: float | None = None  # default 2 * rank
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"  # comma-separated module names, or all-linear
    merge: bool = False  # LoRA: save the merged full model (adapter in adapter/)
    dpo_beta: float = 0.1
    save_dtype: str = "auto"  # auto: the input checkpoint's dtype
    constraint: Any = None  # a registered training constraint (a Spec: asft), penalty added to every step's loss

    def validate(self) -> "Recipe":
        """Raise UserError naming the first knob out of range; return self."""
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"gradient accumulation must be at least 1, got {self.grad_accum}"),
            (self.epochs > 0, f"epochs must be positive, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max steps must be at least 1, got {self.max_steps}"),
            (0 <= self.warmup < 1, f"warmup must be a fraction in [0, 1), got {self.warmup}"),
            (0 <= self.min_lr_ratio <= 1, f"min lr ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.max_length >= 2, f"max length must be at least 2, got {self.max_length}"),
            (self.lora_rank >= 0, f"LoRA rank must be 0 (full fine-tuning) or positive, got {self.lora_rank}"),
            (0 <= self.lora_dropout < 1, f"LoRA dropout must be in [0, 1), got {self.lora_dropout}"),
            (not self.merge or self.lora_rank > 0, "--merge only applies to LoRA runs (give --lora RANK)"),
            (self.dpo_beta > 0, f"DPO beta must be positive, got {self.dpo_beta}"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, f"max grad norm must be positive, got {self.max_grad_norm}"),
            (self.constraint is None or self.method == "sft",
             f"a training constraint ({getattr(self.constraint, 'name', self.constraint)}) applies to SFT runs only"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self

    @property
    def kind(self) -> str:
        """'full', 'lora' or 'dpo' / 'dpo-lora': what the manifest calls this run."""
        base = "dpo" if self.method == "dpo" else "sft"
        return f"{base}-lora" if self.lora_rank else f"{base}-full"

    @property
    def examples_per_step(self) -> int:
        """Examples per optimizer step (batch size times accumulation)."""
        return self.batch_size * self.grad_accum

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps for a data set of n examples."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(n_examples * self.epochs / self.examples_per_step))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain dict (for manifests; a constraint in its YAML form, none: no key)."""
        plain = asdict(replace(self, constraint=None))
        del plain["constraint"]
        if self.constraint is not None:
            plain["constraint"] = self.constraint.as_plain()
        return plain


def recipe_from(values: Mapping[str, Any], base: Recipe | None = None) -> Recipe:
    """A recipe with the given knobs changed (unknown knobs are an error)."""
    names = {item.name for item in fields(Recipe)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown recipe setting {unknown[0]!r}; known: {', '.join(sorted(names))}")
    values = dict(values)
    if "constraint" in values:
        from .constraints import constraint_spec

        values["constraint"] = constraint_spec(values["constraint"])
    return replace(base or Recipe(), **values).validate()


def lr_factor(step: int, total: int, recipe: Recipe) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): linear warmup, then the scheduler's decay."""
    warmup = math.ceil(recipe.warmup * total)
    if step < warmup:
        return (step + 1) / warmup
    if recipe.scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if recipe.scheduler == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return recipe.min_lr_ratio + (1.0 - recipe.min_lr_ratio) * shape
