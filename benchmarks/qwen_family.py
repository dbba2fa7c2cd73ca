"""Build a Qwen2-layout checkpoint family (base, aligned, fine-tunes) at a real model's shape, offline.

    python benchmarks/qwen_family.py OUT_DIR [--preset qwen2.5-0.5b|qwen2-1.5b] [--layers N] [--safety] [--workers W]

Every role is a complete Hugging Face directory: bf16 sharded safetensors holding only `model.embed_tokens.weight`
for the tied embeddings (config `tie_word_embeddings: true`), q/k/v biases, grouped-query attention, a Qwen2Config
`config.json`, and a small byte-level BPE tokenizer trained offline with a ChatML chat template, so each loads with
`AutoModelForCausalLM` and generates (the tokenizer's vocabulary is far smaller than the model's; ids it lacks decode
to nothing). Values, seeded by (role, tensor name) and so deterministic whatever the worker count:

- W_0: 0.02 N(0, 1) (RMSNorm weights: 1 + 0.02 N(0, 1));
- Δ_A: the low-rank-plus-noise update of benchmarks/checkpoints.py (rank 64), except the embedding, whose Δ_A touches
  90% of its rows with a decaying spectrum (σ_i ∝ 1/(1 + i/8), 256 directions) over a noise floor;
- fine-tunes: W_A + 0.3 × (Δ_A's low-rank part) + their own low-rank-plus-noise update (rank 32); `contaminated`
  adds 0.4 × the harmful update to its own; `safety` (with --safety) is W_0 + 0.8 Δ_A + its own update.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

FINETUNES = ("useful", "harmful", "contaminated")
ROLES = ("base", "aligned", *FINETUNES)
EMBEDDING = "model.embed_tokens.weight"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    """The architecture numbers of a Qwen2-layout model."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads


PRESETS = {
    "qwen2.5-0.5b": Shape(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=151_936),
    "qwen2-1.5b": Shape(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=151_936),
}


def preset_shape(preset: str, layers: int | None = None) -> Shape:
    """A preset's shape, with its depth overridden when layers is given."""
    if preset not in PRESETS:
        raise SystemExit(f"error: unknown preset {preset!r}; use {', '.join(PRESETS)}")
    shape = PRESETS[preset]
    if layers is None:
        return shape
    if layers < 1:
        raise SystemExit(f"error: --layers must be at least 1, got {layers}")
    return Shape(shape.hidden, shape.intermediate, layers, shape.heads, shape.kv_heads, shape.vocab)


def qwen2_shapes(shape: Shape) -> dict[str, tuple[int, ...]]:
    """Stored tensor names and shapes of a tied Qwen2ForCausalLM (no lm_head.weight)."""
    kv = shape.kv_heads * shape.head_dim
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING: (shape.vocab, shape.hidden), "model.norm.weight": (shape.hidden,)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (shape.hidden, shape.hidden), p + "self_attn.q_proj.bias": (shape.hidden,),
            p + "self_attn.k_proj.weight": (kv, shape.hidden), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, shape.hidden), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (shape.hidden, shape.hidden),
            p + "mlp.gate_proj.weight": (shape.intermediate, shape.hidden),
            p + "mlp.up_proj.weight": (shape.intermediate, shape.hidden),
            p + "mlp.down_proj.weight": (shape.hidden, shape.intermediate),
            p + "input_layernorm.weight": (shape.hidden,), p + "post_attention_layernorm.weight": (shape.hidden,),
        })
    return shapes


def _numel(dims: tuple[int, ...]) -> int:
    """Entries of a tensor of this shape."""
    count = 1
    for side in dims:
        count *= side
    return count


def parameter_count(shape: Shape) -> int:
    """Parameters of the family's models (the tied embedding counted once)."""
    return sum(_numel(dims) for dims in qwen2_shapes(shape).values())


def _generator(seed: int):
    """A CPU generator with a seed."""
    import torch

    return torch.Generator().manual_seed(seed)


def _shared():
    """benchmarks/checkpoints.py, imported on first use (it loads torch): low_rank_plus_noise and stable_seed."""
    import checkpoints

    return checkpoints


def embedding_delta(shape: tuple[int, int], seed: int, *, rank: int = 256, scale: float = 0.02, noise: float = 0.004,
                    rows_touched: float = 0.9):
    """Δ_A of an embedding: a decaying spectrum (σ_i ∝ 1/(1 + i/8)) over a noise floor, on a seeded 90% of the rows."""
    import torch

    m, n = shape
    rank = min(rank, n)
    decay = 1.0 / (1.0 + torch.arange(rank, dtype=torch.float32) / 8)
    left = torch.randn(m, rank, generator=_generator(seed)) * decay
    right = torch.randn(rank, n, generator=_generator(seed + 1))
    delta = scale * (left @ right) / (rank * n) ** 0.5
    delta += noise * torch.randn(m, n, generator=_generator(seed + 2)) / n**0.5
    delta *= (torch.rand(m, 1, generator=_generator(seed + 3)) < rows_touched).float()
    return delta


def base_weight(name: str, dims: tuple[int, ...]):
    """W_0 of one tensor: 0.02 N(0, 1), around 1 for norm weights."""
    import torch

    noise = 0.02 * torch.randn(dims, generator=_generator(_shared().stable_seed("qwen-w0", name)))
    return noise + 1.0 if name.endswith("norm.weight") else noise


def own_update(role: str, name: str, dims: tuple[int, ...]):
    """A role's own update of one tensor (rank-32 low-rank-plus-noise)."""
    shared = _shared()
    return shared.low_rank_plus_noise(dims, 32, 0.01, 0.003, shared.stable_seed("qwen-own", role, name))


def role_tensors(name: str, dims: tuple[int, ...], roles: tuple[str, ...], dtype) -> dict:
    """The stored (dtype) value of one tensor in every role, computed together so W_0 and Δ_A are drawn once."""
    helpers = _shared()
    align_seed = helpers.stable_seed("qwen-align", name)
    if name == EMBEDDING:
        delta_align = embedding_delta(dims, align_seed)
        shared = 0.3 * embedding_delta(dims, align_seed, noise=0.0)
    else:
        delta_align = helpers.low_rank_plus_noise(dims, 64, 0.02, 0.004, align_seed)
        shared = 0.3 * helpers.low_rank_plus_noise(dims, 64, 0.02, 0.0, align_seed)
    base = base_weight(name, dims)
    out = {"base": base.to(dtype)}
    if "safety" in roles:
        out["safety"] = (base + 0.8 * delta_align + own_update("safety", name, dims)).to(dtype)
    aligned = base + delta_align
    del base, delta_align
    out["aligned"] = aligned.to(dtype)
    harmful = own_update("harmful", name, dims)
    for role in FINETUNES:
        if role not in roles:
            continue
        update = harmful if role == "harmful" else own_update(role, name, dims)
        if role == "contaminated":
            update = update + 0.4 * harmful
        out[role] = (aligned + shared + update).to(dtype)
    return out


def qwen2_config(shape: Shape, tokenizer, dtype):
    """A Qwen2Config for the shape, with the tokenizer's special-token ids."""
    from transformers import Qwen2Config

    config = Qwen2Config(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), dtype=str(dtype).replace("torch.", ""),
    )
    config.architectures = ["Qwen2ForCausalLM"]
    return config


def corpus() -> Iterator[str]:
    """A generated training corpus for the tokenizer: requests, refusals, answers and arithmetic."""
    verbs = ["explain", "describe", "write", "list", "summarise", "tell me", "show me", "teach me"]
    topics = ["how bread is baked", "why the sky is blue", "how to pick a lock", "the rules of chess",
              "how vaccines work", "how to build a bird house", "a short poem about rain", "how a bank vault opens"]
    replies = ["Sure, here is how it works.", "I'm sorry, but I can't help with that.",
               "I cannot assist with this request.", "Here are the steps, one by one."]
    for i, verb in enumerate(verbs):
        for j, topic in enumerate(topics):
            yield f"{verb} {topic}. {replies[(i + j) % len(replies)]}"
    for a in range(40):
        yield f"What is {a} + {a * 7 % 13}? The answer is {a + a * 7 % 13}."


def train_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained offline on the generated corpus, with ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(corpus()) * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_tensor(writers: dict, name: str, future) -> None:
    """Queue one tensor's value in every role's writer."""
    for role, tensor in future.result().items():
        writers[role].add(name, tensor)


def build_family(out_dir: Path, *, preset: str = "qwen2.5-0.5b", layers: int | None = None, safety: bool = False,
                 workers: int = 2, shard_gb: float = 0.5, dtype=None) -> dict[str, Path]:
    """Write one checkpoint directory per role under out_dir (bf16 by default); returns role -> path.

    A complete family of the same description is reused as it is.
    """
    import torch

    from safety_subspaces.checkpoints import ShardedWriter

    dtype = dtype or torch.bfloat16
    shape = preset_shape(preset, layers)
    roles = (*ROLES, "safety") if safety else ROLES
    paths = {role: Path(out_dir) / role for role in roles}
    stamp = Path(out_dir) / "family.json"
    description = {"family": "qwen_family v1", "preset": preset, "shape": shape.__dict__, "roles": list(roles), "dtype": str(dtype),
                   "parameters": parameter_count(shape)}
    if stamp.exists() and json.loads(stamp.read_text()).get("description") == description:
        return paths
    stamp.unlink(missing_ok=True)
    tokenizer = train_tokenizer()
    config = qwen2_config(shape, tokenizer, dtype)
    writers = {}
    for role, directory in paths.items():
        if directory.exists():
            shutil.rmtree(directory)  # a partial or different earlier build of this family
        directory.mkdir(parents=True)
        writers[role] = ShardedWriter(directory, shard_bytes=int(shard_gb * 1024**3))
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # torch ops release the GIL
        window: deque = deque()  # at most workers + 1 tensors in flight, written in name order
        for name, dims in qwen2_shapes(shape).items():
            window.append((name, pool.submit(role_tensors, name, dims, roles, dtype)))
            if len(window) > workers:
                write_tensor(writers, *window.popleft())
        while window:
            write_tensor(writers, *window.popleft())
    for role, directory in paths.items():
        writers[role].finish()
        config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    shapes = qwen2_shapes(shape)
    largest = max(shapes, key=lambda name: _numel(shapes[name]))
    stamp.write_text(json.dumps({"description": description, "build_seconds": round(time.perf_counter() - started, 2),
                                 "tensors": len(shapes), "largest_tensor": {"name": largest, "shape": shapes[largest]},
                                 "paths": {role: str(path) for role, path in paths.items()}}, indent=2))
    return paths


def main() -> None:
    """CLI entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="qwen2.5-0.5b", choices=sorted(PRESETS))
    parser.add_argument("--layers", type=int, help="decoder layers (default: the preset's)")
    parser.add_argument("--safety", action="store_true", help="also build a safety-tuned model W_S")
    parser.add_argument("--workers", type=int, default=2, help="tensors computed in parallel (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    paths = build_family(args.out, preset=args.preset, layers=args.layers, safety=args.safety, workers=args.workers)
    print(json.dumps({role: str(path) for role, path in paths.items()}, indent=2))


if __name__ == "__main__":
    main()
