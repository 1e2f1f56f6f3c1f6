"""Reports: a PNG of resources over time and a timeline, and an HTML page, of a real run."""

from __future__ import annotations

import base64
import io
import re
import sys
from types import SimpleNamespace

import pytest

import steadyrun as run
from steadyrun.observe import report
from steadyrun.store.db import Store

# a task that keeps one core busy and holds ~40 MB for about a second
BUSY = (f"{sys.executable} -c 'import time\nx = [0] * 5_000_000\nt = time.time()\n"
        "while time.time() - t < 1.0: pass'")


@pytest.fixture
def finished(tmp_path):
    """A real experiment: one busy task, one that fails once then succeeds, one after."""
    marker = tmp_path / "failed-once"
    flaky = (f"if [ -f '{marker}' ]; then sleep 0.8; "
             f"else touch '{marker}'; sleep 0.6; exit 3; fi")
    exp = run.Experiment([
        run.Task("busy", run.Script(inline=BUSY)),
        run.Task("flaky", run.Script(inline=flaky),
                 retry=run.Retry(max_attempts=2, initial_delay=0.1, jitter=0.0)),
        run.Task("after", run.Script(inline="sleep 0.6"), depends_on=["busy"]),
    ], title="reported", monitor_interval=0.2, progress=False)
    result = exp.run()
    assert result["flaky"].attempts == 2
    return exp


def test_report_of_a_real_experiment(finished, tmp_path):
    paths = finished.report(out=tmp_path / "out")
    assert set(paths) == {"png", "html"}
    assert paths["png"].parent == tmp_path / "out"

    from matplotlib.image import imread

    pixels = imread(paths["png"])
    store = Store()
    gpu = report.has_gpu_samples(store.samples(finished.id))  # no GPU panel without GPUs
    store.close()
    width, height = report.figure_size(3, gpu)
    assert pixels.shape[:2] == (round(height * report.DPI), round(width * report.DPI))

    page = paths["html"].read_text()
    for name in ("busy", "flaky", "after"):
        assert f"<td>{name}</td>" in page
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded is not None
    assert base64.b64decode(embedded.group(1)) == paths["png"].read_bytes()
    flaky_row = re.search(r'<tr class="succeeded"><td>flaky</td>(.*?)</tr>', page).group(1)
    cells = re.findall(r"<td>(.*?)</td>", flaky_row)
    assert cells[:4] == ["succeeded", "2", "#1 error", "0"]  # state, attempts, kind, exit

    store = Store()
    summaries = {s.name: s for s in report.task_summaries(store, finished.id)}
    store.close()
    busy = summaries["busy"]
    assert busy.peak_rss and busy.peak_rss > 30 * 1024**2  # the 40 MB list was seen
    assert busy.cpu_seconds and busy.cpu_seconds > 0.3
    assert summaries["flaky"].duration > 1.3  # both attempts and the backoff


def test_report_defaults_to_the_experiment_folder(finished, steadyrun_home):
    paths = run.Experiment.from_id(finished.id).report()
    folder = steadyrun_home / "experiments" / finished.id / "report"
    assert paths == {"png": folder / "report.png", "html": folder / "report.html"}
    assert paths["png"].stat().st_size > 1000 and (folder.stat().st_mode & 0o777) == 0o700


def test_figure_for_no_samples_and_many_tasks():
    tasks = [f"t{i}" for i in range(80)]
    attempts = [SimpleNamespace(task=t, number=1, state="failed", kind="oom",
                                started_at=100.0 + i, ended_at=101.0 + i)
                for i, t in enumerate(tasks)]
    png = report.render_png(tasks, attempts, [], title="empty", now=200.0)
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(png), format="png")
    width, height = report.figure_size(80, gpu=False)  # no samples: no GPU panel
    assert height == report.figure_size(report.MAX_TIMELINE_ROWS, gpu=False)[1]  # it stops growing
    assert pixels.shape[:2] == (round(height * report.DPI), round(width * report.DPI))


def test_changes_are_described():
    assert report.describe_changes([{"before": 2, "batch_size": [64, 32]},
                                    {"before": 3, "batch_size": [32, 16]}]) == (
        "attempt 2: batch_size 64 -> 32; attempt 3: batch_size 32 -> 16")
    assert report.describe_changes([]) == ""


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(report.PlotUnavailable, match=r"pip install 'steadyrun\[plot\]'"):
        report.render_png(["a"], [], [])
    assert issubclass(report.PlotUnavailable, run.SteadyrunError)


def test_importing_steadyrun_loads_neither_report_nor_matplotlib():
    import subprocess

    code = ("import sys, steadyrun; "
            "print([m for m in ('steadyrun.observe.report', 'steadyrun.observe.live', "
            "'matplotlib', 'rich') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
