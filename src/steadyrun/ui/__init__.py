"""``steadyrun ui``: a local web dashboard of the store.

Pages: the experiments (filtered, paged), one experiment (its task table updating live,
the timeline of attempts, the dependency graph, actions), one task (its attempts, the
failure explanation with the traceback, CPU / RSS / GPU memory charts, logs that follow
live) and a sweep's results (a sortable table and a parallel-coordinates chart).

Needs the ``ui`` extra (``pip install 'steadyrun[ui]'``: Starlette and uvicorn). The
server only reads the store, except for the cancel and resume buttons, which call the
same functions as ``steadyrun cancel`` and ``steadyrun resume`` (refused with
``--read-only``). See :func:`steadyrun.ui.app.create_app`.
"""
