"""Every notebook in JupyterLab, in a real browser: a JupyterLab server on loopback (with a token)
and headless Debian Chromium driven by playwright. Each notebook is opened, run with "Run All",
and every app on it is driven: a control changed, and its output checked to have changed. No
cell may end in an error and the page may log no JavaScript error.

Slow (several minutes: every notebook runs); CI runs it, and with CI=true a missing Chromium or
playwright is a failure, not a skip. Screenshots go to $SPAE_LAB_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from chromium import CHROMIUM_FLAGS, find_chromium

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NO_APP = {"03_reconstruction", "07_video"}  # figures and tables; 07's clips play as animated GIFs
TOKEN = "spae-lab-browser-test"
NOTEBOOK_SECONDS = 420  # one notebook's Run All, generous for a cold cache on a busy machine


def _requirements():
    """Chromium and playwright, or a skip (a failure under CI)."""
    binary = find_chromium()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        binary = None  # no driver: the same as no browser
    if binary is None:
        message = "the JupyterLab browser test needs Debian's chromium and the playwright package (.[dev])"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on loopback over a copy of notebooks/ (its autosaves never touch the
    sources); relative runs and results resolve to the project root, as in a user's checkout."""
    binary = _requirements()
    home = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", home / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    notices = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notices.parent.mkdir(parents=True)
    notices.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no news prompt over the page
    port = _free_port()
    env = {**os.environ, "SPAE_LAB_ROOT": str(ROOT), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    log = open(home / "jupyterlab.log", "wb")  # noqa: SIM115 (closed with the server)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--LabApp.extension_manager=readonly",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={home}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}"],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(f"JupyterLab did not start: {(home / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield {"base": base, "home": home, "chromium": binary}
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    profile = lab["home"] / "chromium-profile"
    with sync_playwright() as p:
        flags = [f for f in CHROMIUM_FLAGS if f != "--headless"]
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=lab["chromium"], headless=True, args=flags,
            viewport={"width": 1280, "height": 1400})
        try:
            yield context
        finally:
            context.close()


_OPEN = """async (path) => {
  const app = window.jupyterapp;
  const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await panel.context.ready;
  await panel.sessionContext.ready;
  app.shell.activateById(panel.id);
  window.spaePanel = panel;
  return panel.id;
}"""

_RUN_ALL = """async () => {
  window.spaePanel.content.activate();
  await window.jupyterapp.commands.execute('notebook:run-all-cells');
}"""

_STATE = """() => {
  const panel = window.spaePanel;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  for (const c of cells) {
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
    }
  }
  return {status: kernel ? kernel.status : 'none', errors,
          pending: cells.filter(c => c.model.executionCount === null || c.promptNode.textContent.includes('*')).length,
          cells: cells.length};
}"""


def _run_all(page, name: str) -> dict:
    page.evaluate(_RUN_ALL)
    deadline, idle_since = time.monotonic() + NOTEBOOK_SECONDS, None
    while time.monotonic() < deadline:
        state = page.evaluate(_STATE)
        if state["errors"]:
            return state
        if state["status"] == "idle" and state["pending"] == 0:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 2:
                return state
        else:
            idle_since = None
        time.sleep(1)
    raise AssertionError(f"{name}: Run All did not finish in {NOTEBOOK_SECONDS} s: {page.evaluate(_STATE)}")


# jupyter_server (2.21) registers a starting kernel before it sets the kernel's `last_activity`;
# a GET /api/kernels in that window reads the unset trait, whose TraitError its `list_kernels` does
# not catch (it skips only KeyError), and answers 500 to that one poll; JupyterLab polls again.
# That race, and only it, is forgiven: each forgiven 500 must have its TraitError in the server log.
_KERNEL_LIST_RACE = "The 'last_activity' trait of a ServerKernelManager instance expected a datetime"
_FAILED_RESOURCE = "console error: Failed to load resource: the server responded with a status of 500"


def _without_kernel_list_race(problems: list[str], server_log: list[str]) -> list[str]:
    races = sum(_KERNEL_LIST_RACE in line for line in server_log)
    listings = [p for p in problems if re.fullmatch(r"HTTP 500: GET \S+/api/kernels(\?\S*)?", p)]
    if not listings or len(listings) > races:
        return problems
    kept = [p for p in problems if p not in listings]
    for _ in listings:  # the browser logs each failed request once more
        echo = next((p for p in kept if p.startswith(_FAILED_RESOURCE)), None)
        if echo is not None:
            kept.remove(echo)
    return kept


def test_only_the_kernel_list_race_is_forgiven():
    poll = "HTTP 500: GET http://127.0.0.1:1/api/kernels?1796367224562"
    echo = f"{_FAILED_RESOURCE} (Internal Server Error)"
    race_log = [f"traitlets.traitlets.TraitError: {_KERNEL_LIST_RACE}, not the NoneType None."]
    assert _without_kernel_list_race([poll, echo], race_log) == []
    assert _without_kernel_list_race([poll, echo], []) == [poll, echo]  # no race in the log: kept
    other = "HTTP 500: GET http://127.0.0.1:1/api/contents/notebooks"
    assert _without_kernel_list_race([other, echo], race_log) == [other, echo]
    assert _without_kernel_list_race([poll, poll, echo, echo], race_log) == [poll, poll, echo, echo]
    assert _without_kernel_list_race([poll, echo, "page error: x"], race_log) == ["page error: x"]


def _html(app, selector: str) -> str:
    return app.locator(selector).first.inner_html()


def _changes(app, output: str, action, timeout: float = 60) -> None:
    """Do `action`, then wait until the app's `output` element shows something else."""
    before = _html(app, output)
    action()
    deadline = time.monotonic() + timeout
    while _html(app, output) == before:
        if time.monotonic() > deadline:
            raise AssertionError(f"{output} did not change")
        time.sleep(0.2)


def _drive(app, kind: str) -> list[str]:
    """Change controls of one app and check its outputs change; returns what was driven."""
    page = app.page
    done = []
    if kind == "spae-pyramid-explorer":
        handle = app.locator(".spae-control-depth .noUi-handle").first
        _changes(app, ".spae-output-decode", lambda: (handle.focus(), page.keyboard.press("ArrowRight"),
                                                       page.keyboard.press("ArrowRight")))
        _changes(app, ".spae-output-map", lambda: app.locator(".spae-control-layer button").nth(2).click())
        word = app.locator(".spae-control-word input").first
        _changes(app, ".spae-output-table", lambda: (word.fill("people"), word.press("Enter")))
        _changes(app, ".spae-output-table", lambda: app.locator(".spae-control-undo").first.click())
        done += ["depth slider", "layer buttons", "word combobox", "undo"]
    elif kind == "spae-token-explorer":
        picker = app.locator(".spae-control-image select").first
        _changes(app, ".spae-output-map", lambda: picker.select_option(index=1))
        done += ["image dropdown"]
    elif kind == "spae-fewshot-explorer":
        _changes(app, ".spae-output-episode", lambda: app.locator(".spae-control-next").first.click())
        _changes(app, ".spae-output-prompt", lambda: app.locator(".spae-control-reader button").nth(1).click())
        done += ["next episode", "reader buttons"]
    elif kind == "spae-generation-stepper":
        _changes(app, ".spae-output-call", lambda: app.locator(".spae-control-next").first.click())
        _changes(app, ".spae-output-words", lambda: app.locator(".spae-control-next-layer").first.click())
        done += ["next call", "next layer"]
    elif kind == "spae-training-view":
        _changes(app, ".spae-output-status", lambda: app.locator(".spae-control-start").first.click(), timeout=120)
        _changes(app, ".spae-output-status", lambda: app.locator(".spae-control-stop").first.click())
        done += ["train more", "stop"]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_its_apps_respond_in_jupyterlab(lab, browser, path):
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.request.method} {r.url}")
            if r.status >= 500 else None)
    try:
        page.goto(f"{lab['base']}/lab?token={TOKEN}", wait_until="domcontentloaded")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.started", timeout=120_000)
        page.evaluate("() => window.jupyterapp.restored")
        page.evaluate(_OPEN, f"notebooks/{path.name}")
        state = _run_all(page, path.stem)
        assert not state["errors"], f"{path.stem}: error outputs {state['errors']}"
        apps = page.locator(".spae-app")
        kinds = [app.get_attribute("class") for app in apps.all()]
        driven = []
        for index, classes in enumerate(kinds):
            kind = next((c for c in classes.split() if c.startswith("spae-") and c != "spae-app"), "")
            app = apps.nth(index)
            app.scroll_into_view_if_needed()
            driven += _drive(app, kind)
        if path.stem not in NO_APP:
            assert driven, f"{path.stem}: no app was found to drive"
        shots = os.environ.get("SPAE_LAB_SCREENSHOTS")
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # the notebook at full width
            for index in range(len(kinds)):
                apps.nth(index).scroll_into_view_if_needed()
                apps.nth(index).screenshot(path=str(Path(shots) / f"{path.stem}_app{index + 1}.png"))
            page.screenshot(path=str(Path(shots) / f"{path.stem}_lab.png"))
        state = page.evaluate(_STATE)
        assert not state["errors"], f"{path.stem}: error outputs after driving the apps {state['errors']}"
        server_log = (lab["home"] / "jupyterlab.log").read_text(errors="replace").splitlines()
        problems = _without_kernel_list_race(problems, server_log)
        assert not problems, (f"{path.stem}: JavaScript errors: {problems[:5]}; server log: "
                              f"{[line for line in server_log if ' 500 ' in line or 'Error' in line][-5:]}")
    finally:
        page.evaluate("async () => { if (window.spaePanel) await window.spaePanel.sessionContext.shutdown(); }")
        page.close()
