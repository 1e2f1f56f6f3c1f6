"""``steadyrun results ID``: a sweep compared from the command line, and the values in
``steadyrun status --json`` and ``ExperimentResult.to_pandas()``; real runs in a fresh
process per call."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from results_payloads import LONG_NOTE

SWEEP = ["lr=0.1,0.01,0.001", "batch_size=32,256"]


@pytest.fixture
def cli(subprocess_env, steadyrun_home, tmp_path):
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home), COLUMNS="200")

    def call(*args: str, timeout: float = 120):
        return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                              capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, stdin=subprocess.DEVNULL)

    return call


@pytest.fixture
def sweep_id(cli) -> str:
    """A finished sweep of six trials (thread strategy)."""
    proc = cli("run", "results_payloads:trial", *SWEEP, "--sweep", "--strategy", "thread",
               "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["tasks"]) == 6
    return data["id"]


def expected_losses() -> list[float]:
    return sorted(round(lr * 1000 / b, 9) for lr in (0.1, 0.01, 0.001) for b in (32, 256))


def test_results_sorted_by_loss_show_the_axes_and_nothing_cut(cli, sweep_id):
    proc = cli("results", sweep_id, "--sort", "loss")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header[:4] == ["TASK", "STATE", "LR", "BATCH_SIZE"]
    assert {"LOSS", "ACC", "METRICS.F1", "METRICS.CURVE", "NOTE"} <= set(header)
    assert "HIDDEN" not in header  # the same in every trial: not an axis
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 6
    loss = header.index("LOSS")
    assert [float(r[loss]) for r in rows] == expected_losses()
    for r in rows:
        assert r[1] == "succeeded"
        assert r[0] == f"trial[lr={r[2]},batch_size={r[3]}]"
        assert LONG_NOTE in r and "<list len=3>" in " ".join(r)
    assert "..." not in proc.stdout

    desc = cli("results", sweep_id, "--sort", "metrics.f1", "--desc")
    f1 = [float(line.split()[header.index("METRICS.F1")]) for line in
          desc.stdout.splitlines()[1:]]
    assert f1 == sorted(f1, reverse=True)


def test_results_as_csv_and_json(cli, sweep_id):
    proc = cli("results", sweep_id, "--sort", "loss", "--csv")
    assert proc.returncode == 0, proc.stderr
    table = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(table) == 6
    assert list(table[0])[:4] == ["task", "state", "lr", "batch_size"]
    assert [float(r["loss"]) for r in table] == expected_losses()
    assert all(r["note"] == LONG_NOTE for r in table)

    proc = cli("results", sweep_id, "--sort", "acc", "--json")
    data = json.loads(proc.stdout)
    assert data["id"] == sweep_id and data["params"] == ["lr", "batch_size"]
    assert {"loss", "acc", "metrics.f1", "metrics.curve", "note"} <= set(data["values"])
    accs = [r["acc"] for r in data["rows"]]
    assert accs == sorted(accs) and len(accs) == 6
    assert {r["lr"] for r in data["rows"]} == {0.1, 0.01, 0.001}
    assert {r["batch_size"] for r in data["rows"]} == {32, 256}


def test_status_json_carries_json_safe_values(cli, sweep_id):
    proc = cli("status", sweep_id, "--json")
    assert proc.returncode == 0, proc.stderr
    tasks = json.loads(proc.stdout)["tasks"]
    assert len(tasks) == 6
    for t in tasks:
        lr, batch = t["params"]["lr"], t["params"]["batch_size"]
        assert t["values"]["loss"] == round(lr * 1000 / batch, 9)
        assert t["values"]["metrics.f1"] == round(0.5 + lr, 6)
        assert t["values"]["metrics.curve"] == "<list len=3>"  # a type note, not the list
        assert t["value"] == t["values"]


def test_failed_tasks_show_their_state_and_sort_last(cli):
    proc = cli("run", "results_payloads:trial", "lr=0.1,-1,0.2", "batch_size=10", "--sweep",
               "--strategy", "thread", "--json", "--quiet")
    assert proc.returncode == 1
    exp_id = json.loads(proc.stdout)["id"]
    data = json.loads(cli("results", exp_id, "--sort", "loss", "--json").stdout)
    assert [r["state"] for r in data["rows"]] == ["succeeded", "succeeded", "failed"]
    failed = data["rows"][-1]
    assert failed["lr"] == -1 and failed["loss"] is None and failed["acc"] is None
    status = json.loads(cli("status", exp_id, "--json").stdout)
    bad = next(t for t in status["tasks"] if t["state"] == "failed")
    assert bad["value"] is None and bad["values"] == {}


def test_unknown_sort_column_is_a_usage_error(cli, sweep_id):
    proc = cli("results", sweep_id, "--sort", "los")
    assert proc.returncode == 2
    assert "no column 'los'" in proc.stderr and "loss" in proc.stderr
    assert cli("results", sweep_id, "--json", "--csv").returncode == 2


def test_to_pandas_returns_the_same_table(sweep_id):
    pd = pytest.importorskip("pandas")
    import steadyrun as run

    frame = run.Experiment.from_id(sweep_id).results().to_pandas()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 6
    assert {"state", "lr", "batch_size", "loss", "acc", "metrics.f1"} <= set(frame.columns)
    assert sorted(frame["loss"]) == expected_losses()


def test_to_pandas_without_pandas_names_the_install(monkeypatch, sweep_id):
    import steadyrun as run
    from steadyrun.errors import SteadyrunError

    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(SteadyrunError, match="pip install pandas"):
        run.Experiment.from_id(sweep_id).results().to_pandas()


def test_terminal_table_wraps_long_cells_or_points_at_csv(monkeypatch, capsys):
    from steadyrun.cli import render, results

    monkeypatch.setattr(render, "use_rich", lambda: True)
    columns = ["task", "state", "loss", "note"]
    rows = [["t1", "succeeded", "0.5", LONG_NOTE], ["t2", "failed", "", ""]]
    monkeypatch.setenv("COLUMNS", "80")
    results.print_wide_table(columns, rows)
    out = capsys.readouterr()
    assert out.out.count("z") == len(LONG_NOTE)  # wrapped over lines, every character kept
    assert max(len(line) for line in out.out.splitlines()) <= 80
    assert "…" not in out.out

    wide = [f"metric_{i}" for i in range(20)]
    results.print_wide_table(["task", "state", *wide],
                             [["t1", "succeeded", *("0.123456789" for _ in wide)]])
    out = capsys.readouterr()
    assert "--csv" in out.err
    assert out.out.count("0.123456789") == 20
