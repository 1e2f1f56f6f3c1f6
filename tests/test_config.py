"""Config, Partial, Script: arguments, build, copies, paths, fingerprints, Fiddle interop."""

from __future__ import annotations

import copy
import functools
import pickle
import subprocess
import sys
import types

import cloudpickle
import pytest

import steadyrun as run
from cfg_targets import (
    Act,
    Encoder,
    Model,
    Pair,
    add,
    anything,
    identity,
    make_closure,
    positional,
    posonly,
    sample_config,
    train,
)
from steadyrun import config
from steadyrun.errors import (
    BuildError,
    ConfigError,
    SerializationError,
    UnknownParameterError,
)

# --- arguments -----------------------------------------------------------------------------


def test_arguments_are_attributes_and_defaults_read_through():
    cfg = run.Config(Model, hidden=64)
    assert cfg.__fn_or_cls__ is Model
    assert cfg.__arguments__ == {"hidden": 64}
    assert cfg.hidden == 64
    assert cfg.act == "relu"  # unset: the signature's default
    cfg.act = "gelu"
    assert cfg.__arguments__ == {"hidden": 64, "act": "gelu"}
    del cfg.act
    assert cfg.act == "relu"


def test_unset_parameter_without_default_raises_attribute_error():
    cfg = run.Config(Encoder)
    with pytest.raises(AttributeError, match="'size' is not set and has no default"):
        _ = cfg.size
    assert getattr(cfg, "size", "fallback") == "fallback"


def test_nested_mutation():
    p = run.Partial(train, model=run.Config(Model, hidden=1))
    p.model.hidden = 512
    assert p.model.hidden == 512
    assert p.build()().get("model").hidden == 512


def test_positional_arguments_are_bound_to_names():
    cfg = run.Config(positional, 1, 2, 3, 4, c=5, z=6)
    assert cfg.__arguments__ == {"a": 1, "b": 2, "rest": (3, 4), "c": 5, "z": 6}
    assert cfg.build() == (1, 2, (3, 4), 5, {"z": 6})
    assert run.Config(posonly, 1).build() == (1, 2)
    assert run.Config(posonly, b=5, a=4).build() == (4, 5)


def test_unknown_parameter_names_the_target_valid_names_and_a_suggestion():
    with pytest.raises(UnknownParameterError) as info:
        run.Config(Model, hiddn=3)
    message = str(info.value)
    assert "Config[Model]" in message and "'hiddn'" in message
    assert "hidden, act, layers" in message and "did you mean 'hidden'" in message
    cfg = run.Config(Model)
    with pytest.raises(UnknownParameterError, match="did you mean 'layers'"):
        cfg.layer = 3
    assert isinstance(info.value, AttributeError) and isinstance(info.value, ConfigError)


def test_kwargs_targets_accept_any_name_and_unreadable_signatures_accept_anything():
    assert run.Config(anything, whatever=1).build() == {"whatever": 1}
    assert run.Config(dict, a=1, b=2).build() == {"a": 1, "b": 2}  # no readable signature


def test_bad_constructions():
    with pytest.raises(ConfigError, match="function or class"):
        run.Config(42)
    with pytest.raises(ConfigError, match="two values for 'model'"):
        run.Config(train, 1, model=2)
    with pytest.raises(ConfigError, match="too many positional"):
        run.Config(add, 1, 2, 3)
    with pytest.raises(ConfigError, match="cannot be set"):
        run.Config(add).__fn_or_cls__ = identity


def test_equality_and_hash():
    assert run.Config(Model, hidden=1) == run.Config(Model, hidden=1)
    assert run.Config(Model, hidden=1) != run.Config(Model, hidden=2)
    assert run.Config(Model, hidden=1) != run.Partial(Model, hidden=1)
    assert run.Config(add, x=1, y=2) == run.Config(add, y=2, x=1)
    with pytest.raises(TypeError):
        hash(run.Config(Model))  # mutable: fingerprint() is the content key


def test_repr_is_readable_and_nested():
    cfg = run.Partial(train, model=run.Config(Model, hidden=128, act="relu"), epochs=3)
    assert repr(cfg) == "Partial[train](model=Config[Model](hidden=128, act='relu'), epochs=3)"


def test_copy_and_deepcopy_preserve_sharing():
    shared = run.Config(Model, hidden=1)
    cfg = run.Config(train, model=shared, tags=[shared, {"m": shared}])
    shallow = copy.copy(cfg)
    assert shallow == cfg and shallow.__arguments__ is not cfg.__arguments__
    assert shallow.model is shared
    deep = copy.deepcopy(cfg)
    assert deep == cfg and deep.model is not shared
    assert deep.model is deep.tags[0] is deep.tags[1]["m"]
    deep.model.hidden = 7
    assert cfg.model.hidden == 1 and deep.tags[0].hidden == 7


def test_pickle_round_trip():
    cfg = run.Partial(train, model=run.Config(Model, hidden=3), tags=("a",))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cloudpickle.loads(cloudpickle.dumps(cfg)) == cfg


def test_dir_lists_parameters():
    assert {"hidden", "act", "layers", "build"} <= set(dir(run.Config(Model)))


# --- build ---------------------------------------------------------------------------------


def test_build_nested_in_containers():
    cfg = run.Config(identity, value={
        "list": [run.Config(add, x=1), 5],
        "tuple": (run.Config(add, x=2, y=2),),
        "pair": Pair(run.Config(add, x=0), "r"),
        "set": {1, 2},
    })
    built = cfg.build()
    assert built == {"list": [2, 5], "tuple": (4,), "pair": Pair(1, "r"), "set": {1, 2}}
    assert type(built["pair"]) is Pair


def test_shared_config_is_built_once_and_shared():
    shared = run.Config(Model, hidden=3)
    cfg = run.Config(identity, value=[shared, {"again": shared}, run.Config(Model, hidden=3)])
    before = Model.calls
    a, b, c = cfg.build()
    assert Model.calls - before == 2
    assert a is b["again"] and a is not c


def test_partial_builds_functools_partial_with_nested_configs_built():
    p = run.Partial(train, model=run.Config(Model, hidden=9), epochs=2)
    fn = p.build()
    assert isinstance(fn, functools.partial) and fn.func is train
    out = fn(lr=0.5)
    assert out["model"].hidden == 9 and out["epochs"] == 2 and out["lr"] == 0.5
    assert run.build(run.Partial(posonly, 1))() == (1, 2)


def test_partial_nested_in_config_is_built_to_a_partial():
    out = run.Config(identity, value=run.Partial(add, y=10)).build()
    assert out(1) == 11


def test_build_error_names_the_dotted_path_and_keeps_the_cause():
    cfg = run.Config(train, model=run.Config(Model, layers=[1, run.Config(Encoder, size=-1)]))
    with pytest.raises(BuildError) as info:
        cfg.build()
    assert str(info.value).startswith("failed to build Encoder at <root>.model.layers.1: ")
    assert "ValueError: size must be positive, got -1" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_build_reports_a_missing_required_argument():
    with pytest.raises(BuildError, match=r"failed to build Encoder at <root>: TypeError"):
        run.Config(Encoder).build()


def test_build_of_plain_values_and_cycles():
    assert run.build(5) == 5
    assert run.build([run.Config(add, x=1)]) == [2]
    loop: list = []
    loop.append(loop)
    cfg = run.Config(identity, value=loop)
    with pytest.raises(BuildError, match="cycle"):
        cfg.build()


# --- Script --------------------------------------------------------------------------------


def test_script_command_lines():
    s = run.Script("train.sh", args=["--lr", 0.1], env={"A": 1})
    assert s.args == ["--lr", "0.1"] and s.env == {"A": "1"}
    assert s.command() == ["bash", "train.sh", "--lr", "0.1"]
    assert run.Script(inline="echo $1", args=["x"]).command() == [
        "bash", "-c", "echo $1", "steadyrun-inline", "x"]
    assert run.Script("t.py", entrypoint="python").command("py3") == ["py3", "t.py"]
    assert run.Script(inline="print(1)", args=["a"], entrypoint="python").command() == [
        sys.executable, "-c", "print(1)", "a"]


def test_script_runs_for_real(tmp_path):
    s = run.Script(inline='echo "$1-$A"', args=["hi"], env={"A": "env"})
    out = subprocess.run(s.command(), env={**s.env, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True)
    assert out.stdout == "hi-env\n"


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of path"),
    ({"path": "a.sh", "inline": "echo"}, "got both"),
    ({"path": "a.sh", "entrypoint": "zsh"}, "'bash' or 'python'"),
    ({"path": "a.sh", "args": "--lr 1"}, "list of strings"),
    ({"path": "a.sh", "args": [None]}, "not a string"),
    ({"path": "a.sh", "env": {"A": None}}, "value of 'A'"),
    ({"path": 3}, "string or path"),
])
def test_script_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        run.Script(**kwargs)


def test_script_equality_repr_copy_build():
    s = run.Script("a.sh", args=["1"])
    assert s == run.Script("a.sh", args=["1"]) and s != run.Script("a.sh")
    assert repr(s) == "Script(path='a.sh', args=['1'])"
    d = copy.deepcopy(s)
    assert d == s and d.args is not s.args
    assert s.build() is s


# --- paths ---------------------------------------------------------------------------------


def test_get_and_set_path():
    cfg = run.Partial(train, model=run.Config(Model, layers=[{"size": 1}]), tags={1: "a"})
    assert config.get_path(cfg, "model.layers.0.size") == 1
    assert config.get_path(cfg, "batch_size") == 32  # a default
    assert config.get_path(cfg, "tags.1") == "a"
    assert config.get_path(cfg, "") is cfg
    config.set_path(cfg, "model.layers.0.size", 4)
    config.set_path(cfg, "batch_size", 16)
    config.set_path(cfg, "tags.1", "b")
    assert cfg.model.layers[0]["size"] == 4 and cfg.batch_size == 16 and cfg.tags == {1: "b"}


@pytest.mark.parametrize("path, match", [
    ("model.hiddn", r"nothing at 'model.hiddn'.*did you mean 'hidden'"),
    ("model.layers.3", "out of range"),
    ("model.layers.x", "indexed by number"),
    ("epochs.x", "has no parts"),
    ("a..b", "empty part"),
])
def test_get_path_errors_name_the_path(path, match):
    cfg = run.Partial(train, model=run.Config(Model, layers=[1]), epochs=3)
    with pytest.raises(ConfigError, match=match):
        config.get_path(cfg, path)


def test_set_path_on_a_script_revalidates():
    s = run.Script("a.sh")
    config.set_path(s, "args", ["--x", 1])
    assert s.args == ["--x", "1"]
    with pytest.raises(ConfigError, match="'bash' or 'python'"):
        config.set_path(s, "entrypoint", "zsh")


# --- import paths --------------------------------------------------------------------------


def test_import_path_and_back():
    for obj, path in [(Model, "cfg_targets:Model"), (Model.make, "cfg_targets:Model.make"),
                      (Model.Inner.double, "cfg_targets:Model.Inner.double"),
                      (Act.GELU, "cfg_targets:Act.GELU"), (len, "builtins:len"),
                      (config.Config, "steadyrun.config:Config")]:
        assert config.import_path(obj) == path
        back = config.import_object(path)
        assert back is obj or back == obj
    assert config.import_object("cfg_targets.Model") is Model  # dotted form


def test_import_path_refuses_what_cannot_be_imported_back():
    with pytest.raises(SerializationError, match="lambda"):
        config.import_path(lambda: 1)
    with pytest.raises(SerializationError, match="inside a function"):
        config.import_path(make_closure())
    with pytest.raises(SerializationError, match="no import path"):
        config.import_path(functools.partial(add, 1))
    impostor = types.FunctionType(add.__code__, add.__globals__, "add")
    impostor.__qualname__, impostor.__module__ = "add", "cfg_targets"
    with pytest.raises(SerializationError, match="does not import back from 'cfg_targets:add'"):
        config.import_path(impostor)


@pytest.mark.parametrize("path, match", [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz:f'"),
    ("cfg_targets:Nope", "has no attribute 'Nope'"),
    ("", "package.module:Name"),
    ("cfg_targets:", "cannot import"),
])
def test_import_object_errors(path, match):
    with pytest.raises(ConfigError, match=match):
        config.import_object(path)


# --- fingerprint ---------------------------------------------------------------------------


_sample = sample_config


def test_fingerprint_equal_for_equal_configs_and_changes_with_any_value():
    fp = _sample().fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert run.fingerprint(_sample()) == fp
    reordered = run.Partial(train, tags=dict(reversed(list(_sample().tags.items()))),
                            model=_sample().model)
    assert reordered.fingerprint() == fp
    changed = []
    for mutate in (lambda c: setattr(c.model, "hidden", 65),
                   lambda c: setattr(c.model, "hidden", 64.0),
                   lambda c: setattr(c.model, "act", Act.RELU),
                   lambda c: c.tags["b"].append(0),
                   lambda c: setattr(c, "epochs", 1),
                   lambda c: setattr(c.model, "layers", [1, 2.5])):
        cfg = _sample()
        mutate(cfg)
        changed.append(cfg.fingerprint())
    assert fp not in changed and len(set(changed)) == len(changed)
    assert run.Config(train).fingerprint() != run.Partial(train).fingerprint()
    assert run.fingerprint(Pair(1, 2)) == run.fingerprint(Pair(1, 2))
    assert run.fingerprint(Pair(1, 2)) != run.fingerprint((1, 2))  # not written as YAML either


def test_fingerprint_is_stable_across_processes(subprocess_env):
    code = "import cfg_targets as t; print(t.sample_config().fingerprint())"
    outs = {subprocess.run([sys.executable, "-c", code], env={**subprocess_env,
                                                                "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, check=True).stdout.strip()
            for seed in ("1", "2")}
    assert outs == {_sample().fingerprint()}


def test_fingerprint_refuses_values_without_a_stable_form():
    with pytest.raises(SerializationError, match=r"<root>\.model"):
        run.Config(train, model=lambda: 1).fingerprint()
    with pytest.raises(SerializationError, match=r"<root>\.model.*object"):
        run.Config(train, model=object()).fingerprint()


def test_script_fingerprint():
    assert run.Script("a.sh").fingerprint() == run.Script("a.sh").fingerprint()
    assert run.Script("a.sh").fingerprint() != run.Script("a.sh", args=["1"]).fingerprint()


# --- Fiddle interop ------------------------------------------------------------------------


def test_fiddle_objects_are_coerced_and_built():
    fdl = pytest.importorskip("fiddle")
    fcfg = fdl.Config(train, model=fdl.Config(Model, hidden=7), tags=[fdl.Partial(add, y=3)])
    ours = config.coerce(fcfg)
    assert type(ours) is run.Config and type(ours.model) is run.Config
    assert type(ours.tags[0]) is run.Partial
    assert ours == run.Config(train, model=run.Config(Model, hidden=7),
                              tags=[run.Partial(add, y=3)])
    out = ours.build()
    assert out["model"].hidden == 7 and out["tags"][0](1) == 4
    assert run.build(fcfg)["model"].hidden == 7  # build accepts Fiddle objects directly
    nested = run.Config(identity, value=fdl.Config(add, x=1))
    assert type(nested.value) is run.Config and nested.build() == 2
    assert "!config:cfg_targets:train" in run.to_yaml(fcfg)
    assert run.fingerprint(fcfg) == ours.fingerprint()
    assert config.coerce(fdl.Config(positional, 1, 2, 3)).build() == (1, 2, (3,), 1, {})


def test_coerce_returns_plain_values_and_ours_unchanged():
    cfg = run.Config(Model, layers=[1, 2])
    assert config.coerce(cfg) is cfg and cfg.layers is config.coerce(cfg).layers
    value = [1, {"a": (2,)}]
    assert config.coerce(value) is value
