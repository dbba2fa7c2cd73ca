"""Generate Llama-shaped benchmark checkpoints: base, aligned and fine-tunes with low-rank-plus-noise deltas.

    python benchmarks/checkpoints.py OUT_DIR [--hidden 2048 --intermediate 8192 --layers 4 --vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from safety_subspaces.checkpoints import ShardedWriter  # noqa: E402
from safety_subspaces.runtime import stable_seed  # noqa: E402

ROLES = ("base", "aligned", "useful", "harmful", "contaminated")


def llama_shapes(hidden: int, intermediate: int, layers: int, vocab: int, heads: int, kv_heads: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a LlamaForCausalLM (untied)."""
    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
                                          "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    return shapes


def _gen(seed: int) -> torch.Generator:
    """A CPU generator with a seed."""
    return torch.Generator().manual_seed(seed)


def low_rank_plus_noise(shape: tuple[int, ...], rank: int, scale: float, noise: float, seed: int) -> torch.Tensor:
    """scale * (A B / sqrt(rank n)) + noise * N(0, 1/n), seeded."""
    if len(shape) == 1:
        return scale * 0.1 * torch.randn(shape, generator=_gen(seed))
    m, n = shape
    a = torch.randn(m, rank, generator=_gen(seed))
    b = torch.randn(rank, n, generator=_gen(seed + 1))
    return scale * (a @ b) / (rank * n) ** 0.5 + noise * torch.randn(m, n, generator=_gen(seed + 2)) / n**0.5


def tensor_for(role: str, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The fp32 value of one tensor of one role: W_0, W_0 + Δ_A, or W_0 + Δ_A + Δ_T."""
    base = (torch.ones(shape) if len(shape) == 1 else torch.zeros(shape)) + 0.02 * torch.randn(shape, generator=_gen(stable_seed("w0", name)))
    if role == "base":
        return base
    weight = base + low_rank_plus_noise(shape, 64, 0.02, 0.004, stable_seed("align", name))
    if role == "aligned":
        return weight
    # fine-tunes share part of the alignment directions: their update mixes Δ_A's factors with their own
    shared = 0.3 * low_rank_plus_noise(shape, 64, 0.02, 0.0, stable_seed("align", name))
    own = low_rank_plus_noise(shape, 32, 0.01, 0.003, stable_seed(role, name))
    return weight + shared + own


def make_llama_checkpoints(out_dir: Path, *, hidden: int = 2048, intermediate: int = 8192, layers: int = 4,
                           vocab: int = 32000, heads: int = 32, kv_heads: int = 8, dtype: torch.dtype = torch.bfloat16,
                           shard_gb: float = 0.5, roles=ROLES) -> dict[str, Path]:
    """Write one HF-style checkpoint directory per role; returns role -> path (skips roles already written)."""
    from transformers import LlamaConfig

    shapes = llama_shapes(hidden, intermediate, layers, vocab, heads, kv_heads)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, vocab_size=vocab,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=False,
                         dtype=str(dtype).replace("torch.", ""))
    paths = {}
    for role in roles:
        directory = Path(out_dir) / role
        paths[role] = directory
        if (directory / "config.json").exists():
            continue
        directory.mkdir(parents=True, exist_ok=True)
        writer = ShardedWriter(directory, shard_bytes=int(shard_gb * 1024**3))
        for name, shape in shapes.items():
            writer.add(name, tensor_for(role, name, shape).to(dtype))
        writer.finish()
        config.save_pretrained(directory)
    return paths


def main() -> None:
    """CLI entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    args = parser.parse_args()
    paths = make_llama_checkpoints(args.out, hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                                   vocab=args.vocab, heads=args.heads, kv_heads=args.kv_heads)
    print(json.dumps({role: str(path) for role, path in paths.items()}, indent=2))


if __name__ == "__main__":
    main()
