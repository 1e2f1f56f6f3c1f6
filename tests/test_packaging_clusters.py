"""Packaged code on Ray and on Slurm through SSH: the committed code runs there, not the
working tree, and a second experiment with the same code ships nothing."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

import steadyrun as run
from steadyrun.executors.slurm.executor import SlurmExecutor
from steadyrun.executors.slurm.tunnel import SSHTunnel

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def quiet(tasks, executor):
    return run.Experiment(tasks, executor=executor, progress=False, tail_logs=False)


@pytest.mark.slurm
def test_slurm_over_ssh_runs_the_package_and_ships_it_once(repo, slurm_cluster, sshd_server,
                                                           tmp_path, steadyrun_home):
    _, name, module = repo
    remote = tmp_path / "remote jobs"

    def executor() -> SlurmExecutor:
        tunnel = SSHTunnel("127.0.0.1", "root", port=sshd_server["port"],
                           identity=sshd_server["identity"],
                           known_hosts=sshd_server["known_hosts"], job_dir=str(remote),
                           env={"SLURM_CONF": os.environ["SLURM_CONF"]})
        return SlurmExecutor(tunnel=tunnel, python=sys.executable, poll_interval=0.2,
                             time="00:10:00", packager=run.GitArchivePackager())

    first = executor()
    result = quiet([run.Task("which", run.Partial(module.which)),
                    run.Task("script", run.Script("./show.sh"))], first).run()
    value = result["which"].value
    assert value["value"] == "committed"
    [shipped] = first._shipper.transfers
    sha = shipped["sha256"]
    assert value["cwd"] == str(remote / "packages" / sha)
    assert value["file"] == str(remote / "packages" / sha / f"{name}.py")
    log = steadyrun_home / "experiments" / result.id / "tasks" / "script" / "1" / "stdout.log"
    assert log.read_text().strip() == f"committed {value['cwd']}"  # a Script runs there too
    tar = remote / "packages" / f"{sha}.tar.gz"
    before = os.stat(tar)
    assert shipped["bytes"] == before.st_size
    # a second experiment with the same code: nothing crosses the tunnel
    second = executor()
    again = quiet([run.Task("which", run.Partial(module.which))], second).run()
    assert again["which"].value["value"] == "committed"
    assert second._shipper.transfers == []
    after = os.stat(tar)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.ray
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_ray_runs_the_package_as_its_working_dir(repo):
    import ray_cluster

    _, name, module = repo
    c = ray_cluster.start_cluster(num_cpus=2)
    saved = {k: os.environ.get(k) for k in c.env}
    os.environ.update(c.env)
    ray_cluster.forget_auth_token()  # a token an earlier cluster of this process left
    try:
        ex = run.RayExecutor(address=c.address, packager=run.GitArchivePackager())
        result = quiet([run.Task("which", run.Partial(module.which)),
                        run.Task("again", run.Partial(module.which))], ex).run()
        value = result["which"].value
        assert value["value"] == "committed"
        assert value["file"] == os.path.join(value["cwd"], f"{name}.py")
        assert value["cwd"] != os.getcwd()  # Ray's copy of the package, not the repository
    finally:
        import ray

        ray.shutdown()
        ray_cluster.stop_cluster(c)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
