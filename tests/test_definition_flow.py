"""The one-line-per-task YAML of big definitions: what it writes, any YAML reader reads
as the same values; what it reads equals what PyYAML reads; what it cannot write or
read it refuses (None), so that the general writer and reader take over."""

from __future__ import annotations

import math

import pytest

import steadyrun as run
from payloads import add, record
from steadyrun.config import _flow, from_yaml, to_yaml
from steadyrun.config._yaml import fingerprints
from steadyrun.store.db import Store

TRICKY = ["", " ", "yes", "No", "ON", "off", "null", "Null", "~", "y", "n", "true",
          "1", "-1", "0x1f", "012", "1e3", "1.5", ".inf", "-.nan", "1:30", "2026-12-03",
          "a: b", "a, b", "[x]", "{x}", "#c", "&a", "*a", "!t", "%p", "@x", "`x`", "'q'",
          '"q"', "back\\slash", "tab\there", "line\nbreak", "cr\rx", "nel\x85x",
          "ls\u2028x", "ps\u2029x", "bom\ufeffx", "bell\x07", "del\x7f", "émoji 😀",
          "- dash", "? q", "key:", "t0", "a/b.c-d_e",
          "train[lr=0.1,batch_size=32]", "x" * 300]
NUMBERS = [0, 1, -1, 10**30, -(10**30), 0.0, -0.0, 1.0, 0.1, 1e16, 1e-5, 1.5e300, -2.5e-300,
           float("inf"), float("-inf"), 3.141592653589793]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, run.Partial | run.Config):
        return (a.__fn_or_cls__ is b.__fn_or_cls__
                and _same(a.__arguments__, b.__arguments__))
    return a == b


def _doc():
    shared = {"hidden": 128, "layers": [1, 2]}
    model = run.Config(add, shared)
    return {
        "title": "sweep: yes",
        "executor": {"type": "LocalExecutor", "strategy": "thread", "grace": 5.0},
        "order": [f"t{i}" for i in range(3)],
        "empty": [],
        "nothing": {},
        "tasks": [
            {"name": "t0", "payload": run.Partial(add, 1, 2), "resources": {"cpus": 1}},
            {"name": "t1", "payload": run.Partial(record, model, shared, (1, "a"))},
            {"name": "t2", "payload": run.Partial(record, run.Secret("API_KEY"),
                                                  run.Secret("TOKEN", withheld=True),
                                                  {1: "int key", "nan": float("nan")})},
            {"name": "t3", "payload": {"strings": TRICKY, "numbers": NUMBERS,
                                       "flags": [True, False, None], "model": model}},
        ],
    }


def test_what_it_writes_reads_back_the_same_with_pyyaml_and_with_its_reader():
    doc = _doc()
    text = _flow.write(doc)
    assert text is not None
    assert "\n- {name: t0, payload: !partial:payloads:add {a: 1, b: 2}, " in text
    by_pyyaml = from_yaml(text)
    by_flow = _flow.read(text)
    assert _same(by_pyyaml, doc) and _same(by_flow, doc)
    for back in (by_pyyaml, by_flow):  # shared values stay shared
        t1 = back["tasks"][1]["payload"]
        assert t1.path.a is t1.name
        assert back["tasks"][3]["payload"]["model"] is t1.path


@pytest.mark.parametrize("text", TRICKY)
def test_every_string_reads_back_as_itself(text):
    doc = {"title": text, "tasks": [{text: text}], "keys": {text: [text]}}
    written = _flow.write(doc)
    assert written is not None
    assert _same(from_yaml(written), doc), written
    assert _same(_flow.read(written), doc), written


def test_what_it_cannot_write_is_refused_for_the_general_writer():
    class Sub(list):
        pass

    loop: list = []
    loop.append(loop)
    for value in (Sub([1]), loop, lambda: 1, b"bytes", frozenset({1}), {(1, 2): "k"},
                  {1.5: "k"}, run.Script(inline="echo hi"), {"x": object()},
                  "lone \ud800 surrogate"):
        assert _flow.write({"v": value}) is None, value
        assert not _flow.check(value)
    assert _flow.check(run.Partial(add, 1, 2))
    names = ["a", "b"]
    assert _flow.write({"order": names, "tasks": [{"names": names}]}) is None
    assert _flow.write({"order": names, "again": names}) is None
    inner = [1]
    shared = _flow.write({"order": [inner, inner]})
    assert shared == "order:\n- &id001 [1]\n- *id001\n"
    back = _flow.read(shared)
    assert back is not None and back["order"][0] is back["order"][1]


def test_lines_of_another_shape_are_left_to_pyyaml():
    for text in ("title: x\n  indented: 1\n", "a: [1,2]\n", "a: {b:1}\n", "a: 'single'\n",
                 "a: yes\n", "a: 012\n", "- 1\n", "a: &x [1]\nb: *x\n", "a: 1 # c\n",
                 "a: !partial:payloads:nothing_here {}\n", "a: 1\na: 2\n",
                 "a: \"bad \\q escape\"\n", "a: !partial:payloads:add {zz: 1}\n"):
        assert _flow.read(text) is None, text


def test_a_definition_reads_back_and_fingerprints_match(steadyrun_home):
    tasks = run.sweep(run.Task("t", run.Partial(add, 1, 2)), {"a": [1, 2.5, -3]})
    exp = run.Experiment(tasks, title="flow", progress=False, tail_logs=False)
    result = exp.run()
    again = run.Experiment.from_id(result.id)
    assert [t.name for t in again.tasks] == [t.name for t in tasks]
    for old, new in zip(tasks, again.tasks, strict=True):
        assert _same(old.payload, new.payload)
    store = Store()
    text = (store.experiment_dir(result.id) / "definition.yaml").read_text()
    stored = [r.fingerprint for r in store.tasks(result.id)]
    store.close()
    assert "- {name: \"t[a=2.5]\", payload: !partial:payloads:add {a: 2.5, b: 2}" in text
    assert stored == [run.fingerprint(t.payload) for t in tasks]
    assert fingerprints([t.payload for t in tasks], plain=True) == stored


def test_to_yaml_still_writes_the_block_shape():
    assert to_yaml({"a": [1, 2]}) == "a:\n- 1\n- 2\n"


def test_read_as_data_equals_load_plain_and_imports_nothing():
    from steadyrun.config.plain import load_plain

    text = _flow.write(_doc())
    assert text is not None
    assert _same(_flow.read(text, data=True), load_plain(text, tags="data"))
    unknown = text.replace("!partial:payloads:add", "!partial:not_a_module_here:f")
    assert _flow.read(unknown) is None  # building needs the module
    assert _same(_flow.read(unknown, data=True), load_plain(unknown, tags="data"))
