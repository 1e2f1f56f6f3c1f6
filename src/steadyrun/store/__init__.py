"""The store: SQLite for experiments, tasks, attempts, events and samples, plus one folder
per experiment. Every write that must survive a crash is a transaction or an atomic
rename. The store is private (files 0600, folders 0700, a home of someone else's
refused) and every failure of it is a named ``StoreError``.

- :mod:`~steadyrun.store.db`: the database, the controller lock, attempt folders;
- :mod:`~steadyrun.store.connection`: opening (writable or read-only), transactions;
- :mod:`~steadyrun.store.schema`: the tables, how the database is opened, rows;
- :mod:`~steadyrun.store.files`: owner-only files and folders, the checks on paths;
- :mod:`~steadyrun.store.problems`: failures in words (full disk, damage, read-only);
- :mod:`~steadyrun.store.definition`: an experiment's definition, written once and read
  back whole (tasks with their executors, launch folder, import path);
- :mod:`~steadyrun.store.results`: rows to ``TaskResult``, the one mapping every reader uses;
- :mod:`~steadyrun.store.liveness`: whether a controller is alive, or an experiment dead.
"""
