"""How long `import steadyrun` takes, next to `import json`.

Runs fresh interpreters with ``-X importtime`` and reads the cumulative microseconds of
the top-level module from stderr; prints medians and the difference. Target: steadyrun
under 60 ms above json.

    python bench/import_time.py [--runs 20] [--target-ms 60]

Bytecode is cached in a temporary ``PYTHONPYCACHEPREFIX`` (warmed by one run first), so
the numbers are those of an installed package, not of compiling the sources each time,
even where ``PYTHONDONTWRITEBYTECODE`` is set. Exit status 1 when over the target.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MODULES = ("json", "steadyrun", "steadyrun.config")


def cumulative_us(module: str, env: dict[str, str]) -> int:
    """Cumulative import time of ``module`` in a fresh interpreter, in microseconds."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                          env=env, capture_output=True, text=True, check=True)
    for line in proc.stderr.splitlines():
        # "import time:   self [us] | cumulative | imported package"; top level unindented
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) == 3 and parts[2].rstrip() == f" {module}":
            return int(parts[1])
    raise RuntimeError(f"no importtime line for {module!r} in:\n{proc.stderr[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--target-ms", type=float, default=60.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="steadyrun-pyc-") as pyc:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = pyc
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
        results: dict[str, list[int]] = {}
        for module in MODULES:
            cumulative_us(module, env)  # warm the bytecode cache and the OS file cache
            results[module] = [cumulative_us(module, env) for _ in range(args.runs)]

    print(f"{'module':<18} {'median ms':>10} {'min ms':>8} {'max ms':>8}   ({args.runs} runs)")
    for module, samples in results.items():
        print(f"{module:<18} {statistics.median(samples) / 1000:>10.1f} "
              f"{min(samples) / 1000:>8.1f} {max(samples) / 1000:>8.1f}")
    diff_ms = (statistics.median(results["steadyrun"])
               - statistics.median(results["json"])) / 1000
    verdict = "ok" if diff_ms < args.target_ms else "OVER TARGET"
    print(f"\nsteadyrun - json: {diff_ms:.1f} ms (target < {args.target_ms:g} ms): {verdict}")
    return 0 if diff_ms < args.target_ms else 1


if __name__ == "__main__":
    sys.exit(main())
