"""Start training the way the ``train`` rule asks for it: one CPU process, or one process per GPU.

Snakemake schedules the job with ``resources: gpus=N`` but never sets ``CUDA_VISIBLE_DEVICES``, so
the GPUs this job may use are whatever the environment makes visible (SLURM sets it for allocated
GPUs; on a shared server set it yourself). The check below turns "fewer GPUs than requested" into a
clear error before any process starts.

With ``train.nodes`` > 1 the job must be a SLURM allocation of that many nodes: ``srun`` starts one
task per node, each task a torchrun agent (``python -m giblet.train.launch``, torchrun's own
arguments) with ``train.gpus`` processes, and the agents meet in a c10d rendezvous on the first
node. That agent is torchrun plus two things plain torchrun lacks: a stop signal (USR1 before a
time limit, TERM, INT) is passed to its workers and the agent waits for their checkpoint instead of
killing them after 30 s, and it exits 75 when its workers did, so srun (and the job) end with 75.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

from giblet.errors import ConfigError
from giblet.train.torchrun import AGENT_SIGNALS, check_gpus, left_to_the_agents

log = logging.getLogger(__name__)

# The c10d rendezvous listens on the first node at RDZV_PORT + (job ID mod 1000), so two jobs that share
# a node rarely collide; GIBLET_RDZV_PORT in the environment overrides it.
RDZV_PORT = 29400


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
    """The command for ``gpus`` > 1 processes on this machine, or None to train in this process: the
    agent below (torchrun's ``--standalone``), so a stop signal saves and exits 75 as on several nodes."""
    if gpus <= 1:
        return None
    return [sys.executable, "-m", "giblet.train.torchrun", "--standalone", f"--nproc-per-node={gpus}",
            *AGENT_SIGNALS, "-m", "giblet.train.loop", manifest, out_dir, "--params", json.dumps(params)]


@dataclass(frozen=True)
class Allocation:
    """The SLURM job a multi-node training runs in."""

    job_id: str
    hosts: tuple[str, ...]
    cpus_per_node: int


def rendezvous_port(job_id: str, env=os.environ) -> int:
    if env.get("GIBLET_RDZV_PORT"):
        return int(env["GIBLET_RDZV_PORT"])
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return RDZV_PORT + int(digits) % 1000


def _scontrol(*args: str) -> str:
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise ConfigError(f"train.nodes > 1 needs SLURM's scontrol, and `scontrol {' '.join(args)}` failed: "
                          f"{getattr(error, 'stderr', '') or error}") from error


def slurm_allocation(nodes: int, env=os.environ, scontrol=_scontrol) -> Allocation:
    """The job's nodes (``scontrol show hostnames``) and CPUs per node, checked against ``train.nodes``.

    Asks ``scontrol show job`` rather than reading SLURM_JOB_NODELIST: Snakemake's SLURM job step
    removes every SLURM_ variable but the job ID before it starts a rule.
    """
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        raise ConfigError(
            f"train.nodes is {nodes} but this is not a SLURM job (SLURM_JOB_ID is not set): training on "
            "several nodes runs under SLURM (profiles/README.md, Multi-node training). Set train.nodes: 1 "
            "to train on this machine")
    fields = dict(token.split("=", 1) for token in scontrol("show", "job", "--oneliner", job_id).split()
                  if "=" in token)
    hosts = tuple(scontrol("show", "hostnames", fields.get("NodeList", "")).split())
    if len(hosts) != nodes:
        raise ConfigError(
            f"train.nodes is {nodes} but SLURM job {job_id} has {len(hosts)} node(s) "
            f"({fields.get('NodeList')}): the train rule must request nodes={nodes}")
    return Allocation(job_id, hosts, max(1, int(fields.get("NumCPUs", len(hosts))) // len(hosts)))


def node_command(manifest: str, out_dir: str, params: dict, nodes: int, nproc: int, endpoint: str,
                 rdzv_id: str) -> list[str]:
    """What runs on each node: a torchrun agent (:mod:`giblet.train.torchrun`) starting ``nproc`` training processes,
    meeting the other nodes' agents at the c10d rendezvous ``endpoint`` (host:port)."""
    return [sys.executable, "-m", "giblet.train.torchrun", f"--nnodes={nodes}", f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id}", *AGENT_SIGNALS,
            "-m", "giblet.train.loop", manifest, out_dir, "--params", json.dumps(params)]


def multinode_command(manifest: str, out_dir: str, params: dict, nodes: int, gpus: int,
                      allocation: Allocation, port: int) -> list[str]:
    """``srun`` over the job's nodes, one task (a torchrun agent) per node with all its CPUs and
    ``gpus`` GPUs. ``--overlap``: the step may share the node with Snakemake's own job step."""
    # c10d ranks nodes by host name, so the rendezvous (and its store) lives with rank 0's node.
    endpoint = f"{min(allocation.hosts)}:{port}"
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--overlap",
            "--kill-on-bad-exit=0", f"--cpus-per-task={allocation.cpus_per_node}",
            *([f"--gres=gpu:{gpus}"] if gpus else [])]
    return srun + node_command(manifest, out_dir, params, nodes, max(gpus, 1), endpoint, allocation.job_id)


def launch(manifest: str, out_dir: str, params: dict) -> int:
    """Train (or resume) as ``params["gpus"]`` says; returns the exit status (0, or 75 after a signal)."""
    import torch

    from giblet.train.loop import train

    gpus, nodes = int(params.get("gpus", 0)), int(params.get("nodes", 1))
    if gpus == 0:
        if params.get("device", "auto") == "cuda":
            raise ConfigError("train.device is 'cuda' but train.gpus is 0: request GPUs with train.gpus")
        params = {**params, "device": "cpu"}  # no GPU was reserved for this job: do not take one
    else:
        if params.get("device", "auto") == "cpu":
            raise ConfigError(f"train.gpus is {gpus} but train.device is 'cpu'")
        check_gpus(gpus, torch.cuda.device_count())
        params = {**params, "device": "cuda"}
    if nodes > 1:
        allocation = slurm_allocation(nodes)
        command = multinode_command(manifest, out_dir, params, nodes, gpus, allocation,
                                    rendezvous_port(allocation.job_id))
        log.info("starting %d nodes x %d processes: %s", nodes, max(gpus, 1), " ".join(command[:-2]))
        with left_to_the_agents():
            return subprocess.run(command).returncode
    command = training_command(manifest, out_dir, params, gpus)
    if command is None:
        return train(manifest, out_dir, params)
    log.info("starting %d processes: %s", gpus, " ".join(command[:5]))
    with left_to_the_agents():
        return subprocess.run(command).returncode


