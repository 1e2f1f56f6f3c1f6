"""batching: lazy batches, ordered results on every LocalExecutor strategy, flat memory."""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import os
import sys
import time

import psutil
import pytest

from steadyrun.errors import SteadyrunError
from steadyrun.executors.local.executor import LocalExecutor
from steadyrun.practices.batching import (
    BatchFailed,
    BatchingError,
    BatchOutOfMemory,
    batched,
    map_batches,
)

MiB = 1024**2


# module-level so the process strategies can pickle them by reference
def double_each(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


def slow_first(batch: list[int]) -> list[int]:
    import time

    if batch[0] == 0:
        time.sleep(0.3)  # finishes last: results must still come back in input order
    return [x * 10 for x in batch]


def fail_on_six(batch: list[int]) -> list[int]:
    if 6 in batch:
        raise ValueError("batch with 6 is bad")
    return batch


def out_of_memory(batch: list[int]) -> list[int]:
    raise MemoryError("no room")


def chatty(batch: list[int]) -> int:
    print(f"batch starting at {batch[0]}")
    return sum(batch)


# --- batched ---------------------------------------------------------------------------------


def test_batched_keeps_the_last_short_batch():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
    assert list(batched("abcd", 2)) == [["a", "b"], ["c", "d"]]


def test_batched_is_lazy_on_an_endless_generator():
    pulled: list[int] = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield i

    it = batched(endless(), 4)
    assert pulled == []  # nothing read before the first batch is asked for
    assert next(it) == [0, 1, 2, 3]
    assert next(it) == [4, 5, 6, 7]
    assert len(pulled) == 8


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "3"])
def test_batched_bad_size_raises_at_once(size):
    with pytest.raises(BatchingError) as info:
        batched(range(3), size)
    assert isinstance(info.value, SteadyrunError) and isinstance(info.value, ValueError)


# --- map_batches: here -------------------------------------------------------------------------


def test_map_batches_here_flattens_lists_and_keeps_other_results_per_batch():
    assert map_batches(double_each, range(10), 3) == [x * 2 for x in range(10)]
    assert map_batches(sum, range(10), 4) == [6, 22, 17]
    assert map_batches(tuple, range(5), 2) == [(0, 1), (2, 3), (4,)]


def test_map_batches_here_reads_input_lazily():
    pulled = [0]

    def source():
        for i in range(1000):
            pulled[0] += 1
            yield i

    seen: list[int] = []

    def fn(batch: list[int]) -> list[int]:
        seen.append(pulled[0])
        return batch

    assert map_batches(fn, source(), 100) == list(range(1000))
    assert seen == [100 * (i + 1) for i in range(10)]  # one batch read at a time


def test_map_batches_here_error_propagates_with_a_note():
    with pytest.raises(ValueError, match="batch with 6") as info:
        map_batches(fail_on_six, range(10), 3)
    assert "in batch 2 (items 6-8)" in "\n".join(info.value.__notes__)


def test_release_every_is_honoured(monkeypatch):
    calls = [0]
    real = gc.collect

    def counting(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(gc, "collect", counting)
    map_batches(double_each, range(100), 10, release_every=1)
    assert calls[0] == 10
    calls[0] = 0
    map_batches(double_each, range(100), 10, release_every=3)
    assert calls[0] == 3  # after batches 3, 6, 9
    calls[0] = 0
    map_batches(double_each, range(100), 10, release_every=None)
    assert calls[0] == 0
    calls[0] = 0  # on an executor the release happens where the batch ran (here: a thread)
    map_batches(double_each, range(100), 10, LocalExecutor(strategy="thread", max_workers=2),
                release_every=5)
    assert calls[0] == 2


def test_progress_callback_is_called_in_order():
    seen: list[tuple[int, int]] = []
    map_batches(double_each, range(25), 10, progress=lambda b, n: seen.append((b, n)))
    assert seen == [(1, 10), (2, 20), (3, 25)]


def test_bad_arguments():
    with pytest.raises(BatchingError):
        map_batches(double_each, range(3), 0)
    with pytest.raises(BatchingError):
        map_batches(double_each, range(3), 2, release_every=-1)
    with pytest.raises(BatchingError):
        map_batches("not callable", range(3), 2)  # type: ignore[arg-type]


# --- map_batches: on executors ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["sequential", "thread", "process"])
def test_map_batches_keeps_order_on_each_strategy(strategy):
    ex = LocalExecutor(strategy=strategy, max_workers=2)
    assert map_batches(slow_first, range(23), 4, executor=ex) == [x * 10 for x in range(23)]
    # non-list results come back one per batch, in order, from a generator input
    assert map_batches(sum, (i for i in range(10)), 3, executor=ex) == [3, 12, 21, 9]


def test_map_batches_subprocess_strategy_reads_results_from_files():
    ex = LocalExecutor(strategy="subprocess", max_workers=2)
    assert map_batches(double_each, range(6), 2, executor=ex) == [0, 2, 4, 6, 8, 10]


def test_map_batches_bounds_batches_in_flight():
    pulled = [0]

    def source():
        for i in range(400):
            pulled[0] += 1
            yield i

    ahead: list[int] = []

    def fn(batch: list[int]) -> list[int]:
        ahead.append(pulled[0] - (batch[0] + len(batch)))
        time.sleep(0.002)  # slow enough for the pipeline to fill up
        return batch

    ex = LocalExecutor(strategy="thread", max_workers=2)
    assert map_batches(fn, source(), 10, executor=ex) == list(range(400))
    # 2 workers: 4 batches in flight, at most 8 read and not handed back, so at most 7
    # batches of 10 items beyond the one running
    assert 10 <= max(ahead) <= 7 * 10
    ahead.clear()
    pulled[0] = 0
    map_batches(fn, source_again := source(), 10, executor=ex, max_in_flight=1)
    assert max(ahead) <= 10 and next(source_again, None) is None


def test_a_failed_batch_on_an_executor_raises_batch_failed_with_the_remote_traceback():
    ex = LocalExecutor(strategy="process", max_workers=2)
    with pytest.raises(BatchFailed) as info:
        map_batches(fail_on_six, range(12), 3, executor=ex)
    err = info.value
    assert err.index == 2 and err.items == range(6, 9) and err.kind == "error"
    assert "batch with 6 is bad" in str(err)
    assert "fail_on_six" in err.remote_traceback
    assert not isinstance(err, MemoryError)


def test_an_oom_batch_on_an_executor_is_also_a_memory_error():
    ex = LocalExecutor(strategy="thread", max_workers=1)
    with pytest.raises(BatchOutOfMemory) as info:
        map_batches(out_of_memory, range(4), 2, executor=ex)
    assert isinstance(info.value, MemoryError) and info.value.kind == "oom"


def test_output_of_batches_on_a_process_pool_is_echoed_in_order(capfd):
    ex = LocalExecutor(strategy="process", max_workers=2)
    assert map_batches(chatty, range(9), 3, executor=ex) == [3, 12, 21]
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("batch starting")]
    assert lines == ["batch starting at 0", "batch starting at 3", "batch starting at 6"]


# --- memory stays flat -------------------------------------------------------------------------


def _tree_rss() -> int:
    me = psutil.Process(os.getpid())
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it may have just exited
            total += child.memory_info().rss
    return total


def _kib_items(n: int):
    for _ in range(n):
        yield bytes(1024)  # a new 1 KiB object each: 100 MiB over 1,000 batches of 100


@pytest.mark.parametrize("strategy", [None, "thread", "process"])
def test_memory_stays_flat_over_a_thousand_batches(strategy):
    rss: dict[int, int] = {}

    def probe(batches: int, items: int) -> None:
        if batches in (100, 1000):
            rss[batches] = _tree_rss()

    ex = None if strategy is None else LocalExecutor(strategy=strategy, max_workers=2)
    # no releases: memory must stay flat because nothing is held, not because of gc
    out = map_batches(len, _kib_items(100_000), 100, executor=ex, progress=probe,
                      release_every=None)
    assert out == [100] * 1000
    growth = rss[1000] - rss[100]
    assert growth < 20 * MiB, f"grew {growth / MiB:.1f} MiB from batch 100 to 1000"


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_when_disabled(monkeypatch):
    term = _FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    map_batches(double_each, range(30), 10)
    assert "3/3" in term.getvalue() and "batches" in term.getvalue()
    for stream, progress in ((_FakeTerminal(), False), (io.StringIO(), None)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert map_batches(double_each, range(30), 10, progress=progress) == [
            x * 2 for x in range(30)]
        assert stream.getvalue() == ""
