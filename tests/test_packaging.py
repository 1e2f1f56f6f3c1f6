"""Packagers and packages: deterministic, content-addressed, safely unpacked."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading

import pytest

import steadyrun as run
from packaged_repo import git, make_repo
from steadyrun.executors import executor_from_config
from steadyrun.packaging.base import MARKER, Member, packager_from_config, unpack, write_package
from steadyrun.packaging.stored import experiment_package, read_packages


@pytest.fixture
def repo(tmp_path):
    path, name = make_repo(tmp_path)
    return path, name


def test_the_same_code_gives_the_same_bytes_and_hash(repo, tmp_path):
    path, name = repo
    a = run.GitArchivePackager().package(path, tmp_path / "a")
    os.utime(path / f"{name}.py", (1, 1))  # times and the working tree do not matter
    b = run.GitArchivePackager().package(path, tmp_path / "b")
    assert a.sha256 == b.sha256 and a.path.name == f"{a.sha256}.tar.gz"
    assert a.path.read_bytes() == b.path.read_bytes()
    assert stat.S_IMODE(os.stat(a.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700
    with tarfile.open(a.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}
    assert {m.name: m.mode for m in members}["show.sh"] == 0o755
    git(path, "commit", "-q", "-am", "second")
    c = run.GitArchivePackager().package(path, tmp_path / "a")
    assert c.sha256 != a.sha256 and c.info["git"]["commit"] == git(path, "rev-parse",
                                                                     "HEAD").strip()


def test_subpath_ref_patterns_and_hybrid(repo, tmp_path):
    path, name = repo
    (path / "lib").mkdir()
    (path / "lib" / "util.py").write_text("X = 1\n")
    (path / "data").mkdir()
    (path / "data" / "table.csv").write_text("a,b\n")
    git(path, "add", "lib")
    git(path, "commit", "-q", "-m", "lib")
    folder = run.GitArchivePackager(subpath="lib").package(path, tmp_path / "s").unpack()
    assert sorted(os.listdir(folder)) == [MARKER, "util.py"]
    old = run.GitArchivePackager(ref="HEAD~1").package(path, tmp_path / "s").unpack()
    assert not (old / "lib").exists() and (old / f"{name}.py").is_file()
    extra = run.GitArchivePackager(include_pattern="data/*.csv").package(path, tmp_path / "s")
    assert (extra.unpack() / "data" / "table.csv").read_text() == "a,b\n"
    pattern = run.PatternPackager("*.csv", relative_path=str(path / "data"))
    assert sorted(os.listdir(pattern.package(path, tmp_path / "p").unpack())) == [
        MARKER, "table.csv"]
    hybrid = run.HybridPackager({"code": run.GitArchivePackager(subpath="lib"),
                                 "data": pattern})
    both = hybrid.package(path, tmp_path / "h").unpack()
    assert (both / "code" / "util.py").is_file() and (both / "data" / "table.csv").is_file()
    with pytest.raises(run.PackagingError, match="no file matches"):
        run.PatternPackager("*.nothing").package(path, tmp_path / "p")
    with pytest.raises(run.PackagingError, match="not in a git repository"):
        run.GitArchivePackager().package(tmp_path / "p", tmp_path / "x")


def test_packagers_survive_their_stored_form():
    hybrid = run.HybridPackager({"a": run.GitArchivePackager(subpath="x", ref="v1"),
                                 "b": run.PatternPackager(["*.py", "*.txt"], ["/s", "/t"])})
    assert packager_from_config(hybrid.to_config()) == hybrid
    for ex in (run.LocalExecutor(packager=hybrid),
               run.SlurmExecutor(packager=hybrid, container_image="img",
                                 container_mounts=["/data:/data:ro"])):
        again = executor_from_config(ex.to_config())
        assert again.packager == hybrid and again.to_config() == ex.to_config()
    with pytest.raises(run.PackagingError, match="unknown packager type"):
        packager_from_config({"type": "Nope"})
    with pytest.raises(run.ExecutorError, match="strategy='subprocess'"):
        run.LocalExecutor(strategy="thread", packager=run.GitArchivePackager())


def test_links_out_of_the_package_are_refused(tmp_path):
    with pytest.raises(run.PackagingError, match="leads outside the package"):
        write_package({"a": Member(link="../../etc/passwd")}, tmp_path, {})
    with pytest.raises(run.PackagingError, match="relative, no"):
        write_package({"../a": Member(b"x")}, tmp_path, {})
    ok = write_package({"a/b": Member(b"x"), "a/c": Member(link="b")}, tmp_path, {})
    assert (ok.unpack() / "a" / "c").read_bytes() == b"x"


@pytest.mark.parametrize("evil", [
    {"name": "../escaped.txt"}, {"name": "/tmp/absolute.txt"},
    {"name": "link", "link": "/etc/passwd"}, {"name": "up", "link": "../../x"},
])
def test_a_hostile_tar_is_not_unpacked_outside(tmp_path, evil):
    from steadyrun.packaging.base import members_digest

    members = {evil["name"]: Member(link=evil["link"]) if "link" in evil else Member(b"x")}
    sha = members_digest(members)
    tar_path = tmp_path / "store" / f"{sha}.tar.gz"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w:gz") as tar:
        ti = tarfile.TarInfo(evil["name"])
        if "link" in evil:
            ti.type, ti.linkname = tarfile.SYMTYPE, evil["link"]
            tar.addfile(ti)
        else:
            ti.size = 1
            tar.addfile(ti, io.BytesIO(b"x"))
    with pytest.raises(run.PackagingError, match="cannot unpack"):
        unpack(tar_path, sha, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out" / sha).exists()


def test_unpacking_is_once_checked_and_safe_in_parallel(repo, tmp_path):
    path, _ = repo
    package = run.GitArchivePackager().package(path, tmp_path / "store")
    folders: list[os.PathLike] = []
    threads = [threading.Thread(target=lambda: folders.append(package.unpack(tmp_path / "n")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(folders)) == 1
    assert sorted(os.listdir(tmp_path / "n")) == [package.sha256]  # no leftovers
    (folders[0] / "show.sh").write_text("changed")  # a complete folder is reused as is
    assert package.unpack(tmp_path / "n") == folders[0]
    damaged = tmp_path / "bad" / package.path.name
    damaged.parent.mkdir()
    data = bytearray(package.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(run.PackagingError):
        unpack(damaged, package.sha256)
    other = run.PatternPackager("*.sh").package(path, tmp_path / "bad")
    os.replace(other.path, damaged)
    with pytest.raises(run.PackagingError, match="damaged or was replaced"):
        unpack(damaged, package.sha256)


def test_an_experiment_builds_its_package_once(repo, tmp_path):
    path, _ = repo
    exp = tmp_path / "home" / "experiments" / "e1"
    exp.mkdir(parents=True)
    packager = run.GitArchivePackager()
    first = experiment_package(packager, exp, workdir=path)
    git(path, "commit", "-q", "-am", "second")  # later attempts keep the launch's package
    assert experiment_package(packager, exp, workdir=path).sha256 == first.sha256
    assert read_packages(exp)[packager.key()]["sha256"] == first.sha256
    assert first.path.parent == tmp_path / "home" / "packages"


def test_git_state_of_a_tree(repo, tmp_path):
    from steadyrun.packaging.git import git_state

    path, name = repo
    state = git_state(path)
    assert state["branch"] == "main" and state["dirty"] and state["changed"] == [f"{name}.py"]
    assert "+VALUE = 'dirty'" in state["diff"] and len(state["diff_sha256"]) == 64
    git(path, "commit", "-q", "-am", "second")
    git(path, "mv", "show.sh", "shown sh.sh")  # a rename, with a space
    (path / "new dir").mkdir()
    (path / "new dir" / "a.txt").write_text("a")
    state = git_state(path)
    assert state["changed"] == ["shown sh.sh"] and state["untracked"] == ["new dir/a.txt"]
    git(path, "commit", "-q", "-m", "third")
    (path / "new dir" / "a.txt").unlink()
    git(path, "checkout", "-q", "--detach", "HEAD~1")
    state = git_state(path)
    assert state["branch"] is None and not state["dirty"] and state["diff_sha256"] is None
    assert state["commit"] == git(path, "rev-parse", "HEAD").strip()
    (tmp_path / "nowhere").mkdir()
    assert git_state(tmp_path / "nowhere") is None  # not a repository
