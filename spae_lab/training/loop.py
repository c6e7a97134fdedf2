"""The training loop (and `quick_run`, a cached tiny run for notebooks' defaults).

Reproducibility by construction: the batch of step s and the random decode depths of step s are
functions of (seed, s) alone, so a run resumed from a checkpoint (weights + AdamW state + step)
continues exactly as if it had never stopped (`checkpoint` writes and reads the state, `runs` the
folder, `losses` every loss term, `evaluate` the held-out figures, `devices` the process group).

Distributed data parallel: under `torchrun` (WORLD_SIZE > 1) every rank takes its contiguous slice
of the step's global batch (`train.batch_size` images, the same indices and depths as one process),
DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPUs), and rank 0 alone
evaluates and writes checkpoints, metrics and figures. The same config, the same checkpoints:
a run can be resumed with any number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import record_function
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from spae_lab.assets import cache_dir
from spae_lab.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    checkpoint_config,
    checkpoint_step,
    create_tokenizer,
    read_checkpoint,
    restore_optimizer,
    restore_weights,
    save_checkpoint,
)
from spae_lab.config import ExperimentConfig, create_config
from spae_lab.data import collate, make_dataset
from spae_lab.devices import all_mean, autocast_dtype, choose_num_threads, init_distributed, pick_device
from spae_lab.io import atomic_write_text, remove_owned
from spae_lab.losses import training_losses, warmup_cosine
from spae_lab.model import SPAE, SPAEOutput
from spae_lab.semantic import SemanticGuide
from spae_lab.teacher import TeacherError
from spae_lab.training.evaluate import evaluate
from spae_lab.training.runs import (
    METRICS_NAME,
    RunFolder,
    append_metrics,
    has_checkpoint,
    record_resume,
    resume_changes,
    truncate_metrics,
)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    heldout_psnr: list[float]  # per depth, dB, at the end of the run
    initial_psnr: list[float] | None = None  # per depth before training (None when resumed)
    history: list[dict] = field(default_factory=list)
    rank: int = 0  # process rank under torchrun (only rank 0 holds evaluations and writes files)

    def describe(self) -> str:
        """Held-out PSNR per depth before (when the run started here) and after, and the checkpoint."""
        def fmt(values: list[float]) -> str:
            return " ".join(f"{v:.2f}" for v in values)

        lines = [f"held-out PSNR per depth before training (dB): {fmt(self.initial_psnr)}"] if self.initial_psnr else []
        lines.append(f"held-out PSNR per depth after {self.step} steps (dB):  {fmt(self.heldout_psnr)}")
        lines.append(f"checkpoint: {self.run_dir / CHECKPOINT_NAME}")
        return "\n".join(lines)


# --- data -----------------------------------------------------------------------------------------


def build_datasets(cfg: ExperimentConfig) -> tuple[Dataset, Dataset]:
    """(train, held-out) datasets of the config. Held-out images are never trained on."""
    d, size, seed = cfg.data, cfg.model.image_size, cfg.train.seed
    kwargs: dict = {}
    if d.dataset == "scenes":
        kwargs["num_images"] = d.num_images
    elif d.max_per_class is not None and d.dataset not in ("digits", "mnist"):
        kwargs["max_per_class"] = d.max_per_class
    train = make_dataset(d.dataset, size, split="train", seed=seed, **kwargs)
    if d.dataset == "scenes":
        kwargs["num_images"] = d.heldout_images
    heldout = make_dataset(d.dataset, size, split="heldout", seed=seed, **kwargs)
    if len(heldout) > d.heldout_images:
        # evenly spaced, not the first N: folder and digit splits are sorted by class, and the
        # first 512 of CIFAR-10's held-out split are all airplanes
        step = len(heldout) / d.heldout_images
        heldout = Subset(heldout, [int(i * step) for i in range(d.heldout_images)])
    return train, heldout


def batch_indices(step: int, batch_size: int, dataset_size: int, seed: int) -> list[int]:
    """Dataset indices of the batch at `step`: epochs of seeded permutations, read in order."""
    out: list[int] = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), dataset_size)
        perm = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        take = min(batch_size - len(out), dataset_size - offset)
        out.extend(perm[offset : offset + take].tolist())
    return out


def load_batch(dataset: Dataset, indices: list[int]) -> dict:
    return collate([dataset[i] for i in indices])


def sample_depths(step: int, batch_size: int, num_layers: int, cfg: ExperimentConfig) -> torch.Tensor:
    """Decode depth per image: all layers for a fraction, else uniform in 1..L (progressive
    reconstruction is trained at every depth, in one decoder pass)."""
    if cfg.loss.depth_sampling == "full":
        return torch.full((batch_size,), num_layers, dtype=torch.long)
    gen = torch.Generator().manual_seed(cfg.train.seed * 7919 + step)
    depths = torch.randint(1, num_layers + 1, (batch_size,), generator=gen)
    full = torch.rand(batch_size, generator=gen) < cfg.loss.full_depth_fraction
    return torch.where(full, torch.full_like(depths, num_layers), depths)


def learning_rate(step: int, cfg: ExperimentConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio."""
    t = cfg.train
    return warmup_cosine(step, t.steps, t.warmup_steps, t.lr, t.min_lr_ratio)


def build_guide(cfg: ExperimentConfig, model: SPAE, device) -> SemanticGuide | None:
    """The teacher for the semantic loss, and for relevance metrics even when the loss is off.
    A teacher that cannot be loaded is an error only when the loss needs it."""
    try:
        return SemanticGuide.from_config(cfg.semantic, model.codebook, device)
    except TeacherError:
        if cfg.semantic.enabled:
            raise
        warnings.warn(f"teacher {cfg.semantic.teacher!r} unavailable: no relevance metrics", stacklevel=2)
        return None


# --- the loop -------------------------------------------------------------------------------------


def training_step(net: torch.nn.Module, model: SPAE, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  depths: torch.Tensor, cfg: ExperimentConfig, guide: SemanticGuide | None, step: int,
                  indices: torch.Tensor | None = None, amp_dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor], SPAEOutput]:
    """One optimisation step: forward (`net`: the model or its DDP/compiled wrapper; image b decoded
    from depths[b] layers), every loss term, backward, gradient clipping, AdamW. images (B, 3, S, S)
    in [0, 1]; `indices` (B,) the images' dataset indices, for the teacher's cached top-K words.
    Returns (loss, weighted loss terms by name, the forward's output). Profiler ranges name the
    phases (forward, losses, backward, optimizer)."""
    score_layers = len(cfg.semantic.top_k) if cfg.semantic.enabled else 0
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        with record_function("forward"):
            out = net(images, depths, score_layers=score_layers)
        with record_function("losses"):
            losses = training_losses(out, images, cfg, model, guide, step, indices)
            loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr")
    backward_and_step(loss, model, optimizer, cfg.train.grad_clip)
    return loss, losses, out


def backward_and_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      grad_clip: float) -> None:
    """Backward, gradient clipping and the optimizer step, in named profiler ranges."""
    with record_function("backward"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with record_function("optimizer"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()


def train(cfg: ExperimentConfig, run_dir: str | os.PathLike, resume: bool | str = False,
          progress: bool = True, stop_at: int | None = None,
          on_record: Callable[[list[dict]], object] | None = None,
          on_figure: Callable[[SPAE, Dataset, Path], object] | None = None,
          force: bool = False) -> TrainResult:
    """Train an SPAE tokenizer; writes checkpoint, metrics.jsonl, config.json and figures.

    Callbacks (rank 0 only): `on_record(history)` after every log or evaluation record (a live
    plot: `viz.LiveLossPlot.update`); `on_figure(model, heldout, path)` writes the figure at
    `path` every `train.figure_every` steps (default: `viz.save_reconstruction_figure`).

    The run folder is owned (`spae_lab.training.runs.RunFolder`): this process holds its lock while it
    trains (another one fails at once), and a folder that already holds a run is refused
    (RunFolderError) unless it is resumed or `force` replaces it (its old files, figures included,
    removed once the new run is ready to write). `resume=True` continues from the run folder's
    checkpoint (warning when there is none); `resume="auto"` continues when there is one and
    starts quietly otherwise. A resume keeps every setting that gives the run its meaning (a
    CheckpointError names any it would change; `runs.RESUMABLE_CHANGES` may change and are recorded
    in resumes.jsonl). Resuming is exact, step for step, with one torch thread
    (`train.num_threads=1`); with more, CPU kernels may sum in another order and the runs drift
    apart in the last bits. `stop_at` ends the run after that step with a checkpoint, as an
    interruption would (the schedule still targets `train.steps`).
    """
    folder = RunFolder(run_dir)
    try:
        return _train(cfg, folder, resume, force, progress, stop_at, on_record, on_figure)
    finally:
        folder.release()


def _train(cfg: ExperimentConfig, folder: RunFolder, resume: bool | str, force: bool, progress: bool,
           stop_at: int | None, on_record: Callable[[list[dict]], object] | None,
           on_figure: Callable[[SPAE, Dataset, Path], object] | None) -> TrainResult:
    if on_figure is None:
        from spae_lab.views.figures import save_reconstruction_figure as on_figure  # matplotlib when training

    run_dir = folder.path
    torch.set_num_threads(cfg.train.num_threads or choose_num_threads())  # None: from cores and load
    ctx = init_distributed(cfg)
    device = pick_device(cfg.train.device)
    if ctx.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    amp_dtype = autocast_dtype(device, cfg.train.precision)
    if device.type == "cuda" and amp_dtype is None:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 convolutions/products on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.train.seed)  # weight initialisation

    checkpoint_path = run_dir / CHECKPOINT_NAME
    metrics_path = run_dir / METRICS_NAME
    if ctx.is_main:  # refused before any work: locked by another process, or a run to keep
        folder.check(resume, force)
    auto = resume == "auto"
    resuming = bool(resume) and checkpoint_path.exists()
    if resuming:  # a checkpoint that cannot continue this config fails before anything is loaded
        tensors, metadata = read_checkpoint(checkpoint_path)
        saved = checkpoint_config(metadata, checkpoint_path)
        start_step = checkpoint_step(metadata, checkpoint_path)
        changes = resume_changes(saved, cfg, start_step, checkpoint_path)  # none of the run's meaning

    train_set, heldout = build_datasets(cfg)
    model = create_tokenizer(cfg).to(device)
    guide = build_guide(cfg, model, device)
    if guide is not None and cfg.semantic.enabled and cfg.semantic.cache_top_words:
        # once per dataset, on disk; filled (a teacher forward per image) when the run sees them all
        guide.cache_top_words(train_set, progress=progress and ctx.is_main,
                              compute=cfg.train.steps * cfg.train.batch_size >= len(train_set))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    net: torch.nn.Module = model  # what the step calls: DDP and/or compiled wrappers of `model`
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    per_rank = cfg.train.batch_size // ctx.world_size
    local = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)  # this rank's part of the batch
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: bad input above leaves no empty folder
    if ctx.is_main:
        folder.acquire()  # the lock, until train returns; stale temporaries of killed writers removed
        if not resuming and folder.holds_run():
            folder.clear()  # force, or a resume that found no checkpoint: the old run's files go
    history, initial = [], None

    def keep(record: dict) -> None:  # rank 0: into the history, metrics.jsonl and the callback
        history.append(record)
        append_metrics(metrics_path, record)
        if on_record is not None:
            on_record(history)

    if resuming:
        restore_weights(model, tensors, metadata, checkpoint_path)
        try:
            restore_optimizer(optimizer, tensors)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{checkpoint_path}: unusable optimizer state: {e}") from e
        if ctx.is_main:
            history = truncate_metrics(metrics_path, start_step)
            record_resume(run_dir, start_step, changes)
    else:
        start_step = 0
        if resume and not auto and ctx.is_main:
            warnings.warn(f"--resume: no checkpoint in {run_dir}, starting from scratch", stacklevel=2)
        if ctx.is_main:
            metrics_path.unlink(missing_ok=True)
            initial = evaluate(model, heldout, guide=guide)
            keep({"step": 0, "eval": initial})
    if ctx.is_main:  # differs from the run's first config.json only in what resumes.jsonl records
        atomic_write_text(run_dir / "config.json", cfg.to_json())

    deadline = time.monotonic() + 60 * cfg.train.max_minutes if cfg.train.max_minutes else None
    step = start_step
    bar = tqdm(range(start_step, cfg.train.steps), initial=start_step, total=cfg.train.steps,
               desc="train", disable=not progress or not ctx.is_main, dynamic_ncols=True)
    model.train()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        indices = batch_indices(step, cfg.train.batch_size, len(train_set), cfg.train.seed)
        batch = load_batch(train_set, indices[local])
        images = batch["image"].to(device)
        depths = sample_depths(step, cfg.train.batch_size, model.num_layers, cfg)[local].to(device)
        loss, losses, out = training_step(net, model, optimizer, images, depths, cfg, guide, step,
                                          torch.tensor(indices[local]), amp_dtype)
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            names = list(losses)
            values = all_mean([loss.item(), *(v.item() for v in losses.values())], ctx)
            rel_err = all_mean(out.quant.relative_error.tolist(), ctx)
            record = {"step": done, "lr": optimizer.param_groups[0]["lr"], "loss": round(values[0], 5),
                      **{k: round(v, 5) for k, v in zip(names, values[1:], strict=True)},
                      "relative_error": [round(v, 4) for v in rel_err]}
            if ctx.is_main:
                keep(record)
            bar.set_postfix(loss=f"{values[0]:.4f}")
        out_of_time = deadline is not None and time.monotonic() > deadline
        if deadline is not None and ctx.world_size > 1:  # every rank stops at rank 0's step
            flag = torch.tensor([float(out_of_time)])
            dist.broadcast(flag, src=0)
            out_of_time = bool(flag.item())
        out_of_time = out_of_time or done == stop_at
        last = done == cfg.train.steps or out_of_time
        if ctx.is_main and (done % cfg.train.eval_every == 0 or last):
            keep({"step": done, "eval": evaluate(model, heldout, guide=guide)})
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{history[-1]['eval']['psnr'][-1]:.2f}")
        if ctx.is_main and (done % cfg.train.figure_every == 0 or last):
            on_figure(model, heldout, run_dir / "figures" / f"step_{done:06d}.png")
        if ctx.is_main and (done % cfg.train.checkpoint_every == 0 or last):
            save_checkpoint(checkpoint_path, model, optimizer, done, cfg)
        step = done
        if out_of_time:
            break
    bar.close()
    if ctx.world_size > 1:
        dist.barrier()  # rank 0's last checkpoint is on disk before any rank returns
        if ctx.owns_group:
            dist.destroy_process_group()
    final = next((r["eval"] for r in reversed(history) if "eval" in r), None)
    return TrainResult(run_dir, step, final["psnr"] if final else [],
                       initial["psnr"] if initial else None, history, ctx.rank)


# --- a run for notebooks' defaults -----------------------------------------------------------------


def _source_digest() -> str:
    """Digest of the library code a trained run depends on: the core modules at the package's top,
    and the data, teacher and training packages (reading, writing, views and the CLI sit above
    training and cannot change what it produces)."""
    digest = hashlib.sha256()
    root = Path(__file__).parents[1]
    files = [*root.glob("*.py"), *(path for package in ("data", "teacher", "training")
                                   for path in (root / package).rglob("*.py"))]
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def quick_run(preset: str = "tiny", steps: int | None = None, quantizer: str = "saq", seed: int = 0,
              progress: bool = False) -> Path:
    """A run folder to use when a notebook is given no checkpoint: `preset` trained once into
    spae_lab's cache (the tiny preset takes seconds on a CPU) and reused while the config and the
    library code stay the same."""
    overrides = {"model.quantizer": quantizer, "train.seed": seed}
    if steps is not None:
        overrides["train.steps"] = steps
    cfg = create_config(preset, overrides)
    key = hashlib.sha256((cfg.to_json() + _source_digest()).encode()).hexdigest()[:16]
    folder = cache_dir() / "runs" / f"{preset}-{quantizer}-{key}"
    if has_checkpoint(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        train(cfg, scratch, progress=progress)
        try:
            scratch.rename(folder)  # atomic: a reader sees a finished run or none
        except OSError:  # another process finished the same run first
            pass
    finally:
        with contextlib.suppress(OSError):  # renamed into place, or a failed run's leftovers
            remove_owned(scratch, folder.parent)
    return folder
