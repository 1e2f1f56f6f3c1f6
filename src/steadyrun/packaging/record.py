"""The reproducibility record: what an experiment was launched with.

Written at launch into the experiment's folder, owner-only:

``repro.json``
    ``git`` (repository, commit, branch, dirty flag, changed and untracked files, the
    sha256 of the uncommitted diff), ``packages`` (each packager's package: hash, size,
    files, the commit it was made of), ``python`` (version, implementation,
    executable), ``steadyrun`` (version), ``distributions`` (every installed
    distribution and its version, read with :mod:`importlib.metadata`), ``host``,
    ``user``, ``cwd``, ``created_at`` and ``configs_sha256``: the hash of the
    experiment's resolved definition (``definition.yaml`` beside it, env values
    withheld, as the store keeps them), which :func:`read_record` gives as ``configs``.
``repro.diff``
    a copy of the uncommitted diff (``git diff --binary HEAD``), when there was one.

``steadyrun show ID`` prints it; ``steadyrun diff ID1 ID2`` compares two.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadyrun.packaging.base import Package, Packager

#: The record's file in the experiment folder.
RECORD_FILE = "repro.json"
#: The copy of the uncommitted diff.
DIFF_FILE = "repro.diff"
_DEFINITION_FILE = "definition.yaml"


@dataclass
class LaunchRecord:
    """What :func:`prepare` gathered before the experiment is created; :meth:`write`
    puts it into the experiment's folder."""

    git: dict[str, Any] | None
    packages: dict[str, Package] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def write(self, exp_dir: str | os.PathLike[str], exp_id: str, title: str) -> Path:
        """Write ``repro.json`` (and ``repro.diff``) into ``exp_dir``, record the
        packages in its ``packages.json``; return the record's path."""
        from steadyrun.attempt.folder import atomic_write
        from steadyrun.packaging.stored import record_packages

        exp_dir = Path(exp_dir)
        if self.packages:
            record_packages(exp_dir, self.packages)
        git = dict(self.git) if self.git else None
        if git is not None:
            diff = git.pop("diff", "")
            if diff:
                atomic_write(exp_dir / DIFF_FILE, diff.encode("utf-8", "replace"))
        import hashlib

        import steadyrun

        try:  # the configs are the definition file beside the record: kept once
            configs = hashlib.sha256((exp_dir / _DEFINITION_FILE).read_bytes()).hexdigest()
        except OSError:
            configs = None

        record = {
            "version": 1, "experiment": exp_id, "title": title,
            "created_at": self.created_at, "host": socket.gethostname(), "user": _user(),
            "cwd": os.getcwd(), "git": git,
            "packages": {k: p.to_dict() for k, p in sorted(self.packages.items())},
            "python": {"version": platform.python_version(),
                       "implementation": platform.python_implementation(),
                       "executable": sys.executable},
            "steadyrun": steadyrun.__version__,
            "distributions": distributions(), "configs_sha256": configs}
        path = exp_dir / RECORD_FILE
        atomic_write(path, json.dumps(record, indent=1, sort_keys=True).encode())
        return path


def prepare(home: str | os.PathLike[str], executors: list[Any],
            workdir: str | os.PathLike[str] | None = None) -> LaunchRecord:
    """Gather the git state of ``workdir`` (default: this folder) and build the package
    of every executor that has a packager, into the store's cache. Raises
    :class:`~steadyrun.packaging.PackagingError` (a dirty tree with the checks on, not
    a git repository...) before anything is written for the experiment."""
    from steadyrun.packaging.git import git_state
    from steadyrun.packaging.stored import build

    where = Path(workdir or os.getcwd())
    packages: dict[str, Package] = {}
    for ex in executors:
        packager: Packager | None = getattr(ex, "packager", None)
        if packager is not None and packager.key() not in packages:
            packages[packager.key()] = build(packager, home, where)
    return LaunchRecord(git_state(where), packages)


def read_record(exp_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The experiment's record, or None when it has none (launched before records
    existed)."""
    try:
        data = json.loads((Path(exp_dir) / RECORD_FILE).read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        return None
    if "configs" not in data:  # not copied into the record: the definition file is it
        try:
            data["configs"] = (Path(exp_dir) / _DEFINITION_FILE).read_text()
        except OSError:
            data["configs"] = ""
    return data


def read_diff(exp_dir: str | os.PathLike[str]) -> str:
    """The uncommitted diff recorded at launch ("" when there was none)."""
    try:
        return (Path(exp_dir) / DIFF_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def distributions() -> dict[str, str]:
    """Every installed distribution on this interpreter's path and its version."""
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        # a wheel's folder name holds name and version; reading METADATA costs 10x more
        folder = os.path.basename(str(getattr(dist, "_path", "")))
        stem, dot, kind = folder.rpartition(".")
        name, dash, version = stem.partition("-")
        if not (kind == "dist-info" and dash and version and "-" not in version):
            name = (dist.metadata["Name"] if dist.metadata is not None else None) or ""
            version = str(dist.version)
        if name:
            found.setdefault(_canonical(str(name)), version)
    return dict(sorted(found.items()))


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What changed from record ``a`` to record ``b``: ``code`` (git and package
    fields that differ, as ``(a, b)``), ``environment`` (python, steadyrun, host,
    user), ``distributions`` (``added``, ``removed``, ``changed``) and ``configs`` (a
    unified diff of the YAML, "" when equal)."""
    import difflib

    code: dict[str, tuple[Any, Any]] = {}
    ga, gb = a.get("git") or {}, b.get("git") or {}
    for key in ("repository", "commit", "branch", "dirty", "diff_sha256"):
        if ga.get(key) != gb.get(key):
            code[f"git.{key}"] = (ga.get(key), gb.get(key))
    pa, pb = _package_hashes(a), _package_hashes(b)
    if pa != pb:
        code["packages"] = (pa, pb)
    env: dict[str, tuple[Any, Any]] = {}
    for key in ("host", "user", "steadyrun"):
        if a.get(key) != b.get(key):
            env[key] = (a.get(key), b.get(key))
    va = (a.get("python") or {}).get("version")
    vb = (b.get("python") or {}).get("version")
    if va != vb:
        env["python"] = (va, vb)
    da, db = a.get("distributions") or {}, b.get("distributions") or {}
    dists = {"added": {k: db[k] for k in sorted(set(db) - set(da))},
             "removed": {k: da[k] for k in sorted(set(da) - set(db))},
             "changed": {k: (da[k], db[k]) for k in sorted(set(da) & set(db))
                         if da[k] != db[k]}}
    configs = "".join(difflib.unified_diff(
        str(a.get("configs") or "").splitlines(keepends=True),
        str(b.get("configs") or "").splitlines(keepends=True),
        fromfile=f"{a.get('experiment')}/configs", tofile=f"{b.get('experiment')}/configs"))
    return {"code": code, "environment": env, "distributions": dists, "configs": configs}


def _package_hashes(record: dict[str, Any]) -> list[str]:
    return sorted(str(p.get("sha256")) for p in (record.get("packages") or {}).values())


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
