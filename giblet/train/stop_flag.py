"""A stop request from the scheduler or the user, acted on at the next step boundary.

SLURM sends SIGUSR1 (``--signal=USR1@<seconds>``) or SIGTERM before a job's time is up; Ctrl-C sends
SIGINT. Any of them only sets a flag, so the loop can finish its step and save once
(:mod:`giblet.train.loop`).
"""

from __future__ import annotations

import signal


class StopFlag:
    """SIGINT/SIGTERM/SIGUSR1 set ``raised``; the loop acts on it at the next step boundary."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.raised = None
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        self.raised = signal.Signals(signum).name

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
