"""Training a clip tokenizer: the image loop's pieces (batches, depths, learning rate, run
folders, checkpoints) around clips, with one semantic target per guided layer. A new run may
start from an image tokenizer's weights (`clip.init_from`).

The batch and the decode depths of step s depend only on (seed, s), as for images, so `--resume`
continues exactly with one torch thread. `spae-lab train --preset video-small` runs this.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spae_lab import checkpoint
from spae_lab.config import ConfigError
from spae_lab.data import DataError
from spae_lab.devices import choose_num_threads, pick_device
from spae_lab.io import atomic_write_text
from spae_lab.losses import pixel_and_codebook_losses
from spae_lab.training.loop import TrainResult, backward_and_step, batch_indices, learning_rate, sample_depths
from spae_lab.training.runs import (
    METRICS_NAME,
    RunFolder,
    append_metrics,
    record_resume,
    resume_changes,
    truncate_metrics,
)
from spae_lab.video.config import ClipExperimentConfig
from spae_lab.video.data import MovingDigits, MovingScenes
from spae_lab.video.evaluate import evaluate_clips
from spae_lab.video.semantic import ClipGuide


def build_clip_datasets(cfg: ClipExperimentConfig):
    """(train, held-out) clip datasets of the config; held-out clips are never trained on."""
    d, size, frames, seed = cfg.data, cfg.model.image_size, cfg.clip.frames, cfg.train.seed
    kinds = {"moving-scenes": MovingScenes, "moving-digits": MovingDigits}
    if d.dataset in kinds:
        kind = kinds[d.dataset]
        return (kind(d.num_images, "train", seed, size, frames),
                kind(d.heldout_images, "heldout", seed, size, frames))
    from spae_lab.video.readers import ClipFolderDataset

    if not Path(d.dataset).exists():
        raise DataError(f"unknown clip dataset {d.dataset!r}: moving-scenes, moving-digits or a folder of clips")
    return (ClipFolderDataset(d.dataset, size, frames, split="train", seed=seed),
            ClipFolderDataset(d.dataset, size, frames, split="heldout", seed=seed))


def start_from_image_tokenizer(model, source: str) -> int:
    """Copy the weights of an image tokenizer (a shipped name, run folder or checkpoint) into the
    clip tokenizer's 2D halves, codebook projections and semantic head; the temporal blocks keep
    their identity start. Returns the number of tensors copied. The two must share the frame size,
    the 2D network and the codebook (a `ConfigError` says which setting differs)."""
    image = checkpoint.load_tokenizer(source)
    if hasattr(image, "clip_config"):
        raise ConfigError(f"clip.init_from {source!r} is a clip tokenizer; give an image tokenizer")
    mine, theirs = model.experiment_config, image.experiment_config
    for key in ("image_size", "base_channels", "channel_mults", "num_res_blocks", "latent_channels",
                "codebook_projection_dim", "project_to_codebook", "semantic_head_mlp"):
        ours, other = getattr(mine.model, key), getattr(theirs.model, key)
        if ours != other:
            raise ConfigError(f"clip.init_from {source!r}: its model.{key} is {other}, this clip tokenizer's is {ours}")
    if mine.codebook != theirs.codebook:
        raise ConfigError(f"clip.init_from {source!r}: its codebook is {theirs.codebook}, this clip tokenizer's "
                          f"is {mine.codebook}")
    target, weights = model.state_dict(), image.state_dict()
    shared = {k: v for k, v in weights.items() if k in target and target[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)
    return len(shared)


def clip_losses(out, clips: torch.Tensor, cfg: ClipExperimentConfig, model, guide: ClipGuide | None,
                step: int, indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every weighted loss term of a step: pixels (L2, image gradients of every frame),
    commitment, codebook, and the semantic loss of each guided layer against its own targets."""
    losses = pixel_and_codebook_losses(out, clips, cfg, model)
    if cfg.semantic.enabled:
        top = guide.top_words(clips, indices)
        losses["semantic"] = guide.weight(step, cfg.train.steps, cfg) * guide.loss(
            out.quant.scores, top, cfg, model.quantizer.dim)
    return losses


def train_clips(cfg: ClipExperimentConfig, run_dir: str | os.PathLike, resume: bool = False, force: bool = False,
                progress: bool = True, on_record: Callable[[list[dict]], object] | None = None) -> TrainResult:
    """Train a clip tokenizer into `run_dir` (checkpoint, metrics.jsonl, config.json); the run
    folder is owned as an image run's is (locked, never silently overwritten, `force` replaces
    it, `resume` continues it with its own settings)."""
    folder = RunFolder(run_dir)
    try:
        return _train(cfg, folder, resume, force, progress, on_record)
    finally:
        folder.release()


def _train(cfg, folder: RunFolder, resume: bool, force: bool, progress: bool, on_record) -> TrainResult:
    from tqdm.auto import tqdm

    run_dir = folder.path
    torch.set_num_threads(cfg.train.num_threads or choose_num_threads())
    device = pick_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    checkpoint_path, metrics_path = run_dir / checkpoint.CHECKPOINT_NAME, run_dir / METRICS_NAME
    folder.check(resume, force)
    resuming = bool(resume) and checkpoint_path.exists()
    if resuming:
        tensors, metadata = checkpoint.read_checkpoint(checkpoint_path)
        start = checkpoint.checkpoint_step(metadata, checkpoint_path)
        changes = resume_changes(checkpoint.checkpoint_config(metadata, checkpoint_path), cfg, start, checkpoint_path)
    train_set, heldout = build_clip_datasets(cfg)
    model = checkpoint.create_tokenizer(cfg).to(device)
    if cfg.clip.init_from and not resuming:  # before the teacher's cache: a bad name fails at once
        start_from_image_tokenizer(model, cfg.clip.init_from)
    guide = None
    if cfg.semantic.enabled:
        guide = ClipGuide.from_config(cfg, model.codebook, device)
        if cfg.semantic.cache_top_words:
            guide.cache_top_words(train_set)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder.acquire()
    if not resuming and folder.holds_run():
        folder.clear()
    history: list[dict] = []

    def keep(record: dict) -> None:
        history.append(record)
        append_metrics(metrics_path, record)
        if on_record is not None:
            on_record(history)

    initial = None
    if resuming:
        checkpoint.restore_weights(model, tensors, metadata, checkpoint_path)
        checkpoint.restore_optimizer(optimizer, tensors)
        history = truncate_metrics(metrics_path, start)
        record_resume(run_dir, start, changes)
    else:
        start = 0
        metrics_path.unlink(missing_ok=True)
        initial = evaluate_clips(model, heldout)
        keep({"step": 0, "eval": initial})
    atomic_write_text(run_dir / "config.json", cfg.to_json())
    t, guided = cfg.train, (len(cfg.semantic.top_k) if cfg.semantic.enabled else 0)
    deadline = time.monotonic() + 60 * t.max_minutes if t.max_minutes else None
    began, step = time.monotonic(), start
    model.train()
    for step in tqdm(range(start, t.steps), initial=start, total=t.steps, desc="train clips", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        indices = batch_indices(step, t.batch_size, len(train_set), t.seed)
        clips = torch.stack([train_set[i]["video"] for i in indices]).to(device)
        depths = sample_depths(step, t.batch_size, model.num_layers, cfg).to(device)
        out = model(clips, depths, score_layers=guided)
        losses = clip_losses(out, clips, cfg, model, guide, step, torch.tensor(indices))
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr")
        backward_and_step(loss, model, optimizer, t.grad_clip)
        done = step + 1
        last = done == t.steps or (deadline is not None and time.monotonic() > deadline)
        if done % t.log_every == 0 or last:
            keep({"step": done, "lr": optimizer.param_groups[0]["lr"], "loss": round(loss.item(), 5),
                  **{k: round(v.item(), 5) for k, v in losses.items()},
                  "relative_error": [round(v, 4) for v in out.quant.relative_error.tolist()],
                  "minutes": round((time.monotonic() - began) / 60, 2)})
        if done % t.eval_every == 0 or last:
            keep({"step": done, "eval": evaluate_clips(model, heldout)})
        if done % t.checkpoint_every == 0 or last:
            checkpoint.save_checkpoint(checkpoint_path, model, optimizer, done, cfg)
        step = done
        if last:
            break
    final = next((r["eval"] for r in reversed(history) if "eval" in r), None)
    return TrainResult(run_dir, step, final["psnr"] if final else [], initial["psnr"] if initial else None, history)
