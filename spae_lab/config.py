"""Typed configuration and named presets.

One dataclass per component; `ExperimentConfig` bundles them. Presets are plain functions of the
form `create_config(preset, **overrides)`; overrides use dotted keys (``"train.steps": 100``) or
nested dicts. Unknown keys are an error with a suggestion, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from spae_lab.errors import SpaeError


class ConfigError(SpaeError, ValueError):
    """A configuration that cannot be used: unknown key, wrong type, inconsistent values."""


@dataclass
class CodebookConfig:
    source: str = "smollm2"  # "smollm2" (packaged, offline), a Hugging Face id/folder, or "random:V:D"
    max_size: int | None = 8192  # keep the first N lexical ids (BPE merge order ~ frequency); None = all
    min_chars: int = 2  # shortest word kept (letters, without the leading space)
    ascii_only: bool = True  # restrict to A-Za-z words (readable in any prompt)
    word_list: str | None = "minilm"  # keep real English words: "minilm" (offline list), a file, None
    # drop capitalised forms ('Yellow' beside 'yellow'): a reader gains nothing from them, and with
    # them gone the first 8,192 words reach 'airplane', 'automobile' and 'frog' (BPE ranks ~10,600)
    lowercase_only: bool = True


@dataclass
class ModelConfig:
    image_size: int = 32  # px, square; 128 in the paper
    base_channels: int = 32  # width of the first encoder stage
    channel_mults: tuple[int, ...] = (1, 2, 4)  # one stage per entry; len-1 downsamplings by 2
    num_res_blocks: int = 1  # residual blocks per stage
    latent_channels: int = 128  # encoder output width before the projection into codebook space
    layer_sizes: tuple[int, ...] = (1, 2, 4, 8, 8)  # tokens per side of each pyramid layer
    quantizer: str = "saq"  # "saq" (SPAE streaming average) or "rq" (residual quantization)
    # what a coarse token stands for: "cover" (its whole region; each layer refines every cell it
    # covers) or "cell" (only its centred cell: checkpoints from before covering, loaded as such)
    coarse_tokens: str = "cover"
    project_to_codebook: bool = True  # trainable 1x1 projection latent -> codebook space (V2L-style)
    standardize_codebook: bool = True  # centre and rescale the frozen codebook (keeps ids, eases fitting)
    # trainable map of the frozen rows to a search space; None: raw. 16-d quantizes finer than
    # 64-d (scenes, 500 CPU steps: 23.8 against 22.7 dB at full depth; same caption word rate)
    codebook_projection_dim: int | None = 16
    semantic_head_layers: int = 2  # first layers picking words from their own projection; derived
    # by create_config unless given: min(2, guided layers), 0 when guidance is off
    # share of the reconstruction gradient of depths 1..semantic_head_layers that reaches the head
    # (the rest of its training is the semantic loss). 400 CPU steps: sent to z instead, as before,
    # layer 2 was no better than layer 1 (10.4 / 10.4 dB); 1.0 gave 12.7 / 13.3 dB but the caption
    # word in 66% of scenes; 0.1 gave 11.3 / 12.2 dB, 98%, and a better full depth
    head_gradient_scale: float = 0.1
    # the head: a 2-layer per-cell MLP (True) or one linear 1x1 map (False, checkpoints from before)
    semantic_head_mlp: bool = True
    # who picks layer 1's word when encoding: "head" (the semantic head, as trained) or "teacher"
    # (the teacher's most relevant word, V2L-Tokenizer's global token; the other layers are picked
    # as usual and correct for it through the running mean). The shipped cifar10 tokenizer: its head
    # agreed with the teacher's top word on 30% of validation images; the teacher's word named the
    # class in 63% (with semantic.word_template "a photo of a {}") for -0.1 dB at depth 1
    top_word: str = "head"
    normalize: bool = True  # unit-RMS latents and words in search space: cosine search, no drift

    @property
    def latent_grid(self) -> int:
        """Side of the latent grid: image_size / 2**(number of downsamplings)."""
        return self.image_size // 2 ** (len(self.channel_mults) - 1)


@dataclass
class LossConfig:
    l2_weight: float = 1.0  # pixel MSE
    l1_weight: float = 0.0  # pixel L1
    gradient_weight: float = 0.1  # L1 between image gradients: sharper edges, needs no download
    commitment_weight: float = 0.01  # pulls latents to their words; 0.05+ collapsed to one word in trials
    codebook_weight: float = 1.0  # pulls the projected words towards the latents (projection only)
    depth_sampling: str = "mixed"  # "mixed": each image decodes from a random depth; "full": deepest only
    full_depth_fraction: float = 0.5  # with "mixed": share of images decoded from every layer


@dataclass
class SemanticConfig:
    enabled: bool = True  # SPAE semantic guidance of the upper layers by a CLIP-like teacher
    teacher: str = "lit:builtin"  # "lit:builtin" (shipped, offline), "lit:PATH", "clip:ID_OR_FOLDER"
    # K per guided layer from the top; its length = layers guided. The first
    # model.semantic_head_layers guided layers pick from the semantic head, the rest pull the
    # shared latents (the cell pyramid guided layers 1-3 that way). Cut to the number of layers
    # when a pyramid has fewer.
    # Covering pyramid: only layer 1 (the head's one word) is guided; guiding layers 2-3 through
    # the shared latents (K = 10, 50) collapsed them to 3-5 words and 12 dB at every depth.
    top_k: tuple[int, ...] = (3,)
    # per guided layer, a multiplier of its loss (None: all 1); lets deep layers be guided weakly
    layer_weights: tuple[float, ...] | None = None
    temperature: float = 0.1  # softmax over -||t - e||^2 / (temperature * dim)
    # "any": -log P(chosen word in the top K) (any of them may win); "each": the mean over the top
    # K of -log P(word), a cross-entropy with the K words as a uniform target (the paper's form)
    loss_form: str = "any"
    weight: float = 0.1  # peak weight (0.03, or a table detached from it, guided less, not cheaper)
    warmup_steps: int = 100  # the weight ramps up from 0 over these steps
    final_weight_ratio: float = 1.0  # then follows a cosine to weight * ratio at the end
    # read each training image's top-K words from a table computed once per dataset (teacher,
    # codebook, data, size, K; kept in the cache dir) instead of running the teacher every step:
    # the same words (frozen teacher, no augmentation). Filled when a run sees every image at least
    # once (steps x batch >= training images); a shorter run reads a table already on disk
    cache_top_words: bool = True
    # how the teacher reads a codebook word: "{}" (the bare word) or a caption such as
    # "a photo of a {}" (CIFAR-10 validation: the teacher's top word named the class in 57% bare,
    # 63% with "a photo of a {}", which it was trained on)
    word_template: str = "{}"


@dataclass
class DataConfig:
    dataset: str = "scenes"  # built-in name (scenes, digits, mnist) or an ImageFolder folder / .tar(.gz)
    num_images: int = 20000  # synthetic scenes: size of the training set
    heldout_images: int = 256  # held-out images for evaluation (never trained on)
    max_per_class: int | None = None  # cap for folder datasets


@dataclass
class TrainConfig:
    steps: int = 800  # 8 to 17 minutes on 2 CPU cores at 32 px (0.6 to 1.3 s a step measured)
    batch_size: int = 32
    lr: float = 1e-3  # AdamW peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 25
    eval_every: int = 250  # held-out PSNR per depth
    figure_every: int = 500  # reconstruction figure
    checkpoint_every: int = 250
    max_minutes: float | None = None  # optional wall-clock budget; stops early and checkpoints
    device: str = "auto"  # "auto": CUDA if available else CPU
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; or "fp32", "bf16"
    # torch threads on CPU; None: the cores this process may use less those other processes keep busy
    # (1-minute load average), at least 1 (devices.choose_num_threads). Exact resumes need 1
    num_threads: int | None = None
    compile: bool = False  # torch.compile the training step's model (for CUDA; costs a warm-up)
    distributed_backend: str = "auto"  # under torchrun: "auto" = nccl on CUDA, gloo on CPU; or either


@dataclass
class ExperimentConfig:
    preset: str = "small"
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Overrides on top of the dataclass defaults (which are the "small" CPU preset).
_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: for tests and smoke runs.
    "tiny": {
        "codebook.source": "smollm2",
        "codebook.max_size": 1024,
        "model.image_size": 16,
        "model.base_channels": 16,
        "model.channel_mults": (1, 2),
        "model.latent_channels": 32,
        "model.layer_sizes": (1, 2, 4, 8, 8),
        "data.num_images": 512,
        "data.heldout_images": 32,
        "train.steps": 40,
        "train.batch_size": 16,
        "train.warmup_steps": 5,
        "train.log_every": 5,
        "train.eval_every": 20,
        "train.figure_every": 20,
        "train.checkpoint_every": 20,
    },
    # Minutes on 2 CPU cores, 32 px, 8x8 grid, 5 layers (1, 5, 21, 85, 149 tokens).
    "small": {},
    # The paper's scale, for GPUs: 128 px, 16x16 grid, 6 layers (1, 5, 21, 85, 341, 597 tokens).
    "paper": {
        "codebook.max_size": None,
        "model.image_size": 128,
        "model.base_channels": 128,
        "model.channel_mults": (1, 2, 2, 4),
        "model.num_res_blocks": 2,
        "model.latent_channels": 256,
        "model.layer_sizes": (1, 2, 4, 8, 16, 16),
        "data.dataset": "scenes",
        "data.num_images": 200000,
        "train.steps": 100000,
        "train.batch_size": 128,
        "train.lr": 4e-4,
        "train.warmup_steps": 2000,
        "train.eval_every": 2000,
        "train.figure_every": 2000,
        "train.checkpoint_every": 2000,
    },
}


def list_presets() -> list[str]:
    return list(_PRESETS)


# Guided layers that get the semantic head unless model.semantic_head_layers is given.
MAX_DERIVED_HEAD_LAYERS = 2
# In the covering pyramid only layer 1 (one word for the whole image) comes from the head; layer 2's
# four words are picked from the shared latents of their quadrants, so they carry appearance.
MAX_DERIVED_HEAD_LAYERS_COVER = 1


def create_config(preset: str = "small", overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """The named preset with `overrides` (dotted keys or nested dicts) applied and validated."""
    if preset not in _PRESETS:
        raise ConfigError(f"unknown preset {preset!r}{_suggest(preset, _PRESETS)}; presets: {list_presets()}")
    cfg = ExperimentConfig(preset=preset)
    apply_overrides(cfg, _PRESETS[preset])
    apply_overrides(cfg, overrides or {})
    given = _flatten(overrides or {})
    if "semantic.top_k" not in given and "semantic.layer_weights" not in given:
        cfg.semantic.top_k = cfg.semantic.top_k[: len(cfg.model.layer_sizes)]  # default K, short pyramid
    if "model.semantic_head_layers" not in given:
        # derived unless given: the top guided layers (at most 2: the 5 words an LLM reads) get the
        # head, deeper guided layers pull the shared latents, and without guidance none has a head
        guided = len(cfg.semantic.top_k) if cfg.semantic.enabled else 0
        most = MAX_DERIVED_HEAD_LAYERS if cfg.model.coarse_tokens == "cell" else MAX_DERIVED_HEAD_LAYERS_COVER
        cfg.model.semantic_head_layers = min(most, guided)
    validate(cfg)
    return cfg


# Model fields added after checkpoints were first saved, with the value that reproduces those
# checkpoints' architecture (a saved config without the key is read with this value).
_LEGACY_FIELDS = {"model": {"coarse_tokens": "cell", "semantic_head_mlp": False},
                  "codebook": {"lowercase_only": False}}


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config saved with `to_dict` (checkpoints, reports). Unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = ExperimentConfig(preset=str(data.get("preset", "small")))
    for section, legacy in _LEGACY_FIELDS.items():  # saved before a field existed: that design
        if isinstance(data.get(section), dict):
            data = {**data, section: {**legacy, **data[section]}}
    apply_overrides(cfg, {k: v for k, v in data.items() if k != "preset"})
    validate(cfg)
    return cfg


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> None:
    """Set fields in place from {"section.field": value} or {"section": {"field": value}}."""
    for key, value in _flatten(overrides).items():
        section_name, _, field_name = key.partition(".")
        sections = {f.name: f for f in dataclasses.fields(cfg) if f.name != "preset"}
        if section_name not in sections or not field_name:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, _all_keys(cfg))}")
        section = getattr(cfg, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        if field_name not in fields:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, _all_keys(cfg))}")
        hint = typing.get_type_hints(type(section))[field_name]
        setattr(section, field_name, _coerce(key, value, hint))


# Counts and sizes that must be >= 1 (None, where allowed, means "no limit" / "the default").
_POSITIVE = ("model.image_size", "model.base_channels", "model.num_res_blocks",
             "model.latent_channels", "model.codebook_projection_dim", "codebook.max_size",
             "data.num_images", "data.heldout_images", "data.max_per_class", "train.steps",
             "train.batch_size", "train.log_every", "train.eval_every", "train.figure_every",
             "train.checkpoint_every", "train.num_threads")
_NON_NEGATIVE = ("codebook.min_chars", "train.warmup_steps", "semantic.warmup_steps")
# Upper bounds: far above any sensible run (the paper's preset is 128 px, 128 channels, batch 128,
# 100k steps), low enough that a typo (`model.image_size=65536`) is an error in milliseconds
# instead of a machine brought down by its allocations.
_AT_MOST = {
    "model.image_size": 1024, "model.base_channels": 1024, "model.num_res_blocks": 16,
    "model.latent_channels": 4096, "model.codebook_projection_dim": 4096, "codebook.max_size": 1_000_000,
    "codebook.min_chars": 64, "data.num_images": 10_000_000, "data.heldout_images": 100_000,
    "data.max_per_class": 10_000_000, "train.steps": 10_000_000, "train.batch_size": 4096,
    "train.warmup_steps": 10_000_000, "semantic.warmup_steps": 10_000_000, "train.num_threads": 1024,
    "train.log_every": 10_000_000, "train.eval_every": 10_000_000, "train.figure_every": 10_000_000,
    "train.checkpoint_every": 10_000_000,
}
_MAX_STAGES, _MAX_CHANNEL_MULT, _MAX_LAYERS, _MAX_TOP_K = 8, 64, 16, 100_000


def validate(cfg: ExperimentConfig) -> None:
    values = _flatten(asdict(cfg))
    for key in _POSITIVE:
        if values[key] is not None and values[key] < 1:
            raise ConfigError(f"{key} must be at least 1, got {values[key]}")
    for key in _NON_NEGATIVE:
        if values[key] < 0:
            raise ConfigError(f"{key} must not be negative, got {values[key]}")
    for key, limit in _AT_MOST.items():
        if values[key] is not None and values[key] > limit:
            raise ConfigError(f"{key} must be at most {limit:,}, got {values[key]:,}")
    if not 0 <= cfg.train.seed < 2**32:  # numpy and torch generators take it
        raise ConfigError(f"train.seed must be in 0..2**32-1, got {cfg.train.seed}")
    m = cfg.model
    if not m.channel_mults or min(m.channel_mults) < 1:
        raise ConfigError(f"model.channel_mults must be one or more positive integers, "
                          f"got {m.channel_mults}")
    if len(m.channel_mults) > _MAX_STAGES or max(m.channel_mults) > _MAX_CHANNEL_MULT:
        raise ConfigError(f"model.channel_mults: at most {_MAX_STAGES} stages of at most {_MAX_CHANNEL_MULT} "
                          f"times model.base_channels, got {m.channel_mults}")
    if not m.layer_sizes:
        raise ConfigError("model.layer_sizes must list at least one layer")
    if len(m.layer_sizes) > _MAX_LAYERS:
        raise ConfigError(f"model.layer_sizes: at most {_MAX_LAYERS} layers, got {len(m.layer_sizes)}")
    minutes = cfg.train.max_minutes
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"train.max_minutes must be a positive number of minutes, got {minutes}")
    if m.top_word not in ("head", "teacher"):
        raise ConfigError(f"model.top_word must be 'head' or 'teacher', got {m.top_word!r}")
    if m.top_word == "teacher" and m.coarse_tokens != "cover":
        raise ConfigError("model.top_word 'teacher' needs model.coarse_tokens 'cover'")
    if "{}" not in cfg.semantic.word_template:
        raise ConfigError(f"semantic.word_template needs '{{}}' where the word goes, got "
                          f"{cfg.semantic.word_template!r}")
    if m.coarse_tokens not in ("cover", "cell"):
        raise ConfigError(f"model.coarse_tokens must be 'cover' or 'cell', got {m.coarse_tokens!r}")
    if m.quantizer not in ("saq", "rq"):
        raise ConfigError(f"model.quantizer must be 'saq' or 'rq', got {m.quantizer!r}")
    downsample = 2 ** (len(m.channel_mults) - 1)
    if m.image_size % downsample:
        raise ConfigError(f"model.image_size {m.image_size} is not divisible by {downsample}")
    grid = m.latent_grid
    if grid & (grid - 1):
        raise ConfigError(f"latent grid {grid} must be a power of two (image_size / {downsample})")
    for n in m.layer_sizes:
        if n < 1 or n > grid or grid % n or n & (n - 1):
            raise ConfigError(
                f"model.layer_sizes {m.layer_sizes}: each must be a power of two dividing the "
                f"latent grid {grid}"
            )
    if not 0 <= m.semantic_head_layers <= len(m.layer_sizes):
        raise ConfigError(f"model.semantic_head_layers must be in 0..{len(m.layer_sizes)}")
    if not m.head_gradient_scale >= 0:
        raise ConfigError(f"model.head_gradient_scale must be >= 0, got {m.head_gradient_scale}")
    if list(m.layer_sizes) != sorted(m.layer_sizes):
        raise ConfigError(f"model.layer_sizes must go coarse to fine, got {m.layer_sizes}")
    if cfg.loss.depth_sampling not in ("mixed", "full"):
        raise ConfigError(f"loss.depth_sampling must be 'mixed' or 'full', got {cfg.loss.depth_sampling!r}")
    if cfg.train.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision must be auto, fp32 or bf16, got {cfg.train.precision!r}")
    if cfg.train.distributed_backend not in ("auto", "nccl", "gloo"):
        raise ConfigError(f"train.distributed_backend must be auto, nccl or gloo, "
                          f"got {cfg.train.distributed_backend!r}")
    if cfg.semantic.enabled:
        if not cfg.semantic.top_k or len(cfg.semantic.top_k) > len(m.layer_sizes):
            raise ConfigError(f"semantic.top_k {cfg.semantic.top_k}: one K per guided layer, at most "
                              f"{len(m.layer_sizes)}")
        if cfg.semantic.loss_form not in ("any", "each"):
            raise ConfigError(f"semantic.loss_form must be 'any' or 'each', got {cfg.semantic.loss_form!r}")
        if min(cfg.semantic.top_k) < 1 or not cfg.semantic.temperature > 0:
            raise ConfigError("semantic.top_k must be >= 1 and semantic.temperature > 0")
        if max(cfg.semantic.top_k) > _MAX_TOP_K:
            raise ConfigError(f"semantic.top_k must be at most {_MAX_TOP_K:,}, got {cfg.semantic.top_k}")
        weights = cfg.semantic.layer_weights
        if weights is not None and (len(weights) != len(cfg.semantic.top_k)
                                    or not all(math.isfinite(w) and w >= 0 for w in weights)):
            raise ConfigError(f"semantic.layer_weights {weights}: one weight >= 0 per entry of "
                              f"semantic.top_k {cfg.semantic.top_k}")
    if not (0.0 <= cfg.loss.full_depth_fraction <= 1.0):
        raise ConfigError("loss.full_depth_fraction must be in [0, 1]")
    if not math.isfinite(cfg.train.lr) or cfg.train.lr <= 0:
        raise ConfigError("train.lr must be a positive number")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _all_keys(cfg: ExperimentConfig) -> list[str]:
    return [k for k in _flatten(asdict(cfg)) if k != "preset"]


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type hint; accept the string forms a CLI or YAML gives."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {args[0].__name__}, got {value!r}")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):  # "fast", 10**400
                pass
        if number is None or not math.isfinite(number):  # nan and inf only ever break a run
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value
