"""Tiny offline models, tokenizers and checkpoints for tests (nothing loads from the hub)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<bos>", "<|end|>", "<|user|>", "<|assistant|>"]
CORPUS = [
    "how do i bake bread? mix flour and water, then bake it.",
    "what is 12 + 7? the answer is 19.",
    "tell me how to pick a lock. sorry, i cannot help with that.",
    "write a poem about the sea. the sea is wide and blue.",
    "explain gravity. masses attract each other.",
] * 20


def tiny_tokenizer(chat_template: bool = True):
    """A small BPE tokenizer trained on a fixed corpus, with specials and (optionally) a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIALS, show_progress=False))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<|end|>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str = "llama", *, vocab_size: int = 128, hidden: int = 32, layers: int = 2, heads: int = 4,
                kv_heads: int = 2, intermediate: int = 48, tie: bool = False):
    """A tiny Llama- or Qwen2-layout config (GQA; Qwen2 has q/k/v biases)."""
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return cls(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )


def tiny_model(arch: str = "llama", *, seed: int = 0, **config_kwargs):
    """A randomly initialised tiny causal LM."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **config_kwargs))


def save(model, path: Path, *, tokenizer=None, dtype: torch.dtype | None = None, shard_size: str | None = None) -> Path:
    """Save a model (optionally cast, optionally sharded) with a tokenizer as an HF directory."""
    path = Path(path)
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, **kwargs)
    (tokenizer or tiny_tokenizer()).save_pretrained(path)
    return path


@torch.no_grad()
def perturbed(model, *, seed: int, scale: float = 0.05, rank: int | None = None, only: str | None = None):
    """A copy of model whose matrices moved by a (low-rank plus noise, if rank) seeded update."""
    import copy

    out = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for name, param in out.named_parameters():
        if only is not None and only not in name:
            continue
        if param.ndim == 2 and rank:
            m, n = param.shape
            a = torch.randn(m, rank, generator=generator)
            b = torch.randn(rank, n, generator=generator)
            update = a @ b / (rank * n) ** 0.5 + 0.1 * torch.randn(m, n, generator=generator) / n**0.5
        else:
            update = torch.randn(param.shape, generator=generator)
        param.add_(scale * update.to(param.dtype))
    return out


def write_config(path: Path, **changes) -> None:
    """Edit keys of a saved config.json."""
    config_path = Path(path) / "config.json"
    config = json.loads(config_path.read_text())
    config.update(changes)
    config_path.write_text(json.dumps(config))


FINETUNES = ("useful", "harmful", "contaminated")


def make_cast(root: Path, arch: str = "qwen2", *, tie: bool = True, dtype=None, shard_size=None) -> dict[str, Path]:
    """base, aligned, safety and three fine-tunes of a tiny model, saved under root."""
    base = tiny_model(arch, tie=tie, seed=0)
    aligned = perturbed(base, seed=1, rank=3)
    cast = {"base": base, "aligned": aligned, "safety": perturbed(base, seed=2, rank=3)}
    for i, name in enumerate(FINETUNES):
        cast[name] = perturbed(aligned, seed=10 + i, scale=0.02, rank=2)
    return {name: save(model, root / name, dtype=dtype, shard_size=shard_size) for name, model in cast.items()}


def state(path: Path) -> dict[str, torch.Tensor]:
    """All stored tensors of a checkpoint directory."""
    from safetensors import safe_open

    out = {}
    for shard in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            out.update({key: handle.get_tensor(key) for key in handle.keys()})
    return out
