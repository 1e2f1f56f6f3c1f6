"""The scheduler loop: one engine for every executor.

It owns the DAG, admission by resources, retries with backoff, degradation, timeouts and
cancellation, and it is the only writer of decisions to the store.
"""
