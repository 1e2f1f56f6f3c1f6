"""The ``steadyrun`` command (also ``python -m steadyrun``).

::

    steadyrun run module:function key=value ... [--sweep] [--dryrun] [--detach]
    steadyrun run path/to/script.py [ARGS...]        # .py with python, others with bash
    steadyrun run [OPTIONS] -- CMD ARGS...           # a shell command
    steadyrun run --config run.yaml key=value ...    # a run file; --to-yaml [FILE] writes one
    steadyrun list | status ID | logs ID [TASK] | cancel ID [TASK] | resume ID | version
    steadyrun monitor ID [--once] | report ID [--out DIR] | resources [--json]
    steadyrun results ID [--sort KEY] [--desc] [--json|--csv]
    steadyrun show ID [--diff|--configs|--packages|--json] | diff ID1 ID2 [--json]

Read commands print a table on a terminal, plain aligned text otherwise, and JSON with
``--json``. IDs may be any unique prefix of the id or of its random suffix, or
``latest`` (``latest~N``: the N-th before it). Exit codes: 0 success (a closed pipe
too: ``| head``), 1 the experiment failed (``run`` and ``resume``), 2 bad usage or
input (an unknown id, target, override or executor) or a store that cannot be used (not
private, full, damaged, read-only), 130 interrupted.

Startup is kept short (``steadyrun --help`` is click alone): the library, rich and YAML
are imported only by the commands that use them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from steadyrun.cli import exits, explain, parse, profiles, render, results, show, status, ui
from steadyrun.cli.base import NUMBER, Group, argument, flag
from steadyrun.cli.parse import UsageProblem
from steadyrun.units import format_duration

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
RERUN_DEFAULT = "failed,cancelled,never-started"


@click.group(
    cls=Group,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Configure, launch, watch and manage ML experiments.\n\n"
         "Exit codes: 0 success, 1 the experiment failed, 2 bad usage or input.",
)
def app() -> None:
    """The ``steadyrun`` group; its commands do the work."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: runs the CLI, mapping our errors to exit 2.

    ``steadyrun run ... -- CMD ARGS`` is split here: click would drop the ``--`` and the
    command could no longer tell a shell command from a target.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    obj: dict[str, Any] = {}
    if args[:1] == ["run"] and "--" in args:
        cut = args.index("--")
        args, obj["passthrough"] = args[:cut], args[cut + 1:]
    if args[:1] == ["run"]:
        from steadyrun.cli import runfile

        args = runfile.default_to_yaml(args)  # a bare --to-yaml means standard output
    raise SystemExit(exits.run_command(app, args, obj))  # `| head` exits 0, errors 2


# --- run --------------------------------------------------------------------------------


@app.command("run", context_settings={"ignore_unknown_options": True})
@argument("target", required=False, metavar="TARGET",
          help="module:function, a script file (.py runs with python, others with bash), "
               "or nothing when a command follows `--`.")
@argument("args", nargs=-1, metavar="ARGS",
          help="key=value overrides of the function's arguments, or the script's arguments.")
@click.option("--executor", "-e", "executor", metavar="NAME",
              help="Where to run: local, ray, slurm, or a profile of the executors file; "
                   "options inline: slurm:partition=gpu,account=abc (default: the --config "
                   "file's executor, else local).")
@click.option("--address", metavar="HOST:PORT",
              help="The Ray cluster for -e ray (default: $RAY_ADDRESS, then "
                   "$STEADYRUN_RAY_ADDRESS, else a private Ray).")
@click.option("--strategy", metavar="NAME",
              help="Local strategy: subprocess (default), process, thread or sequential.")
@click.option("--name", metavar="NAME",
              help="Task name (default: the function's or script's name).")
@click.option("--title", metavar="TITLE", help="Experiment title (default: the task name).")
@flag("--sweep", help="Values with commas (lr=1e-3,1e-4) become a grid of tasks.")
@click.option("--cpus", type=NUMBER, metavar="N", help="CPUs per task.")
@click.option("--memory", metavar="SIZE", help="Memory per task, e.g. 4GiB.")
@click.option("--gpus", type=int, metavar="N", help="GPUs per task.")
@click.option("--timeout", metavar="DURATION", help="Per-attempt time limit, e.g. 90s or 2h.")
@flag("--dryrun", "--dry-run", "dryrun",
      help="Print the resolved config and what would run where; start and write nothing.")
@flag("--detach", help="Start in the background and print the experiment id.")
@flag("--quiet", "-q", "quiet", help="Show neither the tasks' output nor progress lines.")
@flag("--live", help="Draw the live table of the tasks on a terminal; their output "
                     "scrolls above it.")
@flag("--json", "as_json", help="Print the results as JSON.")
@click.option("--config", "-c", "config_file", metavar="FILE",
              help="Read the run from a YAML file (what --to-yaml writes, or a _target_ "
                   "mapping); key=value overrides apply on top.")
@click.option("--to-yaml", "to_yaml", metavar="FILE",
              help="Write the resolved run as YAML to FILE (standard output when FILE is - "
                   "or left out) and run nothing.")
@click.pass_context
def run_cmd(ctx: click.Context, target: str | None, args: tuple[str, ...],
            executor: str | None, address: str | None, strategy: str | None,
            name: str | None, title: str | None, sweep: bool, cpus: float | None,
            memory: str | None, gpus: int | None, timeout: str | None, dryrun: bool,
            detach: bool, quiet: bool, live: bool, as_json: bool, config_file: str | None,
            to_yaml: str | None) -> None:
    """Run a function, a script or a command as an experiment.

    \b
      steadyrun run train:main lr=0.01 model.hidden=512
      steadyrun run train:main lr=1e-3,1e-4 batch_size=32,64 --sweep
      steadyrun run prepare.py --input data/ --dryrun
      steadyrun run --name hello -- echo hello world
      steadyrun run train:main lr=0.01 --to-yaml run.yaml
      steadyrun run --config run.yaml lr=0.02

    Without --detach it waits, showing what each task prints as `NAME | line` (stderr
    lines as `NAME ! line`; none with --quiet or --json) and a line per task state
    change, then prints a table of the tasks and exits 0 when every task succeeded, 1
    otherwise.
    """
    from steadyrun.cli import runfile

    passthrough = (ctx.obj or {}).get("passthrough")
    extra = list(args or [])
    file_executor = None
    if config_file is not None:  # `steadyrun run --config FILE [key=value ...]`
        if passthrough is not None:
            raise UsageProblem("--config takes key=value overrides, not `-- COMMAND`")
        loaded = runfile.read_run_file(config_file)
        tasks = runfile.file_tasks(loaded, ([target] if target else []) + extra, name, sweep)
        shown, file_executor = loaded.title or tasks[0].name, loaded.executor
    elif target is None and passthrough is None:
        raise UsageProblem("nothing to run: give module:function, a script file, "
                           "--config FILE, or `-- COMMAND ...`; see `steadyrun run --help`")
    elif target is None:  # `steadyrun run [OPTIONS] -- CMD ARGS`
        tasks, shown = parse.command_tasks(passthrough or [], name, sweep)
    elif parse.looks_like_script(target):
        tasks, shown = parse.script_tasks(target, extra + (passthrough or []), name, sweep)
    else:
        bad = [a for a in extra if a.startswith("-")]
        if bad:
            raise UsageProblem(f"unknown option {bad[0]!r} for `steadyrun run`"
                               f"{_suggest_option(bad[0], ctx)}; overrides are key=value")
        tasks, shown = parse.function_tasks(target, extra + (passthrough or []), name, sweep)
    parse.apply_task_options(tasks, cpus=cpus, memory=memory, gpus=gpus, timeout=timeout)
    if executor is None and strategy is None and address is None and file_executor is not None:
        exe, chosen = file_executor, None
    else:
        exe, chosen = profiles.make_executor(executor or "local", strategy, address)
    title = title or shown

    if to_yaml is not None:
        runfile.write_run_file(runfile.run_file_text(title, tasks, exe), to_yaml)
        if to_yaml != "-":
            render.err(f"wrote {to_yaml}; run it with `steadyrun run --config {to_yaml}`")
        return

    if dryrun:
        render.print_dryrun(title, tasks, exe)
        profiles.print_executor_dryrun(tasks, exe, chosen)
        return

    import steadyrun as run

    exp = run.Experiment(tasks, title=title, executor=exe,
                         progress="live" if live else not (quiet or detach),
                         tail_logs=not (quiet or detach or as_json))
    if detach:
        exp.run(detach=True)
        render.out(str(exp.id))
        render.err(f"started {exp.id} in the background; watch it with "
                   f"`steadyrun status {exp.id}` or `steadyrun logs {exp.id} --follow`")
        return
    _finish(lambda: exp.run(), lambda: exp.id, as_json, streamed=exp.tail_logs)


def _finish(start: Any, exp_id: Any, as_json: bool, streamed: bool = False) -> None:
    """Run ``start()`` (``exp.run`` or ``exp.resume``), print the outcome, set the exit code.
    ``streamed``: the tasks' output was shown as it came, tracebacks included, so the
    failures are summed up without them."""
    import steadyrun as run

    try:
        result = start()
    except run.ExperimentFailed as exc:
        if exc.result is not None:
            render.print_result(exc.result, as_json)
        render.err(exc.summary(output=not streamed))
        raise click.exceptions.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        known = exp_id()
        render.err("interrupted: running tasks were cancelled"
                   + (f"; `steadyrun resume {known}` runs what did not finish" if known else ""))
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    render.print_result(result, as_json)


# --- read and manage --------------------------------------------------------------------


@app.command("list")
@click.option("--title", metavar="TITLE", help="Only experiments with this title.")
@click.option("--state", metavar="STATE",
              help="Only experiments in this state (running, succeeded, failed, ...).")
@click.option("--limit", type=int, default=20, show_default=True, metavar="N",
              help="At most this many, newest first; 0 for all.")
@flag("--json", "as_json", help="Print JSON.")
def list_cmd(title: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List experiments, newest first (`latest` names the first row, `latest~1` the
    second). With none to show, stdout stays empty and stderr says why."""
    from steadyrun.manage import list_experiments
    from steadyrun.states import ExperimentState

    parse.check_choice("--state", state, list(ExperimentState), "an experiment state")
    infos = list_experiments(title=title, state=state, limit=limit or None)
    if not infos:
        explain.no_experiments(title, state)
    if as_json:
        render.print_json([i.to_dict() for i in infos])
        return
    if not infos:
        return
    rows = [[i.id, render.state_label(i.state, i.controller_dead),
             render.summarize_counts(i.counts) or i.tasks, render.fmt_ago(i.created_at),
             format_duration(render.elapsed(i.started_at, i.ended_at)), i.title]
            for i in infos]
    render.print_table(["id", "state", "tasks", "created", "duration", "title"], rows,
                       state_column=1)


app.add_command(status.status_cmd)
app.add_command(results.results_cmd)
app.add_command(show.show_cmd)
app.add_command(show.diff_cmd)
app.add_command(ui.ui_cmd)


@app.command("logs")
@argument("exp_id", metavar="ID", help=parse.ID_HELP)
@argument("task", required=False, metavar="TASK",
          help="Only this task (default: every task, lines prefixed with [task]).")
@click.option("--attempt", type=int, metavar="N",
              help="This attempt (1, 2, ...); default: the latest.")
@flag("--follow", "-f", "follow", help="Keep printing until the attempt ends.")
@click.option("--stream", default="both", show_default=True, metavar="STREAM",
              help="stdout, stderr or both.")
@click.option("--tail", "-n", "tail", type=int, metavar="N",
              help="Only the last N lines of each log (read from its end); then --follow "
                   "if given.")
@click.option("--rank", type=int, metavar="N",
              help="Only rank N of a gang attempt (default: every rank, lines prefixed "
                   "with [rank N], then the launcher's lines).")
def logs_cmd(exp_id: str, task: str | None, attempt: int | None, follow: bool, stream: str,
             tail: int | None, rank: int | None) -> None:
    """Print a task's output (stdout and stderr), in constant memory however large.

    A log past its executor's max_log_bytes holds its first and last parts, with a line
    between them saying how many bytes were dropped. An attempt run as a gang of ranks
    prints every rank's lines prefixed with [rank N] (ranks in order; interleaved as
    they arrive with --follow), then the launcher's lines prefixed with [launcher];
    --rank N prints rank N's alone.
    """
    parse.check_choice("--stream", stream, ("stdout", "stderr", "both"), "a stream")
    if tail is not None and tail < 0:
        raise UsageProblem(f"--tail {tail}: give a number of lines >= 0")
    from steadyrun.observe.logs import iter_log_blocks

    store, full = _open(exp_id)
    if task is None:  # one task: its lines need no "[task] " prefix
        names = [t.name for t in store.tasks(full)]
        task = names[0] if len(names) == 1 else None
    if not explain.logs_request(store, full, task, attempt, follow, stream, rank):
        return  # nothing ran: stderr said why
    wrote = False
    try:
        for block in iter_log_blocks(store, full, task, attempt=attempt, follow=follow,
                                     stream=stream, tail=tail, rank=rank):
            sys.stdout.write(block)
            wrote = True
            if follow:
                sys.stdout.flush()
    except KeyboardInterrupt:
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    if not wrote and tail != 0:
        explain.no_output(stream)


@app.command("cancel")
@argument("exp_id", metavar="ID", help=parse.ID_HELP)
@argument("task", required=False, metavar="TASK",
          help="Only this task (default: the whole experiment).")
def cancel_cmd(exp_id: str, task: str | None) -> None:
    """Cancel a running experiment, or one of its tasks."""
    from steadyrun.manage import cancel

    store, full = _open(exp_id, readonly=False)
    render.out(cancel(store, full, task))


@app.command("resume")
@argument("exp_id", metavar="ID", help=parse.ID_HELP)
@click.option("--rerun", default=RERUN_DEFAULT, show_default=True, metavar="WHICH",
              help="Which tasks to run again, comma-separated: failed, cancelled, "
                   "never-started (what did not succeed), task names (whatever their "
                   "state, succeeded ones too), or all.")
@flag("--detach", help="Resume in the background and return at once.")
@flag("--quiet", "-q", "quiet", help="Show neither the tasks' output nor progress lines.")
@flag("--live", help="Draw the live table of the tasks on a terminal; their output "
                     "scrolls above it.")
@flag("--json", "as_json", help="Print the results as JSON.")
def resume_cmd(exp_id: str, rerun: str, detach: bool, quiet: bool, live: bool,
               as_json: bool) -> None:
    """Run again what did not succeed (or, with --rerun, the tasks named, succeeded ones
    too), as it was defined and from where it was launched.

    A rerun task gets a new attempt (earlier attempts' folders are kept) and its result
    becomes the new one: `--rerun train` gets back a result whose file was lost, `--rerun
    all` runs everything again. Exits 1 if something fails again, 2 (changing nothing)
    for a task name the experiment does not have or when another live controller drives
    the experiment.
    """
    which = tuple(w.strip() for w in rerun.split(",") if w.strip())
    if not which:
        raise UsageProblem("--rerun is empty: give e.g. failed,cancelled,never-started, a "
                           "task name, or all")
    if status.nothing_to_resume(exp_id, which, detach=detach, as_json=as_json):
        return  # told from counts, said, and the exit code set
    from steadyrun.experiment import Experiment

    exp = Experiment.from_id(exp_id)
    if detach:
        exp.resume(rerun=which, detach=True)
        render.out(str(exp.id))
        render.err(f"resumed {exp.id} in the background; watch it with "
                   f"`steadyrun status {exp.id}`")
        return
    exp.progress = "live" if live else not quiet  # as `steadyrun run` shows a run
    exp.tail_logs = not (quiet or as_json)
    _finish(lambda: exp.resume(rerun=which), lambda: exp.id, as_json, streamed=exp.tail_logs)


# --- watch ------------------------------------------------------------------------------


@app.command("monitor")
@argument("exp_id", metavar="ID", help=parse.ID_HELP)
@flag("--once", help="Print one frame and exit (plain text when not a terminal).")
@click.option("--interval", type=NUMBER, default=1.0, show_default=True, metavar="SECONDS",
              help="Seconds between redraws.")
@flag("--json", "as_json", help="Draw nothing; print the summary as JSON at the end (at "
                                "once with --once).")
def monitor_cmd(exp_id: str, once: bool, interval: float, as_json: bool) -> None:
    """Watch a running experiment: a live table of its tasks and resources.

    Works from any terminal, for an experiment started here, detached or driven by
    another process. It exits when the experiment is final and prints a summary per
    task (attempts, duration, peak RSS, CPU seconds). Figures come from the store,
    where samples arrive every few seconds.
    """
    if interval <= 0:
        raise UsageProblem(f"--interval {interval:g}: give seconds above 0")
    from steadyrun.manage import FINAL_EXPERIMENT_STATES
    from steadyrun.observe.live import watch_store
    from steadyrun.store.liveness import controller_dead

    store, full = _open(exp_id)
    try:
        if as_json:  # draw nothing: wait (unless --once), then the summary alone
            with open(os.devnull, "w") as devnull:
                row = watch_store(store, full, interval=interval, once=once,
                                  stream=devnull, live=False)
        else:
            row = watch_store(store, full, interval=interval, once=once)
    except KeyboardInterrupt:
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    final = row.state in FINAL_EXPERIMENT_STATES
    dead = not final and controller_dead(row)
    if final or dead or as_json:
        render.print_summary(store, full, as_json)
    if dead:  # it says running, but no controller drives it any more
        render.err(f"experiment {full} is {row.state} but its controller is gone; "
                   f"`steadyrun resume {full}` runs what did not finish")
        raise click.exceptions.Exit(EXIT_FAILED)


@app.command("report")
@argument("exp_id", metavar="ID", help=parse.ID_HELP)
@click.option("--out", metavar="DIR", help="Folder for report.png and report.html "
              "(default: the experiment's report/ folder in the store).")
@flag("--json", "as_json", help="Print the paths as JSON.")
def report_cmd(exp_id: str, out: str | None, as_json: bool) -> None:
    """Write a PNG and an HTML page of an experiment's resource use over time."""
    from steadyrun.observe.report import write_report

    store, full = _open(exp_id)
    paths = write_report(store, full, out)
    if as_json:
        render.print_json({k: str(v) for k, v in paths.items()})
        return
    for path in paths.values():
        render.out(str(path))


@app.command("resources")
@flag("--json", "as_json", help="Print JSON.")
@click.option("--cpu-interval", "cpu_interval", type=NUMBER, default=0.2, show_default=True,
              metavar="SECONDS", help="How long to measure how busy the CPUs are.")
def resources_cmd(as_json: bool, cpu_interval: float) -> None:
    """Show what this machine has now: CPUs, memory, disks, GPUs and cgroup limits."""
    from steadyrun.observe import resources

    snap = resources.snapshot(cpu_interval=max(0.0, cpu_interval))
    if as_json:
        render.print_json(snap.to_dict())
        return
    render.out(resources.format_snapshot(snap))


@app.command("version")
def version_cmd() -> None:
    """Print steadyrun's version."""
    from steadyrun import __version__

    render.out(__version__)


# --- helpers ----------------------------------------------------------------------------


def _open(exp_id: str, *, readonly: bool = True) -> tuple[Any, str]:
    """The store and the full id of the experiment ``exp_id`` names (a unique prefix of
    the id or of its suffix, ``latest``, ``latest~N``: :mod:`steadyrun.store.ids`).

    Read commands use the store directly rather than ``Experiment.from_id``: that loads
    the definition, which imports every task's target (slow, and impossible where the
    user's modules are not on the path). They open it read-only: they work on an
    archived copy or a read-only mount, and never create a store."""
    from steadyrun.store.db import Store

    if not exp_id.strip():
        raise UsageProblem("the experiment ID is empty: give an id, a unique prefix of "
                           "one, or latest (`steadyrun list` shows them)")
    store = Store(readonly=readonly)
    return store, store.resolve_id(exp_id)


def _suggest_option(text: str, ctx: click.Context) -> str:
    import difflib

    options = [o for p in ctx.command.params for o in p.opts if o.startswith("-")]
    close = difflib.get_close_matches(text.split("=")[0], options, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
