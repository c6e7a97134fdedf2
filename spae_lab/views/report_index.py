"""The report index: `reports/index.html` lists every run with what its notebook is about, its
status, parameters, time and links (`write_index`), read from each run's config.json."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
from pathlib import Path

from spae_lab.io import atomic_write_text

SUCCEEDED, FAILED = "succeeded", "failed"
CONFIG_NAME = "config.json"


def notebook_about(path: str | os.PathLike) -> str:
    """What a notebook is about, in a line: its title (the first heading of its first markdown
    cell) and the first sentence after "What this notebook teaches." when it has one."""
    try:
        cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
        text = next("".join(c["source"]) for c in cells if c.get("cell_type") == "markdown")
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return ""
    title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
    teaches = re.search(r"\*\*What this notebook teaches\.\*\*\s*(.+?\.)(\s|$)", text, re.S)
    sentence = " ".join(teaches.group(1).replace("*", "").replace("`", "").split()) if teaches else ""
    return f"{title}. {sentence}".strip() if title and sentence else title or sentence


def read_runs(reports_dir: str | os.PathLike = "reports") -> list[dict]:
    """Every run's config.json under reports_dir (with its folder name), newest first."""
    runs = []
    for path in Path(reports_dir).glob(f"*/{CONFIG_NAME}"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
            record = None
        if not isinstance(record, dict):
            record = {"notebook": path.parent.name, "status": "unreadable"}
        record["folder"] = path.parent.name
        runs.append(record)
    return sorted(runs, key=lambda r: (r.get("started") or "", r["folder"]), reverse=True)


_INDEX_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35em 0.8em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.succeeded { color: #16794a; font-weight: 600; }
.failed, .unreadable { color: #b3261e; font-weight: 600; }
.running { color: #8a6d00; font-weight: 600; }
pre { background: #fbecec; padding: 0.5em; margin: 0.3em 0 0; white-space: pre-wrap; max-width: 70em; }
code { font-size: 0.85em; }
.about { color: #555; max-width: 36em; font-size: 0.9em; margin-top: 0.2em; }
"""


def _row(run: dict) -> str:
    esc = html.escape
    folder = run["folder"]
    files = run.get("files", {})
    links = [f'<a href="{esc(folder)}/{esc(files[k])}">{label}</a>'
             for k, label in (("html", "report"), ("notebook", "notebook")) if "/" not in files.get(k, "/")]
    links.append(f'<a href="{esc(folder)}/{CONFIG_NAME}">config</a>')
    params = ", ".join(f"{k}={v!r}" for k, v in (run.get("injected") or {}).items()) or "defaults"
    status = run.get("status", "unknown")
    seconds = run.get("seconds")
    error = f"<pre>{esc(str(run['error']))}</pre>" if run.get("error") else ""
    about = f"<div class=\"about\">{esc(run['about'])}</div>" if run.get("about") else ""
    return (f"<tr><td><b>{esc(str(run.get('notebook')))}</b>{about}{error}</td><td>{esc(str(run.get('tag', '')))}</td>"
            f"<td>{esc(str(run.get('started', '')))}</td><td class=\"{esc(status)}\">{esc(status)}</td>"
            f"<td>{'' if seconds is None else f'{seconds:.1f} s'}</td><td><code>{esc(params)}</code></td>"
            f"<td>{' · '.join(links)}</td></tr>")


def write_index(reports_dir: str | os.PathLike = "reports") -> Path:
    """reports_dir/index.html: the latest run of each notebook, then every run, each with its
    status, parameters, error and links to its HTML page, executed notebook and config.json."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    runs = read_runs(reports_dir)
    latest: dict[str, dict] = {}
    for run in runs:
        latest.setdefault(str(run.get("notebook")), run)
    latest_runs = sorted(latest.values(), key=lambda r: str(r.get("notebook")))
    counts = {s: sum(r.get("status") == s for r in latest_runs) for s in (SUCCEEDED, FAILED)}
    header = ("<tr><th>notebook</th><th>tag</th><th>started</th><th>status</th><th>time</th>"
              "<th>parameters</th><th>files</th></tr>")
    body = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>spae-lab reports</title>", f"<style>{_INDEX_STYLE}</style></head><body>",
        "<h1>spae-lab reports</h1>",
        f"<p>Latest run of each notebook: <span class=\"succeeded\">{counts[SUCCEEDED]} succeeded</span>, "
        # red only when something failed: "0 failed" is good news
        + (f"<span class=\"failed\">{counts[FAILED]} failed</span>" if counts[FAILED] else "0 failed")
        + ". Index written "
        f"{dt.datetime.now().isoformat(timespec='seconds')}.</p>",
        "<h2>Latest runs</h2>", f'<table id="latest">{header}',
        *(_row(r) for r in latest_runs), "</table>",
        f"<h2>All runs ({len(runs)})</h2>", f'<table id="all">{header}', *(_row(r) for r in runs), "</table>",
        "</body></html>",
    ])
    path = reports_dir / "index.html"
    atomic_write_text(path, body)
    return path
