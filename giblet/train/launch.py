"""Start training the way the ``train`` rule asks for it: one CPU process, or one process per GPU.

Snakemake schedules the job with ``resources: gpus=N`` but never sets ``CUDA_VISIBLE_DEVICES``, so
the GPUs this job may use are whatever the environment makes visible (SLURM sets it for allocated
GPUs; on a shared server set it yourself). The check below turns "fewer GPUs than requested" into a
clear error before any process starts.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from giblet.config import ConfigError

log = logging.getLogger(__name__)


def check_gpus(requested: int, visible: int) -> None:
    """Raise if the job asked for more GPUs than it can see."""
    if requested > visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"CUDA_VISIBLE_DEVICES={shown!r}" if shown is not None else "CUDA_VISIBLE_DEVICES is not set"
        raise ConfigError(
            f"train.gpus is {requested} but this job sees {visible} GPU(s) ({where}). Lower train.gpus "
            "(0 trains on the CPU), or run where that many GPUs are visible")


def granted_gpus(requested: int, granted: int) -> int:
    """How many GPU processes to start when the config asks for ``requested`` and Snakemake granted
    ``granted`` (it caps a job's ``gpus`` at ``--resources gpus=N``, as it caps threads at --cores).

    Fewer than requested is honoured with a warning (the global batch shrinks: batch_size is per
    GPU); none at all for a GPU config is an error, never a silent week on the CPU.
    """
    if requested > 0 and granted == 0:
        raise ConfigError(
            f"train.gpus is {requested} but Snakemake granted this job 0 GPUs (--resources gpus=0). "
            f"Run with --resources gpus={requested}, or set train.gpus: 0 to train on the CPU")
    if granted < requested:
        log.warning("train.gpus is %d but --resources gpus=%d: training with %d processes (the global batch "
                    "is %d x batch_size, not %d x)", requested, granted, granted, granted, requested)
    return min(requested, granted)


def training_command(manifest: str, out_dir: str, params: dict, gpus: int) -> list[str] | None:
    """The ``torchrun`` command for ``gpus`` > 1 processes, or None to train in this process."""
    if gpus <= 1:
        return None
    torchrun = str(Path(sys.executable).parent / "torchrun")
    return [torchrun, "--standalone", f"--nproc_per_node={gpus}", "-m", "giblet.train",
            manifest, out_dir, "--params", json.dumps(params)]


def launch(manifest: str, out_dir: str, params: dict) -> int:
    """Train (or resume) as ``params["gpus"]`` says; returns the exit status (0, or 75 after a signal)."""
    import torch

    from giblet.train.loop import train

    gpus = int(params.get("gpus", 0))
    if gpus == 0:
        if params.get("device", "auto") == "cuda":
            raise ConfigError("train.device is 'cuda' but train.gpus is 0: request GPUs with train.gpus")
        params = {**params, "device": "cpu"}  # no GPU was reserved for this job: do not take one
    else:
        if params.get("device", "auto") == "cpu":
            raise ConfigError(f"train.gpus is {gpus} but train.device is 'cpu'")
        check_gpus(gpus, torch.cuda.device_count())
        params = {**params, "device": "cuda"}
    command = training_command(manifest, out_dir, params, gpus)
    if command is None:
        return train(manifest, out_dir, params)
    log.info("starting %d processes: %s", gpus, " ".join(command[:4]))
    return subprocess.run(command).returncode
