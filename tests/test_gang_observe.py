"""Every rank of a gang attempt, as the store, the report, the logs and the results show it.

The gang attempt folders here are made by hand in a real store experiment, laid out as
the node agents leave them (:mod:`steadyrun.launchers`): ``gang.json``, ``ranks/<r>/``
with each rank's logs, ``ranks.json``, ``samples/node-<k>.jsonl``.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from steadyrun.attempt.logread import gang_ranks
from steadyrun.engine.ranksamples import RankSampleReader
from steadyrun.engine.watch import Watch, import_remote_samples
from steadyrun.errors import SteadyrunError
from steadyrun.launchers import Gang, write_gang
from steadyrun.observe import report
from steadyrun.observe.logs import iter_logs
from steadyrun.observe.tail import LogTail
from steadyrun.store.db import Store
from steadyrun.store.results import RankOutcome, experiment_result


def _line(**fields) -> str:
    base = {"cpu_percent": 50.0, "processes": 1, "read_bytes": 0, "write_bytes": 0,
            "gpu_memory": None, "gpu_utilization": None}
    return json.dumps({**base, **fields}) + "\n"


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


# node 0 has whole-tree rows: its peak is theirs (3000); node 1 has only its rank's rows
# (peak 900): the gang's peak RSS is 3900. CPU seconds: node 0's tree 5.0 + rank 1's 2.0.
NODE0 = (_line(time=1.0, rank=None, host="h0", rss=1000, cpu_seconds=1.0)
         + _line(time=1.0, rank=0, host="h0", rss=800, cpu_seconds=0.8)
         + _line(time=2.0, rank=None, host="h0", rss=3000, cpu_seconds=5.0)
         + _line(time=2.0, rank=0, host="h0", rss=2500, cpu_seconds=4.5))
NODE1 = (_line(time=1.1, rank=1, host="h1", rss=700, cpu_seconds=1.0)
         + _line(time=2.1, rank=1, host="h1", rss=900, cpu_seconds=2.0))


class _GangExecutor:
    """What the engine's Watch asks of an executor: its gang and local pids."""

    gang = Gang(nodes=2, ntasks_per_node=1)

    def pids(self) -> dict[str, int]:
        return {}


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


def _experiment(store: Store, state: str = "succeeded") -> tuple[str, Path, Path]:
    """An experiment with a gang task ``train`` (attempt 1: two ranks on two hosts) and
    a plain task ``plain``; returns (id, the gang attempt's folder, the plain one's)."""
    exp = store.create_experiment("gangs", [{"name": "train"}, {"name": "plain"}],
                                  {"type": "LocalExecutor"})
    now = time.time()
    gang_dir = store.insert_attempt(exp, "train", 1, state="running", started_at=now)
    plain_dir = store.insert_attempt(exp, "plain", 1, state="running", started_at=now)
    write_gang(gang_dir, Gang(nodes=2, ntasks_per_node=1))
    for rank in (0, 1):
        _append(gang_dir / "ranks" / str(rank) / "stdout.log",
                f"hello from {rank}\nstep 1 of {rank}\n")
        _append(gang_dir / "ranks" / str(rank) / "stderr.log", f"warning {rank}\n")
    _append(gang_dir / "stdout.log", "agent: starting 2 ranks\n")
    _append(plain_dir / "stdout.log", "plain output\n")
    if state != "running":
        _finish(store, exp, gang_dir, plain_dir, state)
    return exp, gang_dir, plain_dir


def _finish(store: Store, exp: str, gang_dir: Path, plain_dir: Path, state: str) -> None:
    ranks = [{"rank": 0, "node_rank": 0, "local_rank": 0, "host": "h0", "node": "n0",
              "pid": 11, "kind": None, "exit_code": 0, "error_type": None, "message": None},
             {"rank": 1, "node_rank": 1, "local_rank": 0, "host": "h1", "node": "n1",
              "pid": 12, "kind": "error", "exit_code": 3, "error_type": "ValueError",
              "message": "bad batch"}]
    (gang_dir / "ranks.json").write_text(json.dumps(ranks))
    for task in ("train", "plain"):
        store.update_attempt(exp, task, 1, state=state, ended_at=time.time())
        store.update_task(exp, task, state=state, attempts=1)
    store.update_experiment(exp, state=state)


# --- samples ---------------------------------------------------------------------------


def test_samples_of_every_rank_are_imported_as_they_come_and_give_the_peaks(store):
    exp, gang_dir, _ = _experiment(store, "running")
    ex = _GangExecutor()
    watch = Watch(store, exp, [ex], interval=60.0)  # started below: its own threads too
    watch.track(f"{exp}/train/1", "train", 1, attempt_dir=gang_dir, executor=ex)
    watch.track(f"{exp}/plain/1", "plain", 1, executor=object())  # type: ignore[arg-type]
    node0, node1 = gang_dir / "samples" / "node-0.jsonl", gang_dir / "samples" / "node-1.jsonl"
    first0, rest0 = NODE0.split("\n", 2)[:2], NODE0.split("\n", 2)[2]
    _append(node0, "\n".join(first0) + "\n")
    _append(node1, NODE1.split("\n")[0] + "\n" + NODE1.split("\n")[1][:20])  # half a line
    assert watch.import_rank_samples() == 3
    rows = store.samples(exp, "train")
    assert [(r.rank, r.host, r.rss) for r in rows] == [
        (None, "h0", 1000), (0, "h0", 800), (1, "h1", 700)]
    assert watch.import_rank_samples() == 0  # nothing new, the half line still unread
    _append(node0, rest0)
    _append(node1, NODE1.split("\n")[1][20:] + "\n")
    # the live figures of the gang: each node's newest summed
    watch.import_rank_samples()
    latest = watch.latest()[f"{exp}/train/1"]
    assert latest.rss == 3000 + 900
    peaks = watch.settle(f"{exp}/train/1")
    assert peaks == {"peak_rss": 3900, "peak_gpu_memory": None, "cpu_seconds": 7.0}
    rows = store.samples(exp, "train")
    assert len(rows) == 6 and sorted({r.rank for r in rows if r.rank is not None}) == [0, 1]
    assert store.samples(exp, "plain") == []
    total = store.latest_sample(exp, "train", 1)
    assert total.rss == 3000 + 900 and total.rank is None and total.host is None
    watch.stop()


def test_the_watch_thread_imports_while_the_attempt_runs(store, monkeypatch):
    import steadyrun.engine.watch as watch_module

    monkeypatch.setattr(watch_module, "RANK_POLL", 0.05)
    exp, gang_dir, _ = _experiment(store, "running")
    ex = _GangExecutor()
    watch = Watch(store, exp, [ex], interval=60.0)
    watch.start()
    try:
        watch.track(f"{exp}/train/1", "train", 1, attempt_dir=gang_dir, executor=ex)
        _append(gang_dir / "samples" / "node-1.jsonl", NODE1)
        deadline = time.monotonic() + 10
        while len(store.samples(exp, "train")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.rank for r in store.samples(exp, "train")] == [1, 1]
    finally:
        watch.stop()


def test_without_a_watch_the_samples_are_imported_when_the_attempt_ends(store):
    exp, gang_dir, _ = _experiment(store)
    _append(gang_dir / "samples" / "node-0.jsonl", NODE0)
    _append(gang_dir / "samples" / "node-1.jsonl", NODE1)
    peaks = import_remote_samples(store, exp, "train", 1, gang_dir)
    assert peaks["peak_rss"] == 3900 and peaks["cpu_seconds"] == 7.0
    assert len(store.samples(exp, "train")) == 6


def test_ranks_summed_per_sweep_when_no_whole_tree_was_sampled(tmp_path):
    lines = (_line(time=1.0, rank=0, host="h", rss=100) + _line(time=1.0, rank=1, host="h",
                                                               rss=200)
             + _line(time=2.0, rank=0, host="h", rss=400) + _line(time=2.0, rank=1, host="h",
                                                                 rss=50)
             + "not json\n")
    _append(tmp_path / "samples" / "node-0.jsonl", lines)
    reader = RankSampleReader(tmp_path, "t", 1)
    assert len(reader.read_new()) == 4  # the bad line is skipped
    assert reader.peaks()["peak_rss"] == 450


def test_an_older_store_gains_rank_and_host(store, steadyrun_home):
    exp, _, _ = _experiment(store)
    store.add_samples(exp, [("plain", 1, 1.0, 10.0, 100, 1, 0, 0, None, None)])
    store.close()
    db = sqlite3.connect(steadyrun_home / "steadyrun.db")
    db.execute("ALTER TABLE samples DROP COLUMN rank")
    db.execute("ALTER TABLE samples DROP COLUMN host")
    db.commit()
    db.close()
    old = Store(readonly=True)  # read-only: never changed, reads None
    assert [(r.rank, r.host) for r in old.samples(exp)] == [(None, None)]
    old.close()
    upgraded = Store()
    assert [(r.rank, r.host, r.rss) for r in upgraded.samples(exp)] == [(None, None, 100)]
    upgraded.close()


# --- results ---------------------------------------------------------------------------


def test_task_result_ranks(store):
    exp, _, _ = _experiment(store)
    results = experiment_result(store, exp)
    ranks = results["train"].ranks
    assert ranks == [
        RankOutcome(rank=0, node_rank=0, local_rank=0, host="h0", node="n0", pid=11,
                    exit_code=0),
        RankOutcome(rank=1, node_rank=1, local_rank=0, host="h1", node="n1", pid=12,
                    kind="error", exit_code=3, error_type="ValueError", message="bad batch")]
    assert ranks[0].ok and not ranks[1].ok
    assert results["train"].to_dict()["ranks"][1]["error_type"] == "ValueError"
    assert results["plain"].ranks == [] and results["plain"].to_dict()["ranks"] == []


# --- report ----------------------------------------------------------------------------


def test_report_draws_and_lists_every_rank(store):
    pytest.importorskip("matplotlib")
    exp, gang_dir, _ = _experiment(store)
    _append(gang_dir / "samples" / "node-0.jsonl", NODE0)
    _append(gang_dir / "samples" / "node-1.jsonl", NODE1)
    import_remote_samples(store, exp, "train", 1, gang_dir)
    store.add_samples(exp, [("plain", 1, 1.0, 10.0, 100, 1, 0, 0, None, None)])
    series = report.sample_series(store.samples(exp))
    assert sorted(series, key=str) == sorted([("plain", 1, None, None), ("train", 1, 0, "h0"),
                                              ("train", 1, 1, "h1")], key=str)
    assert report.series_label("train", 1, "h1") == "train r1@h1"
    paths = report.write_report(store, exp)
    page = paths["html"].read_text()
    assert "<h2>Ranks</h2>" in page
    assert "<td>h1</td>" in page and "bad batch" in page
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


# --- logs ------------------------------------------------------------------------------


def test_logs_of_every_rank_then_the_launcher(store):
    exp, _, _ = _experiment(store)
    assert list(iter_logs(store, exp, "train")) == [
        "[rank 0] hello from 0", "[rank 0] step 1 of 0", "[rank 0] warning 0",
        "[rank 1] hello from 1", "[rank 1] step 1 of 1", "[rank 1] warning 1",
        "[launcher] agent: starting 2 ranks"]
    assert list(iter_logs(store, exp, "train", rank=1, stream="stdout")) == [
        "hello from 1", "step 1 of 1"]
    assert "[train] [rank 1] hello from 1" in list(iter_logs(store, exp))
    assert "[plain] plain output" in list(iter_logs(store, exp))


def test_logs_for_a_rank_that_is_not_there_name_the_ranks(store):
    exp, _, _ = _experiment(store)
    with pytest.raises(SteadyrunError, match=r"no rank 5: task 'train', attempt 1 has "
                                             r"ranks 0, 1"):
        list(iter_logs(store, exp, "train", rank=5))
    with pytest.raises(SteadyrunError, match="one process, not a gang"):
        list(iter_logs(store, exp, "plain", rank=0))


def test_follow_interleaves_the_ranks_as_they_write(store):
    exp, gang_dir, plain_dir = _experiment(store, "running")
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(
        iter_logs(store, exp, "train", follow=True, poll=0.02, stream="stdout")))
    reader.start()
    for i in range(3):
        for rank in (0, 1):
            _append(gang_dir / "ranks" / str(rank) / "stdout.log", f"live {i} of {rank}\n")
        time.sleep(0.3)
    _finish(store, exp, gang_dir, plain_dir, "succeeded")
    reader.join(10)
    assert not reader.is_alive()
    live = [line for line in got if "live" in line]
    # interleaved as written: rank 1's first line comes before rank 0's last
    assert live.index("[rank 1] live 0 of 1") < live.index("[rank 0] live 2 of 0"), live
    assert len(live) == 6 and "[launcher] agent: starting 2 ranks" in got


def test_cli_logs_rank(store, subprocess_env, steadyrun_home):
    exp, _, _ = _experiment(store)
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    one = cli("logs", exp, "train", "--rank", "1")
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines() == ["hello from 1", "step 1 of 1", "warning 1"]
    every = cli("logs", exp, "train")
    assert every.stdout.splitlines()[0] == "[rank 0] hello from 0"
    assert every.stdout.splitlines()[-1] == "[launcher] agent: starting 2 ranks"
    bad = cli("logs", exp, "train", "--rank", "2")
    assert bad.returncode == 2 and "ranks 0, 1" in bad.stderr and not bad.stdout
    plain = cli("logs", exp, "plain", "--rank", "0")
    assert plain.returncode == 2 and "not a gang" in plain.stderr


def test_live_tail_prefixes_each_rank(tmp_path):
    folder = tmp_path / "attempt"
    folder.mkdir()
    write_gang(folder, Gang(nodes=1, ntasks_per_node=2))
    out, err = io.StringIO(), io.StringIO()
    tail = LogTail(["train"], out=out, err=err, color=False, interval=0.02).start()
    tail.follow("train", 1, folder)
    for rank in (0, 1):
        _append(folder / "ranks" / str(rank) / "stdout.log", f"epoch 1 of {rank}\n")
    _append(folder / "ranks" / "1" / "stderr.log", "careful\n")
    _append(folder / "stdout.log", "agent up\n")
    time.sleep(0.3)
    tail.end("train")
    tail.stop()
    assert out.getvalue().splitlines() == ["train | [rank 0] epoch 1 of 0",
                                           "train | [rank 1] epoch 1 of 1",
                                           "train | [launcher] agent up"]
    assert err.getvalue().splitlines() == ["train ! [rank 1] careful"]


def test_gang_ranks(tmp_path):
    assert gang_ranks(tmp_path) is None
    write_gang(tmp_path, Gang(nodes=2, ntasks_per_node=2))
    os.makedirs(tmp_path / "ranks" / "0")
    assert gang_ranks(tmp_path) == [0, 1, 2, 3]


# --- a real local gang -----------------------------------------------------------------


def test_a_local_gang_shows_every_rank_in_store_logs_and_results(monkeypatch, capsys):
    import gang_payloads
    import steadyrun as run
    from steadyrun.executors.local.executor import LocalExecutor
    from steadyrun.launchers import SAMPLE_INTERVAL_ENV

    monkeypatch.setenv(SAMPLE_INTERVAL_ENV, "0.2")
    exp = run.Experiment("gang-e2e", executor=LocalExecutor(ntasks_per_node=2),
                         progress=False)
    exp.add(run.Partial(gang_payloads.chatty_rank, 2.0), name="train",
            resources=run.Resources(cpus=0.5))
    result = exp.run(tail_logs=True)["train"]
    assert result.ok and result.value == 0
    shown = capsys.readouterr().out
    assert "train | [rank 1] rank 1 says hi" in shown, shown
    assert [(r.rank, r.local_rank, r.kind) for r in result.ranks] == [(0, 0, None),
                                                                      (1, 1, None)]
    store = Store(readonly=True)
    rows = store.samples(exp.id, "train")
    ranks = {r.rank for r in rows}
    assert {0, 1} <= ranks, ranks
    assert all(r.host for r in rows)
    assert result.peak_rss is not None and result.peak_rss >= 40 << 20
    assert list(iter_logs(store, exp.id, "train", rank=1, stream="stdout")) == [
        "rank 1 says hi", "rank 1 done"]
    every = list(iter_logs(store, exp.id, "train"))
    assert every.index("[rank 0] rank 0 says hi") < every.index("[rank 1] rank 1 says hi")
    assert "[rank 1] rank 1 warns" in every


def test_a_gangs_enforced_request_counts_every_rank(store):
    from types import SimpleNamespace

    from steadyrun.task import Resources

    exp, gang_dir, _ = _experiment(store, "running")
    ex = _GangExecutor()
    watch = Watch(store, exp, [ex], interval=60.0)
    watch.track(f"{exp}/train/1", "train", 1, attempt_dir=gang_dir, executor=ex)
    watch.track(f"{exp}/plain/1", "plain", 1)
    per_rank = Resources(memory="100MiB", enforce=True)
    running = {f"{exp}/train/1": SimpleNamespace(resources=per_rank),
               f"{exp}/plain/1": SimpleNamespace(resources=per_rank)}
    assert watch._sampled_requests(running) == {f"{exp}/train/1": 200 << 20,
                                                f"{exp}/plain/1": 100 << 20}
    watch.stop()
