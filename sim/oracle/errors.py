"""The oracle's user-facing error and its progress callback type."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]  # one line of progress; the CLI prints it to stderr


class OracleSetupError(Exception):
    """Something the oracle needs cannot be had: a message for the user (exit 2, no traceback)."""
