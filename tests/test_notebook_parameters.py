"""Notebook parameters are bounded where they are declared (issue 23, item 4): a number's comment
starts with its range, `spae-lab report -p` and the notebook itself refuse a value outside it before
any work, and report cells run under a default timeout."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spae_lab.views.parameters import (
    MAX_LIST_ITEMS,
    ParameterError,
    check_parameter,
    check_parameters,
    declared_comments,
    parse_bounds,
)
from spae_lab.views.report import (
    DEFAULT_CELL_TIMEOUT,
    ReportError,
    check_injected,
    notebook_parameters,
    run_notebook,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize(("comment", "bounds"), [
    ("[1, 64] held-out scenes", (1, 64)),
    ("[0, 1000000] seed", (0, 1000000)),
    ("[-2.5, 1e3] anything", (-2.5, 1000.0)),
    ("[0.000001, 0.1] learning rate", (0.000001, 0.1)),
    ("held-out scenes [1, 64]", None),  # only at the start of the comment
    ("[64, 1] reversed", None),
    ("[a, b] words", None),
    ("", None),
    (None, None),
])
def test_bounds_are_read_from_the_start_of_the_comment(comment, bounds):
    assert parse_bounds(comment) == bounds


def test_a_value_outside_its_bounds_is_refused_naming_the_range():
    assert check_parameter("num_images", "8", "int", (1, 64)) == 8
    with pytest.raises(ParameterError, match=r"'num_images' must be in \[1, 64\].*got 1000000000"):
        check_parameter("num_images", 1_000_000_000, "int", (1, 64))
    with pytest.raises(ParameterError, match=r"'ways' must be in \[2, 10\].*got 11"):
        check_parameter("ways", "[2, 11]", "list", (2, 10))  # a list's items, one by one
    with pytest.raises(ParameterError, match=f"at most {MAX_LIST_ITEMS}"):
        check_parameter("checkpoints", ["x"] * (MAX_LIST_ITEMS + 1), "list")


def test_report_refuses_an_unbounded_notebook_parameter_before_running(tmp_path):
    """The issue's probe: `spae-lab report 01_tour -p num_images=1000000000` took the kernel past
    2.7 GB in 42 s; now it ends in one line with status 2 before a kernel starts."""
    declared = notebook_parameters(ROOT / "notebooks" / "01_tour.ipynb")
    with pytest.raises(ReportError, match=r"01_tour: parameter 'num_images' must be in \[1, 64\]"):
        check_injected("01_tour", declared, {"num_images": 1_000_000_000})
    proc = subprocess.run([sys.executable, "-m", "spae_lab.cli", "report", "01_tour", "-p", "num_images=1000000000",
                           "--out", str(tmp_path / "reports")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "must be in [1, 64]" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_number_a_notebook_takes_declares_its_bounds(path):
    for name, info in notebook_parameters(path).items():
        kind = info["inferred_type_name"]
        numeric = kind in ("int", "float") or (kind == "list" and any(
            isinstance(v, (int, float)) for v in eval(info["default"], {})))  # noqa: S307 (a literal)
        if numeric:
            assert parse_bounds(info["help"]) is not None, f"{path.name}: {name} declares no [low, high] bounds"


def test_a_notebook_checks_its_own_bounds_from_its_parameters_cell():
    """papermill runs the parameters cell, then the injected one, then the notebook's check: the
    check reads the bounds from the parameters cell as the kernel ran it."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:  # a kernel keeps each cell's source (execute_request's store_history, on in nbclient and Jupyter)
        shell.run_cell("num_images: int = 8  # [1, 64] images\nname: str = 'x'  # a name", store_history=True)
        shell.run_cell("num_images = 1000000000", store_history=True)  # the injected cell
        result = shell.run_cell("from spae_lab.views.parameters import check_parameters\n"
                                "check_parameters(globals())", store_history=True)
        assert isinstance(result.error_in_exec, ParameterError)
        assert "must be in [1, 64]" in str(result.error_in_exec)
        shell.run_cell("num_images = '12'", store_history=True)
        assert shell.run_cell("checked = check_parameters(globals())", store_history=True).success
        assert shell.user_ns["checked"] == {"num_images": 12, "name": "x"}
    finally:
        shell.reset()
        InteractiveShell.clear_instance()


def test_check_parameters_takes_the_cell_source_when_given():
    namespace = {"__annotations__": {"steps": "int"}, "steps": 10**9}
    with pytest.raises(ParameterError, match=r"must be in \[1, 100\]"):
        check_parameters(namespace, source="steps: int = 5  # [1, 100] steps")
    assert declared_comments("steps: int = 5  # [1, 100] steps\nx = 1") == {"steps": "[1, 100] steps"}


def test_report_cells_run_under_a_timeout_by_default(tmp_path, monkeypatch):
    import spae_lab.views.report as report

    assert 0 < DEFAULT_CELL_TIMEOUT <= 3600
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("seconds: int = 60  # [0, 3600] how long the cell sleeps",
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import time\ntime.sleep(seconds)")])
    source = tmp_path / "sleepy.ipynb"
    nbformat.write(notebook, source)
    monkeypatch.setattr(report, "DEFAULT_CELL_TIMEOUT", 2.0)  # the default, shortened for the test
    run = run_notebook(source, reports_dir=tmp_path / "reports")
    assert run.status == "failed" and "timed out" in (run.error or "").lower(), run.error
    assert run.seconds < 50


# --- fuzzing: the checker takes a value or names what is wrong, nothing else ----------------------

_values = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=30), st.none(), st.lists(st.integers(-100, 100), max_size=80),
                    st.integers(-10**6, 10**6).map(str))
_types = st.sampled_from(["int", "float", "str", "bool", "list", "dict", "str | None", "list[int]", "Unknown"])
_bounds = st.one_of(st.none(), st.tuples(st.integers(-1000, 1000), st.integers(0, 2000)).filter(lambda b: b[0] <= b[1]))


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(value=_values, type_name=_types, bounds=_bounds)
def test_the_parameter_checker_returns_a_bounded_value_or_a_parameter_error(value, type_name, bounds):
    try:
        checked = check_parameter("p", value, type_name, bounds)
    except ParameterError as e:
        assert str(e).startswith("parameter 'p'")
        return
    if bounds is not None:
        items = checked if isinstance(checked, list) else [checked]
        for item in items:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                assert bounds[0] <= item <= bounds[1] or math.isnan(item)
    if type_name == "int":
        assert isinstance(checked, int)
    if isinstance(checked, list):
        assert len(checked) <= MAX_LIST_ITEMS


@settings(max_examples=300, deadline=None, database=None)
@given(comment=st.one_of(st.text(max_size=40),
                         st.builds(lambda a, b, rest: f"[{a}, {b}] {rest}", st.text(max_size=6), st.text(max_size=6),
                                   st.text(max_size=10))))
def test_reading_bounds_never_fails(comment):
    bounds = parse_bounds(comment)
    assert bounds is None or (bounds[0] <= bounds[1] and all(math.isfinite(v) for v in bounds))


def test_the_index_says_what_each_notebook_is_about_and_no_failure_is_not_red(tmp_path):
    import html
    import json

    from spae_lab.views.report_index import notebook_about, write_index

    about = notebook_about(ROOT / "notebooks" / "01_tour.ipynb")
    assert about.startswith("A tour of SPAE: an image as words, and back. SPAE turns an image into")
    for path in NOTEBOOKS:  # every notebook opens with what it teaches and what to change
        opening = "".join(json.loads(path.read_text())["cells"][0]["source"])
        assert "What this notebook teaches." in opening and "What to change." in opening, path.name
    run = tmp_path / "2026-01-01_01_tour_default"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"notebook": "01_tour", "status": "succeeded", "about": about,
                                                 "files": {"html": "01_tour.html", "notebook": "01_tour.ipynb"}}))
    page = write_index(tmp_path).read_text()
    assert html.escape(about) in page and "0 failed" in page and 'class="failed"' not in page
