"""YAML round trips of configs, scripts and plain values; what cannot be written says why."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import OrderedDict

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import steadyrun as run
from cfg_targets import Act, Level, Model, Pair, add, identity, make_closure, posonly, train
from steadyrun.errors import ConfigError, SerializationError, UnknownParameterError


def roundtrip(obj):
    text = run.to_yaml(obj)
    back = run.from_yaml(text)
    assert back == obj, text
    return back, text


def test_config_partial_script_round_trip():
    p = run.Partial(train, model=run.Config(Model, hidden=64, act=Act.GELU, layers=(1, (2, 3))),
                    epochs=3, tags={"nested": {"list": [1, "two", None]}, 5: b"\x00\xff"})
    back, text = roundtrip(p)
    assert "!partial:cfg_targets:train" in text and "!config:cfg_targets:Model" in text
    assert type(back.model.layers) is tuple and type(back.model.layers[1]) is tuple
    assert back.model.act is Act.GELU
    assert back.build()()["model"].hidden == 64
    script = run.Script("train.sh", args=["--lr", "0.1"], env={"A": "1"}, entrypoint="python")
    assert roundtrip(script)[0].command("py") == ["py", "train.sh", "--lr", "0.1"]
    roundtrip(run.Script(inline="echo 'hi'\necho $1"))
    roundtrip([run.Config(add, x=1), run.Script(inline="true")])


def test_import_paths_round_trip_by_reference():
    value = {"cls": Model, "fn": add, "method": Model.make, "static": Model.Inner.double,
             "builtin": len, "enum": Level.HIGH, "set": {1, 2}, "frozen": frozenset({3})}
    back, text = roundtrip(value)
    assert back["cls"] is Model and back["static"] is Model.Inner.double
    assert back["enum"] is Level.HIGH
    assert "static: !import cfg_targets:Model.Inner.double" in text.replace("'", "")


def test_special_floats_and_scalars():
    back, _ = roundtrip([math.inf, -math.inf, 0.1, 1e300, -0.0, 10**30, "null", "1", "", True])
    nan = run.from_yaml(run.to_yaml(math.nan))
    assert isinstance(nan, float) and math.isnan(nan)


def test_positional_only_arguments_round_trip():
    back, _ = roundtrip(run.Config(posonly, 1, 5))
    assert back.build() == (1, 5)


def test_shared_configs_stay_shared():
    shared = run.Config(Model, hidden=2)
    cfg = run.Config(identity, value=[shared, {"again": shared}])
    back, text = roundtrip(cfg)
    assert "&id001" in text and "*id001" in text
    assert back.value[0] is back.value[1]["again"]
    a, b = back.build()[0], back.build()[1]["again"]
    assert a is not b  # each build is separate ...
    built = back.build()
    assert built[0] is built[1]["again"]  # ... but inside one build the object is shared


def test_yaml_is_readable():
    text = run.to_yaml(run.Partial(train, model=run.Config(Model, hidden=3), epochs=2))
    assert text == ("!partial:cfg_targets:train\n"
                    "model: !config:cfg_targets:Model\n"
                    "  hidden: 3\n"
                    "epochs: 2\n")


def test_round_trip_in_a_fresh_process(subprocess_env):
    text = run.to_yaml(run.Config(train, model=run.Config(Model, hidden=5), tags=(1, "a")))
    code = ("import sys, steadyrun as run; c = run.from_yaml(sys.stdin.read()); "
            "print(c.build()['model'].hidden, c.tags)")
    out = subprocess.run([sys.executable, "-c", code], input=text, env=subprocess_env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "5 (1, 'a')"


# --- what cannot be written ----------------------------------------------------------------


def local_function():
    def inner():
        return 1

    return inner


@pytest.mark.parametrize("value, path, why", [
    (run.Config(train, model=lambda: 1), r"<root>\.model", "lambda"),
    (run.Config(train, tags=[1, {"k": make_closure()}]), r"<root>\.tags\.1\.k",
     "inside a function"),
    (run.Config(identity, value=object()), r"<root>\.value", "object"),
    (run.Config(local_function()), r"<root>", "inside a function"),
    ({"x": {1: complex(1, 2)}}, r"<root>\.x\.1", "complex"),
    (run.Config(identity, value=[Pair(1, 2)]), r"<root>\.value\.0", "subclass of tuple"),
    (OrderedDict(a=1), r"<root>", "subclass of dict"),
])
def test_unwritable_values_name_the_path_and_what_to_do(value, path, why):
    with pytest.raises(SerializationError, match=path) as info:
        run.to_yaml(value)
    assert why in str(info.value)
    assert "module level" in str(info.value) or "cloudpickle" in str(info.value)


def test_functions_defined_in_main_are_refused(subprocess_env):
    code = ("import steadyrun as run\n"
            "def f(x=1): return x\n"
            "try:\n    run.to_yaml(run.Config(f))\n"
            "except run.SerializationError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env,
                         capture_output=True, text=True, check=True)
    assert "refused:" in out.stdout and "__main__" in out.stdout
    assert "cloudpickle" in out.stdout


# --- what cannot be read -------------------------------------------------------------------


@pytest.mark.parametrize("text, error, match", [
    ("!config:cfg_targets:Nope {}", ConfigError, "has no attribute 'Nope'"),
    ("!config:cfg_targets:Model {hiddn: 1}", UnknownParameterError, "did you mean 'hidden'"),
    ("!config:cfg_targets:Model 3", SerializationError, "mapping"),
    ("!!python/object/apply:os.system ['echo hacked']", SerializationError, "cannot read"),
    ("!import cfg_targets:Missing", ConfigError, "line 1"),
    ("a: [1, 2", SerializationError, "cannot read"),
    ("!script {path: a.sh, entrypoint: zsh}", ConfigError, "'bash' or 'python'"),
    ("!script {bogus: 1}", SerializationError, "bogus"),
])
def test_bad_yaml_raises_named_errors(text, error, match):
    with pytest.raises(error, match=match):
        run.from_yaml(text)


def test_loader_is_safe():
    with pytest.raises(SerializationError):
        run.from_yaml("!!python/name:os.system ''")
    assert run.from_yaml(yaml.safe_dump({"a": [1, 2]})) == {"a": [1, 2]}


# --- property: any nested plain value survives ---------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text() | st.binary(max_size=8))
_keys = st.text() | st.integers()
_values = st.recursive(
    _scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.lists(children, max_size=4).map(tuple)
                      | st.dictionaries(_keys, children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_any_plain_value_round_trips_inside_a_config(value):
    cfg = run.Config(identity, value=value)
    back = run.from_yaml(run.to_yaml(cfg))
    assert back == cfg
    assert back.fingerprint() == cfg.fingerprint()
    assert back.build() == value
