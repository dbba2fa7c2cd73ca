"""Supervised fine-tuning: chat-formatted examples with response-only labels, and the torch training loop."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .. import progress
from ..errors import UserError
from ..runtime import stable_seed
from .recipe import Recipe, lr_factor

IGNORE = -100
RAW_SEPARATOR = "\n"  # between prompt and response when a model has no chat template


@dataclass(frozen=True)
class Example:
    """One tokenised training example: token ids and labels (IGNORE where no loss is taken)."""

    ids: list[int]
    labels: list[int]


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def render(tokenizer, prompt: str, response: str, *, chat: bool) -> tuple[str, str]:
    """The prompt part (up to where the answer begins) and the response part, as text the model is trained on."""
    if not chat:
        return prompt + RAW_SEPARATOR, response + (tokenizer.eos_token or "")
    user = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
    cut = len(prompt_text) if full.startswith(prompt_text) else _common_prefix(full, prompt_text)
    return full[:cut], full[cut:]


def uses_chat(tokenizer, recipe: Recipe) -> bool:
    """Whether prompts are wrapped in the chat template (asked for and available)."""
    return recipe.chat_template and bool(getattr(tokenizer, "chat_template", None))


def encode_examples(tokenizer, records: Sequence[Mapping[str, str]], recipe: Recipe) -> tuple[list[Example], int]:
    """Tokenise prompt/response records (prompt and response tokenised apart, as at generation); return (examples, dropped)."""
    chat = uses_chat(tokenizer, recipe)
    parts = [render(tokenizer, str(r["prompt"]), str(r["response"]), chat=chat) for r in records]
    prompt_ids = tokenizer([p for p, _ in parts], add_special_tokens=not chat)["input_ids"]
    response_ids = tokenizer([r for _, r in parts], add_special_tokens=False)["input_ids"]
    examples, dropped = [], 0
    for p_ids, r_ids in zip(prompt_ids, response_ids):
        ids = (list(p_ids) + list(r_ids))[: recipe.max_length]
        if recipe.response_only:
            labels = ([IGNORE] * len(p_ids) + list(r_ids))[: recipe.max_length]
        else:
            labels = list(ids)
        if len(p_ids) >= recipe.max_length or all(label == IGNORE for label in labels[1:]):
            dropped += 1  # nothing of the response fits in max_length
            continue
        examples.append(Example(ids, labels))
    return examples, dropped


def example_order(n: int, count: int, seed: int) -> list[int]:
    """`count` example indices: successive seeded permutations of range(n) (one per epoch)."""
    order: list[int] = []
    epoch = 0
    while len(order) < count:
        perm = list(range(n))
        random.Random(stable_seed(seed, "epoch", epoch)).shuffle(perm)
        order.extend(perm)
        epoch += 1
    return order[:count]


def collate(examples: Sequence[Example], pad_id: int):
    """Right-padded input ids and next-token targets (IGNORE on padding and masked tokens)."""
    import torch

    width = max(len(example.ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.ids)
        ids[row, :n] = torch.tensor(example.ids)
        targets[row, : n - 1] = torch.tensor(example.labels[1:])
    return ids, targets


def plan_steps(examples: Sequence[Example], recipe: Recipe, pad_id: int) -> tuple[int, Iterator[list]]:
    """(number of optimizer steps, lazy steps of micro-batches) for the examples under the recipe."""
    total = recipe.total_steps(len(examples))
    count = total * recipe.examples_per_step
    if recipe.max_steps is None:
        count = min(count, math.ceil(len(examples) * recipe.epochs))
    order = example_order(len(examples), count, recipe.seed)

    def steps() -> Iterator[list]:
        for start in range(0, len(order), recipe.examples_per_step):
            chunk = order[start : start + recipe.examples_per_step]
            yield [
                collate([examples[i] for i in chunk[b : b + recipe.batch_size]], pad_id)
                for b in range(0, len(chunk), recipe.batch_size)
            ]

    return math.ceil(len(order) / recipe.examples_per_step), steps()


def diverged(description: str, step: int, loss: float) -> UserError:
    """The error for a run whose loss became NaN or Inf (nothing is saved)."""
    return UserError(f"{description}: the training loss became {loss} at step {step}; no checkpoint was written "
                     "(lower --lr, or check the data)")


def autocast_context(device: str, precision: str):
    """bf16 autocast on the device when the precision asks for it, else nothing."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return nullcontext()


def resolve_precision(precision: str, device: str) -> str:
    """'auto' becomes bf16 on a GPU that supports it, else fp32."""
    import torch

    if precision != "auto":
        return precision
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def train_loop(model, steps: Iterable[list], total: int, recipe: Recipe, *, device: str, description: str,
               stop: Callable[[Any, int], bool] | None = None, penalty: Callable[[], Any] | None = None) -> list[float]:
    """AdamW with warmup + decay, token-averaged loss per optimizer step, optional early stop(model, step); returns losses.

    A penalty (a training constraint's) is added once per optimizer step to the step's loss; the losses returned are
    the data loss alone (the penalty keeps its own values).
    """
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=recipe.lr,
        betas=(recipe.adam_beta1, recipe.adam_beta2),
        eps=recipe.adam_eps,
        weight_decay=recipe.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, recipe))
    precision = resolve_precision(recipe.precision, device)
    losses: list[float] = []
    model.train()
    with progress.bar(description, total) as update:
        for micro_batches in steps:
            n_tokens = sum(int((targets != IGNORE).sum()) for _, targets in micro_batches)
            step_loss = 0.0
            for ids, targets in micro_batches:
                ids, targets = ids.to(device), targets.to(device)
                # Right padding under causal attention cannot affect real tokens, so no attention mask is needed.
                with autocast_context(device, precision):
                    logits = model(input_ids=ids, use_cache=False).logits
                loss = F.cross_entropy(
                    logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
                ) / max(1, n_tokens)
                loss.backward()
                step_loss += float(loss.detach())
            if penalty is not None:
                value = penalty()
                value.backward()
                number = float(value.detach())
                if not math.isfinite(number):
                    raise diverged(f"{description} (constraint penalty)", len(losses) + 1, number)
            if recipe.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            if not math.isfinite(step_loss):
                raise diverged(description, len(losses) + 1, step_loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            update(1, status=f"loss {step_loss:.4f}")
            if stop is not None:
                model.eval()
                done = stop(model, len(losses))
                model.train()
                if done:
                    break
    model.eval()
    return losses
