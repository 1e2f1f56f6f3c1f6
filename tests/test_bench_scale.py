"""bench/scale.py runs end to end on a small experiment and reports what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "scale.py"


def test_scale_bench_small_run(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tasks", "200", "--strategy", "thread",
         "--skip", "ray,dask", "--repeat", "1", "--json", str(out)],
        env=subprocess_env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"steadyrun thread", "futures thread", "futures process c=1",
                         "futures process c=10"}
    for row in rows.values():
        assert "error" not in row, row
        assert row["tasks"] == 200
        assert row["seconds"] > 0 and row["rss_mb"] > 5
        assert abs(row["ms_per_task"] - row["seconds"] / 200 * 1e3) < 1e-9
    ours = rows["steadyrun thread"]
    assert ours["attempts"] == 200  # read from the store: one attempt per task
    assert ours["store_bytes"] > 0 and ours["files"] >= 1 and ours["folders"] >= 1
    assert ours["bytes_per_attempt"] > 0
    assert ours["status_s"] is not None and ours["status_s"] > 0
    assert ours["resume_s"] is not None and ours["resume_s"] > 0
    # the table: one line per row, the targets under ours
    lines = proc.stdout.splitlines()
    assert any(line.startswith("steadyrun thread") and " 200 " in line for line in lines)
    assert any(line.strip().startswith("targets: ms/task <= 0.1:") for line in lines)
    assert any(line.startswith("futures process c=1 ") for line in lines)
