"""The ``steadyrun`` command, run as users run it: a fresh process per call.

Every call goes through ``python -m steadyrun`` (one through the installed console
script) with ``STEADYRUN_HOME`` set to the test's own store and ``tests/`` on the path,
so that ``payloads:add`` style targets import in the CLI and in its workers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import steadyrun as run


@pytest.fixture
def cli(subprocess_env, steadyrun_home, tmp_path):
    """``cli("run", "payloads:add", "a=1")`` -> CompletedProcess (text, never raises)."""
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))

    def call(*args: str, timeout: float = 60, command: list[str] | None = None):
        argv = (command or [sys.executable, "-m", "steadyrun"]) + list(args)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, stdin=subprocess.DEVNULL)

    return call


def experiment_dirs(home: Path) -> list[str]:
    folder = home / "experiments"
    return sorted(os.listdir(folder)) if folder.exists() else []


def run_json(cli, *args: str) -> dict:
    proc = cli("run", "--json", "--quiet", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- run -------------------------------------------------------------------------------


def test_run_function_with_overrides_prints_value(cli):
    result = run_json(cli, "payloads:add", "a=2", "b=3")
    assert result["state"] == "succeeded"
    assert result["tasks"]["add"]["value"] == 5
    assert result["id"].startswith("add-")


def test_installed_console_script_runs_and_prints_a_table(cli):
    script = shutil.which("steadyrun", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the steadyrun console script is not installed next to this python")
    proc = cli("run", "payloads:add", "a=40", "b=2", command=[script])
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("add "))
    assert row.split()[:3] == ["add", "succeeded", "1"] and row.split()[-1] == "42"
    assert "[steadyrun] add: succeeded" in proc.stderr  # progress goes to stderr


def test_failing_task_exits_1_with_its_error(cli):
    proc = cli("run", "payloads:boom", "message=kaput")
    assert proc.returncode == 1
    assert "failed" in proc.stdout
    assert "RuntimeError: kaput" in proc.stderr
    assert "steadyrun resume" in proc.stderr


def test_bad_override_says_did_you_mean_and_writes_nothing(cli, steadyrun_home):
    proc = cli("run", "cfg_targets:Model", "hiddn=3")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "hiddn" in proc.stderr and "did you mean 'hidden'" in proc.stderr
    assert experiment_dirs(steadyrun_home) == []


@pytest.mark.parametrize(("target", "expected"), [
    ("no_such_module_xyz:train", "cannot import 'no_such_module_xyz:train'"),
    ("payloads:no_such_function", "has no attribute 'no_such_function'"),
    ("payloads", "neither module:function nor a script file"),
    ("missing_script.py", "no script file 'missing_script.py'"),
])
def test_bad_target_exits_2_and_writes_nothing(cli, steadyrun_home, target, expected):
    proc = cli("run", target)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert experiment_dirs(steadyrun_home) == []


@pytest.mark.parametrize(("args", "expected"), [
    (["payloads:add"], "needs a value for a"),
    (["payloads:add", "a=1", "--executor", "nosuch"], "executor 'nosuch' is not available"),
    (["payloads:add", "a=1", "--strategy", "fork"], "strategy='fork'"),
    (["payloads:add", "a=1", "--dryrn"], "did you mean --dryrun?"),
    (["payloads:add", "a=1", "--cpus", "100000"], "asks for cpus=100000"),
    (["payloads:add", "a"], "has no '='"),
    ([], "nothing to run"),
])
def test_bad_usage_exits_2_and_writes_nothing(cli, steadyrun_home, args, expected):
    proc = cli("run", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert experiment_dirs(steadyrun_home) == []


def test_bad_option_values_exit_2(cli):
    for args, expected in ((["list", "--limit", "many"], "'many' is not a valid integer"),
                           (["run", "payloads:add", "a=1", "--cpus", "x"], "not a valid number"),
                           (["logs", "x", "--stream", "both"], "no experiment"),
                           (["frobnicate"], "No such command")):
        proc = cli(*args)
        assert proc.returncode == 2, args
        assert expected in proc.stderr, (args, proc.stderr)


def test_dryrun_prints_the_config_and_writes_nothing(cli, steadyrun_home):
    proc = cli("run", "payloads:add", "a=1,2", "b=10", "--sweep", "--dryrun")
    assert proc.returncode == 0, proc.stderr
    assert "nothing was started and nothing was written" in proc.stdout
    assert "local/subprocess" in proc.stdout
    definition = run.from_yaml(proc.stdout)  # the summary lines are YAML comments
    assert [t["name"] for t in definition["tasks"]] == ["add[a=1]", "add[a=2]"]
    assert [(t["payload"].a, t["payload"].b) for t in definition["tasks"]] == [(1, 10), (2, 10)]
    assert definition["executor"]["strategy"] == "subprocess"
    assert not steadyrun_home.exists()  # not even an empty store


def test_sweep_runs_the_grid(cli):
    result = run_json(cli, "payloads:add", "a=1,2", "b=10,20", "--sweep",
                      "--strategy", "thread")
    values = {name: task["value"] for name, task in result["tasks"].items()}
    assert values == {"add[a=1,b=10]": 11, "add[a=1,b=20]": 21,
                      "add[a=2,b=10]": 12, "add[a=2,b=20]": 22}


def test_python_and_bash_scripts_get_their_arguments(cli, tmp_path):
    py = tmp_path / "show args.py"
    py.write_text("import sys\nprint('py args', sys.argv[1:])\n")
    sh = tmp_path / "greet.sh"
    sh.write_text('echo "sh says $1"\n')
    first = run_json(cli, str(py), "--lr", "0.1", "x=1")
    second = run_json(cli, str(sh), "hello")
    assert cli("logs", first["id"]).stdout == "py args ['--lr', '0.1', 'x=1']\n"
    assert cli("logs", second["id"]).stdout == "sh says hello\n"
    assert list(second["tasks"]) == ["greet"]


def test_command_after_double_dash(cli):
    ok = run_json(cli, "--name", "hello", "--", "echo", "hello  world", "$HOME")
    assert list(ok["tasks"]) == ["hello"]
    assert cli("logs", ok["id"]).stdout == "hello  world $HOME\n"  # quoted, not expanded
    failed = cli("run", "--quiet", "--", "bash", "-c", "exit 3")
    assert failed.returncode == 1
    assert "exit code 3" in failed.stderr


# --- read commands ---------------------------------------------------------------------


def test_list_and_status_as_json_and_text(cli):
    exp_id = run_json(cli, "payloads:add", "a=1", "--title", "mnist")["id"]
    listed = json.loads(cli("list", "--json").stdout)
    assert [(e["id"], e["title"], e["state"], e["tasks"]) for e in listed] == [
        (exp_id, "mnist", "succeeded", 1)]
    status = json.loads(cli("status", exp_id[:-2], "--json").stdout)  # a prefix is enough
    assert status["id"] == exp_id
    assert [(t["name"], t["state"], t["attempts"]) for t in status["tasks"]] == [
        ("add", "succeeded", 1)]
    text = cli("status", exp_id).stdout
    assert exp_id in text and "succeeded" in text
    assert exp_id in cli("list", "--title", "mnist").stdout
    assert "no experiments matching title=other" in cli("list", "--title", "other").stderr


def test_unknown_and_ambiguous_ids_exit_2(cli):
    first = run_json(cli, "payloads:add", "a=1", "--strategy", "thread")["id"]
    second = run_json(cli, "payloads:add", "a=2", "--strategy", "thread")["id"]
    for command in ("status", "logs", "cancel", "resume"):
        proc = cli(command, "nope")
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: no experiment with id 'nope'")
    typo = cli("status", first[:-1] + ("x" if first[-1] != "x" else "y"))
    assert typo.returncode == 2 and "closest" in typo.stderr
    ambiguous = cli("status", "add-")
    assert ambiguous.returncode == 2
    assert first in ambiguous.stderr and second in ambiguous.stderr


def test_logs_show_the_tasks_output(cli):
    assert cli("run", "payloads:boom", "message=kaput").returncode == 1
    exp_id = json.loads(cli("list", "--json").stdout)[0]["id"]
    both = cli("logs", exp_id)
    assert both.returncode == 0
    assert "about to fail" in both.stdout and "RuntimeError: kaput" in both.stdout
    assert cli("logs", exp_id, "boom", "--stream", "stdout").stdout == "about to fail\n"
    missing = cli("logs", exp_id, "nosuch")
    assert missing.returncode == 2 and "no task 'nosuch'" in missing.stderr


def test_status_says_when_the_controller_died(cli):
    from steadyrun.store.db import Store

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = Store()
    exp_id = store.create_experiment("orphan", [{"name": "train"}], {"type": "LocalExecutor"})
    store.update_experiment(exp_id, state="running", started_at=time.time(),
                            controller_pid=dead.pid, controller_host=socket.gethostname(),
                            heartbeat=time.time() - 60)
    store.close()
    text = cli("status", exp_id).stdout
    assert f"running — controller dead; `steadyrun resume {exp_id}`" in text
    assert "running (controller dead)" in cli("list").stdout
    assert json.loads(cli("status", exp_id, "--json").stdout)["controller"]["alive"] is False


def test_running_with_no_controller_recorded_shows_as_dead(cli):
    from steadyrun.store.db import Store

    store = Store()
    exp_id = store.create_experiment("nobody", [{"name": "train"}], {"type": "LocalExecutor"})
    store.update_experiment(exp_id, state="running", started_at=time.time())
    store.close()
    text = cli("status", exp_id).stdout
    assert f"running — controller dead; `steadyrun resume {exp_id}`" in text
    listed = cli("list").stdout
    assert next(line for line in listed.splitlines() if line.startswith(exp_id)).split()[
        1:4] == ["running", "(controller", "dead)"]
    as_json = json.loads(cli("status", exp_id, "--json").stdout)
    assert as_json["controller_dead"] is True and as_json["controller"]["alive"] is False
    assert as_json["next_step"] == f"steadyrun resume {exp_id}"
    assert json.loads(cli("list", "--json").stdout)[0]["controller_dead"] is True


# --- manage ----------------------------------------------------------------------------


def test_detach_then_cancel(cli):
    started = cli("run", "payloads:sleep_for", "seconds=60", "--detach")
    assert started.returncode == 0, started.stderr
    exp_id = started.stdout.strip()
    assert "steadyrun status" in started.stderr
    deadline = time.monotonic() + 30
    while json.loads(cli("status", exp_id, "--json").stdout)["tasks"][0]["state"] != "running":
        assert time.monotonic() < deadline, "the detached task never started"
        time.sleep(0.2)
    cancelled = cli("cancel", exp_id)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    status = json.loads(cli("status", exp_id, "--json").stdout)
    assert status["state"] == "cancelled" and status["tasks"][0]["state"] == "cancelled"
    again = cli("cancel", exp_id)
    assert again.returncode == 0 and "nothing to cancel" in again.stdout


def test_resume_reruns_what_failed(cli, tmp_path):
    marker = tmp_path / "count"
    failed = cli("run", "payloads:fail_until", f"marker={str(marker)!r}", "succeed_on=2",
                 "--quiet")
    assert failed.returncode == 1
    exp_id = json.loads(cli("list", "--json").stdout)[0]["id"]
    resumed = cli("resume", exp_id[:-3], "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["tasks"]["fail_until"]["value"] == 2
    bad = cli("resume", exp_id, "--rerun", "everything")
    assert bad.returncode == 2 and "unknown choice" in bad.stderr


# --- the command itself ----------------------------------------------------------------


def test_help_and_version(cli):
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("run", "list", "status", "logs", "cancel", "resume", "version"):
        assert f"  {command} " in proc.stdout
    assert cli("version").stdout.strip() == run.__version__


def test_read_commands_import_neither_the_engine_nor_rich(cli):
    """What keeps `steadyrun --help` and `steadyrun list` fast: no engine, executors, YAML,
    rich (stdout is not a terminal) or pydantic."""
    heavy = ("steadyrun.engine.loop", "steadyrun.experiment", "steadyrun.executors", "yaml",
             "rich", "pydantic", "cloudpickle")
    for args in (["--help"], ["list"]):
        proc = cli(*args, command=[sys.executable, "-X", "importtime", "-m", "steadyrun"])
        assert proc.returncode == 0, proc.stderr
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                    if line.startswith("import time:")}
        loaded = {m for m in imported for h in heavy if m == h or m.startswith(h + ".")}
        assert not loaded, (args, loaded)


def test_the_command_is_built_on_click_alone():
    """The CLI uses click's public API: no typer (nor its private internals) is loaded."""
    code = ("import sys, steadyrun.cli.main, steadyrun.cli.results, steadyrun.cli.exits; "
            "assert not [m for m in sys.modules if m == 'typer' or m.startswith('typer.')], "
            "sorted(m for m in sys.modules if m.startswith('typer'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


# --- watch: monitor, report, resources -------------------------------------------------


def test_monitor_once_on_a_finished_experiment_shows_the_summary(cli):
    exp = run.Experiment([run.Task("add", run.Partial(_add_for_cli, a=1, b=2)),
                          run.Task("fails", run.Script(inline="exit 4"))],
                         title="watched", executor=run.LocalExecutor(strategy="thread"),
                         progress=False)
    exp.run(raise_on_failure=False)
    proc = cli("monitor", exp.id[:-2], "--once")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"experiment {exp.id} (watched) failed"
    assert lines[1].split() == ["TASK", "STATE", "ATTEMPTS", "KIND", "EXIT", "DURATION",
                                "PEAK", "RSS", "PEAK", "GPU", "CPU", "S"]
    assert lines[2].split()[:3] == ["add", "succeeded", "1"]
    assert lines[3].split()[:5] == ["fails", "failed", "1", "error", "4"]
    summary = json.loads(cli("monitor", exp.id, "--json").stdout)
    assert [(t["name"], t["state"]) for t in summary["tasks"]] == [
        ("add", "succeeded"), ("fails", "failed")]


def test_monitor_once_on_a_running_experiment_shows_the_table(cli):
    import psutil

    from steadyrun.store.db import Store

    store = Store()
    exp_id = store.create_experiment("live", [{"name": "train"}], {"type": "LocalExecutor"})
    now = time.time()
    store.update_experiment(exp_id, state="running", started_at=now, controller_pid=os.getpid(),
                            controller_host=socket.gethostname(),
                            controller_started=psutil.Process().create_time())
    store.update_task(exp_id, "train", state="running", attempts=1)
    store.insert_attempt(exp_id, "train", 1, state="running", started_at=now - 5,
                         resources={"cpus": 1, "memory": None, "gpus": []})
    store.add_samples(exp_id, [("train", 1, now, 42.0, 64 * 1024**2, 1, 0, 0, None, None)])
    store.close()
    proc = cli("monitor", exp_id, "--once")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{exp_id} (live): running"
    assert lines[2].split()[:6] == ["train", "running", "1", "42", "64.0MiB", "-"]
    assert lines[3].startswith("CPUs 1/")


def test_report_writes_png_and_html(cli, tmp_path):
    exp = run.Experiment([run.Task("add", run.Partial(_add_for_cli, a=1, b=2))],
                         executor=run.LocalExecutor(strategy="thread"), progress=False)
    exp.run()
    out = tmp_path / "my report"
    proc = cli("report", exp.id, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(out / "report.png"), str(out / "report.html")]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<td>add</td>" in (out / "report.html").read_text()
    missing = cli("report", "nope")
    assert missing.returncode == 2 and "no experiment with id 'nope'" in missing.stderr


def test_resources_as_json_and_text(cli):
    proc = cli("resources", "--json", "--cpu-interval", "0")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["cpu"]["logical"] >= 1 and data["memory"]["total"] > 0
    text = cli("resources", "--cpu-interval", "0").stdout
    assert text.startswith("Resources of ") and "Memory" in text


def test_help_lists_the_watch_commands(cli):
    out = cli("--help").stdout
    for command in ("monitor", "report", "resources"):
        assert f"  {command} " in out


def _add_for_cli(a: int, b: int) -> int:
    return a + b
