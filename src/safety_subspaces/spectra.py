"""Spectra of difference tensors (W_x - W_y per tensor), computed once and cached on disk by checkpoint fingerprints.

The cache root holds one entry (directory) per (minuend, subtrahend, method[, factor dtype]): a spectrum file per
tensor, derived frames under frames/, meta.json and .last-used (touched by every process that uses the entry).
Whole entries are evicted least recently used first when the root outgrows its budget
($SAFETY_SUBSPACES_CACHE_BUDGET GB, default 20; `--cache-budget`), at the end of each command; entries in use by
the command are kept. Factors are stored in float32, or in float16 ($SAFETY_SUBSPACES_CACHE_DTYPE, `--cache-dtype`):
half the disk, at a rounding error E = U16 - U that each file records (||E||_F); every parallel energy then moves by
at most (2||E||_F + ||E||_F^2) ||Δ_T||^2, so energy_kept by at most 2||E||_F + ||E||_F^2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch

from . import linalg
from .profiling import stage
from .checkpoints import Checkpoint, write_safetensors
from .errors import UserError
from .files import atomic_write_text
from .paths import svd_cache_dir

CACHE_VERSION = "2"  # 2: float64 decompositions, numerically zero directions left out (rank columns)
BUDGET_ENV = "SAFETY_SUBSPACES_CACHE_BUDGET"  # GB the cache root may hold (LRU eviction beyond)
DTYPE_ENV = "SAFETY_SUBSPACES_CACHE_DTYPE"  # float32 (default) or float16: how left factors are stored
DEFAULT_BUDGET_GB = 20.0
FACTOR_DTYPES = {"float32": torch.float32, "float16": torch.float16}
LAST_USED = ".last-used"
ENTRY_NAME = re.compile(r"[0-9a-f]{24}")  # an entry's directory name: its 12-byte blake2b key in hex
T = TypeVar("T")
_IN_USE: set[Path] = set()  # cache entries this process has used (never evicted by it)


def cache_budget_bytes() -> int:
    """The cache budget in bytes: $SAFETY_SUBSPACES_CACHE_BUDGET GB, or DEFAULT_BUDGET_GB."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return int(DEFAULT_BUDGET_GB * 1024**3)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserError(f"{BUDGET_ENV}={text!r}: expected a size in GB (a number >= 0)")
    return int(value * 1024**3)


def factor_dtype_name() -> str:
    """How left factors are stored: $SAFETY_SUBSPACES_CACHE_DTYPE (float32 or float16), default float32."""
    name = os.environ.get(DTYPE_ENV, "").strip() or "float32"
    if name not in FACTOR_DTYPES:
        raise UserError(f"{DTYPE_ENV}={name!r}: expected one of {', '.join(FACTOR_DTYPES)}")
    return name


@dataclass(frozen=True)
class Spectrum:
    """Left singular vectors (m x rank), singular values (rank,) and the exact ||M||_F^2 of one matrix.

    rank is the numerical rank; rank_bound is r = min(m, n) (None: the columns are all r directions).
    """

    left: torch.Tensor
    singular: torch.Tensor
    total: float
    rank_bound: int | None = None
    factor_error: float = 0.0  # ||U_stored - U||_F when the factor was stored in half precision

    @property
    def rank(self) -> int:
        """The numerical rank: how many directions the basis holds."""
        return int(self.left.shape[1])

    @property
    def r(self) -> int:
        """r = min(m, n) of the decomposed matrix."""
        return self.rank if self.rank_bound is None else self.rank_bound

    @property
    def null_dirs(self) -> int:
        """r - rank: the numerically zero directions left out of the basis."""
        return self.r - self.rank

    @property
    def is_zero(self) -> bool:
        """Whether the difference is exactly zero (an empty basis)."""
        return self.rank == 0


def null_dirs_summary(ranks: Mapping[str, tuple[int, int]]) -> dict:
    """The account of numerically zero directions from {tensor: (rank, r)}: the rule, counts, and r - rank by tensor."""
    deficient = {name: r - rank for name, (rank, r) in ranks.items() if rank < r}
    return {
        "rule": linalg.RANK_RULE,
        "tensors": len(ranks),
        "tensors_with_null_dirs": len(deficient),
        "zero_tensors": sum(1 for rank, _ in ranks.values() if rank == 0),
        "null_dirs": sum(deficient.values()),
        "by_tensor": deficient,
    }


def difference(minuend: Checkpoint, subtrahend: Checkpoint, name: str, *, device: str = "cpu",
               rows: slice = slice(None)) -> torch.Tensor:
    """W_minuend - W_subtrahend for one tensor (or rows of it along dim 0), in float32 from the stored dtypes (no
    whole fp32 temporary)."""
    # the stored minuend is freed before the subtrahend's is read
    with stage("read"):
        return subtract_rows(float_rows(minuend, name, rows, device), subtrahend, name, rows)


def float_rows(checkpoint: Checkpoint, name: str, rows: slice = slice(None), device: str = "cpu") -> torch.Tensor:
    """Rows (along dim 0) of a stored tensor as a new contiguous float32 tensor (so its flat chunks are views)."""
    return checkpoint.read_rows(name, rows).to(device=device, dtype=torch.float32, copy=True,
                                               memory_format=torch.contiguous_format)


def subtract_rows(result: torch.Tensor, subtrahend: Checkpoint | torch.Tensor, name: str = "",
                  rows: slice = slice(None)) -> torch.Tensor:
    """result -= the subtrahend's rows (a checkpoint's, or a float32 tensor), in place, chunk by chunk in float32."""
    part = subtrahend if isinstance(subtrahend, torch.Tensor) else subtrahend.read_rows(name, rows)
    for out, chunk in linalg.flat_chunks(result, part):
        out -= chunk.to(device=result.device, dtype=torch.float32)
    return result


class SpectrumCache:
    """Left factors of (minuend - subtrahend) per tensor, on disk under a key of both fingerprints and the method."""

    def __init__(self, minuend: Checkpoint, subtrahend: Checkpoint, *, root: Path | None = None,
                 method: str = "auto", device: str = "cpu"):
        self.minuend, self.subtrahend = minuend, subtrahend
        self.method, self.device = method, device
        self.factor_dtype = factor_dtype_name()
        cache_budget_bytes()  # a malformed budget is refused before anything is computed, not at the end
        parts = [CACHE_VERSION, minuend.fingerprint(), subtrahend.fingerprint(), method]
        parts += [self.factor_dtype] if self.factor_dtype != "float32" else []  # float32 keys are unchanged
        key = hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()
        self.directory = Path(root or svd_cache_dir()) / key
        self._touched = False
        self.computed = 0  # decompositions done by this object (a warm cache does none)
        self.reused = 0

    def _path(self, name: str) -> Path:
        """Cache file of one tensor."""
        return self.directory / f"{name}.safetensors"

    def touch(self) -> None:
        """Mark the entry used now (once per object; LRU order) and in use by this process."""
        if self._touched:
            return
        _IN_USE.add(self.directory)
        if self.directory.is_dir():
            (self.directory / LAST_USED).touch()
            self._touched = True

    def load(self, name: str) -> Spectrum | None:
        """The cached spectrum of a tensor, or None (an unreadable entry counts as missing)."""
        path = self._path(name)
        if path.exists():
            self.touch()

        def spectrum(handle) -> Spectrum:
            meta = handle.metadata()
            return Spectrum(handle.get_tensor("left").float(), handle.get_tensor("singular"), float(meta["total"]),
                            int(meta["rank_bound"]), float(meta.get("factor_error", 0.0)))

        return read_entry(path, spectrum)

    def store(self, name: str, spectrum: Spectrum) -> None:
        """Write one tensor's spectrum atomically (its left factor in the cache's factor dtype)."""
        stored = spectrum.left.to(FACTOR_DTYPES[self.factor_dtype])
        with stage("cache"):
            write_safetensors(
                self._path(name), {"left": stored, "singular": spectrum.singular},
                {"total": repr(spectrum.total), "rank_bound": str(spectrum.r), "name": name,
                 "factor_error": repr(spectrum.factor_error)},
            )
        meta = self.directory / "meta.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps({
                "minuend": str(self.minuend.path), "subtrahend": str(self.subtrahend.path),
                "minuend_fingerprint": self.minuend.fingerprint(),
                "subtrahend_fingerprint": self.subtrahend.fingerprint(), "method": self.method,
                "factor_dtype": self.factor_dtype,
            }, indent=2))
        self.touch()

    def get(self, name: str, delta: torch.Tensor | None = None) -> Spectrum:
        """The spectrum of a tensor's difference: from the cache, or decomposed once and stored."""
        cached = self.load(name)
        if cached is not None:
            self.reused += 1
            return cached
        if delta is None:
            delta = difference(self.minuend, self.subtrahend, name, device=self.device)
        with stage("decompose"):
            left, singular = linalg.left_singular(delta, method=self.method)
            left = left.cpu()
            error = 0.0
            if self.factor_dtype != "float32":  # use what later runs will read back, so results never depend on it
                rounded = left.to(FACTOR_DTYPES[self.factor_dtype]).float()
                error, left = float(torch.linalg.matrix_norm(rounded.double() - left.double())), rounded
            spectrum = Spectrum(left, singular.cpu(), linalg.frobenius_sq(delta), linalg.matrix_rank_bound(delta.shape),
                                error)
        self.store(name, spectrum)
        self.computed += 1
        return spectrum

    def _frame_path(self, name: str, key: str) -> Path:
        """Cache file of a frame derived from one tensor's spectrum (key: kind, seed and width)."""
        return self.directory / "frames" / f"{name}.{key}.safetensors"

    def load_frame(self, name: str, key: str) -> torch.Tensor | None:
        """A cached frame derived from this tensor's spectrum (key: kind, seed, width), or None (unreadable: missing)."""
        return read_entry(self._frame_path(name, key), lambda handle: handle.get_tensor("frame"))

    def store_frame(self, name: str, key: str, frame: torch.Tensor) -> None:
        """Write a frame derived from this tensor's spectrum atomically (on the CPU, bits unchanged)."""
        with stage("cache"):
            write_safetensors(self._frame_path(name, key), {"frame": frame.detach().cpu().contiguous()},
                              {"name": name, "key": key})


def read_entry(path: Path, read: Callable[[Any], T]) -> T | None:
    """read(safetensors handle) of one cache file, or None when it is missing or unreadable (it counts as missing)."""
    if not path.exists():
        return None
    from safetensors import safe_open

    try:
        with stage("cache"), safe_open(str(path), framework="pt", device="cpu") as handle:
            return read(handle)
    except Exception:
        return None


@dataclass(frozen=True)
class CacheEntry:
    """One cache entry on disk: its directory, size, file count, last use (epoch seconds) and meta.json."""

    path: Path
    bytes: int
    files: int
    last_used: float
    meta: dict


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """The entries under a cache root (default: the SVD cache), least recently used first."""
    root = Path(root or svd_cache_dir())
    if not root.is_dir():
        return []
    entries = []
    for directory in root.iterdir():
        if not (directory.is_dir() and ENTRY_NAME.fullmatch(directory.name)):
            continue  # only the cache's own entries (24 hex digits) are ever listed or removed
        sizes = [f.stat().st_size for f in directory.rglob("*") if f.is_file()]
        marker = directory / LAST_USED
        last = marker.stat().st_mtime if marker.exists() else directory.stat().st_mtime
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        entries.append(CacheEntry(directory, sum(sizes), len(sizes), last, meta))
    return sorted(entries, key=lambda entry: entry.last_used)


def remove_entry(entry: CacheEntry) -> None:
    """Delete one whole cache entry."""
    shutil.rmtree(entry.path, ignore_errors=True)
    _IN_USE.discard(entry.path)


def evict_to_budget(root: Path | None = None, budget: int | None = None) -> list[CacheEntry]:
    """Remove least recently used entries (never one this process uses) until the root fits the budget; the removed."""
    budget = cache_budget_bytes() if budget is None else budget
    entries = cache_entries(root)
    total = sum(entry.bytes for entry in entries)
    removed = []
    for entry in entries:
        if total <= budget:
            break
        if entry.path in _IN_USE:
            continue
        remove_entry(entry)
        total -= entry.bytes
        removed.append(entry)
    return removed


def clear_cache(root: Path | None = None, older_than_s: float | None = None) -> list[CacheEntry]:
    """Remove every entry (or those last used more than older_than_s seconds ago); the removed."""
    now = time.time()
    removed = [entry for entry in cache_entries(root) if older_than_s is None or now - entry.last_used > older_than_s]
    for entry in removed:
        remove_entry(entry)
    return removed
