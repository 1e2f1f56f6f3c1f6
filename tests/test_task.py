"""Task definitions: sizes, durations, policies, graph validation and degradation."""

from __future__ import annotations

import random

import pytest

import steadyrun as run
from steadyrun.errors import TaskDefinitionError
from steadyrun.task import apply_degrade, validate_graph
from steadyrun.units import format_size, parse_duration, parse_size


def f(batch_size: int = 64, lr: float = 0.1) -> None:
    return None


@pytest.mark.parametrize("text,expected", [
    ("2GiB", 2 * 1024**3), ("512MB", 512 * 1000**2), ("1.5G", 1_500_000_000),
    ("100", 100), (4096, 4096), ("64 mib", 64 * 1024**2)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["2 parsecs", "-1GB", "", "GB", True, -5])
def test_bad_sizes_are_named_errors(bad):
    with pytest.raises(TaskDefinitionError, match="size"):
        parse_size(bad, what="size")


@pytest.mark.parametrize("text,expected", [
    ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("01:00:00", 3600),
    ("250ms", 0.25), (5, 5.0), ("1d", 86400)])
def test_durations(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["soon", "0", "-3m", "1x", 0, "00:00"])
def test_bad_durations_are_named_errors(bad):
    with pytest.raises(TaskDefinitionError, match="duration"):
        parse_duration(bad)


def test_format_size():
    assert format_size(1536) == "1.5KiB" and format_size(10) == "10B"


def test_resources_and_policies_validate():
    assert run.Resources(memory="1GiB").memory == 1024**3
    with pytest.raises(TaskDefinitionError, match="cpus"):
        run.Resources(cpus=-1)
    with pytest.raises(TaskDefinitionError, match="unknown failure kind"):
        run.Retry(on=("error", "bogus"))
    with pytest.raises(TaskDefinitionError, match="max_attempts"):
        run.Retry(max_attempts=0)
    with pytest.raises(TaskDefinitionError, match="param=... .*memory_factor"):
        run.Degrade()
    with pytest.raises(TaskDefinitionError, match="task name"):
        run.Task("a/b", f)
    with pytest.raises(TaskDefinitionError, match="payload"):
        run.Task("x", 42)


def test_backoff_delays_grow_cap_and_jitter_within_bounds():
    r = run.Retry(initial_delay=1.0, backoff=2.0, max_delay=5.0, jitter=0.0)
    assert [r.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    rj = run.Retry(initial_delay=1.0, backoff=2.0, jitter=0.1)
    rng = random.Random(0)
    samples = [rj.delay(2, rng) for _ in range(200)]
    assert min(samples) >= 1.8 and max(samples) <= 2.2 and len(set(samples)) > 100


def test_graph_order_and_cycle_message():
    ts = [run.Task("b", f, depends_on=["a"]), run.Task("a", f),
          run.Task("c", f, depends_on=["a", "b"])]
    order = validate_graph(ts)
    assert order.index("a") < order.index("b") < order.index("c")
    with pytest.raises(TaskDefinitionError, match="cycle: x -> y -> z -> x"):
        validate_graph([run.Task("x", f, depends_on=["y"]), run.Task("y", f, depends_on=["z"]),
                        run.Task("z", f, depends_on=["x"])])


def test_degrade_halves_a_nested_value_and_stops_at_the_minimum():
    inner = run.Partial(f, batch_size=5)
    payload = run.Partial(f, batch_size=inner)  # nested: batch_size.batch_size
    task = run.Task("t", payload, degrade=run.Degrade(param="batch_size.batch_size",
                                                      factor=0.5, minimum=2))
    p1, _, changes = apply_degrade(task, payload, task.resources)
    assert changes == {"batch_size.batch_size": [5, 2]}
    assert p1.batch_size.batch_size == 2 and payload.batch_size.batch_size == 5
    p2, _, changes = apply_degrade(task, p1, task.resources)
    assert changes == {} and p2 is p1
