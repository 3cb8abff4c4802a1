"""The cell's ``slurm:`` key and the job script, before anything is submitted: checked values (one
line each), nothing a shell could run smuggled onto an ``#SBATCH`` line, sbatch's own environment
defaults, and ``--dry-run`` showing the script and each node's command. No SLURM needed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from IPython.core.error import UsageError

from sft_magics.core.cluster import SlurmOptions, batch_script, shell_word, slurm_options, submission_environment
from sft_magics.core.errors import ConfigError
from sft_magics.core.train.slurm import job_script, node_command


@pytest.mark.parametrize(
    "value, said",
    [
        ("gpu", "must be a mapping of SLURM options"),
        ({"partitions": "gpu"}, "unknown option 'partitions'"),
        ({"nodes": 0}, "'slurm.nodes' must be a whole number from 1"),
        ({"nodes": "2"}, "'slurm.nodes' must be a whole number"),
        ({"gpus_per_node": True}, "'slurm.gpus_per_node' must be a whole number"),
        ({"time": "two hours"}, "is not a SLURM time limit"),
        ({"mem": "lots"}, "is not a SLURM memory size"),
        ({"partition": "gpu\n#SBATCH --uid=0"}, "has characters SLURM names do not"),
        ({"account": "lab; rm -rf ~"}, "has characters SLURM names do not"),
        ({"qos": "$(whoami)"}, "has characters SLURM names do not"),
        ({"extra": ["--constraint=a100 --exclusive"]}, "is not one sbatch option"),
        ({"extra": ["--comment=`id`"]}, "is not one sbatch option"),
        ({"extra": "--constraint=a100\nhostname"}, "is not one sbatch option"),
        ({"extra": [3]}, "must be a list of sbatch options"),
        ({"requeue": "yes"}, "'slurm.requeue' must be true or false"),
        ({"time": 1800}, "must be text in quotes"),
        ({"time": "5", "signal_seconds": 300}, "is not shorter than key 'slurm.time'"),
        ({"extra": ["--output=/etc/x"]}, "--output is set by the job script itself"),
        ({"extra": ["--export=NONE"]}, "--export is set by the job script itself"),
        ({"extra": ["-N", "4"]}, "-N is set by the job script itself"),
        ({"signal_seconds": 5}, "'slurm.signal_seconds' must be a whole number from 10"),
    ],
)
def test_a_bad_slurm_value_is_one_line_naming_the_key(value, said):
    with pytest.raises(ConfigError) as err:
        slurm_options(value)
    assert said in str(err.value) and "\n" not in str(err.value)


def test_good_values_are_read_as_slurm_writes_them():
    o = slurm_options(
        {
            "partition": "gpu",
            "nodes": 2,
            "gpus_per_node": 4,
            "cpus_per_task": 16,
            "mem": "200G",
            "time": "1-12:00:00",
            "account": "lab-1",
            "qos": "high",
            "extra": ["--constraint=a100", "#SBATCH --exclusive"],
        }
    )
    assert o.extra == ("--constraint=a100", "--exclusive") and o.time == "1-12:00:00" and o.requeue
    script = batch_script(o, job_name="sft-x", output="/r/slurm-%j.out", chdir="/w", command=[["true"]])
    for line in (
        "--partition=gpu",
        "--nodes=2",
        "--gpus-per-node=4",
        "--cpus-per-task=16",
        "--mem=200G",
        "--time=1-12:00:00",
        "--account=lab-1",
        "--qos=high",
        "--constraint=a100",
        "--exclusive",
        "--requeue",
        "--signal=B:USR1@300",
    ):
        assert f"#SBATCH {line}\n" in script
    subprocess.run(["bash", "-n", "-c", script], check=True)  # bash reads it


def test_the_cell_wins_over_sbatchs_environment_and_the_rest_is_sbatchs(monkeypatch):
    env = {"SBATCH_PARTITION": "debug", "SBATCH_ACCOUNT": "lab", "HOME": "/root"}
    given = submission_environment(slurm_options({"partition": "gpu"}), env)
    assert "SBATCH_PARTITION" not in given and given["SBATCH_ACCOUNT"] == "lab" and given["HOME"] == "/root"
    # Nor may the environment undo the script's own lines, or a surrounding allocation leak into the job.
    inside = {
        "SBATCH_SIGNAL": "USR2@1",
        "SBATCH_EXPORT": "NONE",
        "SLURM_JOB_ID": "9",
        "SLURM_MEM_PER_CPU": "1",
        "SLURM_CONF": "/c",
    }
    assert submission_environment(SlurmOptions(), inside) == {"SLURM_CONF": "/c"}


def test_the_node_command_is_pytorchs_launcher_not_ours(tmp_path):
    one = node_command(tmp_path / "r", SlurmOptions())
    assert one[1:4] == ["-m", "sft_magics", "worker"] and one[-1] == "--resume-if-any"
    many = node_command(tmp_path / "r", SlurmOptions(nodes=2, port=29600), nproc=4)
    assert many[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=$SLURM_NNODES", "--nproc_per_node=4", "--rdzv_backend=c10d"} <= set(many)
    assert "--rdzv_endpoint=$HEAD:$SFT_RDZV_PORT" in many and "--rdzv_id=$SLURM_JOB_ID" in many
    assert "export SFT_RDZV_PORT=29600\n" in job_script(tmp_path / "r", SlurmOptions(nodes=2, port=29600), nproc=4)
    assert "export SFT_RDZV_PORT=$((20000 + SLURM_JOB_ID % 20000))" in job_script(tmp_path / "r", SlurmOptions(nodes=2))
    assert "--standalone" in node_command(tmp_path / "r", SlurmOptions(), nproc=4)  # one node: no shared port
    acc = node_command(tmp_path / "r", SlurmOptions(nodes=2), nproc=2, accelerate_config=str(tmp_path / "fsdp.yaml"))
    assert acc[:2] == ["bash", "-c"] and "accelerate.commands.launch" in acc[2]
    # Each node's own shell expands its rank (the batch step runs on the first node only).
    script = job_script(tmp_path / "r", SlurmOptions(nodes=2), nproc=2, accelerate_config=str(tmp_path / "fsdp.yaml"))
    line = next(x.strip() for x in script.splitlines() if x.strip().startswith("bash -c"))
    printed = line.replace("bash -c 'exec " + sys.executable, 'bash -c \'printf "%s\\n"', 1)
    task = {
        "SLURM_NODEID": "1",
        "SLURM_NNODES": "2",
        "HEAD": "node7",
        "SFT_RDZV_PORT": "23456",
        "PATH": os.environ["PATH"],
    }
    words = subprocess.run(["bash", "-c", printed], env=task, capture_output=True, text=True, check=True).stdout.split()
    assert {"--machine_rank=1", "--num_machines=2", "--num_processes=4", "--main_process_ip=node7"} <= set(words)
    assert "--main_process_port=23456" in words


def test_a_dollar_in_a_path_is_never_expanded_in_the_job():
    assert shell_word("/scratch/$USER/runs") == "'/scratch/$USER/runs'"
    assert shell_word("$(reboot)") == "'$(reboot)'"
    assert shell_word("--rdzv_endpoint=$HEAD:$SFT_RDZV_PORT") == '"--rdzv_endpoint=$HEAD:$SFT_RDZV_PORT"'


def test_paths_an_sbatch_line_cannot_hold_are_refused(tmp_path):
    for bad in ("with space", "per%cent"):
        with pytest.raises(ConfigError, match="which an #SBATCH line cannot hold"):
            job_script(tmp_path / bad, SlurmOptions())


def test_dry_run_shows_the_job_script_and_each_nodes_command(
    shell, tiny_model, qa_jsonl, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("SBATCH_ACCOUNT", "lab-7")
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 4\nhub_token: hf_SECRETSECRETSECRET123\n"
    cell += "slurm:\n  nodes: 2\n  gpus_per_node: 4\n  time: '2:00:00'\n"
    shell.run_cell_magic("sft_train", "--launcher slurm --nproc 4 --dry-run --name preview -o plan", cell)
    out = capsys.readouterr().out
    assert "SLURM: 2 node(s) × 4 process(es); each node runs:" in out
    assert 'torch.distributed.run "--nnodes=$SLURM_NNODES" --nproc_per_node=4' in out
    assert "#SBATCH --gpus-per-node=4" in out and "#SBATCH --time=2:00:00" in out and "#!/bin/bash" in out
    assert "SLURM default from the environment: account = lab-7" in out
    assert "hf_SECRETSECRETSECRET123" not in out
    assert shell.user_ns["plan"]["steps"] == 4 and not (tmp_path / "runs" / "preview").exists()


def test_a_slurm_key_without_the_slurm_launcher_is_refused(shell, tiny_model, qa_jsonl, tmp_path):
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nslurm:\n  partition: gpu\n"
    with pytest.raises(UsageError, match="add --launcher slurm"):
        shell.run_cell_magic("sft_train", "--name nolauncher", cell)
    assert not (tmp_path / "runs" / "nolauncher").exists()


def test_the_job_script_holds_no_secret_and_names_how_to_resubmit(tmp_path):
    script = job_script(tmp_path / "runs" / "r", SlurmOptions(account="lab"))
    assert f"sbatch {tmp_path / 'runs' / 'r' / 'job.sbatch'}" in script
    assert "No token or other secret is written here" in script
