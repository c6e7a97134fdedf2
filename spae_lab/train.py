"""Training loop, checkpoints and `load_tokenizer`.

Reproducibility by construction: the batch of step s and the random decode depths of step s are
functions of (seed, s) alone, so a run resumed from a checkpoint (weights + AdamW state + step)
continues exactly as if it had never stopped. Checkpoints are one safetensors file, written
atomically; the config travels in its metadata as JSON.

Distributed data parallel: under `torchrun` (WORLD_SIZE > 1) every rank takes its contiguous slice
of the step's global batch (`train.batch_size` images, the same indices and depths as one process),
DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPUs), and rank 0 alone
evaluates and writes checkpoints, metrics and figures. The same config, the same checkpoints:
a run can be resumed with any number of processes.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from spae_lab import pretrained
from spae_lab.codebook import load_codebook
from spae_lab.config import ConfigError, ExperimentConfig, config_from_dict
from spae_lab.data import collate, make_dataset
from spae_lab.io import atomic_write_path
from spae_lab.losses import reconstruction_losses
from spae_lab.metrics import psnr
from spae_lab.model import SPAE
from spae_lab.pyramid import codebook_usage
from spae_lab.semantic import (
    SemanticGuide,
    caption_word_hits,
    chosen_word_relevance,
    class_word_hits,
    semantic_loss_from_scores,
)
from spae_lab.teacher import TeacherError

CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
_FORMAT = "spae_lab.checkpoint.v1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or made for another model/codebook."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    heldout_psnr: list[float]  # per depth, dB, at the end of the run
    initial_psnr: list[float] | None = None  # per depth before training (None when resumed)
    history: list[dict] = field(default_factory=list)
    rank: int = 0  # process rank under torchrun (only rank 0 holds evaluations and writes files)


# --- devices --------------------------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    """"auto" (CUDA if available, else CPU) or a torch device name; ConfigError for a name torch
    does not know or a CUDA device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s) (use auto or cpu)")
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp32 on CPU (CPUs without AMX run bf16 ~10x slower)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@dataclass
class DistributedContext:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call initialised the process group, so it tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: ExperimentConfig) -> DistributedContext:
    """Join the torchrun job described by the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR/PORT); a plain process gets rank 0 of 1. Backend: NCCL on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.train.batch_size % world_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} (the global batch) must be "
                          f"divisible by the {world_size} processes")
    owns = False
    if not dist.is_initialized():
        backend = cfg.train.distributed_backend
        if backend == "auto":
            backend = "nccl" if pick_device(cfg.train.device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
        owns = True
    return DistributedContext(rank, world_size, local_rank, owns)


def _all_mean(values: list[float], ctx: DistributedContext) -> list[float]:
    """Mean of per-rank values over ranks (each rank's loss is the mean over its equal slice, so
    this is the loss of the global batch)."""
    if ctx.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / ctx.world_size).tolist()


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
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# --- evaluation -----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: SPAE, dataset: Dataset, batch_size: int = 64,
             guide: SemanticGuide | None = None) -> dict:
    """Held-out PSNR per depth (dB), codebook usage and relative quantization error per layer;
    with a teacher, the relevance of the chosen words per layer (score, rank among all words);
    on synthetic scenes, the fraction of images whose first d layers hold their colour or shape
    word, per depth d."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    L = model.num_layers
    psnr_sum = torch.zeros(L)
    rel_err = torch.zeros(L)
    relevance_sum = torch.zeros(L, 2)
    random_word_relevance = 0.0  # mean score of all words: the level of a word picked at random
    hits = torch.zeros(L)
    ids_per_layer: list[list[torch.Tensor]] = [[] for _ in range(L)]
    names = class_names_of(dataset)  # labelled data: the class-word hit rate per depth
    count = batches = 0
    for start in range(0, len(dataset), batch_size):
        batch = load_batch(dataset, list(range(start, min(start + batch_size, len(dataset)))))
        images = batch["image"].to(device)
        _, quant = model.quantize(images)
        if guide is not None:
            relevance = guide.relevance(images)
            per_layer = chosen_word_relevance(relevance, quant.ids)
            random_word_relevance += float(relevance.mean(dim=1).sum())
            relevance_sum += torch.tensor([[r["score"], r["rank"]] for r in per_layer]) * images.shape[0]
        if "color" in batch or (names and "label" in batch):
            for depth in range(1, L + 1):
                per_image = [[model.codebook.words[i] for layer in range(depth)
                              for i in quant.ids[layer][b].tolist()] for b in range(len(images))]
                if "color" in batch:
                    rate = caption_word_hits(per_image, batch["color"], batch["shape"])
                else:
                    rate = class_word_hits(per_image, [names[k] for k in batch["label"].tolist()])
                hits[depth - 1] += rate * len(images)
        for depth in range(1, model.num_layers + 1):
            latents = quant.latents[depth - 1]
            recon = ((model.decode_latents(latents) + 1) / 2).clamp(0, 1)
            psnr_sum[depth - 1] += psnr(recon, images).sum().cpu()
        for layer, ids in enumerate(quant.ids):
            ids_per_layer[layer].append(ids.cpu())
        rel_err += quant.relative_error.cpu()
        count += images.shape[0]
        batches += 1
    model.train(was_training)
    usage = [codebook_usage(torch.cat(ids), len(model.codebook)) for ids in ids_per_layer]
    result = {
        "psnr": [round(float(v), 3) for v in psnr_sum / count],
        "relative_error": [round(float(v), 4) for v in rel_err / batches],
        "distinct_words": [u["distinct"] for u in usage],
        "perplexity": [round(u["perplexity"], 1) for u in usage],
    }
    if guide is not None:
        result["relevance"] = [round(float(v), 4) for v in relevance_sum[:, 0] / count]
        result["relevance_rank"] = [round(float(v), 1) for v in relevance_sum[:, 1] / count]
        result["relevance_random"] = round(random_word_relevance / count, 4)
    if "color" in batch:
        result["caption_hit"] = [round(float(v), 4) for v in hits / count]
    elif names and "label" in batch:
        result["class_hit"] = [round(float(v), 4) for v in hits / count]
    return result


def class_names_of(dataset: Dataset) -> list[str] | None:
    """The class names of a labelled dataset (through Subset wrappers), or None."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    names = getattr(dataset, "classes", None)
    return list(names) if names else None


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


# --- checkpoints ----------------------------------------------------------------------------------


def save_checkpoint(path: Path, model: SPAE, optimizer: torch.optim.Optimizer | None, step: int,
                    cfg: ExperimentConfig, dtype: torch.dtype | None = None) -> None:
    """Weights (+ AdamW state) as one safetensors file, written atomically. `dtype` (e.g. float16
    for shipped tokenizers: half the size) stores the floating-point weights in that type; loading
    casts them back to the model's float32."""
    tensors = {f"model.{k}": (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
               .detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    if optimizer is not None:
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    metadata = {
        "format": _FORMAT,
        "config": cfg.to_json(),
        "step": str(step),
        "codebook_fingerprint": model.codebook.fingerprint(),
    }
    with atomic_write_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a checkpoint file or run folder: safetensors, so reading it runs no
    code (no unpickling)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {e}") from e
    if metadata.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a spae_lab checkpoint (format {metadata.get('format')!r})")
    return tensors, metadata


def checkpoint_config(metadata: dict[str, str], source) -> ExperimentConfig:
    """The config a checkpoint was trained with (its metadata, as JSON)."""
    try:
        return config_from_dict(json.loads(metadata["config"]))
    except (KeyError, json.JSONDecodeError, ConfigError) as e:
        reason = "no config" if isinstance(e, KeyError) else e
        raise CheckpointError(f"{source}: unusable config in its metadata: {reason}") from e


def checkpoint_step(metadata: dict[str, str], source) -> int:
    try:
        return int(metadata["step"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{source}: no valid step in its metadata") from None


def _restore(model: SPAE, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source) -> None:
    if metadata.get("codebook_fingerprint") != model.codebook.fingerprint():
        raise CheckpointError(
            f"{source} was trained with another codebook than {model.codebook.source!r} "
            f"(fingerprint {metadata.get('codebook_fingerprint')} != {model.codebook.fingerprint()})"
        )
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # tensors of other shapes: another preset's weights
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), e)
        raise CheckpointError(f"{source} does not fit this model: {first}") from None
    missing = [k for k in missing if k != "quantizer.codebook"]
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def load_tokenizer(path_or_name: str | os.PathLike, device: str | torch.device = "cpu") -> SPAE:
    """A trained SPAE tokenizer (eval mode) from a shipped name (`spae_lab.pretrained.available()`:
    "scenes", "cifar10", ...), a checkpoint file or a run folder.

    A path that exists wins over a shipped name; a bare name that is neither is looked up as a run
    folder under ./runs/.
    """
    path = Path(path_or_name)
    if not path.exists() and str(path_or_name) in pretrained.available():
        path = pretrained.weights_path(str(path_or_name))
    elif not path.exists() and not path.is_absolute() and (Path("runs") / path).exists():
        path = Path("runs") / path
    tensors, metadata = read_checkpoint(path)
    cfg = checkpoint_config(metadata, path)
    model = SPAE(cfg.model, load_codebook(cfg.codebook))
    _restore(model, tensors, metadata, path)
    model.experiment_config = cfg  # the run's full config: its dataset, seed, teacher
    return model.to(pick_device(str(device))).eval()


# --- the loop -------------------------------------------------------------------------------------


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> list[dict]:
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


def train(cfg: ExperimentConfig, run_dir: str | os.PathLike, resume: bool = False,
          progress: bool = True, stop_at: int | None = None) -> TrainResult:
    """Train an SPAE tokenizer; writes checkpoint, metrics.jsonl, config.json and figures.

    `resume` continues from the run folder's checkpoint. `stop_at` ends the run after that step
    with a checkpoint, as an interruption would (the schedule still targets `train.steps`).
    """
    from spae_lab.viz import save_reconstruction_figure  # matplotlib only when training

    run_dir = Path(run_dir)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
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
    resuming = resume and checkpoint_path.exists()
    if resuming:  # a checkpoint that cannot continue this config fails before anything is loaded
        tensors, metadata = read_checkpoint(checkpoint_path)
        saved = checkpoint_config(metadata, checkpoint_path)
        if (saved.model, saved.codebook) != (cfg.model, cfg.codebook):
            raise CheckpointError(f"{checkpoint_path} was trained with another model or codebook "
                                  f"config (preset {saved.preset!r})")
        start_step = checkpoint_step(metadata, checkpoint_path)

    train_set, heldout = build_datasets(cfg)
    model = SPAE(cfg.model, load_codebook(cfg.codebook)).to(device)
    guide = build_guide(cfg, model, device)
    guided_layers = len(cfg.semantic.top_k)
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
    history, initial = [], None
    if resuming:
        _restore(model, tensors, metadata, checkpoint_path)
        try:
            _restore_optimizer(optimizer, tensors)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{checkpoint_path}: unusable optimizer state: {e}") from e
        if ctx.is_main:
            history = _truncate_metrics(metrics_path, start_step)
    else:
        start_step = 0
        if resume and ctx.is_main:
            warnings.warn(f"--resume: no checkpoint in {run_dir}, starting from scratch", stacklevel=2)
        if ctx.is_main:
            metrics_path.unlink(missing_ok=True)
            initial = evaluate(model, heldout, guide=guide)
            history.append({"step": 0, "eval": initial})
            _append_metrics(metrics_path, history[-1])
    if ctx.is_main:
        (run_dir / "config.json").write_text(cfg.to_json())

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
        score_layers = guided_layers if cfg.semantic.enabled else 0
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = net(images, depths, score_layers=score_layers)
            losses = reconstruction_losses(out.reconstructions.float(), images * 2 - 1, cfg.loss)
            losses["commitment"] = cfg.loss.commitment_weight * out.quant.commitment_loss
            if model.quantizer.projection is not None:
                losses["codebook"] = cfg.loss.codebook_weight * out.quant.codebook_loss
            if cfg.semantic.enabled:
                top_ids = guide.top_words(images)
                # distances computed once: the quantizer's search scores feed the softmax
                losses["semantic"] = guide.weight(step, cfg.train.steps) * semantic_loss_from_scores(
                    out.quant.scores, top_ids, cfg.semantic.top_k, cfg.semantic.temperature,
                    model.quantizer.dim, cfg.semantic.layer_weights, cfg.semantic.loss_form)
            loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            names = list(losses)
            values = _all_mean([loss.item(), *(v.item() for v in losses.values())], ctx)
            rel_err = _all_mean(out.quant.relative_error.tolist(), ctx)
            record = {"step": done, "lr": optimizer.param_groups[0]["lr"], "loss": round(values[0], 5),
                      **{k: round(v, 5) for k, v in zip(names, values[1:], strict=True)},
                      "relative_error": [round(v, 4) for v in rel_err]}
            if ctx.is_main:
                history.append(record)
                _append_metrics(metrics_path, record)
            bar.set_postfix(loss=f"{values[0]:.4f}")
        out_of_time = deadline is not None and time.monotonic() > deadline
        if deadline is not None and ctx.world_size > 1:  # every rank stops at rank 0's step
            flag = torch.tensor([float(out_of_time)])
            dist.broadcast(flag, src=0)
            out_of_time = bool(flag.item())
        out_of_time = out_of_time or done == stop_at
        last = done == cfg.train.steps or out_of_time
        if ctx.is_main and (done % cfg.train.eval_every == 0 or last):
            history.append({"step": done, "eval": evaluate(model, heldout, guide=guide)})
            _append_metrics(metrics_path, history[-1])
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{history[-1]['eval']['psnr'][-1]:.2f}")
        if ctx.is_main and (done % cfg.train.figure_every == 0 or last):
            save_reconstruction_figure(model, heldout, run_dir / "figures" / f"step_{done:06d}.png")
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
