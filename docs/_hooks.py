"""mkdocs hook: the CLI reference shows each command's ``--help`` as the installed
``steadyrun`` prints it, so the page cannot drift from the code.

``docs/reference/cli.md`` holds a ``<!-- help: COMMAND -->`` line per command
(``<!-- help: -->`` for the top level); each becomes a code block with that help text.
The build fails when a command has no such line, or a line names no command.
"""

from __future__ import annotations

import re
from typing import Any

_MARKER = re.compile(r"^<!-- help:\s*([\w-]*)\s*-->$", re.MULTILINE)
_WIDTH = 88


def _help_texts() -> dict[str, str]:
    import sys
    from pathlib import Path

    import click

    src = str(Path(__file__).resolve().parent.parent / "src")
    if src not in sys.path:  # the checkout's steadyrun, even where it is not installed
        sys.path.insert(0, src)
    from steadyrun.cli.main import app  # a click.Group

    settings = dict(app.context_settings, terminal_width=_WIDTH, max_content_width=_WIDTH)
    texts = {}
    with click.Context(app, info_name="steadyrun", **settings) as ctx:
        texts[""] = app.get_help(ctx)
        for name in app.list_commands(ctx):
            command = app.get_command(ctx, name)
            assert command is not None
            with click.Context(command, info_name=name, parent=ctx,
                               **dict(settings, **command.context_settings)) as sub:
                texts[name] = command.get_help(sub)
    return texts


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != "reference/cli.md":
        return markdown
    from mkdocs.exceptions import PluginError

    texts = _help_texts()
    named = _MARKER.findall(markdown)
    unknown = [n for n in named if n not in texts]
    missing = [n for n in texts if n not in named]
    if unknown or missing:
        raise PluginError(
            "reference/cli.md: "
            + (f"no command {', '.join(unknown)}; " if unknown else "")
            + (f"no help marker for {', '.join(m or '(top level)' for m in missing)}"
               if missing else ""))
    return _MARKER.sub(lambda m: f"```text\n{texts[m.group(1)].rstrip()}\n```", markdown)
