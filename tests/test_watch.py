"""What the engine watches while tasks run: peaks, samples, memory enforcement and
out-of-memory evidence, with real processes and real memory."""

from __future__ import annotations

import pytest

import payloads
import steadyrun as run
from steadyrun.store.db import Store

pytestmark = pytest.mark.timeout(120)
MiB = 2**20


def test_peak_rss_and_samples_of_a_task_that_allocates_300_mib():
    exp = run.Experiment([run.Task("alloc", run.Partial(payloads.allocate, 300, hold=2.0))],
                         monitor_interval=0.2)
    result = exp.run()
    peak = result["alloc"].peak_rss
    assert peak is not None and 300 * MiB <= peak <= 300 * MiB * 1.1 + 40 * MiB, peak
    assert result["alloc"].cpu_seconds is not None
    store = Store()
    attempt, = store.attempts(result.id, "alloc")
    assert attempt.peak_rss == peak
    samples = store.samples(result.id, "alloc")
    assert len(samples) >= 5
    assert max(s.rss for s in samples) == peak


def test_enforced_memory_request_stops_the_task_as_oom_then_degrade_halves_it():
    task = run.Task(
        "train", run.Partial(payloads.allocate, batch_size=400, hold=2.0),
        resources=run.Resources(memory="300MiB", enforce=True),
        degrade=run.Degrade(param="batch_size", factor=0.5, minimum=1),
        retry=run.Retry(max_attempts=3, initial_delay=0.1, jitter=0))
    exp = run.Experiment([task], title="enforce", monitor_interval=0.2)
    result = exp.run()
    assert result["train"].value == 200 and result["train"].attempts == 2
    store = Store()
    first, second = store.attempts(result.id, "train")
    assert first.state == "failed" and first.kind == "oom"
    assert second.state == "succeeded" and second.changes == {
        "before": 2, "batch_size": [400, 200]}
    events = [e.kind for e in store.events(result.id)]
    assert "memory_enforced" in events and "degraded" in events
    status = run.Experiment.from_id(result.id).status()
    assert status.tasks[0].changes == [{"before": 2, "batch_size": [400, 200]}]


def test_degradation_that_reaches_its_minimum_says_what_was_tried():
    task = run.Task(
        "train", run.Partial(payloads.allocate, batch_size=400, hold=1.5),
        resources=run.Resources(memory="100MiB", enforce=True),
        degrade=run.Degrade(param="batch_size", factor=0.5, minimum=200),
        retry=run.Retry(max_attempts=5, initial_delay=0.1, jitter=0))
    result = run.Experiment([task], monitor_interval=0.2).run(raise_on_failure=False)
    failed = result["train"]
    assert failed.state == "failed" and failed.kind == "oom" and failed.attempts == 2
    assert "batch_size: 400 -> 200" in failed.error.message
    assert "reached zero" not in str(failed.error)


def test_sigkill_near_the_memory_request_is_classified_oom():
    task = run.Task("big", run.Partial(payloads.allocate, 280, hold=1.2, then_kill=True),
                    resources=run.Resources(memory="300MiB"),
                    retry=run.Retry(max_attempts=1))
    result = run.Experiment([task], monitor_interval=0.2).run(raise_on_failure=False)
    assert result["big"].kind == "oom"
    assert "near its memory request" in result["big"].error.message


def test_sigkill_far_from_any_limit_stays_lost():
    task = run.Task("small", run.Partial(payloads.allocate, 10, hold=0.6, then_kill=True),
                    resources=run.Resources(memory="1GiB"), retry=run.Retry(max_attempts=1))
    result = run.Experiment([task], monitor_interval=0.2).run(raise_on_failure=False)
    assert result["small"].kind == "lost"


def test_memory_error_and_a_real_torch_allocation_failure_are_both_oom():
    pytest.importorskip("torch")
    tasks = [run.Task("torch", run.Partial(payloads.torch_allocate, 2**50)),
             run.Task("python", run.Partial(payloads.out_of_memory))]
    result = run.Experiment(tasks).run(raise_on_failure=False)
    assert result["torch"].kind == "oom" and result["python"].kind == "oom"
    assert "allocate" in result["torch"].error.remote_traceback
