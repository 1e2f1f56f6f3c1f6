"""Crash recovery of gangs: a controller killed with SIGKILL while a gang runs, then
resumed. The resume stops every rank of the old attempt before the new one starts, so
each rank's side effect happens once, from the new attempt only, and no rank outlives
the run."""

from __future__ import annotations

import pytest

import crash_payloads as cp
import steadyrun as run
from crash_helpers import (
    Reaper,
    Release,
    attempts,
    detach,
    effect_counts,
    has_attempt,
    kill_controller,
    resume,
    started_pids,
    unique_title,
    wait_while_driven,
)
from waiting import wait_for

pytestmark = [pytest.mark.crash, pytest.mark.timeout(180)]


@pytest.fixture
def reaper():
    r = Reaper()
    yield r
    r.cleanup()


@pytest.mark.parametrize("launcher", [None, "torchrun"])
def test_every_rank_of_a_killed_controllers_gang_is_stopped_before_resume_reruns_it(
        tmp_path, reaper, launcher):
    if launcher == "torchrun":
        pytest.importorskip("torch")
    effects, starts, gate = tmp_path / "effects", tmp_path / "starts", tmp_path / "gate"
    payload = run.Partial(cp.effect, str(effects), "rank", starts=str(starts), gate=str(gate))
    exp = run.Experiment(
        [run.Task("t", payload, resources=run.Resources(cpus=0.5))],
        title=unique_title("gang-crash"), progress=False,
        executor=run.LocalExecutor(ntasks_per_node=2, launcher=launcher))
    detach(exp, reaper)
    wait_while_driven(exp.id, lambda: len(cp.read_lines(starts)) == 2,
                      "both ranks of the first attempt to start", timeout=60)
    old_ranks = reaper.track(started_pids(starts))
    kill_controller(exp.id, reaper)

    with Release(gate, lambda: has_attempt(exp.id, "t", 2)):
        result = resume(exp.id)
    assert result.ok, result
    reaper.assert_gone(old_ranks, "the ranks of the killed controller's gang")
    new_ranks = [p for p in started_pids(starts) if p not in old_ranks]
    assert len(new_ranks) == 2
    wait_for(lambda: effect_counts(effects)["rank"] == 2, 10, "the two side effects")
    effects_by = [int(f[1]) for f in cp.read_lines(effects)]
    assert sorted(effects_by) == sorted(new_ranks), "a rank of the old attempt ran on"
    assert [a.number for a in attempts(exp.id)] == [1, 2]
    reaper.assert_no_leftovers("after the resume")
