"""Executed notebooks as reports: papermill runs, HTML pages and an index.

`run_reports(notebooks, parameters)` runs each notebook through papermill into
`reports/<date>_<notebook>_<tag>/`, which then holds the executed notebook, an HTML page (nbconvert,
code hidden unless asked) and `config.json` (parameters, seed, git commit, package versions,
status, error). A failing notebook is recorded as failed with its error; the others still run.
`write_index(reports_dir)` lists every run in `reports/index.html`.

Notebooks run in a kernel of the current interpreter, whatever kernels Jupyter has registered.
HTML pages load nothing from the network (no require.js, MathJax or widget manager from a CDN;
plotly.js is inlined by `spae_lab.views.figures.notebook_setup`), so they open offline (the tests open
them in headless Chromium: tests/chromium.py).
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import html
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spae_lab.errors import SpaeError
from spae_lab.io import atomic_write_text, remove_owned
from spae_lab.views.parameters import ParameterError, check_parameter, parse_bounds
from spae_lab.views.report_index import CONFIG_NAME, FAILED, SUCCEEDED, notebook_about, read_runs, write_index

__all__ = ["CONFIG_NAME", "FAILED", "SUCCEEDED", "ReportError", "ReportRun", "find_notebooks", "read_runs",
           "run_notebook", "run_reports", "summarize_runs", "write_index"]

# Seconds one cell of a report may run unless the caller says otherwise: the slowest default cell
# takes well under a minute, so a runaway cell (a huge parameter that slipped past its bound, a
# stalled server) ends the run in minutes instead of holding the machine.
DEFAULT_CELL_TIMEOUT = 600.0
KERNEL_NAME = "python3"  # resolved to the current interpreter by `_current_python_kernel`
_PACKAGES = ("spae-lab", "torch", "numpy", "matplotlib", "plotly", "pandas", "papermill", "nbconvert",
             "nbclient", "ipykernel", "ipywidgets")


class ReportError(SpaeError, ValueError):
    """A report request that cannot run: unknown notebook or parameter, no browser."""


# A tag or date names a folder of its own under the reports folder: a plain name, never a path.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


def check_name(value: str, what: str = "--tag") -> str:
    """`value` if it is a plain name (letters, digits, `-`, `_`, `.` not leading, at most 100),
    else ReportError: it becomes part of a folder name that a rerun replaces."""
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value):
        raise ReportError(f"{what} must be a plain name (letters, digits, '-', '_', '.' not first, "
                          f"at most 100), got {value!r}")
    return value


def check_injected(notebook: str, declared: dict[str, dict], given: dict) -> dict:
    """`given` parameters checked against the types `declared` by the notebook's parameters cell
    (`spae_lab.views.parameters`): the values to inject, or ReportError naming what is wrong."""
    try:
        return {name: check_parameter(name, value, declared[name]["inferred_type_name"],
                                      parse_bounds(declared[name].get("help")))
                if name in declared else value for name, value in given.items()}
    except ParameterError as e:
        raise ReportError(f"{notebook}: {e}") from None


@dataclass
class ReportRun:
    notebook: str  # notebook name (file stem)
    tag: str
    folder: Path  # reports/<date>_<notebook>_<tag>
    status: str  # "succeeded" or "failed"
    seconds: float
    parameters: dict = field(default_factory=dict)  # as injected by papermill
    error: str | None = None  # one line; the traceback is in config.json

    @property
    def html(self) -> Path:
        return self.folder / f"{self.notebook}.html"

    @property
    def executed_notebook(self) -> Path:
        return self.folder / f"{self.notebook}.ipynb"


# --- finding notebooks and their parameters -------------------------------------------------------


def notebooks_dir() -> Path:
    """./notebooks when it exists, else the notebooks beside the installed (editable) package."""
    here = Path.cwd() / "notebooks"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "notebooks"


def find_notebooks(names: Sequence[str] | None = None, folder: str | os.PathLike | None = None) -> list[Path]:
    """Notebooks by path, name or unique part of a name ("tour", "02"); all of `folder` (sorted)
    when `names` is empty."""
    folder = Path(folder) if folder else notebooks_dir()
    available = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not names:
        if not available:
            raise ReportError(f"no notebooks in {folder}")
        return available
    found = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.exists():
            found.append(path)
            continue
        exact = [p for p in available if p.stem == name]
        partial = [p for p in available if name in p.stem]
        matches = exact or partial
        if len(matches) != 1:
            options = ", ".join(p.stem for p in available)
            what = "matches several notebooks" if matches else "is no notebook"
            raise ReportError(f"{name!r} {what}; notebooks in {folder}: {options}")
        found.append(matches[0])
    return found


def notebook_parameters(path: str | os.PathLike) -> dict[str, dict]:
    """The `parameters` cell of a notebook: name -> {inferred_type_name (the annotation, else the
    default's type), default (source text), help (the line's comment)}. The same fields as
    papermill's `inspect_notebook`, read with `ast` (papermill takes seconds to import)."""
    try:
        cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{path} is not a readable notebook: {type(e).__name__}: {e}") from None
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return {}
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    lines = source.splitlines()
    declared = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            name, annotation = node.target.id, ast.unparse(node.annotation)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, annotation = node.targets[0].id, None
        else:
            continue
        default = ast.get_source_segment(source, node.value)
        rest = lines[node.end_lineno - 1][node.end_col_offset:]
        value = _literal(default)
        inferred = annotation or ("None" if value is None or value == default else type(value).__name__)
        declared[name] = {"inferred_type_name": inferred, "default": default,
                          "help": rest.split("#", 1)[1].strip() if "#" in rest else ""}
    return declared


def _papermill():
    try:
        import papermill
    except ImportError:
        raise ReportError("reports need the notebook tools: pip install -e '.[notebooks]' "
                          "(scripts/setup.sh installs them)") from None
    return papermill


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_parameters_file(path: str | os.PathLike) -> tuple[dict, dict[str, dict]]:
    """A YAML file of parameters: top-level keys go to every notebook that declares them; an
    optional `notebooks:` mapping holds per-notebook parameters ({name: {key: value}})."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ReportError(f"cannot read the parameters file {path}: {reason}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} must hold a mapping of parameters")
    per_notebook = data.pop("notebooks", None) or {}
    if not isinstance(per_notebook, dict) or not all(isinstance(v, dict) for v in per_notebook.values()):
        raise ReportError(f"{path}: `notebooks:` must map notebook names to parameter mappings")
    return data, per_notebook


# --- the kernel, HTML export, provenance ----------------------------------------------------------


@contextlib.contextmanager
def _current_python_kernel() -> Iterator[str]:
    """A kernelspec named `python3` for this interpreter, first on JUPYTER_PATH while in use, so a
    user-level `python3` kernel of another environment cannot take over."""
    with tempfile.TemporaryDirectory(prefix="spae-lab-kernel-") as root:
        spec = Path(root) / "kernels" / KERNEL_NAME
        spec.mkdir(parents=True)
        atomic_write_text(spec / "kernel.json", json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.log_level=ERROR"],  # no warnings about local TCP in reports
            "display_name": "Python 3 (ipykernel)", "language": "python",
        }))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join([root] + ([old] if old else []))
        try:
            yield KERNEL_NAME
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


# nbconvert's lab template, less what it would fetch from a CDN: require.js, MathJax and mermaid
# (notebooks here use none of them) and the widget manager (widgets need a live kernel; the pages
# carry static figures instead).
_HTML_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
"""


def export_html(notebook: str | os.PathLike, html_path: str | os.PathLike, hide_code: bool = True) -> Path:
    """An executed notebook -> a self-contained HTML page (code cells hidden with `hide_code`)."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="spae_lab_report.html.j2",
                            extra_loaders=[jinja2.DictLoader({"spae_lab_report.html.j2": _HTML_TEMPLATE})],
                            exclude_input=hide_code, exclude_input_prompt=hide_code,
                            exclude_output_prompt=hide_code, embed_images=True)
    node = nbformat.read(str(notebook), as_version=4)
    body, _ = exporter.from_notebook_node(node, resources={"metadata": {"name": Path(notebook).stem}})
    html_path = Path(html_path)
    atomic_write_text(html_path, body)
    return html_path


def _git(*args: str, cwd: Path) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def provenance(source: Path) -> dict:
    """Git commit (and whether the work tree differs from it), package versions, platform."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    folder = source.resolve().parent
    status = _git("status", "--porcelain", cwd=folder)
    return {"git": {"commit": _git("rev-parse", "HEAD", cwd=folder),
                    "dirty": bool(status) if status is not None else None},
            "versions": versions, "platform": platform.platform()}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _describe_error(exc: BaseException) -> tuple[str, str]:
    """One line and a readable traceback for a failed run."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        line = f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
        return line, _ANSI.sub("", "\n".join(exc.traceback))
    return f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc))


# --- running ----------------------------------------------------------------------------------------


def run_notebook(notebook: str | os.PathLike, parameters: dict | None = None,
                 reports_dir: str | os.PathLike = "reports", tag: str = "default",
                 hide_code: bool = True, timeout: float | None = None, date: str | None = None) -> ReportRun:
    """Run one notebook with papermill into reports/<date>_<notebook>_<tag>/ (replacing a run of
    the same name). Never raises for a failing notebook: the run says `failed` and why.

    A notebook that declares an `interactive` parameter gets False unless given: live-kernel
    widgets show nothing in a report, and a batch run with widget comms can hang (nbclient#312).
    Each cell may run `timeout` seconds (None: DEFAULT_CELL_TIMEOUT)."""
    source = Path(notebook)
    name = source.stem
    check_name(tag)
    date = check_name(date or dt.date.today().isoformat(), "date")
    parameters = dict(parameters or {})
    error = trace = None
    try:
        declared = notebook_parameters(source)
    except Exception as exc:  # not a readable notebook (damaged JSON, ...): a failed run
        declared = {}
        error, trace = _describe_error(exc)
    parameters = check_injected(name, declared, parameters)
    papermill = _papermill()
    folder = Path(reports_dir) / f"{date}_{name}_{tag}"
    remove_owned(folder, reports_dir)  # a run of the same name is replaced, nothing outside
    folder.mkdir(parents=True)
    if "interactive" in declared:
        parameters.setdefault("interactive", False)
    effective = {k: _literal(v["default"]) for k, v in declared.items()} | parameters
    record = {
        "notebook": name, "source": str(source), "tag": tag, "date": date,
        "parameters": effective, "injected": parameters, "seed": effective.get("seed"),
        "hide_code": hide_code, "started": dt.datetime.now().isoformat(timespec="seconds"),
        "status": "running", **provenance(source),
        "files": {"notebook": f"{name}.ipynb", "html": f"{name}.html"}, "about": notebook_about(source),
    }
    atomic_write_text(folder / CONFIG_NAME, json.dumps(record, indent=2, default=str))
    start = time.monotonic()
    try:
        if error is None:
            with _current_python_kernel() as kernel:
                papermill.execute_notebook(str(source), str(folder / f"{name}.ipynb"),
                                           parameters=parameters, kernel_name=kernel,
                                           progress_bar=False,
                                           execution_timeout=timeout or DEFAULT_CELL_TIMEOUT)
    except Exception as exc:  # a failing notebook is a result, not a crash of the report set
        error, trace = _describe_error(exc)
    seconds = time.monotonic() - start
    executed = folder / f"{name}.ipynb"
    if executed.exists():
        try:
            export_html(executed, folder / f"{name}.html", hide_code=hide_code)
        except Exception as exc:
            error = error or f"HTML export failed: {type(exc).__name__}: {exc}"
            trace = trace or traceback.format_exc()
    if not (folder / f"{name}.html").exists():  # never ran: a page with the error instead
        atomic_write_text(folder / f"{name}.html",
            f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(name)}</title>"
            f"</head><body><h1>{html.escape(name)}: failed</h1><pre>{html.escape(str(error))}\n\n"
            f"{html.escape(str(trace))}</pre></body></html>")
    status = FAILED if error else SUCCEEDED
    record.update(status=status, error=error, traceback=trace, seconds=round(seconds, 2),
                  finished=dt.datetime.now().isoformat(timespec="seconds"))
    atomic_write_text(folder / CONFIG_NAME, json.dumps(record, indent=2, default=str))
    return ReportRun(name, tag, folder, status, seconds, parameters, error)


def run_reports(notebooks: Sequence[str | os.PathLike], parameters: dict | None = None,
                per_notebook: dict[str, dict] | None = None, reports_dir: str | os.PathLike = "reports",
                tag: str = "default", hide_code: bool = True, timeout: float | None = None,
                progress: bool = True) -> list[ReportRun]:
    """Run every notebook (see `run_notebook`) and write the index.

    parameters go to each notebook that declares them (a key no notebook declares is an error);
    per_notebook maps a notebook name to parameters of its own, which win.
    """
    paths = [Path(p) for p in notebooks]
    check_name(tag)
    declared, unreadable = {}, set()
    for path in paths:
        try:
            declared[path.stem] = notebook_parameters(path)
        except Exception:  # run_notebook records it as failed; the others still run
            declared[path.stem] = {}
            unreadable.add(path.stem)
    parameters, per_notebook = dict(parameters or {}), dict(per_notebook or {})
    unknown = set(parameters) - {k for d in declared.values() for k in d}
    if unknown and not unreadable:  # an unreadable notebook may be the one that takes them
        raise ReportError(f"no notebook takes the parameter(s) {sorted(unknown)}; they take: "
                          + "; ".join(f"{n}: {', '.join(d)}" for n, d in declared.items()))
    for name, own in per_notebook.items():
        if name not in declared:
            raise ReportError(f"parameters for {name!r}, which is not among {list(declared)}")
        if set(own) - set(declared[name]) and name not in unreadable:
            raise ReportError(f"{name} takes no parameter(s) {sorted(set(own) - set(declared[name]))}")
    chosen = {}  # every notebook's parameters checked against its declared types before any runs
    for path in paths:
        given = {k: v for k, v in parameters.items() if k in declared[path.stem]}
        given.update(per_notebook.get(path.stem, {}) if path.stem not in unreadable else {})
        chosen[path] = check_injected(path.stem, declared[path.stem], given)
    runs = []
    for i, path in enumerate(paths, 1):
        given = chosen[path]
        if progress:
            print(f"[{i}/{len(paths)}] {path.stem} ...", flush=True)
        run = run_notebook(path, given, reports_dir, tag, hide_code, timeout)
        if progress:
            note = f": {run.error}" if run.error else ""
            print(f"[{i}/{len(paths)}] {path.stem} {run.status} in {run.seconds:.1f} s{note}", flush=True)
        runs.append(run)
    write_index(reports_dir)
    return runs


def summarize_runs(runs: Sequence[ReportRun], reports_dir: str | os.PathLike = "reports") -> str:
    """A few lines for the terminal: how many succeeded, where the index is, each page or error."""
    failed = [r for r in runs if r.status != SUCCEEDED]
    lines = [f"\nreports: {len(runs) - len(failed)} succeeded, {len(failed)} failed; "
             f"index: {Path(reports_dir) / 'index.html'}"]
    lines += [f"  {run.status:9s} {run.html}" + (f"  ({run.error})" if run.error else "") for run in runs]
    return "\n".join(lines)
