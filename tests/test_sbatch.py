"""The Slurm executor's text side, without a cluster: options, quoting, the batch script
(golden file), and reading squeue/sacct/scontrol."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import steadyrun as run
from steadyrun.errors import ExecutorError
from steadyrun.executors import executor_from_config
from steadyrun.executors.base import AttemptSpec
from steadyrun.executors.slurm import sbatch as sb
from steadyrun.executors.slurm.executor import SlurmExecutor, _gres_gpus
from steadyrun.executors.slurm.tunnel import LocalTunnel, SSHTunnel, tunnel_from_config

GOLDEN = Path(__file__).resolve().parent / "golden" / "sbatch_array.sh"


def remote_executor(**options) -> SlurmExecutor:
    """An executor whose scripts do not depend on this machine (remote python, no
    parent path); nothing connects until a command runs."""
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


# --- the golden file ------------------------------------------------------------------------


def test_golden_array_script(tmp_path):
    ex = remote_executor(partition="gpu", account="ml", time="02:00:00", qos="normal",
                         constraint="a100&ib", additional_parameters={"mail_type": "END"},
                         setup_lines=["module load cuda/12.1"], env={"OMP_NUM_THREADS": "4"})
    resources = run.Resources(cpus=4, memory="16GiB", gpus=1)
    script = ex.dryrun(specs(tmp_path, ["train[lr=0.1]", "train[lr=0.01]"],
                             resources=resources))
    if os.environ.get("STEADYRUN_UPDATE_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), (
        "the batch script changed; if on purpose, rerun with STEADYRUN_UPDATE_GOLDEN=1")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_single_job_has_no_array_line_and_logs_into_index_0(tmp_path):
    script = remote_executor().dryrun(specs(tmp_path, ["one"])[0])
    assert "--array" not in script
    assert "#SBATCH --output=0/stdout.log" in script
    assert "#SBATCH --error=0/stderr.log" in script


def test_array_false_submits_one_job_each(tmp_path):
    script = remote_executor(array=False).dryrun(specs(tmp_path, ["a", "b"]))
    assert script.count("#!/bin/bash") == 2 and "--array" not in script


def test_different_resources_make_different_jobs(tmp_path):
    a = specs(tmp_path, ["a"])[0]
    b = specs(tmp_path, ["b"], resources=run.Resources(cpus=2))[0]
    script = remote_executor().dryrun([a, b])
    assert script.count("#!/bin/bash") == 2
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --cpus-per-task=2" in script


# --- options ------------------------------------------------------------------------------------


def test_resources_map_to_sbatch_options_unless_the_executor_sets_them():
    res = run.Resources(cpus=1.5, memory="1GiB", gpus=2)
    lines = remote_executor()._directives(res)
    assert {"#SBATCH --cpus-per-task=2", "#SBATCH --mem=1024M",
            "#SBATCH --gpus-per-node=2"} <= set(lines)
    lines = remote_executor(cpus_per_task=8, mem="64G", gpus_per_node=4)._directives(res)
    assert {"#SBATCH --cpus-per-task=8", "#SBATCH --mem=64G",
            "#SBATCH --gpus-per-node=4"} <= set(lines)


def test_unknown_parameters_are_refused_listing_the_known_ones():
    with pytest.raises(ExecutorError) as info:
        SlurmExecutor(additional_parameters={"gpus_per_nod": 1, "mail_type": "END"})
    message = str(info.value)
    assert "gpus_per_nod" in message and "Valid parameters are" in message
    assert "gpus-per-node" in message
    with pytest.raises(ExecutorError, match="set by the executor"):
        SlurmExecutor(additional_parameters={"output": "x.log"})


def test_directive_values_are_quoted_for_sbatch_and_line_breaks_refused():
    assert sb.directive("constraint", "a100&ib") == '#SBATCH --constraint="a100&ib"'
    assert sb.directive("time", "1-02:00:00") == "#SBATCH --time=1-02:00:00"
    assert sb.directive("comment", 'say "hi" # now') == (
        '#SBATCH --comment="say \\"hi\\" # now"')
    assert sb.directive("exclusive", True) == "#SBATCH --exclusive"
    assert sb.directive("exclusive", False) is None
    with pytest.raises(ExecutorError, match="line break"):
        sb.directive("comment", "one\n#SBATCH --uid=0")
    with pytest.raises(ExecutorError, match="line break"):
        SlurmExecutor(partition="debug\ntouch /tmp/x")


def test_job_names_are_reduced_to_safe_characters():
    assert sb.job_name("x$(touch /tmp/pwned)") == "x_touch_tmp_pwned"
    assert sb.job_name("train[lr=0.1]") == "train_lr_0.1"
    assert sb.job_name("$$$") == "steadyrun"


def test_config_round_trip_keeps_tunnel_settings():
    ex = SlurmExecutor(partition="p", time=30, setup_lines=["module load x"],
                       tunnel=SSHTunnel("h", "u", port=2222, identity="/k", job_dir="/j",
                                        known_hosts="/kh", env={"A": "1"}))
    again = executor_from_config(ex.to_config())
    assert again.to_config() == ex.to_config()
    assert isinstance(again.tunnel, SSHTunnel) and again.tunnel.port == 2222
    assert isinstance(tunnel_from_config(None), LocalTunnel)
    with pytest.raises(ExecutorError, match="unknown tunnel type"):
        tunnel_from_config({"type": "Telnet"})
    assert run.to_yaml(ex.to_config())  # stored in the experiment's definition


# --- quoting in the shell body --------------------------------------------------------------------


def test_script_quoting_survives_hostile_names_paths_and_values(tmp_path):
    """Run the rendered script with bash (as slurmd would): nothing is executed but the
    worker, which receives the attempt folder and the variables unchanged."""
    pwned = tmp_path / "pwned"
    evil = f"x$(touch {pwned})`touch {pwned}`'\"\n;touch {pwned} $HOME"
    submit = tmp_path / f"sub mit 'q' \"dq\" $(touch {pwned})\nnl"
    (submit / "0").mkdir(parents=True)
    fake_python = tmp_path / "fake python"
    fake_python.write_text('#!/bin/bash\nprintf "%s\\0" "$@" "$STEADYRUN_TASK" "$EXTRA" '
                           f'> {shlex.quote(str(tmp_path / "seen"))}\n')
    fake_python.chmod(0o755)
    script = sb.render_script(directives=[sb.directive("job-name", sb.job_name(evil))],
                              submit_dir=str(submit),
                              entries=[sb.ScriptEntry(0, {"STEADYRUN_TASK": evil})],
                              python=str(fake_python), env={"EXTRA": evil})
    path = tmp_path / "job.sh"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    proc = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    seen = (tmp_path / "seen").read_text().split("\0")[:-1]
    assert seen == ["-m", "steadyrun.attempt.worker", f"{submit}/0", evil, evil]
    assert not pwned.exists()


def test_bad_environment_names_are_refused():
    with pytest.raises(ExecutorError, match="not valid"):
        sb.render_script(directives=[], submit_dir="/x", python="p",
                         entries=[sb.ScriptEntry(0, {"A=$(x)": "1"})])


# --- reading Slurm ----------------------------------------------------------------------------


def test_parsers_read_what_slurm_prints():
    assert sb.parse_job_id("1234\n") == "1234"
    assert sb.parse_job_id("77;cluster\n") == "77"
    with pytest.raises(ExecutorError):
        sb.parse_job_id("sbatch: error: nope")
    q = sb.parse_squeue("12_0 RUNNING None\n12_1 PENDING Resources\n13 PENDING Dependency\n")
    assert q["12_1"] == sb.JobInfo("12_1", "PENDING", "Resources")
    assert q["13"].reason == "Dependency"
    acct = sb.parse_sacct("12_0|COMPLETED|0:0|None\n12_0.batch|COMPLETED|0:0|\n"
                          "13|CANCELLED by 0|0:15|None\n")
    assert set(acct) == {"12_0", "13"}
    assert acct["13"].state == "CANCELLED" and acct["13"].signal == 15
    ctl = sb.parse_scontrol(
        "JobId=5 ArrayJobId=4 ArrayTaskId=0 JobName=x JobState=COMPLETED Reason=None "
        "ExitCode=0:0\nJobId=9 JobName=y JobState=FAILED Reason=NonZeroExitCode "
        "ExitCode=3:0\n")
    assert ctl["4_0"].state == "COMPLETED"
    assert (ctl["9"].state, ctl["9"].exit_code, ctl["9"].signal) == ("FAILED", 3, 0)
    assert sb.split_keys(["12_0", "12_1", "9", "100_3"]) == ["9", "12", "100"]
    assert _gres_gpus("gpu:a100:4(S:0-1),gpu:2") == 6 and _gres_gpus("(null)") == 0


@pytest.mark.parametrize("state, exit_code, stop_kind, tail, kind", [
    ("COMPLETED", "0:0", None, "", None),
    ("FAILED", "3:0", None, "", "error"),
    ("FAILED", "0:9", None, "slurmstepd: error: Exceeded job memory limit", "oom"),
    ("FAILED", "0:9", None, "", "error"),
    ("OUT_OF_MEMORY", "0:125", None, "", "oom"),
    ("TIMEOUT", "0:15", None, "", "timeout"),
    ("DEADLINE", "0:15", None, "", "timeout"),
    ("CANCELLED", "0:15", None, "", "cancelled"),
    ("CANCELLED", "0:15", "timeout", "", "timeout"),
    ("PREEMPTED", "0:15", None, "", "preempted"),
    ("FAILED", "76:0", None, "", "preempted"),
    ("FAILED", "76:0", "cancelled", "", "cancelled"),
    ("TIMEOUT", "0:15", "preempted", "", "preempted"),
    ("NODE_FAIL", "0:0", None, "", "lost"),
    ("BOOT_FAIL", "0:0", None, "", "lost"),
    ("SOMETHING_NEW", "0:0", None, "", "lost"),
])
def test_final_states_map_to_failure_kinds(state, exit_code, stop_kind, tail, kind):
    code, _, sig = exit_code.partition(":")
    info = sb.JobInfo("7", state, "None", int(code), int(sig))
    got, exit_status, message = sb.classify(info, stop_kind, tail)
    assert got == kind
    assert state in message
    if state == "FAILED" and sig == "0":
        assert exit_status == int(code)
    if sig == "9":
        assert exit_status == 137


def test_sbatch_parameter_list_matches_this_sbatch():
    """Every option the installed sbatch documents is known (where sbatch exists)."""
    import shutil

    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not installed here")
    out = subprocess.run(["sbatch", "--help"], capture_output=True, text=True).stdout
    import re

    documented = set(re.findall(r"^\s+(?:-\w, )?--([a-z][a-z-]+)", out, re.M))
    missing = documented - sb.SBATCH_PARAMETERS - set(sb.MANAGED_PARAMETERS) - {
        "help", "usage", "version", "quiet", "verbose", "input", "test-only"}
    assert not missing, f"sbatch options not in SBATCH_PARAMETERS: {sorted(missing)}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
