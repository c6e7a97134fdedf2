"""A headless Chromium client for the HTML report checks: opens a page, collects console errors,
counts images and Plotly figures, and takes a screenshot. Chromium's DevTools protocol over
--remote-debugging-pipe: no port, no websocket library. Only the tests use it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from spae_lab.views.report import ReportError


def find_chromium() -> str | None:
    """$SPAE_LAB_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    candidates = [os.environ.get("SPAE_LAB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    for candidate in filter(None, candidates):
        found = shutil.which(candidate)
        if found:
            return found
    return None


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")


class _DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated
    JSON): no port, no websocket library."""

    def __init__(self, binary: str, user_data_dir: str):
        import fcntl  # POSIX only, like the pipe itself

        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes on fd 4: bash puts the pipe ends there, from
        # copies numbered 10 and up so that no redirection overwrites the other's source (dash
        # takes one-digit descriptors only).
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        launch = f'exec "$0" "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-'
        self._log_path = Path(user_data_dir) / "chromium-stderr.log"
        with open(self._log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [shutil.which("bash") or "/bin/bash", "-c", launch, binary, *CHROMIUM_FLAGS,
                 f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank"],
                pass_fds=ends, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        for fd in ends:
            os.close(fd)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe; its stderr ends: {self.log_tail()}")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError):
            while True:
                self.events.append(self._read(deadline))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class PageCheck:
    url: str
    errors: list[str]  # uncaught exceptions, console errors, failed loads
    images: int  # <img> elements that loaded
    plotly_figures: int  # plotly graphs that rendered (have their SVG)
    height: int  # page height, px
    ink: float  # share of screenshot pixels that are not near-white
    screenshot: Path | None


_PAGE_PROBE = """JSON.stringify({
  images: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
  plotly: [...document.querySelectorAll('.plotly-graph-div')].filter(d => d.querySelector('.main-svg')).length,
  height: Math.ceil(document.documentElement.scrollHeight)})"""


def _event_error(event: dict) -> str | None:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return "exception: " + (details.get("exception", {}).get("description") or details.get("text", "?"))
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip()
    return None


def check_page(path: str | os.PathLike, screenshot: str | os.PathLike | None = None, width: int = 1280,
               settle_seconds: float = 1.5, timeout: float = 60, max_height: int = 12000) -> PageCheck:
    """Open an HTML file in headless Chromium; collect JavaScript errors, count loaded images and
    rendered plotly figures, and take a full-page screenshot (PNG) when `screenshot` is given."""
    binary = find_chromium()
    if binary is None:
        raise ReportError("no Chromium found (apt-get install chromium, or set SPAE_LAB_CHROMIUM)")
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="spae-lab-chromium-") as profile:
        browser = _DevTools(binary, profile)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                browser.call(f"{domain}.enable", session=session)
            browser.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900,
                         "deviceScaleFactor": 1, "mobile": False}, session=session)
            browser.call("Page.navigate", {"url": url}, session=session, timeout=timeout)
            browser.wait_for("Page.loadEventFired", timeout)
            browser.drain(settle_seconds)  # plotly draws after load
            probe = browser.call("Runtime.evaluate", {"expression": _PAGE_PROBE, "returnByValue": True},
                                 session=session)
            found = json.loads(probe["result"]["value"])
            shot_path, ink = None, 0.0
            if screenshot is not None:
                height = max(1, min(found["height"], max_height))
                shot = browser.call("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
                    session=session, timeout=timeout)
                shot_path = Path(screenshot)
                shot_path.parent.mkdir(parents=True, exist_ok=True)
                shot_path.write_bytes(base64.b64decode(shot["data"]))
                ink = _ink(shot_path)
            browser.drain(0.2)
        finally:
            browser.close()
    errors = [e for e in map(_event_error, browser.events) if e]
    return PageCheck(url, errors, found["images"], found["plotly"], found["height"], ink, shot_path)


def _ink(png: Path) -> float:
    from PIL import Image

    grey = Image.open(png).convert("L")
    histogram = grey.histogram()
    return 1 - sum(histogram[240:]) / max(1, sum(histogram))
