"""The ``steadyrun`` command (``steadyrun.cli.main:main``). Loads click and rich only
when the command runs."""
