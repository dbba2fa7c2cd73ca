"""Process-wide runtime settings: CPU threads and determinism."""

from __future__ import annotations

import os

THREADS_ENV = "SAFETY_SUBSPACES_THREADS"


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count from the argument or $SAFETY_SUBSPACES_THREADS; return it."""
    import torch

    if threads is None and os.environ.get(THREADS_ENV):
        threads = int(os.environ[THREADS_ENV])
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from the parts, independent of PYTHONHASHSEED and visiting order."""
    import hashlib

    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
