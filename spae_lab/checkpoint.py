"""Checkpoints: one safetensors file per run, written atomically, the config in its metadata.

`load_tokenizer` reads a shipped tokenizer by name, a checkpoint file or a run folder;
`create_tokenizer` builds a fresh one from a config. Reading never unpickles: safetensors holds
tensors and strings only.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from spae_lab import pretrained
from spae_lab.codebook import load_codebook
from spae_lab.config import ConfigError, ExperimentConfig, config_from_dict
from spae_lab.devices import pick_device
from spae_lab.errors import SpaeError
from spae_lab.io import atomic_write_path, read_safetensors
from spae_lab.model import SPAE
from spae_lab.paths import find_path

CHECKPOINT_NAME = "checkpoint.safetensors"
_FORMAT = "spae_lab.checkpoint.v1"


class CheckpointError(SpaeError, RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or made for another model/codebook."""


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
    """(tensors, metadata) of a checkpoint file or run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    return read_safetensors(path, _FORMAT, CheckpointError)


def checkpoint_config(metadata: dict[str, str], source) -> ExperimentConfig:
    """The config a checkpoint was trained with (its metadata, as JSON)."""
    try:
        data = json.loads(metadata["config"])
        if isinstance(data, dict) and "clip" in data:  # a clip tokenizer (spae_lab.video)
            from spae_lab.video.config import clip_config_from_dict

            return clip_config_from_dict(data)
        return config_from_dict(data)
    except (KeyError, json.JSONDecodeError, ConfigError) as e:
        reason = "no config" if isinstance(e, KeyError) else e
        raise CheckpointError(f"{source}: unusable config in its metadata: {reason}") from e


def checkpoint_step(metadata: dict[str, str], source) -> int:
    try:
        return int(metadata["step"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{source}: no valid step in its metadata") from None


def restore_weights(model: SPAE, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source) -> None:
    if metadata.get("codebook_fingerprint") != model.codebook.fingerprint():
        raise CheckpointError(
            f"{source} was trained with another codebook than {model.codebook.source!r} "
            f"(fingerprint {metadata.get('codebook_fingerprint')} != {model.codebook.fingerprint()})"
        )
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_weights(weights, model.state_dict(), source)
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


def check_weights(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source) -> None:
    """CheckpointError for weights that would load silently into garbage: an integer or boolean
    tensor where the model holds floating-point values (load_state_dict casts it), or a NaN or
    infinite value (every decode would be NaN, every encode the same word)."""
    for name, value in weights.items():
        target = expected.get(name)
        if target is None or not target.is_floating_point():
            continue  # unknown names are reported by restore_weights; integer buffers stay as they are
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: {name} holds {str(value.dtype).removeprefix('torch.')} "
                                  f"values where the model has floating-point weights; not a trained tokenizer")
        if value.numel() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: {name} holds NaN or infinite values; the run that wrote it "
                                  "diverged or the file is damaged")


def weights_fingerprint(model: SPAE) -> str:
    """16 hex digits identifying a tokenizer's trained weights (caches keyed by a tokenizer)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.trainable_state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def create_tokenizer(cfg: ExperimentConfig) -> SPAE:
    """A freshly initialised tokenizer for `cfg`, its codebook loaded (from the cache when built
    before). `model.experiment_config` keeps the full config: its dataset, seed and teacher. A clip
    config (`spae_lab.video.config`) gives a clip tokenizer."""
    if hasattr(cfg, "clip"):
        from spae_lab.video.model import create_clip_tokenizer

        return create_clip_tokenizer(cfg)
    model = SPAE(cfg.model, load_codebook(cfg.codebook))
    model.experiment_config = cfg
    if cfg.model.top_word == "teacher":  # layer 1's word comes from the teacher (V2L's global token)
        from spae_lab.semantic import SemanticGuide  # the teacher only for tokenizers that use it

        model.top_word_guide = SemanticGuide.from_config(cfg.semantic, model.codebook)
    return model


def load_tokenizer(path_or_name: str | os.PathLike, device: str | torch.device = "cpu") -> SPAE:
    """A trained SPAE tokenizer (eval mode) from a shipped name (`spae_lab.pretrained.available()`:
    "scenes", "cifar10", ...), a checkpoint file or a run folder.

    A shipped name written bare ("cifar10") is the shipped tokenizer, even beside a folder of that
    name (a warning says so); a path written as one ("./cifar10", "runs/x", a Path) is the path.
    A bare name that is neither is looked up as a run folder under runs/. Relative paths that do
    not exist from the current folder are looked up from the project root too
    (`spae_lab.paths.find_path`): a notebook kernel running in `notebooks/` finds `runs/demo`.
    """
    path = Path(path_or_name)
    if pretrained.is_shipped_name(path_or_name) or (not path.exists() and str(path_or_name) in pretrained.available()):
        if path.exists():
            warnings.warn(f"{path_or_name!r} is read as the shipped tokenizer; write ./{path_or_name} "
                          f"for the run folder of that name", stacklevel=2)
        path = pretrained.weights_path(str(path_or_name))
    elif not path.exists() and not path.is_absolute():
        path = next((p for p in (find_path(path), find_path(Path("runs") / path)) if p.exists()), path)
    tensors, metadata = read_checkpoint(path)
    cfg = checkpoint_config(metadata, path)
    model = create_tokenizer(cfg)
    restore_weights(model, tensors, metadata, path)
    return model.to(pick_device(str(device))).eval()
