"""Where the toolkit keeps caches and the built-in zoo."""

from __future__ import annotations

import os
from pathlib import Path

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
