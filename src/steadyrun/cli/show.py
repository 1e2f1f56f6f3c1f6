"""``steadyrun show ID`` and ``steadyrun diff ID1 ID2``: the reproducibility record of an
experiment (:mod:`steadyrun.packaging.record`), and what changed between two."""

from __future__ import annotations

import time
from typing import Any

import click

from steadyrun.cli import render
from steadyrun.cli.base import Command, argument, flag
from steadyrun.cli.parse import UsageProblem


@click.command("show", cls=Command)
@argument("exp_id", metavar="ID", help="Experiment id or unique prefix.")
@flag("--json", "as_json", help="Print the whole record as JSON.")
@flag("--diff", "with_diff", help="Print the uncommitted diff recorded at launch.")
@flag("--configs", "with_configs", help="Print the resolved configs (YAML).")
@flag("--packages", "with_packages", help="List every installed distribution.")
def show_cmd(exp_id: str, as_json: bool, with_diff: bool, with_configs: bool,
             with_packages: bool) -> None:
    """Print what an experiment was launched with: git commit, branch, dirty flag and
    the sha256 of the uncommitted diff, the package hash, Python and steadyrun
    versions, host, user, and how many distributions were installed.

    \b
      steadyrun show latest
      steadyrun show latest --diff | git apply     # the uncommitted changes back
      steadyrun show 6a6e --json

    Env values never appear: the configs keep names only."""
    from steadyrun.packaging.record import read_diff

    record, folder = _record(exp_id)
    if as_json:
        render.print_json(record)
        return
    if with_diff:
        render.out(read_diff(folder).rstrip("\n"))
        return
    if with_configs:
        render.out(str(record.get("configs") or "").rstrip("\n"))
        return
    if with_packages:
        for name, version in (record.get("distributions") or {}).items():
            render.out(f"{name}=={version}")
        return
    for label, value in summary(record):
        render.out(f"{label:<14}{value}")


@click.command("diff", cls=Command)
@argument("first", metavar="ID1", help="The earlier experiment.")
@argument("second", metavar="ID2", help="The later experiment.")
@flag("--json", "as_json", help="Print the differences as JSON.")
def diff_cmd(first: str, second: str, as_json: bool) -> None:
    """Show what changed between two experiments: code (commit, branch, dirty flag,
    diff hash, package hashes), environment (Python, steadyrun, host, user), installed
    distributions (added, removed, changed versions) and configs (a unified diff).

    \b
      steadyrun diff latest~1 latest"""
    from steadyrun.packaging.record import compare

    a, _ = _record(first)
    b, _ = _record(second)
    changes = compare(a, b)
    if as_json:
        render.print_json(changes)
        return
    render.out(f"--- {a.get('experiment')}\n+++ {b.get('experiment')}")
    same = True
    for section in ("code", "environment"):
        if changes[section]:
            same = False
            render.out(f"\n{section}:")
            for key, (old, new) in changes[section].items():
                render.out(f"  {key}: {_short(old)} -> {_short(new)}")
    dists = changes["distributions"]
    if any(dists.values()):
        same = False
        render.out("\ndistributions:")
        for name, version in dists["added"].items():
            render.out(f"  + {name}=={version}")
        for name, version in dists["removed"].items():
            render.out(f"  - {name}=={version}")
        for name, (old, new) in dists["changed"].items():
            render.out(f"  ~ {name}: {old} -> {new}")
    if changes["configs"]:
        same = False
        render.out("\nconfigs:")
        render.out(changes["configs"].rstrip("\n"))
    if same:
        render.out("\nno differences in code, environment, distributions or configs")


def summary(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines ``steadyrun show`` prints, as (label, value)."""
    git = record.get("git")
    rows = [("experiment", f"{record.get('experiment')} ({record.get('title')})"),
            ("created", time.strftime("%Y-%m-%d %H:%M:%S",
                                      time.localtime(float(record.get("created_at") or 0)))),
            ("host", str(record.get("host"))), ("user", str(record.get("user"))),
            ("cwd", str(record.get("cwd")))]
    if git:
        rows += [("repository", str(git.get("repository"))),
                 ("commit", str(git.get("commit"))),
                 ("branch", str(git.get("branch") or "(detached)")),
                 ("dirty", _dirty(git))]
        if git.get("diff_sha256"):
            rows.append(("diff sha256", f"{git['diff_sha256']} (steadyrun show "
                                        f"{record.get('experiment')} --diff)"))
    else:
        rows.append(("git", "not launched from a git repository"))
    for package in (record.get("packages") or {}).values():
        packager = (package.get("info") or {}).get("packager") or {}
        rows.append(("package", f"{package.get('sha256')} ({packager.get('type', '?')}, "
                                f"{package.get('files')} files, {package.get('size')} bytes)"))
    if not record.get("packages"):
        rows.append(("package", "none (the code ran where it was installed)"))
    py = record.get("python") or {}
    rows += [("python", f"{py.get('version')} ({py.get('executable')})"),
             ("steadyrun", str(record.get("steadyrun"))),
             ("distributions", f"{len(record.get('distributions') or {})} installed "
                               "(--packages lists them)")]
    return rows


def _dirty(git: dict[str, Any]) -> str:
    if not git.get("dirty"):
        return "no"
    changed, untracked = git.get("changed") or [], git.get("untracked") or []
    parts = [f"{len(changed)} changed"] if changed else []
    if untracked:
        parts.append(f"{len(untracked)} untracked")
    return "yes (" + ", ".join(parts) + ")"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v)[:12] for v in value) + "]"
    return str(value)


def _record(exp_id: str) -> tuple[dict[str, Any], Any]:
    from steadyrun.packaging.record import read_record
    from steadyrun.store.db import Store

    if not exp_id.strip():
        raise UsageProblem("the experiment ID is empty: give an id, a unique prefix of "
                           "one, or latest (`steadyrun list` shows them)")
    store = Store(readonly=True)
    try:
        full = store.resolve_id(exp_id)
        folder = store.experiment_dir(full)
    finally:
        store.close()
    record = read_record(folder)
    if record is None:
        raise UsageProblem(f"experiment {full} has no reproducibility record (it was "
                           "launched by a steadyrun without them)")
    return record, folder
