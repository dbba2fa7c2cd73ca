"""Process-wide runtime settings: CPU threads, stable seeds, and the one rule for the "auto" device."""

from __future__ import annotations

import os

THREADS_ENV = "SAFETY_SUBSPACES_THREADS"


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count from the argument or $SAFETY_SUBSPACES_THREADS; return it."""
    import torch

    if threads is None and os.environ.get(THREADS_ENV):
        threads = threads_from_env()
    if threads is not None:
        if threads < 1:
            from .errors import UserError

            raise UserError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def threads_from_env() -> int:
    """$SAFETY_SUBSPACES_THREADS as a positive integer (a UserError naming the variable otherwise)."""
    from .errors import UserError

    text = os.environ[THREADS_ENV]
    if not text.strip().isdigit() or int(text) < 1:
        raise UserError(f"{THREADS_ENV}={text!r}: expected a positive integer")
    return int(text)


def resolve_device(device: str | None = "auto") -> str:
    """The device to run on: "auto" (or None) is cuda when available, else cpu; anything else as given."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from the parts, independent of PYTHONHASHSEED and visiting order."""
    import hashlib

    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def frame_seeds(seed: int, count: int) -> list[int]:
    """The seeds of `count` independent random-subspace frames: the seed itself first (so one frame is today's), then
    stable_seed(seed, "random_seeds", s) for s = 1 … count − 1."""
    if count < 1:
        raise ValueError(f"need at least one frame seed, got {count}")
    return [seed, *(stable_seed(seed, "random_seeds", index) for index in range(1, count))]
