"""The built-in model organism: a tiny, genuinely trained cast (base, aligned, safety-tuned, fine-tunes)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..paths import zoo_dir


def zoo_data_file(name: str, zoo: Path | None = None) -> Path:
    """Path of the zoo's data file NAME (e.g. harmful_eval) in ZOO/data/NAME.jsonl."""
    root = Path(zoo) if zoo is not None else zoo_dir()
    path = root / "data" / f"{name}.jsonl"
    if not path.exists():
        raise UserError(f"organism data set {name!r} not found at {path}; build the zoo with `safety-subspaces organism build`")
    return path
