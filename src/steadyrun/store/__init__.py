"""The store: SQLite for experiments, tasks, attempts, events and samples, plus one folder
per experiment. Every write that must survive a crash is a transaction or an atomic
rename.

- :mod:`~steadyrun.store.db`: the database, the controller lock, attempt folders;
- :mod:`~steadyrun.store.definition`: an experiment's definition, written once and read
  back whole (tasks with their executors, launch folder, import path);
- :mod:`~steadyrun.store.results`: rows to ``TaskResult``, the one mapping every reader uses;
- :mod:`~steadyrun.store.liveness`: whether a controller is alive, or an experiment dead.
"""
