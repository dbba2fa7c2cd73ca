"""Errors a user can cause and fix: shown as one line, exit code 2, no traceback."""


class UserError(Exception):
    """A problem with the user's input (a path, a shape, a config key, an endpoint)."""


class OutputError(UserError):
    """The OS refused to write an output (read-only file system, full disk, permission denied): path and reason."""

    def __init__(self, path: object, reason: str, action: str = "write"):
        self.path, self.reason, self.action = str(path), reason, action
        super().__init__(f"cannot {action} {path}: {reason}")


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)
