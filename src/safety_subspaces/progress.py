"""Progress of long work: live rich bars on a terminal, plain log lines when stderr is not one, nothing when quiet.

Log mode: a bar prints a line when it starts and when it ends, and every $SAFETY_SUBSPACES_PROGRESS_INTERVAL seconds
(default 30) a line with its count, elapsed time and ETA. A bar opened inside another (a job's generation inside a
study) stays silent unless it runs that long. Consoles that are not terminals never wrap or crop lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import UserError

T = TypeVar("T")

QUIET_ENV = "SAFETY_SUBSPACES_QUIET"
INTERVAL_ENV = "SAFETY_SUBSPACES_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0
NOT_A_TERMINAL_WIDTH = 10_000  # wide enough that no path or table row is ever wrapped in a log

console = Console(stderr=True)  # the live display's console (terminal mode)
_write_lock = threading.Lock()


def _isatty(stream: Any) -> bool:
    """Whether a stream is an interactive terminal (False for closed or fake streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def mode() -> str:
    """'quiet' (--quiet or $SAFETY_SUBSPACES_QUIET), 'live' (stderr is a terminal: rich bars) or 'log' (plain lines)."""
    if os.environ.get(QUIET_ENV):
        return "quiet"
    return "live" if _isatty(sys.stderr) else "log"


def enabled() -> bool:
    """Whether live progress bars are shown (stderr is a terminal and output is not quiet)."""
    return mode() == "live"


def interval() -> float:
    """Seconds between progress lines in log mode ($SAFETY_SUBSPACES_PROGRESS_INTERVAL, default 30)."""
    text = os.environ.get(INTERVAL_ENV)
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{INTERVAL_ENV} must be a positive number of seconds, got {text!r}")
    return value


def stdout_console() -> Console:
    """A rich Console for results on stdout; when stdout is not a terminal it never wraps or crops."""
    if _isatty(sys.stdout):
        return Console()
    return Console(width=NOT_A_TERMINAL_WIDTH)


def write_line(line: str) -> None:
    """Write one plain line to stderr at once (lines from several threads never interleave)."""
    with _write_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def info(message: str) -> None:
    """Print a status line to stderr unless quiet (plain text, never wrapped outside a terminal)."""
    current = mode()
    if current == "log":
        write_line(message)
    elif current == "live":
        console.print(message, highlight=False, markup=False, soft_wrap=True)


def duration(seconds: float) -> str:
    """A short human duration: 4.2s, 3m05s, 2h07m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _count(value: float) -> str:
    """A step count without a needless .0."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def progress_line(description: str, done: float, total: float | None, elapsed: float, status: str = "") -> str:
    """The periodic log line: count (and share), elapsed time and ETA, and the bar's status."""
    if total:
        eta = duration(elapsed / done * max(0.0, total - done)) if done > 0 else "?"
        share = f"{_count(done)}/{_count(total)} ({100 * done / total:.0f}%)"
        text = f"{description}: {share}, {duration(elapsed)} elapsed, eta {eta}"
    elif done:
        text = f"{description}: {_count(done)} done, {duration(elapsed)} elapsed"
    else:
        text = f"{description}: running, {duration(elapsed)} elapsed"
    return f"{text}, {status}" if status else text


class LogBar:
    """One bar in log mode: its count and status, and the start, periodic and end lines that report them."""

    def __init__(self, description: str, total: float | None, *, nested: bool = False, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic, write: Callable[[str], None] = write_line):
        self.description, self.total, self.nested = description, total, nested
        self.every = interval() if every is None else every
        self.clock, self.write = clock, write
        self.done, self.status = 0.0, ""
        self.started = self.last_line = clock()
        self.spoke = not nested  # a nested bar speaks only once it has run for an interval
        self.closed = False
        self._lock = threading.Lock()
        if not nested:
            self.write(f"{description}: started" + (f" ({_count(total)} to do)" if total else ""))

    def update(self, advance: float = 1, status: str | None = None) -> None:
        """Count finished work (and set the status shown beside it)."""
        with self._lock:
            self.done += advance
            if status is not None:
                self.status = status

    def tick(self) -> str | None:
        """Write and return the progress line if an interval has passed since the last line, else None."""
        now = self.clock()
        with self._lock:
            if self.closed or now - self.last_line < self.every:
                return None
            self.last_line, self.spoke = now, True
            line = progress_line(self.description, self.done, self.total, now - self.started, self.status)
        self.write(line)
        return line

    def close(self, failed: bool = False) -> None:
        """Write the end line (for a nested bar only if it has spoken); no line follows it."""
        with self._lock:
            self.closed = True
        if not self.spoke:
            return
        elapsed = duration(self.clock() - self.started)
        count = _count(self.done) + (f"/{_count(self.total)}" if self.total else "")
        if failed:
            self.write(f"{self.description}: stopped at {count} after {elapsed}")
            return
        done = f"done {count} in {elapsed}" if self.total or self.done else f"done in {elapsed}"
        self.write(f"{self.description}: {done}" + (f", {self.status}" if self.status else ""))


class _Ticker:
    """One daemon thread per process that asks every open log bar for its periodic line."""

    def __init__(self) -> None:
        self.bars: list[LogBar] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def open(self, description: str, total: float | None) -> LogBar:
        """A new log bar (nested if another is open), ticked until closed."""
        with self.lock:
            bar = LogBar(description, total, nested=bool(self.bars))
            self.bars.append(bar)
            if self.thread is None:
                self.stop = threading.Event()
                self.thread = threading.Thread(target=self._run, args=(self.stop, min(1.0, bar.every / 10)),
                                               name="progress-ticker", daemon=True)
                self.thread.start()
        return bar

    def close(self, bar: LogBar, failed: bool) -> None:
        """Stop ticking a bar; write its end line; stop the thread when no bar is left."""
        thread = None
        with self.lock:
            self.bars.remove(bar)
            if not self.bars and self.thread is not None:
                thread, self.thread = self.thread, None
                self.stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        bar.close(failed)

    def _run(self, stop: threading.Event, pause: float) -> None:
        """Tick every open bar until stopped."""
        while not stop.wait(pause):
            with self.lock:
                bars = list(self.bars)
            for bar in bars:
                bar.tick()


_ticker = _Ticker()


def make_progress() -> Progress:
    """A rich Progress with count, elapsed time and ETA (terminal mode)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _ignore(advance: float = 1, status: str | None = None) -> None:
    """update() of a bar nobody sees."""


@contextmanager
def bar(description: str, total: float | None) -> Iterator[Callable[..., None]]:
    """A context manager yielding update(advance=1, status=None) for one progress bar (live, logged or silent)."""
    current = mode()
    if current == "quiet":
        yield _ignore
        return
    if current == "log":
        logged = _ticker.open(description, total)
        failed = True
        try:
            yield logged.update
            failed = False
        finally:
            _ticker.close(logged, failed)
        return
    with make_progress() as live:
        task = live.add_task(description, total=total, status="")

        def update(advance: float = 1, status: str | None = None) -> None:
            if status is None:
                live.advance(task, advance)
            else:
                live.update(task, advance=advance, status=status)

        yield update


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over items with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(description, total) as update:
        for item in items:
            yield item
            update(1)


@contextmanager
def stage(description: str) -> Iterator[None]:
    """A long step without a count: start and end lines, and elapsed time every interval, in log mode."""
    with bar(description, None):
        yield


class TqdmBridge:
    """A stand-in for a library's tqdm that reports through our bars, so library loops show in logs and obey --quiet."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: float | None = None,
                 *_ignored: Any, disable: bool = False, prefix: str = "", **_options: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n = total, 0
        self._bar = None if disable else bar(prefix + (desc or "working"), total)
        self._update = self._bar.__enter__() if self._bar is not None else _ignore

    def update(self, n: float = 1) -> None:
        """Count n finished items."""
        self.n += n
        self._update(n)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def close(self) -> None:
        """End the bar (once)."""
        if self._bar is not None:
            finished, self._bar = self._bar, None
            finished.__exit__(None, None, None)

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        """Accepted and ignored (the description is fixed)."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Accepted and ignored."""

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        """Accepted and ignored."""

    def __enter__(self) -> "TqdmBridge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


Switch = tuple[Callable[[], bool], Callable[[], None], Callable[[], None]]  # (is enabled, enable, disable)


def _library_bar_switches() -> list[Switch]:
    """The progress-bar switches of transformers, datasets and huggingface_hub, for those already imported."""
    switches: list[Switch] = []
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf

        switches.append((hf.is_progress_bar_enabled, hf.enable_progress_bar, hf.disable_progress_bar))
    if "datasets" in sys.modules:
        import datasets as ds

        switches.append((ds.is_progress_bar_enabled, ds.enable_progress_bars, ds.disable_progress_bars))
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import utils as hub

        switches.append((lambda: not hub.are_progress_bars_disabled(), hub.enable_progress_bars,
                         hub.disable_progress_bars))
    return switches


@contextmanager
def library_bars(show: bool | None = None) -> Iterator[None]:
    """Show transformers', datasets' and huggingface_hub's own bars only when ours are live (a terminal, not quiet)."""
    show = enabled() if show is None else show
    switches = [] if show else _library_bar_switches()
    before = [is_enabled() for is_enabled, _, _ in switches]
    for _, _, disable in switches:
        disable()
    try:
        yield
    finally:
        for (_, enable, _), was in zip(switches, before):
            if was:
                enable()


def set_quiet() -> None:
    """Silence our bars and status lines and the libraries' bars, here and in the processes this one starts."""
    os.environ[QUIET_ENV] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub, transformers and datasets load
    for _, _, disable in _library_bar_switches():
        disable()
