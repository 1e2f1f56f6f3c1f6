"""adapt: OOM backoff under a real memory bound, measured batch sizes, time budgets."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time

import pytest

from steadyrun.errors import SteadyrunError, TaskDefinitionError
from steadyrun.practices import adapt
from steadyrun.practices.adapt import (
    AdaptError,
    BatchSizeError,
    TimeBudget,
    adaptive_batch_size,
    find_executable_batch_size,
    is_oom,
    measure_per_item_bytes,
)

MiB = 1024**2
GiB = 1024**3

# A child interpreter whose address space is capped at what it uses now + 1.5 GiB: a
# payload allocating batch_size * 8 MiB fits at 128 (1 GiB) and fails from 256 (2 GiB).
_BOUNDED = """
import json, resource
from steadyrun.practices.adapt import find_executable_batch_size

def vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

PREPARE
limit = vm_size() + 1536 * 1024**2
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

@find_executable_batch_size(starting_batch_size=1024)
def step(batch_size):
    ALLOCATE
    return SIZE

n = step()
print(json.dumps({"batch": step.batch_size, "history": step.history, "n": n}))
"""


def _run_bounded(subprocess_env: dict[str, str], prepare: str, allocate: str,
                 size: str) -> dict:
    code = (_BOUNDED.replace("PREPARE", prepare).replace("ALLOCATE", allocate)
            .replace("SIZE", size))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=subprocess_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- find_executable_batch_size -------------------------------------------------------------


def test_settles_on_the_largest_batch_that_fits_under_a_real_memory_bound(subprocess_env):
    out = _run_bounded(subprocess_env, "", "buf = bytearray(batch_size * 8 * 1024**2)",
                       "len(buf)")
    assert out["batch"] == 128
    assert out["n"] == 128 * 8 * MiB
    assert out["history"] == [[1024, "oom"], [512, "oom"], [256, "oom"], [128, "ok"]]


def test_a_real_torch_allocation_failure_is_an_oom(subprocess_env):
    pytest.importorskip("torch")
    out = _run_bounded(subprocess_env, "import torch",
                       "t = torch.empty(batch_size * 8 * 1024**2, dtype=torch.uint8)",
                       "t.numel()")
    assert out["batch"] == 128
    assert out["history"] == [[1024, "oom"], [512, "oom"], [256, "oom"], [128, "ok"]]


def test_torch_cuda_out_of_memory_error_halves_the_batch():
    torch = pytest.importorskip("torch")
    calls: list[int] = []

    @find_executable_batch_size(starting_batch_size=64)
    def step(batch_size: int, scale: int) -> int:
        calls.append(batch_size)
        if batch_size > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch_size * scale

    assert step(3) == 48
    assert calls == [64, 32, 16]
    assert step.history == [(64, "oom"), (32, "oom"), (16, "ok")]


def test_a_real_torch_cpu_allocation_error_in_process_is_an_oom():
    torch = pytest.importorskip("torch")

    @find_executable_batch_size(starting_batch_size=4)
    def step(batch_size: int) -> None:
        torch.empty(batch_size * 2**50, dtype=torch.uint8)  # petabytes: always refused

    with pytest.raises(BatchSizeError) as info:
        step()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert is_oom(info.value.__cause__)
    assert info.value.tried == [4, 2, 1]


def test_memory_error_path_halves_then_raises_a_named_error_saying_what_was_tried(caplog):
    allocated: list[int] = []

    def allocate(n: int) -> bytes:
        allocated.append(n)
        raise MemoryError(f"cannot allocate {n} items")

    @find_executable_batch_size(starting_batch_size=256)
    def step(batch_size: int) -> bytes:
        return allocate(batch_size)

    with caplog.at_level(logging.WARNING, logger="steadyrun.practices.adapt"), \
            pytest.raises(BatchSizeError) as info:
        step()
    err = info.value
    assert isinstance(err, SteadyrunError)
    assert allocated == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert err.tried == allocated
    assert isinstance(err.__cause__, MemoryError)
    assert "cannot allocate 1 items" in str(err.__cause__)
    text = str(err)
    assert "tried 256, 128, 64, 32, 16, 8, 4, 2, 1" in text
    assert "all ran out of memory" in text
    assert "zero" not in text
    assert step.history == [(b, "oom") for b in allocated]
    assert step.batch_size is None
    # one log line per halving, naming the size that failed and the next one
    messages = [r.getMessage() for r in caplog.records]
    assert any("batch size 256 ran out of memory" in m and "retrying with 128" in m
               for m in messages)
    assert len(messages) == 8


def test_minimum_and_factor_are_honoured():
    @find_executable_batch_size(starting_batch_size=100, minimum=20, factor=0.3)
    def step(batch_size: int) -> int:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(BatchSizeError) as info:
        step()
    assert info.value.tried == [100, 30]  # floor(30 * 0.3) = 9 < 20


def test_non_oom_errors_propagate_at_once():
    calls: list[int] = []

    @find_executable_batch_size(starting_batch_size=32)
    def step(batch_size: int) -> None:
        calls.append(batch_size)
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        step()
    assert calls == [32]


def test_oom_in_the_cause_chain_counts_and_memory_is_released(monkeypatch):
    released: list[int] = []
    monkeypatch.setattr(adapt, "release_memory", lambda: released.append(1))

    @find_executable_batch_size(starting_batch_size=8)
    def step(batch_size: int) -> int:
        if batch_size > 2:
            try:
                raise MemoryError
            except MemoryError as e:
                raise ValueError("loader failed") from e
        return batch_size

    assert step() == 2
    assert len(released) == 2


def test_the_failed_calls_locals_are_gone_when_memory_is_released(monkeypatch):
    import weakref

    refs: list[weakref.ref] = []
    alive_at_release: list[bool] = []
    monkeypatch.setattr(adapt, "release_memory",
                        lambda: alive_at_release.append(refs[-1]() is not None))

    class Big:
        pass

    @find_executable_batch_size(starting_batch_size=2)
    def step(batch_size: int) -> int:
        big = Big()  # stands for a tensor the failed attempt allocated
        refs.append(weakref.ref(big))
        if batch_size == 2:
            raise MemoryError
        return batch_size

    assert step() == 1
    # the traceback kept for __cause__ must not hold the tensors when the cache is emptied
    assert alive_at_release == [False]


def test_bare_decorator_and_each_call_starts_again():
    sizes: list[int] = []

    @find_executable_batch_size
    def step(batch_size: int, *, limit: int) -> int:
        sizes.append(batch_size)
        if batch_size > limit:
            raise MemoryError
        return batch_size

    assert step(limit=100) == 64
    assert step(limit=1000) == 128  # starts from 128 again
    assert step.history == [(128, "ok")]
    assert sizes == [128, 64, 128]


@pytest.mark.parametrize("kwargs", [{"starting_batch_size": 0}, {"factor": 1.0},
                                    {"factor": 0}, {"minimum": 0},
                                    {"starting_batch_size": 4, "minimum": 8}])
def test_bad_arguments_are_named_errors(kwargs):
    with pytest.raises(AdaptError):
        find_executable_batch_size(**kwargs)


def test_is_oom_recognises_the_documented_kinds():
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 20 MiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ..."))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only RuntimeErrors by message


# --- adaptive_batch_size ---------------------------------------------------------------------


def test_per_item_budget_follows_the_documented_formula():
    # 10 GiB total, 4 GiB in use, 80% threshold: 8 - 4 = 4 GiB for the batch
    assert adaptive_batch_size(64, 0.8, 100 * MiB, available=6 * GiB, total=10 * GiB) == 40
    assert adaptive_batch_size(32, 0.8, 100 * MiB, available=6 * GiB, total=10 * GiB) == 32
    assert adaptive_batch_size(64, 0.8, "100MiB", available=6 * GiB, total=10 * GiB) == 40
    assert adaptive_batch_size(64, 0.5, 100 * MiB, available=6 * GiB, total=10 * GiB) == 10


def test_never_below_one_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="steadyrun.practices.adapt"):
        assert adaptive_batch_size(64, 0.8, 1 * GiB, available=2 * GiB, total=10 * GiB) == 1
    assert "not even one item" in caplog.text
    assert adaptive_batch_size(64, 0.5, available=0, total=10 * GiB) == 32
    assert adaptive_batch_size(64, 0.1, available=0, total=10 * GiB) == 6
    assert adaptive_batch_size(1, 0.1, available=0, total=10 * GiB) == 1


def test_without_a_per_item_cost_it_shrinks_with_the_overshoot():
    assert adaptive_batch_size(64, 0.8, available=5 * GiB, total=10 * GiB) == 64
    # 90% in use, threshold 80%: 64 * (1 - 0.1)
    assert adaptive_batch_size(64, 0.8, available=1 * GiB, total=10 * GiB) == 57


def test_real_call_uses_the_memory_free_now():
    from steadyrun.observe.resources import available_memory

    assert 1 <= adaptive_batch_size(64) <= 64
    free = available_memory()
    assert adaptive_batch_size(64, 1.0, per_item_bytes=1) == 64
    assert adaptive_batch_size(64, 1.0, per_item_bytes=10 * free) == 1
    # a tenth of what is free per item: about ten items fit (memory moves a little)
    assert 8 <= adaptive_batch_size(64, 1.0, per_item_bytes=free // 10) <= 12


@pytest.mark.parametrize("args", [(0,), (8, 0.0), (8, 1.5)])
def test_adaptive_bad_arguments(args):
    with pytest.raises(AdaptError):
        adaptive_batch_size(*args, available=GiB, total=2 * GiB)


def test_measure_per_item_bytes_sees_real_allocations():
    per_item = measure_per_item_bytes(lambda b: [b"x" * (4 * MiB) for _ in b], list(range(8)))
    assert 3.5 * MiB <= per_item <= 5 * MiB
    with pytest.raises(AdaptError):
        measure_per_item_bytes(len, [])


# --- TimeBudget ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_with_real_sleeps_stops_before_an_epoch_that_would_overrun(caplog):
    budget = TimeBudget(1.1)
    run: list[int] = []
    with caplog.at_level(logging.WARNING, logger="steadyrun.practices.adapt"):
        for epoch in budget.epochs(100):
            run.append(epoch)
            time.sleep(0.2)
    assert run == [0, 1, 2, 3, 4]
    assert budget.stopped_early
    assert all(0.19 <= d < 0.3 for d in budget.epoch_durations)
    assert budget.elapsed() <= 1.1 + 0.05
    assert not budget.expired
    assert "stopping before epoch 5: epochs take ~0.2 s" in caplog.text


def test_time_budget_fake_clock_exact_rule(caplog):
    clock = FakeClock()
    budget = TimeBudget("20s", clock=clock)
    lengths = [6.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0]
    run: list[int] = []
    with caplog.at_level(logging.WARNING, logger="steadyrun.practices.adapt"):
        for epoch in budget.epochs(10):
            run.append(epoch)
            clock.now += lengths[epoch]
    # after 0..3 (15 s): estimate max(3, 3, 3) = 3 <= 5 left -> epoch 4 runs (17 s);
    # then max(3, 3, 2) = 3 == 3 left -> epoch 5 runs (19 s); max(3, 2, 2) = 3 > 1 -> stop
    assert run == [0, 1, 2, 3, 4, 5]
    assert budget.epoch_durations == lengths[:6]
    assert budget.stopped_early
    assert budget.stop_reason == "stopping before epoch 6: epochs take ~3.0 s, 1.0 s left"
    assert budget.stop_reason in caplog.text
    assert budget.elapsed() == 19.0 and budget.remaining() == 1.0


def test_first_epoch_runs_whenever_time_remains_and_none_when_spent():
    clock = FakeClock()
    budget = TimeBudget(10, clock=clock)
    clock.now += 9.5
    seen = []
    for epoch in budget.epochs(5):
        seen.append(epoch)
        clock.now += 30  # overruns: the budget only decides whether to start
    assert seen == [0]
    assert budget.expired and budget.remaining() == 0.0
    assert list(budget.epochs(5)) == []
    assert "time budget of 10.0 s is spent" in budget.stop_reason


def test_all_epochs_fit_means_not_stopped_early():
    clock = FakeClock()
    budget = TimeBudget("1h", clock=clock)
    for _ in budget.epochs(4):
        clock.now += 60
    assert len(budget.epoch_durations) == 4
    assert not budget.stopped_early and budget.stop_reason is None


def test_time_budget_bad_limits():
    with pytest.raises(TaskDefinitionError):
        TimeBudget("soon")
    with pytest.raises(TaskDefinitionError):
        TimeBudget(0)
    with pytest.raises(AdaptError):
        list(TimeBudget(5).epochs(-1))


def test_importing_adapt_and_batching_stays_light(subprocess_env):
    code = ("import sys, steadyrun.practices.adapt, steadyrun.practices.batching, "
            "steadyrun.practices.retrying; "
            "print(sorted(m for m in ('torch', 'psutil', 'rich', 'tenacity') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
