"""Watching: machine resources, memory hygiene, process-tree sampling, GPUs, the live
view and reports. ``run.resources``, ``run.memory`` and ``run.monitor`` are modules here.
"""
