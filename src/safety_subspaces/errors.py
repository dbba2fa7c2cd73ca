"""Errors a user can cause and fix: shown as one line, exit code 2, no traceback."""


class UserError(Exception):
    """A problem with the user's input (a path, a shape, a config key, an endpoint)."""


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)
