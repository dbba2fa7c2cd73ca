"""Shared helpers for building command parsers."""

from __future__ import annotations

import argparse
import sys


def add_command(subparsers, common: argparse.ArgumentParser, name: str, summary: str, examples: str, handler=None):
    """Add a subcommand with a summary, examples in its epilog, and the common options."""
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="examples:\n" + examples.rstrip() + "\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def add_group(parser: argparse.ArgumentParser, *, dest: str, metavar: str = "<what>", **options):
    """The subcommands of a command group; the group alone prints its help to stderr and exits 2."""
    parser.set_defaults(handler=lambda args: group_usage(parser), quiet=False, threads=None, json=False)
    return parser.add_subparsers(dest=dest, metavar=metavar, **options)


def group_usage(parser: argparse.ArgumentParser) -> int:
    """Print a command group's help to stderr; exit code 2."""
    parser.print_help(sys.stderr)
    return 2


def csv_list(kind: type = str):
    """An argparse type for comma-separated lists."""

    def parse(text: str):
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def key_value(text: str) -> tuple[str, str]:
    """An argparse type for NAME=VALUE."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def at_least(minimum: float, kind: type = int):
    """An argparse type for a number (int or float) of at least `minimum`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_a(kind)}, got {text!r}") from None
        if not value >= minimum:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def positive(kind: type = float):
    """An argparse type for a number greater than zero."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_a(kind)}, got {text!r}") from None
        if not value > 0:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _a(kind: type) -> str:
    """'an integer' or 'a number'."""
    return "an integer" if kind is int else "a number"


def add_allow_pickle(parser: argparse.ArgumentParser) -> None:
    """The --allow-pickle flag of every command that loads a model."""
    parser.add_argument("--allow-pickle", action="store_true",
                        help="accept pickle-only checkpoints (*.bin, *.pt), read with torch.load(weights_only=True); "
                             "default: safetensors only")


def name_help() -> str:
    """The rule for names that become file names, for --help texts."""
    from ..names import NAME_RULE

    return f"NAME becomes part of file names: {NAME_RULE}"


def svd_method(text: str) -> str:
    """An argparse type for --svd-method: analyses.common.check_svd_method, run when the flag is given."""
    from ..analyses.common import check_svd_method
    from ..errors import UserError

    try:
        return check_svd_method(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_svd_method(parser: argparse.ArgumentParser) -> None:
    """Add --svd-method: which exact float64 decomposition gives the left singular vectors."""
    parser.add_argument(
        "--svd-method", default="auto", type=svd_method, metavar="METHOD",
        help="exact float64 decomposition: qr (Householder QR in row blocks, SVD of R; no whole float64 copy), "
             "svd (LAPACK SVD of a float64 copy), gram (eigh of the Gram matrix when its spectrum shows a condition "
             "number <= 1e3, else qr), or auto (default: gram when one side is at least twice the other, else svd)",
    )


def show_registries(parser: argparse.ArgumentParser, *registries: tuple[str, str]) -> None:
    """List these registries' names, options and docs at the end of the parser's --help (loaded only then)."""
    parser.registries = [*getattr(parser, "registries", []), *registries]  # type: ignore[attr-defined]


class StartSpec(argparse.Action):
    """--X NAME: start one more registered thing (its --X-arg KEY=VALUE options follow it)."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), (value, [])])


def spec_arg_action(dest: str, flag: str, default: str | None):
    """An argparse action for --X-arg KEY=VALUE: an option of the last --X given (or of the default one)."""

    class AddOption(argparse.Action):
        """Append KEY=VALUE to the options of the last started spec."""

        def __call__(self, parser, namespace, value, option_string=None):
            given = [(name, list(pairs)) for name, pairs in getattr(namespace, dest) or []]
            if not given:
                if default is None:
                    parser.error(f"{option_string} {value}: give {flag} NAME first")
                given = [(default, [])]
            given[-1][1].append(value)
            setattr(namespace, dest, given)

    return AddOption


def add_spec_options(parser: argparse.ArgumentParser, flag: str, *, metavar: str, help: str, arg_help: str,
                     default: str | None = None) -> None:
    """--X NAME (repeatable) and --X-arg KEY=VALUE (an option of the --X before it): a registered thing and its options.

    The parsed value is a list of (NAME, [KEY=VALUE, ...]); with a default name, [] means just that one.
    """
    dest = flag.lstrip("-").replace("-", "_")
    parser.add_argument(flag, dest=dest, action=StartSpec, metavar=metavar, help=help, default=[])
    parser.add_argument(f"{flag}-arg", action=spec_arg_action(dest, flag, default), metavar="KEY=VALUE", help=arg_help)


def specs(registry, given, flag: str, default: str | None = None) -> list:
    """(NAME, [KEY=VALUE...]) pairs from the command line as registry Specs (names and options checked)."""
    from ..registry import Spec

    out = []
    for name, pairs in given or ([(default, [])] if default else []):
        canonical = registry.canonical(name, flag)
        out.append(Spec(canonical, registry.parse_pairs(canonical, pairs, f"{flag} {name} {flag}-arg")))
    return out


def rank_line(summary: dict, what: str) -> str:
    """One line on numerically zero directions from spectra.null_dirs_summary."""
    return (f"numerical rank of {what}: {summary['tensors_with_null_dirs']} of {summary['tensors']} tensors have "
            f"numerically zero directions ({summary['null_dirs']} in all; {summary['zero_tensors']} tensors entirely "
            "zero), left out of every basis")


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    """Add --cache-budget and --cache-dtype (process-wide SVD cache settings; see `safety-subspaces cache`)."""
    parser.add_argument("--cache-budget", type=at_least(0.0, float), metavar="GB",
                        help="SVD cache size budget in GB: least recently used entries are evicted beyond it at the end "
                             "(default 20; env SAFETY_SUBSPACES_CACHE_BUDGET)")
    parser.add_argument("--cache-dtype", choices=["float32", "float16"],
                        help="store new cached factors in float32 (default, exact) or float16 (half the disk; energies "
                             "within 2e+e² of exact, e = the factor's recorded rounding error; env SAFETY_SUBSPACES_CACHE_DTYPE)")


def apply_cache_options(args: argparse.Namespace) -> None:
    """Make --cache-budget / --cache-dtype the process's (and its workers') settings."""
    import os

    from ..spectra import BUDGET_ENV, DTYPE_ENV

    if getattr(args, "cache_budget", None) is not None:
        os.environ[BUDGET_ENV] = repr(args.cache_budget)
    if getattr(args, "cache_dtype", None):
        os.environ[DTYPE_ENV] = args.cache_dtype


def add_profile(parser: argparse.ArgumentParser) -> None:
    """Add --profile (per-stage wall and CPU seconds, printed and written to the manifest's `profile`)."""
    parser.add_argument("--profile", action="store_true",
                        help="time each stage (read, decompose, cache, frames, products, write, evaluate, swap, load): "
                             "print the table and write it to the manifest's `profile`")


def print_profile(rows: list[dict] | None) -> None:
    """Print a profile table to stderr (stdout stays the command's result, e.g. its --json)."""
    from ..profiling import format_table

    if rows:
        print("profile (exclusive wall and CPU seconds per stage):", file=sys.stderr)
        print(format_table(rows), file=sys.stderr)
