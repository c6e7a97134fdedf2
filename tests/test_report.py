"""`spae-lab report`: papermill runs into reports/, HTML pages, config.json, the index, and the pages
opened in headless Chromium (no JavaScript errors, figures present, a screenshot that is not blank).

The real notebooks run once per session (module fixture) with quick parameters; small synthetic
notebooks cover failures and parameter handling.

Modules: spae_lab.views.report, spae_lab.views.report_index, spae_lab.cli.reports, spae_lab.cli.demo.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from chromium import check_page, find_chromium

from spae_lab.io import OwnershipError, remove_owned
from spae_lab.paths import find_path, project_root, results_folder
from spae_lab.views.parameters import ParameterError, check_parameter
from spae_lab.views.report import (
    FAILED,
    SUCCEEDED,
    ReportError,
    find_notebooks,
    read_runs,
    run_notebook,
    run_reports,
    write_index,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("spae-lab")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def needs_chromium():
    """Skip without Chromium, except in CI, where the check must run."""
    if find_chromium() is None:
        if IN_CI:
            pytest.fail("CI=true but no chromium: .ci/run installs Debian's chromium")
        pytest.skip("no chromium (apt-get install chromium)")


def _notebook(path: Path, parameters: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A failing notebook listed first, then a good one with a matplotlib and a plotly figure; run
    through the CLI."""
    root = tmp_path_factory.mktemp("synthetic")
    books = root / "books"
    books.mkdir()
    _notebook(books / "a_broken.ipynb", "divisor: int = 0  # what to divide by\nseed: int = 0  # unused",
              "value = 1 / divisor")
    _notebook(books / "b_figures.ipynb", "count: int = 3  # points\nseed: int = 0  # numpy seed",
              "import matplotlib.pyplot as plt\nimport numpy as np\nimport plotly.graph_objects as go\n"
              "from spae_lab.views.figures import notebook_setup\nnotebook_setup()\nSECRET_CODE = 'hidden input'",
              "fig = plt.figure()\nplt.plot(np.random.default_rng(seed).random(count))\nplt.show()",
              "go.Figure(go.Scatter(y=list(range(count))))",
              "assert count == 5")
    reports = root / "reports"
    proc = subprocess.run(
        [str(SCRIPT), "report", "--notebooks-dir", str(books), "--out", str(reports), "--tag", "t",
         "-p", "count=5"],
        capture_output=True, text=True, timeout=600, cwd=root)
    return reports, proc


@pytest.mark.slow  # papermill kernels for a set of notebooks
def test_a_failing_notebook_is_reported_and_the_others_still_run(synthetic):
    reports, proc = synthetic
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one failed
    assert "1 succeeded, 1 failed" in proc.stdout
    runs = {r["notebook"]: r for r in read_runs(reports)}
    assert runs["a_broken"]["status"] == FAILED
    assert "ZeroDivisionError" in runs["a_broken"]["error"]
    assert "ZeroDivisionError" in runs["a_broken"]["traceback"]
    assert runs["b_figures"]["status"] == SUCCEEDED and runs["b_figures"]["error"] is None
    index = (reports / "index.html").read_text()
    assert index.count('class="failed">failed') >= 1 and index.count('class="succeeded">succeeded') >= 1
    assert "ZeroDivisionError" in index
    for run in runs.values():
        folder = reports / run["folder"]
        assert folder.name.endswith(f"_{run['notebook']}_t") and folder.name[:4].isdigit()
        assert f'href="{folder.name}/{run["notebook"]}.html"' in index
        assert (folder / f"{run['notebook']}.html").exists()  # the failed one too, with its error


@pytest.mark.slow  # papermill kernels for a set of notebooks
def test_config_records_parameters_provenance_and_seed(synthetic):
    reports, _ = synthetic
    run = next(r for r in read_runs(reports) if r["notebook"] == "b_figures")
    assert run["parameters"] == {"count": 5, "seed": 0} and run["injected"] == {"count": 5}
    assert run["seed"] == 0
    assert len(run["git"]["commit"] or "") == 40 or run["git"]["commit"] is None
    assert run["versions"]["torch"] and run["versions"]["papermill"] and run["versions"]["python"]
    assert run["seconds"] > 0 and run["started"] <= run["finished"]
    executed = nbformat.read(reports / run["folder"] / "b_figures.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "count = 5" in injected[0].source
    html = (reports / run["folder"] / "b_figures.html").read_text()
    assert "SECRET_CODE" not in html  # code hidden by default
    assert "cdnjs" not in html and "unpkg" not in html and "mathjax/" not in html.lower()


def test_parameters_are_checked_and_routed(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    _notebook(books / "one.ipynb", "alpha: int = 1  # a\ninteractive: bool = True  # widgets\nseed: int = 0  # s",
              "assert alpha == 2 and interactive is False  # reports run without live-kernel widgets")
    _notebook(books / "two.ipynb", "beta: str = 'x'  # b\nseed: int = 0  # s", "assert beta == 'y'")
    paths = find_notebooks(folder=books)
    with pytest.raises(ReportError, match="gamma"):
        run_reports(paths, {"gamma": 1}, reports_dir=tmp_path / "r")
    with pytest.raises(ReportError, match="takes no parameter"):
        run_reports(paths, per_notebook={"one": {"beta": "y"}}, reports_dir=tmp_path / "r")
    with pytest.raises(ReportError, match="is no notebook"):
        find_notebooks(["three"], folder=books)
    assert find_notebooks(["tw"], folder=books) == [books / "two.ipynb"]
    runs = run_reports(paths, {"alpha": 2}, per_notebook={"two": {"beta": "y"}}, reports_dir=tmp_path / "r",
                       progress=False)
    assert [r.status for r in runs] == [SUCCEEDED, SUCCEEDED], [r.error for r in runs]
    assert runs[0].parameters == {"alpha": 2, "interactive": False} and runs[1].parameters == {"beta": "y"}


def test_index_lists_latest_and_all_runs(tmp_path):
    for folder, name, status, started in [("2026-01-01_x_a", "x", FAILED, "2026-01-01T10:00:00"),
                                          ("2026-01-02_x_a", "x", SUCCEEDED, "2026-01-02T10:00:00"),
                                          ("2026-01-02_y_a", "y", SUCCEEDED, "2026-01-02T11:00:00")]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(json.dumps({
            "notebook": name, "tag": "a", "status": status, "started": started, "seconds": 1.0,
            "error": "Boom <b>" if status == FAILED else None,
            "files": {"notebook": f"{name}.ipynb", "html": f"{name}.html"}}))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    html = write_index(tmp_path).read_text()
    latest = html.split('<table id="latest">')[1].split("</table>")[0]
    assert latest.count('class="succeeded"') == 2 and 'class="failed"' not in latest
    assert "All runs (4)" in html and "Boom &lt;b&gt;" in html and "unreadable" in html


def test_an_unreadable_notebook_file_fails_softly(tmp_path):
    """A damaged .ipynb (cut-off JSON) is a failed run with its error, not a crash of the set: the
    good notebook still runs, both get a page and a config.json, and the index lists both."""
    books = tmp_path / "books"
    books.mkdir()
    (books / "a_damaged.ipynb").write_text('{"cells": [{"cell_type": "code", "sou')
    _notebook(books / "b_good.ipynb", "count: int = 1  # c", "assert count == 2")
    reports = tmp_path / "reports"
    (reports / "old_run").mkdir(parents=True)
    (reports / "old_run" / "config.json").write_text("[1, 2]")  # JSON, but not a run record
    runs = run_reports(find_notebooks(folder=books), {"count": 2}, reports_dir=reports,
                       progress=False)
    assert [(r.notebook, r.status) for r in runs] == [("a_damaged", FAILED), ("b_good", SUCCEEDED)]
    assert "not a readable notebook" in runs[0].error and "\n" not in runs[0].error
    assert runs[0].html.exists() and "not a readable notebook" in runs[0].html.read_text()
    assert json.loads((runs[0].folder / "config.json").read_text())["status"] == FAILED
    index = (reports / "index.html").read_text()
    assert "a_damaged" in index and "b_good" in index and "unreadable" in index


# --- the real notebooks ---------------------------------------------------------------------------


# Every real notebook runs once per default suite, under nbval (pyproject's addopts); the report
# set below runs them all again through papermill and Chromium, so it belongs to the slow tests.


@pytest.fixture(scope="module")
def notebook_reports(tmp_path_factory):
    """Every notebook of notebooks/ as a report, with defaults (the training notebook shortened)."""
    reports = tmp_path_factory.mktemp("reports")
    runs = run_reports(find_notebooks(folder=ROOT / "notebooks"), {"steps": 20},
                       reports_dir=reports, tag="test", progress=False)
    return reports, {r.notebook: r for r in runs}


@pytest.mark.slow
def test_every_notebook_report_succeeds(notebook_reports):
    reports, runs = notebook_reports
    assert {r.status for r in runs.values()} == {SUCCEEDED}, {n: r.error for n, r in runs.items()}
    latest = (reports / "index.html").read_text().split('<table id="latest">')[1].split("</table>")[0]
    assert latest.count('class="succeeded">succeeded') == len(runs) >= 4


@pytest.mark.slow
def test_token_pyramid_page_shows_words_at_positions(notebook_reports):
    _, runs = notebook_reports
    executed = nbformat.read(runs["02_token_pyramid"].executed_notebook, as_version=4)
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    plotly = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures and plotly
    layout = plotly[0]["data"]["application/vnd.plotly.v1+json"]
    words = [trace for trace in layout["data"] if trace.get("type") == "scatter"]
    assert [len(t["text"]) for t in words] == [1, 4, 16, 64, 64]  # every layer's words, positioned
    assert all(len(t["x"]) == len(t["text"]) for t in words)


@pytest.mark.slow
def test_reconstruction_page_shows_grid_and_psnr_rising_with_depth(notebook_reports):
    _, runs = notebook_reports
    html = runs["03_reconstruction"].html.read_text()
    assert "<table" in html and "PSNR" in html and "SSIM" in html
    # the default compares the shipped scenes tokenizer's depths: every further layer adds
    assert all(gain > 0 for gain in _depth_gains(html)) and "a layer adds nothing" not in html
    assert "all checks passed" in html and "WARNING" not in html


def _depth_gains(html: str) -> list[float]:
    """The dB each further layer adds, as 03_reconstruction prints it for its one tokenizer."""
    import re

    found = re.findall(r"each further layer adds ([-+0-9., ]+) dB", html)
    assert len(found) == 1, found
    return [float(g) for g in found[0].split(", ")]


@pytest.mark.slow
def test_report_pages_open_in_chromium_without_errors(notebook_reports, tmp_path):
    needs_chromium()
    reports, runs = notebook_reports
    expected_plotly = {"02_token_pyramid": 1}
    for name, run in runs.items():
        shot = tmp_path / f"{name}.png"
        page = check_page(run.html, shot)
        assert page.errors == [], (name, page.errors)
        assert page.images >= 1, name  # matplotlib figures, inline PNG
        assert page.plotly_figures == expected_plotly.get(name, 0), name  # rendered by plotly.js
        assert page.ink > 0.03 and page.height > 900, (name, page.ink, page.height)
        assert shot.stat().st_size > 10_000
    index = check_page(reports / "index.html", tmp_path / "index.png")
    assert index.errors == [] and index.ink > 0.001


def test_chromium_check_reports_javascript_errors(tmp_path):
    needs_chromium()
    page = tmp_path / "broken.html"
    page.write_text("<html><body><p>hello</p><script>console.error('oops'); undefinedCall();</script>"
                    "</body></html>")
    result = check_page(page)
    assert any("oops" in e for e in result.errors)
    assert any("undefinedCall" in e for e in result.errors)
    assert result.images == 0 and result.screenshot is None


# --- the main job -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)  # above the demo's own 1500 s limit (the default 900 s cut it short)
def test_demo_produces_the_report_set(tmp_path):
    """README's first command after setup: the shipped tokenizers at work, then every notebook as
    a report. What a new user reads: the scene's first word names its colour or shape, and SPAE's
    few-shot rows are above chance with their intervals."""
    import re

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([str(SCRIPT), "demo", "--out", str(tmp_path / "demo"), "--reports",
                           str(tmp_path / "reports"), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    caption = re.search(r"A held-out scene \((.*?)\)", proc.stdout).group(1)
    first_word = re.search(r"layer 1 \(1x1\): (\w+)", proc.stdout).group(1)
    assert first_word in caption.split() or first_word.rstrip("s") in caption, (first_word, caption)
    spae_rows = [line for line in proc.stdout.splitlines() if re.search(r"-way SPAE ", line)]
    assert len(spae_rows) == 2 and all("(chance" in r and "NOT above" not in r for r in spae_rows), spae_rows
    runs = read_runs(tmp_path / "reports")
    assert {r["notebook"] for r in runs} >= {"01_tour", "02_token_pyramid", "03_reconstruction",
                                             "04_training", "05_fewshot"}
    assert {r["status"] for r in runs} == {SUCCEEDED}
    recon = next(r for r in runs if r["notebook"] == "03_reconstruction")
    recon_page = tmp_path / "reports" / recon["folder"] / "03_reconstruction.html"
    assert all(g > 0 for g in _depth_gains(recon_page.read_text()))
    if find_chromium() or IN_CI:
        needs_chromium()
        for run in runs:
            page = check_page(tmp_path / "reports" / run["folder"] / f"{run['notebook']}.html",
                              tmp_path / f"{run['notebook']}.png")
            assert page.errors == [] and page.images >= 1, (run["notebook"], page.errors)


# --- issue 14: tags, parameters' types, paths that do not depend on the kernel's folder ------------


def test_a_tag_is_a_plain_name_and_nothing_outside_the_reports_folder_is_removed(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    _notebook(books / "one.ipynb", "seed: int = 0  # s", "assert True")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    for tag in ("x/../../precious", "../precious", str(precious), "", ".hidden", "a b", "x" * 101):
        for _ in range(2):  # the probe ran it twice: the second run removed the first one's folder
            with pytest.raises(ReportError, match="must be a plain name"):
                run_reports(find_notebooks(folder=books), reports_dir=tmp_path / "reports", tag=tag,
                            progress=False)
    with pytest.raises(ReportError, match="date must be a plain name"):
        run_notebook(books / "one.ipynb", reports_dir=tmp_path / "reports", date="../../precious")
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "reports").exists()  # refused before anything was written


def test_remove_owned_never_leaves_the_folder_it_owns(tmp_path):
    owner, outside = tmp_path / "reports", tmp_path / "precious"
    (owner / "run" / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (owner / "link").symlink_to(outside, target_is_directory=True)
    for path in (owner / ".." / "precious", owner / "run" / ".." / ".." / "precious", outside, owner,
                 owner / "link" / "keep.txt", owner / "."):
        with pytest.raises(OwnershipError):
            remove_owned(path, owner)
    assert remove_owned(owner / "link", owner)  # the link itself, never what it points to
    assert (outside / "keep.txt").read_text() == "mine" and not (owner / "link").exists()
    assert remove_owned(owner / "run", owner) and not (owner / "run").exists()
    assert not remove_owned(owner / "run", owner)  # already gone: nothing to do


@pytest.mark.parametrize(("type_name", "value", "expected"), [
    ("list", '["runs/demo"]', ["runs/demo"]),  # papermill -p passes text: read as the literal
    ("list", ("a", "b"), ["a", "b"]),
    ("int", "8", 8),
    ("int", 8.0, 8),
    ("float", "0.5", 0.5),
    ("float", 2, 2.0),
    ("bool", "False", False),
    ("str", 2024, "2024"),  # YAML made a number of `-p checkpoint=2024`
    ("str", "[not parsed]", "[not parsed]"),
    ("str | None", None, None),
    ("list[str]", "['a']", ["a"]),
    ("SomeClass", object, object),  # a type this check does not know: left to the notebook
])
def test_parameters_of_their_declared_type_are_taken(type_name, value, expected):
    assert check_parameter("p", value, type_name) == expected


@pytest.mark.parametrize(("type_name", "value"), [
    ("list", "runs/demo"),  # was read character by character
    ("int", "abc"),  # failed after 90 s with a TypeError
    ("int", 2.5), ("int", True), ("float", "fast"), ("float", float("nan")), ("bool", "maybe"), ("bool", 1),
    ("str", ["runs/demo"]), ("str", None), ("dict", "[1]"), ("list", "[1, 2"), ("int", "(" * 500),
])
def test_parameters_of_another_type_are_refused_naming_what_is_wrong(type_name, value):
    with pytest.raises(ParameterError, match=f"parameter 'p' is declared {re.escape(type_name)}, got "):
        check_parameter("p", value, type_name)


def test_report_checks_every_notebooks_parameters_before_running_any(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    _notebook(books / "a.ipynb", "count: int = 1  # c", "assert True")
    _notebook(books / "b.ipynb", "checkpoints: list = ['x']  # runs", "assert checkpoints == ['runs/demo']")
    with pytest.raises(ReportError, match=r"a: parameter 'count' is declared int, got 'abc'"):
        run_reports(find_notebooks(folder=books), {"count": "abc"}, reports_dir=tmp_path / "r", progress=False)
    with pytest.raises(ReportError, match=r"b: parameter 'checkpoints' is declared list, got 'runs/demo'"):
        run_reports(find_notebooks(folder=books), {"checkpoints": "runs/demo"}, reports_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing ran


def test_a_notebook_checks_its_own_parameters(tmp_path):
    """What papermill does to a notebook: the parameters cell, then an injected cell of plain
    assignments, then the notebook's `check_parameters(globals())`."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_cell("checkpoints: list = ['scenes']  # runs\nnum_images: int = 8  # n\nname: str = 'x'  # s")
        shell.run_cell("checkpoints = '[\"runs/demo\"]'\nnum_images = '4'")  # papermill -p, as text
        result = shell.run_cell("from spae_lab.views.parameters import check_parameters\n"
                                "checked = check_parameters(globals())")
        assert result.success
        assert shell.user_ns["checkpoints"] == ["runs/demo"] and shell.user_ns["num_images"] == 4
        assert shell.user_ns["checked"] == {"checkpoints": ["runs/demo"], "num_images": 4, "name": "x"}
        shell.run_cell("num_images = 'abc'")
        result = shell.run_cell("check_parameters(globals())")
        assert isinstance(result.error_in_exec, ParameterError)
        assert "parameter 'num_images' is declared int, got 'abc'" in str(result.error_in_exec)
    finally:
        shell.reset()
        InteractiveShell.clear_instance()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with a run in runs/demo, and a kernel's current folder in notebooks/."""
    from spae_lab.checkpoint import save_checkpoint
    from spae_lab.codebook import load_codebook
    from spae_lab.config import create_config
    from spae_lab.model import SPAE

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    cfg = create_config("tiny")
    save_checkpoint(tmp_path / "runs" / "demo" / "checkpoint.safetensors",
                    SPAE(cfg.model, load_codebook(cfg.codebook)), None, 0, cfg)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.delenv("SPAE_LAB_ROOT", raising=False)
    return tmp_path


def test_run_paths_resolve_from_the_project_root_whatever_the_kernel_s_folder(project, monkeypatch):
    from spae_lab.checkpoint import CheckpointError, load_tokenizer

    assert project_root() == project
    assert find_path("runs/demo") == project / "runs" / "demo"
    for name in ("runs/demo", "demo", "runs/demo/checkpoint.safetensors"):
        assert load_tokenizer(name).num_layers == 5
    with pytest.raises(CheckpointError, match="no checkpoint at runs/missing"):
        load_tokenizer("runs/missing")
    (project / "notebooks" / "runs" / "demo").mkdir(parents=True)  # the current folder wins
    assert find_path("runs/demo") == Path("runs/demo")
    monkeypatch.setenv("SPAE_LAB_ROOT", str(project / "elsewhere"))
    assert project_root() == project / "elsewhere"


def test_results_default_to_a_named_folder_under_the_project_root(project):
    parameters = {"checkpoint": "runs/demo", "ways": [2], "seed": 0}
    folder = results_folder("", "fewshot", parameters)
    assert folder.parent == project / "reports" / "fewshot" and folder.name.startswith("demo-")
    assert results_folder("", "fewshot", dict(parameters)) == folder  # a rerun finds its answers
    assert results_folder("", "fewshot", {**parameters, "seed": 1}) != folder
    assert results_folder("mine", "fewshot", parameters) == Path("mine")


@pytest.mark.slow
def test_papermill_from_the_notebooks_folder_finds_runs_and_checks_parameters(project):
    """The probe: papermill started in notebooks/, `-p checkpoints '["runs/demo"]'` (text), then
    `-p num_images abc`, which fails in the check cell instead of 90 s later."""
    source = _notebook(project / "notebooks" / "probe.ipynb",
                       "checkpoints: list = ['scenes']  # runs\nnum_images: int = 2  # n",
                       "from spae_lab import load_tokenizer\nfrom spae_lab.views.parameters import check_parameters\n"
                       "check_parameters(globals())",
                       "models = [load_tokenizer(c) for c in checkpoints]\nassert len(models) == 1")
    papermill = str(Path(sys.executable).with_name("papermill"))
    ok = subprocess.run([papermill, source.name, "out.ipynb", "-p", "checkpoints", '["runs/demo"]'],
                        capture_output=True, text=True, timeout=600, cwd=project / "notebooks")
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run([papermill, source.name, "out.ipynb", "-p", "num_images", "abc"],
                         capture_output=True, text=True, timeout=600, cwd=project / "notebooks")
    assert bad.returncode != 0 and "parameter 'num_images' is declared int, got 'abc'" in bad.stderr
