"""Atomic file and directory writes, output locks and CSV/JSON/YAML helpers.

Every OS refusal on the output side (read-only file system, full disk, permission denied, a file where a directory
is expected) becomes one UserError naming the path and the OS's reason; temporary files and staged directories
carry their owner's process id, so the next writer of the same path removes those a killed process left behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import yaml

from .errors import OutputError, UserError


def output_error(exc: OSError, path: Path | str) -> OutputError:
    """The UserError for an OS refusal while writing path: the path and the OS's reason."""
    return OutputError(path, exc.strerror or type(exc).__name__)


def make_dirs(path: Path) -> list[Path]:
    """Create a directory and its missing parents; return those it created (outermost first).

    A file in the way or an OS refusal is a UserError naming the path.
    """
    path = Path(path)
    missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in [path, *path.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            where = "" if blocker == path else f"cannot create directory {path}: "
            raise UserError(f"{where}{blocker} is a file, not a directory") from None
        raise OutputError(path, exc.strerror or type(exc).__name__, action="create directory") from None
    return missing


def remove_created(created: Sequence[Path]) -> None:
    """Remove directories make_dirs created, innermost first, as long as they are empty."""
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            return


def owner_tag() -> str:
    """This process as '<pid>@<host>': written into temporary names and lock files."""
    return f"{os.getpid()}@{socket.gethostname()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def left_by_dead_process(tag: str) -> bool:
    """Whether an owner tag names a process of this machine that no longer runs."""
    pid, sep, host = tag.partition("@")
    return bool(sep) and pid.isdigit() and host == socket.gethostname() and not process_alive(int(pid))


def remove_stale(directory: Path, prefix: str) -> None:
    """Remove entries `<prefix><owner tag>-<random>...` of directory whose owner process is dead."""
    try:
        entries = [p for p in Path(directory).iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        tag = entry.name[len(prefix):].rpartition("-")[0]
        if left_by_dead_process(tag):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def read_text(path: Path, *, what: str = "") -> str:
    """A text file as UTF-8 (a leading byte-order mark dropped); a UserError naming the line of a non-UTF-8 byte."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{label} is a directory; give a file") from None
    except FileNotFoundError:
        raise UserError(f"{label}: no such file") from None
    except OSError as exc:
        raise UserError(f"cannot read {label}: {exc.strerror or type(exc).__name__}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{label}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                        "save the file as UTF-8") from None

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
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    make_dirs(path.parent)
    prefix = f".{path.name}.tmp-"
    remove_stale(path.parent, prefix)
    try:
        fd, tmp = _create_unique(path.parent, f"{prefix}{owner_tag()}-", ".tmp", _open_new)
    except OSError as exc:
        raise output_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise output_error(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, *, missing: str, role: str = "") -> Any:
    """A JSON file's content; a UserError saying `missing` when it is absent, naming the file when it is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise UserError(missing)
    try:
        return json.loads(read_text(path, what=role))
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
    """Read a CSV file into a list of dicts (UTF-8; a malformed row or an unterminated quote is named by its line)."""
    text = read_text(path)
    check_csv(text, path)
    return list(csv.DictReader(io.StringIO(text, newline="")))


def check_csv(text: str, origin: Path | str) -> None:
    """Raise a UserError naming the line where a malformed CSV row (e.g. an unterminated quote) starts."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for _ in reader:
            start = reader.line_num + 1
    except csv.Error as exc:
        problem = "an unterminated quote" if "unexpected end of data" in str(exc) else f"malformed CSV ({exc})"
        raise UserError(f"{origin}: line {start}: {problem}") from None


def config_digest(config: Mapping[str, Any]) -> str:
    """A short content hash of a JSON-able config."""
    return hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of final; on success move its files into final, on failure delete it.

    A crash leaves only a hidden `.name.partial-<pid>@<host>-*` folder, never a directory that looks complete; the
    next staged write of the same final removes such folders whose process is gone. An OS refusal while writing is
    a UserError naming the path (as it will be in final) and the reason.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise UserError(f"output path {final} exists and is not a directory")
    created = make_dirs(final.parent)
    prefix = f".{final.name}.partial-"
    remove_stale(final.parent, prefix)
    try:
        stage = _create_unique(final.parent, f"{prefix}{owner_tag()}-", "", _make_new_dir)
    except OSError as exc:
        remove_created(created)
        raise output_error(exc, final) from None
    try:
        yield stage
        publish(stage, final)
    except (OSError, OutputError) as exc:
        shutil.rmtree(stage, ignore_errors=True)
        remove_created(created)
        raise staged_error(exc, stage, final) from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        remove_created(created)
        raise


def publish(stage: Path, final: Path) -> None:
    """Move a finished stage to final (or its files into an existing final)."""
    if not final.exists():
        os.replace(stage, final)
        return
    for item in sorted(stage.rglob("*")):
        if item.is_file():
            target = final / item.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item, target)
    shutil.rmtree(stage, ignore_errors=True)


def staged_error(exc: OSError | OutputError, stage: Path, final: Path) -> UserError:
    """The UserError for an OS refusal inside a staged write, naming the path as it would be in final."""
    if isinstance(exc, OutputError):
        reason, culprit, action = exc.reason, Path(exc.path), exc.action
    else:
        reason, culprit, action = exc.strerror or type(exc).__name__, Path(exc.filename) if exc.filename else None, "write"
    if culprit is None or culprit == stage:
        return OutputError(final, reason, action)
    try:
        return OutputError(final / culprit.relative_to(stage), reason, action)
    except ValueError:
        return exc if isinstance(exc, OutputError) else UserError(f"{culprit}: {reason} (while writing {final})")


LOCKS_HELD: dict[Path, int] = {}


def lock_path(out: Path) -> Path:
    """The lock file of an output path: a hidden sibling, so the output directory holds only its own files."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an output path's lock for the block; refuse one held by a live process, naming it.

    The lock is an flock on a hidden file beside the output holding '<pid>@<host>': the kernel releases it when
    its holder dies, so a killed process's lock is simply taken over. Re-entrant within a process.
    """
    out = Path(out).absolute()
    if out in LOCKS_HELD:
        LOCKS_HELD[out] += 1
        try:
            yield
        finally:
            LOCKS_HELD[out] -= 1
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked
        yield
        return
    path = lock_path(out)
    created = make_dirs(out.parent)
    try:
        fd = _acquire(path, out, fcntl)
    except BaseException:
        remove_created(created)
        raise
    LOCKS_HELD[out] = 1
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{owner_tag()}\n".encode())
        yield
    finally:
        del LOCKS_HELD[out]
        Path(path).unlink(missing_ok=True)
        os.close(fd)
        remove_created(created)


def _acquire(path: Path, out: Path, fcntl) -> int:
    """An open descriptor of the lock file holding its flock (retrying if the file was replaced meanwhile)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror or type(exc).__name__} "
                            f"(creating its lock file {path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            pid, _, host = holder.partition("@")
            who = f"process {pid} on {host}" if pid else "another process"
            raise UserError(f"{out} is in use by {who} (lock file {path}); wait for it to finish or stop it") from None
        except OSError as exc:
            os.close(fd)
            raise UserError(f"cannot lock {path}: {exc.strerror or type(exc).__name__}") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
