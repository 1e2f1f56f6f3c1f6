"""Per-task overhead of DockerExecutor next to a bare ``docker run --rm IMAGE true``.

    python bench/docker_overhead.py [--tasks 20] [--image IMAGE]

Uses the daemon of ``$DOCKER_HOST`` when it answers, else starts one with
``scripts/docker-up.sh`` (and stops it after). In the same run, for one and for two
containers at a time: ``--tasks`` bare ``docker run --rm IMAGE true`` (the CLI, one
after the other in each of the parallel lanes), then the same number of no-op tasks as
a steadyrun experiment on ``DockerExecutor`` (payload file, container with mounts,
Python worker, result file, store records). Target: within 1.5x of bare ``docker run``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from work import noop  # noqa: E402

import steadyrun as run  # noqa: E402

DEFAULT_IMAGE = "steadyrun-test-python:bookworm"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--poll", action="store_true", help="also measure without events")
    args = ap.parse_args()
    os.environ.setdefault("STEADYRUN_HOME", tempfile.mkdtemp(prefix="steadyrun-bench-"))
    engine_dir = None
    if not _answers():
        engine_dir = Path(tempfile.mkdtemp(prefix="steadyrun-bench-docker-"))
        up = subprocess.run([str(ROOT / "scripts" / "docker-up.sh"), str(engine_dir)],
                            capture_output=True, text=True)
        if up.returncode != 0:
            sys.exit(f"could not start dockerd:\n{up.stderr}")
        os.environ["DOCKER_HOST"] = f"unix://{engine_dir}/docker.sock"
    try:
        rows = measure(args.tasks, args.image, args.poll)
    finally:
        if engine_dir is not None:
            subprocess.run([str(ROOT / "scripts" / "docker-down.sh"), str(engine_dir)])
            shutil.rmtree(engine_dir, ignore_errors=True)
    n = args.tasks
    print(f"{n} no-op containers per row, daemon {os.environ['DOCKER_HOST']}, image "
          f"{args.image}")
    print(f"{'':<34}{'seconds':>9}{'ms/task':>9}{'ratio':>8}")
    for lanes in (1, 2):
        bare, *ours = rows[lanes]
        print(f"{f'docker run --rm true, {lanes} at once':<34}{bare:>9.2f}"
              f"{bare / n * 1e3:>9.0f}{'1.00x':>8}")
        labels = ("docker run worker (CLI)", "DockerExecutor", " ... listing only")
        for label, seconds in zip(labels, ours, strict=False):
            print(f"{f'{label}, {lanes} at once':<34}{seconds:>9.2f}"
                  f"{seconds / n * 1e3:>9.0f}{seconds / bare:>7.2f}x")
    print("(target: DockerExecutor within 1.5x of bare docker run)")


def measure(tasks: int, image: str, poll: bool) -> dict[int, tuple[float, ...]]:
    """Seconds for ``tasks`` bare runs and ``tasks`` experiment tasks, per parallelism."""
    _bare(image, 2, 2)  # warm the daemon and the image's layers
    rows: dict[int, tuple[float, ...]] = {}
    for lanes in (1, 2):
        row = [_bare(image, tasks, lanes), _bare(image, tasks, lanes, _worker_args())]
        for kind in (run.DockerExecutor, _ListingOnly) if poll else (run.DockerExecutor,):
            ex = kind(image, volumes=[f"{ROOT / 'bench'}:/opt/bench:ro"],
                      env_vars={"PYTHONPATH": "/opt/bench"}, max_workers=lanes, cpus=lanes)
            items = [run.Task(f"t{i}", run.Partial(noop, i=i), resources=run.Resources(cpus=1))
                     for i in range(tasks)]
            start = time.perf_counter()
            result = run.Experiment(items, title="docker-overhead", executor=ex,
                                    progress=False, monitor_interval=None).run()
            row.append(time.perf_counter() - start)
            assert result[f"t{tasks - 1}"].value == tasks - 1
        rows[lanes] = tuple(row)
    return rows


class _ListingOnly(run.DockerExecutor):
    """Without the event stream: every wait() lists the ended containers."""

    def open(self) -> None:
        super().open()
        events, self._events = self._events, None
        self._events_ok = False
        if events is not None:
            events.close()


def _worker_args() -> list[str]:
    """``docker run`` options and command that run a no-op payload through the worker
    with the mounts DockerExecutor uses."""
    from steadyrun.attempt import worker
    from steadyrun.executors.docker import containers

    folder = tempfile.mkdtemp(prefix="steadyrun-bench-attempt-")
    worker.write_payload(run.Partial(noop, i=1), folder)
    args = ["-v", f"{folder}:{folder}", "-v", f"{ROOT / 'bench'}:/opt/bench:ro",
            "-e", f"PYTHONPATH={containers.LIB_DIR}:/opt/bench"]
    for src, dst in containers.worker_mounts().items():
        args += ["-v", f"{src}:{dst}:ro"]
    return [*args, "--", "python3", "-m", "steadyrun.attempt.worker", folder]


def _bare(image: str, tasks: int, lanes: int, worker: list[str] | None = None) -> float:
    counts = [tasks // lanes + (1 if i < tasks % lanes else 0) for i in range(lanes)]
    if worker is None:
        command = ["docker", "run", "--rm", image, "true"]
    else:
        sep = worker.index("--")
        command = ["docker", "run", "--rm", *worker[:sep], image, *worker[sep + 1:]]

    def lane(count: int) -> None:
        for _ in range(count):
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    threads = [threading.Thread(target=lane, args=(c,)) for c in counts]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def _answers() -> bool:
    if not os.environ.get("DOCKER_HOST"):
        return False
    return subprocess.run(["docker", "version"], capture_output=True).returncode == 0


if __name__ == "__main__":
    main()
