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


def traceback_to_log_files(error: BaseException) -> None:
    """Append ``error``'s traceback to the log files only: the console keeps its one-line message, the
    rule's log (where SLURM users look) gets the detail."""
    import traceback

    text = "".join(traceback.format_exception(error))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.stream.write(text)
                handler.flush()
            finally:
                handler.release()


def progress(iterable: Iterable[T], desc: str, unit: str, enabled: bool = True, **kwargs) -> Iterable[T]:
    """A tqdm bar on stderr; in a log file (not a terminal) it updates every 10 s, not every step."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, unit=unit, disable=not enabled,
                mininterval=0.1 if interactive else 10.0, **kwargs)
