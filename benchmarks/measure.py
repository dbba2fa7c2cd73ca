"""Run one command as a child process and measure it: wall time, CPU seconds, peak RSS, peak GPU memory, load.

    python benchmarks/measure.py --json-out step.json [--label NAME] [--gpu] [--timeout S] [--log FILE] -- CMD ...

CPU seconds and peak RSS are the child's own (os.wait4's rusage: user + sys of the child and the descendants it
waited for; ru_maxrss of the largest of them). With --gpu, nvidia-smi is polled every 0.2 s: the peak of the GPU's
memory.used above its value before the start (it sees every process, Ray workers included). The JSON holds the
command, exit code, those figures and the 1-minute load average before and after. Exits with the child's code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence


def gpu_memory_used_mib() -> list[int] | None:
    """memory.used of every GPU in MiB from nvidia-smi (None when there is no nvidia-smi or it fails)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10, check=True).stdout
        return [int(float(line)) for line in text.split() if line.strip()]
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class GpuPoller:
    """Polls nvidia-smi in a thread; peak_mib is the largest total memory.used above the starting value."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        start = gpu_memory_used_mib()
        self.baseline = sum(start) if start else None
        self.peak_total: int | None = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        """Sample until stopped."""
        while not self._stop.is_set():
            sample = gpu_memory_used_mib()
            if sample:
                self.peak_total = max(self.peak_total or 0, sum(sample))
            self._stop.wait(self.interval)

    def __enter__(self) -> "GpuPoller":
        if self.baseline is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def peak_mib(self) -> int | None:
        """Peak memory.used above the baseline in MiB (None without nvidia-smi)."""
        if self.baseline is None or self.peak_total is None:
            return None
        return self.peak_total - self.baseline


def run_measured(command: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 log: str | os.PathLike | None = None, timeout: float | None = None, gpu: bool = False,
                 label: str = "") -> dict:
    """Run a command to completion (stdout and stderr to log, or discarded) and return its measurements."""
    load_before = os.getloadavg()[0]
    handle = open(log, "w") if log else subprocess.DEVNULL
    poller = GpuPoller() if gpu else None
    timed_out = False
    started = time.perf_counter()
    try:
        with poller or _Null():
            process = subprocess.Popen(list(command), env=dict(env) if env is not None else None, cwd=cwd,
                                       stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = started + timeout if timeout else None
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if deadline and time.perf_counter() > deadline and not timed_out:
                    timed_out = True
                    os.killpg(process.pid, signal.SIGKILL)
                time.sleep(0.05)
            process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            handle.close()
    wall = time.perf_counter() - started
    return {
        "label": label,
        "command": [str(part) for part in command],
        "rc": process.returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "user_s": round(usage.ru_utime, 3),
        "sys_s": round(usage.ru_stime, 3),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "gpu_peak_mib": poller.peak_mib if poller else None,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "log": str(log) if log else None,
    }


class _Null:
    """A do-nothing context manager."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def main() -> int:
    """CLI entry: measure the command after `--` and write the JSON."""
    argv = sys.argv[1:]
    if "--" not in argv:
        print("error: give the command to measure after --", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-out", type=Path, required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--log", type=Path, help="file for the command's stdout and stderr")
    parser.add_argument("--gpu", action="store_true", help="poll nvidia-smi for the peak GPU memory")
    parser.add_argument("--timeout", type=float, help="kill the command after this many seconds")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        print("error: no command after --", file=sys.stderr)
        return 2
    result = run_measured(command, log=args.log, timeout=args.timeout, gpu=args.gpu, label=args.label)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    if result["timed_out"]:
        return 124
    return result["rc"] if result["rc"] >= 0 else 128 - result["rc"]  # killed by a signal: 128 + its number


if __name__ == "__main__":
    sys.exit(main())
