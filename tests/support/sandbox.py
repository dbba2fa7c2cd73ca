"""Where a test session may write: one temporary directory holding every cache and an empty stand-in for HOME.

Imported by conftest.py before any library, because several read their cache locations from the environment once,
at import (huggingface_hub, datasets, lm-eval's request cache, matplotlib). The real home is never written:

- the toolkit's home ($SAFETY_SUBSPACES_HOME: the SVD cache, the file-hash memo, parsed local datasets, the default
  zoo), and $SAFETY_SUBSPACES_ZOO is unset so no test reads or builds a user's zoo;
- Hugging Face: HF_HOME (with its modules cache), HF_HUB_CACHE, HF_DATASETS_CACHE;
- lm-eval's request cache (LM_HARNESS_CACHE_PATH), matplotlib's config and font cache (MPLCONFIGDIR), torch's hub
  cache (TORCH_HOME), anything else that follows XDG (XDG_CACHE_HOME, XDG_CONFIG_HOME);
- Ray: its temp dir (RAY_TMPDIR, default /tmp/ray) and its auth token (RAY_AUTH_TOKEN_PATH, a token written here;
  without one Ray 2.5x writes ~/.ray/auth_token), usage statistics off;
- HOME itself is an empty directory here: whatever still writes to ~ lands in it, and the session fails if it is not
  empty at the end (conftest.pytest_sessionfinish); tests/test_home.py also runs a whole study in a subprocess with a
  fresh HOME and checks it stays empty.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

ROOT = Path(tempfile.mkdtemp(prefix="ss-tests-"))  # short: Ray's socket paths under RAY_TMPDIR must stay < 108 bytes
HOME = ROOT / "home"


def cache_env(root: Path) -> dict[str, Path]:
    """Where each cache goes under root, by the environment variable that moves it."""
    return {
        "SAFETY_SUBSPACES_HOME": root / "safety-subspaces",
        "HF_HOME": root / "huggingface",
        "HF_HUB_CACHE": root / "huggingface" / "hub",
        "HF_DATASETS_CACHE": root / "huggingface" / "datasets",
        "LM_HARNESS_CACHE_PATH": root / "lm-eval",
        "MPLCONFIGDIR": root / "matplotlib",
        "TORCH_HOME": root / "torch",
        "XDG_CACHE_HOME": root / "xdg-cache",
        "XDG_CONFIG_HOME": root / "xdg-config",
        "RAY_TMPDIR": root / "ray",
        "RAY_AUTH_TOKEN_PATH": root / "ray-auth-token",
    }


CACHE_ENV = cache_env(ROOT)


def prepare(root: Path) -> dict[str, str]:
    """Make root's empty home and Ray token; the environment that points HOME and every cache into root."""
    caches = cache_env(root)
    (root / "home").mkdir()
    caches["RAY_AUTH_TOKEN_PATH"].write_text(secrets.token_hex(32))
    return {**{name: str(path) for name, path in caches.items()}, "HOME": str(root / "home"),
            "RAY_USAGE_STATS_ENABLED": "0"}


def install() -> None:
    """Point this session's HOME and every cache into ROOT (overriding the user's settings); remove ROOT at exit."""
    os.environ.update(prepare(ROOT))
    os.environ.pop("SAFETY_SUBSPACES_ZOO", None)
    atexit.register(shutil.rmtree, ROOT, ignore_errors=True)


def written_under(directory: Path) -> list[str]:
    """Every path under directory, relative to it, sorted."""
    return sorted(str(path.relative_to(directory)) for path in Path(directory).rglob("*"))
