"""Hostile YAML is bounded: a "billion laughs" document is refused at once, and
fingerprints cost one visit per distinct object however much it is shared."""

from __future__ import annotations

import json
import time

import pytest

import steadyrun as run
from steadyrun.config import _yaml

LEVELS = "abcdefghi"


def laughs(levels: int) -> str:
    """``levels`` lists of 9, each made of 9 aliases of the one before: 9**levels values."""
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    for prev, cur in zip(LEVELS[:levels - 1], LEVELS[1:levels], strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_document_is_refused_fast():
    run.from_yaml("warm: up")  # PyYAML's import is not what is measured
    doc = laughs(9)  # 9**9 = 387 million values from a few hundred bytes
    assert len(doc) < 500
    start = time.perf_counter()
    with pytest.raises(run.SerializationError) as info:
        run.from_yaml(doc, source="sweep.yaml")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0  # about 0.3 ms here; generous for slow CI machines
    text = str(info.value)
    assert "sweep.yaml" in text and f"{_yaml.MAX_EXPANDED_NODES:,}" in text
    assert "aliases" in text


def test_a_recursive_alias_is_not_counted_forever():
    value = run.from_yaml("a: &a [1, *a]\n")
    assert value["a"][1] is value["a"]


def test_the_bound_is_on_what_aliases_add(monkeypatch):
    monkeypatch.setattr(_yaml, "MAX_EXPANDED_NODES", 1000)
    items = ",".join(str(i) for i in range(5000))
    assert len(run.from_yaml(f"[{items}]")) == 5000  # large, but as large as it is written
    with pytest.raises(run.SerializationError, match="1,000"):
        run.from_yaml(laughs(4))  # 9**4 = 6561 values from 37 written


def test_shared_values_are_fingerprinted_once_and_equal_to_the_expanded_ones():
    doc = laughs(5)  # 9**5 = 59049 values: below the bound, so it loads
    shared = run.from_yaml(doc)
    expanded = json.loads(json.dumps(shared))  # the same values, nothing shared
    start = time.perf_counter()
    fp_shared = run.fingerprint(shared)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0  # under 10 ms here: linear in the ~50 distinct objects
    assert fp_shared == run.fingerprint(expanded)
    expanded["e"][8][8][8][8] = "y"  # a change deep inside changes it
    assert run.fingerprint(expanded) != fp_shared


def test_sharing_built_in_python_is_fingerprinted_in_linear_time():
    value: list = ["x"] * 9
    for _ in range(12):  # 9**13 values if expanded
        value = [value] * 9
    cfg = run.Config(dict, data=value)
    start = time.perf_counter()
    first = run.fingerprint(cfg)
    assert time.perf_counter() - start < 1.0
    assert first == run.fingerprint(run.Config(dict, data=value))


def test_cycles_are_still_refused():
    loop: list = [1]
    loop.append(loop)
    with pytest.raises(run.SerializationError, match="cycle"):
        run.fingerprint(loop)


def test_the_loader_says_that_it_imports_code():
    assert "trust" in (run.from_yaml.__doc__ or "")
