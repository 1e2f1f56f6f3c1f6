"""The ``steadyrun`` command (also ``python -m steadyrun``).

::

    steadyrun run module:function key=value ... [--sweep] [--dryrun] [--detach]
    steadyrun run path/to/script.py [ARGS...]        # .py with python, others with bash
    steadyrun run [OPTIONS] -- CMD ARGS...           # a shell command
    steadyrun list | status ID | logs ID [TASK] | cancel ID [TASK] | resume ID | version
    steadyrun monitor ID [--once] | report ID [--out DIR] | resources [--json]

Read commands print a table on a terminal, plain aligned text otherwise, and JSON with
``--json``. IDs may be any unique prefix. Exit codes: 0 success, 1 the experiment failed
(``run`` and ``resume``), 2 bad usage or input (an unknown id, target, override or
executor), 130 interrupted.

Startup is kept short (``steadyrun --help`` is typer alone): the library, rich and YAML
are imported only by the commands that use them.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from steadyrun.cli import parse, render
from steadyrun.cli.parse import UsageProblem
from steadyrun.errors import SteadyrunError
from steadyrun.units import format_duration

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
RERUN_DEFAULT = "failed,cancelled,never-started"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # rich help costs ~100 ms of imports on every --help
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Configure, launch, watch and manage ML experiments.\n\n"
         "Exit codes: 0 success, 1 the experiment failed, 2 bad usage or input.",
)


def _plain_coercion() -> None:
    """Convert plain parameters without pydantic.

    typer >= 0.2x coerces every parameter through a pydantic ``TypeAdapter``: ~130 ms of
    imports and schema building on every command, more than the rest of ``steadyrun
    list``. Ours are ``str``, ``int``, ``float``, ``bool`` and ``list[str]``: those are
    converted here. Anything else, or a typer without these internals, keeps typer's
    own coercion (correct, only slower).
    """
    try:
        from dataclasses import dataclass

        from typer._coercion import RuntimeParam
        from typer.core import _TyperParameter
    except ImportError:
        return
    original = getattr(_TyperParameter, "get_runtime_param", None)
    if original is None or not hasattr(RuntimeParam, "_coerce_value"):
        return
    names = {str: "text", int: "integer", float: "number", bool: "boolean"}

    def convert(kind: type, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        if kind is bool and isinstance(value, str):
            word = value.strip().lower()
            if word in ("1", "true", "t", "yes", "y", "on"):
                return True
            if word in ("0", "false", "f", "no", "n", "off"):
                return False
        elif kind is not bool:
            try:
                return kind(value)
            except (TypeError, ValueError):
                pass
        raise typer.BadParameter(f"{value!r} is not a valid {names[kind]}.", ctx=ctx,
                                 param=param)

    @dataclass(frozen=True)
    class PlainParam(RuntimeParam):
        kind: type = str
        many: bool = False

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.many:
                return [convert(self.kind, v, param, ctx) for v in value]
            return convert(self.kind, value, param, ctx)

    def get_runtime_param(self: Any) -> Any:
        if getattr(self, "_runtime_param", None) is None:
            desc: Any = getattr(self, "type_descriptor", None)
            info: Any = getattr(desc, "parameter_info", None)
            ann: Any = getattr(desc, "annotation", None)
            many = getattr(ann, "__origin__", None) is list
            kind = ann.__args__[0] if many and len(ann.__args__) == 1 else ann
            plain = (kind in names and getattr(desc, "file_annotation", 1) is None
                     and info is not None and getattr(info, "parser", 1) is None
                     and getattr(info, "min", 1) is None and getattr(info, "max", 1) is None)
            if plain:
                self._runtime_param = PlainParam(parameter_info=info, annotation=ann,
                                                 kind=kind, many=many)
        return original(self)

    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]


_plain_coercion()


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
    try:
        app(args=args, prog_name="steadyrun", obj=obj)
    except SteadyrunError as exc:
        render.err(f"error: {exc}")
        raise SystemExit(EXIT_USAGE) from None
    except BrokenPipeError:  # `steadyrun logs ID | head`: stop quietly
        _silence_stdout()
        raise SystemExit(0) from None


# --- run --------------------------------------------------------------------------------


@app.command("run", context_settings={"ignore_unknown_options": True})
def run_cmd(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Argument(
        metavar="TARGET",
        help="module:function, a script file (.py runs with python, others with bash), "
             "or nothing when a command follows `--`.", show_default=False)] = None,
    args: Annotated[list[str] | None, typer.Argument(
        metavar="ARGS",
        help="key=value overrides of the function's arguments, or the script's arguments.",
        show_default=False)] = None,
    executor: Annotated[str, typer.Option(
        "--executor", "-e", metavar="NAME", help="Where to run.")] = "local",
    strategy: Annotated[str | None, typer.Option(
        metavar="NAME", help="Local strategy: subprocess (default), process, thread or sequential.",
        show_default=False)] = None,
    name: Annotated[str | None, typer.Option(
        metavar="NAME", help="Task name (default: the function's or script's name).",
        show_default=False)] = None,
    title: Annotated[str | None, typer.Option(
        metavar="TITLE", help="Experiment title (default: the task name).",
        show_default=False)] = None,
    sweep: Annotated[bool, typer.Option(
        "--sweep", help="Values with commas (lr=1e-3,1e-4) become a grid of tasks.")] = False,
    cpus: Annotated[float | None, typer.Option(
        metavar="N", help="CPUs per task.", show_default=False)] = None,
    memory: Annotated[str | None, typer.Option(
        metavar="SIZE", help="Memory per task, e.g. 4GiB.", show_default=False)] = None,
    gpus: Annotated[int | None, typer.Option(
        metavar="N", help="GPUs per task.", show_default=False)] = None,
    timeout: Annotated[str | None, typer.Option(
        metavar="DURATION", help="Per-attempt time limit, e.g. 90s or 2h.",
        show_default=False)] = None,
    dryrun: Annotated[bool, typer.Option(
        "--dryrun", "--dry-run",
        help="Print the resolved config and what would run where; start and write "
             "nothing.")] = False,
    detach: Annotated[bool, typer.Option(
        "--detach", help="Start in the background and print the experiment id.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress lines on stderr.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run a function, a script or a command as an experiment.

    \b
      steadyrun run train:main lr=0.01 model.hidden=512
      steadyrun run train:main lr=1e-3,1e-4 batch_size=32,64 --sweep
      steadyrun run prepare.py --input data/ --dryrun
      steadyrun run --name hello -- echo hello world

    Without --detach it waits, prints a table of the tasks and exits 0 when every task
    succeeded, 1 otherwise.
    """
    passthrough = (ctx.obj or {}).get("passthrough")
    extra = list(args or [])
    if target is None and passthrough is None:
        raise UsageProblem("nothing to run: give module:function, a script file, or "
                           "`-- COMMAND ...`; see `steadyrun run --help`")
    if target is None:  # `steadyrun run [OPTIONS] -- CMD ARGS`
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
    exe = parse.make_executor(executor, strategy)
    title = title or shown

    if dryrun:
        render.print_dryrun(title, tasks, exe)
        return

    import steadyrun as run

    exp = run.Experiment(tasks, title=title, executor=exe, progress=not (quiet or detach))
    if detach:
        exp.run(detach=True)
        render.out(str(exp.id))
        render.err(f"started {exp.id} in the background; watch it with "
                   f"`steadyrun status {exp.id}` or `steadyrun logs {exp.id} --follow`")
        return
    _finish(lambda: exp.run(), lambda: exp.id, as_json)


def _finish(start: Any, exp_id: Any, as_json: bool) -> None:
    """Run ``start()`` (``exp.run`` or ``exp.resume``), print the outcome, set the exit code."""
    import steadyrun as run

    try:
        result = start()
    except run.ExperimentFailed as exc:
        if exc.result is not None:
            render.print_result(exc.result, as_json)
        render.err(str(exc))
        raise typer.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        known = exp_id()
        render.err("interrupted: running tasks were cancelled"
                   + (f"; `steadyrun resume {known}` runs what did not finish" if known else ""))
        raise typer.Exit(EXIT_INTERRUPTED) from None
    render.print_result(result, as_json)


# --- read and manage --------------------------------------------------------------------


@app.command("list")
def list_cmd(
    title: Annotated[str | None, typer.Option(
        metavar="TITLE", help="Only experiments with this title.", show_default=False)] = None,
    state: Annotated[str | None, typer.Option(
        metavar="STATE", help="Only experiments in this state (running, succeeded, failed, ...).",
        show_default=False)] = None,
    limit: Annotated[int, typer.Option(
        metavar="N", help="At most this many, newest first; 0 for all.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List experiments, newest first."""
    from steadyrun.manage import list_experiments

    infos = list_experiments(title=title, state=state, limit=limit or None)
    if as_json:
        render.print_json([i.to_dict() for i in infos])
        return
    if not infos:
        from steadyrun.store.db import default_home

        where = " matching " + ", ".join(
            f"{k}={v}" for k, v in (("title", title), ("state", state)) if v) \
            if title or state else ""
        render.out(f"no experiments{where} in {default_home()}")
        return
    rows = [[i.id, render.state_label(i.state, i.controller_dead),
             render.summarize_counts(i.counts) or i.tasks, render.fmt_ago(i.created_at),
             format_duration(render.elapsed(i.started_at, i.ended_at)), i.title]
            for i in infos]
    render.print_table(["id", "state", "tasks", "created", "duration", "title"], rows,
                       state_column=1)


@app.command("status")
def status_cmd(
    exp_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id or unique prefix.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show an experiment's state and every task's."""
    from steadyrun.manage import experiment_status

    store, full = _open(exp_id)
    st = experiment_status(store, full)
    if as_json:
        render.print_json(st.to_dict())
        return
    controller = st.controller or {}
    state = st.state
    if st.controller_dead:
        state = f"{st.state} — controller dead; `{st.next_step}`"
    counts: dict[str, int] = {}
    for t in st.tasks:
        counts[t.state] = counts.get(t.state, 0) + 1
    render.print_fields([
        ("experiment", st.id), ("title", st.title), ("state", state),
        ("created", render.fmt_time(st.created_at)),
        ("started", render.fmt_time(st.started_at)),
        ("ended", render.fmt_time(st.ended_at)),
        ("duration", format_duration(render.elapsed(st.started_at, st.ended_at))),
        ("controller", render.describe_controller(controller)),
        ("tasks", f"{len(st.tasks)}: {render.summarize_counts(counts)}"),
    ])
    render.out()
    rows = []
    for t in st.tasks:
        problem = t.kind or ""
        if t.state == "failed" and t.exit_code not in (None, 0):
            problem += f" (exit {t.exit_code})"
        rows.append([t.name, t.state, t.attempts, problem, format_duration(t.duration),
                     t.host or "", render.short(t.message or "", 60)])
    render.print_table(["task", "state", "attempts", "failure", "duration", "host", "message"],
                       rows, state_column=1)
    failed = [t.name for t in st.tasks if t.state == "failed"]
    if failed:
        render.out(f"\nsee `steadyrun logs {st.id} {failed[0]}`; `steadyrun resume {st.id}` "
                   "reruns what did not succeed")


@app.command("logs")
def logs_cmd(
    exp_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id or unique prefix.")],
    task: Annotated[str | None, typer.Argument(
        metavar="TASK", help="Only this task (default: every task, lines prefixed with [task]).",
        show_default=False)] = None,
    attempt: Annotated[int | None, typer.Option(
        metavar="N", help="This attempt (1, 2, ...); default: the latest.",
        show_default=False)] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing until the attempt ends.")] = False,
    stream: Annotated[str, typer.Option(metavar="STREAM", help="stdout, stderr or both.")] = "both",
) -> None:
    """Print a task's output (stdout and stderr)."""
    if stream not in ("stdout", "stderr", "both"):
        raise UsageProblem(f"--stream {stream!r}: choose stdout, stderr or both")
    from steadyrun.manage import iter_logs

    store, full = _open(exp_id)
    if task is None:  # one task: its lines need no "[task] " prefix
        names = [t.name for t in store.tasks(full)]
        task = names[0] if len(names) == 1 else None
    try:
        for line in iter_logs(store, full, task, attempt=attempt, follow=follow,
                              stream=stream):
            sys.stdout.write(line if line.endswith("\n") else line + "\n")
            if follow:
                sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command("cancel")
def cancel_cmd(
    exp_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id or unique prefix.")],
    task: Annotated[str | None, typer.Argument(
        metavar="TASK", help="Only this task (default: the whole experiment).",
        show_default=False)] = None,
) -> None:
    """Cancel a running experiment, or one of its tasks."""
    from steadyrun.manage import cancel

    store, full = _open(exp_id)
    render.out(cancel(store, full, task))


@app.command("resume")
def resume_cmd(
    exp_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id or unique prefix.")],
    rerun: Annotated[str, typer.Option(
        metavar="WHICH", help="Which tasks to run again, comma-separated.")] = RERUN_DEFAULT,
    detach: Annotated[bool, typer.Option(
        "--detach", help="Resume in the background and return at once.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run again what did not succeed, as it was defined and from where it was launched.

    Exits 1 if something fails again, 2 (changing nothing) when another live controller
    drives the experiment.
    """
    from steadyrun.experiment import Experiment

    exp = Experiment.from_id(exp_id)
    which = tuple(w.strip() for w in rerun.split(",") if w.strip())
    if not which:
        raise UsageProblem("--rerun is empty: give e.g. failed,cancelled,never-started")
    if detach:
        exp.resume(rerun=which, detach=True)
        render.out(str(exp.id))
        render.err(f"resumed {exp.id} in the background; watch it with "
                   f"`steadyrun status {exp.id}`")
        return
    _finish(lambda: exp.resume(rerun=which), lambda: exp.id, as_json)


# --- watch ------------------------------------------------------------------------------


@app.command("monitor")
def monitor_cmd(
    exp_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id or unique prefix.")],
    once: Annotated[bool, typer.Option(
        "--once", help="Print one frame and exit (plain text when not a terminal).")] = False,
    interval: Annotated[float, typer.Option(
        metavar="SECONDS", help="Seconds between redraws.")] = 1.0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Draw nothing; print the summary as JSON at the end (at once with "
        "--once).")] = False,
) -> None:
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
        raise typer.Exit(EXIT_INTERRUPTED) from None
    final = row.state in FINAL_EXPERIMENT_STATES
    dead = not final and controller_dead(row)
    if final or dead or as_json:
        render.print_summary(store, full, as_json)
    if dead:  # it says running, but no controller drives it any more
        render.err(f"experiment {full} is {row.state} but its controller is gone; "
                   f"`steadyrun resume {full}` runs what did not finish")
        raise typer.Exit(EXIT_FAILED)


@app.command("report")
def report_cmd(
    exp_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id or unique prefix.")],
    out: Annotated[str | None, typer.Option(
        metavar="DIR", help="Folder for report.png and report.html (default: the "
        "experiment's report/ folder in the store).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the paths as JSON.")] = False,
) -> None:
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
def resources_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    cpu_interval: Annotated[float, typer.Option(
        metavar="SECONDS", help="How long to measure how busy the CPUs are.")] = 0.2,
) -> None:
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


def _open(exp_id: str) -> tuple[Any, str]:
    """The store and the full id of the experiment ``exp_id`` names (any unique prefix).

    Read commands use the store directly rather than ``Experiment.from_id``: that loads
    the definition, which imports every task's target (slow, and impossible where the
    user's modules are not on the path)."""
    from steadyrun.store.db import Store

    store = Store()
    return store, store.resolve_id(exp_id)


def _suggest_option(text: str, ctx: typer.Context) -> str:
    import difflib

    options = [o for p in ctx.command.params for o in p.opts if o.startswith("-")]
    close = difflib.get_close_matches(text.split("=")[0], options, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _silence_stdout() -> None:
    # after EPIPE, Python's final flush of stdout would print a second error
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
