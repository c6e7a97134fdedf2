"""Run folders: what a training run writes, who may write it, and how to find it again.

A run folder holds `checkpoint.safetensors` (weights, optimizer state, config), `metrics.jsonl`
(one JSON record per log or evaluation step), `config.json`, `resumes.jsonl` (one record per
resume: its step and the settings it changed) and `figures/`.

A run folder is owned (`RunFolder`): the process training into it holds `.lock` (fcntl.flock, so
the lock goes with the process, SIGKILL included) and a second one fails at once; a folder that
holds a run is resumed or replaced on request (`force`), never silently overwritten; a resume
must keep every setting that gives the run its meaning (`resume_changes`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from dataclasses import asdict
from pathlib import Path

from spae_lab.checkpoint import CHECKPOINT_NAME, CheckpointError
from spae_lab.config import ExperimentConfig
from spae_lab.errors import SpaeError
from spae_lab.io import FolderLock, append_text, atomic_write_path, remove_owned, remove_stale_temporaries

METRICS_NAME = "metrics.jsonl"
RESUMES_NAME = "resumes.jsonl"
# What a run writes, and so what `--force` removes (figures: only the run's own step_*.png).
RUN_FILES = (CHECKPOINT_NAME, METRICS_NAME, "config.json", RESUMES_NAME)
FIGURES = "figures"

# Settings a resumed run may change: how it runs, not what it computes. Anything else (model,
# codebook, data, loss, semantic teacher and loss, seed, batch, optimiser) defines the run.
# train.steps may change as long as it is not below the checkpoint's step (the schedule follows it).
RESUMABLE_CHANGES = frozenset({
    "train.steps", "train.max_minutes", "train.log_every", "train.eval_every", "train.figure_every",
    "train.checkpoint_every", "train.device", "train.precision", "train.num_threads", "train.compile",
    "train.distributed_backend",
    "semantic.cache_top_words"})  # the same words, read from a table or from the teacher


class RunFolderError(SpaeError):
    """A run folder this process may not write: locked by another process, or holding a run that
    was neither to be resumed nor replaced."""


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """True when `run_dir` holds a checkpoint to resume from."""
    return (Path(run_dir) / CHECKPOINT_NAME).exists()


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_changes(saved: ExperimentConfig, cfg: ExperimentConfig, step: int, source) -> dict:
    """{key: [saved, new]} of the settings a resume of the run (`saved` config, at `step`) with
    `cfg` changes; CheckpointError naming every key that would change the run's meaning."""
    old, new = _flat(asdict(saved)), _flat(asdict(cfg))
    changed = {k: [old.get(k), new.get(k)] for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE_CHANGES}
    if refused:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(refused.items())[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise CheckpointError(f"{source} belongs to a run with other settings (preset {saved.preset!r}): "
                              f"{listed}{more}; resume it with its own settings, or train another run "
                              f"(another --out, or --force to replace this one)")
    if cfg.train.steps < step:
        raise CheckpointError(f"{source} is at step {step}, past train.steps = {cfg.train.steps}; "
                              f"give at least {step} steps to resume it")
    return changed


def _checkpoint_step(path: Path) -> str:
    """The step in a checkpoint's metadata, read without loading its tensors ('?' if unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("step", "?")
    except Exception:  # damaged: the resume itself reports it
        return "?"


class RunFolder:
    """One process's claim on a run folder (rank 0 under torchrun).

    `check(resume, force)` before any work (fails fast, writes nothing); `acquire()` just before
    the first write (creates the folder, takes the lock, checks again that no other process
    changed the folder meanwhile, removes stale temporaries of killed writers); `clear()` removes
    the old run's files (`force`); `release()` at the end, whatever happened."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = FolderLock(self.path, RunFolderError)
        self._seen: tuple | None = None

    def _state(self) -> tuple:
        """What identifies the run in the folder now (to notice another writer between check and
        acquire)."""
        out = []
        for name in RUN_FILES:
            with contextlib.suppress(OSError):
                stat = (self.path / name).stat()
                out.append((name, stat.st_size, stat.st_mtime_ns))
        return tuple(out)

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def check(self, resume: bool | str = False, force: bool = False) -> None:
        """Refuse, before any work, a folder this run may not write (see the class docstring)."""
        if force and resume:
            raise RunFolderError("resume and force exclude each other: resume continues the run in "
                                 f"{self.path}, force replaces it")
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a run folder")
        self._lock.refuse_if_locked()
        if self.holds_run() and not resume and not force:
            checkpoint = self.path / CHECKPOINT_NAME
            what = (f"a run with a checkpoint at step {_checkpoint_step(checkpoint)}" if checkpoint.exists()
                    else "a run's files (no checkpoint)")
            raise RunFolderError(f"{self.path} already holds {what}: --resume to continue it, --force to "
                                 f"replace it (train(..., resume=True / force=True)), or another --out")
        self._seen = self._state()

    def acquire(self) -> None:
        """Create the folder and take its lock for this process's lifetime (or until `release`)."""
        self._lock.acquire()
        if self._seen is not None and self._state() != self._seen:
            self.release()
            raise RunFolderError(f"{self.path} was changed by another process while this run was "
                                 f"starting; look at it, then try again")
        for folder in (self.path, self.path / FIGURES):
            remove_stale_temporaries(folder)  # debris of writers killed mid-write: none can be alive

    def clear(self) -> None:
        """Remove the old run's files (its checkpoint, metrics, config, figures), nothing else."""
        for name in RUN_FILES:
            remove_owned(self.path / name, self.path)
        figures = self.path / FIGURES
        for figure in sorted(figures.glob("step_*.png")) if figures.is_dir() else []:
            remove_owned(figure, figures)
        with contextlib.suppress(OSError):
            figures.rmdir()  # only when nothing else is left in it

    def release(self) -> None:
        self._lock.release()


def record_resume(run_dir: Path, step: int, changes: dict) -> None:
    """One line in resumes.jsonl: when the run was resumed, from which step, what changed."""
    record = {"step": step, "time": dt.datetime.now().isoformat(timespec="seconds"), "pid": os.getpid(),
              "changed": changes}
    append_text(run_dir / RESUMES_NAME, json.dumps(record, default=str) + "\n")


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
    append_text(path, json.dumps(record) + "\n")


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
