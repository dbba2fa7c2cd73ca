"""Resolve model references (local directories or hub ids) and load models and tokenizers safely."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import read_json
from .progress import library_bars

SNAPSHOT_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "*.jinja",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "*.txt",
]


def resolve_model(ref: str | os.PathLike, *, role: str = "model", allow_download: bool = True) -> Path:
    """Return a local directory for a model reference: a path as is, or a hub id downloaded to the HF cache."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{role} {ref}: expected a model directory, got a file")
        return path
    text = str(ref)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not (allow_download and looks_like_hub_id):
        raise UserError(f"{role} {ref}: no such directory")
    try:
        from huggingface_hub import snapshot_download

        with library_bars():
            return Path(snapshot_download(text, allow_patterns=SNAPSHOT_PATTERNS))
    except Exception as exc:  # network, auth, missing repo: all user-fixable
        raise UserError(f"{role} {ref}: not a local directory and could not be downloaded from the hub ({type(exc).__name__})") from None


def read_config(model_dir: Path, *, role: str = "model") -> dict[str, Any]:
    """Read config.json of a model directory."""
    return read_json(Path(model_dir) / "config.json", missing=f"{role} {model_dir}: no config.json", role=role)


def needs_remote_code(config: dict[str, Any]) -> bool:
    """Whether a config names custom modelling code (auto_map) or a model type transformers does not know."""
    if config.get("auto_map"):
        return True
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    return model_type is not None and model_type not in CONFIG_MAPPING_NAMES


def check_remote_code(model_dir: Path, *, trust_remote_code: bool = False, role: str = "model") -> None:
    """Refuse a model that needs remote code unless the user asked for it."""
    config = read_config(model_dir, role=role)
    if needs_remote_code(config) and not trust_remote_code:
        raise UserError(
            f"{role} {model_dir} needs remote code (model_type={config.get('model_type')!r}); "
            "pass --trust-remote-code if you trust it"
        )


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


def safetensors_only(model_dir: Path, *, role: str, allow_pickle: bool) -> bool:
    """Whether a model directory is read from safetensors; a pickle-only one needs allow_pickle (UserError otherwise)."""
    from .checkpoints import weight_files

    _, fmt = weight_files(Path(model_dir), role=role, allow_pickle=allow_pickle)
    return fmt == "safetensors"


def check_finite_weights(model, *, role: str, where: os.PathLike | str) -> None:
    """Refuse a loaded model with a NaN or Inf weight, naming the tensor (checked in chunks)."""
    from .checkpoints import all_finite

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not all_finite(tensor):
            raise UserError(f"{role}: tensor {name} in {where} contains NaN or Inf")


def default_device() -> str:
    """cuda when available, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
