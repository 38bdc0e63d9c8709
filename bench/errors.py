"""Errors the user is told about in one line, and the one-line form of any exception."""

MESSAGE_LIMIT = 300  # characters: a CSV cell or a terminal line, not a traceback


class UsageError(Exception):
    """A user mistake: `python bench.py` prints it as one line on stderr and exits with code 2."""


class CsvFileError(ValueError):
    """A results CSV that cannot be used (not a CSV, wrong header, a value that is no number...);
    the message names the file and, where there is one, the line."""


def one_line(error: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """'TypeName: first line of the message', cut to `limit` characters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:limit]
