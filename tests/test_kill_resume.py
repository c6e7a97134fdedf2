"""A training process killed with SIGKILL resumes exactly, and never reads a half-written file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from spae_lab.checkpoint import read_checkpoint

SCRIPT = Path(sys.executable).with_name("spae-lab")
ARGS = ["train", "--preset", "tiny", "--steps", "24", "--quiet", "--set", "train.num_threads=1",
        "--set", "train.checkpoint_every=4", "--set", "train.eval_every=100",
        "--set", "train.figure_every=100"]


def _checkpoint_step(run: Path) -> int:
    try:
        with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as f:
            return int(f.metadata()["step"])
    except Exception:
        return 0


def _train(run: Path, *extra: str) -> None:
    subprocess.run([str(SCRIPT), *ARGS, "--out", str(run), *extra], check=True, timeout=600,
                   capture_output=True)


def _kill_after(run: Path, step: int) -> None:
    proc = subprocess.Popen([str(SCRIPT), *ARGS, "--out", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _checkpoint_step(run) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _losses(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    _train(run)
    return run


@pytest.mark.slow  # two trainings in subprocesses, one killed
@pytest.mark.parametrize("kill_at", [4, 12])
def test_sigkill_then_resume_equals_an_uninterrupted_run(reference, tmp_path, kill_at):
    run = tmp_path / "run"
    _kill_after(run, kill_at)
    assert 0 < _checkpoint_step(run) < 24
    # debris of a write cut short must never be picked up
    (run / ".checkpoint.safetensors.abcd.tmp").write_bytes(b"half a checkpoint")
    _train(run, "--resume")
    want, _ = read_checkpoint(reference)
    got, meta = read_checkpoint(run)
    assert meta["step"] == "24"
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert _losses(run) == _losses(reference)
    # the killed writer's debris and its lock file (left by SIGKILL, its lock gone with it) are gone
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()


@pytest.mark.slow  # two trainings in subprocesses
def test_two_trainings_on_one_folder_one_wins_the_other_is_refused(tmp_path):
    """Both used to exit 0 and interleave metrics.jsonl: now one trains, the other ends in one
    line with status 2 (the folder is locked, or already holds the first one's run)."""
    run = tmp_path / "run"
    procs = [subprocess.Popen([str(SCRIPT), *ARGS, "--out", str(run)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    lines = results[1][1].splitlines()
    assert len(lines) == 1 and ("being written by another process (pid " in lines[0]
                                or "already holds a run" in lines[0]
                                or "was changed by another process" in lines[0]), lines
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(steps) and steps.count(0) == 1  # one run's records, in order
