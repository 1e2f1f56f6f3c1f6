"""``python -m steadyrun`` is the ``steadyrun`` command."""

from steadyrun.cli.main import main

if __name__ == "__main__":
    main()
