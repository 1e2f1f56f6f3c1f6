"""The ``steadyrun`` command (``steadyrun.cli.main:main``). Loads typer and rich only
when the command runs."""
