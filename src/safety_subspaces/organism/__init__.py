"""The built-in model organism: a tiny, genuinely trained cast (base, aligned, safety-tuned, fine-tunes)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..names import check_name
from ..paths import zoo_dir


def zoo_data_file(name: str, zoo: Path | None = None) -> Path:
    """Path of the zoo's data file NAME (e.g. harmful_eval) in ZOO/data/NAME.jsonl."""
    root = Path(zoo) if zoo is not None else zoo_dir()
    path = root / "data" / f"{check_name(name, 'organism data set')}.jsonl"
    if not path.exists():
        raise UserError(f"organism data set {name!r} not found at {path}; build the zoo with `safety-subspaces organism build`")
    return path


def build(out: Path, preset: str = "default", seed: int | None = None, threads: int | None = None) -> dict:
    """Build the organism zoo into out; return its manifest (see organism.zoo.build)."""
    from .zoo import build as _build
    from .presets import DEFAULT_SEED

    return _build(out, preset, DEFAULT_SEED if seed is None else seed, threads)


def load_manifest(zoo: Path) -> dict:
    """The manifest of a built zoo (UserError if zoo is not one)."""
    from .zoo import load_manifest as _load

    return _load(zoo)
