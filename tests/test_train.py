"""Training: the loss falls, resume is exact, checkpoints load back and refuse a wrong codebook.

Modules: spae_lab.training.loop, spae_lab.training.runs, spae_lab.devices.
"""

import json
import re

import pytest
import torch

from spae_lab.checkpoint import CheckpointError, load_tokenizer, read_checkpoint
from spae_lab.config import create_config
from spae_lab.training.loop import batch_indices, learning_rate, train
from spae_lab.training.runs import RunFolder, RunFolderError


def _cfg(**overrides):
    base = {"train.num_threads": 1, "train.steps": 30, "train.eval_every": 30,
            "train.figure_every": 30, "train.checkpoint_every": 10}
    base.update(overrides)
    return create_config("tiny", base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return run, train(_cfg(), run, progress=False)


def test_loss_falls_and_psnr_improves(trained):
    run, result = trained
    # the reconstruction term (the total also holds the semantic term, which warms up from 0)
    losses = [r["l2"] for r in result.history if "l2" in r]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert result.heldout_psnr[-1] > result.initial_psnr[-1]
    assert (run / "checkpoint.safetensors").exists() and (run / "config.json").exists()
    assert list((run / "figures").glob("*.png"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and "eval" in records[0] and records[-1]["step"] == 30


def test_resume_continues_exactly(trained, tmp_path):
    run, _ = trained
    cfg = _cfg()
    train(cfg, tmp_path, progress=False, stop_at=10)
    result = train(cfg, tmp_path, resume=True, progress=False)
    assert result.step == 30
    full, _ = read_checkpoint(run)
    resumed, _ = read_checkpoint(tmp_path)
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    def losses(folder):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if "loss" in r]

    assert losses(run) == losses(tmp_path)  # the same losses, step for step


def test_load_tokenizer_round_trip(trained):
    run, _ = trained
    model = load_tokenizer(run)
    assert not model.training
    images = torch.rand(2, 3, 16, 16)
    pyramid = model.encode(images)
    assert all(w in model.codebook.words for w in pyramid.words(0))
    assert model.decode(pyramid, 2).shape == (2, 3, 16, 16)
    assert load_tokenizer(run / "checkpoint.safetensors").config == model.config


def test_checkpoint_of_another_codebook_is_refused(trained, tmp_path):
    run, _ = trained
    from safetensors.torch import save_file

    tensors, metadata = read_checkpoint(run)
    metadata["codebook_fingerprint"] = "0123456789abcdef"
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="another codebook"):
        load_tokenizer(tmp_path / "other.safetensors")


def test_damaged_or_foreign_files_are_refused(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_tokenizer(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_tokenizer(tmp_path / "missing")


def test_schedule_and_batches():
    cfg = create_config("small")
    assert learning_rate(0, cfg) < learning_rate(cfg.train.warmup_steps, cfg)
    assert learning_rate(cfg.train.steps, cfg) == pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio)
    first = batch_indices(0, 8, 20, seed=0)
    assert first == batch_indices(0, 8, 20, seed=0) != batch_indices(0, 8, 20, seed=1)
    epoch = batch_indices(0, 10, 20, 0) + batch_indices(1, 10, 20, 0)
    assert sorted(epoch) == list(range(20))  # one epoch sees every image once


# --- the run folder is owned (issue 14) ------------------------------------------------------------


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_is_refused_unless_resumed_or_forced(trained, tmp_path):
    run, _ = trained
    before = _files(run)
    with pytest.raises(RunFolderError, match=r"already holds a run with a checkpoint at step 30: --resume"):
        train(_cfg(), run, progress=False)
    with pytest.raises(RunFolderError, match="resume and force exclude each other"):
        train(_cfg(), run, resume=True, force=True, progress=False)
    assert _files(run) == before  # refused before anything was written
    # force: the old run's files go (a stale figure included), a file of the user's stays
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in before.items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    (copy / "figures" / "step_999999.png").write_bytes(b"stale")
    (copy / "notes.txt").write_text("mine")
    train(_cfg(**{"train.steps": 2, "train.eval_every": 2, "train.figure_every": 2}), copy, force=True,
          progress=False)
    assert sorted(p.name for p in (copy / "figures").iterdir()) == ["step_000002.png"]
    assert (copy / "notes.txt").read_text() == "mine" and not (copy / ".lock").exists()
    assert read_checkpoint(copy)[1]["step"] == "2"


def test_resume_refuses_what_changes_the_run_and_records_what_may_change(trained, tmp_path):
    run, _ = trained
    config_json = (run / "config.json").read_text()
    for overrides, key in [({"train.seed": 1}, "train.seed 0 -> 1"),
                           ({"data.dataset": "digits"}, "data.dataset 'scenes' -> 'digits'"),
                           ({"semantic.teacher": "lit:other"}, "semantic.teacher 'lit:builtin' -> 'lit:other'"),
                           ({"model.quantizer": "rq"}, "model.quantizer 'saq' -> 'rq'"),
                           ({"train.lr": 0.01}, "train.lr 0.001 -> 0.01")]:
        with pytest.raises(CheckpointError, match=re.escape(key)):
            train(_cfg(**overrides), run, resume=True, progress=False)
        with pytest.raises(CheckpointError, match=re.escape(key)):
            train(_cfg(**overrides), run, resume="auto", progress=False)
    assert (run / "config.json").read_text() == config_json  # provenance untouched
    # more steps (and where it logs) may change: recorded in resumes.jsonl, the checkpoint moves on
    folder = tmp_path / "run"
    train(_cfg(**{"train.steps": 2, "train.eval_every": 2, "train.figure_every": 2}), folder, progress=False)
    (folder / ".checkpoint.safetensors.dead1234.tmp").write_bytes(b"half a checkpoint")  # a killed writer's
    result = train(_cfg(**{"train.steps": 4, "train.eval_every": 4, "train.figure_every": 4}), folder,
                   resume=True, progress=False)
    assert result.step == 4 and not list(folder.glob(".*.tmp"))
    resumes = [json.loads(line) for line in (folder / "resumes.jsonl").read_text().splitlines()]
    assert resumes[0]["step"] == 2 and resumes[0]["changed"]["train.steps"] == [2, 4]
    assert json.loads((folder / "config.json").read_text())["train"]["steps"] == 4


def test_a_locked_run_folder_is_refused_in_one_line(tmp_path):
    """While a process holds the folder's lock, a second `spae-lab train` fails at once, in one
    line naming the holder; once it is released the folder is free again."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder = RunFolder(tmp_path / "run")
    folder.acquire()
    try:
        script = Path(sys.executable).with_name("spae-lab")
        proc = subprocess.run([str(script), "train", "--preset", "tiny", "--steps", "2", "--quiet",
                               "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [f"spae-lab train: error: {tmp_path / 'run'} is being written by "
                                            f"another process (pid {os.getpid()})"]
        with pytest.raises(RunFolderError, match="being written by another process"):
            train(_cfg(), tmp_path / "run", progress=False)
    finally:
        folder.release()
    assert not (tmp_path / "run" / ".lock").exists()
    again = RunFolder(tmp_path / "run")
    again.acquire()  # free again
    again.release()


def test_threads_chosen_from_free_cores(monkeypatch):
    import os

    from spae_lab import devices

    monkeypatch.setattr(devices, "available_cores", lambda: 4)
    for load, threads in ((0.0, 4), (1.2, 3), (2.0, 2), (3.6, 1), (9.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert devices.choose_num_threads() == threads
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the free cores
    assert devices.choose_num_threads() == 2
    monkeypatch.undo()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert devices.available_cores() <= 3 and 1 <= devices.choose_num_threads() <= 3


def test_the_cli_gives_torch_the_free_cores_unless_told(monkeypatch):
    """Beside a busy process torch's thread per core slows reading severalfold: the CLI gives torch
    the cores the load leaves free, and OMP_NUM_THREADS, when set, wins."""
    import os

    from spae_lab import devices

    monkeypatch.setattr(devices, "available_cores", lambda: 2.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "placeholder")  # restored after the test
    for load, threads in ((0.1, "2"), (1.0, "1"), (3.5, "1")):
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(devices.os, "getloadavg", lambda load=load: (load, load, load))
        devices.use_the_free_cores()
        assert os.environ["OMP_NUM_THREADS"] == threads, load
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    devices.use_the_free_cores()
    assert os.environ["OMP_NUM_THREADS"] == "2"
