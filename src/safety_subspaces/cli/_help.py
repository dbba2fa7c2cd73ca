"""Shared helpers for building command parsers."""

from __future__ import annotations

import argparse


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
