"""``python -m steadyrun`` is the ``steadyrun`` command."""

from steadyrun.cli import main

if __name__ == "__main__":
    main()
