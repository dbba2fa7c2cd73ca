"""Spectra of difference tensors (W_x - W_y per tensor), computed once and cached on disk by checkpoint fingerprints."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from . import linalg
from .profiling import stage
from .checkpoints import Checkpoint, write_safetensors
from .files import atomic_write_text
from .paths import svd_cache_dir

CACHE_VERSION = "2"  # 2: float64 decompositions, numerically zero directions left out (rank columns)


@dataclass(frozen=True)
class Spectrum:
    """Left singular vectors (m x rank), singular values (rank,) and the exact ||M||_F^2 of one matrix.

    rank is the numerical rank; rank_bound is r = min(m, n) (None: the columns are all r directions).
    """

    left: torch.Tensor
    singular: torch.Tensor
    total: float
    rank_bound: int | None = None

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


def difference(minuend: Checkpoint, subtrahend: Checkpoint, name: str, *, device: str = "cpu") -> torch.Tensor:
    """W_minuend - W_subtrahend for one tensor, taken in float32 from the stored dtypes (no whole fp32 temporary)."""
    # a contiguous copy, so its flat chunks are views; the stored tensor is freed before the subtrahend's is read
    with stage("read"):
        result = minuend.read(name).to(device=device, dtype=torch.float32, copy=True,
                                       memory_format=torch.contiguous_format)
        for out, part in linalg.flat_chunks(result, subtrahend.read(name)):
            out -= part.to(device=device, dtype=torch.float32)
    return result


class SpectrumCache:
    """Left factors of (minuend - subtrahend) per tensor, on disk under a key of both fingerprints and the method."""

    def __init__(self, minuend: Checkpoint, subtrahend: Checkpoint, *, root: Path | None = None,
                 method: str = "auto", device: str = "cpu"):
        self.minuend, self.subtrahend = minuend, subtrahend
        self.method, self.device = method, device
        key = hashlib.blake2b(
            "|".join([CACHE_VERSION, minuend.fingerprint(), subtrahend.fingerprint(), method]).encode(), digest_size=12
        ).hexdigest()
        self.directory = Path(root or svd_cache_dir()) / key
        self.computed = 0  # decompositions done by this object (a warm cache does none)
        self.reused = 0

    def _path(self, name: str) -> Path:
        """Cache file of one tensor."""
        return self.directory / f"{name}.safetensors"

    def load(self, name: str) -> Spectrum | None:
        """The cached spectrum of a tensor, or None (an unreadable entry counts as missing)."""
        path = self._path(name)
        if not path.exists():
            return None
        from safetensors import safe_open

        try:
            with stage("cache"), safe_open(str(path), framework="pt", device="cpu") as handle:
                meta = handle.metadata()
                return Spectrum(handle.get_tensor("left"), handle.get_tensor("singular"), float(meta["total"]),
                                int(meta["rank_bound"]))
        except Exception:
            return None

    def store(self, name: str, spectrum: Spectrum) -> None:
        """Write one tensor's spectrum atomically."""
        with stage("cache"):
            write_safetensors(
                self._path(name), {"left": spectrum.left, "singular": spectrum.singular},
                {"total": repr(spectrum.total), "rank_bound": str(spectrum.r), "name": name},
            )
        meta = self.directory / "meta.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps({
                "minuend": str(self.minuend.path), "subtrahend": str(self.subtrahend.path),
                "minuend_fingerprint": self.minuend.fingerprint(),
                "subtrahend_fingerprint": self.subtrahend.fingerprint(), "method": self.method,
            }, indent=2))

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
            spectrum = Spectrum(left.cpu(), singular.cpu(), linalg.frobenius_sq(delta),
                                linalg.matrix_rank_bound(delta.shape))
        self.store(name, spectrum)
        self.computed += 1
        return spectrum

    def _frame_path(self, name: str, key: str) -> Path:
        """Cache file of a frame derived from one tensor's spectrum (key: kind, seed and width)."""
        return self.directory / "frames" / f"{name}.{key}.safetensors"

    def load_frame(self, name: str, key: str) -> torch.Tensor | None:
        """A cached frame derived from this tensor's spectrum (key: kind, seed, width), or None (unreadable: missing)."""
        path = self._frame_path(name, key)
        if not path.exists():
            return None
        from safetensors import safe_open

        try:
            with stage("cache"), safe_open(str(path), framework="pt", device="cpu") as handle:
                return handle.get_tensor("frame")
        except Exception:
            return None

    def store_frame(self, name: str, key: str, frame: torch.Tensor) -> None:
        """Write a frame derived from this tensor's spectrum atomically (on the CPU, bits unchanged)."""
        with stage("cache"):
            write_safetensors(self._frame_path(name, key), {"frame": frame.detach().cpu().contiguous()},
                              {"name": name, "key": key})
