"""Residual-stream capture: pooled hidden states at chosen depths, streamed into float64 second moments.

Hidden-state index i of the L' = L + 1 hidden states is the residual stream entering decoder block i (index 0: the
embedding output) and index L is the last block's output. Unlike HF's `hidden_states[L]`, no final norm is applied
there, so every index is a residual-stream vector (the default depth band never reaches index L anyway).
Forward hooks pool each chosen index as it is computed and stop the forward pass after the deepest one (no logits).
"""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from ..errors import UserError
from ..generate import batches_by_length, encode, format_prompts

WINDOW_PATTERN = re.compile(r"^(last|generated)(?::(\d+))?$")


@dataclass(frozen=True)
class Window:
    """Which token positions are averaged: the last W prompt tokens, or the first W greedily generated tokens."""

    kind: str = "last"
    size: int = 1

    @classmethod
    def parse(cls, text: str) -> "Window":
        """Parse 'last', 'last:W' or 'generated:W' (W >= 1)."""
        match = WINDOW_PATTERN.match(text.strip())
        if not match or (match.group(1) == "generated" and match.group(2) is None):
            raise UserError(f"--window {text!r}: expected last, last:W or generated:W with W a positive integer")
        size = int(match.group(2) or 1)
        if size < 1:
            raise UserError(f"--window {text!r}: W must be at least 1")
        return cls(match.group(1), size)

    @property
    def label(self) -> str:
        """The canonical text form (last, last:4, generated:8)."""
        return "last" if (self.kind, self.size) == ("last", 1) else f"{self.kind}:{self.size}"


def last_token_weights(attention_mask: torch.Tensor, size: int) -> torch.Tensor:
    """(b, T) weights averaging each row's last `size` non-pad tokens (left or right padding alike)."""
    mask = attention_mask.bool()
    from_end = mask.flip(-1).long().cumsum(-1).flip(-1)  # 1 at the last real token, 2 at the one before, ...
    chosen = (mask & (from_end <= size)).float()
    return chosen / chosen.sum(-1, keepdim=True).clamp_min(1)


def generated_mask(generated: torch.Tensor, eos_ids: Iterable[int]) -> torch.Tensor:
    """(b, W) mask of generated tokens up to and including each row's first end-of-sequence token."""
    eos = torch.tensor(sorted(set(eos_ids)), dtype=generated.dtype, device=generated.device)
    is_eos = torch.isin(generated, eos).long()
    before_first = (is_eos.cumsum(-1) - is_eos) == 0
    return before_first


def decoder_blocks(model) -> torch.nn.ModuleList:
    """The model's list of decoder blocks: the ModuleList whose length is the config's num_hidden_layers."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    count = getattr(config, "num_hidden_layers", None)
    candidates = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == count
    ]
    if not candidates:
        raise UserError(f"cannot find the decoder blocks of {type(model).__name__} (no list of {count} layers)")
    preferred = [item for item in candidates if item[0].split(".")[-1] in ("layers", "h", "blocks", "layer")]
    return (preferred or candidates)[0][1]


class _Stop(Exception):
    """Raised by the last hook: the rest of the forward pass is not needed."""


def _tensor(value) -> torch.Tensor:
    """The hidden-state tensor of a block's input or output (tuple outputs of older transformers included)."""
    return value[0] if isinstance(value, (tuple, list)) else value


class ResidualCapture:
    """Hooks that pool hidden-state indices of a model with per-token weights, one forward pass per batch."""

    def __init__(self, model, indices: Sequence[int]):
        self.model = model
        self.blocks = decoder_blocks(model)
        self.num_hidden_states = len(self.blocks) + 1
        self.indices = sorted(set(indices))
        bad = [i for i in self.indices if not 0 <= i < self.num_hidden_states]
        if bad:
            raise ValueError(f"hidden-state index {bad[0]} outside 0 … {self.num_hidden_states - 1}")
        self.takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        self._weights: torch.Tensor | None = None
        self._pooled: dict[int, torch.Tensor] = {}

    def _record(self, index: int, hidden: torch.Tensor) -> None:
        """Pool one hidden state (b, T, d) -> (b, d) float32; stop after the deepest index."""
        weights = self._weights.to(device=hidden.device, dtype=torch.float32)  # type: ignore[union-attr]
        self._pooled[index] = torch.bmm(weights.unsqueeze(1), hidden.float()).squeeze(1)
        if index == self.indices[-1]:
            raise _Stop

    def _hooks(self) -> list:
        """Register the hooks: a pre-hook on block 0 for index 0, output hooks on block i - 1 for index i."""
        handles = []
        if 0 in self.indices:
            handles.append(self.blocks[0].register_forward_pre_hook(
                lambda module, args, kwargs: self._record(0, _tensor(args[0] if args else kwargs["hidden_states"])),
                with_kwargs=True,
            ))
        for index in self.indices:
            if index > 0:
                handles.append(self.blocks[index - 1].register_forward_hook(
                    lambda module, args, output, index=index: self._record(index, _tensor(output))
                ))
        return handles

    @torch.inference_mode()
    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, weights: torch.Tensor) -> dict[int, torch.Tensor]:
        """{index: (b, d) weighted mean of that hidden state over each row's positions}."""
        device = next(self.model.parameters()).device
        self._weights, self._pooled = weights, {}
        kwargs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "use_cache": False}
        if self.takes_positions:
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0).to(device)
        handles = self._hooks()
        try:
            self.model(**kwargs)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if len(self._pooled) != len(self.indices):
            raise RuntimeError(f"captured {sorted(self._pooled)} of hidden states {self.indices}")
        return self._pooled


@dataclass
class Moments:
    """Streaming float64 second moments A^T A and column sums of pooled vectors, per hidden-state index."""

    dim: int
    indices: Sequence[int]
    device: str = "cpu"
    keep: bool | Sequence[int] = False  # also keep the vectors themselves: of every index, or of these indices
    count: int = 0
    second: dict[int, torch.Tensor] = field(default_factory=dict)
    total: dict[int, torch.Tensor] = field(default_factory=dict)
    vectors: dict[int, list[tuple[list[int], torch.Tensor]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index in self.indices:
            self.second[index] = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
            self.total[index] = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
            self.vectors[index] = []

    def add(self, pooled: dict[int, torch.Tensor], rows: Sequence[int]) -> None:
        """Add one batch of pooled vectors (rows: their prompt positions)."""
        for index in self.indices:
            batch = pooled[index].to(device=self.device, dtype=torch.float64)
            self.second[index].addmm_(batch.T, batch)
            self.total[index] += batch.sum(0)
            if self.keep is True or (not isinstance(self.keep, bool) and index in self.keep):
                self.vectors[index].append((list(rows), pooled[index].float().cpu()))
        self.count += len(rows)

    def stacked(self, index: int) -> torch.Tensor:
        """The kept vectors of one index as an (n, d) matrix in prompt order."""
        parts = self.vectors[index]
        if not parts:
            raise ValueError("vectors were not kept; create Moments with keep=True")
        out = torch.empty(self.count, self.dim)
        for rows, batch in parts:
            out[torch.tensor(rows)] = batch
        return out


@dataclass
class CaptureStats:
    """Tokens run through the model and the seconds it took (for throughput)."""

    tokens: int = 0
    seconds: float = 0.0


def capture(
    model,
    tokenizer,
    prompts: Sequence[str],
    indices: Sequence[int],
    *,
    window: Window = Window(),
    chat: bool = True,
    batch_size: int = 8,
    max_length: int | None = None,
    keep: bool | Sequence[int] = False,
    moments_device: str | None = None,
    model_name: str = "model",
    on_batch: Callable[[int], None] | None = None,
    stats: CaptureStats | None = None,
) -> Moments:
    """Second moments of the pooled residual stream of every prompt at each index (batch composition does not matter)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    texts = format_prompts(tokenizer, prompts, chat=chat, model_name=model_name)
    hooks = ResidualCapture(model, indices)
    device = next(model.parameters()).device
    if moments_device is None:
        moments_device = "cpu" if device.type == "mps" else str(device)  # no float64 on mps
    dim = model.config.get_text_config().hidden_size
    moments = Moments(dim, hooks.indices, device=moments_device, keep=keep)
    if max_length is not None:
        tokenizer.truncation_side = "left"  # keep the end of a long prompt: the generation prompt
    for rows in batches_by_length(tokenizer, texts, batch_size):
        encoded = encode(tokenizer, [texts[i] for i in rows], chat=chat, max_length=max_length)
        started = time.perf_counter()
        ids, mask, weights = window_inputs(model, tokenizer, encoded["input_ids"], encoded["attention_mask"], window)
        moments.add(hooks.pool(ids, mask, weights), rows)
        if stats is not None:
            stats.seconds += time.perf_counter() - started
            stats.tokens += int(mask.sum())
        if on_batch:
            on_batch(len(rows))
    return moments


def window_inputs(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, window: Window):
    """(input ids, attention mask, per-token weights) of the forward pass that realises a window."""
    if window.kind == "last":
        return input_ids, attention_mask, last_token_weights(attention_mask, window.size)
    generated = greedy_tokens(model, tokenizer, input_ids, attention_mask, window.size)
    valid = generated_mask(generated, eos_token_ids(model, tokenizer)).to(attention_mask.dtype)
    ids = torch.cat([input_ids, generated], dim=1)
    mask = torch.cat([attention_mask, valid], dim=1)
    weights = torch.cat([torch.zeros_like(attention_mask, dtype=torch.float32), valid.float()], dim=1)
    return ids, mask, weights / weights.sum(-1, keepdim=True).clamp_min(1)


def eos_token_ids(model, tokenizer) -> list[int]:
    """End-of-sequence token ids from the generation config, else the tokenizer."""
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


@torch.inference_mode()
def greedy_tokens(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` greedily generated tokens of each left-padded prompt, (b, count) (pad after an early end)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    config = GenerationConfig(
        max_new_tokens=count, min_new_tokens=0, do_sample=False, num_beams=1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_token_ids(model, tokenizer) or None,
    )
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config)
    generated = out[:, input_ids.shape[1]:].cpu()
    if generated.shape[1] < count:  # every row ended early
        pad = torch.full((generated.shape[0], count - generated.shape[1]), tokenizer.pad_token_id, dtype=generated.dtype)
        generated = torch.cat([generated, pad], dim=1)
    return generated
