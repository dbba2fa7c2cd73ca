"""User-given names that become part of a path (fine-tune labels, study names, organism names): one checker."""

from __future__ import annotations

import re

from .errors import UserError

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")
NAME_RULE = "letters, digits and _ . + - only, starting with a letter, digit or _, at most 64 characters"


def is_name(name: object) -> bool:
    """Whether name is one safe path component (so never '..', a separator or an absolute path)."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def check_name(name: object, what: str) -> str:
    """The name itself, or a UserError naming it and the rule when it is not one safe path component."""
    if not is_name(name):
        raise UserError(f"{what} name {name!r}: use {NAME_RULE}")
    return name  # type: ignore[return-value]
