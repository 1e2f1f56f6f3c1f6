"""``PatternPackager`` (files matched by globs) and ``HybridPackager`` (several packagers,
each in a folder of the package), in NeMo-Run's names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steadyrun.packaging.base import Member, Packager, PackagingError
from steadyrun.packaging.git import _patterns, add_pattern


class PatternPackager(Packager):
    """Package the files that match ``include_pattern`` (a glob such as ``"src/**/*.py"``,
    or a list of them; a folder matched is taken whole), at their paths relative to
    ``relative_path`` (default: the folder the experiment is launched from; one per
    pattern when ``include_pattern`` is a list). Raises :class:`PackagingError` when a
    pattern leads outside its folder or nothing matches at all."""

    def __init__(self, include_pattern: str | list[str],
                 relative_path: str | list[str] = "") -> None:
        if not include_pattern:
            raise PackagingError("PatternPackager(include_pattern=...): give a glob such "
                                 "as 'src/**/*.py'")
        self.include_pattern = include_pattern
        self.relative_path = relative_path
        _patterns(include_pattern, relative_path)

    def to_config(self) -> dict[str, Any]:
        return {"type": "PatternPackager", "include_pattern": self.include_pattern,
                "relative_path": self.relative_path}

    def members(self, workdir: Path) -> tuple[dict[str, Member], dict[str, Any]]:
        members: dict[str, Member] = {}
        for pattern, base in _patterns(self.include_pattern, self.relative_path):
            add_pattern(members, pattern, Path(base) if base else workdir)
        if not members:
            raise PackagingError(
                f"PatternPackager: no file matches {self.include_pattern!r} under "
                f"{self.relative_path or workdir}")
        return members, {}


class HybridPackager(Packager):
    """Several packagers in one package: ``{"folder": packager, ...}`` puts each one's
    files under ``folder/`` (``""`` or ``extract_at_root=True``: at the package's root,
    later ones replacing earlier ones' files of the same path)."""

    def __init__(self, sub_packagers: dict[str, Packager],
                 extract_at_root: bool = False) -> None:
        if not isinstance(sub_packagers, dict) or not sub_packagers:
            raise PackagingError("HybridPackager(sub_packagers=...): give a dict "
                                 "{'folder': packager, ...}")
        for folder, p in sub_packagers.items():
            if not isinstance(p, Packager):
                raise PackagingError(f"HybridPackager: {folder!r} maps to {p!r}, not a packager")
            if folder and (folder.startswith("/") or ".." in folder.split("/")):
                raise PackagingError(f"HybridPackager: folder {folder!r} must be relative")
        self.sub_packagers = dict(sub_packagers)
        self.extract_at_root = bool(extract_at_root)

    def to_config(self) -> dict[str, Any]:
        return {"type": "HybridPackager", "extract_at_root": self.extract_at_root,
                "sub_packagers": {k: p.to_config() for k, p in self.sub_packagers.items()}}

    def members(self, workdir: Path) -> tuple[dict[str, Member], dict[str, Any]]:
        members: dict[str, Member] = {}
        infos: dict[str, Any] = {}
        for folder, packager in self.sub_packagers.items():
            sub, info = packager.members(workdir)
            prefix = "" if self.extract_at_root or not folder else folder.strip("/") + "/"
            members.update({prefix + name: m for name, m in sub.items()})
            if info:
                infos[folder] = info
        return members, {"parts": infos} if infos else {}
