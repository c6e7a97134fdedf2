"""Run folders: what a training run writes and how to find it again.

A run folder holds `checkpoint.safetensors` (weights, optimizer state, config), `metrics.jsonl`
(one JSON record per log or evaluation step), `config.json` and `figures/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from spae_lab.checkpoint import CHECKPOINT_NAME
from spae_lab.io import atomic_write_path

METRICS_NAME = "metrics.jsonl"


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """True when `run_dir` holds a checkpoint to resume from."""
    return (Path(run_dir) / CHECKPOINT_NAME).exists()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of a run's metrics.jsonl (a line cut by a kill is skipped)."""
    path = Path(run_dir) / METRICS_NAME
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep only records up to `step` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("step", 0) <= step:
            kept.append(record)
    with atomic_write_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept
