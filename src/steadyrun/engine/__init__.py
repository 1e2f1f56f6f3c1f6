"""The scheduler loop: one engine for every executor.

It owns the DAG, admission by resources, retries with backoff, degradation, timeouts and
cancellation, and it is the only writer of decisions to the store.

- :mod:`~steadyrun.engine.loop`: :class:`Engine`, the loop (plan, launch, wait) and
  :meth:`Engine.snapshot`, the read-only view the live table uses;
- :mod:`~steadyrun.engine.book`: the tasks, their DAG, and what each outcome does;
- :mod:`~steadyrun.engine.decisions`: the pure rules (``classify``, ``next_step``);
- :mod:`~steadyrun.engine.ledger`: capacity reserved per executor, and its free slots;
- :mod:`~steadyrun.engine.settle`: the record of a run that ended by an exception;
- :mod:`~steadyrun.engine.watch`: resource sampling, memory limits, OOM evidence;
- :mod:`~steadyrun.engine.crashpoints`: named points where crash tests kill it.
"""
