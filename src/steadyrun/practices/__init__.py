"""The practices of careful execution as library calls: adaptive batch sizes, time
budgets, batching and in-process retries with backoff.
"""
