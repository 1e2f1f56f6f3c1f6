"""``steadyrun ui``: the pages, the token, live states, actions and the sweep view,
against real detached experiments (HTTP through Starlette's client, and the real
server started by the command)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette's note about which httpx it prefers
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from steadyrun.ui.app import create_app  # noqa: E402


@pytest.fixture
def cli(subprocess_env, steadyrun_home, tmp_path):
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))

    def call(*args: str, timeout: float = 120):
        return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                              capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, stdin=subprocess.DEVNULL)
    return call


def wait_state(cli, exp_id: str, done, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = json.loads(cli("status", exp_id, "--json").stdout)
        if done(st):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.3)


@pytest.fixture
def sweep_id(cli) -> str:
    """A finished sweep of four trials, one of which fails (a negative lr)."""
    proc = cli("run", "results_payloads:trial", "lr=0.1,-1,0.01", "batch_size=32",
               "--sweep", "--strategy", "thread", "--detach")
    assert proc.returncode == 0, proc.stderr
    exp_id = proc.stdout.strip()
    wait_state(cli, exp_id, lambda s: s["state"] in ("failed", "succeeded"))
    return exp_id


def client(token: str = "t0ken", **kw) -> TestClient:
    c = TestClient(create_app(token, poll=0.2, **kw))
    assert c.get(f"/?token={token}").status_code == 200  # sets the cookie
    return c


def test_no_token_gets_403_and_the_token_sets_a_cookie(sweep_id):
    bare = TestClient(create_app("right", poll=0.2))
    assert bare.get("/").status_code == 403
    assert bare.get(f"/e/{sweep_id}").status_code == 403
    assert bare.get("/static/ui.css").status_code == 403
    assert bare.get("/?token=wrong").status_code == 403
    first = bare.get("/?token=right", follow_redirects=False)
    assert first.status_code == 303 and "token" not in first.headers["location"]
    assert "httponly" in first.headers["set-cookie"].lower()
    assert bare.get("/").status_code == 200


def test_pages_show_experiments_tasks_traceback_and_sorted_sweep(sweep_id):
    c = client()
    listing = c.get("/").text
    assert sweep_id in listing and "failed" in listing
    assert sweep_id not in c.get("/?state=succeeded").text
    page = c.get(f"/e/{sweep_id}").text
    names = re.findall(r'<tr data-task="([^"]+)"', page)
    assert len(names) == 3 and "Timeline" in page and "<svg" in page
    failing = [n for n in names if "-1" in n][0]
    task = c.get(f"/e/{sweep_id}/t/{failing}").text
    trace = task.split("<pre class=traceback>", 1)[1].split("</pre>", 1)[0]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert "ValueError: lr must be &gt;= 0, got -1" in trace
    sweep = c.get(f"/e/{sweep_id}/sweep?sort=loss&desc=1").text
    order = re.findall(r'<tr data-task="([^"]+)"', sweep)
    assert order[0].endswith("lr=0.1") or "0.1" in order[0]
    assert order[-1] == failing  # no value: last
    assert "parallel coordinates" in sweep
    up = re.findall(r'<tr data-task="([^"]+)"', c.get(f"/e/{sweep_id}/sweep?sort=loss").text)
    assert up[:2] == order[:2][::-1]


def test_cancel_button_cancels_and_read_only_refuses(cli):
    started = cli("run", "payloads:sleep_for", "seconds=60", "--detach")
    exp_id = started.stdout.strip()
    wait_state(cli, exp_id, lambda s: s["tasks"][0]["state"] == "running")
    ro = client(read_only=True)
    assert "csrf" not in ro.get(f"/e/{exp_id}").text
    assert ro.post(f"/e/{exp_id}/cancel", data={"csrf": "x"}).status_code == 403
    c = client()
    page = c.get(f"/e/{exp_id}").text
    csrf = re.search(r'name=csrf value="([^"]+)"', page).group(1)
    assert c.post(f"/e/{exp_id}/cancel", data={"csrf": "wrong"}).status_code == 403
    task = json.loads(cli("status", exp_id, "--json").stdout)["tasks"][0]["name"]
    done = c.post(f"/e/{exp_id}/cancel", data={"csrf": csrf, "task": task},
                  follow_redirects=False)
    assert done.status_code == 303
    st = wait_state(cli, exp_id, lambda s: s["tasks"][0]["state"] == "cancelled", 30)
    assert st["tasks"][0]["state"] == "cancelled"
    page = c.get(f"/e/{exp_id}").text
    assert 'data-action="resume"' in page and 'data-action="cancel"' not in page
    again = c.post(f"/e/{exp_id}/resume", data={"csrf": csrf}, follow_redirects=False)
    assert again.status_code == 303 and "resumed" in again.headers["location"]
    try:
        wait_state(cli, exp_id, lambda s: s["tasks"][0]["state"] == "running", 30)
    finally:
        cli("cancel", exp_id)


def test_experiment_states_stream_ends_when_final(sweep_id):
    c = client()
    with c.stream("GET", f"/e/{sweep_id}/states") as resp:
        body = "".join(resp.iter_text())
    snap = json.loads(body.split("data: ", 1)[1].split("\n", 1)[0])
    assert snap["state"] == "failed" and len(snap["tasks"]) == 3
    assert "event: end" in body


def test_charts_draw_the_graph_left_to_right_and_clip_long_series():
    from steadyrun.ui import charts

    svg = charts.dag(["prep", "train", "eval"], {"train": ["prep"], "eval": ["train"]},
                     {"prep": "succeeded", "train": "running", "eval": "pending"})
    xs = [float(x) for x in re.findall(r'<rect x="([\d.]+)"', svg)]
    assert xs == sorted(xs) and len(set(xs)) == 3  # one column per depth
    assert svg.count("<line ") == 2
    long = charts.lines("rss", {"a": [(float(t), float(t)) for t in range(50_000)]}, "B")
    points = re.search(r'points="([^"]+)"', long).group(1).split()
    assert len(points) <= charts.MAX_POINTS + 1


def test_ui_command_prints_a_loopback_address_with_a_token(subprocess_env, steadyrun_home):
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))
    proc = subprocess.Popen([sys.executable, "-m", "steadyrun", "ui", "--read-only"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{40,}", url), url
        import urllib.error
        import urllib.request

        base = url.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base, timeout=10)
        assert refused.value.code == 403
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(url, timeout=10) as page:  # the redirect sets the cookie
            assert page.status == 200 and "Experiments" in page.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
