"""Every rank of a gang on a real two-node Slurm cluster, as the store, the logs and the
results show it: samples of both nodes imported from the shared job folder while the
attempt runs, ``logs --rank``, and how each rank ended."""

from __future__ import annotations

import threading
import time

import pytest

import gang_payloads
import steadyrun as run
from steadyrun.executors.slurm.executor import SlurmExecutor
from steadyrun.launchers import SAMPLE_INTERVAL_ENV
from steadyrun.observe.logs import iter_logs
from steadyrun.store.db import Store

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(240)]


def test_both_nodes_ranks_are_sampled_logged_and_reported(slurm_cluster_2nodes, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_cluster_2nodes)
    monkeypatch.setenv(SAMPLE_INTERVAL_ENV, "0.3")
    ex = SlurmExecutor(nodes=2, poll_interval=0.2, time="00:10:00")
    exp = run.Experiment("slurm-ranks", executor=ex, progress=False)
    exp.add(run.Partial(gang_payloads.chatty_rank, 6.0), name="train")
    seen_live: list[set[int]] = []
    looks: list[tuple[float, str, int]] = []

    def watch_store() -> None:  # ranked samples in the store before the attempt ends
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not seen_live:
            store = Store(readonly=True)  # opened anew: the store may not exist yet
            try:
                ids = [e.id for e in store.list_experiments(title="slurm-ranks")]
                attempts = store.attempts(ids[0], "train") if ids else []
                if attempts:
                    rows = store.samples(ids[0], "train")
                    looks.append((attempts[-1].state, len(rows)))
                    if attempts[-1].state == "running" and {s.rank for s in rows} >= {0, 1}:
                        seen_live.append({0, 1})
            finally:
                store.close()
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_store, daemon=True)
    watcher.start()
    result = exp.run(tail_logs=False)["train"]
    watcher.join(5)
    assert result.ok and result.value == 0
    assert seen_live, f"no ranked sample of both ranks reached the store while it ran: {looks}"
    assert [(r.rank, r.node_rank, r.kind) for r in result.ranks] == [(0, 0, None),
                                                                      (1, 1, None)]
    assert [r.node for r in result.ranks] == ["n1", "n2"]
    store = Store(readonly=True)
    rows = store.samples(exp.id, "train")
    assert {r.rank for r in rows} == {None, 0, 1} and all(r.host for r in rows)
    assert result.peak_rss is not None and result.peak_rss >= 40 << 20
    assert list(iter_logs(store, exp.id, "train", rank=1, stream="stdout")) == [
        "rank 1 says hi", "rank 1 done"]
    every = list(iter_logs(store, exp.id, "train", stream="stdout"))
    assert every[:2] == ["[rank 0] rank 0 says hi", "[rank 0] rank 0 done"]
    assert every[2:4] == ["[rank 1] rank 1 says hi", "[rank 1] rank 1 done"]
