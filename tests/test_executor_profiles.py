"""``steadyrun run -e SPEC``: executor profiles from the user's executors file, inline
options typed like the constructor's, and a Ray head reached through RAY_ADDRESS /
STEADYRUN_RAY_ADDRESS / --address. Run as users run it: a fresh process per call."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steadyrun.errors import ExecutorError
from steadyrun.executors.profiles import executor_from_spec

GOLDEN = Path(__file__).resolve().parent / "golden" / "sbatch_profile.sh"

PROFILES = """\
profiles:
  gpu:
    executor: slurm
    partition: gpu
    account: abc
    time: 4h
    qos: normal
    ssh_host: login.example.org
    ssh_user: alice
    ssh_job_dir: /scratch/alice/jobs
    ssh_known_hosts: {known_hosts}
    python: /opt/venv/bin/python
    setup_lines: ["module load cuda/12.1"]
    env: {{OMP_NUM_THREADS: "4"}}
  fast:
    executor: local
    strategy: thread
"""


@pytest.fixture
def profiles_file(tmp_path: Path) -> Path:
    # a known_hosts file that does not exist: the dry run's sinfo fails at once, offline
    path = tmp_path / "config" / "executors.yaml"
    path.parent.mkdir()
    path.write_text(PROFILES.format(known_hosts=tmp_path / "no_known_hosts"))
    return path


@pytest.fixture
def cli(subprocess_env, steadyrun_home, tmp_path, profiles_file):
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home),
               STEADYRUN_EXECUTORS=str(profiles_file))
    for var in ("RAY_ADDRESS", "STEADYRUN_RAY_ADDRESS"):
        env.pop(var, None)

    def call(*args: str, extra_env: dict[str, str] | None = None, timeout: float = 120):
        return subprocess.run([sys.executable, "-m", "steadyrun", *args],
                              env={**env, **(extra_env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=tmp_path, stdin=subprocess.DEVNULL)

    return call


def batch_script(stdout: str) -> str:
    return stdout[stdout.index("#!/bin/bash"):]


def test_profile_with_inline_options_renders_into_the_dryrun_sbatch_script(
        cli, steadyrun_home, tmp_path):
    proc = cli("run", "payloads:add", "a=1,2", "--sweep", "-e", "gpu:time=2h,nodes=2",
               "--cpus", "4", "--memory", "16GiB", "--dryrun")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "# executor: slurm from profile 'gpu'" in out
    assert "time        = 02:00:00  (inline)" in out
    assert "partition   = gpu  (profile)" in out
    script = batch_script(out).replace(str(steadyrun_home), "$STEADYRUN_HOME").replace(
        str(tmp_path), "$TMP")
    if os.environ.get("STEADYRUN_UPDATE_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), (
        "the dry run's batch script changed; if on purpose, rerun with "
        "STEADYRUN_UPDATE_GOLDEN=1")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not (steadyrun_home / "experiments").exists()  # a dry run writes nothing


def test_inline_options_are_typed_like_the_constructor(cli):
    proc = cli("run", "payloads:add", "a=1", "-e",
               "slurm:partition=debug,nodes=2,exclusive=yes,ssh_host=login.example.org,"
               "python=/opt/py,additional_parameters={mail_type: END},"
               "ssh_known_hosts=/nonexistent/known_hosts", "--dryrun")
    assert proc.returncode == 0, proc.stderr
    script = batch_script(proc.stdout)
    for line in ("#SBATCH --partition=debug", "#SBATCH --nodes=2", "#SBATCH --exclusive",
                 "#SBATCH --mail-type=END", "exec /opt/py -m steadyrun.launchers.srun"):
        assert line in script
    # a profile for the local executor runs for real, inline options on top
    proc = cli("run", "payloads:add", "a=40", "b=2", "-e", "fast:max_workers=2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[1].split()[-1] == "42"


@pytest.mark.parametrize("spec, words", [
    ("slurm:partiton=gpu", ["no option 'partiton'", "did you mean 'partition'",
                            "valid options:", "account", "ssh_host"]),
    ("gpu:tme=1h", ["no option 'tme'", "did you mean 'time'"]),
    ("slurm:nodes=two", ["nodes: expected int, got 'two'"]),
    ("slurm:partition", ["'partition' is not key=value"]),
    ("gpux", ["neither a kind (docker, local, ray, slurm", "profiles in", "gpu, fast"]),
])
def test_bad_specs_exit_2_saying_what_is_valid(cli, steadyrun_home, spec, words):
    proc = cli("run", "payloads:add", "a=1", "-e", spec, "--dryrun")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ")
    for word in words:
        assert word in proc.stderr
    assert not (steadyrun_home / "experiments").exists()


def test_executors_file_is_plain_yaml_without_tags(cli, tmp_path, profiles_file):
    marker = tmp_path / "pwned"
    profiles_file.write_text(
        f"profiles:\n  x: !!python/object/apply:os.system ['touch {marker}']\n")
    proc = cli("run", "payloads:add", "a=1", "-e", "x", "--dryrun")
    assert proc.returncode == 2 and "not allowed" in proc.stderr
    assert not marker.exists()
    profiles_file.write_text("profiles:\n  x: {partition: gpu}\n")
    proc = cli("run", "payloads:add", "a=1", "-e", "x", "--dryrun")
    assert proc.returncode == 2 and "'executor: KIND'" in proc.stderr


def test_spec_resolution_in_python(tmp_path, monkeypatch):
    path = tmp_path / "executors.yaml"
    path.write_text("profiles:\n  slurm: {executor: slurm, partition: long, time: 1d12h}\n")
    ex, choice = executor_from_spec("slurm:account=ml", path=path)
    assert (ex.partition, ex.account, ex.time) == ("long", "ml", "1-12:00:00")
    assert choice.profile == "slurm" and choice.origins == {
        "partition": "profile", "time": "profile", "account": "inline"}
    with pytest.raises(ExecutorError, match="--strategy is an option of the local"):
        executor_from_spec("slurm", strategy="thread", path=path)
    with pytest.raises(ExecutorError, match="--address is an option of the ray"):
        executor_from_spec("local", address="127.0.0.1:1", path=path)
    monkeypatch.setenv("STEADYRUN_RAY_ADDRESS", "127.0.0.1:7")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_ex, choice = executor_from_spec("ray", path=path)
    assert ray_ex.address == "127.0.0.1:7" and choice.origins["address"] == \
        "STEADYRUN_RAY_ADDRESS"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6")
    assert executor_from_spec("ray", path=path)[0].address == "127.0.0.1:6"
    assert executor_from_spec("ray", address="127.0.0.1:5", path=path)[0].address == \
        "127.0.0.1:5"


# --- a real Ray head ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ray
def test_ray_uses_the_head_named_by_the_environment(cli):
    # not imported here: Ray reads its authentication settings once, at import, and the
    # Ray executor's tests later set them for this process
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed")
    import ray_cluster

    cluster = ray_cluster.start_cluster(num_cpus=5)  # more CPUs than this machine has
    try:
        env = dict(cluster.env, RAY_ADDRESS=cluster.address)
        proc = cli("run", "payloads:add", "a=1", "-e", "ray", "--dryrun", extra_env=env)
        assert proc.returncode == 0, proc.stderr
        assert "# capacity there: cpus=5," in proc.stdout  # the head's, not this machine's
        assert f"address = {cluster.address}  (RAY_ADDRESS)" in proc.stdout
        assert f"# ray cluster: {cluster.address}" in proc.stdout

        # scripts/ray-up.sh's variable alone, and in RayExecutor itself
        env = dict(cluster.env, STEADYRUN_RAY_ADDRESS=cluster.address)
        proc = cli("run", "payloads:add", "a=1", "-e", "ray", "--dryrun", extra_env=env)
        assert proc.returncode == 0, proc.stderr
        assert "# capacity there: cpus=5," in proc.stdout
        assert "(STEADYRUN_RAY_ADDRESS)" in proc.stdout
        code = ("import ray, steadyrun as run\n"
                "ex = run.RayExecutor(); ex.open()\n"
                "print(len(ray.nodes()), ray.get_runtime_context().gcs_address)\n"
                "ex.close()\n")
        probe = subprocess.run([sys.executable, "-c", code],
                               env={**os.environ, **env}, capture_output=True, text=True,
                               timeout=120)
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.split() == ["1", cluster.address]  # the head alone: no private Ray

        proc = cli("run", "payloads:add", "a=1", "-e", "ray", "--address", cluster.address,
                   "--dryrun", extra_env=dict(cluster.env))
        assert proc.returncode == 0, proc.stderr
        assert f"address = {cluster.address}  (--address)" in proc.stdout
        assert "# capacity there: cpus=5," in proc.stdout
    finally:
        ray_cluster.stop_cluster(cluster)
