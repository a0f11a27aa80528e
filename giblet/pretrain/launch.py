"""Start pretraining as its rule asks: one process (CPU or one GPU), or one per GPU under torchrun.

The same agent as the brain model's training (:mod:`giblet.train.torchrun`): a stop signal reaches
the workers, which save and exit 75, and the job exits 75 so a rerun resumes.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from giblet.errors import ConfigError
from giblet.train.torchrun import AGENT_SIGNALS, check_gpus, left_to_the_agents

log = logging.getLogger(__name__)


def pretraining_command(kind: str, stimulus: str, out_dir: str, params: dict, tr: float, movie: str | None,
                        gpus: int) -> list[str] | None:
    """The torchrun agent's command for ``gpus`` > 1 processes, or None to pretrain in this process."""
    if gpus <= 1:
        return None
    return [sys.executable, "-m", "giblet.train.torchrun", "--standalone", f"--nproc-per-node={gpus}",
            *AGENT_SIGNALS, "-m", "giblet.pretrain", kind, str(stimulus), str(out_dir), "--tr", str(tr),
            *(["--movie", str(movie)] if movie else []), "--params", json.dumps(params)]


def launch_pretraining(kind: str, stimulus: str | Path, out_dir: str | Path, params: dict, tr: float,
                       movie: str | Path | None, gpus: int) -> int:
    """Pretrain (or resume) on ``gpus`` GPUs (0: the CPU); returns 0, or 75 after a signal."""
    import torch

    from giblet.pretrain.trainer import pretrain

    if gpus == 0:
        if params.get("device", "auto") == "cuda":
            raise ConfigError("train.device is 'cuda' but pretrain.gpus is 0: request GPUs with pretrain.gpus")
        params = {**params, "device": "cpu"}
    else:
        check_gpus(gpus, torch.cuda.device_count())
        params = {**params, "device": "cuda"}
    command = pretraining_command(kind, str(stimulus), str(out_dir), params, tr, str(movie) if movie else None, gpus)
    if command is None:
        return pretrain(kind, stimulus, out_dir, params, tr, movie)
    log.info("starting %d processes: %s", gpus, " ".join(command[:5]))
    with left_to_the_agents():
        return subprocess.run(command).returncode
