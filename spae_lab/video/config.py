"""Configuration of clip tokenizers: the image sections plus one `clip` section, and presets.

A clip run is an `ExperimentConfig` whose `model` section describes one frame's 2D network and the
spatial side of the pyramid (`model.layer_sizes`), `data.num_images` / `data.heldout_images` count
clips, and `clip` adds time: frames per clip, the temporal downsampling, the tokens over time of
each layer, the temporal blocks, and how the teacher reads a word for each guided layer. The
config keeps the image machinery's checks (`spae_lab.config.validate`) and adds its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spae_lab.config import ConfigError, ExperimentConfig, _suggest, apply_overrides, validate

CLIP_DATASETS = ("moving-scenes", "moving-digits")


@dataclass
class ClipConfig:
    frames: int = 8  # frames per clip
    time_downsample: int = 1  # latent frames = frames / time_downsample (1, 2, 4 or 8)
    # tokens over time of each pyramid layer (one per entry of model.layer_sizes): 1 = the whole clip
    layer_frames: tuple[int, ...] = (1, 1, 2, 4, 8, 8, 8)
    temporal_blocks: int = 1  # residual temporal convolutions (kernel 3 over time) per side
    # per guided layer, how the teacher reads a codebook word: layer 1 as a thing ("{}"), layer 2
    # as a motion ("moving {}"); one entry per entry of semantic.top_k
    word_templates: tuple[str, ...] = ("{}", "moving {}")
    # an image tokenizer (shipped name, run folder or checkpoint) whose 2D halves, codebook
    # projections and semantic head start a new run's ("": a random start); resumed runs keep theirs
    init_from: str = ""

    @property
    def latent_frames(self) -> int:
        return self.frames // self.time_downsample


@dataclass
class ClipExperimentConfig(ExperimentConfig):
    clip: ClipConfig = field(default_factory=ClipConfig)


_BASE: dict[str, Any] = {
    "data.dataset": "moving-scenes",
    "model.semantic_head_layers": 2,  # layers 1-2 pick from the semantic head: a thing, a motion
    "semantic.top_k": (3, 1),
    "semantic.teacher": "lit-clip:builtin",  # the clip teacher: "lit-clip:builtin" or "lit-clip:PATH"
    "data.heldout_images": 256,
}
_PRESETS: dict[str, dict[str, Any]] = {
    # seconds on a CPU: tests
    "video-tiny": {**_BASE, "codebook.max_size": 1024, "model.image_size": 16, "model.base_channels": 16,
                   "model.channel_mults": (1, 2), "model.latent_channels": 32,
                   "model.layer_sizes": (1, 1, 2, 4, 8), "clip.frames": 4, "clip.time_downsample": 2,
                   "clip.layer_frames": (1, 1, 1, 2, 2),
                   "data.num_images": 256, "data.heldout_images": 16, "train.steps": 20,
                   "train.batch_size": 4, "train.warmup_steps": 5, "train.log_every": 5,
                   "train.eval_every": 10, "train.figure_every": 10, "train.checkpoint_every": 10},
    # CPU: 32 px, 8 frames, an 8 x 8 x 8 latent grid; layers 1-2 one word each for the clip (what it
    # shows, how it moves), 3-4 over halves and quarters of it, then 2x2, 4x4, 8x8 words a frame:
    # 1, 2, 4, 8, 40, 168, 680 words, the image pyramid's count (85 a frame) at full depth. The 2D
    # halves start from the shipped image tokenizer `scenes`, at a learning rate low enough to keep
    # that start (docs/video.md)
    "video-small": {**_BASE, "model.layer_sizes": (1, 1, 1, 1, 2, 4, 8), "data.num_images": 20000,
                    "clip.init_from": "scenes", "train.lr": 1e-4, "train.steps": 1500, "train.batch_size": 8},
}


def list_clip_presets() -> list[str]:
    return list(_PRESETS)


def create_clip_config(preset: str = "video-small", overrides: dict[str, Any] | None = None
                       ) -> ClipExperimentConfig:
    """The named clip preset with `overrides` (dotted keys or nested dicts) applied and checked."""
    if preset not in _PRESETS:
        raise ConfigError(f"unknown clip preset {preset!r}{_suggest(preset, _PRESETS)}; presets: {list_clip_presets()}")
    cfg = ClipExperimentConfig(preset=preset)
    apply_overrides(cfg, _PRESETS[preset])
    apply_overrides(cfg, overrides or {})
    validate_clip(cfg)
    return cfg


def clip_config_from_dict(data: dict[str, Any]) -> ClipExperimentConfig:
    """Rebuild a clip config saved with `to_dict` (checkpoints). Unknown keys are an error."""
    if not isinstance(data, dict) or not isinstance(data.get("clip"), dict):
        raise ConfigError("a clip config is a mapping of sections with a 'clip' section")
    cfg = ClipExperimentConfig(preset=str(data.get("preset", "video-small")))
    apply_overrides(cfg, {k: v for k, v in data.items() if k != "preset"})
    validate_clip(cfg)
    return cfg


def is_clip_config(data: dict[str, Any]) -> bool:
    """Whether a saved config (a dict) describes a clip tokenizer."""
    return isinstance(data, dict) and "clip" in data


def validate_clip(cfg: ClipExperimentConfig) -> None:
    """The image checks (`spae_lab.config.validate`), then the clip section's."""
    validate(cfg)
    c, m = cfg.clip, cfg.model
    if not 2 <= c.frames <= 64 or c.frames & (c.frames - 1):
        raise ConfigError(f"clip.frames must be a power of two in 2..64, got {c.frames}")
    if c.time_downsample not in (1, 2, 4, 8) or c.frames % c.time_downsample:
        raise ConfigError(f"clip.time_downsample must be 1, 2, 4 or 8 and divide clip.frames {c.frames}, "
                          f"got {c.time_downsample}")
    if len(c.layer_frames) != len(m.layer_sizes):
        raise ConfigError(f"clip.layer_frames {c.layer_frames}: one entry per entry of model.layer_sizes "
                          f"{m.layer_sizes}")
    for t in c.layer_frames:
        if t < 1 or c.latent_frames % t or t & (t - 1):
            raise ConfigError(f"clip.layer_frames {c.layer_frames}: each must be a power of two dividing the "
                              f"{c.latent_frames} latent frames")
    if list(c.layer_frames) != sorted(c.layer_frames):
        raise ConfigError(f"clip.layer_frames must go coarse to fine, got {c.layer_frames}")
    if not 0 <= c.temporal_blocks <= 8:
        raise ConfigError(f"clip.temporal_blocks must be in 0..8, got {c.temporal_blocks}")
    if cfg.semantic.enabled and len(c.word_templates) < len(cfg.semantic.top_k):
        raise ConfigError(f"clip.word_templates {c.word_templates}: one per guided layer (semantic.top_k "
                          f"{cfg.semantic.top_k})")
    if any("{}" not in t for t in c.word_templates):
        raise ConfigError(f"clip.word_templates need '{{}}' where the word goes, got {c.word_templates}")
    if cfg.data.dataset not in CLIP_DATASETS and not str(cfg.data.dataset).strip():
        raise ConfigError(f"data.dataset: {', '.join(CLIP_DATASETS)} or a folder of clips")


__all__ = ["CLIP_DATASETS", "ClipConfig", "ClipExperimentConfig", "clip_config_from_dict", "create_clip_config",
           "is_clip_config", "list_clip_presets", "validate_clip"]
