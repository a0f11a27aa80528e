"""The errors a user can fix: a bad input file (named) or a bad configuration key (named)."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """An input file is missing, corrupt, or holds data that cannot be used.

    The message always starts with the file's path, so the user knows which file to fix.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


class ConfigError(ValueError):
    """A configuration key is unknown, mistyped or out of range; the message names the key."""
