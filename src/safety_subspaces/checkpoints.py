"""Lazy per-tensor access to (sharded) safetensors checkpoints, tied weights, fingerprints, and an atomic sharded writer."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from .errors import UserError
from .files import atomic_write_chunks, atomic_write_text, staged_dir
from .linalg import all_finite
from .memo import TensorMemo
from .model_dir import WEIGHT_SUFFIXES, check_remote_code, read_config, resolve_model, weight_files

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
}
OUTPUT_EMBEDDING_NAMES = ("lm_head.weight", "embed_out.weight", "output.weight")
INPUT_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight", "tok_embeddings.weight")
LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
DEFAULT_SHARD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class TensorInfo:
    """Where a stored tensor lives and what it is."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    offset: int = -1  # absolute byte offset of the data in a safetensors file (-1: not a safetensors tensor)

    @property
    def nbytes(self) -> int:
        """Stored size in bytes."""
        numel = 1
        for side in self.shape:
            numel *= side
        return numel * torch.empty((), dtype=self.dtype).element_size()


def layer_index(name: str) -> int | None:
    """The decoder block index in a tensor name (model.layers.7.mlp... -> 7), None outside blocks."""
    match = LAYER_PATTERN.search(name)
    return int(match.group(1)) if match else None


def module_pattern(pattern: str | None, where: str) -> Callable[[str], bool]:
    """A predicate for a modules regular expression (None: every name)."""
    if pattern is None:
        return lambda name: True
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"{where}: modules {pattern!r} is not a valid regular expression ({exc})") from None
    return lambda name: compiled.search(name) is not None


def is_decoder_matrix(name: str, shape: Sequence[int]) -> bool:
    """Whether a tensor is a 2-D weight inside a decoder block (a defence's default modules)."""
    return len(shape) == 2 and layer_index(name) is not None


@dataclass(frozen=True)
class TensorFilter:
    """Which tensors a projection touches: a name regex and/or decoder layer indices (all by default)."""

    pattern: str | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise UserError(f"--tensors {self.pattern!r} is not a valid regular expression ({exc})") from None

    @classmethod
    def of(cls, tensors: str | None, layers: Sequence[int] | None) -> "TensorFilter":
        """A filter from CLI-style options (layers as any sequence)."""
        return cls(tensors, tuple(layers) if layers is not None else None)

    def __call__(self, name: str) -> bool:
        """Whether a tensor is selected."""
        if self.pattern is not None and not re.search(self.pattern, name):
            return False
        if self.layers is not None and layer_index(name) not in self.layers:
            return False
        return True

    def describe(self) -> str:
        """A short human description."""
        parts = []
        if self.pattern:
            parts.append(f"tensors ~ /{self.pattern}/")
        if self.layers is not None:
            parts.append("layers " + ",".join(map(str, self.layers)))
        return "; ".join(parts) or "all tensors"


def read_safetensors_header(path: Path, *, role: str) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header (a truncated or corrupt file is a UserError)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise UserError(f"{role}: {path} is truncated or not a safetensors file")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size <= 0 or 8 + header_size > size:
                raise UserError(f"{role}: {path} is truncated or corrupt (bad header size)")
            header = json.loads(handle.read(header_size))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{role}: {path} is corrupt (unreadable safetensors header)") from None
    except OSError as exc:
        raise UserError(f"{role}: cannot read {path} ({exc.strerror})") from None
    if not isinstance(header, dict):
        raise UserError(f"{role}: {path} is corrupt (header is not an object)")
    infos: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        check_tensor_name(name, path, role=role)
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            shape = tuple(int(side) for side in entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{role}: {path} is corrupt (bad entry for {name})") from None
        if dtype is None:
            raise UserError(f"{role}: {path} stores {name} as {entry['dtype']}, which this torch cannot read")
        data_end = max(data_end, end)
        infos[name] = TensorInfo(name, shape, dtype, path, 8 + header_size + begin)
        if end - begin != infos[name].nbytes:
            raise UserError(f"{role}: {path} is corrupt ({name}: size does not match its shape)")
    if 8 + header_size + data_end > size:
        raise UserError(f"{role}: {path} is truncated ({size} bytes, header promises {8 + header_size + data_end})")
    return infos


def check_tensor_name(name: str, path: Path, *, role: str) -> None:
    """Refuse a stored tensor name that could act as a path (tensor names name files of the SVD cache)."""
    if not name or "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
        raise UserError(f"{role}: {path} stores a tensor named {name!r}, which is not a valid tensor name")



class Checkpoint:
    """A model directory read one tensor at a time; tied weights appear once under their canonical name."""

    def __init__(self, ref: str | os.PathLike, *, role: str = "model", allow_pickle: bool = False,
                 trust_remote_code: bool = False, check_finite: bool = True, keep_bytes: int = 0):
        self.role = role
        self.ref = str(ref)
        self.path = resolve_model(ref, role=role)
        self.config = read_config(self.path, role=role)
        check_remote_code(self.path, trust_remote_code=trust_remote_code, role=role)
        self.files, self.format = weight_files(self.path, role=role, allow_pickle=allow_pickle)
        self.check_finite = check_finite
        self._pickled: dict[str, torch.Tensor] = {}
        self._checked: set[str] = set()
        self._swept: dict[str, int] = {}  # rows checked finite so far, for tensors read in row blocks
        self.memo = TensorMemo(keep_bytes)  # recently read tensors (callers must not modify what read returns)
        self.infos = self._read_infos()
        self.aliases = detect_tied(self.infos, self.config)
        self._fingerprint: str | None = None

    def _read_infos(self) -> dict[str, TensorInfo]:
        """Names, shapes and dtypes of every stored tensor."""
        infos: dict[str, TensorInfo] = {}
        if self.format == "safetensors":
            for path in self.files:
                infos.update(read_safetensors_header(path, role=self.role))
            return infos
        for path in self.files:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise UserError(f"{self.role}: cannot load {path.name} with weights_only=True ({type(exc).__name__})") from None
            for name, tensor in state.items():
                if isinstance(tensor, torch.Tensor):
                    check_tensor_name(str(name), path, role=self.role)
                    self._pickled[name] = tensor
                    infos[name] = TensorInfo(name, tuple(tensor.shape), tensor.dtype, path)
        return infos

    @property
    def names(self) -> list[str]:
        """Canonical tensor names (tied aliases removed), in sorted order."""
        return sorted(name for name in self.infos if name not in self.aliases)

    def read(self, name: str) -> torch.Tensor:
        """One tensor in its stored dtype (a NaN/Inf entry is a UserError naming it); treat it as read-only."""
        if name not in self.infos:
            raise UserError(f"{self.role}: tensor {name} is missing from {self.path}")
        return self.memo.get(name, lambda: self._load(name))

    def read_rows(self, name: str, rows: slice) -> torch.Tensor:
        """Rows (along dim 0) of one tensor in its stored dtype, read alone (the whole tensor for slice(None)).

        A NaN/Inf entry is a UserError naming the tensor; its finiteness counts as checked once every row was read in
        order. Treat the result as read-only.
        """
        if rows == slice(None):
            return self.read(name)
        if name not in self.infos:
            raise UserError(f"{self.role}: tensor {name} is missing from {self.path}")
        held = self.memo.peek(name)
        if held is not None:
            return held[rows]
        info = self.infos[name]
        part = self._pickled[name][rows].clone() if self.format == "pickle" else read_tensor(info, role=self.role, rows=rows)
        if self.check_finite and name not in self._checked and part.is_floating_point():
            if not all_finite(part):
                raise UserError(f"{self.role}: tensor {name} in {self.path} contains NaN or Inf")
            if self._swept.get(name, 0) == rows.start:
                self._swept[name] = rows.stop
                if rows.stop >= info.shape[0]:
                    self._checked.add(name)
        return part

    def _load(self, name: str) -> torch.Tensor:
        """Read one tensor from disk, checking it is finite the first time."""
        if self.format == "pickle":
            tensor = self._pickled[name].clone()
        else:
            tensor = read_tensor(self.infos[name], role=self.role)
        if self.check_finite and name not in self._checked and tensor.is_floating_point():
            if not all_finite(tensor):
                raise UserError(f"{self.role}: tensor {name} in {self.path} contains NaN or Inf")
            self._checked.add(name)
        return tensor

    def fingerprint(self) -> str:
        """A content fingerprint of the weights (file hashes memoised by path, size and mtime)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            for path in self.files:
                digest.update(path.name.encode())
                digest.update(file_hash(path).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def close(self) -> None:
        """Drop the weights of a pickle checkpoint and the memo."""
        self._pickled.clear()
        self.memo.clear()

    def __repr__(self) -> str:
        return f"Checkpoint({self.role}={self.path}, {len(self.names)} tensors)"



def stored_state(reference: Checkpoint, weight_of: Callable[[str], torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, weight_of(name)) for every canonical tensor of the reference's layout, each tied alias right after its
    tensor with a copy of it (shards cannot share storage)."""
    for canonical in reference.names:
        tensor = weight_of(canonical)
        yield canonical, tensor
        for alias in sorted(a for a, c in reference.aliases.items() if c == canonical):
            yield alias, tensor.clone()


def read_tensor(info: TensorInfo, *, role: str, rows: slice = slice(None)) -> torch.Tensor:
    """One safetensors tensor (or rows of it along dim 0) read with plain file I/O (no memory map, so it leaves nothing
    resident once freed)."""
    start, stop, _ = rows.indices(info.shape[0]) if info.shape else (0, 1, 1)
    row_bytes = info.nbytes // info.shape[0] if info.shape and info.shape[0] else info.nbytes
    size = (stop - start) * row_bytes
    buffer = torch.empty(size, dtype=torch.uint8)
    try:
        with open(info.file, "rb") as handle:
            handle.seek(info.offset + start * row_bytes)
            if handle.readinto(memoryview(buffer.numpy())) != size:
                raise UserError(f"{role}: {info.file} is truncated (tensor {info.name})")
    except OSError as exc:
        raise UserError(f"{role}: cannot read {info.file} ({exc.strerror})") from None
    if sys.byteorder != "little" and info.dtype.itemsize > 1:
        raise UserError("reading safetensors needs a little-endian machine")
    return buffer.view(info.dtype).reshape((stop - start, *info.shape[1:]) if info.shape else ())


def detect_tied(infos: Mapping[str, TensorInfo], config: Mapping[str, object]) -> dict[str, str]:
    """Map a stored output embedding to the input embedding it is tied to (alias -> canonical), per the config."""
    tie = config.get("tie_word_embeddings")
    text_config = config.get("text_config")
    if tie is None and isinstance(text_config, Mapping):
        tie = text_config.get("tie_word_embeddings")
    inputs = [name for name in infos if name.endswith(INPUT_EMBEDDING_SUFFIXES)]
    outputs = [name for name in OUTPUT_EMBEDDING_NAMES if name in infos]
    if tie is True and inputs and outputs:
        return {outputs[0]: inputs[0]}
    return {}  # untied, or tied with the output embedding not stored: every stored tensor counts once


def file_hash(path: Path) -> str:
    """blake2b of a file's bytes, memoised in the cache home by (path, size, mtime).

    SHA-256 is 2.3 x faster where the CPU has SHA instructions (BENCHMARKS.md), but changing the digest would change
    every run identity and refuse to resume the runs made before; it is kept.
    """
    from .paths import home

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = home() / "file-hashes.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, not UTF-8 or not JSON: start afresh
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    try:
        atomic_write_text(memo_path, json.dumps(memo))
    except (OSError, UserError):
        pass  # the memo is an optimisation only
    return memo[key]


def check_compatible(checkpoints: Mapping[str, Checkpoint]) -> list[str]:
    """Compare names, shapes and architectures across all inputs; return the shared canonical names."""
    items = list(checkpoints.items())
    (first_role, first), rest = items[0], items[1:]
    for role, other in rest:
        archs = (first.config.get("architectures"), other.config.get("architectures"))
        types = (first.config.get("model_type"), other.config.get("model_type"))
        if types[0] != types[1] or (archs[0] and archs[1] and archs[0] != archs[1]):
            raise UserError(f"mismatched architectures: {first_role} is {archs[0] or types[0]}, {role} is {archs[1] or types[1]}")
        missing = sorted(set(first.names) - set(other.names))
        extra = sorted(set(other.names) - set(first.names))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{role} lacks {_listing(missing)}")
            if extra:
                parts.append(f"{role} has extra {_listing(extra)}")
            raise UserError(f"mismatched tensors between {first_role} and {role}: " + "; ".join(parts))
        mismatched = [
            f"{name} {list(first.infos[name].shape)} vs {list(other.infos[name].shape)}"
            for name in first.names
            if first.infos[name].shape != other.infos[name].shape
        ]
        if mismatched:
            raise UserError(f"mismatched shapes between {first_role} and {role}: {_listing(mismatched)}")
    return first.names


def _listing(items: list[str], limit: int = 6) -> str:
    """A short comma-separated list with a count of the rest."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def model_files_to_copy(model_dir: Path) -> list[Path]:
    """Non-weight files of a model directory (config, generation config, tokenizer, chat template)."""
    keep = []
    for path in sorted(Path(model_dir).iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".index.json"):
            continue
        keep.append(path)
    return keep


def safetensors_chunks(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Iterator[bytes | memoryview]:
    """A safetensors file as byte chunks: the length-prefixed header, then each tensor's bytes (views, not copies)."""
    names = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items() if dtype is not None}
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    flat, offset = [], 0
    for name, tensor in tensors.items():
        if tensor.dtype not in names:
            raise ValueError(f"safetensors cannot store {name} as {tensor.dtype}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + data.numel()]}
        flat.append(data)
        offset += data.numel()
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    yield struct.pack("<Q", len(text)) + text
    for data in flat:
        yield memoryview(data.numpy())


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors as one safetensors file atomically, streaming each tensor's bytes (no whole-file copy in memory)."""
    atomic_write_chunks(path, safetensors_chunks(tensors, metadata))


@dataclass
class ShardedWriter:
    """Accumulates tensors into safetensors shards of at most shard_bytes; finish() writes the index."""

    directory: Path
    shard_bytes: int = DEFAULT_SHARD_BYTES
    metadata: dict[str, str] = field(default_factory=lambda: {"format": "pt"})
    _pending: dict[str, torch.Tensor] = field(default_factory=dict)
    _pending_bytes: int = 0
    _shards: list[list[str]] = field(default_factory=list)
    _total_bytes: int = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; flushes a shard when full."""
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().contiguous().cpu()
        self._pending_bytes += size
        self._total_bytes += size

    def _flush(self) -> None:
        """Write the pending tensors as the next shard."""
        if not self._pending:
            return
        write_safetensors(self.directory / f"shard-{len(self._shards):05d}.tmp", self._pending, self.metadata)
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> list[Path]:
        """Name the shards model(-0000i-of-0000N).safetensors and write the index if sharded."""
        self._flush()
        count = len(self._shards)
        names = (
            ["model.safetensors"] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        for index, final in enumerate(names):
            os.replace(self.directory / f"shard-{index:05d}.tmp", self.directory / final)
        if count > 1:
            weight_map = {tensor: names[i] for i, tensors in enumerate(self._shards) for tensor in tensors}
            index = {"metadata": {"total_size": self._total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return [self.directory / name for name in names]


def write_checkpoint(
    out_dir: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    template: Checkpoint,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    extra_files: Mapping[str, str | Callable[[], str]] | None = None,
) -> Path:
    """Write a complete HF checkpoint atomically: weights as given, other files copied from template's directory.

    An extra file's text may be a callable, asked once every tensor is written (a note about what was written).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"model output {out_dir} exists and is not empty")
    with staged_dir(out_dir) as stage:
        writer = ShardedWriter(stage, shard_bytes=shard_bytes)
        for name, tensor in tensors:
            writer.add(name, tensor)
        writer.finish()
        for path in model_files_to_copy(template.path):
            shutil.copyfile(path, stage / path.name)  # content only: the copy's mode follows the umask
        for name, text in (extra_files or {}).items():
            (stage / name).write_text(text() if callable(text) else text, encoding="utf-8")
    return out_dir
