"""How an attempt ended -> its Outcome: the one set of rules every executor uses."""

from __future__ import annotations

import signal

from steadyrun.attempt.outcome import outcome_of, shell_status, split_status
from steadyrun.attempt.worker import EXIT_CONTROLLER_GONE
from steadyrun.executors.base import ErrorInfo


def test_status_split_and_shell_form():
    assert split_status(0) == (0, None)
    assert split_status(3) == (3, None)
    assert split_status(-9) == (None, 9)
    assert shell_status(None, 9) == 137 and shell_status(4, None) == 4


def test_success_with_and_without_value():
    out = outcome_of("a", exit_code=0, has_result=True, pid=5)
    assert out.ok and not out.has_value and out.exit_code == 0 and out.pid == 5
    out = outcome_of("a", value={"x": 1})
    assert out.ok and out.has_value and out.value == {"x": 1}


def test_exit_zero_without_a_result_is_an_error():
    out = outcome_of("a", exit_code=0, has_result=False)
    assert out.kind == "error" and out.error is not None


def test_error_record_decides_error_or_oom_and_keeps_its_exit_code():
    out = outcome_of("a", exit_code=1, error={"type": "ValueError", "message": "boom",
                                              "oom": False, "exit_code": 1})
    assert (out.kind, out.exit_code, out.message) == ("error", 1, "ValueError: boom")
    out = outcome_of("a", error={"type": "MemoryError", "message": "", "oom": True,
                                 "exit_code": 3})
    assert out.kind == "oom" and out.exit_code == 3
    out = outcome_of("a", exit_code=3, error=ErrorInfo("X", "y", oom=True))
    assert out.kind == "oom" and out.error.type == "X"


def test_death_by_signal_without_a_record_is_lost():
    out = outcome_of("a", signal=signal.SIGKILL)
    assert out.kind == "lost" and out.exit_code == 137
    assert out.message == "killed by signal SIGKILL"
    out = outcome_of("a", signal=signal.SIGSEGV, process="the pool worker process (pid 3)")
    assert out.kind == "lost" and "pool worker" in out.message and "SIGSEGV" in out.message


def test_a_chosen_exit_code_without_a_record_is_an_error_with_that_code():
    out = outcome_of("a", exit_code=7)
    assert out.kind == "error" and out.exit_code == 7 and "code 7" in out.message


def test_controller_gone_status_is_lost_unless_the_payload_reported_it():
    assert outcome_of("a", exit_code=EXIT_CONTROLLER_GONE).kind == "lost"
    record = {"type": "SystemExit", "message": "75", "oom": False, "exit_code": 75}
    assert outcome_of("a", exit_code=EXIT_CONTROLLER_GONE, error=record).kind == "error"


def test_stopped_wins_over_how_it_looked():
    out = outcome_of("a", signal=signal.SIGTERM, stopped="timeout")
    assert out.kind == "timeout" and out.exit_code == 143
    assert out.message == "stopped by the executor (timeout)"
    out = outcome_of("a", stopped="cancelled", detail="before it started")
    assert out.message == "stopped by the executor (cancelled): before it started"
