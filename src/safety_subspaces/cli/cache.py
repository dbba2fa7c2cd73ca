"""`safety-subspaces cache info|clear`: the on-disk SVD cache (entries, sizes, last use, budget)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._help import add_command, add_group, at_least

INFO_EXAMPLES = """\
  safety-subspaces cache info                    # ~/.cache/safety-subspaces/svd (or $SAFETY_SUBSPACES_HOME/svd)
  safety-subspaces cache info --cache-dir /scratch/svd --json
"""
CLEAR_EXAMPLES = """\
  safety-subspaces cache clear                   # every entry
  safety-subspaces cache clear --older-than 30   # entries last used more than 30 days ago
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add `cache` with its `info` and `clear` subcommands."""
    parser = subparsers.add_parser("cache", help="inspect or clear the SVD cache",
                                   description="The SVD cache: `cache info` or `cache clear`.")
    commands = add_group(parser, dest="cache_command")
    info = add_command(commands, common, "info", "List cache entries (size, files, last use, models), totals and the budget.",
                       INFO_EXAMPLES, handler=run_info)
    clear = add_command(commands, common, "clear", "Remove whole cache entries (all, or those unused for a while).",
                        CLEAR_EXAMPLES, handler=run_clear)
    for sub in (info, clear):
        sub.add_argument("--cache-dir", type=Path, help="SVD cache directory (default ~/.cache/safety-subspaces/svd)")
    clear.add_argument("--older-than", type=at_least(0.0, float), metavar="DAYS",
                       help="only entries last used more than DAYS days ago")



def describe(entry) -> dict:
    """An entry as plain data."""
    meta = entry.meta
    return {"key": entry.path.name, "path": str(entry.path), "bytes": entry.bytes, "files": entry.files,
            "last_used": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.last_used)),
            "minuend": meta.get("minuend"), "subtrahend": meta.get("subtrahend"), "method": meta.get("method"),
            "factor_dtype": meta.get("factor_dtype", "float32")}


def gib(count: int) -> str:
    """Bytes as GiB text."""
    return f"{count / 1024**3:.3f} GiB"


def run_info(args: argparse.Namespace) -> int:
    """Print the entries, least recently used first, with totals and the budget."""
    from ..paths import svd_cache_dir
    from ..spectra import cache_budget_bytes, cache_entries

    root = Path(args.cache_dir or svd_cache_dir())
    entries = [describe(entry) for entry in cache_entries(root)]
    total, budget = sum(e["bytes"] for e in entries), cache_budget_bytes()
    if args.json:
        json.dump({"root": str(root), "entries": entries, "total_bytes": total, "budget_bytes": budget},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"SVD cache {root}: {len(entries)} entries, {gib(total)} of a {gib(budget)} budget "
          "(least recently used first; evicted first beyond the budget)")
    for e in entries:
        print(f"  {e['key']}  {gib(e['bytes']):>12}  {e['files']:>5} files  last used {e['last_used']}  "
              f"{e['factor_dtype']}  {e['minuend']} - {e['subtrahend']} ({e['method']})")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    """Remove entries and say how much was freed."""
    from ..paths import svd_cache_dir
    from ..spectra import clear_cache

    root = Path(args.cache_dir or svd_cache_dir())
    removed = clear_cache(root, None if args.older_than is None else args.older_than * 86400)
    freed = sum(entry.bytes for entry in removed)
    if args.json:
        json.dump({"root": str(root), "removed": [describe(e) for e in removed], "freed_bytes": freed}, sys.stdout,
                  indent=2)
        sys.stdout.write("\n")
    else:
        print(f"removed {len(removed)} entries from {root}, freed {gib(freed)}")
    return 0
