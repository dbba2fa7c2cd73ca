"""Prompt formatting and batched greedy generation with left padding."""

from __future__ import annotations

from typing import Callable, Sequence

from .errors import UserError


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompts(tokenizer, prompts: Sequence[str], *, chat: bool = True, model_name: str = "model") -> list[str]:
    """Wrap prompts as a user turn in the chat template with the generation prompt, or leave them raw."""
    if not chat:
        return list(prompts)
    if not has_chat_template(tokenizer):
        raise UserError(f"{model_name} has no chat template; pass --raw-prompts to use prompts as they are")
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        for prompt in prompts
    ]


def encode(tokenizer, texts: Sequence[str], *, chat: bool, max_length: int | None = None):
    """Tokenise a batch with left padding (special tokens only for raw prompts; templates carry their own)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(
        list(texts),
        return_tensors="pt",
        padding=True,
        add_special_tokens=not chat,
        truncation=max_length is not None,
        max_length=max_length,
    )


def batches_by_length(tokenizer, texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Index batches with similar lengths together (less padding), deterministic."""
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    chat: bool = True,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    model_name: str = "model",
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy completions for prompts, in input order; outputs do not depend on batch composition."""
    import torch
    from transformers import GenerationConfig

    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    texts = format_prompts(tokenizer, prompts, chat=chat, model_name=model_name)
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
    )
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(texts)
    for index_batch in batches_by_length(tokenizer, texts, batch_size):
        encoded = encode(tokenizer, [texts[i] for i in index_batch], chat=chat).to(device)
        with torch.inference_mode():
            generated = model.generate(**encoded, generation_config=config)
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        for row, index in enumerate(index_batch):
            outputs[index] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
        if on_batch:
            on_batch(len(index_batch))
    return outputs
