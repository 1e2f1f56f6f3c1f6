"""How a ``steadyrun`` command ends: its exit code, and quiet ends of closed pipes.

:func:`run_command` runs the click group itself rather than through click's standalone
mode, whose handler turns a closed stdout (``steadyrun logs ID | head -1``) into exit
code 1. Here:

- 0: success, and also a reader that stopped reading (``| head``): nothing more is
  written, no traceback and no "Exception ignored" line appear;
- 1: the experiment failed (the commands raise ``click.exceptions.Exit(1)`` themselves);
- 2: bad usage (click's own errors, shown as click shows them) or any
  :class:`~steadyrun.errors.SteadyrunError`, printed as ``error: ...``;
- 130: interrupted (Ctrl-C).

A ``BrokenPipeError`` that did not come from stdout (a pipe to a child process) is a
real failure and is raised as it is.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from steadyrun.cli import render
from steadyrun.errors import SteadyrunError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def run_command(app: Any, args: list[str], obj: dict[str, Any]) -> int:
    """Run ``app`` (a ``click.Group``) on ``args``; return the exit code (see module
    docs). Everything the command printed is flushed before this returns."""
    try:
        code = _invoke(app, args, obj)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not stdout_closed():
            raise
        silence_stdout()
        return EXIT_OK


def stdout_closed() -> bool:
    """Whether nobody reads our stdout any more (its pipe's reader closed it). When
    that cannot be told, a broken pipe is taken to be stdout's, the usual case."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError):
        return True
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in events)


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush of what is still
    buffered does not fail a second time (the "Exception ignored" line)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _invoke(app: Any, args: list[str], obj: dict[str, Any]) -> int:
    import click

    try:
        with app.make_context("steadyrun", list(args), obj=obj) as ctx:
            app.invoke(ctx)
        return EXIT_OK
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except SteadyrunError as exc:
        render.err(f"error: {exc}")
        return EXIT_USAGE
    except click.ClickException as exc:  # usage errors: shown the way click shows them
        exc.show()
        return int(exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        render.err("interrupted")
        return EXIT_INTERRUPTED
    except EOFError:  # a prompt met the end of stdin
        render.err("aborted: no input")
        return EXIT_FAILED
