"""Command-line overrides: the grammar, what each form gives, and errors that say where."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import steadyrun as run
from cfg_targets import Encoder, Model, add, anything, train
from steadyrun.config.overrides import parse_value
from steadyrun.errors import ConfigError, OverrideError


def make():
    return run.Partial(train, model=run.Config(Model, hidden=128, layers=[{"size": 1}, 2]),
                       epochs=3, lr=0.1, tags={"team": "a", 7: "seven"})


def test_the_brief_example():
    cfg = make()
    out = run.apply_overrides(cfg, ["model.hidden=512", "lr=1e-3", "tags=[a,b]",
                                    "epochs+=2", "lr*=0.5"])
    assert out is cfg
    assert cfg.model.hidden == 512 and cfg.lr == 0.0005 and cfg.tags == ["a", "b"]
    assert cfg.epochs == 5


@pytest.mark.parametrize("override, path, expected", [
    ("epochs=10", "epochs", 10),
    ("lr=1e-3", "lr", 1e-3),
    ("name='x y'", "tags", None),  # placeholder replaced below
    ("tags=[a, b]", "tags", ["a", "b"]),
    ("tags=[1, x, 'q r', [y]]", "tags", [1, "x", "q r", ["y"]]),
    ("tags={k: v, 'n': 2}", "tags", {"k": "v", "n": 2}),
    ("tags={'a': [1, 2]}", "tags", {"a": [1, 2]}),
    ("tags=(a, 2)", "tags", ("a", 2)),
    ("tags=[]", "tags", []),
    ("tags=[a,]", "tags", ["a"]),
    ("tags=plain words", "tags", "plain words"),
    ("tags=", "tags", ""),
    ("tags='1'", "tags", "1"),
    ("tags=null", "tags", None),
    ("tags=None", "tags", None),
    ("tags=true", "tags", True),
    ("tags=False", "tags", False),
    ("tags=-inf", "tags", -math.inf),
    ("tags=pkg.mod:Thing", "tags", "pkg.mod:Thing"),
    ("tags = spaced ", "tags", "spaced"),
    ("model.hidden=64", "model.hidden", 64),
    ("model.layers.0.size=3", "model.layers.0.size", 3),
    ("model.layers.-1=9", "model.layers.1", 9),
    ("tags.team=b", "tags.team", "b"),
    ("tags.7=VII", "tags.7", "VII"),
    ("tags.new=1", "tags.new", 1),
    ("batch_size=8", "batch_size", 8),
    ("epochs-=1", "epochs", 2),
    ("epochs*=3", "epochs", 9),
    ("epochs/=2", "epochs", 1.5),
    ("lr+=1", "lr", 1.1),
    ("model.hidden*=0.5", "model.hidden", 64.0),
])
def test_good_overrides(override, path, expected):
    from steadyrun.config import get_path

    if override.startswith("name="):
        cfg = run.Config(anything)
        run.apply_overrides(cfg, [override])
        assert cfg.name == "x y"
        return
    cfg = make()
    run.apply_overrides(cfg, [override])
    assert get_path(cfg, path) == expected
    assert type(get_path(cfg, path)) is type(expected)


def test_nested_configs_from_override_text():
    cfg = make()
    run.apply_overrides(cfg, ["model=Config(cfg_targets:Encoder, size=3, depth=[1, a])"])
    assert cfg.model == run.Config(Encoder, size=3, depth=[1, "a"])
    run.apply_overrides(cfg, ["model=Config('cfg_targets:Model', 7, layers=(Partial(cfg_targets:"
                              "add, y=2),))"])
    assert cfg.model == run.Config(Model, hidden=7, layers=(run.Partial(add, y=2),))
    assert cfg.build()()["model"].layers[0](1) == 3
    run.apply_overrides(cfg, ["model.hidden=Config(cfg_targets.add, x=1)"])  # dotted form
    assert cfg.model.hidden == run.Config(add, x=1)


@pytest.mark.parametrize("override, match", [
    ("model.hiddn=3", r"no parameter 'hiddn' at model; did you mean 'hidden'\?"),
    ("epoch=3", r"no parameter 'epoch' at <root>; did you mean 'epochs'"),
    ("model.hiddn.x=3", r"nothing at 'model.hiddn'.*did you mean 'hidden'"),
    ("noequals", r"has no '=': expected key=value"),
    ("=3", "key '' is empty"),
    ("a..b=3", "empty part"),
    ("+=3", "empty"),
    ("tags+=1", r"'\+=' works on numbers.*tags"),
    ("epochs+=x", "the operand is 'x'"),
    ("epochs/=0", "failed: division by zero"),
    ("model.act*=2", "works on numbers"),
    ("model.layers.5=1", "out of range"),
    ("model.layers.x=1", "indexed by number"),
    ("epochs.x=1", r"the value at epochs is 3 \(type int\), which cannot be changed"),
    ("epochs.x.y=1", r"nothing at 'epochs.x'.*has no parts"),
    ("model=Config(cfg_targets:Nope)", "has no attribute 'Nope'"),
    ("model=Config(no_such_mod_q:X)", "cannot import"),
    ("model=Config(cfg_targets:Model, hiddn=1)", "did you mean 'hidden'"),
    ("model=Config(cfg_targets:Model, hidden=1, 2)", "positional argument follows"),
    ("model=Config()", "needs a target"),
    ("tags=[a, b", r"opens '\[' but does not end with '\]'"),
    ("tags=[a, (b]", r"unclosed bracket in 'a, \(b': expected '\)'"),
    ("tags=Config(cfg_targets:add, x=[1)", r"unclosed bracket"),
    ("tags=[a]]", "unbalanced"),
    ("tags=[a,,b]", "empty item"),
    ("tags={a}", "needs 'key: value'"),
    ("tags={[1]: 2}", "cannot be a key"),
    ("tags=['a]", "unclosed quote"),
    ("__fn_or_cls__=1", "no parameter '__fn_or_cls__'"),
    ("model.__class__=1", "__class__"),
])
def test_bad_overrides_raise_override_error_naming_where(override, match):
    cfg = make()
    before = run.to_yaml(cfg)
    with pytest.raises(OverrideError, match=match):
        run.apply_overrides(cfg, [override])
    assert run.to_yaml(cfg) == before  # nothing changed


def test_all_or_nothing():
    cfg = make()
    with pytest.raises(OverrideError):
        run.apply_overrides(cfg, ["epochs=10", "model.hidden=1", "model.nope=2"])
    assert cfg.epochs == 3 and cfg.model.hidden == 128


def test_a_single_string_is_one_override():
    assert run.apply_overrides(run.Config(add), "x=4").build() == 5


def test_parse_value_depth_is_bounded():
    with pytest.raises(OverrideError, match="nested more than"):
        parse_value("[" * 60 + "a" + "]" * 60)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(), max_size=3))
def test_any_text_raises_only_named_errors(overrides):
    cfg = make()
    with contextlib.suppress(ConfigError):
        run.apply_overrides(cfg, overrides)


_fragments = st.sampled_from(["model", "hidden", "layers", "0", "tags", "epochs", ".", "=",
                              "+=", "*=", "/=", "[", "]", "{", "}", "(", ")", ",", ":", "'",
                              '"', "Config(", "Partial(", "cfg_targets:Model", "x", "1", "-",
                              "1e3", " ", "None", "\\", "__class__", "size"])


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.lists(_fragments, max_size=12).map("".join), min_size=1, max_size=3))
def test_grammar_like_text_raises_only_named_errors(overrides):
    cfg = make()
    with contextlib.suppress(ConfigError):
        run.apply_overrides(cfg, overrides)
