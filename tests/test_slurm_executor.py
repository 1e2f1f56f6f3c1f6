"""The Slurm executor against a real one-node Slurm cluster on 127.0.0.1 (and real sshd).

The cluster is started by ``scripts/slurm-up.sh`` (installed with apt-get when missing)
and has no accounting database, as a small cluster often has: finished jobs are read
with ``scontrol``. Memory is enforced by jobacct_gather (OverMemoryKill).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import payloads
import steadyrun as run
from slurm_cluster import RecordingTunnel, echo_env_and_args, hog_memory, scontrol_job, wait_for
from steadyrun.errors import ExecutorError
from steadyrun.executors import executor_from_config
from steadyrun.executors.base import AttemptSpec
from steadyrun.executors.slurm.executor import SlurmExecutor
from steadyrun.executors.slurm.tunnel import SSHTunnel
from waiting import collect_outcomes

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("slurm_cluster")]
TESTS_DIR = Path(__file__).resolve().parent


def slurm(**options) -> SlurmExecutor:
    options.setdefault("poll_interval", 0.2)
    options.setdefault("time", "00:10:00")
    return SlurmExecutor(**options)


def spec(tmp_path: Path, name: str, payload, number: int = 1, **fields) -> AttemptSpec:
    folder = tmp_path / "exp" / "tasks" / name.replace("/", "_") / str(number)
    folder.mkdir(parents=True)
    return AttemptSpec(attempt_id=f"exp/{name}/{number}", task=name, number=number,
                       payload=payload, attempt_dir=folder,
                       env={"STEADYRUN_TASK": name}, **fields)



def dag_tasks() -> list:
    return [run.Task("prepare", run.Partial(payloads.add, 1, b=2)),
            run.Task("train", run.Config(payloads.add, 40, b=2), depends_on=["prepare"]),
            run.Task("fails", run.Partial(payloads.boom, "kaput"))]


def summary(result) -> dict:
    out = {}
    for name in ("prepare", "train", "fails"):
        r = result[name]
        out[name] = (r.state, r.kind, r.value if r.state == "succeeded" else None)
    return out


# --- running experiments ----------------------------------------------------------------


def test_experiment_gives_the_same_results_on_slurm_as_locally():
    local = run.Experiment(dag_tasks(), executor=run.LocalExecutor()).run(
        raise_on_failure=False)
    on_slurm = run.Experiment(dag_tasks(), executor=slurm()).run(raise_on_failure=False)
    assert summary(on_slurm) == summary(local) == {
        "prepare": ("succeeded", None, 3), "train": ("succeeded", None, 42),
        "fails": ("failed", "error", None)}
    err = on_slurm["fails"].error
    assert "RuntimeError: kaput" in err.remote_traceback
    assert "about to fail" in err.log_tail  # the job's stdout, in the attempt folder


def test_exit_3_is_an_error_with_that_exit_code():
    result = run.Experiment([run.Task("bad", run.Partial(payloads.exit_with, 3))],
                            executor=slurm()).run(raise_on_failure=False)
    bad = result["bad"]
    assert (bad.state, bad.kind, bad.error.exit_code) == ("failed", "error", 3)
    assert "exiting with 3" in bad.error.log_tail


def test_a_sweep_goes_in_one_array_and_polls_cost_one_squeue_each(caplog):
    tunnel = RecordingTunnel()
    ex = slurm(tunnel=tunnel, oversubscribe=4)  # 4 one-CPU tasks on a 2-CPU node: queue
    tasks = run.sweep(run.Task("sq", run.Partial(payloads.add, 1, b=0)), {"b": [0, 1, 2, 3]})
    with caplog.at_level(logging.INFO, logger="steadyrun.executors.slurm.executor"):
        result = run.Experiment(tasks, executor=ex).run()
    assert sorted(result[t.name].value for t in tasks) == [1, 2, 3, 4]
    sbatch = [c for c in tunnel.calls if c[0] == "sbatch"]
    assert len(sbatch) == 1, "the whole sweep is one submission"
    script = Path(sbatch[0][-1]).read_text()
    assert "#SBATCH --array=0-3" in script
    # status: one squeue per poll for all 4 jobs; accounting probed once, then scontrol
    # only when something left the queue (never more calls than polls)
    polls = tunnel.count("squeue")
    assert polls >= 1
    assert tunnel.count("sacct") == 1
    assert tunnel.count("scontrol") <= polls
    assert all(len(c[c.index("-j") + 1].split(",")) == 1 for c in tunnel.calls
               if c[0] == "squeue"), "one array id stands for all its elements"
    notes = [r for r in caplog.records if "accounting" in r.getMessage()]
    assert len(notes) == 1, "said once, not per poll"


def six_tasks(marker: str) -> list:
    prepare = run.Task("prepare", run.Partial(payloads.add, 1, b=1))
    sweep = run.sweep(run.Task("fit", run.Partial(payloads.add, 10, b=0),
                               depends_on=["prepare"]), {"b": [1, 2, 3, 4]})
    flaky = run.Task("flaky", run.Partial(payloads.fail_until, marker, 2),
                     retry=run.Retry(max_attempts=2, initial_delay=0.2, jitter=0))
    return [prepare, *sweep, flaky]


def test_six_tasks_with_a_dependency_and_a_sweep_match_the_local_results(tmp_path):
    local = run.Experiment(six_tasks(str(tmp_path / "local")),
                           executor=run.LocalExecutor()).run()
    tunnel = RecordingTunnel()
    ex = slurm(tunnel=tunnel, oversubscribe=4)
    on_slurm = run.Experiment(six_tasks(str(tmp_path / "slurm")), executor=ex).run()
    values = {name: r.value for name, r in on_slurm.items()}
    assert values == {name: r.value for name, r in local.items()}
    assert values["fit[b=4]"] == 14 and values["flaky"] == 2
    assert on_slurm["flaky"].attempts == 2  # failed once on Slurm, retried by policy
    # the 4-way sweep was one array job, submitted behind "prepare" (afterok)
    from steadyrun.store.db import Store

    keys = {}
    for name in values:
        attempt = Store().attempts(on_slurm.id, name)[-1]
        keys[name] = json.loads((Path(attempt.dir) / "slurm.json").read_text())["key"]
    fit_keys = [keys[f"fit[b={b}]"] for b in (1, 2, 3, 4)]
    array_ids = {k.split("_")[0] for k in fit_keys}
    assert len(array_ids) == 1 and all("_" in k for k in fit_keys)
    job = scontrol_job(fit_keys[0])
    assert job["ArrayJobId"] == array_ids.pop()
    assert job["JobState"] == "COMPLETED"


def test_tasks_with_different_resources_go_in_separate_jobs():
    tunnel = RecordingTunnel()
    tasks = [run.Task("small", run.Partial(payloads.add, 1)),
             run.Task("big", run.Partial(payloads.add, 2), resources=run.Resources(
                 cpus=1, memory="300MiB"))]
    result = run.Experiment(tasks, executor=slurm(tunnel=tunnel)).run()
    assert (result["small"].value, result["big"].value) == (1, 2)
    scripts = [Path(c[-1]).read_text() for c in tunnel.calls if c[0] == "sbatch"]
    assert len(scripts) == 2
    assert sum("#SBATCH --mem=300M" in s for s in scripts) == 1


# --- failure kinds ------------------------------------------------------------------------


def test_slurm_time_limit_is_a_timeout(tmp_path):
    ex = slurm()
    s = spec(tmp_path, "slow", run.Partial(payloads.sleep_for, 120))
    ex.launch(s)
    key = ex.job_key(s.attempt_id)
    wait_for(lambda: scontrol_job(key)["JobState"] == "RUNNING")
    # Slurm's limits are whole minutes; moving the end time makes the limit due now,
    # and slurmctld then times the job out exactly as at the end of --time.
    subprocess.run(["scontrol", "update", f"JobId={key}", "EndTime=now"], check=True)
    out = collect_outcomes(ex, 1)[s.attempt_id]
    ex.close()
    assert out.kind == "timeout", out
    assert "TIMEOUT" in out.message
    assert "DUE TO TIME LIMIT" in (s.attempt_dir / "stderr.log").read_text()


def test_task_timeout_cancels_the_job_as_a_timeout():
    task = run.Task("slow", run.Partial(payloads.sleep_for, 60), timeout=1.5)
    result = run.Experiment([task], executor=slurm()).run(raise_on_failure=False)
    assert (result["slow"].state, result["slow"].kind) == ("failed", "timeout")


def test_going_over_mem_is_oom():
    # jobacct_gather (OverMemoryKill) kills the job: FAILED 0:9 with slurmstepd's note
    task = run.Task("hog", run.Partial(hog_memory, 400, 8),
                    resources=run.Resources(memory="100MiB"), retry=run.Retry(max_attempts=1))
    result = run.Experiment([task], executor=slurm()).run(raise_on_failure=False)
    hog = result["hog"]
    assert (hog.state, hog.kind) == ("failed", "oom"), hog.error
    assert "over its memory limit" in str(hog.error), hog.error
    assert "Exceeded job memory limit" in hog.error.log_tail


def test_stop_cancels_with_scancel_and_close_cancels_the_rest(tmp_path):
    ex = slurm()
    a = spec(tmp_path, "a", run.Partial(payloads.sleep_for, 60))
    b = spec(tmp_path, "b", run.Partial(payloads.sleep_for, 60))
    assert ex.launch_many([a, b]) == {}
    key_a, key_b = ex.job_key(a.attempt_id), ex.job_key(b.attempt_id)
    assert key_a.endswith("_0") and key_b.endswith("_1")  # one array
    wait_for(lambda: scontrol_job(key_a)["JobState"] == "RUNNING")
    ex.stop(a.attempt_id, "cancelled")
    out = collect_outcomes(ex, 1)[a.attempt_id]
    assert out.kind == "cancelled"
    assert scontrol_job(key_a)["JobState"] == "CANCELLED"
    ex.close()
    wait_for(lambda: scontrol_job(key_b)["JobState"] == "CANCELLED", timeout=15)


def test_ctrl_c_cancels_the_jobs_it_submitted(tmp_path, subprocess_env):
    script = tmp_path / "attached.py"
    script.write_text(textwrap.dedent(f"""
        import payloads, steadyrun as run
        from steadyrun.executors.slurm.executor import SlurmExecutor
        ex = SlurmExecutor(poll_interval=0.2, time="00:10:00")
        run.Experiment([run.Task("long", run.Partial(payloads.sleep_for, 60))],
                       executor=ex, home={str(tmp_path / 'home')!r}).run()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    info = wait_for(lambda: list((tmp_path / "home").rglob("slurm.json")), timeout=30)
    import json

    key = json.loads(info[0].read_text())["key"]
    wait_for(lambda: scontrol_job(key)["JobState"] == "RUNNING")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode != 0, output
    assert scontrol_job(key)["JobState"] == "CANCELLED", output
    assert "long: cancelled" in output


# --- quoting and dependencies -------------------------------------------------------------


def test_names_and_arguments_cannot_inject_commands(tmp_path):
    pwned = tmp_path / "pwned"
    name = f"x$(touch {pwned})`touch {pwned}`'\"\n;touch {pwned}"
    args = ("it's \"quoted\"", "line one\nline two $(touch " + str(pwned) + ")", "$HOME")
    ex = slurm()
    s = spec(tmp_path, name, run.Partial(echo_env_and_args, *args))
    ex.launch(s)
    out = collect_outcomes(ex, 1)[s.attempt_id]
    ex.close()
    assert out.ok, out
    import pickle

    value = pickle.loads((s.attempt_dir / "result.pkl").read_bytes())
    assert value == {"task": name, "args": list(args)}
    assert not pwned.exists()


def test_afterok_dependency_holds_the_dependant_until_its_dependency_succeeds(tmp_path):
    log = tmp_path / "order.log"
    ex = slurm()
    first = spec(tmp_path, "first", run.Partial(payloads.record, str(log), "first", 1.5))
    ex.launch(first)
    second = spec(tmp_path, "second", run.Partial(payloads.record, str(log), "second"))
    second.depends_on_jobs = [ex.job_key(first.attempt_id)]
    bad = spec(tmp_path, "bad", run.Partial(payloads.boom))
    ex.launch(bad)
    never = spec(tmp_path, "never", run.Partial(payloads.add, 1))
    never.depends_on_jobs = [ex.job_key(bad.attempt_id)]
    assert ex.launch_many([second, never]) == {}
    script = (Path(ex._attempts[second.attempt_id].remote_dir).parent / "job.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{ex.job_key(first.attempt_id)}" in script
    assert "#SBATCH --kill-on-invalid-dep=yes" in script
    outs = collect_outcomes(ex, 4)
    ex.close()
    assert outs[first.attempt_id].ok and outs[second.attempt_id].ok
    assert outs[bad.attempt_id].kind == "error"
    assert outs[never.attempt_id].kind == "cancelled"
    assert "DependencyNeverSatisfied" in outs[never.attempt_id].message
    lines = [line.split()[:2] for line in log.read_text().splitlines()]
    assert lines == [["start", "first"], ["end", "first"], ["start", "second"],
                     ["end", "second"]]


def test_the_engine_submits_dependants_behind_afterok_and_withdraws_them_on_failure(
        tmp_path):
    log = tmp_path / "order.log"
    tasks = [run.Task("first", run.Partial(payloads.record, str(log), "first", 1.0)),
             run.Task("second", run.Partial(payloads.record, str(log), "second"),
                      depends_on=["first"]),
             run.Task("bad", run.Partial(payloads.boom)),
             run.Task("never", run.Partial(payloads.add, 1), depends_on=["bad"])]
    # room for all four at once: the dependants wait in Slurm's queue, not in ours
    result = run.Experiment(tasks, executor=slurm(oversubscribe=2.0)).run(
        raise_on_failure=False)
    assert result["second"].state == "succeeded" and result["never"].state == "skipped"
    from steadyrun.store.db import Store

    store = Store()
    first, = store.attempts(result.id, "first")
    second, = store.attempts(result.id, "second")
    assert second.started_at < first.ended_at  # submitted before its dependency ended
    scripts = [p.read_text() for p in Path(store.experiment_dir(result.id)).rglob("job.sh")]
    assert sum("--dependency=afterok:" in t for t in scripts) == 2
    never, = store.attempts(result.id, "never")
    assert never.state == "cancelled"  # withdrawn, not a failure of "never"
    lines = [line.split()[:2] for line in log.read_text().splitlines()]
    assert lines == [["start", "first"], ["end", "first"], ["start", "second"],
                     ["end", "second"]]


# --- capacity, config, dry run ----------------------------------------------------------------


def test_capacity_comes_from_sinfo_and_config_round_trips():
    ex = slurm(partition="debug", additional_parameters={"mail_type": "NONE"})
    cap = ex.capacity()
    assert cap.cpus == os.cpu_count() and cap.memory > 1 << 30 and cap.gpus == []
    again = executor_from_config(ex.to_config())
    assert isinstance(again, SlurmExecutor) and again.to_config() == ex.to_config()
    with pytest.raises(ExecutorError, match="Valid parameters are"):
        slurm(additional_parameters={"no_such_option": 1})


def test_detached_experiment_reconnects_from_its_recorded_config(subprocess_env):
    exp = run.Experiment([run.Task("bg", run.Partial(payloads.chatty, 3, 0.3))],
                         executor=slurm())
    exp.run(detach=True)
    code = textwrap.dedent(f"""
        import steadyrun as run
        exp = run.Experiment.from_id({exp.id!r})
        print("\\n".join(exp.logs("bg", follow=True)))
        print("STATE", exp.status().state, exp.results()["bg"].value)
    """)
    env = dict(subprocess_env, SLURM_CONF=os.environ["SLURM_CONF"])
    out = subprocess.run([sys.executable, "-c", code], env=env, timeout=90,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "line 2" in out.stdout and "STATE succeeded 3" in out.stdout


# --- through SSH ------------------------------------------------------------------------------


def ssh_tunnel(sshd: dict, tmp_path: Path, **kw) -> SSHTunnel:
    kw.setdefault("known_hosts", sshd["known_hosts"])
    return SSHTunnel("127.0.0.1", "root", port=sshd["port"], identity=sshd["identity"],
                     job_dir=str(tmp_path / "remote jobs"),
                     env={"SLURM_CONF": os.environ["SLURM_CONF"]}, **kw)


def test_the_same_experiment_runs_through_ssh(sshd_server, tmp_path):
    tunnel = ssh_tunnel(sshd_server, tmp_path)
    ex = slurm(tunnel=tunnel, python=sys.executable,
               env={"PYTHONPATH": os.pathsep.join([str(TESTS_DIR)])})
    result = run.Experiment(dag_tasks(), executor=ex).run(raise_on_failure=False)
    assert summary(result) == {"prepare": ("succeeded", None, 3),
                               "train": ("succeeded", None, 42),
                               "fails": ("failed", "error", None)}
    assert "about to fail" in result["fails"].error.log_tail  # logs came back
    copies = list((tmp_path / "remote jobs").rglob("payload.yaml"))
    assert len(copies) == 3, "each attempt folder was copied to the remote job_dir"
    config = ex.to_config()["tunnel"]
    assert config["type"] == "SSHTunnel" and config["known_hosts"] == sshd_server["known_hosts"]


def test_ssh_refuses_a_wrong_or_unknown_host_key(sshd_server, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{sshd_server['port']} "
                     + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    with pytest.raises(ExecutorError, match="host key does not match"):
        ssh_tunnel(sshd_server, tmp_path, known_hosts=str(wrong)).run(["true"])
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    with pytest.raises(ExecutorError, match="known_hosts|not found in known_hosts"):
        ssh_tunnel(sshd_server, tmp_path, known_hosts=str(empty)).run(["true"])
