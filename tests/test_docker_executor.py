"""DockerExecutor against a real dockerd (started by ``scripts/docker-up.sh``, one engine
for the session): values and tracebacks come back, timeouts and cancel stop the
container, a task over its memory is ``oom``, ``--cpus`` is applied, a controller killed
with ``kill -9`` leaves nothing that runs twice, and no container is left at the end.

The image is a minimal Debian with python3 only: steadyrun and the worker's modules are
mounted, the test payloads too (``volumes=``, ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import crash_payloads as cp
import docker_engine as engine
import payloads
import steadyrun as run
from crash_helpers import (
    Reaper,
    Release,
    assert_exactly_once,
    attempts,
    detach,
    has_attempt,
    kill_controller,
    resume,
    unique_title,
    wait_while_driven,
)
from packaged_repo import import_dirty, make_repo
from steadyrun.errors import ExecutorError
from steadyrun.executors import executor_from_config
from steadyrun.executors.base import AttemptSpec
from steadyrun.executors.docker import DockerExecutor, containers
from steadyrun.executors.docker.containers import CODE_DIR, LABEL_ATTEMPT, RECORD_FILE
from waiting import collect_outcomes, wait_for

TESTS = str(Path(__file__).resolve().parent)
IMAGE = engine.IMAGE
docker_engine = engine.docker_engine  # the session fixture, visible to pytest here
steadyrun_containers = engine.steadyrun_containers

# the first test also waits for the engine: on a fresh machine docker-up.sh installs
# docker.io and builds the image (about 4.5 minutes), later runs take seconds
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def executor(tmp_path: Path | None = None, **options) -> DockerExecutor:
    """A DockerExecutor on the test image with the test payloads (and ``tmp_path``,
    read-write, for side effects) mounted."""
    volumes = [f"{TESTS}:{TESTS}:ro"] + ([f"{tmp_path}:{tmp_path}"] if tmp_path else [])
    options.setdefault("grace_period", 1.0)
    return DockerExecutor(IMAGE, volumes=volumes, env_vars={"PYTHONPATH": TESTS}, **options)


def spec(tmp_path: Path, name: str, payload, **resources) -> AttemptSpec:
    folder = tmp_path / "attempts" / name
    folder.mkdir(parents=True, mode=0o700)
    return AttemptSpec(attempt_id=f"direct/{name}/1", task=name, number=1, payload=payload,
                       attempt_dir=folder, resources=run.Resources(**resources),
                       env={"STEADYRUN_TASK": name})


@pytest.fixture
def reaper():
    r = Reaper()
    yield r
    r.cleanup()


# --- through the experiment --------------------------------------------------------------


def test_values_and_tracebacks_come_back_and_files_stay_the_users(docker_engine, tmp_path):
    tasks = [run.Task("ok", run.Partial(payloads.add, 2, 3)),
             run.Task("bad", run.Partial(payloads.boom, "kaput")),
             run.Task("closure", lambda: sum(range(10)))]  # pickled, not YAML
    exp = run.Experiment(tasks, title=unique_title("docker"), progress=False,
                         executor=executor())
    result = exp.run(raise_on_failure=False)
    assert result["ok"].value == 5
    assert result["closure"].value == 45
    bad = result["bad"]
    assert bad.state == "failed"
    assert "RuntimeError" in str(bad.error) and "kaput" in str(bad.error)
    dirs = {a.task: Path(a.dir) for a in attempts(exp.id)}
    folder = dirs["bad"]
    err = (folder / "stderr.log").read_text()
    assert "Traceback" in err and "payloads.py" in err and "kaput" in err
    for path in dirs["ok"].iterdir():
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), path
        if path.is_file():
            assert st.st_mode & 0o077 == 0, f"{path} is readable by others"
    assert not steadyrun_containers(docker_engine["host"]), "containers left after the run"


def test_timeout_and_cancel_stop_the_container(docker_engine, tmp_path):
    tasks = [run.Task("slow", run.Partial(payloads.sleep_for, 60), timeout=2)]
    exp = run.Experiment(tasks, title=unique_title("docker-timeout"), progress=False,
                         executor=executor())
    started = time.monotonic()
    result = exp.run(raise_on_failure=False)
    assert result["slow"].state == "failed"
    assert result["slow"].kind == "timeout", result["slow"]
    assert time.monotonic() - started < 30

    ex = executor()
    with ex:
        s = spec(tmp_path, "cancelme", run.Partial(payloads.chatty, 100000, 0.05))
        ex.launch(s)
        log = s.attempt_dir / "stdout.log"
        # the log grows in the attempt folder while the container runs
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 20, "the first lines")
        assert ex.pids().get(s.attempt_id), "the running container's worker has no pid"
        ex.stop(s.attempt_id, "cancelled")
        out = collect_outcomes(ex, 1, timeout=30)[s.attempt_id]
        assert out.kind == "cancelled"
    assert not steadyrun_containers(docker_engine["host"]), "close() left a container"


def test_a_task_over_its_memory_is_oom(docker_engine, tmp_path):
    ex = executor()
    with ex:
        s = spec(tmp_path, "hog", run.Partial(payloads.allocate, 400, 1, 5.0), memory="96MiB",
                 cpus=1)
        ex.launch(s)
        out = collect_outcomes(ex, 1, timeout=60)[s.attempt_id]
    assert out.kind == "oom", out
    assert "OOM killer" in out.message


def test_cpus_become_the_containers_cpu_quota(docker_engine, tmp_path):
    ex = executor()
    read_quota = run.Script(inline="cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us "
                            "/sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null "
                            "|| cat /sys/fs/cgroup/cpu.max")
    with ex:
        s = spec(tmp_path, "quota", read_quota, cpus=0.5)
        ex.launch(s)
        out = collect_outcomes(ex, 1, timeout=60)[s.attempt_id]
    assert out.ok, out
    numbers = [int(x) for x in (s.attempt_dir / "stdout.log").read_text().split()
               if x.isdigit()]
    quota, period = numbers[0], numbers[1]
    assert abs(quota / period - 0.5) < 0.01, numbers


def test_capacity_is_the_daemons_unless_given(docker_engine):
    cap = executor().capacity()
    assert cap.cpus == os.cpu_count()
    assert cap.memory > 1 << 30
    cap = executor(cpus=1.5, memory="3GiB").capacity()
    assert (cap.cpus, cap.memory) == (1.5, 3 << 30)
    with pytest.raises(run.InsufficientResources):
        executor(cpus=1).check(run.Resources(cpus=2), "big")


def test_config_round_trip_and_gpu_requests(docker_engine, tmp_path):
    ex = DockerExecutor(IMAGE, volumes=["/data:/data:ro"], env_vars={"A": "1"}, num_gpus=2,
                        shm_size="1g", ipc_mode="host", runtime="nvidia", max_workers=3)
    again = executor_from_config(ex.to_config())
    assert isinstance(again, DockerExecutor)
    assert again.to_config() == ex.to_config()
    s = spec(tmp_path, "gpu", run.Partial(payloads.add, 1))
    opts = ex.container_options(s)
    req = opts["host"]["device_requests"]
    assert req == [{"Driver": "", "Count": 2, "Capabilities": [["gpu"]], "DeviceIDs": None}]
    s.gpus = [1, 3]
    assert ex.container_options(s)["host"]["device_requests"][0]["DeviceIDs"] == ["1", "3"]
    assert opts["host"]["runtime"] == "nvidia" and opts["host"]["shm_size"] == "1g"
    assert opts["user"] == f"{os.getuid()}:{os.getgid()}"
    assert opts["labels"][LABEL_ATTEMPT] == s.attempt_id
    with pytest.raises(ExecutorError, match="volume"):
        DockerExecutor(IMAGE, volumes=["nocolon"])

    # the daemon takes the GPU request and the limits as given (created, never started:
    # this machine has no GPU)
    import docker

    gpu = DockerExecutor(IMAGE, num_gpus=1, shm_size="64m")
    s.resources = run.Resources(cpus=0.5, memory="128MiB")
    opts = gpu.container_options(s)
    api = docker.APIClient(base_url=docker_engine["host"], version="auto")
    try:
        cid = containers.create(api, opts, opts["environment"])
        host = api.inspect_container(cid)["HostConfig"]
        api.remove_container(cid, force=True)
    finally:
        api.close()
    assert host["DeviceRequests"][0]["DeviceIDs"] == ["1", "3"]
    assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert (host["NanoCpus"], host["Memory"], host["ShmSize"]) == (5 * 10**8, 128 << 20,
                                                                   64 << 20)


def test_a_missing_image_is_an_error_that_names_it(docker_engine, tmp_path):
    ex = DockerExecutor("steadyrun-no-such-image:0")
    with ex, pytest.raises(ExecutorError, match="steadyrun-no-such-image"):
        ex.launch(spec(tmp_path, "noimage", run.Partial(payloads.add, 1)))


def test_the_committed_code_runs_from_a_read_only_package(docker_engine, tmp_path,
                                                         monkeypatch):
    repo, name = make_repo(tmp_path)
    monkeypatch.chdir(repo)
    module = import_dirty(repo, name)
    try:
        ex = DockerExecutor(IMAGE, packager=run.GitArchivePackager())
        result = run.Experiment([run.Task("which", run.Partial(module.which))], executor=ex,
                                title=unique_title("docker-pkg"), progress=False).run()
    finally:
        sys.modules.pop(name, None)
    value = result["which"].value
    assert value == {"value": "committed", "cwd": CODE_DIR, "file": f"{CODE_DIR}/{name}.py"}
    assert ex.to_config()["packager"]["type"] == "GitArchivePackager"


# --- a controller killed with kill -9 ---------------------------------------------------


def test_resume_after_kill_9_stops_the_old_container_and_runs_once(docker_engine, tmp_path,
                                                                   reaper, monkeypatch):
    # env values are not stored: a resume reads them from its own environment
    monkeypatch.setenv("PYTHONPATH", TESTS)
    effects, starts, gate = tmp_path / "effects", tmp_path / "starts", tmp_path / "gate"
    payload = run.Partial(cp.effect, str(effects), "held", starts=str(starts), gate=str(gate))
    exp = run.Experiment([run.Task("held", payload, resources=run.Resources(cpus=0.5))],
                         title=unique_title("docker-crash"), progress=False,
                         executor=executor(tmp_path))
    detach(exp, reaper)
    wait_for(lambda: starts.exists() or run.Experiment.from_id(exp.id).status().state
             in ("failed", "succeeded"), 60, "the payload to start")
    assert starts.exists(), [(a.task, a.kind, a.message) for a in attempts(exp.id)]
    wait_while_driven(exp.id, lambda: starts.exists() and starts.read_text(),
                      "the payload to start in its container", timeout=60)
    kill_controller(exp.id, reaper)
    old = steadyrun_containers(docker_engine["host"])
    assert [c["State"] for c in old] == ["running"], "the container should outlive its controller"
    first = attempts(exp.id)[0]
    assert (Path(first.dir) / RECORD_FILE).exists()

    # the gate opens only once the resume recorded a second attempt: had the old
    # container been left running, it would add a second side effect
    with Release(gate, lambda: has_attempt(exp.id, "held", 2)):
        result = resume(exp.id)
    assert result.ok, result
    assert_exactly_once(effects, ["held"])
    assert not steadyrun_containers(docker_engine["host"])
    reaper.assert_no_leftovers("after the resume")


# --- last: nothing left behind ------------------------------------------------------------


def test_zz_no_container_is_left_after_the_suite(docker_engine):
    left = steadyrun_containers(docker_engine["host"])
    assert not left, f"containers left: {[c['Names'] for c in left]}"
