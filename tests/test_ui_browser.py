"""``steadyrun ui`` in a real headless Chromium (Debian's, driven by Playwright): live
task states, a failing task's traceback, the sweep sorted by its metric, the cancel
button, and a screenshot of each page at 1280x800 and on a 390-wide phone.

Chromium is installed with apt-get when missing (as root); screenshots go to
``test-artifacts/screenshots/`` (``$STEADYRUN_SCREENSHOTS`` overrides it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("playwright")

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("STEADYRUN_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


def chromium_path() -> str:
    """Debian's chromium, installed with apt-get when missing and this is root."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and this is not root with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                   stdout=subprocess.DEVNULL, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                   check=True, env=env, stdout=subprocess.DEVNULL, timeout=900)
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


@pytest.fixture
def cli(subprocess_env, steadyrun_home, tmp_path):
    env = dict(subprocess_env, STEADYRUN_HOME=str(steadyrun_home))

    def call(*args: str, timeout: float = 120):
        return subprocess.run([sys.executable, "-m", "steadyrun", *args], env=env,
                              capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, stdin=subprocess.DEVNULL)
    call.env = env  # type: ignore[attr-defined]
    return call


@pytest.fixture
def server(cli, tmp_path):
    """``steadyrun ui`` on a free loopback port; yields its printed address."""
    proc = subprocess.Popen([sys.executable, "-m", "steadyrun", "ui"], env=cli.env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "?token=" in url, proc.stderr.read()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def status(cli, exp_id: str) -> dict:
    return json.loads(cli("status", exp_id, "--json").stdout)


def wait_for(check, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def shoot(page, name: str) -> None:
    """Screenshots of the page as it is, at each viewport (full page)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in VIEWPORTS.items():
        page.set_viewport_size(size)
        page.wait_for_timeout(150)
        page.screenshot(path=str(SHOTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size(VIEWPORTS["desktop"])


def test_dashboard_in_a_browser(cli, server, browser):
    base = server.split("/?")[0]
    # no token: refused
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(base + "/", timeout=10)
    assert refused.value.code == 403

    sweep = cli("run", "ui_payloads:slow_trial", "lr=0.3,-1,0.1,0.2", "seconds=2",
                "--sweep", "--detach")
    assert sweep.returncode == 0, sweep.stderr
    sweep_id = sweep.stdout.strip()
    page = browser.new_page(viewport=VIEWPORTS["desktop"])
    page.goto(server)  # the token becomes a cookie
    assert "token=" not in page.url
    page.wait_for_selector(f'tr[data-exp="{sweep_id}"]')
    shoot(page, "experiments")

    # live: states change without a reload
    page.goto(f"{base}/e/{sweep_id}")
    page.evaluate("window.__notReloaded = true")
    first = page.inner_text("#tasks tbody")
    assert "pending" in first or "running" in first, first
    page.wait_for_function("document.getElementById('exp-state').textContent === 'failed'",
                           timeout=90_000)
    assert page.evaluate("window.__notReloaded") is True
    states = page.eval_on_selector_all("#tasks tbody .state .badge",
                                       "els => els.map(e => e.textContent)")
    assert sorted(states) == ["failed", "succeeded", "succeeded", "succeeded"]
    page.wait_for_function("document.querySelectorAll('#timeline rect').length === 4 && "
                           "document.querySelector('#exp-actions button.resume') !== null")
    shoot(page, "experiment")

    # the failing task's traceback
    failing = page.locator("#tasks tbody tr", has=page.locator(".badge.s-failed"))
    failing.locator("a").first.click()
    page.wait_for_selector("pre.traceback")
    trace = page.inner_text("pre.traceback")
    assert "Traceback" in trace and "ValueError: lr must be >= 0, got -1" in trace
    page.wait_for_function("document.getElementById('log').dataset.done === '1'")
    assert "\nValueError: lr must be >= 0" in page.inner_text("#log")
    shoot(page, "task")

    # the sweep sorted by its metric, both ways
    page.goto(f"{base}/e/{sweep_id}/sweep")
    page.click('a.sort[data-col="loss"]')
    page.wait_for_url("**sort=loss**")

    def losses() -> list[str]:
        col = page.eval_on_selector_all("#results thead th",
                                        "ths => ths.map(t => t.textContent)")
        i = next(n for n, c in enumerate(col) if c.startswith("loss"))
        return page.eval_on_selector_all(
            "#results tbody tr", f"trs => trs.map(r => r.children[{i}].textContent)")
    assert losses() == ["1", "2", "3", ""]
    page.click('a.sort[data-col="loss"]')
    page.wait_for_url("**desc=1**")
    assert losses() == ["3", "2", "1", ""]
    assert page.locator("svg.parallel polyline").count() == 3
    shoot(page, "sweep")

    # cancel a running task with its button
    running = cli("run", "payloads:sleep_for", "seconds=120", "--detach")
    run_id = running.stdout.strip()
    wait_for(lambda: status(cli, run_id)["tasks"][0]["state"] == "running", what="running")
    page.goto(f"{base}/e/{run_id}")
    page.wait_for_selector("button.cancel[data-task]")
    page.click('#tasks button.cancel')
    page.wait_for_selector("#flash")
    assert "cancel" in page.inner_text("#flash")
    wait_for(lambda: status(cli, run_id)["tasks"][0]["state"] == "cancelled", 30, "cancel")
    shown = cli("status", run_id)
    assert "cancelled" in shown.stdout
    page.wait_for_function(
        "document.querySelector('#tasks .state .badge').textContent === 'cancelled'")
    shoot(page, "cancelled")
