"""Command-line entry point: `safety-subspaces <command>`. Thin: parse, call the library, print."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# Threaded BLAS spinning hurts badly on shared machines; must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Each module defines register(subparsers, common) and sets `handler` on its parsers.
COMMAND_MODULES = ["project", "defend", "finetune", "organism", "evaluate", "rescore", "overlap", "analyse", "run",
                   "report", "power", "cache"]

DESCRIPTION = """\
Does safety alignment live in its own linear subspace of weights or activations?

Typical flow: finetune -> project (energy kept, projected checkpoints) -> evaluate
(utility, harm) -> overlap (MSO of weights and activations) -> report. `run` does all
of it from one study config; with no config it runs the built-in organism study.
"""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line and exit code 2, and whose help can end with registries' texts.

    `registries` holds (module, name) of registries whose names, options and docs --help lists; they are loaded only
    when the help is shown, so building the parser stays cheap.
    """

    registries: list[tuple[str, str]]

    def format_help(self) -> str:
        """The usual help, then the help text of each registry named in `registries`."""
        text = super().format_help()
        for module, name in getattr(self, "registries", []):
            text += "\n" + getattr(importlib.import_module(module), name).help_text() + "\n"
        return text

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print one `error:` line naming the problem and exit 2."""
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def common_options() -> argparse.ArgumentParser:
    """Options every command accepts."""
    from ._help import at_least

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=at_least(1), default=None, help="CPU threads for torch (default: torch's; env SAFETY_SUBSPACES_THREADS)")
    common.add_argument("--json", action="store_true", help="print machine-readable results to stdout")
    common.add_argument("--quiet", action="store_true",
                        help="no progress bars or status lines (ours, transformers', datasets' and lm-eval's)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every available command."""
    from .. import __version__

    parser = Parser(
        prog="safety-subspaces",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)
    common = common_options()
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    from ..errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    if args.quiet:
        from ..progress import set_quiet

        set_quiet()
    try:
        from ..runtime import configure_threads
        from ._help import apply_cache_options

        configure_threads(args.threads)
        apply_cache_options(args)
        return int(args.handler(args) or 0)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except OSError as exc:  # last resort for an OS refusal not converted where it happened (it names its file)
        if exc.filename is None:
            raise
        sys.stderr.write(f"error: {exc.filename}: {exc.strerror or type(exc).__name__}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; rerun the same command to resume\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
