"""Gangs on a real two-node Slurm cluster (``n1``, ``n2``: two slurmd on this machine).

One attempt runs as ranks on both nodes: DDP with torchrun across the nodes, plain ranks
started by steadyrun's node agents, a failing rank that ends the attempt (and every rank
on both nodes), cancellation, admission of gangs larger than a node, and the files a
gang leaves when the cluster is reached through SSH.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import ddp_payloads
import steadyrun as run
from slurm_cluster import RecordingTunnel, scontrol_job, wait_for
from steadyrun.errors import InsufficientResources
from steadyrun.executors import executor_from_config
from steadyrun.executors.base import AttemptSpec
from steadyrun.executors.slurm.executor import SlurmExecutor
from steadyrun.executors.slurm.tunnel import SSHTunnel
from steadyrun.store.db import Store
from waiting import collect_outcomes

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(240)]
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def two_nodes(slurm_cluster_2nodes: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Slurm's commands (here and in the jobs) talk to the two-node cluster."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster_2nodes)
    return slurm_cluster_2nodes


def gang(**options) -> SlurmExecutor:
    options.setdefault("poll_interval", 0.2)
    options.setdefault("time", "00:10:00")
    options.setdefault("nodes", 2)
    return SlurmExecutor(**options)


def attempt_dir(result, task: str, number: int = -1) -> Path:
    return Path(Store().attempts(result.id, task)[number].dir)


def leftovers(home: Path) -> list[str]:
    """Processes (other than this one) whose command line or environment names the
    test's steadyrun home: every process of its jobs has it in its environment."""
    mark, found = str(home), []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if mark in cmdline or any(mark in v for v in env.values()):
            found.append(f"{proc.pid} {cmdline}")
    return found


def no_leftovers(home: Path) -> None:
    """Slurm ends a job's steps asynchronously: give it KillWait (2 s) and a margin."""
    try:
        wait_for(lambda: not leftovers(home), timeout=10, what="the gang's processes to end")
    except AssertionError:
        raise AssertionError(f"processes left: {leftovers(home)}") from None


# --- DDP across the two nodes ----------------------------------------------------------------


def test_ddp_with_torchrun_across_two_nodes_matches_one_process(steadyrun_home,
                                                                subprocess_env):
    pytest.importorskip("torch")
    task = run.Task("ddp", run.Partial(ddp_payloads.train_ddp, steps=8))
    result = run.Experiment([task], executor=gang(launcher="torchrun")).run()
    value = result["ddp"].value
    assert value["rank"] == 0 and value["world_size"] == 2
    reference = ddp_payloads.train_single(steps=8)
    for params in value["all_params"]:  # every rank ended with the same model
        assert params == pytest.approx(value["params"], abs=1e-6)
    assert value["params"] == pytest.approx(reference, abs=1e-5)
    folder = attempt_dir(result, "ddp")
    ranks = json.loads((folder / "ranks.json").read_text())
    assert sorted(r["node"] for r in ranks) == ["n1", "n2"]  # one rank on each node
    assert all(r["kind"] is None for r in ranks)
    for k in (0, 1):  # each node agent sampled its rank
        assert (folder / "samples" / f"node-{k}.jsonl").stat().st_size > 0
    script = next(Path(Store().experiment_dir(result.id)).rglob("job.sh")).read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "-m steadyrun.launchers.srun" in script
    no_leftovers(steadyrun_home)
    # the engine imported both nodes' samples; `steadyrun report` shows each rank's use
    sampled = {s.rank for s in Store().samples(result.id, "ddp") if s.rank is not None}
    assert sampled == {0, 1}
    out = subprocess.run([sys.executable, "-m", "steadyrun", "report", result.id, "--json"],
                         env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    page = Path(json.loads(out.stdout)["html"]).read_text()
    table = page.split('<table class="ranks">', 1)[1].split("</table>", 1)[0]
    rows = [[cell for cell in row.split("<td>")[1:]] for row in table.split("<tr")[2:]]
    cells = {int(r[2].split("<")[0]): r[4].split("<")[0] for r in rows}
    assert sorted(cells) == [0, 1]
    assert all(peak != "-" for peak in cells.values()), cells  # sampled, both ranks


# --- plain ranks --------------------------------------------------------------------------------


def test_plain_ranks_see_slurm_ranks_on_both_nodes(steadyrun_home):
    task = run.Task("env", run.Partial(ddp_payloads.rank_env))
    result = run.Experiment([task], executor=gang()).run()
    folder = attempt_dir(result, "env")
    seen = [pickle.loads((folder / "ranks" / str(r) / "result.pkl").read_bytes())
            for r in (0, 1)]
    assert [s["SLURM_PROCID"] for s in seen] == ["0", "1"]
    assert [s["RANK"] for s in seen] == ["0", "1"]
    assert {s["WORLD_SIZE"] for s in seen} == {"2"}
    assert {s["SLURM_LOCALID"] for s in seen} == {"0"}
    assert seen[0]["MASTER_ADDR"] == seen[1]["MASTER_ADDR"] == "127.0.0.1"
    assert result["env"].value == seen[0]  # the attempt's value is rank 0's
    infos = [json.loads((folder / "ranks" / str(r) / "rank.json").read_text()) for r in (0, 1)]
    assert [i["node"] for i in infos] == ["n1", "n2"]
    gang_file = json.loads((folder / "gang.json").read_text())
    assert gang_file["master_port"] == int(seen[0]["MASTER_PORT"])
    no_leftovers(steadyrun_home)


def test_two_plain_ranks_per_node_on_two_nodes(steadyrun_home):
    # half a CPU per rank: a node's two ranks share its one CPU (--cpus-per-task=1)
    task = run.Task("env", run.Partial(ddp_payloads.rank_env),
                    resources=run.Resources(cpus=0.5))
    result = run.Experiment([task], executor=gang(ntasks_per_node=2)).run()
    folder = attempt_dir(result, "env")
    seen = [pickle.loads((folder / "ranks" / str(r) / "result.pkl").read_bytes())
            for r in range(4)]
    assert [s["SLURM_PROCID"] for s in seen] == ["0", "1", "2", "3"]
    assert [s["SLURM_LOCALID"] for s in seen] == ["0", "1", "0", "1"]
    assert [s["GROUP_RANK"] for s in seen] == ["0", "0", "1", "1"]
    assert {s["WORLD_SIZE"] for s in seen} == {"4"}
    nodes = [json.loads((folder / "ranks" / str(r) / "rank.json").read_text())["node"]
             for r in range(4)]
    assert nodes == ["n1", "n1", "n2", "n2"]
    script = next(Path(Store().experiment_dir(result.id)).rglob("job.sh")).read_text()
    assert "#SBATCH --cpus-per-task=1" in script.splitlines()
    no_leftovers(steadyrun_home)


# --- failures ---------------------------------------------------------------------------------


def test_a_rank_failing_on_the_second_node_fails_the_attempt_quickly(steadyrun_home):
    # static rendezvous: rank 1 is node 1's (n2) only rank; rank 0 waits until stopped
    task = run.Task("bad", run.Partial(ddp_payloads.fail_on_rank, 1, 1.0),
                    retry=run.Retry(max_attempts=1))
    ex = gang(launcher=run.Torchrun(rdzv_backend="static"))
    result = run.Experiment([task], executor=ex).run(raise_on_failure=False)
    ended = time.time()
    bad = result["bad"]
    assert (bad.state, bad.kind) == ("failed", "error")
    raised = _raised_at(result)
    assert ended - raised < 10, f"the attempt ended {ended - raised:.1f}s after the raise"
    assert "rank 1 of 2" in str(bad.error) and "n2" in str(bad.error)
    assert "ValueError: rank 1 gives up" in bad.error.remote_traceback
    assert "fail_on_rank" in bad.error.remote_traceback
    ranks = json.loads((attempt_dir(result, "bad") / "ranks.json").read_text())
    assert ranks[1]["kind"] == "error" and ranks[0]["kind"] == "lost"
    no_leftovers(steadyrun_home)


def _raised_at(result) -> float:
    found = list(Path(Store().experiment_dir(result.id)).rglob("raised_at"))
    assert found, "the failing rank did not record when it raised"
    return float(found[0].read_text())


def test_a_gang_failing_once_is_retried_and_succeeds(steadyrun_home):
    pytest.importorskip("torch")
    # plain ranks (no torchrun agents to start: half the time) training with DDP
    task = run.Task("flaky", run.Partial(ddp_payloads.train_ddp, steps=4, fail_rank=1,
                                         fail_marker="failed-once"),
                    retry=run.Retry(max_attempts=2, initial_delay=0))
    result = run.Experiment([task], executor=gang()).run()
    flaky = result["flaky"]
    assert flaky.state == "succeeded" and flaky.attempts == 2
    assert flaky.value["world_size"] == 2
    first = json.loads((attempt_dir(result, "flaky", 0) / "error.json").read_text())
    assert "rank 1 of 2" in first["message"] and "fails on purpose" in first["message"]
    no_leftovers(steadyrun_home)


def test_scancel_ends_every_rank_on_both_nodes(tmp_path, steadyrun_home):
    folder = tmp_path / "exp" / "tasks" / "forever" / "1"
    folder.mkdir(parents=True)
    spec = AttemptSpec(attempt_id="exp/forever/1", task="forever", number=1,
                       payload=run.Partial(ddp_payloads.sleep_forever), attempt_dir=folder,
                       env={"STEADYRUN_TASK": "forever"})
    ex = gang(ntasks_per_node=1)
    ex.launch(spec)
    key = ex.job_key(spec.attempt_id)
    wait_for(lambda: all((folder / "ranks" / str(r) / "rank.json").exists() for r in (0, 1)),
             timeout=60, what="both ranks to start")
    pids = [json.loads((folder / "ranks" / str(r) / "rank.json").read_text())["pid"]
            for r in (0, 1)]
    assert all(psutil.pid_exists(p) for p in pids)
    assert len(leftovers(steadyrun_home)) >= 4  # the scan sees the job: leader, agents, ranks
    ex.stop(spec.attempt_id, "cancelled")
    out = collect_outcomes(ex, 1)[spec.attempt_id]
    ex.close()
    assert out.kind == "cancelled", out
    assert scontrol_job(key)["JobState"] == "CANCELLED"
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=10,
             what="the ranks to end")
    no_leftovers(steadyrun_home)


# --- admission and configuration ----------------------------------------------------------


def test_gangs_larger_than_the_nodes_are_refused_before_submission():
    tunnel = RecordingTunnel()
    task = run.Task("t", run.Partial(ddp_payloads.rank_env), resources=run.Resources(cpus=1))
    with pytest.raises(InsufficientResources, match="has 2 node"):
        run.Experiment([task], executor=gang(nodes=3, tunnel=tunnel)).run()
    # two one-CPU ranks per node do not fit nodes of one CPU
    with pytest.raises(InsufficientResources, match=r"2 rank\(s\) of cpus=1.*per node"):
        run.Experiment([task], executor=gang(ntasks_per_node=2, tunnel=tunnel)).run()
    assert tunnel.count("sbatch") == 0


def test_a_gang_executor_round_trips_through_its_config():
    ex = gang(ntasks_per_node=1, launcher=run.Torchrun(rdzv_port=29555, max_restarts=1))
    again = executor_from_config(json.loads(json.dumps(ex.to_config())))
    assert isinstance(again, SlurmExecutor) and again.to_config() == ex.to_config()
    assert again.gang == ex.gang and again.gang.launcher.rdzv_port == 29555


# --- through SSH ----------------------------------------------------------------------------


def test_a_gang_through_ssh_brings_back_ranks_and_samples(sshd_server, tmp_path, two_nodes):
    tunnel = SSHTunnel("127.0.0.1", "root", port=sshd_server["port"],
                       identity=sshd_server["identity"], known_hosts=sshd_server["known_hosts"],
                       job_dir=str(tmp_path / "remote jobs"), env={"SLURM_CONF": two_nodes})
    ex = gang(tunnel=tunnel, python=sys.executable,
              env={"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent / "src")])})
    result = run.Experiment([run.Task("env", run.Partial(ddp_payloads.rank_env))],
                            executor=ex).run()
    assert result["env"].value["SLURM_PROCID"] == "0"
    folder = attempt_dir(result, "env")
    assert not folder.is_symlink()
    ends = json.loads((folder / "ranks.json").read_text())
    assert [e["rank"] for e in ends] == [0, 1]
    for r in (0, 1):
        assert (folder / "ranks" / str(r) / "result.pkl").exists()
        assert (folder / "ranks" / str(r) / "rank.json").exists()
        assert (folder / "samples" / f"node-{r}.jsonl").exists()
    remote = list((tmp_path / "remote jobs").rglob("ranks.json"))
    assert len(remote) == 1 and remote[0].resolve() != (folder / "ranks.json").resolve()


def test_slurm_sees_one_job_of_two_nodes(steadyrun_home):
    ex = gang(ntasks_per_node=1)
    result = run.Experiment([run.Task("env", run.Partial(ddp_payloads.rank_env))],
                            executor=ex).run()
    key = json.loads((attempt_dir(result, "env") / "slurm.json").read_text())["key"]
    job = scontrol_job(key)
    assert job["NumNodes"] == "2" and job["NodeList"] == "n[1-2]"
    assert job["JobState"] == "COMPLETED"
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True)
    assert sorted(out.stdout.split()[::2]) == ["n1", "n2"]
