"""The click classes the ``steadyrun`` command is built from.

Plain click, through its public API, with a few additions: commands are listed in the
order they were added (not sorted), arguments take a ``help`` text, a command's
``--help`` shows its arguments in an ``Arguments:`` section before the options, and
float options are "numbers" in error messages.
"""

from __future__ import annotations

from typing import Any

import click


class Number(click.ParamType):
    """A float, called a number in error messages ("'x' is not a valid number.")."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid number.", param, ctx)


NUMBER = Number()


class Argument(click.Argument):
    """A positional argument with a ``help`` text, shown as ``[NAME]`` in the usage line
    when optional and ``NAME...`` when it takes any number of values."""

    def __init__(self, param_decls: list[str], help: str | None = None,  # noqa: A002
                 **kwargs: Any) -> None:
        super().__init__(param_decls, **kwargs)
        self.help = help

    def shown_name(self) -> str:
        return self.metavar or (self.name or "").upper()

    def make_metavar(self, ctx: click.Context | None = None) -> str:
        shown = self.shown_name()
        if not self.required:
            shown = f"[{shown}]"
        if self.nargs != 1:
            shown += "..."
        return shown

    def help_record(self) -> tuple[str, str] | None:
        if not self.help:
            return None
        return self.shown_name(), self.help + ("  [required]" if self.required else "")


class Command(click.Command):
    """A command whose help lists its arguments (``Arguments:``), then its options.
    The section is drawn here rather than by click, whose own (from click 8.5 on) has
    another title and no ``[required]`` marks."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_arguments(ctx, formatter)
        self.format_options(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = [r for p in self.get_params(ctx)
                   if isinstance(p, Argument) and (r := p.help_record()) is not None]
        if records:
            with formatter.section("Arguments"):
                formatter.write_dl(records)


class Group(click.Group):
    """The top-level command: its subcommands are :class:`Command` and are listed in
    the order they were added."""

    command_class = Command

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def argument(*param_decls: str, **kwargs: Any) -> Any:
    """``click.argument`` making an :class:`Argument` (which takes ``help``)."""
    return click.argument(*param_decls, cls=Argument, **kwargs)


def flag(*param_decls: str, help: str) -> Any:  # noqa: A002
    """A boolean option that is False unless given."""
    return click.option(*param_decls, is_flag=True, default=False, help=help)
