"""Tunnels: how the Slurm executor reaches its cluster.

A tunnel runs Slurm's commands and moves attempt folders:

- ``run(cmd)`` runs one command (a list of arguments, never a shell string) and returns a
  :class:`subprocess.CompletedProcess` with text output; it raises
  :class:`~steadyrun.errors.ExecutorError` only when the command could not be started
  (the connection failed, the program is missing);
- ``put(local_dir, remote_dir)`` copies a folder there (following links), and
  ``get(remote_dir, local_dir, names=None)`` copies files back (only ``names`` when given;
  a missing remote file is skipped); files arrive whole (temporary name, then rename).

:class:`LocalTunnel` runs the commands on this machine (the cluster's login node).
:class:`SSHTunnel` logs in with a key (paramiko), checks the host key against a
``known_hosts`` file and refuses an unknown or changed one.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from steadyrun.config import secrets
from steadyrun.errors import ExecutorError


class Tunnel:
    """Base of the tunnels; see the module docs for the contract."""

    #: True when the cluster sees this machine's files under the same paths.
    local: bool = True
    #: Where submission folders go on the cluster side (``None``: next to the experiment).
    job_dir: str | None = None

    def run(self, cmd: list[str], timeout: float | None = 60.0
            ) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def put(self, local_dir: str | os.PathLike[str], remote_dir: str) -> None:
        raise NotImplementedError

    def get(self, remote_dir: str, local_dir: str | os.PathLike[str],
            names: Iterable[str] | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        """Drop the connection (idempotent); the next call reconnects."""

    def to_config(self) -> dict[str, Any]:
        return {"type": type(self).__name__}


class LocalTunnel(Tunnel):
    """Slurm's commands on this machine. ``job_dir``: where submission folders go
    (default: ``slurm/`` inside each experiment's folder). ``env`` is added to the
    commands' environment (e.g. ``{"SLURM_CONF": ...}``); a value may be
    ``run.Secret("NAME")``, read from this process's environment when a command runs.
    The store keeps env names only (see :func:`steadyrun.config.secrets.env_to_config`)."""

    local = True

    def __init__(self, job_dir: str | None = None, env: Mapping[str, Any] | None = None
                 ) -> None:
        self.job_dir = None if job_dir is None else os.fspath(job_dir)
        self.env = secrets.check_env(env, "LocalTunnel")

    def run(self, cmd: list[str], timeout: float | None = 60.0
            ) -> subprocess.CompletedProcess[str]:
        env = ({**os.environ, **secrets.resolve_env(self.env, "LocalTunnel(env=...)")}
               if self.env else None)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, env=env, errors="replace")
        except FileNotFoundError as e:
            raise ExecutorError(
                f"{cmd[0]}: command not found on this machine; is Slurm installed here, or "
                "did you mean SSHTunnel(...) to reach the cluster?") from e
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ExecutorError(f"{shlex.join(cmd)} failed: {e}") from e

    def put(self, local_dir: str | os.PathLike[str], remote_dir: str) -> None:
        if os.path.realpath(local_dir) != os.path.realpath(remote_dir):
            shutil.copytree(local_dir, remote_dir, dirs_exist_ok=True)

    def get(self, remote_dir: str, local_dir: str | os.PathLike[str],
            names: Iterable[str] | None = None) -> None:
        if os.path.realpath(local_dir) == os.path.realpath(remote_dir):
            return
        for name in names if names is not None else os.listdir(remote_dir):
            src = os.path.join(remote_dir, name)
            if os.path.isfile(src):
                tmp = os.path.join(local_dir, f".{name}.get")
                shutil.copyfile(src, tmp)
                os.replace(tmp, os.path.join(local_dir, name))

    def to_config(self) -> dict[str, Any]:
        return {"type": "LocalTunnel", "job_dir": self.job_dir,
                "env": secrets.env_to_config(self.env)}

    def __repr__(self) -> str:
        return f"LocalTunnel(job_dir={self.job_dir!r})"


class SSHTunnel(Tunnel):
    """Slurm's commands on ``user@host:port`` over SSH (paramiko).

    ``identity``: a private key file (else the SSH agent and ``~/.ssh/id_*``); passwords
    are never used. ``known_hosts`` (default ``~/.ssh/known_hosts``) must hold the host's
    key: an unknown host or a changed key is refused with
    :class:`~steadyrun.errors.ExecutorError`. ``job_dir`` is where attempt folders are
    copied on the cluster (relative paths start at the remote home). ``env`` is set for
    every remote command (e.g. ``{"SLURM_CONF": ...}`` or a ``PATH``); a value may be
    ``run.Secret("NAME")``, read from this process's environment when a command runs
    (it then travels on the SSH command line; the store keeps names only).
    """

    local = False

    def __init__(self, host: str, user: str | None = None, port: int = 22,
                 identity: str | None = None, job_dir: str = ".steadyrun/slurm-jobs",
                 known_hosts: str | None = None, env: Mapping[str, Any] | None = None,
                 connect_timeout: float = 15.0) -> None:
        self.host, self.user, self.port = host, user, int(port)
        self.identity = None if identity is None else os.fspath(identity)
        self.job_dir = str(job_dir)
        self.known_hosts = None if known_hosts is None else os.fspath(known_hosts)
        self.env = secrets.check_env(env, "SSHTunnel")
        self.connect_timeout = float(connect_timeout)
        self._client: Any = None
        self._sftp: Any = None
        self._lock = threading.RLock()

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        try:
            import paramiko
        except ModuleNotFoundError as e:
            raise ExecutorError("SSHTunnel needs paramiko: pip install paramiko") from e
        client = paramiko.SSHClient()
        known = self.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        try:
            client.load_host_keys(known)
        except OSError as e:
            raise ExecutorError(
                f"SSHTunnel({self.host}): cannot read known_hosts file {known}: {e}; add the "
                f"host's key there (ssh-keyscan -p {self.port} {self.host})") from e
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.host, port=self.port, username=self.user,
                           key_filename=self.identity, look_for_keys=self.identity is None,
                           allow_agent=self.identity is None, timeout=self.connect_timeout,
                           banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise ExecutorError(
                f"SSHTunnel({self.host}:{self.port}): the host key does not match "
                f"{known}; refusing to connect (if the host was reinstalled, update "
                "known_hosts)") from e
        except paramiko.SSHException as e:
            client.close()
            raise ExecutorError(
                f"SSHTunnel({self.user}@{self.host}:{self.port}): {e}; host keys must be "
                f"in {known} and a key must log in (identity=...)") from e
        except OSError as e:
            client.close()
            raise ExecutorError(
                f"SSHTunnel({self.host}:{self.port}): cannot connect: {e}") from e
        self._client = client
        self._sftp = client.open_sftp()
        job_dir = str(self.job_dir)
        if not posixpath.isabs(job_dir):
            self.job_dir = posixpath.join(self._sftp.normalize("."), job_dir)
        return client

    def close(self) -> None:
        with self._lock:
            for obj in (self._sftp, self._client):
                if obj is not None:
                    with contextlib.suppress(Exception):
                        obj.close()
            self._sftp = self._client = None

    # -- the contract --------------------------------------------------------------------

    def run(self, cmd: list[str], timeout: float | None = 60.0
            ) -> subprocess.CompletedProcess[str]:
        line = shlex.join(cmd)
        if self.env:
            values = secrets.resolve_env(self.env, f"SSHTunnel({self.host})(env=...)")
            line = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in
                                     sorted(values.items())) + " " + line
        with self._lock:
            client = self._connect()
            try:
                _, out, err = client.exec_command(line, timeout=timeout)
                stdout = out.read().decode("utf-8", "replace")
                stderr = err.read().decode("utf-8", "replace")
                code = out.channel.recv_exit_status()
            except Exception as e:  # a dropped connection: reconnect on the next call
                self.close()
                raise ExecutorError(  # the command without its env values
                    f"SSHTunnel({self.host}): {shlex.join(cmd)} failed: {e}") from e
        return subprocess.CompletedProcess(cmd, code, stdout, stderr)

    def put(self, local_dir: str | os.PathLike[str], remote_dir: str) -> None:
        with self._lock:
            self._connect()
            try:
                self._put_dir(os.fspath(local_dir), remote_dir)
            except OSError as e:
                self.close()
                raise ExecutorError(
                    f"SSHTunnel({self.host}): copying {os.fspath(local_dir)} to "
                    f"{remote_dir} failed: {e}") from e

    def _put_dir(self, local: str, remote: str) -> None:
        sftp = self._sftp
        self._makedirs(remote)
        for name in sorted(os.listdir(local)):
            src, dst = os.path.join(local, name), posixpath.join(remote, name)
            if os.path.isdir(src):  # follows links: an attempt folder linked in
                self._put_dir(src, dst)
            elif os.path.isfile(src):
                sftp.put(src, dst + ".put")
                sftp.chmod(dst + ".put", stat.S_IMODE(os.stat(src).st_mode))
                sftp.posix_rename(dst + ".put", dst)

    def _makedirs(self, remote: str) -> None:
        sftp = self._sftp
        parts, path = [], remote
        while path not in ("", "/"):
            try:
                sftp.stat(path)
                break
            except OSError:
                parts.append(path)
                path = posixpath.dirname(path)
        for p in reversed(parts):
            with contextlib.suppress(OSError):  # made meanwhile
                sftp.mkdir(p, 0o700)

    def get(self, remote_dir: str, local_dir: str | os.PathLike[str],
            names: Iterable[str] | None = None) -> None:
        with self._lock:
            self._connect()
            sftp = self._sftp
            try:
                wanted = list(names) if names is not None else [
                    a.filename for a in sftp.listdir_attr(remote_dir)
                    if stat.S_ISREG(a.st_mode or 0)]
                for name in wanted:
                    tmp = os.path.join(local_dir, f".{name}.get")
                    try:
                        sftp.get(posixpath.join(remote_dir, name), tmp)
                    except FileNotFoundError:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp)
                        continue
                    os.replace(tmp, os.path.join(local_dir, name))
            except OSError as e:
                self.close()
                raise ExecutorError(
                    f"SSHTunnel({self.host}): fetching {remote_dir} failed: {e}") from e

    def to_config(self) -> dict[str, Any]:
        return {"type": "SSHTunnel", "host": self.host, "user": self.user, "port": self.port,
                "identity": self.identity, "job_dir": self.job_dir,
                "known_hosts": self.known_hosts, "env": secrets.env_to_config(self.env),
                "connect_timeout": self.connect_timeout}

    def __repr__(self) -> str:
        return f"SSHTunnel({self.user}@{self.host}:{self.port}, job_dir={self.job_dir!r})"


def tunnel_from_config(config: Tunnel | Mapping[str, Any] | None) -> Tunnel:
    """A tunnel from itself, ``None`` (a :class:`LocalTunnel`) or what ``to_config`` wrote.
    Raises :class:`ExecutorError` for an unknown type."""
    if config is None:
        return LocalTunnel()
    if isinstance(config, Tunnel):
        return config
    options = dict(config)
    kind = options.pop("type", None)
    classes = {"LocalTunnel": LocalTunnel, "SSHTunnel": SSHTunnel}
    if kind not in classes:
        raise ExecutorError(f"unknown tunnel type {kind!r} (known: {', '.join(classes)})")
    return classes[kind](**options)


__all__ = ["LocalTunnel", "SSHTunnel", "Tunnel", "tunnel_from_config"]
