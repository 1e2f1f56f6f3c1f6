"""What every packager shares: the :class:`Package` it builds, deterministic tars, safe
unpacking, and the plain description a packager is stored as.

A package is a gzipped tar of regular files and relative links, written the same way
every time for the same contents: members sorted by name, modification times 0, owner
0/0 and no owner names, modes reduced to 0644 or 0755, gzip without a time stamp. Its
``sha256`` is taken over the members (name, type, mode and the sha256 of each file's
bytes or a link's target), so it names the code, not the compression.

Unpacking is safe: every member goes through :mod:`tarfile`'s ``"data"`` filter (no
absolute paths, no ``..``, no links that leave the folder, no device files), into a
temporary folder that is renamed into place once complete, with a marker file holding
the hash: a folder that exists with its marker is complete and is reused as it is.
"""

from __future__ import annotations

import abc
import contextlib
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadyrun.errors import SteadyrunError

#: File inside an unpacked package folder that holds its hash: the folder is complete.
MARKER = ".steadyrun-package"
#: Suffix of a package file, named ``<sha256>.tar.gz``.
SUFFIX = ".tar.gz"


class PackagingError(SteadyrunError):
    """A package could not be built, stored, shipped or unpacked (not a git repository,
    a dirty tree with the checks on, a link that leaves the tree, a damaged tar)."""


@dataclass
class Package:
    """A built package: the tar at ``path``, its ``sha256``, ``size`` in bytes, the
    number of ``files``, and ``info`` (what it was made of: packager, git commit...)."""

    path: Path
    sha256: str
    size: int
    files: int
    info: dict[str, Any] = field(default_factory=dict)

    def unpack(self, dest: str | os.PathLike[str] | None = None) -> Path:
        """Unpack into ``dest/<sha256>`` (``dest`` defaults to the tar's own folder) and
        return that folder; an existing complete folder is reused. Safe to call from
        several processes at once. Raises :class:`PackagingError` when the tar is
        damaged or does not hold what its name says."""
        return unpack(self.path, self.sha256, dest)

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "files": self.files,
                "info": self.info}


class Packager(abc.ABC):
    """Makes a :class:`Package` of the code an experiment runs."""

    @abc.abstractmethod
    def members(self, workdir: Path) -> tuple[dict[str, Member], dict[str, Any]]:
        """The package's members by path (relative, ``/``-separated) and what they were
        made of (recorded with the package)."""

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """A plain description (``{"type": ..., options...}``) that
        :func:`packager_from_config` turns back into this packager."""

    def package(self, workdir: str | os.PathLike[str], store_dir: str | os.PathLike[str]
                ) -> Package:
        """Build the package from ``workdir`` (the folder the experiment is launched
        from) into ``store_dir/<sha256>.tar.gz``, an owner-only file; a package with the
        same contents that is already there is kept and reused."""
        members, info = self.members(Path(workdir).absolute())
        return write_package(members, Path(store_dir), {"packager": self.to_config(), **info})

    def key(self) -> str:
        """A short name for this packager's configuration (several executors of one
        experiment may each have a packager)."""
        text = json.dumps(self.to_config(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Packager) and type(other) is type(self) \
            and other.to_config() == self.to_config()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        options = {k: v for k, v in self.to_config().items() if k != "type"}
        args = ", ".join(f"{k}={v!r}" for k, v in options.items())
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class Member:
    """One member of a package: a file's bytes (``data``, executable or not) or a
    relative link (``link``)."""

    data: bytes = b""
    executable: bool = False
    link: str | None = None


def packager_from_config(config: Any, what: str = "packager") -> Packager | None:
    """The packager a config describes (a :class:`Packager` is returned as it is; None
    stays None). Raises :class:`PackagingError` for an unknown type."""
    if config is None or isinstance(config, Packager):
        return config
    if not isinstance(config, dict) or "type" not in config:
        raise PackagingError(
            f"{what}={config!r}: give run.GitArchivePackager(...), run.PatternPackager(...), "
            "run.HybridPackager(...) or None")
    from steadyrun.packaging.git import GitArchivePackager
    from steadyrun.packaging.pattern import HybridPackager, PatternPackager

    kinds: dict[str, Any] = {"GitArchivePackager": GitArchivePackager,
                             "PatternPackager": PatternPackager,
                             "HybridPackager": HybridPackager}
    options = {k: v for k, v in config.items() if k != "type"}
    kind = kinds.get(str(config["type"]))
    if kind is None:
        raise PackagingError(f"{what}: unknown packager type {config['type']!r}; known: "
                             f"{', '.join(sorted(kinds))}")
    if kind is HybridPackager:
        options["sub_packagers"] = {k: packager_from_config(v, what) for k, v in
                                    dict(options.get("sub_packagers") or {}).items()}
    return kind(**options)


def packager_config(packager: Packager | None) -> dict[str, Any] | None:
    """What an executor stores for its ``packager``."""
    return None if packager is None else packager.to_config()


# --- writing ---------------------------------------------------------------------------


def members_digest(members: dict[str, Member]) -> str:
    """The sha256 that names a package with these members."""
    h = hashlib.sha256()
    for name in sorted(members):
        m = members[name]
        if m.link is not None:
            entry = f"L {name}\0{m.link}\n"
        else:
            entry = (f"F {name}\0{755 if m.executable else 644}\0"
                     f"{hashlib.sha256(m.data).hexdigest()}\n")
        h.update(entry.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def write_package(members: dict[str, Member], store_dir: Path, info: dict[str, Any]
                  ) -> Package:
    """Write ``members`` as ``store_dir/<sha256>.tar.gz`` (kept when already there)."""
    from steadyrun.store.files import make_private_dir, open_private

    for name, m in members.items():
        check_member_name(name)
        if m.link is not None:
            check_link(name, m.link)
    sha = members_digest(members)
    make_private_dir(store_dir)
    final = store_dir / f"{sha}{SUFFIX}"
    if not final.is_file():
        tmp = store_dir / f".{sha}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            with os.fdopen(fd, "wb") as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(members):
                    _add(tar, name, members[name])
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    files = sum(1 for m in members.values() if m.link is None)
    return Package(final, sha, final.stat().st_size, files, info)


def _add(tar: tarfile.TarFile, name: str, m: Member) -> None:
    ti = tarfile.TarInfo(name)
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if m.link is not None:
        ti.type = tarfile.SYMTYPE
        ti.linkname = m.link
        ti.mode = 0o777
        tar.addfile(ti)
        return
    ti.mode = 0o755 if m.executable else 0o644
    ti.size = len(m.data)
    tar.addfile(ti, io.BytesIO(m.data))


def check_member_name(name: str) -> None:
    """Refuse a member path that is absolute, empty or climbs with ``..``."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise PackagingError(f"cannot package {name!r}: give paths inside the package "
                             "(relative, no '..')")


def check_link(name: str, target: str) -> None:
    """Refuse a link whose target leaves the package."""
    import posixpath

    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise PackagingError(
            f"cannot package the link {name!r} -> {target!r}: it leads outside the package; "
            "replace it with the file, or leave it out")


# --- reading ---------------------------------------------------------------------------


def read_members(tar_path: str | os.PathLike[str]) -> dict[str, Member]:
    """The members of a package tar (for checking its hash)."""
    members: dict[str, Member] = {}
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for ti in tar:
                if ti.issym():
                    members[ti.name] = Member(link=ti.linkname)
                elif ti.isfile():
                    f = tar.extractfile(ti)
                    data = f.read() if f is not None else b""
                    members[ti.name] = Member(data, executable=bool(ti.mode & 0o100))
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise PackagingError(f"the package {os.fspath(tar_path)} cannot be read: {e}") from e
    return members


def unpack(tar_path: str | os.PathLike[str], sha256: str,
           dest: str | os.PathLike[str] | None = None) -> Path:
    """Unpack the package at ``tar_path`` into ``dest/<sha256>`` once; see
    :meth:`Package.unpack`."""
    from steadyrun.store.files import make_private_dir

    if not _is_sha(sha256):
        raise PackagingError(f"{sha256!r} is not a package hash (64 hexadecimal digits)")
    tar_path = Path(tar_path)
    root = Path(dest) if dest is not None else tar_path.parent
    target = root / sha256
    if _complete(target, sha256):
        return target
    members = read_members(tar_path)
    try:  # refused up front; the "data" filter below is the second line of defence
        for name, m in members.items():
            check_member_name(name)
            if m.link is not None:
                check_link(name, m.link)
    except PackagingError as e:
        raise PackagingError(f"cannot unpack {tar_path}: {e}") from None
    digest = members_digest(members)
    if digest != sha256:
        raise PackagingError(
            f"the package {tar_path} holds {digest[:12]}, not {sha256[:12]}: it is damaged or "
            "was replaced; remove it and launch again")
    make_private_dir(root)
    tmp = root / f".{sha256}.{os.getpid()}.{secrets.token_hex(4)}.unpacking"
    os.mkdir(tmp, 0o700)
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            tar.extractall(tmp, filter="data")  # no absolute paths, '..' or escaping links
        (tmp / MARKER).write_text(sha256 + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target, sha256):  # a broken leftover: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    except (OSError, tarfile.TarError) as e:
        raise PackagingError(f"cannot unpack {tar_path} into {target}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the rename
    return target


def _complete(folder: Path, sha256: str) -> bool:
    try:
        return (folder / MARKER).read_text().strip() == sha256
    except OSError:
        return False


def _is_sha(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
