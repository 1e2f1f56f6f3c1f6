"""The engine's decisions as plain functions: no store, no clock, no executor."""

from __future__ import annotations

import pytest

from steadyrun.engine.decisions import Action, Verdict, classify, next_step
from steadyrun.states import AttemptState, FailureKind
from steadyrun.task import DEFAULT_RETRY, Degrade, Retry

K = FailureKind


@pytest.mark.parametrize(("reported", "kw", "expected"), [
    (None, {}, None),
    (None, {"stopping": K.TIMEOUT}, None),  # it finished before the stop reached it
    ("error", {}, K.ERROR),
    ("exit 3?", {}, K.ERROR),  # a kind this version does not know is still a failure
    ("lost", {"stopping": K.TIMEOUT}, K.TIMEOUT),  # the kill looked lost; we timed it out
    ("error", {"stopping": K.CANCELLED}, K.CANCELLED),
    ("lost", {"stopping": K.OOM}, K.OOM),  # enforced memory limit
    ("cancelled", {"early": True, "dependency_failed": True}, K.DEPENDENCY),
    ("cancelled", {"early": True, "dependency_failed": True, "stopping": K.DEPENDENCY},
     K.DEPENDENCY),
    ("cancelled", {"early": True, "dependency_failed": True, "stopping": K.CANCELLED},
     K.CANCELLED),  # the user's cancel wins over the dependency
    ("error", {"early": True, "dependency_failed": False}, K.ERROR),
    ("error", {"early": False, "dependency_failed": True}, K.ERROR),
    ("lost", {"oom_evidence": "near its memory request"}, K.OOM),
    ("error", {"oom_evidence": "near its memory request"}, K.ERROR),
    ("lost", {"stopping": K.CANCELLED, "oom_evidence": "near"}, K.CANCELLED),
])
def test_classify_names_the_final_kind(reported, kw, expected):
    assert classify(reported, **kw).kind == expected


def test_oom_evidence_becomes_the_message():
    verdict = classify("lost", oom_evidence="killed by SIGKILL near its memory request")
    assert verdict == Verdict(K.OOM, "killed by SIGKILL near its memory request")
    assert classify("error").message is None


@pytest.mark.parametrize(("kind", "state"), [
    (None, AttemptState.SUCCEEDED), (K.ERROR, AttemptState.FAILED),
    (K.TIMEOUT, AttemptState.FAILED), (K.LOST, AttemptState.FAILED),
    (K.PREEMPTED, AttemptState.FAILED), (K.CANCELLED, AttemptState.CANCELLED),
    (K.DEPENDENCY, AttemptState.CANCELLED)])
def test_the_attempt_state_follows_the_kind(kind, state):
    assert Verdict(kind).attempt_state is state


RETRY3 = Retry(max_attempts=3, on=("error", "timeout"))


@pytest.mark.parametrize(("kind", "made", "expected"), [
    (K.ERROR, 1, Action.RETRY), (K.ERROR, 2, Action.RETRY), (K.ERROR, 3, Action.FAIL),
    (K.TIMEOUT, 1, Action.RETRY), (K.LOST, 1, Action.FAIL), (K.OOM, 1, Action.FAIL),
])
def test_the_policy_retries_its_kinds_while_attempts_are_left(kind, made, expected):
    step = next_step(kind, policy=RETRY3, attempts_made=made)
    assert step.action is expected and step.counted and not step.degrade
    assert step.failures == made  # sets the backoff of the next attempt


def test_default_policy_retries_lost_once_and_never_errors():
    assert next_step(K.LOST, policy=DEFAULT_RETRY, attempts_made=1).action is Action.RETRY
    assert next_step(K.LOST, policy=DEFAULT_RETRY, attempts_made=2).action is Action.FAIL
    assert next_step(K.ERROR, policy=DEFAULT_RETRY, attempts_made=1).action is Action.FAIL


def test_oom_with_a_degrade_is_retried_degraded_even_when_the_policy_leaves_it_out():
    degrade = Degrade(param="batch_size")
    step = next_step(K.OOM, policy=RETRY3, attempts_made=1, degrade=degrade)
    assert step.action is Action.RETRY and step.degrade
    assert next_step(K.OOM, policy=RETRY3, attempts_made=3,
                     degrade=degrade).action is Action.FAIL
    # a degrade only concerns out-of-memory failures
    step = next_step(K.ERROR, policy=RETRY3, attempts_made=1, degrade=degrade)
    assert step.action is Action.RETRY and not step.degrade


def test_nothing_is_retried_while_cancelling():
    for kind in (K.ERROR, K.OOM, K.PREEMPTED):
        step = next_step(kind, policy=RETRY3, attempts_made=1,
                         degrade=Degrade(param="x"), cancelling=True)
        assert step.action is Action.FAIL and not step.degrade


def test_preempted_is_retried_without_counting_even_past_max_attempts():
    step = next_step(K.PREEMPTED, policy=Retry(max_attempts=1), attempts_made=1)
    assert step.action is Action.RETRY and not step.counted and not step.backoff


@pytest.mark.parametrize(("kind", "action", "counted"), [
    (None, Action.SUCCEED, True), (K.CANCELLED, Action.CANCEL, True),
    (K.DEPENDENCY, Action.REQUEUE, False)])
def test_success_cancel_and_withdrawal(kind, action, counted):
    step = next_step(kind, policy=RETRY3, attempts_made=3, cancelling=kind is K.CANCELLED)
    assert step.action is action and step.counted is counted
