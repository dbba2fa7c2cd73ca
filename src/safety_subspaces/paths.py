"""Where the toolkit keeps caches and the built-in zoo."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError
from .names import check_name

HOME_ENV = "SAFETY_SUBSPACES_HOME"


def home() -> Path:
    """Root of caches: $SAFETY_SUBSPACES_HOME or ~/.cache/safety-subspaces."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "safety-subspaces").expanduser()


def svd_cache_dir() -> Path:
    """Default directory of the on-disk SVD cache."""
    return home() / "svd"


def zoo_dir(preset: str = "default") -> Path:
    """Default location of the organism zoo for a preset ($SAFETY_SUBSPACES_ZOO overrides the default preset's)."""
    override = os.environ.get("SAFETY_SUBSPACES_ZOO")
    if override and preset == "default":
        return Path(override).expanduser()
    return home() / "zoo" / preset


def zoo_data_file(name: str, zoo: Path | None = None) -> Path:
    """Path of the zoo's data file NAME (e.g. harmful_eval) in ZOO/data/NAME.jsonl (default: the built zoo)."""
    root = Path(zoo) if zoo is not None else zoo_dir()
    path = root / "data" / f"{check_name(name, 'organism data set')}.jsonl"
    if not path.exists():
        raise UserError(f"organism data set {name!r} not found at {path}; build the zoo with `safety-subspaces organism build`")
    return path
