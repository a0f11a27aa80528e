"""giblet's torchrun agent: ``python -m giblet.train.torchrun`` takes torchrun's arguments.

It is torchrun plus two things plain torchrun lacks: a stop signal (USR1 before a time limit, TERM,
INT) is passed to its workers and the agent waits for their checkpoint instead of killing them after
30 s, and it exits 75 when its workers did, so the job (and srun) end with 75 and a rerun resumes.
The brain model's training (:mod:`giblet.train.launch`) and the stimulus pretraining
(:mod:`giblet.pretrain.launch`) both start their processes through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from giblet.errors import ConfigError

log = logging.getLogger(__name__)

# Signals a stop: the trainer saves at the next step and exits 75 (giblet.train.stop_flag.StopFlag).
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
# torchrun keeps handling these; the stop signals are the agent's own (agent() below).
AGENT_SIGNALS = ("--signals-to-handle=SIGHUP,SIGQUIT",)


def check_gpus(requested: int, visible: int) -> None:
    """Raise if the job asked for more GPUs than it can see."""
    if requested > visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"CUDA_VISIBLE_DEVICES={shown!r}" if shown is not None else "CUDA_VISIBLE_DEVICES is not set"
        raise ConfigError(
            f"train.gpus is {requested} but this job sees {visible} GPU(s) ({where}). Lower train.gpus "
            "(0 trains on the CPU), or run where that many GPUs are visible")


@contextlib.contextmanager
def left_to_the_agents():
    """While the agents (or srun) run: a stop signal that reaches this process is theirs to act on
    (SLURM signals the step's every process itself), not a reason to die and orphan the training."""
    previous = {s: signal.signal(s, lambda signum, frame: None) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _workers(agent_pid: int) -> list[int]:
    """The agent's child processes: its training workers (torchrun starts each in its own session, so
    a signal to the agent's process group never reaches them)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == agent_pid:
                children.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return children


def _forward_stop_signals() -> None:
    """USR1/TERM/INT: pass the signal to the workers (they save at the next step and exit 75) and keep
    waiting. A second TERM or INT, or a stop before any worker started, ends the agent torchrun's way
    (TERM to the workers, SIGKILL after its shutdown timeout)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    forwarded: list[int] = []

    def handle(signum, frame):
        workers = _workers(os.getpid())
        if not workers or (forwarded and signum != signal.SIGUSR1):
            raise SignalException(f"agent {os.getpid()} got {signal.Signals(signum).name}",
                                  sigval=signal.Signals(signum))
        forwarded.append(signum)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for s in STOP_SIGNALS:
        signal.signal(s, handle)


def agent(argv: list[str]) -> int:
    """One node's torchrun agent (``argv``: torchrun's arguments). Returns 0, EXIT_RESUME when its
    workers saved after a stop signal, 1 when they failed otherwise, 128 + signal when it was stopped
    the hard way."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from giblet.train.engine import EXIT_RESUME

    args = get_args_parser().parse_args(argv)
    _forward_stop_signals()
    try:
        run(args)
    except ChildFailedError as error:
        codes = {failure.exitcode for failure in error.failures.values()}
        log.log(logging.INFO if codes == {EXIT_RESUME} else logging.ERROR, "training processes exited with %s",
                sorted(codes))
        return EXIT_RESUME if codes == {EXIT_RESUME} else 1
    except SignalException as error:
        return 128 + error.sigval
    return 0


if __name__ == "__main__":
    from giblet.logs import setup_logging

    setup_logging()
    sys.exit(agent(sys.argv[1:]))
