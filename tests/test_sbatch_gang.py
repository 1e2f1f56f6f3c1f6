"""Gangs on Slurm, the text side, without a cluster: the batch script of a gang (golden
file), one node's share of the resources, admission against the nodes, the leader's
``srun`` line and its rendezvous port."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import steadyrun as run
from steadyrun.errors import ExecutorError, InsufficientResources
from steadyrun.executors import executor_from_config
from steadyrun.executors.base import AttemptSpec
from steadyrun.executors.slurm import gang as sg
from steadyrun.executors.slurm.executor import SlurmExecutor
from steadyrun.executors.slurm.tunnel import SSHTunnel
from steadyrun.launchers import Gang, Torchrun
from steadyrun.launchers import srun as leader

GOLDEN = Path(__file__).resolve().parent / "golden" / "sbatch_gang.sh"
NODES = {"n1": sg.NodeShape(8, 64 << 30, 4), "n2": sg.NodeShape(8, 64 << 30, 4),
         "small": sg.NodeShape(2, 4 << 30, 0)}


def remote_executor(**options) -> SlurmExecutor:
    tunnel = SSHTunnel("login.example.org", "alice", job_dir="/scratch/alice/jobs")
    return SlurmExecutor(tunnel=tunnel, python="/opt/venv/bin/python", **options)


def specs(tmp_path: Path, names: list[str], **fields) -> list[AttemptSpec]:
    out = []
    for name in names:
        folder = tmp_path / "exp-1" / "tasks" / name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        out.append(AttemptSpec(attempt_id=f"exp-1/{name}/1", task=name, number=1,
                               payload=None, attempt_dir=folder,
                               env={"STEADYRUN_EXPERIMENT": "exp-1", "STEADYRUN_TASK": name,
                                    "STEADYRUN_ATTEMPT": "1"}, **fields))
    return out


def test_golden_gang_script(tmp_path):
    ex = remote_executor(partition="gpu", time="04:00:00", nodes=2, ntasks_per_node=4,
                         launcher=run.Torchrun(rdzv_port=29400),
                         setup_lines=["module load cuda/12.1"])
    resources = run.Resources(cpus=2, memory="8GiB", gpus=1)
    script = ex.dryrun(specs(tmp_path, ["pretrain[lr=0.1]", "pretrain[lr=0.01]"],
                             resources=resources))
    if os.environ.get("STEADYRUN_UPDATE_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), (
        "the batch script changed; if on purpose, rerun with STEADYRUN_UPDATE_GOLDEN=1")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # one node agent per node, with the node's share of 4 ranks
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32768M",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --array=0-1"):
        assert line in script.splitlines()
    assert script.rstrip().endswith(
        "exec /opt/venv/bin/python -m steadyrun.launchers.srun \"$ATTEMPT_DIR\"")


def test_executor_options_are_per_rank_cpus_and_per_node_memory_and_gpus(tmp_path):
    ex = remote_executor(nodes=3, ntasks_per_node=2, cpus_per_task=3, mem="100G",
                         gpus_per_node=8)
    script = ex.dryrun(specs(tmp_path, ["t"], resources=run.Resources(cpus=1, gpus=1))[0])
    lines = script.splitlines()
    assert "#SBATCH --nodes=3" in lines and "#SBATCH --ntasks-per-node=1" in lines
    assert "#SBATCH --cpus-per-task=6" in lines  # 2 ranks x 3 CPUs
    assert "#SBATCH --mem=100G" in lines and "#SBATCH --gpus-per-node=8" in lines


def test_plain_ranks_without_cpus_get_one_cpu_each(tmp_path):
    script = remote_executor(nodes=2, ntasks_per_node=3).dryrun(specs(tmp_path, ["t"])[0])
    assert "#SBATCH --cpus-per-task=3" in script.splitlines()
    assert "-m steadyrun.launchers.srun" in script


def test_one_process_attempts_keep_the_worker(tmp_path):
    script = remote_executor().dryrun(specs(tmp_path, ["t"])[0])
    assert "-m steadyrun.attempt.worker" in script and "launchers" not in script
    assert "#SBATCH --nodes=1" in script.splitlines()
    assert remote_executor().gang is None


def test_a_container_image_goes_to_the_leader_of_a_gang(tmp_path):
    ex = remote_executor(nodes=2, container_image="nvcr.io/nvidia/pytorch:24.01-py3")
    script = ex.dryrun(specs(tmp_path, ["t"])[0])
    assert ("exec /opt/venv/bin/python -m steadyrun.launchers.srun "
            "--container-image=nvcr.io/nvidia/pytorch:24.01-py3 \"$ATTEMPT_DIR\"") in script
    cmd = leader.step_command(Gang(nodes=2), "/d", "10.0.0.1", 20001, {}, image="img:1")
    assert "--container-image=img:1" in cmd and "--container-mounts=/d:/d" in cmd


def test_bad_gang_options_are_refused_at_once():
    with pytest.raises(ExecutorError, match="nodes=0"):
        SlurmExecutor(nodes=0)
    with pytest.raises(ExecutorError, match="not a launcher"):
        SlurmExecutor(nodes=2, launcher="mpirun")
    with pytest.raises(ExecutorError, match="disagree"):
        SlurmExecutor(ntasks_per_node=2, launcher=Torchrun(nproc_per_node=4))


def test_gang_config_round_trips():
    ex = remote_executor(nodes=2, launcher=Torchrun(nproc_per_node=4, rdzv_backend="static"))
    assert ex.gang == Gang(nodes=2, ntasks_per_node=4,
                           launcher=Torchrun(nproc_per_node=4, rdzv_backend="static"))
    config = json.loads(json.dumps(ex.to_config()))
    assert config["launcher"] == {"type": "torchrun", "nproc_per_node": 4,
                                  "rdzv_backend": "static", "rdzv_port": None,
                                  "max_restarts": 0}
    again = executor_from_config(config)
    assert again.gang == ex.gang and again.to_config() == ex.to_config()
    assert "nodes=2, ntasks_per_node=4, launcher='torchrun'" in repr(again)


# --- admission against the nodes ------------------------------------------------------------


def check(gang: Gang | None, res: run.Resources, **options) -> None:
    share = sg.node_share(gang, res, options.get("cpus_per_task"), options.get("mem"),
                          options.get("gpus_per_node"))
    sg.check_nodes(NODES, gang, share, res, "gpu", "train")


def test_a_gang_that_fits_two_nodes_passes():
    check(Gang(nodes=2, ntasks_per_node=4), run.Resources(cpus=2, memory="8GiB", gpus=1))
    check(None, run.Resources(cpus=8, gpus=4))
    check(None, run.Resources(cpus=2), mem="4G")


def test_a_node_share_larger_than_every_node_is_refused():
    with pytest.raises(InsufficientResources) as e:
        check(Gang(nodes=1, ntasks_per_node=8), run.Resources(cpus=2))
    message = str(e.value)
    assert "task 'train'" in message and "8 rank(s) of cpus=2" in message
    assert "no node of partition 'gpu' is that large" in message and "cpus=8" in message
    with pytest.raises(InsufficientResources, match="gpus=8"):
        check(Gang(nodes=1, ntasks_per_node=4), run.Resources(gpus=2))
    with pytest.raises(InsufficientResources, match="no node"):
        check(None, run.Resources(cpus=1), mem="65G")


def test_more_nodes_than_fit_are_refused():
    with pytest.raises(InsufficientResources, match="has 3 node"):
        check(Gang(nodes=4), run.Resources(cpus=1))
    with pytest.raises(InsufficientResources, match="only 2 of the 3 node"):
        check(Gang(nodes=3), run.Resources(cpus=4))
    check(Gang(nodes=3), run.Resources(cpus=2))  # the small node holds one such rank


def test_unknown_nodes_are_not_checked():
    sg.check_nodes(None, Gang(nodes=100), sg.NodeShare(10**6, None, None),
                   run.Resources(), None, "t")


def test_slurm_memory_values():
    assert sg.slurm_memory_bytes("4G") == 4 << 30
    assert sg.slurm_memory_bytes("500M") == 500 << 20
    assert sg.slurm_memory_bytes("2048") == 2048 << 20
    assert sg.slurm_memory_bytes("1T") == 1 << 40
    assert sg.slurm_memory_bytes("lots") is None


# --- the leader ---------------------------------------------------------------------------------


def test_the_leader_starts_one_agent_per_node_and_ends_the_step_on_a_bad_exit():
    gang = Gang(nodes=3, ntasks_per_node=2, launcher=Torchrun())
    cmd = leader.step_command(gang, "/scratch/a b/0", "10.1.2.3", 23456,
                              {"SLURM_CPUS_PER_TASK": "8"})
    assert cmd[:5] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1",
                       "--kill-on-bad-exit=1"]
    assert ("--export=ALL,STEADYRUN_MASTER_ADDR=10.1.2.3,STEADYRUN_MASTER_PORT=23456,"
            "STEADYRUN_GANG_COLLECTED=1") in cmd
    assert "--cpus-per-task=8" in cmd
    assert cmd[-3:] == ["-m", "steadyrun.launchers.node", "/scratch/a b/0"]


def test_the_rendezvous_port_comes_from_the_launcher_else_the_job():
    fixed = Gang(nodes=2, launcher=Torchrun(rdzv_port=29400), master_addr="10.0.0.7")
    assert leader.rendezvous(fixed, {"SLURM_JOB_ID": "77"}) == ("10.0.0.7", 29400)
    port = leader.derived_port("123456")
    assert port == leader.derived_port("123456") != leader.derived_port("123457")
    assert leader.PORT_BASE <= port < leader.PORT_BASE + leader.PORT_SPAN
    addr, chosen = leader.rendezvous(Gang(nodes=2, master_addr="h1"), {"SLURM_JOB_ID": "5"})
    assert addr == "h1" and leader.PORT_BASE <= chosen < leader.PORT_BASE + leader.PORT_SPAN


def test_the_leader_refuses_a_folder_without_a_gang(tmp_path, capsys):
    assert leader.main([str(tmp_path)]) == leader.EXIT_BAD_ATTEMPT_DIR
    assert "gang.json" in capsys.readouterr().err
    assert leader.main([str(tmp_path / "missing")]) == leader.EXIT_BAD_ATTEMPT_DIR
