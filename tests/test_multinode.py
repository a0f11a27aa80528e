"""Training over several nodes (train.nodes > 1): the srun + torchrun command a SLURM job runs, and two
torchrun agents joined by a c10d rendezvous on localhost (2 "nodes" x 1 gloo process) that are
stopped the way SLURM stops a job and resumed, bit for bit equal to the uninterrupted run."""

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch

from giblet.errors import ConfigError
from giblet.train.launch import Allocation, launch, multinode_command, node_command, rendezvous_port, slurm_allocation
from giblet.train.loop import EXIT_RESUME
from tests.test_train import PARAMS, assert_identical, final_state, make_bundle

# Long enough (about 24 steps) that a stop signal sent after the first checkpoint lands mid-training.
MULTINODE = {**PARAMS, "epochs": 6, "nodes": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(manifest: Path, out: Path, nodes: int = 2) -> list[subprocess.Popen]:
    """What srun starts on each node (giblet's own per-node command), here all on this machine. Each
    agent leads its own session, as srun's tasks do, and logs to out/../<out.name>-node<i>.log."""
    command = node_command(str(manifest), str(out), MULTINODE, nodes, 1, f"127.0.0.1:{free_port()}",
                           uuid.uuid4().hex)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            for log in (open(out.parent / f"{out.name}-node{i}.log", "w") for i in range(nodes))]


def wait(agents: list[subprocess.Popen], timeout: float = 120) -> list[int]:
    try:
        return [agent.wait(timeout=timeout) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)


def logs(out: Path) -> str:
    return "".join(path.read_text() for path in sorted(out.parent.glob(f"{out.name}-node*.log")))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def uninterrupted(bundle, tmp_path_factory) -> dict:
    whole = tmp_path_factory.mktemp("multinode") / "whole"
    assert wait(start_nodes(bundle, whole)) == [0, 0], logs(whole)
    return final_state(whole)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
def test_two_node_run_stopped_by_signal_resumes_bitwise(bundle, uninterrupted, tmp_path, stop):
    """Two agents (c10d rendezvous) ran to the end; a second pair is sent USR1 (SLURM's time-limit
    signal) or TERM (preemption) after its first checkpoint: every rank stops at the same step, rank 0
    saves once, both agents exit 75; two fresh agents resume, and the result equals the uninterrupted
    run bit for bit."""
    broken = tmp_path / "broken"
    agents = start_nodes(bundle, broken)
    deadline = time.monotonic() + 120
    while not list((broken / "checkpoints").rglob("*.pt")):
        assert time.monotonic() < deadline and all(a.poll() is None for a in agents), logs(broken)
        time.sleep(0.05)
    for agent in agents:  # what SLURM does: every node's task gets the signal
        os.killpg(agent.pid, stop)
    assert wait(agents) == [EXIT_RESUME, EXIT_RESUME], logs(broken)
    stops = re.findall(rf"signal {stop.name}: saving at step (\d+)", logs(broken))
    assert len(stops) == 2 and stops[0] == stops[1], logs(broken)  # one line per rank, the same step
    saved = torch.load(broken / "checkpoints" / "latest.pt", weights_only=False)
    assert saved["step"] == int(stops[0]) and saved["world_size"] == 2
    index = json.loads((broken / "checkpoints" / "index.json").read_text())  # the save completed
    assert index["pending"] is None and index["files"]["latest.pt"]["step"] == saved["step"]
    assert (broken / "checkpoints" / "rolling" / f"step-{saved['step']:08d}.pt").exists()
    assert not (broken / "model.pt").exists()
    assert 0 < saved["step"] < max(h["step"] for h in uninterrupted["history"])

    for log in tmp_path.glob("broken-node*.log"):
        log.rename(log.with_name(log.name.replace("broken", "stopped")))
    assert wait(start_nodes(bundle, broken)) == [0, 0], logs(broken)
    assert logs(broken).count(f"resumed at step {saved['step']}") == 2  # both ranks, from that checkpoint
    assert_identical(uninterrupted, final_state(broken))


def fake_scontrol(nodelist: str, hosts: list[str], cpus: int):
    calls = []

    def scontrol(*args):
        calls.append(args)
        if args[:2] == ("show", "job"):
            return (f"JobId={args[-1]} JobName=x NumNodes={len(hosts)} NumCPUs={cpus} ReqNodeList=(null) "
                    f"NodeList={nodelist}\n")
        assert args == ("show", "hostnames", nodelist)
        return "\n".join(hosts) + "\n"
    return scontrol, calls


def test_multinode_command_is_srun_of_one_torchrun_agent_per_node():
    scontrol, calls = fake_scontrol("gpu[09-10]", ["gpu09", "gpu10"], 128)
    allocation = slurm_allocation(2, {"SLURM_JOB_ID": "4711"}, scontrol)
    assert allocation == Allocation("4711", ("gpu09", "gpu10"), 64)
    assert calls[0] == ("show", "job", "--oneliner", "4711")
    assert rendezvous_port("4711", {}) == 29400 + 711
    assert rendezvous_port("4711", {"GIBLET_RDZV_PORT": "31000"}) == 31000
    command = multinode_command("m.json", "out", {"gpus": 8, "nodes": 2}, 2, 8, allocation, 30111)
    srun, agent = command[:command.index("-m")], command[command.index("-m"):]
    assert srun[0] == "srun" and {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=64",
                                  "--gres=gpu:8", "--overlap"} <= set(srun)
    assert agent[:2] == ["-m", "giblet.train.torchrun"]
    assert {"--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu09:30111",
            "--rdzv-id=4711"} <= set(agent)
    assert agent[-6:-3] == ["-m", "giblet.train.loop", "m.json"] and json.loads(agent[-1])["nodes"] == 2
    cpu = multinode_command("m.json", "out", {"gpus": 0}, 2, 0, allocation, 30111)
    assert "--nproc-per-node=1" in cpu and not any(arg.startswith("--gres") for arg in cpu)


def test_nodes_above_one_need_a_slurm_job_of_that_many_nodes(bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ConfigError, match=r"train.nodes is 2 but this is not a SLURM job"):
        launch(str(bundle), str(tmp_path), {**MULTINODE, "gpus": 0})
    assert not any(tmp_path.iterdir())
    scontrol, _ = fake_scontrol("gpu01", ["gpu01"], 16)
    with pytest.raises(ConfigError, match=r"train.nodes is 2 but SLURM job 7 has 1 node\(s\) \(gpu01\): "
                                          r"the train rule must request nodes=2"):
        slurm_allocation(2, {"SLURM_JOB_ID": "7"}, scontrol)


def test_nodes_is_a_run_key_that_still_reruns_the_rule():
    from giblet.train.params import learning_params, rule_params

    train = {"gpus": 4, "nodes": 2, "epochs": 3}
    assert "nodes" not in learning_params(train)  # the checkpoint's world-size check guards it
    assert rule_params(train) == {"epochs": 3, "gpus": 4, "nodes": 2}
    assert rule_params({**train, "nodes": 1}) == {"epochs": 3, "gpus": 4}  # single-node params unchanged
