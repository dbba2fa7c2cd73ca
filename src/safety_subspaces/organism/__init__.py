"""The built-in model organism: a tiny, genuinely trained cast (base, aligned, safety-tuned, fine-tunes)."""

from __future__ import annotations

from pathlib import Path


def build(out: Path, preset: str = "default", seed: int | None = None, threads: int | None = None) -> dict:
    """Build the organism zoo into out; return its manifest (see organism.zoo.build)."""
    from .zoo import build as _build
    from .presets import DEFAULT_SEED

    return _build(out, preset, DEFAULT_SEED if seed is None else seed, threads)


def load_manifest(zoo: Path) -> dict:
    """The manifest of a built zoo (UserError if zoo is not one)."""
    from .zoo import load_manifest as _load

    return _load(zoo)
