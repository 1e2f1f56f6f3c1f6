"""The attempt folder and what runs inside it.

One attempt of a task owns one folder. This layer is its only owner: the file names, the
atomic writes, the identity file a worker writes before its payload starts, the payload,
result, error, logs and samples, the function that turns how an attempt ended into an
``Outcome``, and the worker entry point (``python -m steadyrun.attempt.worker DIR``).
Executors and the engine read and write an attempt folder only through it.
"""
