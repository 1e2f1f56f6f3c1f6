"""Overhead of map_batches per batch, next to a plain loop over the same batches.

    python bench/map_batches.py [--items 100000] [--batch-size 100] [--workers 2] [--repeat 3]

Each row runs the same function over the same batches (``batched(range(items),
batch_size)``) and prints wall time per batch: map_batches, the plain loop
``for b in batched(...): out.extend(fn(b))``, the difference (map_batches' overhead),
and for thread/process the matching ``concurrent.futures`` pool's ``map`` over the
batches. ``release`` is map_batches' ``release_every``: 1 (the default) collects garbage
after every batch, which is most of the in-thread cost when the heap is large. Each
figure is the best of ``--repeat`` runs (executor rows include starting the pool).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import steadyrun as run  # noqa: E402
from steadyrun.practices.batching import batched, map_batches  # noqa: E402


def work(batch: list[int]) -> list[int]:
    """A few microseconds per batch of 100: small, so the overhead shows."""
    return [x * x for x in batch]


def plain_loop(items: int, size: int) -> float:
    start = time.perf_counter()
    out: list[int] = []
    for b in batched(range(items), size):
        out.extend(work(b))
    return time.perf_counter() - start


def pool_map(kind: str, items: int, size: int, workers: int) -> float:
    pool_cls = cf.ThreadPoolExecutor if kind == "thread" else cf.ProcessPoolExecutor
    start = time.perf_counter()
    out: list[int] = []
    with pool_cls(max_workers=workers) as pool:
        for r in pool.map(work, batched(range(items), size)):
            out.extend(r)
    return time.perf_counter() - start


def ours(strategy: str | None, items: int, size: int, workers: int,
         release: int | None) -> float:
    ex = None if strategy is None else run.LocalExecutor(strategy=strategy,
                                                         max_workers=workers)
    start = time.perf_counter()
    out = map_batches(work, range(items), size, executor=ex, release_every=release,
                      progress=False)
    elapsed = time.perf_counter() - start
    assert len(out) == items and out[-1] == (items - 1) ** 2
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor-items", type=int, default=20_000,
                    help="items for the executor rows (each batch is one attempt)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = ap.parse_args()

    def best(fn, *a):  # noqa: ANN001, ANN202
        return min(fn(*a) for _ in range(args.repeat))

    size, w = args.batch_size, args.workers
    us = 1e6
    print(f"{args.items} items here / {args.executor_items} on executors, batches of {size}, "
          f"{w} workers; microseconds per batch\n")
    print(f"{'executor':<12} {'release':>7} {'map_batches':>12} {'plain loop':>11} "
          f"{'overhead':>9} {'cf pool':>9}")
    rows = [(None, 1), (None, None), ("sequential", None), ("thread", None),
            ("process", None)]
    for strategy, release in rows:
        items = args.items if strategy is None else args.executor_items
        n = -(-items // size)
        plain = best(plain_loop, items, size) / n
        mine = best(ours, strategy, items, size, w, release) / n
        pool = (f"{best(pool_map, strategy, items, size, w) / n * us:9.1f}"
                if strategy in ("thread", "process") else f"{'-':>9}")
        print(f"{strategy or 'none':<12} {release or '-'!s:>7} {mine * us:12.1f} "
              f"{plain * us:11.1f} {(mine - plain) * us:9.1f} {pool}")


if __name__ == "__main__":
    main()
