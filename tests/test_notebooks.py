"""The source notebooks follow the house rules, and nbval fails on a failing cell.

nbval itself runs every notebook in notebooks/ as part of `pytest` (see pyproject's testpaths and
addopts: `--nbval-lax`); these tests check what nbval does not.
"""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# What a notebook may import besides spae_lab: the standard library and these.
ALLOWED_IMPORTS = {"torch", "pandas", "tqdm.auto", "IPython.display", "pathlib", "tempfile"}


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_tour", "02_token_pyramid", "03_reconstruction", "04_training"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_source_notebook_carries_no_outputs(path):
    for cell in _code_cells(path):
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs"
    if shutil.which("nbstripout", path=str(Path(sys.executable).parent)):
        nbstripout = str(Path(sys.executable).with_name("nbstripout"))
        proc = subprocess.run([nbstripout, "--verify", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"run `nbstripout {path}`: {proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_of_typed_literals_with_comments(path):
    import papermill

    cells = [c for c in _code_cells(path) if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: exactly one cell tagged `parameters`"
    lines = [line for line in cells[0].source.splitlines() if line.strip()]
    for line in lines:
        statement = ast.parse(line).body[0]
        assert isinstance(statement, ast.AnnAssign), line  # name: type = value
        ast.literal_eval(statement.value)  # a literal, nothing computed
        assert "  # " in line, f"{path.name}: comment each parameter: {line}"
    # papermill parses every line (a line it cannot parse would not be injectable)
    assert len(papermill.inspect_notebook(str(path))) == len(lines)
    assert "seed" in papermill.inspect_notebook(str(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_use_the_library_and_end_with_asserts(path):
    cells = _code_cells(path)
    for cell in cells:
        assert "sys.path" not in cell.source, f"{path.name}: no sys.path hacks"
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Lambda), (
                f"{path.name}: library code belongs in spae_lab, not in a cell")
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert module.startswith("spae_lab") or module in ALLOWED_IMPORTS, module
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in {"torch", "pandas"} or alias.name in ALLOWED_IMPORTS
    source = "".join(c.source for c in cells)
    # progress bars: tqdm.auto in the notebook, or a library call asked for its (tqdm.auto) progress
    assert "tqdm.auto" in source or "progress=True" in source, f"{path.name}: progress with tqdm.auto"
    assert "assert " in cells[-1].source, f"{path.name}: the last cell checks the results"


def test_an_injected_failing_cell_makes_nbval_red(tmp_path):
    # a small notebook in the house style (the real ones already run under nbval in this suite)
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("depths: int = 3  # decoding depths", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("from spae_lab.metrics import psnr\nimport torch\n"
                                  "x = torch.rand(1, 3, 8, 8)\n"
                                  "psnr_by_depth = [psnr(x, (x + 0.1 / d).clamp(0, 1)).item()\n"
                                  "                 for d in range(1, depths + 1)]"),
        nbformat.v4.new_code_cell('assert psnr_by_depth[-1] > 1000, "injected failure"'),
    ])
    copy = tmp_path / "01_tour_injected.ipynb"
    nbformat.write(notebook, copy)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-q", str(copy)],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "injected failure" in output and "AssertionError" in output
    summary = output.strip().splitlines()[-1]
    assert "1 failed" in summary and "passed" in summary, summary  # the cells before it passed
    json.loads(copy.read_text())  # nbval leaves the copy readable
