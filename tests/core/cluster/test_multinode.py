"""Several nodes without a second machine: the command a SLURM job's ``srun`` starts on each node
(``torchrun`` with c10d rendezvous on the first node), run twice on this host as two nodes' worth of
agents over gloo. Debian's slurm-wlm is built without ``--enable-multiple-slurmd``, so one host
cannot be two SLURM nodes: the agents are started here directly, with the variables SLURM gives each
task (``SLURM_NNODES``, ``SLURM_JOB_ID``) and ``HEAD`` (the first node), which the job script sets."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess

from sft_magics.core.cluster import SlurmOptions, shell_word
from sft_magics.core.files import read_events, read_json
from sft_magics.core.train.config import TrainSpec
from sft_magics.core.train.slurm import node_command
from sft_magics.core.train.trainer import train
from sft_magics.core.train.worker import prepare_run

# Two processes reduce their gradients in another order than one process sums them: the first step's
# loss agrees to about 1e-6, later ones drift by float32 rounding (measured: at most 3e-5 relative).
TOLERANCE = 2e-4  # relative


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir) -> dict[int, float]:
    return {
        e["step"]: e["loss"] for e in read_events(run_dir / "metrics.jsonl") if e.get("kind") == "log" and "loss" in e
    }


def test_two_nodes_of_torchrun_agents_train_as_one_process_with_the_same_global_batch(tiny_model, qa_jsonl, tmp_path):
    base = {"model": tiny_model, "dataset": qa_jsonl, "max_steps": 6, "logging_steps": 1, "seed": 3, "save_steps": 100}
    single = train(TrainSpec.from_mapping("single", {**base, "per_device_train_batch_size": 4}, str(tmp_path / "runs")))
    assert single.status == "finished"

    spec = TrainSpec.from_mapping("nodes", {**base, "per_device_train_batch_size": 2}, str(tmp_path / "runs"))
    port = _free_port()
    options = SlurmOptions(nodes=2, port=port)
    launch = {"launcher": "slurm", "nproc": 1, "slurm": {"nodes": 2}}
    kw = {"namespace": None, "resume": False, "overwrite": False, "resume_anyway": False, "files": None}
    folder, env = prepare_run(spec, world=2, launch=launch, **kw)
    folder.lock.release()  # handed over to rank 0, as a job's launch does
    command = "exec " + " ".join(shell_word(a) for a in node_command(folder.path, options))
    assert (
        "--rdzv_backend=c10d" in command
        and '"--rdzv_endpoint=$HEAD:' in command
        and "--nnodes=$SLURM_NNODES" in command
    )
    task_env = {
        **os.environ,
        **env,
        "HEAD": "127.0.0.1",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242",
        "SFT_RDZV_PORT": str(port),
    }
    nodes = [
        subprocess.Popen(
            ["bash", "-c", command], env=task_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    status = read_json(folder.path / "status.json")
    assert status["state"] == "finished" and status["world_size"] == 2
    events = list(read_events(folder.path / "metrics.jsonl"))
    assert sum(e["kind"] == "started" for e in events) == 1  # rank 0 alone writes the run folder
    two, one = _losses(folder.path), _losses(single.path)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5, 6]
    assert abs(two[1] - one[1]) < 1e-5, (one, two)  # the same first batch, split across the two nodes
    assert all(abs(two[s] - one[s]) < TOLERANCE * abs(one[s]) for s in one), (one, two)
    assert sum("finished at step 6" in o for o in outputs) == 2  # both nodes trained every step
    assert shlex.split(command)  # the command is one a shell reads back
