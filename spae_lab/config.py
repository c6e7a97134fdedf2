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
from typing import Any, Literal

from spae_lab.errors import SpaeError


class ConfigError(SpaeError, ValueError):
    """A configuration that cannot be used: unknown key, wrong type, inconsistent values."""


def bounded(default: Any, least: float, most: float | None = None, *, above: bool = False) -> Any:
    """A dataclass field with its allowed range declared beside it: [least, most], or (least, most]
    with `above`. `validate` checks every such field (None, where the type allows it, means "no
    limit" or "the default")."""
    return field(default=default, metadata={"range": (least, most, above)})


# Upper bounds: far above any sensible run (the paper's preset is 128 px, 128 channels, batch 128,
# 100k steps), low enough that a typo (`model.image_size=65536`) is an error in milliseconds
# instead of a machine brought down by its allocations.
MANY = 10_000_000


@dataclass
class CodebookConfig:
    source: str = "smollm2"  # "smollm2" (packaged, offline), a Hugging Face id/folder, or "random:V:D"
    # keep the first N lexical ids (BPE merge order ~ frequency); None = all
    max_size: int | None = bounded(8192, 1, 1_000_000)
    min_chars: int = bounded(2, 0, 64)  # shortest word kept (letters, without the leading space)
    ascii_only: bool = True  # restrict to A-Za-z words (readable in any prompt)
    word_list: str | None = "minilm"  # keep real English words: "minilm" (offline list), a file, None
    # drop capitalised forms ('Yellow' beside 'yellow'): a reader gains nothing from them, and the
    # words they free are real ones further down the BPE ranks (docs/recipe.md)
    lowercase_only: bool = True


@dataclass
class ModelConfig:
    image_size: int = bounded(32, 1, 1024)  # px, square; 128 in the paper
    base_channels: int = bounded(32, 1, 1024)  # width of the first encoder stage
    channel_mults: tuple[int, ...] = (1, 2, 4)  # one stage per entry; len-1 downsamplings by 2
    num_res_blocks: int = bounded(1, 1, 16)  # residual blocks per stage
    latent_channels: int = bounded(128, 1, 4096)  # encoder output width before the codebook projection
    layer_sizes: tuple[int, ...] = (1, 2, 4, 8, 8)  # tokens per side of each pyramid layer
    quantizer: Literal["saq", "rq"] = "saq"  # SPAE's streaming average, or residual quantization
    # what a coarse token stands for: its whole region, each layer refining every cell it covers
    # (docs/method.md). The one value left: saved with every config, it tells the retired "cell"
    # layout's checkpoints (saved without it) apart
    coarse_tokens: Literal["cover"] = "cover"
    project_to_codebook: bool = True  # trainable 1x1 projection latent -> codebook space (V2L-style)
    standardize_codebook: bool = True  # centre and rescale the frozen codebook (keeps ids, eases fitting)
    # trainable map of the frozen rows to a small search space (a finer quantization than a wide
    # one: docs/recipe.md); None: the raw rows
    codebook_projection_dim: int | None = bounded(16, 1, 4096)
    # first layers picking words from their own projection (the semantic head); derived by
    # create_config unless given: min(1, guided layers), 0 when guidance is off
    semantic_head_layers: int = bounded(1, 0, 16)
    # share of the reconstruction gradient of depths 1..semantic_head_layers that reaches the head;
    # the rest of its training is the semantic loss (a small share keeps its words semantic while
    # layer 2 still learns to add appearance: docs/recipe.md)
    head_gradient_scale: float = bounded(0.1, 0.0)
    # the head: a 2-layer per-cell MLP (True) or one linear 1x1 map (False, checkpoints from before)
    semantic_head_mlp: bool = True
    # who picks layer 1's word when encoding: the semantic head, as trained, or the teacher's most
    # relevant word (V2L-Tokenizer's global token; the other layers correct for it through the
    # running mean)
    top_word: Literal["head", "teacher"] = "head"
    normalize: bool = True  # unit-RMS latents and words in search space: cosine search, no drift

    @property
    def latent_grid(self) -> int:
        """Side of the latent grid: image_size / 2**(number of downsamplings)."""
        return self.image_size // 2 ** (len(self.channel_mults) - 1)


@dataclass
class LossConfig:
    l2_weight: float = bounded(1.0, 0.0)  # pixel MSE
    l1_weight: float = bounded(0.0, 0.0)  # pixel L1
    gradient_weight: float = bounded(0.1, 0.0)  # L1 between image gradients: sharper edges, no download
    # pulls latents to their words; too strong a pull collapses the search to one word (docs/recipe.md)
    commitment_weight: float = bounded(0.01, 0.0)
    codebook_weight: float = bounded(1.0, 0.0)  # pulls the projected words towards the latents
    # "mixed": each image decodes from a random depth; "full": the deepest only
    depth_sampling: Literal["mixed", "full"] = "mixed"
    full_depth_fraction: float = bounded(0.5, 0.0, 1.0)  # with "mixed": images decoded from every layer


@dataclass
class SemanticConfig:
    enabled: bool = True  # SPAE semantic guidance of the upper layers by a CLIP-like teacher
    teacher: str = "lit:builtin"  # "lit:builtin" (shipped, offline), "lit:PATH", "clip:ID_OR_FOLDER"
    # K per guided layer from the top; its length = layers guided. The first
    # model.semantic_head_layers guided layers pick from the semantic head, the rest pull the
    # shared latents. Cut to the number of layers when a pyramid has fewer. Only layer 1 is guided
    # by default: guiding layers 2-3 through the shared latents collapses them (docs/recipe.md).
    top_k: tuple[int, ...] = (3,)
    # per guided layer, a multiplier of its loss (None: all 1); lets deep layers be guided weakly
    layer_weights: tuple[float, ...] | None = None
    temperature: float = bounded(0.1, 0.0, above=True)  # softmax over -||t - e||^2 / (temperature * dim)
    # "any": -log P(chosen word in the top K) (any of them may win); "each": the mean over the top
    # K of -log P(word), a cross-entropy with the K words as a uniform target (the paper's form)
    loss_form: Literal["any", "each"] = "any"
    weight: float = bounded(0.1, 0.0)  # peak weight of the semantic loss
    warmup_steps: int = bounded(100, 0, MANY)  # the weight ramps up from 0 over these steps
    final_weight_ratio: float = bounded(1.0, 0.0)  # then follows a cosine to weight * ratio at the end
    # read each training image's top-K words from a table computed once per dataset (teacher,
    # codebook, data, size, K; kept in the cache dir) instead of running the teacher every step:
    # the same words (frozen teacher, no augmentation). Filled when a run sees every image at least
    # once (steps x batch >= training images); a shorter run reads a table already on disk
    cache_top_words: bool = True
    # how the teacher reads a codebook word: "{}" (the bare word) or a caption such as
    # "a photo of a {}" (the form a teacher was trained on reads best)
    word_template: str = "{}"


@dataclass
class DataConfig:
    dataset: str = "scenes"  # built-in name (scenes, digits, mnist) or an ImageFolder folder / .tar(.gz)
    num_images: int = bounded(20000, 1, MANY)  # synthetic scenes: size of the training set
    heldout_images: int = bounded(256, 1, 100_000)  # held-out images for evaluation (never trained on)
    max_per_class: int | None = bounded(None, 1, MANY)  # cap for folder datasets


@dataclass
class TrainConfig:
    steps: int = bounded(800, 1, MANY)  # minutes on 2 CPU cores at 32 px
    batch_size: int = bounded(32, 1, 4096)
    lr: float = bounded(1e-3, 0.0, above=True)  # AdamW peak learning rate
    min_lr_ratio: float = bounded(0.1, 0.0, 1.0)  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = bounded(100, 0, MANY)
    weight_decay: float = bounded(1e-4, 0.0)
    grad_clip: float = bounded(1.0, 0.0)
    seed: int = bounded(0, 0, 2**32 - 1)  # numpy and torch generators take this range
    log_every: int = bounded(25, 1, MANY)
    eval_every: int = bounded(250, 1, MANY)  # held-out PSNR per depth
    figure_every: int = bounded(500, 1, MANY)  # reconstruction figure
    checkpoint_every: int = bounded(250, 1, MANY)
    max_minutes: float | None = bounded(None, 0.0, above=True)  # optional wall-clock budget; stops, checkpoints
    device: str = "auto"  # "auto": CUDA if available else CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU
    # torch threads on CPU; None: the cores this process may use less those other processes keep busy
    # (1-minute load average), at least 1 (devices.choose_num_threads). Exact resumes need 1
    num_threads: int | None = bounded(None, 1, 1024)
    compile: bool = False  # torch.compile the training step's model (for CUDA; costs a warm-up)
    # under torchrun: "auto" = nccl on CUDA, gloo on CPU; or either
    distributed_backend: Literal["auto", "nccl", "gloo"] = "auto"


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


# Guided layers that get the semantic head unless model.semantic_head_layers is given: only layer 1
# (one word for the whole image); layer 2's four words are picked from the shared latents of their
# quadrants, so they carry appearance.
MAX_DERIVED_HEAD_LAYERS = 1


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
        # derived unless given: the top guided layer gets the head, deeper guided layers pull the
        # shared latents, and without guidance none has a head
        guided = len(cfg.semantic.top_k) if cfg.semantic.enabled else 0
        cfg.model.semantic_head_layers = min(MAX_DERIVED_HEAD_LAYERS, guided)
    validate(cfg)
    return cfg


# Fields added after checkpoints were first saved, with the value that reproduces those checkpoints'
# architecture (a saved config without the key is read with this value).
_ADDED_FIELDS = {"model": {"semantic_head_mlp": False}, "codebook": {"lowercase_only": False}}
RETIRED_LAYOUT = ("it uses the retired 'cell' pyramid layout (a coarse token standing for one cell), "
                  "which spae-lab 0.2 no longer reads; retrain it, e.g. spae-lab train --config "
                  "configs/pretrained/scenes.yaml (every shipped tokenizer uses the covering layout)")


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config saved with `to_dict` (checkpoints, reports). Unknown keys are an error, and
    so is a checkpoint of the retired 'cell' layout."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = ExperimentConfig(preset=str(data.get("preset", "small")))
    model = data.get("model")
    if isinstance(model, dict) and model.get("coarse_tokens", "cell") == "cell":  # saved before the key: cell
        raise ConfigError(RETIRED_LAYOUT)
    for section, added in _ADDED_FIELDS.items():  # saved before a field existed: that design
        if isinstance(data.get(section), dict):
            data = {**data, section: {**added, **data[section]}}
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


_MAX_STAGES, _MAX_CHANNEL_MULT, _MAX_LAYERS, _MAX_TOP_K = 8, 64, 16, 100_000


def _check_ranges(cfg: ExperimentConfig) -> None:
    """Every field declared with `bounded` lies in its range."""
    for section_field in dataclasses.fields(cfg):
        section = getattr(cfg, section_field.name)
        if not dataclasses.is_dataclass(section):
            continue
        for f in dataclasses.fields(section):
            if "range" not in f.metadata or (value := getattr(section, f.name)) is None:
                continue
            least, most, above = f.metadata["range"]
            key = f"{section_field.name}.{f.name}"
            if above and not value > least:
                raise ConfigError(f"{key} must be more than {least:g}, got {value}")
            if value < least:
                raise ConfigError(f"{key} must be at least {least:,}, got {value:,}")
            if most is not None and value > most:
                raise ConfigError(f"{key} must be at most {most:,}, got {value:,}")


def validate(cfg: ExperimentConfig) -> None:
    """Ranges and choices come from the fields' declarations (`bounded`, `Literal`, checked as each
    value is set); what is left here relates fields to each other."""
    _check_ranges(cfg)
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
    if "{}" not in cfg.semantic.word_template:
        raise ConfigError(f"semantic.word_template needs '{{}}' where the word goes, got "
                          f"{cfg.semantic.word_template!r}")
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
    if m.semantic_head_layers > len(m.layer_sizes):
        raise ConfigError(f"model.semantic_head_layers must be in 0..{len(m.layer_sizes)}")
    if list(m.layer_sizes) != sorted(m.layer_sizes):
        raise ConfigError(f"model.layer_sizes must go coarse to fine, got {m.layer_sizes}")
    if cfg.semantic.enabled:
        if not cfg.semantic.top_k or len(cfg.semantic.top_k) > len(m.layer_sizes):
            raise ConfigError(f"semantic.top_k {cfg.semantic.top_k}: one K per guided layer, at most "
                              f"{len(m.layer_sizes)}")
        if not 1 <= min(cfg.semantic.top_k) <= max(cfg.semantic.top_k) <= _MAX_TOP_K:
            raise ConfigError(f"semantic.top_k must be in 1..{_MAX_TOP_K:,}, got {cfg.semantic.top_k}")
        weights = cfg.semantic.layer_weights
        if weights is not None and (len(weights) != len(cfg.semantic.top_k) or min(weights) < 0):
            raise ConfigError(f"semantic.layer_weights {weights}: one weight >= 0 per entry of "
                              f"semantic.top_k {cfg.semantic.top_k}")


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
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
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
