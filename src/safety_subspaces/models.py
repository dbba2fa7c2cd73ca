"""Load causal LMs and tokenizers safely (references resolved by model_dir: no remote code, no pickle unless asked)."""

from __future__ import annotations

import os
from typing import Any

from .errors import UserError
from .model_dir import check_remote_code, resolve_model, safetensors_only
from .progress import library_bars


def torch_dtype(name: str | None):
    """Map 'auto'/'float32'/'bf16'/... to a torch dtype (None for auto)."""
    import torch

    if name in (None, "auto"):
        return None
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return dtype


def load_tokenizer(ref: str | os.PathLike, *, trust_remote_code: bool = False, role: str = "model"):
    """Load a tokenizer from a model reference, with left padding and a pad token set."""
    from transformers import AutoTokenizer

    model_dir = resolve_model(ref, role=role)
    check_remote_code(model_dir, trust_remote_code=trust_remote_code, role=role)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"{role} {ref}: no usable tokenizer ({str(exc).splitlines()[0][:200]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    ref: str | os.PathLike,
    *,
    dtype: str | None = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    role: str = "model",
):
    """Load a causal LM in eval mode from a local directory or hub id (no remote code, no pickle unless asked).

    Pickle-only checkpoints need allow_pickle (they are then read with torch.load(weights_only=True)); a NaN or Inf
    weight is a UserError naming the tensor.
    """
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model(ref, role=role)
    check_remote_code(model_dir, trust_remote_code=trust_remote_code, role=role)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": safetensors_only(
        model_dir, role=role, allow_pickle=allow_pickle)}
    resolved = torch_dtype(dtype)
    kwargs["dtype"] = resolved if resolved is not None else "auto"
    try:
        with library_bars():  # transformers' "Loading weights" bar only where ours are live
            model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"{role} {ref}: could not load ({str(exc).splitlines()[0][:200]})") from None
    check_finite_weights(model, role=role, where=model_dir)
    if device:
        model.to(device)
    model.eval()
    return model



def check_finite_weights(model, *, role: str, where: os.PathLike | str) -> None:
    """Refuse a loaded model with a NaN or Inf weight, naming the tensor (checked in chunks)."""
    from .linalg import all_finite

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not all_finite(tensor):
            raise UserError(f"{role}: tensor {name} in {where} contains NaN or Inf")


