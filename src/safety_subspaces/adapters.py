"""PEFT LoRA adapters: a directory read lazily, seen as a fine-tune of its reference, and written back as an adapter.

A LoRA module of the weight W ([out, in]) stores lora_B [out, r] and lora_A [r, in]; its update is s · B · A with
s = lora_alpha / r (lora_alpha / √r under rsLoRA). `AdapterFinetune` reads like a `Checkpoint` of the merged model
W_ref + s B A (W_ref elsewhere), so every edit runs on an adapter unchanged; an edit with an adapter form (Safe LoRA:
B ← C B) is written back as an adapter by `write_adapter`, loadable by PEFT onto the reference model.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from .checkpoints import Checkpoint, file_hash, read_safetensors_header, read_tensor, write_safetensors
from .errors import UserError
from .files import read_json, staged_dir
from .model_dir import resolve_model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")
TOKENIZER_FILE = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template\..*|vocab\..*|"
                            r"merges\.txt|.*\.model|.*\.tiktoken)$")
UNSUPPORTED = {  # adapter_config keys whose non-default values change what a module's update is
    "use_dora": "DoRA adapters", "modules_to_save": "modules_to_save", "alpha_pattern": "alpha_pattern",
    "fan_in_fan_out": "fan_in_fan_out", "lora_bias": "lora_bias", "target_parameters": "target_parameters",
    "layer_replication": "layer_replication",
}


def is_adapter(ref: str | os.PathLike) -> bool:
    """Whether a local directory is a PEFT adapter (it holds adapter_config.json)."""
    return (Path(ref).expanduser() / ADAPTER_CONFIG).is_file()


def weight_name(module: str) -> str:
    """The weight a LoRA module adapts: base_model.model.model.layers.0.q_proj -> model.layers.0.q_proj.weight."""
    return (module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module) + ".weight"


@dataclass(frozen=True)
class LoraModule:
    """One LoRA module: the weight it adapts, the stored keys of its factors, its rank and scaling s."""

    weight: str
    key_a: str
    key_b: str
    rank: int
    scaling: float


class LoraAdapter:
    """A PEFT LoRA adapter directory: its config and modules, factors read one module at a time."""

    def __init__(self, ref: str | os.PathLike, *, role: str = "adapter"):
        self.role = role
        self.path = resolve_model(ref, role=role)
        self.config = read_json(self.path / ADAPTER_CONFIG, missing=f"{role} {self.path}: no {ADAPTER_CONFIG}", role=role)
        self._check_config()
        weights = self.path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise UserError(f"{role} {self.path}: no {ADAPTER_WEIGHTS} (only safetensors adapters are read)")
        self.file = weights
        self.infos = read_safetensors_header(weights, role=role)
        self.modules = self._modules()

    def _check_config(self) -> None:
        """Refuse adapters whose update is not s · B · A per module."""
        if self.config.get("peft_type", "LORA") != "LORA":
            raise UserError(f"{self.role} {self.path}: a {self.config.get('peft_type')} adapter; only LoRA adapters are read")
        if self.config.get("bias", "none") != "none":
            raise UserError(f"{self.role} {self.path}: trains biases (bias={self.config['bias']!r}); only bias='none' is read")
        for key, what in UNSUPPORTED.items():
            if self.config.get(key):
                raise UserError(f"{self.role} {self.path}: {what} ({key}) is not supported")

    def _modules(self) -> dict[str, LoraModule]:
        """The LoRA modules by the weight they adapt (keys checked: every module has both factors, of one rank)."""
        keys: dict[str, dict[str, str]] = {}
        for key in self.infos:
            match = LORA_KEY.match(key)
            if match is None:
                raise UserError(f"{self.role} {self.file}: tensor {key} is not a LoRA factor (lora_A/lora_B weights only)")
            keys.setdefault(match["module"], {})[match["side"]] = key
        alpha, rslora = float(self.config.get("lora_alpha", 8)), bool(self.config.get("use_rslora"))
        modules = {}
        for module, sides in sorted(keys.items()):
            if set(sides) != {"A", "B"}:
                raise UserError(f"{self.role} {self.file}: module {module} lacks lora_{'B' if 'A' in sides else 'A'}")
            shape_a, shape_b = self.infos[sides["A"]].shape, self.infos[sides["B"]].shape
            if len(shape_a) != 2 or len(shape_b) != 2 or shape_a[0] != shape_b[1]:
                raise UserError(f"{self.role} {self.file}: module {module} has factors of shapes {list(shape_b)} and "
                                f"{list(shape_a)}, not [out, r] and [r, in]")
            rank = int(shape_a[0])
            scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
            modules[weight_name(module)] = LoraModule(weight_name(module), sides["A"], sides["B"], rank, scaling)
        if not modules:
            raise UserError(f"{self.role} {self.file}: holds no LoRA module")
        return modules

    def factors(self, weight: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_B, lora_A) of the module adapting a weight, in their stored dtype."""
        module = self.modules[weight]
        return (read_tensor(self.infos[module.key_b], role=self.role), read_tensor(self.infos[module.key_a], role=self.role))

    def update(self, weight: str, rows: slice = slice(None)) -> torch.Tensor:
        """s · B · A of one module (or the rows of it that B's rows give), in float32."""
        b, a = self.factors(weight)
        return self.modules[weight].scaling * (b[rows].float() @ a.float())

    def fingerprint(self) -> str:
        """A content fingerprint of the factors and the config."""
        digest = hashlib.blake2b(digest_size=16)
        for path in (self.path / ADAPTER_CONFIG, self.file):
            digest.update(file_hash(path).encode())
        return digest.hexdigest()


class AdapterFinetune:
    """A LoRA fine-tune read like a Checkpoint of its merged weights: W_ref + s B A on the adapter's modules."""

    def __init__(self, adapter: LoraAdapter, reference: Checkpoint):
        self.adapter, self.reference = adapter, reference
        self.role, self.path, self.ref = adapter.role, adapter.path, str(adapter.path)
        self.config, self.infos, self.aliases = reference.config, reference.infos, reference.aliases
        for weight, module in adapter.modules.items():
            if weight not in reference.infos or weight in reference.aliases:
                raise UserError(f"{adapter.role} {adapter.path}: adapts {weight}, which {reference.role} does not store")
            b_shape, a_shape = adapter.infos[module.key_b].shape, adapter.infos[module.key_a].shape
            if tuple(reference.infos[weight].shape) != (b_shape[0], a_shape[1]):
                raise UserError(f"{adapter.role}: module {weight} is [{b_shape[0]}, {a_shape[1]}] but {reference.role} "
                                f"stores it as {list(reference.infos[weight].shape)}; give the model the adapter was trained on")

    @property
    def names(self) -> list[str]:
        """The reference's canonical tensor names."""
        return self.reference.names

    @property
    def targets(self) -> list[str]:
        """The weights the adapter adapts."""
        return list(self.adapter.modules)

    def read(self, name: str) -> torch.Tensor:
        """W_ref + s B A in float32 on an adapted weight; W_ref as stored elsewhere."""
        return self.read_rows(name, slice(None))

    def read_rows(self, name: str, rows: slice) -> torch.Tensor:
        """Rows (along dim 0) of read(name)."""
        weight = self.reference.read_rows(name, rows)
        if name not in self.adapter.modules:
            return weight
        return weight.float() + self.adapter.update(name, rows)

    def fingerprint(self) -> str:
        """The adapter's fingerprint joined with the reference's."""
        return hashlib.blake2b(f"{self.adapter.fingerprint()}|{self.reference.fingerprint()}".encode(),
                               digest_size=16).hexdigest()

    def close(self) -> None:
        """Nothing is held beyond the reference's memo."""

    def __repr__(self) -> str:
        return f"AdapterFinetune({self.role}={self.path} on {self.reference.role}, {len(self.targets)} modules)"


def open_finetune(ref: str | os.PathLike, reference: Checkpoint, *, role: str, allow_pickle: bool = False,
                  trust_remote_code: bool = False) -> Checkpoint | AdapterFinetune:
    """A fine-tune directory: a PEFT LoRA adapter of the reference (merged view) or a full checkpoint."""
    if is_adapter(ref):
        return AdapterFinetune(LoraAdapter(ref, role=role), reference)
    return Checkpoint(ref, role=role, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


def tokenizer_files(directory: Path) -> list[Path]:
    """The tokenizer and chat-template files of a model or adapter directory."""
    return [path for path in sorted(Path(directory).iterdir()) if path.is_file() and TOKENIZER_FILE.match(path.name)]


def write_adapter(out: Path, adapter: LoraAdapter, factors: Iterable[tuple[str, tuple[torch.Tensor, torch.Tensor]]], *,
                  tokenizer_from: Path, extra_files: Mapping[str, str | Callable[[], str]] | None = None) -> Path:
    """Write an adapter like `adapter` with new (B, A) per adapted weight, atomically: its config, its tokenizer files
    (or those of tokenizer_from when it has none) and extra files (a callable's text is asked once the weights are
    written); loadable by PEFT onto the same reference."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output directory {out} exists and is not empty")
    tensors: dict[str, torch.Tensor] = {}
    for weight, (b, a) in factors:
        module = adapter.modules[weight]
        tensors[module.key_b] = b.to(adapter.infos[module.key_b].dtype).contiguous()
        tensors[module.key_a] = a.to(adapter.infos[module.key_a].dtype).contiguous()
    missing = sorted(set(adapter.infos) - set(tensors))
    if missing:
        raise ValueError(f"the new adapter lacks {missing[0]}")
    with staged_dir(out) as stage:
        write_safetensors(stage / ADAPTER_WEIGHTS, {key: tensors[key] for key in adapter.infos}, {"format": "pt"})
        shutil.copyfile(adapter.path / ADAPTER_CONFIG, stage / ADAPTER_CONFIG)
        for path in tokenizer_files(adapter.path) or tokenizer_files(tokenizer_from):
            shutil.copyfile(path, stage / path.name)
        for name, text in (extra_files or {}).items():
            (stage / name).write_text(text() if callable(text) else text, encoding="utf-8")
    return out
