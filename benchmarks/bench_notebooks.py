"""Each notebook's default run in a live kernel, timed: nbclient executes it as JupyterLab would
(interactive controls on, widget state stored), from a fresh project folder (cold: no cached
results) and again (warm: the few-shot and generation answers cached, the training run replaced).

The baseline, measured in the same run: a notebook of one cell that imports spae_lab (kernel start
and imports, the floor every notebook pays). Bar (issue 22): each notebook at most 60 s on 2 quiet
cores. The machine's load average is recorded beside each time: on a shared machine absolute
times are slow, so the lead re-times on a quiet one.

    .venv/bin/python benchmarks/bench_notebooks.py --json benchmarks/results/notebooks_cpu.json \\
        --markdown benchmarks/results/notebooks_cpu.md [--only 05 06] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BAR_SECONDS = 60


def run_notebook(path: Path, project: Path, threads: int) -> dict:
    """Execute one notebook with nbclient in a fresh kernel; seconds, widgets stored, errors."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    os.environ.update(SPAE_LAB_ROOT=str(project), OMP_NUM_THREADS=str(threads))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}})
    load = os.getloadavg()[0]
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as e:
        error = str(e).strip().splitlines()[-1][:300]
    seconds = time.perf_counter() - start
    state = notebook.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    return {"seconds": round(seconds, 1), "load_before": round(load, 2), "widgets_stored": len(state.get("state", {})),
            "error": error}


def baseline_notebook(folder: Path) -> Path:
    import nbformat

    path = folder / "baseline.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import spae_lab\nfrom spae_lab.widgets import is_live\nassert is_live(True)")]), path)
    return path


def markdown(result: dict) -> str:
    lines = [f"# Notebooks in a live kernel (nbclient, widget state stored), {result['threads']} torch threads",
             "", f"Machine: {result['machine']}. Baseline (kernel start + `import spae_lab`): "
             f"{result['baseline_seconds']:.1f} s. Bar: {BAR_SECONDS} s a notebook on 2 quiet cores.", "",
             "| notebook | cold (s) | load at start | warm (s) | load at start | cold / baseline | widgets stored | "
             "within the bar (cold) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in result["notebooks"].items():
        cold, warm = r["cold"], r.get("warm", {})
        lines.append(f"| {name} | {cold['seconds']:.1f} | {cold['load_before']:.1f} | "
                     f"{warm.get('seconds', float('nan')):.1f} | {warm.get('load_before', float('nan')):.1f} | "
                     f"{cold['seconds'] / result['baseline_seconds']:.1f}x | {cold['widgets_stored']} | "
                     f"{'yes' if cold['seconds'] <= BAR_SECONDS else 'no'}"
                     f"{'; ERROR ' + cold['error'] if cold['error'] else ''} |")
    lines += ["", "cold: a fresh project folder ($SPAE_LAB_ROOT), so no cached few-shot or generation answers; "
              "the machine-wide cache (~/.cache/spae_lab: the converted SmolLM2, codebooks, the digit classifier) "
              "was warm. warm: the same folder again. Load: the 1-minute load average when the notebook started "
              "(the machine is shared; above 2, other jobs ran beside it)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=[], help="notebooks whose name contains one of these")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-warm", dest="warm", action="store_false")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    notebooks = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
                 if not args.only or any(part in p.stem for part in args.only)]
    with tempfile.TemporaryDirectory(prefix="spae-lab-bench-notebooks-") as scratch:
        project = Path(scratch)
        (project / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
        baseline = run_notebook(baseline_notebook(project), project, args.threads)["seconds"]
        results = {}
        for path in notebooks:
            results[path.stem] = {"cold": run_notebook(path, project, args.threads)}
            print(path.stem, "cold", results[path.stem]["cold"], flush=True)
        if args.warm:
            for path in notebooks:
                results[path.stem]["warm"] = run_notebook(path, project, args.threads)
                print(path.stem, "warm", results[path.stem]["warm"], flush=True)
    import platform

    result = {"threads": args.threads, "baseline_seconds": baseline, "notebooks": results,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, shared with other jobs"}
    write_results(result, args.json, args.markdown, markdown)


if __name__ == "__main__":
    main()
