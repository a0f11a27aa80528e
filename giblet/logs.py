"""Logging and progress bars shared by every stage."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def setup_logging(logfile: str | None = None, level: int = logging.INFO) -> None:
    """Log to stderr, and also to ``logfile`` when given (Snakemake's ``log:``)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        handlers=handlers, force=True)


def progress(iterable: Iterable[T], desc: str, unit: str, enabled: bool = True, **kwargs) -> Iterable[T]:
    """A tqdm bar on stderr; in a log file (not a terminal) it updates every 10 s, not every step."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, unit=unit, disable=not enabled,
                mininterval=0.1 if interactive else 10.0, **kwargs)
