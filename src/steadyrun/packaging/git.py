"""``GitArchivePackager``: the code of a git commit, and the git state of a folder.

The package holds ``git archive REF[:subpath]`` (what was committed), plus, when asked,
the working tree's versions of changed tracked files (``include_uncommitted``) and the
untracked files git does not ignore (``include_untracked``), plus files matched by
``include_pattern``. With ``check_uncommitted_changes`` / ``check_untracked_files`` a
tree with such files is refused before anything is built, naming them.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from steadyrun.packaging.base import Member, Packager, PackagingError

_GIT_TIMEOUT = 120.0
_NAMED = 20  # files named in a refusal


class GitArchivePackager(Packager):
    """Package the code of a git commit (NeMo-Run's ``GitArchivePackager``).

    The repository is the one that holds ``basepath`` (default: the folder the
    experiment is launched from). ``subpath`` packages only that folder of it, which
    becomes the package's root; ``ref`` is the commit (``"HEAD"``, a branch, a tag).
    ``include_pattern`` (a glob or a list, relative to ``include_pattern_relative_path``,
    default the repository's top) adds files that git does not track (data, generated
    code) at their path relative to that folder.

    Uncommitted work: by default it is left out, so the committed code runs whatever the
    tree holds. ``include_uncommitted=True`` packs the working tree's version of every
    tracked file that differs from ``ref`` (deleted files are left out);
    ``include_untracked=True`` adds untracked files git does not ignore.
    ``check_uncommitted_changes=True`` refuses a tree with changes to tracked files,
    ``check_untracked_files=True`` one with untracked files: :class:`PackagingError`
    names the files. Submodules are not packed.
    """

    def __init__(self, subpath: str = "", ref: str = "HEAD",
                 include_pattern: str | list[str] = "",
                 include_pattern_relative_path: str | list[str] = "",
                 check_uncommitted_changes: bool = False, check_untracked_files: bool = False,
                 include_uncommitted: bool = False, include_untracked: bool = False,
                 basepath: str = "") -> None:
        if not isinstance(ref, str) or not ref or ref.startswith("-"):
            raise PackagingError(f"GitArchivePackager(ref={ref!r}): give a commit, branch or tag")
        self.subpath = str(subpath).strip("/")
        self.ref = ref
        self.include_pattern = include_pattern
        self.include_pattern_relative_path = include_pattern_relative_path
        self.check_uncommitted_changes = bool(check_uncommitted_changes)
        self.check_untracked_files = bool(check_untracked_files)
        self.include_uncommitted = bool(include_uncommitted)
        self.include_untracked = bool(include_untracked)
        self.basepath = str(basepath)
        _patterns(include_pattern, include_pattern_relative_path)  # same lengths, now

    def to_config(self) -> dict[str, Any]:
        return {"type": "GitArchivePackager", "subpath": self.subpath, "ref": self.ref,
                "include_pattern": self.include_pattern,
                "include_pattern_relative_path": self.include_pattern_relative_path,
                "check_uncommitted_changes": self.check_uncommitted_changes,
                "check_untracked_files": self.check_untracked_files,
                "include_uncommitted": self.include_uncommitted,
                "include_untracked": self.include_untracked, "basepath": self.basepath}

    def members(self, workdir: Path) -> tuple[dict[str, Member], dict[str, Any]]:
        top = repo_top(Path(self.basepath) if self.basepath else workdir)
        if self.check_uncommitted_changes:
            changed = changed_files(top)
            if changed:
                raise PackagingError(
                    f"the git repository {top} has uncommitted changes: {_names(changed)}; "
                    "commit them, or pass check_uncommitted_changes=False")
        if self.check_untracked_files:
            untracked = untracked_files(top)
            if untracked:
                raise PackagingError(
                    f"the git repository {top} has untracked files: {_names(untracked)}; "
                    "commit or ignore them, or pass check_untracked_files=False")
        commit = _git(top, "rev-parse", "--verify", "--quiet", f"{self.ref}^{{commit}}",
                      what=f"ref {self.ref!r}").strip()
        tree = f"{commit}:{self.subpath}" if self.subpath else commit
        archive = _git_bytes(top, "archive", "--format=tar", tree, what=f"the tree {tree}")
        members = _tar_members(archive)
        prefix = self.subpath + "/" if self.subpath else ""
        if self.include_uncommitted:
            for rel in _z(_git_bytes(top, "diff", "--name-only", "-z", "--no-renames",
                                     commit, "--", *([self.subpath] if prefix else []),
                                     what="the uncommitted changes")):
                if rel.startswith(prefix):
                    _take_file(members, top / rel, rel[len(prefix):])
        if self.include_untracked:
            for rel in untracked_files(top):
                if rel.startswith(prefix):
                    _take_file(members, top / rel, rel[len(prefix):])
        for pattern, base in _patterns(self.include_pattern, self.include_pattern_relative_path):
            add_pattern(members, pattern, Path(base) if base else top)
        info = {"git": {"repository": str(top), "ref": self.ref, "commit": commit,
                        "subpath": self.subpath,
                        "uncommitted_included": self.include_uncommitted,
                        "untracked_included": self.include_untracked}}
        return members, info


def git_state(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The git state of the repository holding ``folder``: ``commit``, ``branch`` (None
    when detached), ``dirty``, ``changed`` and ``untracked`` files, ``diff`` (``git diff
    --binary HEAD``) and its ``diff_sha256``; None when it is not in a git repository
    (or git is missing). Two or three git commands."""
    try:
        top = repo_top(Path(folder))
    except PackagingError:
        return None
    out = _git_bytes(top, "status", "--porcelain=v2", "-z", "--branch",
                     "--untracked-files=all", what="the status")
    commit = branch = None
    changed, untracked = [], []
    entries = _z(out)
    i = 0
    while i < len(entries):
        entry = entries[i]
        if entry.startswith("# branch.oid "):
            commit = entry.split(" ", 2)[2] if not entry.endswith("(initial)") else None
        elif entry.startswith("# branch.head "):
            branch = entry.split(" ", 2)[2] if not entry.endswith("(detached)") else None
        elif entry[:2] in ("1 ", "2 ", "u "):
            fields = {"1": 8, "2": 9, "u": 10}[entry[0]]
            changed.append(entry.split(" ", fields)[fields])
            i += entry[0] == "2"  # a rename names its origin next
        elif entry.startswith("? "):
            untracked.append(entry[2:])
        i += 1
    diff = _git_bytes(top, "diff", "--binary", "HEAD", what="the diff") if (
        commit and changed) else b""
    return {"repository": str(top), "commit": commit, "branch": branch,
            "dirty": bool(changed or untracked), "changed": sorted(changed),
            "untracked": sorted(untracked),
            "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
            "diff": diff.decode("utf-8", "replace")}


def repo_top(folder: Path) -> Path:
    """The top folder of the git repository holding ``folder``."""
    if not folder.is_dir():
        raise PackagingError(f"{folder} is not a folder: cannot find its git repository")
    out = _run(folder, "rev-parse", "--show-toplevel")
    if out.returncode != 0:
        raise PackagingError(
            f"{folder} is not in a git repository ({out.stderr.decode().strip()}); launch "
            "from inside one, or pass GitArchivePackager(basepath=...)")
    return Path(out.stdout.decode().strip())


def changed_files(top: Path) -> list[str]:
    """Tracked files with changes, staged or not."""
    out = _git_bytes(top, "status", "--porcelain=v1", "-z", "--untracked-files=no",
                     what="the status")
    names = []
    entries = _z(out)
    i = 0
    while i < len(entries):
        entry = entries[i]
        names.append(entry[3:])
        if entry[:1] in ("R", "C"):  # a rename names its origin next
            i += 1
        i += 1
    return sorted(names)


def untracked_files(top: Path) -> list[str]:
    """Untracked files that git does not ignore."""
    return sorted(_z(_git_bytes(top, "ls-files", "--others", "--exclude-standard", "-z",
                                what="the untracked files")))


def add_pattern(members: dict[str, Member], pattern: str, base: Path) -> None:
    """Add the files under ``base`` that match the glob ``pattern`` (``**`` recurses),
    at their paths relative to ``base``."""
    base = base.absolute()
    if os.path.isabs(pattern):
        try:
            pattern = os.path.relpath(pattern, base)
        except ValueError as e:
            raise PackagingError(f"include_pattern {pattern!r} is not under {base}") from e
    if pattern.startswith(".."):
        raise PackagingError(f"include_pattern {pattern!r} leads outside {base}")
    for path in sorted(base.glob(pattern)):
        if path.is_dir() and not path.is_symlink():
            for sub in sorted(path.rglob("*")):
                if sub.is_file() or sub.is_symlink():
                    _take_file(members, sub, sub.relative_to(base).as_posix())
        elif path.is_file() or path.is_symlink():
            _take_file(members, path, path.relative_to(base).as_posix())


def _patterns(patterns: str | list[str], bases: str | list[str]) -> list[tuple[str, str]]:
    ps = [patterns] if isinstance(patterns, str) else list(patterns)
    bs = [bases] if isinstance(bases, str) else list(bases)
    if len(bs) == 1 and len(ps) > 1 and not bs[0]:
        bs = bs * len(ps)
    if len(ps) != len(bs):
        raise PackagingError(
            f"include_pattern has {len(ps)} entries but include_pattern_relative_path has "
            f"{len(bs)}: give one folder per pattern")
    return [(p, b) for p, b in zip(ps, bs, strict=True) if p]


def _take_file(members: dict[str, Member], path: Path, name: str) -> None:
    if path.is_symlink():
        members[name] = Member(link=os.readlink(path))
    elif path.is_file():
        members[name] = Member(path.read_bytes(), executable=os.access(path, os.X_OK))
    else:
        members.pop(name, None)  # deleted in the working tree


def _tar_members(archive: bytes) -> dict[str, Member]:
    members: dict[str, Member] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for ti in tar:
            name = ti.name.rstrip("/")
            if ti.issym():
                members[name] = Member(link=ti.linkname)
            elif ti.isfile():
                f = tar.extractfile(ti)
                members[name] = Member(f.read() if f is not None else b"",
                                       executable=bool(ti.mode & 0o100))
    return members


def _names(files: list[str]) -> str:
    shown = ", ".join(files[:_NAMED])
    return shown + (f" and {len(files) - _NAMED} more" if len(files) > _NAMED else "")


def _z(out: bytes) -> list[str]:
    return [p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p]


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", os.fspath(folder), *args], capture_output=True,
                              timeout=_GIT_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError as e:
        raise PackagingError("git is not installed (no 'git' on PATH)") from e
    except subprocess.TimeoutExpired as e:
        raise PackagingError(f"git {args[0]} in {folder} took over {_GIT_TIMEOUT:g} s") from e


def _git_bytes(folder: Path, *args: str, what: str) -> bytes:
    out = _run(folder, *args)
    if out.returncode != 0:
        raise PackagingError(f"git could not read {what} in {folder}: "
                             f"{out.stderr.decode(errors='replace').strip() or 'failed'}")
    return out.stdout


def _git(folder: Path, *args: str, what: str) -> str:
    return _git_bytes(folder, *args, what=what).decode()
