"""A model reference as a local directory: hub download, config.json, the remote-code check, weight files and format."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import read_json, read_text
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
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")


def looks_like_hub_id(text: str) -> bool:
    """Whether a reference that is not a local path reads as a hub id (owner/name)."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def resolve_model(ref: str | os.PathLike, *, role: str = "model", allow_download: bool = True) -> Path:
    """Return a local directory for a model reference: a path as is, or a hub id downloaded to the HF cache."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{role} {ref}: expected a model directory, got a file")
        return path
    text = str(ref)
    if not (allow_download and looks_like_hub_id(text)):
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


def safetensors_only(model_dir: Path, *, role: str, allow_pickle: bool) -> bool:
    """Whether a model directory is read from safetensors; a pickle-only one needs allow_pickle (UserError otherwise)."""
    _, fmt = weight_files(Path(model_dir), role=role, allow_pickle=allow_pickle)
    return fmt == "safetensors"


def weight_files(model_dir: Path, *, role: str, allow_pickle: bool) -> tuple[list[Path], str]:
    """The weight files of a model directory and their format ('safetensors' or 'pickle')."""
    for index_name, fmt in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "pickle")):
        index = model_dir / index_name
        if index.exists() and (fmt == "safetensors" or not list(model_dir.glob("*.safetensors"))):
            try:
                shards = set(json.loads(read_text(index, what=role))["weight_map"].values())
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise UserError(f"{role}: {index} is not a valid shard index") from None
            outside = [s for s in shards if not isinstance(s, str) or Path(s).name != s or s in ("", ".", "..")]
            if outside:
                raise UserError(f"{role}: {index} lists shard {outside[0]!r}, which is not a file name in {model_dir}")
            files = sorted(model_dir / shard for shard in shards)
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise UserError(f"{role}: shard(s) listed in {index.name} are missing: {', '.join(missing)}")
            return _allow(files, fmt, role=role, allow_pickle=allow_pickle)
    safetensors = sorted(model_dir.glob("*.safetensors"))
    if safetensors:
        return safetensors, "safetensors"
    pickles = sorted(p for p in model_dir.glob("*.bin") if "training_args" not in p.name) + sorted(model_dir.glob("*.pt"))
    if pickles:
        return _allow(pickles, "pickle", role=role, allow_pickle=allow_pickle)
    raise UserError(f"{role}: no weights (*.safetensors) in {model_dir}")


def _allow(files: list[Path], fmt: str, *, role: str, allow_pickle: bool) -> tuple[list[Path], str]:
    """Refuse pickle weights unless the user allowed them."""
    if fmt == "pickle" and not allow_pickle:
        raise UserError(
            f"{role}: {files[0].parent} holds only pickle weights ({files[0].name}); "
            "pass --allow-pickle to load them with torch.load(weights_only=True)"
        )
    return files, fmt
