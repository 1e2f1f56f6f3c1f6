"""Naming experiments on the command line, and the CLI's edges.

IDs: a prefix of the id or of its random suffix, ``latest`` and ``latest~N``, with
named errors for ambiguous and unknown ones. Filters that can never match, empty
outputs that say why, and a reader that closes the pipe early (``| head``): each is
run as users run it, a fresh ``python -m steadyrun`` against a real store.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import steadyrun as run
from steadyrun.store.db import Store


@pytest.fixture
def cli(subprocess_env, steadyrun_home, tmp_path):
    """``cli("status", "latest")`` -> CompletedProcess (text, never raises)."""
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))

    def call(*args: str, timeout: float = 60):
        return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                              stdin=subprocess.DEVNULL)

    call.env = env  # type: ignore[attr-defined]
    return call


def _record(title: str, suffix: str | None = None, monkeypatch=None) -> str:
    """An experiment recorded in the store (nothing runs); ``suffix`` fixes its random
    part."""
    if suffix is not None:
        monkeypatch.setattr("steadyrun.store.db.secrets.token_hex", lambda n: suffix)
    store = Store()
    try:
        return store.create_experiment(title, [{"name": "train"}], {"type": "LocalExecutor"})
    finally:
        store.close()


def _run(tasks: list[run.Task], title: str) -> str:
    exp = run.Experiment(tasks, title=title, progress=False, tail_logs=False)
    exp.run(raise_on_failure=False)
    assert exp.id is not None
    return exp.id


# --- IDs -------------------------------------------------------------------------------


def test_a_prefix_of_the_random_suffix_names_the_experiment(cli, monkeypatch):
    first = _record("mnist", "6a6e", monkeypatch)
    second = _record("mnist", "ab34", monkeypatch)
    for query in ("6a6e", "6a", "6A6E", first[-20:-2]):  # the suffix; the date-and-time tail
        status = cli("status", query, "--json")
        assert status.returncode == 0, (query, status.stderr)
        assert json.loads(status.stdout)["id"] == first
    assert json.loads(cli("status", "ab3", "--json").stdout)["id"] == second
    assert run.Experiment.from_id("6a6").id == first


def test_an_ambiguous_prefix_lists_every_candidate(cli, monkeypatch):
    alpha = _record("alpha", "ab12", monkeypatch)
    beta = _record("beta", "ab34", monkeypatch)
    proc = cli("status", "ab")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: 'ab' matches several experiments (2):")
    lines = proc.stderr.splitlines()
    assert any(line.split()[:3] == [alpha, "alpha", "created"] for line in lines)
    assert any(line.split()[:3] == [beta, "beta", "created"] for line in lines)
    assert "random suffix" in proc.stderr and "latest" in proc.stderr
    with pytest.raises(run.ExperimentNotFound) as caught:
        run.Experiment.from_id("ab")
    assert sorted(caught.value.candidates) == sorted([alpha, beta])  # type: ignore[attr-defined]
    by_title = cli("logs", "a")  # a prefix of one id and of the other's suffix
    assert by_title.returncode == 2 and alpha in by_title.stderr and beta in by_title.stderr


def test_an_exact_id_wins_over_longer_ones(cli, monkeypatch):
    short = _record("x", "0001", monkeypatch)
    _record(short, "0002", monkeypatch)  # its id starts with the whole first id
    assert json.loads(cli("status", short, "--json").stdout)["id"] == short


def test_an_unknown_id_names_the_closest(cli, monkeypatch):
    exp_id = _record("mnist", "6a6e", monkeypatch)
    proc = cli("status", "6a6f")
    assert proc.returncode == 2
    assert "no experiment with id '6a6f'" in proc.stderr and exp_id in proc.stderr


def test_latest_and_latest_tilde_n_everywhere_an_id_is_taken(cli):
    older = _run([run.Task("say", run.Script(inline="echo older"))], "first")
    newer = _run([run.Task("say", run.Script(inline="echo newer"))], "second")
    assert json.loads(cli("status", "latest", "--json").stdout)["id"] == newer
    assert json.loads(cli("status", "latest~1", "--json").stdout)["id"] == older
    assert json.loads(cli("status", "latest~0", "--json").stdout)["id"] == newer
    assert cli("logs", "latest").stdout == "newer\n"
    assert cli("logs", "latest~1", "say").stdout == "older\n"
    assert cli("monitor", "latest~1", "--once").stdout.startswith(f"experiment {older} ")
    listed = [e["id"] for e in json.loads(cli("list", "--json").stdout)]
    assert listed == [newer, older]  # latest~N is row N of `list`
    assert run.Experiment.from_id("latest").id == newer
    assert list(run.Experiment.from_id("latest~1").logs("say")) == ["older"]
    too_far = cli("status", "latest~2")
    assert too_far.returncode == 2 and "latest~1" in too_far.stderr
    bad = cli("status", "latest~x")
    assert bad.returncode == 2 and "how many experiments back" in bad.stderr


def test_latest_on_an_empty_store_says_there_are_none(cli, steadyrun_home):
    for command in ("status", "logs"):
        proc = cli(command, "latest")
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: 'latest': there are no experiments")
        assert "Traceback" not in proc.stderr
    assert not steadyrun_home.exists()  # read commands never create a store
    Store().close()  # an empty store that exists
    proc = cli("status", "latest")
    assert proc.returncode == 2 and "no experiments in the store" in proc.stderr
    with pytest.raises(run.ExperimentNotFound, match="no experiments"):
        run.Experiment.from_id("latest")


def test_latest_works_on_a_read_only_store(monkeypatch):
    exp_id = _record("mnist", "6a6e", monkeypatch)
    store = Store(readonly=True)
    try:
        assert store.resolve_id("latest") == exp_id
        assert store.resolve_id("6a") == exp_id
    finally:
        store.close()


def test_blank_ids_are_refused(cli):
    proc = cli("status", " ")
    assert proc.returncode == 2 and "empty" in proc.stderr


# --- filters and empty outputs ----------------------------------------------------------


def test_a_misspelt_state_is_refused_with_the_closest(cli):
    proc = cli("list", "--state", "runing")
    assert proc.returncode == 2
    assert "did you mean 'running'?" in proc.stderr
    assert "created, running, succeeded, failed, cancelled" in proc.stderr
    assert proc.stdout == ""


def test_an_empty_list_says_why_on_stderr(cli, monkeypatch):
    empty = cli("list")
    assert empty.returncode == 0 and empty.stdout == ""
    assert "no experiments" in empty.stderr and "does not exist" in empty.stderr
    _record("mnist", "6a6e", monkeypatch)
    none = cli("list", "--state", "failed")
    assert none.returncode == 0 and none.stdout == ""
    assert "no experiments matching state=failed" in none.stderr
    as_json = cli("list", "--title", "other", "--json")
    assert json.loads(as_json.stdout) == [] and "title=other" in as_json.stderr


def test_logs_of_a_task_that_never_ran_say_why(cli):
    exp_id = _run([run.Task("prepare", run.Script(inline="echo preparing; exit 3")),
                   run.Task("train", run.Script(inline="echo training"),
                            depends_on=["prepare"]),
                   run.Task("silent", run.Script(inline="true"))], "dag")
    skipped = cli("logs", exp_id, "train")
    assert skipped.returncode == 0 and skipped.stdout == ""
    assert "task 'train' has no output: it was skipped" in skipped.stderr
    assert "prepare" in skipped.stderr  # the reason: its dependency failed
    missing = cli("logs", exp_id, "prepare", "--attempt", "5")
    assert missing.returncode == 2
    assert "has no attempt 5; its attempts: 1" in missing.stderr
    never = cli("logs", exp_id, "train", "--attempt", "1")
    assert never.returncode == 2 and "skipped" in never.stderr
    typo = cli("logs", exp_id, "trian")
    assert typo.returncode == 2 and "did you mean 'train'?" in typo.stderr
    silent = cli("logs", exp_id, "silent")
    assert silent.returncode == 0 and silent.stdout == "" and "(no output)" in silent.stderr
    every = cli("logs", exp_id)
    assert every.returncode == 0 and "[prepare] preparing" in every.stdout
    assert "'train' has no output" in every.stderr
    assert "task 'silent', attempt 1: (no output)" in every.stderr


# --- closed pipes -------------------------------------------------------------------------


def _closed_early(cli, args: list[str], read: int) -> subprocess.Popen:
    """Run the command with stdout to a pipe whose reader reads ``read`` bytes (or
    nothing) and closes it, as ``| head`` does; return the finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "steadyrun", *args], env=cli.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    if read:
        assert proc.stdout.read(read)
    proc.stdout.close()
    proc.wait(timeout=60)
    return proc


def test_a_closed_pipe_exits_0_quietly(cli):
    exp_id = _run([run.Task("count", run.Script(inline="seq 1 400000"))], "count")
    for args, read in ((["logs", exp_id], 8), (["logs", "latest", "count"], 1),
                       (["list"], 0), (["list", "--json"], 0),
                       (["status", exp_id, "--json"], 0), (["status", "latest"], 0)):
        proc = _closed_early(cli, args, read)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert (proc.returncode, stderr) == (0, ""), args


def test_errors_keep_their_exit_codes(cli):
    assert cli("status", "nope").returncode == 2  # SteadyrunError
    assert cli("list", "--limit", "x").returncode == 2  # click's usage error
    assert cli("--help").returncode == 0
    failed = cli("run", "--quiet", "--", "bash", "-c", "exit 3")
    assert failed.returncode == 1
