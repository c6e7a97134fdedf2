"""Where relative paths lead, whatever folder a notebook's kernel runs in.

Commands read and write relative paths from the current folder, as any command does. A notebook
kernel, though, runs in the notebook's own folder (`jupyter lab notebooks/`, papermill started in
`notebooks/`), where `runs/demo` is not. So:

- reading: a relative path that does not exist from the current folder is also looked up from the
  project root (`find_path`; `load_tokenizer` does this for every checkpoint or run folder);
- writing: a folder a notebook names for itself (its results when `results_dir` is empty) goes
  under the project root (`results_folder`), never into `notebooks/`.

The project root is `$SPAE_LAB_ROOT` when set, else the nearest folder at or above the current one
that holds `pyproject.toml` or `.git` (the repository a notebook belongs to), else the current
folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

ROOT_MARKERS = ("pyproject.toml", ".git")


def project_root() -> Path:
    """The folder relative paths fall back to (see the module docstring)."""
    given = os.environ.get("SPAE_LAB_ROOT")
    if given:
        return Path(given).expanduser()
    here = Path.cwd()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return here


def find_path(path: str | os.PathLike) -> Path:
    """`path` itself when it exists or is absolute; else the same relative path under the project
    root when it exists there; else `path` unchanged (for the caller to report as missing)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    under_root = project_root() / path
    return under_root if under_root.exists() else path


def results_folder(given: str | os.PathLike, kind: str, parameters: dict[str, Any]) -> Path:
    """Where an experiment writes its results: `given` when not empty, else a folder named after
    the experiment's parameters, `<project root>/reports/<kind>/<name>-<digest>`. The same
    parameters lead to the same folder, so a rerun reuses what the first run stored (episodes, LLM
    answers) and nothing is lost in a temporary folder."""
    if given:
        return Path(given)
    text = json.dumps(parameters, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    label = str(parameters.get("checkpoint") or kind)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(label).name).strip(".-") or kind
    return project_root() / "reports" / kind / f"{label[:40]}-{digest}"
