"""The ``steadyrun`` command (also ``python -m steadyrun``).

Read commands print plain text, or JSON with ``--json`` for scripts. Exit codes: 0
success, 1 the experiment failed, 2 bad usage or input.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from steadyrun.errors import SteadyrunError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Configure, launch, watch and manage ML experiments.")


@app.command("list")
def list_cmd(
    title: Annotated[str | None, typer.Option(help="Only experiments with this title.")] = None,
    state: Annotated[str | None, typer.Option(help="Only experiments in this state.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List experiments in the store, newest first."""
    from steadyrun.store import Store

    store = Store()
    rows = store.list_experiments(title=title, state=state, limit=limit)
    if as_json:
        typer.echo(json.dumps([
            {k: r[k] for k in ("id", "title", "state", "created_at", "ended_at")}
            for r in rows], indent=2))
        return
    if not rows:
        typer.echo(f"no experiments in {store.home}")
        return
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        typer.echo(f"{r.id:<48} {r.state:<10} {created}  {r.title}")


@app.command("version")
def version_cmd() -> None:
    """Print steadyrun's version."""
    from steadyrun import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the console script: runs the CLI, mapping our errors to exit 2."""
    try:
        app()
    except SteadyrunError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from exc
