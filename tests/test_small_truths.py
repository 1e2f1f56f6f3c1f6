"""Small promises kept: a timeout says how long, a traceback is shown once, every view
of a task's duration agrees, a cancel of an orphaned experiment cancels, a report of a
CPU-only run has no GPU panel, and ``Script("echo hi")`` is caught when it is written."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

import payloads
import steadyrun as run
import truth_payloads as tp
from steadyrun.engine.decisions import timed_out
from steadyrun.observe import report
from steadyrun.store.db import Store
from steadyrun.units import format_duration, format_limit
from waiting import wait_for

pytestmark = pytest.mark.timeout(120)
TRACEBACK = "Traceback (most recent call last)"


def cli(args: list[str], env: dict[str, str], timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


# --- a timeout says how long ------------------------------------------------------------


def test_a_timeout_says_after_how_long():
    exp = run.Experiment([run.Task("slow", run.Partial(payloads.sleep_for, 30), timeout="1s")],
                         executor=run.LocalExecutor(strategy="subprocess", grace_period=1))
    with pytest.raises(run.ExperimentFailed) as info:
        exp.run()
    failure = info.value.failures[0]
    assert failure.kind == "timeout" and failure.message == "timed out after 1s"
    assert "stopped by the executor" not in str(info.value)
    status = run.Experiment.from_id(info.value.experiment_id).status()
    assert status.tasks[0].message == "timed out after 1s"


@pytest.mark.parametrize(("seconds", "text"), [(3, "3s"), (90, "1m30s"), (7200, "2h"),
                                               (5400, "1h30m"), (0.5, "0.50s")])
def test_limits_read_as_the_user_wrote_them(seconds, text):
    assert format_limit(seconds) == text
    assert timed_out(seconds).message == f"timed out after {text}"


def test_a_timeout_keeps_what_the_executor_added():
    verdict = timed_out(3.0, "stopped by the executor (timeout): its thread cannot be killed")
    assert verdict.message == "timed out after 3s (its thread cannot be killed)"


# --- a traceback is shown once ----------------------------------------------------------


def test_an_experiment_failure_holds_its_traceback_once():
    exp = run.Experiment([run.Task("bad", run.Partial(payloads.boom, "kaput"))],
                         tail_logs=False)
    with pytest.raises(run.ExperimentFailed) as info:
        exp.run()
    text = str(info.value)
    assert text.count(TRACEBACK) == 1
    assert text.count("raise RuntimeError(message)") == 1
    assert "about to fail" in text  # the rest of the log is still there
    failure = info.value.failures[0]
    assert TRACEBACK in (failure.log_tail or "")  # the attribute keeps the log as it is


def test_run_run_raises_with_its_traceback_once():
    with pytest.raises(run.TaskFailed) as info:
        run.run(run.Partial(payloads.boom, "kaput"))
    assert str(info.value).count(TRACEBACK) == 1


def test_a_traceback_longer_than_the_log_tail_is_not_repeated():
    with pytest.raises(run.TaskFailed) as info:
        run.run(run.Partial(tp.deep_failure, 30))
    text = str(info.value)
    assert text.count(TRACEBACK) == 1
    log = text.split("last lines of its log:", 1)[1] if "last lines" in text else ""
    assert 'File "' not in log and "RuntimeError: deep down" not in log


def test_the_cli_prints_a_failure_s_traceback_once(subprocess_env):
    out = cli(["run", "payloads:boom", "message=kaput"], subprocess_env)
    assert out.returncode != 0
    both = out.stdout + out.stderr
    assert both.count(TRACEBACK) == 1, both
    assert "task 'boom' failed (error, exit code 1, 1 attempt): RuntimeError: kaput" in both
    quiet = cli(["run", "payloads:boom", "message=kaput", "--quiet"], subprocess_env)
    assert (quiet.stdout + quiet.stderr).count(TRACEBACK) == 1  # nothing streamed: summed up


# --- one duration -----------------------------------------------------------------------


def test_every_view_of_a_duration_agrees(tmp_path, subprocess_env):
    exp = run.Experiment([
        run.Task("flaky", run.Partial(tp.fail_first, str(tmp_path / "marker")),
                 retry=run.Retry(max_attempts=2, initial_delay=0.3)),
        run.Task("quick", run.Partial(payloads.add, 1, b=2)),
    ], title="durations")
    result = exp.run()
    store = Store()
    summaries = {s.name: s for s in report.task_summaries(store, result.id)}
    attempts = store.attempts(result.id, "flaky")
    store.close()
    status = json.loads(cli(["status", result.id, "--json"], subprocess_env).stdout)
    shown = {t["name"]: t["duration"] for t in status["tasks"]}
    page = run.Experiment.from_id(result.id).report(out=tmp_path / "report")["html"].read_text()
    for name in ("flaky", "quick"):
        duration = result[name].duration
        assert duration is not None and duration > 0
        assert shown[name] == pytest.approx(duration, abs=1e-6)
        assert summaries[name].duration == pytest.approx(duration, abs=1e-6)
        row = re.search(rf'<tr class="succeeded"><td>{name}</td>(.*?)</tr>', page).group(1)
        assert re.findall(r"<td>(.*?)</td>", row)[4] == format_duration(duration)
    # first attempt's start to last attempt's end: the retry and its backoff included
    assert result["flaky"].duration == pytest.approx(
        attempts[-1].ended_at - attempts[0].started_at, abs=1e-6)
    assert result["flaky"].duration > 0.3 + 0.2 + 0.2


# --- cancel after the controller died ---------------------------------------------------


def test_cancel_after_the_controller_died_cancels(subprocess_env):
    exp = run.Experiment([run.Task("slow", run.Partial(payloads.sleep_for, 60)),
                          run.Task("after", run.Partial(payloads.add, 1), depends_on=["slow"])],
                         title="orphaned")
    exp.run(detach=True)
    wait_for(lambda: exp.status().tasks[0].state == "running" and exp.status().tasks[0].pid,
             what="the task to start")
    leftover = exp.status().tasks[0].pid
    controller = exp.status().controller["pid"]
    os.kill(controller, signal.SIGKILL)
    wait_for(lambda: exp.status().controller["alive"] is False, what="a dead controller")
    out = cli(["cancel", exp.id], subprocess_env)
    assert out.returncode == 0, out.stderr
    assert "cancelled 2 task(s)" in out.stdout + out.stderr
    status = exp.status()
    assert status.state == "cancelled"
    assert {t.name: (t.state, t.kind) for t in status.tasks} == {
        "slow": ("cancelled", "cancelled"), "after": ("cancelled", None)}
    store = Store()
    attempt = store.attempts(exp.id, "slow")[-1]
    store.close()
    assert attempt.state == "cancelled" and attempt.kind == "cancelled"
    time.sleep(0.3)
    assert not (psutil.pid_exists(leftover)
                and psutil.Process(leftover).status() != psutil.STATUS_ZOMBIE)


# --- no empty GPU panel -----------------------------------------------------------------


class _Sample(dict):
    """A sample row as the report reads it (attributes and keys)."""

    __getattr__ = dict.__getitem__


def _height(png: bytes) -> int:
    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png").shape[0]


def test_the_report_has_a_gpu_panel_only_with_gpu_samples():
    pytest.importorskip("matplotlib")
    attempts = [_Sample(task="a", number=1, state="succeeded", kind=None, started_at=100.0,
                        ended_at=104.0)]
    cpu_only = [_Sample(task="a", attempt=1, ts=100.0 + i, cpu_percent=50.0, rss=2**20 * i,
                        gpu_memory=None) for i in range(4)]
    with_gpu = [_Sample(s, gpu_memory=2**30) for s in cpu_only]
    assert not report.has_gpu_samples(cpu_only) and report.has_gpu_samples(with_gpu)
    without = _height(report.render_png(["a"], attempts, cpu_only, now=105.0))
    full = _height(report.render_png(["a"], attempts, with_gpu, now=105.0))
    assert without == round(report.figure_size(1, gpu=False)[1] * report.DPI)
    assert full == round(report.figure_size(1, gpu=True)[1] * report.DPI)
    assert full - without == round(report.PANEL_HEIGHT * report.DPI)


# --- Script("echo hi") ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["echo hi", "python train.py --lr 0.1", "make&&run",
                                  "cat x | wc", "echo $HOME"])
def test_a_command_given_as_a_path_is_refused_when_written(text):
    with pytest.raises(run.ConfigError, match=re.escape(f"run.Script(inline={text!r})")):
        run.Script(text)


def test_paths_stay_paths(tmp_path):
    spaced = tmp_path / "my script.sh"
    spaced.write_text("echo ok\n")
    assert run.Script(str(spaced)).path == str(spaced)  # it exists: a path, spaces and all
    assert run.Script("train.sh", args=["--lr", "0.1"]).path == "train.sh"  # read remotely
    assert run.Script(path="/cluster/my runs/train.sh").path == "/cluster/my runs/train.sh"
    with pytest.raises(run.ConfigError, match="not both"):
        run.Script("a.sh", path="b.sh")
    script = run.Script("train.sh", args=["x"])
    assert run.from_yaml(run.to_yaml(script)) == script
