"""Env values never leave the processes that need them: not in messages, logs, error
files, status output, the database (WAL included) or ``definition.yaml``; and
``run.Secret`` is read from the launching environment at launch, also on resume."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import steadyrun as run
from waiting import wait_for

pytestmark = pytest.mark.timeout(120)

VALUE = "sk-live-XYZ-" + "7f3a9c"  # looks like an API key; unique enough to grep for
DIGEST = hashlib.sha256(VALUE.encode()).hexdigest()
# the script proves it got the value: it prints its hash and fails with 3 when it matches
CHECK = ('h=$(printf %s "$API_KEY" | sha256sum | cut -d" " -f1); echo "hash=$h"; '
         f'[ "$h" = "{DIGEST}" ] && exit 3; exit 9')


def grep_home(home: Path, needle: str) -> list[str]:
    """Every file under ``home`` whose bytes contain ``needle`` (sqlite db, WAL, logs)."""
    data = needle.encode()
    return [str(p) for p in home.rglob("*") if p.is_file() and data in p.read_bytes()]


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "steadyrun", *args], capture_output=True,
                          text=True, timeout=60, env={**_env(), "STEADYRUN_HOME": str(home)})


def _env() -> dict[str, str]:
    import os

    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src}


def assert_nowhere(home: Path, exp_id: str, error: BaseException) -> None:
    assert VALUE not in str(error) and VALUE not in repr(error)
    assert grep_home(home, VALUE) == []
    for args in (("status", exp_id, "--json"), ("status", exp_id), ("logs", exp_id),
                 ("show", exp_id)):
        out = cli(home, *args)
        assert VALUE not in out.stdout + out.stderr, args


def failed_id(home: Path) -> str:
    listed = json.loads(cli(home, "list", "--json").stdout)
    return listed[0]["id"]


@pytest.mark.parametrize("strategy", [None, "subprocess", "process", "thread", "sequential"])
def test_a_plain_value_reaches_the_script_and_is_written_nowhere(steadyrun_home, strategy):
    executor = None if strategy is None else run.LocalExecutor(strategy=strategy)
    script = run.Script(inline=CHECK, env={"API_KEY": VALUE})
    with pytest.raises(run.TaskFailed) as info:
        run.run(script, executor=executor)
    assert info.value.exit_code == 3  # the script saw exactly the value
    assert "API_KEY" in str(info.value)  # described by name
    assert_nowhere(steadyrun_home, failed_id(steadyrun_home), info.value)


@pytest.mark.parametrize("strategy", ["subprocess", "thread"])
def test_a_secret_is_read_at_launch_and_written_nowhere(steadyrun_home, monkeypatch,
                                                        strategy):
    monkeypatch.setenv("MY_API_KEY", VALUE)
    script = run.Script(inline=CHECK, env={"API_KEY": run.Secret("MY_API_KEY")})
    with pytest.raises(run.TaskFailed) as info:
        run.run(script, executor=run.LocalExecutor(strategy=strategy))
    assert info.value.exit_code == 3
    assert_nowhere(steadyrun_home, failed_id(steadyrun_home), info.value)
    definition = next(steadyrun_home.rglob("definition.yaml")).read_text()
    assert "!secret MY_API_KEY" in definition


def test_a_value_shaped_like_a_key_is_withheld_whatever_its_name(steadyrun_home):
    script = run.Script(inline=CHECK.replace("$API_KEY", "$LLM"), env={"LLM": VALUE})
    with pytest.raises(run.TaskFailed) as info:
        run.run(script)
    assert info.value.exit_code == 3
    assert_nowhere(steadyrun_home, failed_id(steadyrun_home), info.value)


def test_which_plain_values_look_like_credentials():
    from steadyrun.config.secrets import looks_secret

    for name in ("API_KEY", "HF_TOKEN", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY",
                 "GITHUB_AUTH", "PGPASS", "SENTRY_DSN"):
        assert looks_secret(name, "x"), name
    for value in ("sk-proj-abc", "ghp_abc", "hf_abc", "AKIAABCDEFGHIJKLMNOP",
                  "eyJhbGciOi.eyJzdWIi.sig"):
        assert looks_secret("X", value), value
    for name, value in (("SEED", "3"), ("OMP_NUM_THREADS", "4"), ("PATH", "/usr/bin")):
        assert not looks_secret(name, value)


def test_repr_and_yaml_show_names_only():
    script = run.Script(inline="echo hi\necho more", env={"A": VALUE, "B": run.Secret("B")})
    assert VALUE not in repr(script) and "A" in repr(script) and "B" in repr(script)
    assert repr(run.Secret("B")) == "Secret('B')"
    # the user's own YAML keeps plain values (a faithful round trip); secrets as names
    back = run.from_yaml(run.to_yaml(script))
    assert back == script and "!secret B" in run.to_yaml(script)
    # env values do not enter the fingerprint: what the store keeps has the same one
    from steadyrun.config.secrets import withhold

    assert withhold(script).fingerprint() == script.fingerprint()
    assert run.Script("a.sh", env={"A": run.Secret("X")}).fingerprint() != \
        run.Script("a.sh", env={"A": run.Secret("Y")}).fingerprint()


def test_a_missing_secret_is_a_named_error_before_anything_starts(steadyrun_home,
                                                                  monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    script = run.Script(inline="exit 0", env={"TOKEN": run.Secret("NOT_SET_ANYWHERE")})
    with pytest.raises(run.MissingSecret) as info:
        run.run(script, name="train")
    text = str(info.value)
    assert "NOT_SET_ANYWHERE" in text and "'train'" in text
    assert "export NOT_SET_ANYWHERE=" in text
    assert not (steadyrun_home / "experiments").exists() or \
        not any((steadyrun_home / "experiments").iterdir())


def test_an_executor_env_is_stored_as_names(steadyrun_home):
    from steadyrun.executors.slurm.executor import SlurmExecutor
    from steadyrun.executors.slurm.tunnel import LocalTunnel

    ex = SlurmExecutor(env={"WANDB_API_KEY": VALUE, "HF_TOKEN": run.Secret("HF_TOKEN")},
                       tunnel=LocalTunnel(env={"SLURM_CONF": VALUE}))
    config = ex.to_config()
    assert VALUE not in json.dumps(config) and VALUE not in repr(ex)
    assert config["env"] == {"WANDB_API_KEY": {"withheld": "WANDB_API_KEY"},
                             "HF_TOKEN": {"secret": "HF_TOKEN"}}
    back = SlurmExecutor.from_config({k: v for k, v in config.items() if k != "type"})
    assert back.env == {"WANDB_API_KEY": run.Secret("WANDB_API_KEY", withheld=True),
                        "HF_TOKEN": run.Secret("HF_TOKEN")}
    assert back.tunnel.to_config()["env"] == {"SLURM_CONF": {"withheld": "SLURM_CONF"}}


def test_ray_env_vars_are_stored_as_names():
    from steadyrun.executors.ray.executor import RayExecutor

    ex = RayExecutor(address="ray://10.0.0.1:10001", runtime_env={
        "pip": ["x"], "env_vars": {"TOKEN": VALUE, "KEY": run.Secret("KEY")}})
    config = ex.to_config()
    assert VALUE not in json.dumps(config) and VALUE not in repr(ex)
    assert config["runtime_env"] == {"pip": ["x"], "env_vars": {
        "TOKEN": {"withheld": "TOKEN"}, "KEY": {"secret": "KEY"}}}


def test_withheld_and_secret_entries_round_trip_through_yaml():
    script = run.Script("a.sh", env={"A": run.Secret("A", withheld=True),
                                     "B": run.Secret("SRC")})
    text = run.to_yaml(script)
    assert "!withheld A" in text and "!secret SRC" in text
    assert run.from_yaml(text) == script
    with pytest.raises(run.ConfigError, match="variable"):
        run.Secret("not a name")


RESUMABLE = f"""
import os, sys
import steadyrun as run
marker = sys.argv[1]
# fails the first time (no marker file yet), checks the secret's hash the second time
check = ('h=$(printf %s "$API_KEY" | sha256sum | cut -d" " -f1); '
         '[ -e {{m}} ] || {{{{ touch {{m}}; exit 5; }}}}; [ "$h" = "{DIGEST}" ]').format(m=marker)
exp = run.Experiment([run.Task("t", run.Script(inline=check,
                      env={{"API_KEY": run.Secret("MY_API_KEY")}}))], title="secret-resume")
exp.run(raise_on_failure=False)
print(exp.id)
"""


def test_resume_reads_the_secret_again_from_the_resuming_environment(steadyrun_home,
                                                                     tmp_path):
    marker = tmp_path / "first-run-happened"
    env = {**_env(), "STEADYRUN_HOME": str(steadyrun_home), "MY_API_KEY": VALUE}
    first = subprocess.run([sys.executable, "-c", RESUMABLE, str(marker)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    exp_id = first.stdout.strip().splitlines()[-1]
    assert marker.exists()
    without = {k: v for k, v in env.items() if k != "MY_API_KEY"}
    refused = subprocess.run([sys.executable, "-m", "steadyrun", "resume", exp_id],
                             env=without, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "MY_API_KEY" in refused.stderr and "export MY_API_KEY=" in refused.stderr
    resumed = subprocess.run([sys.executable, "-m", "steadyrun", "resume", exp_id, "--json"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert VALUE not in resumed.stdout + resumed.stderr
    assert grep_home(steadyrun_home, VALUE) == []


DETACHED = f"""
import sys
import steadyrun as run
check = 'h=$(printf %s "$API_KEY" | sha256sum | cut -d" " -f1); [ "$h" = "{DIGEST}" ]'
exp = run.Experiment([run.Task("t", run.Script(inline=check, env={{"API_KEY": sys.argv[1]}}))],
                     title="detached-plain")
exp.run(detach=True)
print(exp.id)
"""


def test_a_detached_run_gets_the_plain_values_without_storing_them(steadyrun_home):
    env = {**_env(), "STEADYRUN_HOME": str(steadyrun_home)}
    env.pop("API_KEY", None)
    proc = subprocess.run([sys.executable, "-c", DETACHED, VALUE], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    exp_id = proc.stdout.strip().splitlines()[-1]

    def final() -> dict | None:
        status = json.loads(cli(steadyrun_home, "status", exp_id, "--json").stdout)
        return status if status["state"] in ("succeeded", "failed", "cancelled") else None

    status = wait_for(final, timeout=60, what="the detached run to end")
    assert status["state"] == "succeeded", status
    assert grep_home(steadyrun_home, VALUE) == []


SEEDS = """
import steadyrun as run
tasks = [run.Task(f"t{i}", run.Script(inline=f'[ "$SEED" = {i} ]', env={"SEED": str(i)}))
         for i in (1, 2)]
exp = run.Experiment(tasks, title="seeds")
exp.run(detach=True)
print(exp.id)
"""


def test_plain_values_that_differ_per_task_are_kept_for_detach_and_resume(steadyrun_home):
    env = {**_env(), "STEADYRUN_HOME": str(steadyrun_home)}
    env.pop("SEED", None)
    proc = subprocess.run([sys.executable, "-c", SEEDS], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    exp_id = proc.stdout.strip().splitlines()[-1]

    def final() -> dict | None:
        status = json.loads(cli(steadyrun_home, "status", exp_id, "--json").stdout)
        return status if status["state"] in ("succeeded", "failed", "cancelled") else None

    assert wait_for(final, timeout=60, what="the detached run to end")["state"] == "succeeded"
    resumed = subprocess.run([sys.executable, "-m", "steadyrun", "resume", exp_id, "--rerun",
                              "all", "--json"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout


def test_sha256sum_is_available():
    assert shutil.which("sha256sum"), "the scripts in these tests hash with sha256sum"
