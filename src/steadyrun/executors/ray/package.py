"""Packaged code on Ray: the experiment's package as the task's ``runtime_env``
``working_dir``.

The package is built once at launch (:mod:`steadyrun.packaging`) and unpacked once on
this machine; that folder is uploaded to the cluster's object store once per experiment
(Ray names it by a hash of its files) and every task's worker starts in Ray's copy of
it, first on its import path. An
executor ``runtime_env`` that names its own ``working_dir`` is refused together with a
packager: the two would compete for the same place.
"""

from __future__ import annotations

import os
from typing import Any

from steadyrun.errors import ExecutorError


def checked(packager: Any, runtime_env: dict[str, Any] | None, gang: Any = None) -> Any:
    """The executor's packager (from a stored config too), refused beside a
    ``runtime_env`` ``working_dir`` and for gangs (ranks on several nodes)."""
    from steadyrun.packaging.base import packager_from_config

    packager = packager_from_config(packager, "RayExecutor(packager=...)")
    if packager is not None and gang is not None:
        raise ExecutorError("RayExecutor(packager=...) runs one process per attempt; with "
                            "nodes/ntasks_per_node/launcher, install the code on the nodes "
                            "or pass runtime_env={'working_dir': ...}")
    if packager is not None and runtime_env and runtime_env.get("working_dir"):
        raise ExecutorError("RayExecutor(packager=..., runtime_env={'working_dir': ...}): "
                            "the package is the working folder; give one of the two")
    return packager


def config(packager: Any) -> dict[str, Any]:
    """The ``packager`` entry of the executor's config (nothing without one)."""
    return {} if packager is None else {"packager": packager.to_config()}


def runtime_env(executor: Any, attempt_dir: Any, options: dict[str, Any]
                ) -> dict[str, Any]:
    """The task's ``runtime_env`` (from its ``options``, or none) with the attempt's
    experiment's package as ``working_dir``: uploaded once per experiment, named by its
    URI."""
    base = options.get("runtime_env")
    from steadyrun.packaging.stored import experiment_of, local_folder

    cache: dict[str, str] = executor.__dict__.setdefault("_package_dirs", {})
    key = os.fspath(experiment_of(attempt_dir))
    if key not in cache:
        try:
            cache[key] = _upload(os.fspath(local_folder(executor.packager, attempt_dir)))
        except Exception as e:
            raise ExecutorError(f"the package for {os.fspath(attempt_dir)} could not be "
                                f"sent to the Ray cluster: {type(e).__name__}: {e}") from e
    env = dict(base or {})
    env["working_dir"] = cache[key]
    env_vars = dict(env.get("env_vars") or {})
    env_vars["STEADYRUN_PACKAGE_DIR"] = "."  # the worker runs in the package's copy
    env["env_vars"] = env_vars
    return env


def _upload(folder: str) -> str:
    """Upload ``folder`` to the connected cluster (once per content: Ray names it by a
    hash of the files) and return its ``gcs://`` URI; a task's own runtime_env takes
    URIs only."""
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    env = upload_working_dir_if_needed({"working_dir": folder}, include_gitignore=False)
    return str(env["working_dir"])


class InPackage:
    """A payload that, when unpickled on a Ray worker, first puts the worker's working
    folder (Ray's copy of the package) at the front of ``sys.path``: Ray adds the
    driver's folder to its workers' path, which would otherwise shadow the package."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        import cloudpickle

        return _in_package, (cloudpickle.dumps(self.payload),)


def _in_package(blob: bytes) -> Any:
    import pickle
    import sys

    here = os.getcwd()
    if here in sys.path:
        sys.path.remove(here)
    sys.path.insert(0, here)
    return pickle.loads(blob)
