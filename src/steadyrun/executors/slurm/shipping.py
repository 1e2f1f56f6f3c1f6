"""Packaged code on a Slurm cluster: shipped once per content, unpacked on the node.

With ``SlurmExecutor(packager=...)`` the experiment's package (built once at launch,
:mod:`steadyrun.packaging`) is copied through the tunnel to
``<job_dir>/packages/<sha256>.tar.gz`` only when that file is not there yet: a second
experiment with the same code, or any number of attempts, ships nothing. Through a
:class:`~steadyrun.LocalTunnel` the store's own copy is used. The batch script unpacks
it on the node into ``<sha256>/`` beside it (once; ``python -m
steadyrun.packaging.unpack`` checks the hash), then runs the worker in that folder with
it first on ``PYTHONPATH``; in a container (``container_image``) the folder is mounted
read-only at the same path and is the container's working folder.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from steadyrun.errors import ExecutorError
from steadyrun.packaging.base import MARKER

_log = logging.getLogger("steadyrun.executors.slurm.shipping")
#: The shell variable of the batch script that holds the unpacked package's folder.
PACKAGE_VAR = "STEADYRUN_PACKAGE"
_UNSAFE_IN_MOUNT = set('"$`\\,\n')


class Shipper:
    """Ships one executor's packages and writes the batch script's lines for them.

    ``transfers`` lists every copy made, as ``{"sha256", "bytes", "remote"}``: empty
    when the cluster already had the package."""

    def __init__(self, executor: Any, packager: Any = None,
                 container_mounts: Sequence[str] | str | None = None,
                 container_workdir: str | None = None) -> None:
        from steadyrun.packaging.base import packager_from_config

        self._ex = executor
        executor.packager = packager_from_config(packager, "SlurmExecutor(packager=...)")
        executor.container_mounts = check_mounts(container_mounts)
        executor.container_workdir = check_workdir(container_workdir)
        self._where: dict[str, str] = {}  # experiment folder -> the package tar there
        self._file_sha: dict[str, str] = {}  # the tar's path there -> sha256 of its bytes
        self.transfers: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        """The executor's options this module owns, as its config stores them."""
        packager = self._ex.packager
        return {"container_mounts": list(self._ex.container_mounts),
                "container_workdir": self._ex.container_workdir,
                "packager": None if packager is None else packager.to_config()}

    def ship(self, group: Sequence[Any]) -> str | None:
        """Make the package of the attempts' experiment available where the jobs run;
        return its tar's path there (None without a packager). Raises
        :class:`ExecutorError` when it cannot be built or copied."""
        packager = self._ex.packager
        if packager is None:
            return None
        from steadyrun.packaging.stored import attempt_package, experiment_of

        key = os.fspath(experiment_of(group[0].attempt_dir))
        if key in self._where:
            return self._where[key]
        try:
            package = attempt_package(packager, group[0].attempt_dir)
        except Exception as e:
            raise ExecutorError(f"the package for task {group[0].task!r} is not available: "
                                f"{e}") from e
        tunnel = self._ex.tunnel
        if tunnel.local:
            self._where[key] = os.fspath(package.path)
            self._file_sha[self._where[key]] = _file_sha256(package.path)
            return self._where[key]
        remote_dir = posixpath.join(str(tunnel.job_dir), "packages")
        remote = posixpath.join(remote_dir, package.path.name)
        if not _remote_file(tunnel, remote):
            staging = tempfile.mkdtemp(prefix="steadyrun-ship-")
            try:
                copy = os.path.join(staging, package.path.name)
                if _same_device(package.path, staging):
                    os.link(package.path, copy)
                else:
                    shutil.copy2(package.path, copy)
                tunnel.put(staging, remote_dir)  # written aside, then renamed into place
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self.transfers.append({"sha256": package.sha256, "bytes": package.size,
                                   "remote": remote})
            _log.info("shipped package %s (%d bytes) to %s", package.sha256[:12],
                      package.size, remote)
        else:
            _log.info("package %s is already at %s", package.sha256[:12], remote)
        self._where[key] = remote
        self._file_sha[remote] = _file_sha256(package.path)
        return remote

    def lines(self, group: Sequence[Any], python: str) -> list[str]:
        """Shell lines that unpack the package on the node and run in it (none without a
        packager; a placeholder path before :meth:`ship`, as in a dry run)."""
        if self._ex.packager is None:
            return []
        from steadyrun.packaging.stored import experiment_of

        try:
            tar = self._where.get(os.fspath(experiment_of(group[0].attempt_dir)))
        except Exception:
            tar = None
        if tar is None:  # a dry run: where it would be
            tunnel = self._ex.tunnel
            tar = ("<store>/packages" if tunnel.local else posixpath.join(
                str(tunnel.job_dir), "packages")) + "/<sha256>.tar.gz"
        q = shlex.quote
        var = PACKAGE_VAR
        lines = ["# the experiment's package: unpacked once on this node, run in it"]
        if self._ex.container_image:  # python may live in the image only: unpack with tar
            lines += _tar_unpack(tar, self._file_sha.get(tar, "<sha256 of the file>"))
        else:
            lines.append(
                f'{var}="$({q(python)} -m steadyrun.packaging.unpack {q(tar)})" || exit 1')
        return [*lines,
                f'cd "${var}" || exit 1',
                f'export PYTHONPATH="${var}${{PYTHONPATH:+:$PYTHONPATH}}"',
                f'export STEADYRUN_PACKAGE_DIR="${var}"']

    def container_options(self) -> dict[str, Any]:
        """``render_script``'s container mounts and working folder: the user's, plus the
        package read-only (and as working folder) when there is one."""
        if not self._ex.container_image:
            return {}
        mounts = list(self._ex.container_mounts)
        workdir = self._ex.container_workdir
        if self._ex.packager is not None:
            mounts.append(f"${PACKAGE_VAR}:${PACKAGE_VAR}:ro")
            workdir = workdir or f"${PACKAGE_VAR}"
        return {"container_mounts": mounts, "container_workdir": workdir}


def check_mounts(mounts: Sequence[str] | str | None) -> list[str]:
    """``container_mounts`` as a list of ``SRC:DST[:FLAGS]``; raises
    :class:`ExecutorError` for one that cannot be written into the batch script."""
    if mounts is None:
        return []
    items = [mounts] if isinstance(mounts, str) else list(mounts)
    for m in items:
        if not isinstance(m, str) or ":" not in m or _UNSAFE_IN_MOUNT & set(m):
            raise ExecutorError(
                f"SlurmExecutor(container_mounts=[..., {m!r}, ...]): give 'SRC:DST' or "
                "'SRC:DST:ro' without commas, quotes, '$', '`' or backslashes")
    return items


def check_workdir(workdir: str | None) -> str | None:
    """``container_workdir``, refused when it cannot be written into the script."""
    if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/")
                                or _UNSAFE_IN_MOUNT & set(workdir)):
        raise ExecutorError(f"SlurmExecutor(container_workdir={workdir!r}): give an absolute "
                            "path without commas, quotes, '$', '`' or backslashes")
    return workdir


def _tar_unpack(tar: str, file_sha: str) -> list[str]:
    """Shell lines that unpack ``tar`` beside it with ``tar`` itself, after checking the
    sha256 of its bytes (it was built here, so its members are known to be safe)."""
    q = shlex.quote
    folder = tar[: -len(".tar.gz")] if tar.endswith(".tar.gz") else tar + ".d"
    parent, name = posixpath.split(folder)
    return [f"{PACKAGE_VAR}={q(folder)}",
            f'if [ ! -f "${PACKAGE_VAR}/{MARKER}" ]; then',
            f"    echo {q(file_sha + '  ' + tar)} | sha256sum -c --quiet - || exit 1",
            f'    STEADYRUN_TMP="$(mktemp -d {q(f"{parent}/.{name}.XXXXXX")})" || exit 1',
            f'    tar -xzf {q(tar)} -C "$STEADYRUN_TMP" --no-same-owner || exit 1',
            f'    echo {q(name)} > "$STEADYRUN_TMP/{MARKER}"',
            f'    mv -T "$STEADYRUN_TMP" "${PACKAGE_VAR}" 2>/dev/null || {{ rm -rf '
            f'"$STEADYRUN_TMP"; [ -f "${PACKAGE_VAR}/{MARKER}" ] || exit 1; }}',
            "fi"]


def _remote_file(tunnel: Any, path: str) -> bool:
    """Whether a non-empty file is at ``path`` through the tunnel: one sftp ``stat`` on
    the open SSH connection (a remote command would start a shell, ~0.5 s), else
    ``test -s``."""
    import stat

    connect, lock = getattr(tunnel, "_connect", None), getattr(tunnel, "_lock", None)
    if connect is not None and lock is not None:
        with lock:
            connect()
            sftp = getattr(tunnel, "_sftp", None)
            if sftp is not None:
                try:
                    st = sftp.stat(path)
                except OSError:
                    return False
                return stat.S_ISREG(st.st_mode or 0) and bool(st.st_size)
    return bool(tunnel.run(["test", "-s", path]).returncode == 0)


def _file_sha256(path: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _same_device(a: Any, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False
