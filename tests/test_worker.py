"""The worker: payload files, running every payload kind, logs, results, errors, exit codes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import cloudpickle
import pytest

from steadyrun.attempt import worker
from steadyrun.config import Config, Partial, Script

pytestmark = pytest.mark.timeout(60)


# payloads (module level: importable by path from a worker process)

def add(a: int = 1, b: int = 2) -> int:
    return a + b


def talks() -> str:
    print("hello stdout")
    print("hello stderr", file=sys.stderr)
    sys.stdout.flush()
    os.system("echo child-stdout; echo child-stderr >&2")
    return "done"


def raises() -> None:
    raise ValueError("boom from the payload")


def no_memory() -> None:
    raise MemoryError("could not allocate")


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError: detected by name, torch is never imported."""


def cuda_oom() -> None:
    raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def runtime_oom_text() -> None:
    raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")


def exits_3() -> None:
    sys.exit(3)


def exits_0() -> None:
    sys.exit(0)


def returns_lock():
    return threading.Lock()


def make_list(n: int) -> list[int]:
    return list(range(n))


def boom_model(size: int):
    raise MemoryError(f"model of size {size} does not fit")


@pytest.fixture
def adir(tmp_path: Path) -> Path:
    d = tmp_path / "attempt dir with 'quotes' and spaces"
    d.mkdir(mode=0o700)
    return d


def _read_error(d: Path) -> dict:
    return json.loads((d / "error.json").read_text())


# --- payload files ----------------------------------------------------------------------


def test_write_payload_prefers_yaml_and_falls_back_to_pickle(adir):
    assert worker.write_payload(Partial(add, a=5), adir) == "payload.yaml"
    assert worker.read_payload(adir) == Partial(add, a=5)
    other = adir / "other"
    other.mkdir()
    factor = 3
    assert worker.write_payload(lambda: factor * 2, other) == "payload.pkl"
    assert worker.read_payload(other)() == 6
    assert not list(other.glob("*.tmp-*"))  # atomic: no temporary file left behind


def test_write_payload_can_prefer_pickle(adir):
    assert worker.write_payload(Partial(add, a=5), adir, prefer="pickle") == "payload.pkl"
    assert worker.read_payload(adir) == Partial(add, a=5)


def test_read_payload_without_file_says_what_is_missing(adir):
    with pytest.raises(FileNotFoundError, match="payload.yaml or payload.pkl"):
        worker.read_payload(adir)


# --- execute, in process ----------------------------------------------------------------


def test_plain_callable_value_and_result_file(adir):
    res = worker.execute(lambda: {"a": 1}, adir, in_process_streams=True)
    assert res.ok and res.value == {"a": 1}
    assert pickle.loads((adir / "result.pkl").read_bytes()) == {"a": 1}
    assert not (adir / "error.json").exists()
    out = res.to_outcome("a1")
    assert out.ok and out.value == {"a": 1} and out.has_value


def test_partial_is_built_then_called(adir):
    res = worker.execute(Partial(add, a=10, b=5), adir, in_process_streams=True)
    assert res.value == 15


def test_config_value_is_the_built_object(adir):
    res = worker.execute(Config(make_list, n=3), adir, in_process_streams=True)
    assert res.value == [0, 1, 2]


def test_nested_config_oom_is_found_through_the_build_error(adir):
    res = worker.execute(Partial(add, a=Config(boom_model, size=7)), adir,
                         in_process_streams=True)
    assert res.kind == "oom"
    err = _read_error(adir)
    assert err["oom"] is True
    assert "does not fit" in err["traceback"]


def test_error_json_carries_type_message_traceback(adir):
    res = worker.execute(raises, adir, in_process_streams=True)
    assert res.kind == "error"
    err = _read_error(adir)
    assert err["type"] == "ValueError"
    assert err["message"] == "boom from the payload"
    assert "in raises" in err["traceback"] and "ValueError" in err["traceback"]
    assert err["oom"] is False and err["exit_code"] == 1
    assert not (adir / "result.pkl").exists()
    out = res.to_outcome("a1")
    assert out.kind == "error" and out.error.type == "ValueError"


@pytest.mark.parametrize("fn", [no_memory, cuda_oom, runtime_oom_text])
def test_out_of_memory_kinds(adir, fn):
    res = worker.execute(fn, adir, in_process_streams=True)
    assert res.kind == "oom"
    err = _read_error(adir)
    assert err["oom"] is True and err["exit_code"] == 3


def test_sys_exit_codes(adir):
    res = worker.execute(exits_3, adir, in_process_streams=True)
    assert res.kind == "error" and res.exit_code == 3
    assert _read_error(adir)["exit_code"] == 3
    other = adir / "zero"
    other.mkdir()
    assert worker.execute(exits_0, other, in_process_streams=True).ok


def test_unpicklable_value_is_an_error_that_says_so(adir):
    res = worker.execute(returns_lock, adir, in_process_streams=True)
    assert res.kind == "error"
    assert "could not be pickled" in _read_error(adir)["message"]


def test_thread_streams_go_to_the_attempt_logs(adir):
    res = worker.execute(talks, adir, in_process_streams=True)
    assert res.value == "done"
    assert (adir / "stdout.log").read_text() == "hello stdout\n"
    assert (adir / "stderr.log").read_text() == "hello stderr\n"


def test_silent_attempt_creates_no_log_files(adir):
    worker.execute(lambda: None, adir, in_process_streams=True)
    assert not (adir / "stdout.log").exists()
    assert not (adir / "stderr.log").exists()


def test_concurrent_threads_keep_their_output_apart(tmp_path):
    dirs = [tmp_path / f"a{i}" for i in range(4)]
    barrier = threading.Barrier(4)

    def payload(i: int):
        def run():
            barrier.wait()
            for _ in range(50):
                print(f"attempt {i}")
        return run

    threads = []
    for i, d in enumerate(dirs):
        d.mkdir()
        threads.append(threading.Thread(
            target=worker.execute, args=(payload(i), d), kwargs={"in_process_streams": True}))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, d in enumerate(dirs):
        assert (d / "stdout.log").read_text() == f"attempt {i}\n" * 50


def test_fd_mode_captures_child_processes_and_restores_fds(adir):
    before = os.fstat(1).st_ino, os.fstat(2).st_ino
    res = worker.execute(talks, adir)
    assert res.ok
    assert (os.fstat(1).st_ino, os.fstat(2).st_ino) == before
    out = (adir / "stdout.log").read_text()
    err = (adir / "stderr.log").read_text()
    assert "hello stdout" in out and "child-stdout" in out
    assert "hello stderr" in err and "child-stderr" in err


def test_script_inline_output_and_env(adir):
    script = Script(inline='echo "value=$MY_VAR"; echo oops >&2', env={"MY_VAR": "42"})
    res = worker.execute(script, adir, in_process_streams=True)
    assert res.ok and res.value is None
    assert (adir / "stdout.log").read_text() == "value=42\n"
    assert (adir / "stderr.log").read_text() == "oops\n"


def test_script_failure_keeps_its_exit_code(adir):
    res = worker.execute(Script(inline="exit 7"), adir, in_process_streams=True)
    assert res.kind == "error" and res.exit_code == 7
    err = _read_error(adir)
    assert err["exit_code"] == 7 and "exited with code 7" in err["message"]


# --- python -m steadyrun.attempt.worker ---------------------------------------------------------


def _run_worker(d: Path, env: dict[str, str]) -> int:
    return subprocess.run([sys.executable, "-m", "steadyrun.attempt.worker", str(d)], env=env,
                          timeout=60).returncode


def test_main_success_writes_result_and_captures_children(adir, subprocess_env):
    worker.write_payload(talks, adir)
    assert _run_worker(adir, subprocess_env) == 0
    assert pickle.loads((adir / "result.pkl").read_bytes()) == "done"
    assert "child-stdout" in (adir / "stdout.log").read_text()
    assert "child-stderr" in (adir / "stderr.log").read_text()


@pytest.mark.parametrize(("payload", "code", "oom"), [
    (raises, 1, False), (no_memory, 3, True), (exits_3, 3, False)])
def test_main_exit_codes(adir, subprocess_env, payload, code, oom):
    worker.write_payload(payload, adir)
    assert _run_worker(adir, subprocess_env) == code
    err = _read_error(adir)
    assert err["oom"] is oom and err["exit_code"] == code
    if payload is raises:
        assert "boom from the payload" in (adir / "stderr.log").read_text()


def test_main_runs_a_cloudpickled_lambda(adir, subprocess_env):
    (adir / "payload.pkl").write_bytes(cloudpickle.dumps(lambda: 6 * 7))
    assert _run_worker(adir, subprocess_env) == 0
    assert pickle.loads((adir / "result.pkl").read_bytes()) == 42


def test_main_script_uses_the_scripts_exit_code(adir, subprocess_env):
    worker.write_payload(Script(inline="echo from-script; exit 5"), adir)
    assert _run_worker(adir, subprocess_env) == 5
    assert (adir / "stdout.log").read_text() == "from-script\n"


def test_main_bad_attempt_dir(tmp_path, subprocess_env):
    assert _run_worker(tmp_path / "missing", subprocess_env) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run_worker(empty, subprocess_env) == 2
    assert "no payload" in (empty / "stderr.log").read_text()


def test_worker_import_stays_light(subprocess_env):
    code = ("import sys, steadyrun.attempt.worker; "
            "print(sorted(m for m in ('psutil', 'yaml', 'cloudpickle', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_missing_attempt_folder_is_an_error_not_a_crash(tmp_path):
    gone = tmp_path / "removed"
    for in_process in (True, False):
        res = worker.execute(lambda: 1, gone, in_process_streams=in_process)
        assert res.kind == "error"
        assert "could not use the attempt folder" in res.error["message"]
