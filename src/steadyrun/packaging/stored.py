"""Where packages live: one content-addressed cache per store, one list per experiment.

``$STEADYRUN_HOME/packages/<sha256>.tar.gz`` holds every package built (owner-only; the
same code is stored once whatever the number of experiments), unpacked for local runs
beside it as ``<sha256>/``. An experiment's ``packages.json`` says which package each of
its packagers built: every attempt and task of the experiment, a resume and a
background controller use that one, so the package is built once per experiment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steadyrun.packaging.base import SUFFIX, Package, Packager, PackagingError, _is_sha

#: The experiment's file naming its packages: ``{packager key: package}``.
PACKAGES_FILE = "packages.json"
#: The store's folder of packages.
CACHE_DIR = "packages"


def cache_dir(home: str | os.PathLike[str]) -> Path:
    """The store's package cache."""
    return Path(home) / CACHE_DIR


def experiment_of(attempt_dir: str | os.PathLike[str]) -> Path:
    """The experiment folder of an attempt folder (``<exp>/tasks/<task>/<n>``)."""
    path = Path(os.path.abspath(attempt_dir))
    if path.parent.parent.name != "tasks":
        raise PackagingError(f"{path} is not an attempt folder of an experiment")
    return path.parents[2]


def build(packager: Packager, home: str | os.PathLike[str],
          workdir: str | os.PathLike[str] | None = None) -> Package:
    """Build ``packager``'s package from ``workdir`` (default: this folder) into the
    store's cache."""
    return packager.package(workdir or os.getcwd(), cache_dir(home))


def experiment_package(packager: Packager, exp_dir: str | os.PathLike[str],
                       workdir: str | os.PathLike[str] | None = None) -> Package:
    """The package of ``packager`` for the experiment in ``exp_dir``: the one recorded
    in its ``packages.json``, or built now (from ``workdir``, default this folder) and
    recorded. Several processes may ask at once: one builds, the others wait."""
    exp_dir = Path(exp_dir)
    key = packager.key()
    with _locked(exp_dir):
        recorded = read_packages(exp_dir).get(key)
        cache = cache_dir(exp_dir.parent.parent)
        if recorded is not None:
            sha = str(recorded.get("sha256", ""))
            path = cache / f"{sha}{SUFFIX}"
            if _is_sha(sha) and path.is_file():
                return Package(path, sha, int(recorded.get("size", 0)),
                               int(recorded.get("files", 0)), dict(recorded.get("info") or {}))
        package = packager.package(workdir or os.getcwd(), cache)
        record_packages(exp_dir, {key: package})
        return package


def attempt_package(packager: Packager, attempt_dir: str | os.PathLike[str]) -> Package:
    """The experiment's package for an attempt (see :func:`experiment_package`)."""
    return experiment_package(packager, experiment_of(attempt_dir))


def local_folder(packager: Packager, attempt_dir: str | os.PathLike[str]) -> Path:
    """The experiment's package for an attempt, unpacked once on this machine."""
    return attempt_package(packager, attempt_dir).unpack()


def record_packages(exp_dir: Path, packages: dict[str, Package]) -> None:
    """Add ``packages`` (by packager key) to the experiment's ``packages.json``."""
    from steadyrun.attempt.folder import atomic_write

    data = read_packages(exp_dir)
    data.update({k: p.to_dict() for k, p in packages.items()})
    atomic_write(exp_dir / PACKAGES_FILE, json.dumps(data, indent=1, sort_keys=True).encode())


def read_packages(exp_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The experiment's ``packages.json`` (empty when it has none)."""
    try:
        data = json.loads((Path(exp_dir) / PACKAGES_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise PackagingError(f"cannot read {Path(exp_dir) / PACKAGES_FILE}: {e}") from e
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(exp_dir: Path) -> Iterator[None]:
    from steadyrun.store.files import open_private

    fd = open_private(exp_dir / ".packages.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
