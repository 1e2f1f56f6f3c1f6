"""Run attempts on this machine: in sequence, in threads, in a pool of reusable worker
processes, or in a fresh process each."""

from steadyrun.executors.local.executor import LocalExecutor

__all__ = ["LocalExecutor"]
