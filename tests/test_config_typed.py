"""Typed overrides, ``_target_`` mappings and run files (``--config`` / ``--to-yaml``).

Override text is read by the type hints of the parameter it sets; a mismatch names the
path, the expected type and the text. The CLI cases run ``python -m steadyrun`` in a fresh
process, as users do.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import steadyrun as run
from steadyrun.errors import ConfigError, OverrideError
from typed_targets import MLP, Color, train


def applied(*overrides: str) -> dict:
    cfg = run.Partial(train)
    run.apply_overrides(cfg, list(overrides))
    return cfg.__arguments__


# --- typed values in Python ----------------------------------------------------------------


@pytest.mark.parametrize(("override", "key", "expected"), [
    ("lr=1", "lr", 1.0),
    ("lr=1e-3", "lr", 1e-3),
    ("lr=-inf", "lr", float("-inf")),
    ("epochs=7", "epochs", 7),
    ("flag=yes", "flag", True),
    ("flag=No", "flag", False),
    ("flag=1", "flag", True),
    ("flag=false", "flag", False),
    ("name=1", "name", "1"),
    ("name=true", "name", "true"),
    ("name='x y'", "name", "x y"),
    ("out=/tmp/x", "out", Path("/tmp/x")),
    ("out=none", "out", None),
    ("seed=null", "seed", None),
    ("seed=3", "seed", 3),
    ("mode=slow", "mode", "slow"),
    ("color=blue", "color", Color.BLUE),
    ("color=RED", "color", Color.RED),
    ("color=2", "color", Color.BLUE),
    ("layers=[1, 2]", "layers", [1, 2]),
    ("layers=1,2", "layers", [1, 2]),
    ("layers=[]", "layers", []),
    ("layers=None", "layers", None),
    ("shape=(1, 2, 3)", "shape", (1, 2, 3)),
    ("pair=[3, b]", "pair", (3, "b")),
    ("weights={a: 1, b: 2.5}", "weights", {"a": 1.0, "b": 2.5}),
    ("loose=1", "loose", 1),  # no hint: read as before
    ("anything=[a, 1]", "anything", ["a", 1]),
])
def test_override_text_is_read_by_the_type_hint(override, key, expected):
    value = applied(override)[key]
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("override", "message"), [
    ("lr=abc", "lr: expected float, got 'abc'"),
    ("epochs=1.5", "epochs: expected int, got '1.5'"),
    ("epochs=true", "epochs: expected int, got 'true'"),
    ("flag=maybe", "flag: expected bool (true/false/yes/no/1/0), got 'maybe'"),
    ("seed=x", "seed: expected int | none, got 'x'"),
    ("mode=medium", "mode: expected one of 'fast', 'slow', got 'medium'"),
    ("color=green", "color: expected Color (one of RED, BLUE), got 'green'"),
    ("layers=[1, x]", "layers.1: expected int, got 'x'"),
    ("layers=5", "layers: expected list[int] | none, got '5'"),
    ("pair=[1]", "pair: expected tuple[int, str] (2 items)"),
    ("weights={a: x}", "weights.a: expected float, got 'x'"),
    ("model=3", "model: expected MLP | none, got '3'"),
])
def test_a_mismatch_names_the_path_the_type_and_the_value(override, message):
    cfg = run.Partial(train, lr=0.5)
    with pytest.raises(OverrideError) as info:
        run.apply_overrides(cfg, ["epochs=2", override])
    assert message in str(info.value)
    assert cfg.__arguments__ == {"lr": 0.5}  # all or nothing


def test_nested_paths_and_arithmetic_use_the_hints_of_their_own_target():
    args = applied("model=Config(typed_targets:MLP)", "model.hidden=8", "model.dropout=1",
                   "epochs=3", "epochs*=2")
    assert args["model"] == run.Config(MLP, hidden=8, dropout=1.0)
    assert type(args["model"].dropout) is float and args["epochs"] == 6
    with pytest.raises(OverrideError, match="model.act: expected one of 'relu', 'gelu', "
                                            "got 'tanh'"):
        applied("model=Config(typed_targets:MLP)", "model.act=tanh")
    with pytest.raises(OverrideError, match=r"layers\.0: expected int, got 'x'"):
        applied("layers=[1]", "layers.0=x")


def test_python_values_given_directly_are_not_checked():
    cfg = run.Partial(train, lr="not checked here")
    run.config.set_path(cfg, "epochs", "anything")
    assert cfg.lr == "not checked here" and cfg.epochs == "anything"


_KEYS = ["lr", "epochs", "flag", "name", "out", "seed", "mode", "color", "layers", "shape",
         "pair", "weights", "model", "model.hidden", "anything", "layers.0", "weights.a"]
_BITS = st.sampled_from(["1", "x", "[", "]", "{", "}", "(", ")", ",", ":", "'", "none",
                         "true", "-inf", "1e3", "_target_", "typed_targets.MLP", " ",
                         "Config(", "typed_targets:MLP", "hidden", "=", "_partial_", "\\"])


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KEYS),
                          st.one_of(st.text(max_size=12), st.lists(_BITS, max_size=10)
                                    .map("".join))), max_size=3))
def test_any_text_for_typed_parameters_raises_only_named_errors(pairs):
    cfg = run.Partial(train, model=run.Config(MLP), layers=[1], weights={"a": 1.0})
    with contextlib.suppress(ConfigError):
        run.apply_overrides(cfg, [f"{key}={text}" for key, text in pairs])


# --- _target_ mappings --------------------------------------------------------------------


def test_a_target_mapping_becomes_a_config_and_builds():
    args = applied("model={_target_: typed_targets.MLP, hidden: 8, dropout: 1}")
    assert args["model"] == run.Config(MLP, hidden=8, dropout=1.0)
    result = run.Partial(train, **args).build()()
    assert result["model"] == {"hidden": 8, "act": "relu", "dropout": 1.0}


def test_partial_true_gives_a_partial_and_untyped_places_take_mappings_too():
    args = applied("model={_target_: typed_targets.MLP, _partial_: true}",
                   "anything=[{_target_: 'typed_targets:MLP', hidden: 2}, 3]")
    assert args["model"] == run.Partial(MLP)
    assert args["anything"] == [run.Config(MLP, hidden=2), 3]


@pytest.mark.parametrize(("override", "message"), [
    ("model={_target_: typed_targets.Nope}", "model: unknown _target_ 'typed_targets.Nope'"),
    ("model={_target_: no_such_module_q.X}", "model: unknown _target_ 'no_such_module_q.X'"),
    ("anything={k: {_target_: typed_targets.Gone}}", "anything.k: unknown _target_"),
    ("model={_target_: typed_targets.MLP, hidden: abc}",
     "model.hidden: expected int, got 'abc'"),
    ("model={_target_: typed_targets.MLP, hiddn: 1}", "did you mean 'hidden'"),
    ("model={_target_: typed_targets.MLP, _partial_: maybe}", "_partial_ must be true or false"),
])
def test_bad_target_mappings_name_the_dotted_path(override, message):
    with pytest.raises(ConfigError) as info:
        applied(override)
    assert message in str(info.value)


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
def cli(subprocess_env, steadyrun_home, tmp_path):
    """``cli("run", ...)`` -> CompletedProcess of ``python -m steadyrun`` in ``tmp_path``."""
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))

    def call(*args: str, stdin: str | None = None):
        return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              input=stdin if stdin is not None else "")

    return call


def value_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    (task,) = result["tasks"].values()
    return task["value"]


def test_cli_mismatch_exits_2_naming_path_type_and_value(cli, steadyrun_home):
    proc = cli("run", "typed_targets:train", "lr=abc", "--dryrun")
    assert proc.returncode == 2
    assert "lr: expected float, got 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not steadyrun_home.exists()


def test_cli_values_are_coerced_and_a_target_mapping_builds(cli):
    value = value_of(cli("run", "--json", "--quiet", "--strategy", "thread",
                         "typed_targets:train", "lr=1", "flag=yes", "seed=none", "mode=slow",
                         "layers=[1,2]", "name=007", "color=blue",
                         "model={_target_: typed_targets.MLP, hidden: 8}"))
    assert value["lr"] == 1.0 and isinstance(value["lr"], float)
    assert value["flag"] is True and value["seed"] is None and value["mode"] == "slow"
    assert value["layers"] == [1, 2] and value["name"] == "007" and value["color"] == "BLUE"
    assert value["model"] == {"hidden": 8, "act": "relu", "dropout": 0.0}


def test_cli_unknown_target_exits_2_with_the_path(cli):
    proc = cli("run", "typed_targets:train", "model={_target_: typed_targets.Nope}")
    assert proc.returncode == 2
    assert "model: unknown _target_ 'typed_targets.Nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_sweep_values_are_typed(cli):
    proc = cli("run", "typed_targets:train", "lr=1,2", "--sweep", "--to-yaml")
    assert proc.returncode == 0, proc.stderr
    tasks = run.from_yaml(proc.stdout)["tasks"]
    assert [t["name"] for t in tasks] == ["train[lr=1]", "train[lr=2]"]
    assert [t["payload"].lr for t in tasks] == [1.0, 2.0]
    assert all(type(t["payload"].lr) is float for t in tasks)


def test_to_yaml_writes_and_runs_nothing_and_config_reads_it_back(cli, tmp_path, steadyrun_home):
    first = cli("run", "typed_targets:train", "lr=0.5",
                "model={_target_: typed_targets.MLP, act: gelu}", "model.hidden=3", "--cpus", "2",
                "--timeout", "90s", "--title", "typed", "--to-yaml", "run.yaml")
    assert first.returncode == 0, first.stderr
    assert not steadyrun_home.exists()  # nothing ran, nothing was stored
    text = (tmp_path / "run.yaml").read_text()
    again = cli("run", "--config", "run.yaml", "--to-yaml", "-")
    assert again.returncode == 0, again.stderr
    assert again.stdout == text  # the same resolved definition
    definition = run.from_yaml(text)
    assert definition["title"] == "typed"
    (task,) = definition["tasks"]
    assert task["payload"] == run.Partial(train, lr=0.5,
                                          model=run.Config(MLP, act="gelu", hidden=3))
    assert task["resources"]["cpus"] == 2 and task["timeout"] == 90


def test_first_of_two_overrides_on_one_path_can_be_replaced():
    # model.hidden before model=... is an error (model is None then), after it applies
    with pytest.raises(OverrideError, match="cannot set 'model.hidden'"):
        applied("model.hidden=3", "model=Config(typed_targets:MLP)")


def test_config_file_with_overrides_on_top(cli, tmp_path):
    (tmp_path / "hydra.yaml").write_text(
        "_target_: typed_targets.train\n"
        "lr: 1e-3\n"  # YAML reads this as text; the hint makes it a float
        "epochs: 2\n"
        "model: {_target_: typed_targets.MLP, hidden: 5}\n")
    shown = cli("run", "--config", "hydra.yaml", "epochs=4", "model.dropout=1", "--to-yaml")
    assert shown.returncode == 0, shown.stderr
    (task,) = run.from_yaml(shown.stdout)["tasks"]
    assert task["payload"] == run.Config(train, lr=1e-3, epochs=4,
                                         model=run.Config(MLP, hidden=5, dropout=1.0))
    value = value_of(cli("run", "-c", "hydra.yaml", "epochs=4", "--json", "--quiet",
                         "--strategy", "thread"))
    assert value["lr"] == 1e-3 and value["epochs"] == 4 and value["model"]["hidden"] == 5


def test_config_file_keeps_its_title_and_executor_unless_told(cli, tmp_path):
    made = cli("run", "typed_targets:train", "--title", "from-file", "--strategy", "thread",
               "--to-yaml", "run.yaml")
    assert made.returncode == 0, made.stderr
    dry = cli("run", "--config", "run.yaml", "--dryrun")
    assert dry.returncode == 0, dry.stderr
    assert "as experiment 'from-file'" in dry.stdout and "local/thread" in dry.stdout
    dry = cli("run", "--config", "run.yaml", "--title", "other", "--strategy", "sequential",
              "--dryrun")
    assert "as experiment 'other'" in dry.stdout and "local/sequential" in dry.stdout


@pytest.mark.parametrize(("content", "args", "message"), [
    ("_target_: typed_targets.Nope\n", [], "payload: unknown _target_ 'typed_targets.Nope'"),
    ("_target_: typed_targets.train\nlr: abc\n", [], "payload.lr: expected float, got 'abc'"),
    ("!!python/object/apply:os.system ['true']\n", [], "cannot read this YAML"),
    ("just: a mapping\n", [], "is not a run definition"),
    ("_target_: typed_targets.train\n", ["lr=abc"], "lr: expected float, got 'abc'"),
    ("tasks: []\n", [], "'tasks' must be a non-empty list"),
])
def test_bad_config_files_exit_2_naming_the_problem(cli, tmp_path, steadyrun_home, content,
                                                    args, message):
    (tmp_path / "bad.yaml").write_text(content)
    proc = cli("run", "--config", "bad.yaml", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not steadyrun_home.exists()


def test_missing_config_file_exits_2(cli):
    proc = cli("run", "--config", "nope.yaml")
    assert proc.returncode == 2
    assert "--config nope.yaml: cannot read it" in proc.stderr
