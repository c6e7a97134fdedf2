"""Training: the loss falls, resume is exact, checkpoints load back and refuse a wrong codebook."""

import json

import pytest
import torch

from spae_lab.checkpoint import CheckpointError, load_tokenizer, read_checkpoint
from spae_lab.config import create_config
from spae_lab.train import batch_indices, learning_rate, train


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
