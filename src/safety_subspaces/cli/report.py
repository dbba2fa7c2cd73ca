"""`safety-subspaces report`: the HTML report, CSV tables and figures of a study run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._help import add_command

EXAMPLES = """\
  safety-subspaces report runs/organism        # writes runs/organism/report.html, *.csv, figures/*.png
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add the report command."""
    parser = add_command(subparsers, common, "report", "Write the report of a study run directory.", EXAMPLES, handler=run)
    parser.add_argument("run_dir", type=Path, help="a study run directory")


def run(args: argparse.Namespace) -> int:
    """Write the report."""
    from ..study.report import write_report

    print(f"report: {write_report(args.run_dir)}")
    return 0
