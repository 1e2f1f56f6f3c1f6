"""``steadyrun ui``: serve the local web dashboard."""

from __future__ import annotations

import contextlib

import click

from steadyrun.cli import render
from steadyrun.cli.base import Command, flag
from steadyrun.cli.parse import UsageProblem


@click.command("ui", cls=Command)
@click.option("--host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="Address to listen on (loopback by default: only this machine).")
@click.option("--port", type=int, default=0, show_default=True, metavar="PORT",
              help="Port to listen on; 0 picks a free one.")
@flag("--open", "open_browser", help="Open the address in a web browser.")
@flag("--read-only", "read_only", help="Hide the cancel and resume buttons and refuse "
                                       "actions.")
def ui_cmd(host: str, port: int, open_browser: bool, read_only: bool) -> None:
    """Serve a live web dashboard of the store: experiments, tasks, timelines,
    resource charts, logs, sweep results; cancel and resume from the page.

    Prints an address with a random token; requests without it get 403. Needs the
    `ui` extra: pip install 'steadyrun[ui]'. Stop with Ctrl-C.
    """
    try:
        import uvicorn

        from steadyrun.ui.app import create_app, new_token
    except ImportError:
        raise UsageProblem("steadyrun ui needs the ui extra: pip install "
                           "'steadyrun[ui]'") from None
    import socket

    token = new_token()
    app = create_app(token, read_only=read_only)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections made as soon as the address is printed wait
    except OSError as exc:
        raise UsageProblem(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/?token={token}"
    render.out(url)
    render.err("steadyrun ui" + (" (read-only)" if read_only else "")
               + f" serving on {shown}:{bound}; Ctrl-C stops it")
    import sys

    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
