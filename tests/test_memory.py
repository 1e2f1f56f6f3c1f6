"""Memory usage, release and the leak guard, measured on this real process."""

from __future__ import annotations

import gc
import sys
import warnings
from types import SimpleNamespace

import psutil
import pytest

from steadyrun.errors import SteadyrunError, TaskDefinitionError
from steadyrun.observe import memory
from steadyrun.observe.memory import (
    MemoryGrowthError,
    MemoryGrowthWarning,
    MemoryUsage,
    Released,
    guard,
    release,
    usage,
)
from steadyrun.observe.resources import memory_info

MiB = 1024**2


def _touched(n_mib: int) -> bytearray:
    """n MiB whose pages are all written (so they count in RSS)."""
    return bytearray(b"\x01") * (n_mib * MiB)


def test_usage_matches_psutil():
    u = usage()
    info = psutil.Process().memory_info()
    assert isinstance(u, MemoryUsage)
    assert abs(u.rss - info.rss) < 16 * MiB
    assert abs(u.vms - info.vms) < 64 * MiB
    assert u.total == memory_info().total
    assert u.percent == pytest.approx(100 * u.rss / u.total, rel=0.1)
    assert u.to_dict()["rss"] == u.rss


def test_usage_without_torch_has_no_gpu_figures(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    u = usage()
    assert (u.gpu_allocated, u.gpu_reserved) == (None, None)
    assert "torch" not in sys.modules  # never imported by steadyrun


class _FakeCuda:
    """Stands in for torch.cuda (named fake: there is no GPU here)."""

    def __init__(self, initialised: bool = True) -> None:
        self.reserved = 300 * MiB
        self.initialised = initialised
        self.emptied = 0

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialised

    def device_count(self) -> int:
        return 2

    def memory_allocated(self, d: int) -> int:
        return 100 * MiB

    def memory_reserved(self, d: int) -> int:
        return self.reserved

    def empty_cache(self) -> None:
        self.emptied += 1
        self.reserved = 100 * MiB


def test_usage_and_release_use_torch_only_when_already_imported(monkeypatch):
    cuda = _FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    u = usage()
    assert (u.gpu_allocated, u.gpu_reserved) == (200 * MiB, 600 * MiB)
    r = release()
    assert cuda.emptied == 1
    assert (r.gpu_reserved_before, r.gpu_reserved_after, r.gpu_freed) == (
        600 * MiB, 200 * MiB, 400 * MiB)
    idle = _FakeCuda(initialised=False)  # CUDA never used: nothing to ask, nothing to free
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=idle))
    assert (usage().gpu_allocated, usage().gpu_reserved) == (0, 0)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None
        self.payload = b""


def test_release_frees_a_big_reference_cycle():
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # so that only release() can collect the cycle
    try:
        nodes = [_Node() for _ in range(2000)]
        for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True):
            a.other = b
        nodes[0].payload = bytes(_touched(200))
        del nodes, a, b
        r = release()
    finally:
        if was_enabled:
            gc.enable()
    assert isinstance(r, Released)
    assert r.collected >= 2000
    assert r.rss_freed > 150 * MiB, r  # the 200 MiB held by the cycle went back to the OS
    assert r.rss_after == pytest.approx(psutil.Process().memory_info().rss, abs=16 * MiB)
    assert r.to_dict()["rss_freed"] == r.rss_freed
    assert (r.gpu_reserved_before, r.gpu_freed) == (None, 0)


def test_guard_warns_on_growth_once_per_bound():
    kept = []
    with pytest.warns(MemoryGrowthWarning) as caught, guard("50MiB") as g:
        for _ in range(8):
            kept.append(_touched(10))
            g.check()
    assert len(caught) == 1  # 80 MiB: past the bound once, not past it twice
    text = str(caught[0].message)
    assert "RSS grew by" in text and "bound is 50.0MiB" in text
    assert f"started at {__file__}:" in text
    assert g.peak - g.baseline >= 60 * MiB


def test_guard_raises_on_growth_and_says_by_how_much():
    kept = []
    with pytest.raises(MemoryGrowthError) as info, guard(40 * MiB, action="raise") as g:
        for _ in range(20):
            kept.append(_touched(10))
            g.check()
    e = info.value
    assert isinstance(e, SteadyrunError)
    assert e.growth > e.bound == 40 * MiB
    assert 4 <= e.checks <= 6
    assert e.current - e.baseline == e.growth
    assert "raise max_growth" in str(e) and "check(s)" in str(e)


def test_guard_is_silent_in_a_flat_loop():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with guard("50MiB", action="raise", every=2) as g:
            for _ in range(30):
                block = _touched(10)
                del block
                g.check()
    assert g.checks == 16  # every second call measures, plus the final check on exit


def test_guard_checks_on_exit_and_without_with():
    g = guard("20MiB", action="raise")
    big = _touched(40)
    with pytest.raises(MemoryGrowthError):
        g.check()
    del big
    with pytest.raises(MemoryGrowthError), guard("20MiB", action="raise"):
        big = _touched(40)  # no check() inside: leaving the block checks
    del big


@pytest.mark.parametrize("kwargs", [{"max_growth": "lots"}, {"max_growth": 0},
                                    {"action": "explode"}, {"every": 0}])
def test_guard_rejects_bad_arguments(kwargs):
    with pytest.raises(TaskDefinitionError):
        memory.guard(**kwargs)
