"""Run directories: the one identity and resume rule (analyses, evaluations, studies) and the one analysis writer.

A run directory's config.yaml holds its kind, the digest of what identifies the run and that identity (or, for a
study, its config). An output directory is used when it is absent or empty (hidden files aside), resumed when it
holds the same run, and refused otherwise; with force, a fresh sibling `NAME-2`, `NAME-3`, ... is chosen instead.
"""

from __future__ import annotations

import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml

from . import __version__, layout
from .errors import UserError
from .files import config_digest, read_text, staged_dir, write_csv, write_json, write_yaml
from .tables import Table


def config_document(identity: Mapping[str, Any], *, kind: str, config: Mapping[str, Any] | None = None,
                    **extra: Any) -> dict[str, Any]:
    """The config.yaml content: kind, the identity's digest, the config (default: the identity) and extras."""
    return {"kind": kind, "identity": config_digest(identity), "config": dict(config if config is not None else identity),
            **extra}


def read_document(directory: Path) -> dict[str, Any] | None:
    """A run directory's config.yaml as a mapping (None when it is absent, unreadable or not a mapping)."""
    path = Path(directory) / layout.CONFIG
    if not path.is_file():
        return None
    try:
        document = yaml.safe_load(read_text(path))
    except (yaml.YAMLError, UserError):
        return None
    return document if isinstance(document, dict) else None


def holds_files(directory: Path) -> bool:
    """Whether a directory holds anything but hidden entries."""
    return any(not entry.name.startswith(".") for entry in Path(directory).iterdir())


def noun(kind: str) -> str:
    """How messages name a run of this kind."""
    return "study" if kind == "study" else f"{kind} run"


def choose_run_dir(out: Path, *, kind: str, identity: Mapping[str, Any] | None, force: bool = False,
                   what: str = "output directory") -> tuple[Path, bool]:
    """(the run directory, whether it already holds this run): out, or with force a fresh sibling.

    identity None accepts any run of the kind (checking a config before its inputs are fingerprinted).
    """
    out = Path(out)
    digest = config_digest(identity) if identity is not None else None
    fix = "pass --force to start a new run directory beside it, or choose another --out" if kind == "study" \
        else "choose another --out"
    candidate, suffix = out, 1
    while True:
        if candidate.exists() and not candidate.is_dir():
            raise UserError(f"{what} {candidate} exists and is not a directory; choose another --out")
        if not candidate.exists() or not holds_files(candidate):
            return candidate, False
        previous = read_document(candidate)
        if previous is not None and previous.get("kind") == kind and digest in (None, previous.get("identity")):
            return candidate, True
        if not force:
            if not (candidate / layout.CONFIG).exists():
                raise UserError(f"{what} {candidate} is not empty and holds no {noun(kind)}; choose another --out")
            different = "study" if kind == "study" else "run"
            raise UserError(f"{what} {candidate} already holds a different {different} ({layout.CONFIG} differs); {fix}")
        suffix += 1
        candidate = out.with_name(f"{out.name}-{suffix}")


def check_run_dir(path: Path, identity: Mapping[str, Any], *, kind: str) -> bool:
    """Refuse a directory that holds a different run or foreign files; return True if it holds this run."""
    return choose_run_dir(path, kind=kind, identity=identity)[1]


def manifest_header() -> dict[str, str]:
    """The versions every manifest starts with."""
    import torch

    return {"tool": f"safety-subspaces {__version__}", "python": platform.python_version(), "torch": torch.__version__}


@contextmanager
def staged_run_dir(out: Path, identity: Mapping[str, Any], *, kind: str, manifest: Mapping[str, Any],
                   tables: Mapping[Table, Iterable[Mapping[str, Any]]]) -> Iterator[Path]:
    """Stage config.yaml, manifest.json and the tables' CSVs (yielding the stage for figures), then publish at once."""
    with staged_dir(out) as stage:
        write_yaml(stage / layout.CONFIG, config_document(identity, kind=kind))
        write_json(stage / layout.MANIFEST, {**manifest_header(), **manifest})
        for table, rows in tables.items():
            write_csv(stage / table.csv, rows, table.columns)
        yield stage


def write_run_dir(out: Path, identity: Mapping[str, Any], *, kind: str, manifest: Mapping[str, Any],
                  tables: Mapping[Table, Iterable[Mapping[str, Any]]],
                  extra: Callable[[Path], None] | None = None) -> Path:
    """Write a whole analysis run directory atomically: config, manifest, CSV tables and what extra(stage) adds."""
    with staged_run_dir(out, identity, kind=kind, manifest=manifest, tables=tables) as stage:
        if extra is not None:
            extra(stage)
    return Path(out)
