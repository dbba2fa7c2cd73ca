"""Atomic file and directory writes, CSV/JSON/YAML helpers and run-directory identity."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")


def _create_unique(directory: Path, prefix: str, suffix: str, create: Callable[[Path], T]) -> T:
    """create(path) for the first free random name prefix-XXXX-suffix in directory."""
    for _ in range(100):
        try:
            return create(Path(directory) / f"{prefix}{secrets.token_hex(6)}{suffix}")
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def _open_new(path: Path) -> tuple[int, Path]:
    """A new file opened for writing, its mode 0666 less the umask (mkstemp would make it 0600)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path


def _make_new_dir(path: Path) -> Path:
    """A new directory, its mode 0777 less the umask (mkdtemp would make it 0700)."""
    path.mkdir(mode=0o777)
    return path


def current_umask() -> int:
    """The process's file-creation mask (read from /proc where it can be, so it is never changed, even briefly)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(directory: Path) -> None:
    """Give the files and folders under directory the modes open() and mkdir() would (0666 / 0777 less the umask).

    For what libraries write with a fixed mode: safetensors' save_file (so save_pretrained) makes 0600 files.
    """
    mask = current_umask()
    for path in [Path(directory), *Path(directory).rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path so that readers see the old file or the whole new one, never a part."""
    atomic_write_chunks(path, [data])


def atomic_write_chunks(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """Write a sequence of byte chunks to path atomically, without joining them in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_unique(path.parent, f".{path.name}.", ".tmp", _open_new)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, *, missing: str, role: str = "") -> Any:
    """A JSON file's content; a UserError saying `missing` when it is absent, naming the file when it is not JSON."""
    path = Path(path)
    if not path.exists():
        raise UserError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{role + ' ' if role else ''}{path} is not valid JSON ({exc.msg})") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write text (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Stable, readable JSON."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Write obj as JSON atomically."""
    atomic_write_text(path, dumps_json(obj))


def write_yaml(path: Path, obj: Any) -> None:
    """Write obj as YAML atomically."""
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Render rows as CSV with the given leading columns (extra keys follow, sorted)."""
    rows = list(rows)
    extra = sorted({key for row in rows for key in row} - set(columns))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*columns, *extra], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    """Format one CSV cell: floats at full precision, None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write rows as CSV atomically."""
    atomic_write_text(path, csv_text(rows, columns))


def read_csv(path: Path) -> list[dict[str, str]]:
    """Read a CSV file into a list of dicts."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def config_digest(config: Mapping[str, Any]) -> str:
    """A short content hash of a JSON-able config."""
    return hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of final; on success move its files into final, on failure delete it.

    A crash leaves only a hidden `.name.partial-*` folder, never a directory that looks complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = _create_unique(final.parent, f".{final.name}.partial-", "", _make_new_dir)
    try:
        yield stage
        if not final.exists():
            os.replace(stage, final)
            return
        for item in sorted(stage.rglob("*")):
            if item.is_file():
                target = final / item.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
        shutil.rmtree(stage, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


RUN_CONFIG = "config.yaml"


def check_run_dir(path: Path, config: Mapping[str, Any], *, kind: str) -> bool:
    """Refuse a run directory that holds a different run or foreign files; return True if it holds this run."""
    path = Path(path)
    if not path.exists():
        return False
    if not path.is_dir():
        raise UserError(f"output path {path} exists and is not a directory")
    existing = path / RUN_CONFIG
    if not existing.exists():
        if any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise UserError(f"output directory {path} is not empty and holds no {kind} run; choose another --out")
        return False
    try:
        previous = yaml.safe_load(existing.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"output directory {path} holds an unreadable {RUN_CONFIG}: {exc}") from None
    if previous.get("kind") != kind or previous.get("identity") != config_digest(config):
        raise UserError(
            f"output directory {path} already holds a different run ({RUN_CONFIG} differs); choose another --out"
        )
    return True


def run_config_document(config: Mapping[str, Any], *, kind: str) -> dict[str, Any]:
    """The config.yaml content: kind, identity digest and the resolved config."""
    return {"kind": kind, "identity": config_digest(config), "config": dict(config)}


@contextmanager
def analysis_run_dir(out: Path, identity: Mapping[str, Any], *, kind: str, manifest: Mapping[str, Any],
                     tables: Mapping[str, tuple[Iterable[Mapping[str, Any]], Sequence[str]]]) -> Iterator[Path]:
    """Stage config.yaml, manifest.json and NAME.csv tables (yielding the stage for figures), then publish atomically."""
    with staged_dir(out) as stage:
        write_yaml(stage / RUN_CONFIG, run_config_document(identity, kind=kind))
        write_json(stage / "manifest.json", manifest)
        for name, (rows, columns) in tables.items():
            write_csv(stage / f"{name}.csv", rows, columns)
        yield stage
