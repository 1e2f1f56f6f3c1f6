"""A packaged experiment on this machine: the package unpacked once into the store's
cache, each attempt's worker started in that folder (its working folder, first on its
import path, and on ``PYTHONPATH`` for the programs a Script starts)."""

from __future__ import annotations

import os
from typing import Any

from steadyrun.errors import ExecutorError

#: Set in an attempt's environment to the package folder it runs in.
PACKAGE_DIR_ENV = "STEADYRUN_PACKAGE_DIR"


def checked(packager: Any, strategy: str) -> Any:
    """The executor's packager (from a stored config too); only ``subprocess`` attempts
    can run in a folder of their own."""
    from steadyrun.packaging.base import packager_from_config

    packager = packager_from_config(packager, "LocalExecutor(packager=...)")
    if packager is not None and strategy != "subprocess":
        raise ExecutorError(
            f"LocalExecutor(strategy={strategy!r}, packager=...): a packaged attempt runs "
            "in a process of its own; use strategy='subprocess' (the default)")
    return packager


def config(packager: Any) -> dict[str, Any]:
    """The ``packager`` entry of the executor's config (nothing without one)."""
    return {} if packager is None else {"packager": packager.to_config()}


def folder(executor: Any, attempt_dir: Any) -> str | None:
    """The unpacked package of the attempt's experiment, or None without a packager."""
    if executor.packager is None:
        return None
    cache: dict[str, str] = executor.__dict__.setdefault("_package_dirs", {})
    from steadyrun.packaging.stored import experiment_of, local_folder

    key = os.fspath(experiment_of(attempt_dir))
    if key not in cache:
        try:
            cache[key] = os.fspath(local_folder(executor.packager, attempt_dir))
        except Exception as e:
            raise ExecutorError(f"the package for {os.fspath(attempt_dir)} is not "
                                f"available: {e}") from e
    return cache[key]


def worker_env(path: str | None) -> dict[str, str]:
    """Variables that put the package first on the import path of the attempt and of the
    Python programs it starts."""
    if path is None:
        return {}
    rest = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path + (os.pathsep + rest if rest else ""), PACKAGE_DIR_ENV: path}
