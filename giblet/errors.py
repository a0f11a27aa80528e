"""Errors about the user's input files: each names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """An input file is missing, corrupt, or holds data that cannot be used.

    The message always starts with the file's path, so the user knows which file to fix.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")
