"""Append-only JSONL journals of finished work (generations, judgments), written as results arrive and read back to resume."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from ..files import output_error, read_text


class Journal:
    """A JSONL file that threads append finished records to; each line is flushed and synced before the next."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._tail_checked = False

    def read(self) -> list[dict[str, Any]]:
        """Every complete record; a last line cut short by a crash is ignored, other bad lines are an error."""
        if not self.path.exists():
            return []
        lines = read_text(self.path).split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # unterminated last line: an interrupted write
                    break
                raise UserError(f"{self.path}: line {number} is not valid JSON; remove it or choose another --out") from None
            if isinstance(record, dict):
                records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line, durably."""
        line = json.dumps(record, ensure_ascii=False, sort_keys=True, default=str) + "\n"
        with self._lock:
            try:
                if not self._tail_checked:
                    self._repair_tail()
                    self._tail_checked = True
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                self._tail_checked = False  # a part of the line may have been written: repair before the next one
                raise output_error(exc, self.path) from None

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        """Append several records."""
        for record in records:
            self.append(record)

    def _repair_tail(self) -> None:
        """Drop an unterminated last line left by a crash, so the next record starts on its own line."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            handle.truncate(data.rfind(b"\n") + 1)
